"""The ``image_search`` tool: reverse search on the trajectory's first input image (``{}`` args).

Providers (``search(image, key, k) -> list[ImageResult]`` and a ``cache_namespace``):
``LocalImageIndex`` (perceptual hashes, phash + dhash, ranked by Hamming distance, over a folder
with ``captions.jsonl`` or a list of (image, caption); default: the shipped pattern collection),
``CachedResultsProvider`` (results recorded per sample key — the task's ``image_search_key`` /
``index`` / ``id`` from ``meta`` — or per image phash, from JSON / JSONL / parquet, as the paper
does for reproducibility) and ``HTTPImageSearchProvider`` (POST ``{"image": b64 png, "num"}``).

At most ``max_calls_per_trajectory`` (default 1) successful searches per trajectory; later calls
get ``error="refused"``. Deliberate simplifications: a failed search does not use up the quota;
only the first input image is searched.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import httpx
import imagehash
from PIL import Image

from metis.tools.base import (Observation, Tool, cache_root, encode_png,
                              error_observation, escape_text, fit_image)
from metis.tools.search_common import ProviderError, QueryCache, api_key_headers, post_json

REFUSAL = "Image search has already been used for this question; use the results above."


@dataclass
class ImageResult:
    title: str
    link: str = ""
    score: float | None = None
    id: str = ""
    image_path: str = ""


class ImageSearchProvider(Protocol):
    cache_namespace: str

    def search(self, image: Image.Image, key: str | None, k: int) -> list[ImageResult]: ...


def image_key(image: Image.Image) -> str:
    """The perceptual-hash key of an image (used when a sample has no key)."""
    return f"phash:{imagehash.phash(image.convert('RGB'))}"


def _result(row: Any) -> ImageResult | None:
    if isinstance(row, str):
        return ImageResult(title=row)
    if not isinstance(row, Mapping):
        return None
    title = row.get("title") or row.get("caption") or row.get("snippet") or ""
    score = row.get("score")
    return ImageResult(title=str(title), link=str(row.get("link") or row.get("url") or ""),
                       score=float(score) if isinstance(score, (int, float)) else None,
                       id=str(row.get("id") or ""))


class LocalImageIndex:
    """Reverse image search over local (image, caption) pairs by perceptual hash distance."""

    def __init__(self, folder: str | None = None,
                 items: Sequence[tuple[Image.Image | str, str]] | None = None) -> None:
        if items is None:
            if folder is None:
                from metis.tools.corpora import make_image_collection

                items = make_image_collection()
            else:
                with open(os.path.join(folder, "captions.jsonl"), encoding="utf-8") as fh:
                    rows = [json.loads(line) for line in fh if line.strip()]
                items = [(os.path.join(folder, r["file"]), r["caption"]) for r in rows]
        self.entries: list[tuple[Any, Any, str, str]] = []
        for src, caption in items:
            img = Image.open(src) if isinstance(src, str) else src
            img = img.convert("RGB")
            path = src if isinstance(src, str) else ""
            self.entries.append((imagehash.phash(img), imagehash.dhash(img), str(caption), path))
        digest = hashlib.sha256("|".join(f"{p}{d}{c}" for p, d, c, _ in self.entries).encode())
        self.cache_namespace = f"local-image:{digest.hexdigest()[:32]}"

    def search(self, image: Image.Image, key: str | None, k: int) -> list[ImageResult]:
        img = image.convert("RGB")
        ph, dh = imagehash.phash(img), imagehash.dhash(img)
        bits = ph.hash.size + dh.hash.size
        ranked = sorted((int(ph - p) + int(dh - d), i) for i, (p, d, _, _) in
                        enumerate(self.entries))
        return [ImageResult(title=self.entries[i][2], score=round(1 - dist / bits, 3),
                            id=str(i), image_path=self.entries[i][3]) for dist, i in ranked[:k]]


class CachedResultsProvider:
    """Recorded results looked up by sample key, else by the image's phash key.

    File formats: JSON ``{key: [result, ...]}``; JSONL rows ``{"key": ..., "results": [...]}``;
    parquet with columns ``key`` and ``results`` (a list or a JSON string). A result is a string
    or ``{title|caption, link|url, score}``.
    """

    def __init__(self, path: str, fallback: ImageSearchProvider | None = None) -> None:
        self.path, self.fallback = path, fallback
        self.table: dict[str, list[ImageResult]] = {}
        for key, results in self._rows(path):
            if isinstance(results, str):
                results = json.loads(results)
            parsed = [r for r in (_result(x) for x in list(results or [])) if r is not None]
            self.table[str(key)] = parsed
        with open(path, "rb") as fh:
            self.cache_namespace = "cached-image:" + hashlib.sha256(fh.read()).hexdigest()[:32]

    @staticmethod
    def _rows(path: str) -> list[tuple[Any, Any]]:
        if path.endswith(".parquet"):
            import pandas as pd

            df = pd.read_parquet(path)
            return [(k, r) for k, r in zip(df["key"], df["results"])]
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if path.endswith(".jsonl"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return [(r["key"], r.get("results", [])) for r in rows]
        return list(json.loads(text).items())

    def search(self, image: Image.Image, key: str | None, k: int) -> list[ImageResult]:
        for cand in (key, image_key(image)):
            if cand is not None and str(cand) in self.table:
                return self.table[str(cand)][:k]
        if self.fallback is not None:
            return self.fallback.search(image, key, k)
        return []


class HTTPImageSearchProvider:
    """POST ``{"image": <base64 png>, "num": k}``; reads ``results`` (or ``organic`` /
    ``images``): ``[{title, link, score}]``."""

    def __init__(self, url: str, api_key_env: str | None = None,
                 api_key_header: str = "X-API-KEY", timeout_s: float = 15.0,
                 max_retries: int = 3, backoff_s: float = 0.5) -> None:
        self.url, self.api_key_env, self.api_key_header = url, api_key_env, api_key_header
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.cache_namespace = f"http-image:{url}"
        self._client = httpx.Client()

    def search(self, image: Image.Image, key: str | None, k: int) -> list[ImageResult]:
        data = post_json(self._client, self.url, {"image": encode_png(image), "num": k},
                         api_key_headers(self.api_key_env, self.api_key_header), self.timeout_s,
                         self.max_retries, self.backoff_s)
        rows: Any = []
        if isinstance(data, dict):
            rows = data.get("results") or data.get("organic") or data.get("images") or []
        return [r for r in (_result(x) for x in (rows if isinstance(rows, list) else []))
                if r is not None][:k]

    def close(self) -> None:
        self._client.close()


class ImageSearchTool(Tool):
    """Reverse image search on the first input image, at most once per trajectory."""

    name = "image_search"
    description = ("Reverse image search on the input image: returns titles of matching web "
                   "pages. Can be used at most once per question.")
    parameters = {"type": "object", "properties": {}, "required": []}

    def __init__(self, provider: ImageSearchProvider | None = None, top_k: int = 5,
                 max_calls_per_trajectory: int = 1,
                 key_fields: Sequence[str] = ("image_search_key", "index", "id"),
                 cache_path: str | None = None, use_cache: bool = True,
                 include_images: bool = False, thumbnail_pixels: int = 128 * 128) -> None:
        self.provider = provider if provider is not None else LocalImageIndex()
        self.top_k, self.max_calls = max(1, int(top_k)), int(max_calls_per_trajectory)
        self.key_fields = tuple(key_fields)
        self.include_images, self.thumbnail_pixels = include_images, thumbnail_pixels
        self.cache = QueryCache(cache_path or os.path.join(cache_root(), "search_cache.sqlite")) \
            if use_cache else None
        self._state: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.provider_calls = 0

    def start(self, traj_id: str, images: list[Image.Image],
              meta: Mapping[str, Any] | None = None) -> None:
        key = next((str(meta[f]) for f in self.key_fields if meta and meta.get(f) is not None),
                   None)
        with self._lock:
            self._state[traj_id] = {"image": images[0] if images else None, "key": key, "used": 0}

    def end(self, traj_id: str) -> None:
        with self._lock:
            self._state.pop(traj_id, None)

    def call(self, traj_id: str, arguments: dict) -> Observation:
        with self._lock:
            state = self._state.setdefault(traj_id, {"image": None, "key": None, "used": 0})
        if state["used"] >= self.max_calls:
            return error_observation("refused", REFUSAL)
        image = state["image"]
        if image is None:
            return error_observation("execution_error", "image_search needs an input image; "
                                     "this question has none.")
        lookup = state["key"] or image_key(image)
        ckey = QueryCache.make_key(self.provider.cache_namespace, [lookup, self.top_k])
        cached = self.cache.get(ckey) if self.cache is not None else None
        if cached is not None:
            results = [ImageResult(**r) for r in cached]
        else:
            try:
                self.provider_calls += 1
                results = self.provider.search(image, state["key"], self.top_k)[: self.top_k]
            except ProviderError as exc:
                return error_observation(exc.kind, f"Image search failed: {exc}.")
            if self.cache is not None:
                self.cache.put(ckey, [asdict(r) for r in results])
        state["used"] += 1
        return self._observation(results)

    def _observation(self, results: list[ImageResult]) -> Observation:
        if not results:
            return Observation(text="Image search found no matching pages.", images=[])
        lines, images = ["Image search results for the input image:"], []
        for i, r in enumerate(results, start=1):
            line = f"[{i}] {escape_text(r.title)}"
            if r.link:
                line += f" ({escape_text(r.link)})"
            if r.score is not None:
                line += f" [similarity {r.score:.2f}]"
            if self.include_images and r.image_path and os.path.exists(r.image_path):
                with Image.open(r.image_path) as thumb:
                    images.append(fit_image(thumb, 4096, max(4096, self.thumbnail_pixels)))
                line += "\n<image>"
            lines.append(line)
        return Observation(text="\n".join(lines), images=images)

    def close(self) -> None:
        closer: Any = getattr(self.provider, "close", None)
        if callable(closer):
            closer()
        if self.cache is not None:
            self.cache.close()
            self.cache = None
