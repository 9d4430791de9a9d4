"""Text and image search: shipped corpora, HTTP providers on loopback, the persistent cache."""

from __future__ import annotations

import json
import time

import pandas as pd
from PIL import Image, ImageFilter

from metis.tools import (BM25Provider, CachedResultsProvider, HTTPImageSearchProvider,
                         HTTPSearchProvider, ImageSearchTool, LocalImageIndex, TextSearchTool,
                         ToolBox)
from metis.tools.corpora import (make_image_collection, make_text_corpus, text_corpus_entries,
                                 text_corpus_questions)
from metis.tools.image_search import REFUSAL, image_key


def test_corpus_is_deterministic_and_questions_are_answerable():
    assert text_corpus_entries(20, seed=3) == text_corpus_entries(20, seed=3)
    assert text_corpus_entries(20, seed=3) != text_corpus_entries(20, seed=4)
    docs = {d["id"]: d["text"] for d in text_corpus_entries()}
    assert len(docs) >= 200
    qa = text_corpus_questions(with_doc_ids=True)
    assert all(answer in docs[doc] for _, answer, doc in qa)


def test_bm25_answers_the_shipped_questions(tmp_path):
    tool = TextSearchTool(top_k=5, cache_path=str(tmp_path / "c.db"))
    qa = text_corpus_questions(with_doc_ids=True)
    top1 = top5 = 0
    for question, answer, doc in qa:
        obs = tool.call("t", {"query": question})
        assert obs.error is None and obs.images == []
        top1 += f"(id: {doc})" in obs.text.split("[2]")[0]
        top5 += answer in obs.text
    assert top5 == len(qa) and top1 >= 0.9 * len(qa), (top1, top5)
    assert tool.call("t", {"query": "zzzz qqqq"}).text.startswith("No results found")
    assert tool.call("t", {"query": "  "}).error == "parse_error"
    tool.close()


def test_bm25_index_is_cached_by_corpus_hash(tmp_path):
    corpus = make_text_corpus(str(tmp_path / "c.jsonl"), n_countries=10)
    first = BM25Provider(corpus, index_dir=str(tmp_path / "idx"))
    t0 = time.perf_counter()
    second = BM25Provider(corpus, index_dir=str(tmp_path / "idx"))
    assert time.perf_counter() - t0 < 1.0
    assert first.cache_namespace == second.cache_namespace
    q = text_corpus_questions(10)[0][0]
    assert [r.id for r in first.search(q, 3)] == [r.id for r in second.search(q, 3)]
    pq = tmp_path / "c.parquet"
    pd.DataFrame(text_corpus_entries(10)).to_parquet(pq)
    third = BM25Provider(str(pq), index_dir=str(tmp_path / "idx2"))
    assert third.cache_namespace != first.cache_namespace
    assert third.search(q, 1)[0].id == first.search(q, 1)[0].id


def _http_tool(server, tmp_path, **kw):
    provider = HTTPSearchProvider(url=server.url, api_key_env="METIS_TEST_SEARCH_KEY",
                                  timeout_s=kw.pop("timeout_s", 2.0), max_retries=kw.pop("retries", 2),
                                  backoff_s=0.01)
    return TextSearchTool(provider=provider, cache_path=str(tmp_path / "http.db"), **kw)


def test_http_search_results_key_and_cache(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("METIS_TEST_SEARCH_KEY", "k-123")
    http_server.script = [(200, {"organic": [
        {"title": "Zorvania", "snippet": "The capital of Zorvania is Quellport.",
         "link": "https://example.org/z"},
        {"title": "Other <image>", "snippet": "x", "link": "https://example.org/o"}]}, 0.0)]
    tool = _http_tool(http_server, tmp_path, top_k=3)
    obs = tool.call("t", {"query": "capital of Zorvania"})
    assert obs.error is None and "Quellport" in obs.text and "https://example.org/z" in obs.text
    assert "<image>" not in obs.text  # placeholders in remote text are neutralised
    assert http_server.requests == [{"q": "capital of Zorvania", "num": 3}]
    assert http_server.headers[0]["x-api-key"] == "k-123"
    again = tool.call("t", {"query": "capital  of Zorvania"})
    assert again.text == obs.text and len(http_server.requests) == 1  # served by the cache
    tool.close()
    reopened = _http_tool(http_server, tmp_path, top_k=3)  # the cache is on disk
    assert reopened.call("t", {"query": "capital of Zorvania"}).text == obs.text
    assert len(http_server.requests) == 1
    reopened.close()


def test_http_search_errors_and_retries(http_server, tmp_path):
    http_server.script = [(500, {"error": "boom"}, 0.0)]
    tool = _http_tool(http_server, tmp_path, use_cache=False)
    down = tool.call("t", {"query": "a"})
    assert down.error == "execution_error" and "unavailable" in down.text
    assert len(http_server.requests) == 3  # 1 + 2 retries
    http_server.requests.clear()
    http_server.script = [(429, {}, 0.0), (200, {"organic": [{"title": "T", "snippet": "S"}]}, 0.0)]
    ok = tool.call("t", {"query": "b"})
    assert ok.error is None and "[1] T" in ok.text and len(http_server.requests) == 2
    http_server.requests.clear()
    http_server.script = [(200, {"organic": []}, 1.0)]
    slow = _http_tool(http_server, tmp_path, timeout_s=0.2, retries=1, use_cache=False)
    t0 = time.monotonic()
    obs = slow.call("t", {"query": "c"})
    assert obs.error == "timeout" and time.monotonic() - t0 < 3
    tool.close()
    slow.close()


def test_local_image_search_finds_every_shipped_image():
    items = make_image_collection()
    assert len(items) >= 40
    index = LocalImageIndex()
    for path, caption in items:
        with Image.open(path) as img:
            query = img.convert("RGB").resize((300, 300)).filter(ImageFilter.GaussianBlur(1))
        assert index.search(query, None, 1)[0].title == caption


def test_image_search_tool_once_per_trajectory(tmp_path):
    path, caption = make_image_collection()[5]
    tool = ImageSearchTool(cache_path=str(tmp_path / "i.db"), include_images=True, top_k=3)
    box = ToolBox([tool])
    box.start("t", [Image.open(path)])
    obs = box.execute("t", "image_search", {})
    assert obs.error is None and caption in obs.text.split("[2]")[0]
    assert len(obs.images) == 3 and obs.text.count("<image>") == 3
    refused = box.execute("t", "image_search", {})
    assert refused.error == "refused" and refused.text == REFUSAL
    box.start("no-image", [])
    assert box.execute("no-image", "image_search", {}).error == "execution_error"
    box.close()


def test_cached_results_by_key_and_by_image_hash(tmp_path):
    red = Image.new("RGB", (64, 64), "red")
    img = make_image_collection()[0][0]
    pattern = Image.open(img).convert("RGB")
    table = {"task-7": [{"title": "Recorded page", "link": "https://e.org/7"}],
             image_key(pattern): ["Found by hash"]}
    for suffix in ("json", "jsonl", "parquet"):
        path = tmp_path / f"cache.{suffix}"
        if suffix == "json":
            path.write_text(json.dumps(table))
        elif suffix == "jsonl":
            path.write_text("\n".join(json.dumps({"key": k, "results": v}) for k, v in table.items()))
        else:
            pd.DataFrame({"key": list(table), "results": [json.dumps(v) for v in table.values()]}
                         ).to_parquet(path)
        provider = CachedResultsProvider(str(path))
        tool = ImageSearchTool(provider=provider, use_cache=False)
        tool.start("a", [red], meta={"index": "task-7"})
        assert "Recorded page (https://e.org/7)" in tool.call("a", {}).text
        tool.start("b", [pattern], meta={})
        assert "Found by hash" in tool.call("b", {}).text
        tool.start("c", [red], meta={"id": "unknown"})
        assert tool.call("c", {}).text == "Image search found no matching pages."


def test_http_image_search_on_loopback(http_server, tmp_path):
    http_server.script = [(503, {}, 0.0), (200, {"results": [{"title": "A flag", "link": "l"}]}, 0.0)]
    provider = HTTPImageSearchProvider(http_server.url, timeout_s=2, max_retries=2, backoff_s=0.01)
    tool = ImageSearchTool(provider=provider, cache_path=str(tmp_path / "h.db"))
    tool.start("t", [Image.new("RGB", (40, 40), "blue")], meta={"id": "q1"})
    obs = tool.call("t", {})
    assert obs.error is None and "A flag" in obs.text and len(http_server.requests) == 2
    assert http_server.requests[-1]["num"] == 5 and len(http_server.requests[-1]["image"]) > 50
    tool.start("t2", [Image.new("RGB", (40, 40), "blue")], meta={"id": "q1"})
    assert tool.call("t2", {}).text == obs.text and len(http_server.requests) == 2  # cached
    tool.close()
