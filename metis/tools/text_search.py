"""The ``text_search`` tool: ``{"query": str}`` -> up to ``top_k`` results (title, snippet, id).

Providers (anything with ``search(query, k) -> list[SearchResult]`` and a ``cache_namespace``):
``BM25Provider`` (the ``bm25s`` library over a local JSONL/parquet corpus of {id, title, text},
indexed once and cached on disk under the corpus file's hash) and ``HTTPSearchProvider``
(Serper-style POST ``{"q", "num"}`` returning ``organic`` results). Results go through a
persistent SQLite cache, so a repeated query costs nothing.

Deliberate simplifications: BM25 uses bm25s' default tokenizer with English stopwords and no
stemmer; snippets are the first ``snippet_chars`` characters of the text.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import httpx

from metis.tools.base import (Observation, Tool, cache_root, error_observation,
                              escape_text)
from metis.tools.search_common import ProviderError, QueryCache, api_key_headers, post_json
from metis.utils.files import file_sha256


@dataclass
class SearchResult:
    title: str
    snippet: str
    id: str = ""
    link: str = ""


class SearchProvider(Protocol):
    cache_namespace: str

    def search(self, query: str, k: int) -> list[SearchResult]: ...


def load_corpus(path: str) -> list[dict[str, str]]:
    """Read {id, title, text} rows from JSONL or parquet."""
    if path.endswith(".parquet"):
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
    else:
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    return [{"id": str(r.get("id", i)), "title": str(r.get("title") or ""),
             "text": str(r.get("text") or "")} for i, r in enumerate(rows)]


class BM25Provider:
    """BM25 (bm25s) over a local corpus; ``corpus_path=None`` uses the shipped synthetic world."""

    def __init__(self, corpus_path: str | None = None, index_dir: str | None = None,
                 snippet_chars: int = 400) -> None:
        import bm25s

        from metis.tools.corpora import make_text_corpus

        self._bm25s = bm25s
        self.corpus_path = corpus_path or make_text_corpus()
        self.snippet_chars = snippet_chars
        digest = file_sha256(self.corpus_path)
        self.cache_namespace = f"bm25:{digest}"
        self.docs = load_corpus(self.corpus_path)
        self.index_dir = index_dir or os.path.join(cache_root(), "bm25", digest[:32])
        self._lock = threading.Lock()
        if os.path.exists(os.path.join(self.index_dir, "params.index.json")):
            self.retriever = bm25s.BM25.load(self.index_dir, show_progress=False)
        else:
            texts = [f"{d['title']}\n{d['text']}" for d in self.docs]
            tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
            self.retriever = bm25s.BM25()
            self.retriever.index(tokens, show_progress=False)
            tmp = f"{self.index_dir}.{os.getpid()}.tmp"
            self.retriever.save(tmp, show_progress=False)
            try:
                os.replace(tmp, self.index_dir)
            except OSError:  # another process built it first
                shutil.rmtree(tmp, ignore_errors=True)

    def search(self, query: str, k: int) -> list[SearchResult]:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False,
                                      return_ids=False)
        if not tokens or not tokens[0] or not self.docs:
            return []
        k = max(1, min(k, len(self.docs)))
        with self._lock:
            ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for idx, score in zip(ids[0].tolist(), scores[0].tolist()):
            if score <= 0:
                continue
            doc = self.docs[int(idx)]
            out.append(SearchResult(title=doc["title"], snippet=doc["text"][: self.snippet_chars],
                                    id=doc["id"]))
        return out


class HTTPSearchProvider:
    """Serper-style web search: POST ``{"q": query, "num": k}`` with the key from ``api_key_env``
    in the ``X-API-KEY`` header; reads ``organic: [{title, snippet, link}]``."""

    def __init__(self, url: str = "https://google.serper.dev/search",
                 api_key_env: str | None = "SERPER_API_KEY", api_key_header: str = "X-API-KEY",
                 timeout_s: float = 10.0, max_retries: int = 3, backoff_s: float = 0.5) -> None:
        self.url, self.api_key_env, self.api_key_header = url, api_key_env, api_key_header
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.cache_namespace = f"http:{url}"
        self._client = httpx.Client()

    def search(self, query: str, k: int) -> list[SearchResult]:
        data = post_json(self._client, self.url, {"q": query, "num": k},
                         api_key_headers(self.api_key_env, self.api_key_header), self.timeout_s,
                         self.max_retries, self.backoff_s)
        rows = data.get("organic", []) if isinstance(data, dict) else []
        out = []
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, dict):
                out.append(SearchResult(title=str(r.get("title") or ""),
                                        snippet=str(r.get("snippet") or ""),
                                        id=str(r.get("position") or ""),
                                        link=str(r.get("link") or "")))
        return out[:k]

    def close(self) -> None:
        self._client.close()


def format_results(query: str, results: list[SearchResult]) -> str:
    if not results:
        return escape_text(f'No results found for "{query}".')
    lines = [f'Search results for "{query}":']
    for i, r in enumerate(results, start=1):
        ref = f"(id: {r.id})" if r.id and not r.link else f"({r.link})" if r.link else ""
        lines.append(f"[{i}] {r.title}\n{r.snippet}" + (f"\n{ref}" if ref else ""))
    return escape_text("\n\n".join(lines))


class TextSearchTool(Tool):
    """Text search over a corpus or a web search API, with a persistent query cache."""

    name = "text_search"
    description = "Search text sources for facts. Returns the top results with title and snippet."
    parameters = {"type": "object",
                  "properties": {"query": {"type": "string", "description": "the search query"}},
                  "required": ["query"]}

    def __init__(self, provider: SearchProvider | None = None, top_k: int = 5,
                 max_top_k: int = 10, cache_path: str | None = None, use_cache: bool = True,
                 max_query_chars: int = 500) -> None:
        self.provider = provider if provider is not None else BM25Provider()
        self.max_top_k = max(1, int(max_top_k))
        self.top_k = max(1, min(int(top_k), self.max_top_k))
        self.max_query_chars = max_query_chars
        self.cache = QueryCache(cache_path or os.path.join(cache_root(), "search_cache.sqlite")) \
            if use_cache else None
        self.provider_calls = 0

    def call(self, traj_id: str, arguments: dict) -> Observation:
        query = arguments.get("query") if isinstance(arguments, dict) else None
        if not isinstance(query, str) or not query.strip():
            return error_observation("parse_error", 'text_search needs {"query": "<non-empty text>"}')
        query = " ".join(query.split())[: self.max_query_chars]
        k = self.top_k
        key = QueryCache.make_key(self.provider.cache_namespace, [query.lower(), k])
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            results = [SearchResult(**r) for r in cached]
        else:
            try:
                self.provider_calls += 1
                results = self.provider.search(query, k)[:k]
            except ProviderError as exc:
                return error_observation(exc.kind, f"Search failed: {exc}. Try again later or "
                                         "answer without searching.")
            if self.cache is not None:
                self.cache.put(key, [asdict(r) for r in results])
        return Observation(text=format_results(query, results), images=[])

    def close(self) -> None:
        closer: Any = getattr(self.provider, "close", None)
        if callable(closer):
            closer()
        if self.cache is not None:
            self.cache.close()
            self.cache = None
