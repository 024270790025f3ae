"""Hybrid retrieval: dense vectors + BM25, fused into one top-K, behind a hot-query cache.

A query runs: cache lookup -> embed (when no vector is given) -> dense search -> sparse search ->
fusion -> top-K, each stage timed into :meth:`RetrievalPipeline.stats`. Dense distances are turned
into scores by negation (smaller distance, higher score) before fusion. Adding or deleting
documents empties the result cache (cached results would be stale) but keeps its frequency sketch.

Adding and deleting are all-or-nothing: the input is checked first, then the sparse index changes,
then the dense one; if the dense index raises, the sparse index is restored to its exact previous
state (``InvertedIndex.snapshot`` / ``restore``), so the two always hold the same documents.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmds_torch.errors import ConfigError

from .embedder import HashingEmbedder
from .errors import DimensionMismatch, InvalidDocument, InvalidIds, InvalidQuery, InvalidSearchParameter, NonFiniteVectors
from .fusion import FUSION_METHODS, NORMALIZATIONS, fuse
from .hot_cache import HotQueryCache
from .ids import check_known_ids, check_new_ids, default_ids
from .inverted_index import InvertedIndex

STAGES = ("cache", "embed", "dense", "sparse", "fusion")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Knobs of :class:`RetrievalPipeline`.

    Parameters
    ----------
    fusion : "rrf" (default) | "convex" | "dbsf"
    weights : (dense weight, sparse weight), finite and >= 0
    normalization : "min_max" | "z_score" (for "convex")
    rrf_k : float, the RRF constant (default 60)
    candidates : int, results taken from each retriever before fusion (default 50)
    cache_capacity : int, cached queries (0 turns the cache off)
    """

    fusion: str = "rrf"
    weights: tuple = (1.0, 1.0)
    normalization: str = "min_max"
    rrf_k: float = 60.0
    candidates: int = 50
    cache_capacity: int = 1024

    def __post_init__(self):
        if self.fusion not in FUSION_METHODS:
            raise ConfigError(f"fusion must be one of {FUSION_METHODS}; got {self.fusion!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS}; got {self.normalization!r}")
        weights = tuple(float(w) for w in self.weights)
        if len(weights) != 2 or not all(np.isfinite(w) and w >= 0 for w in weights):
            raise ConfigError(f"weights must be two finite numbers >= 0 (dense, sparse); got {self.weights!r}")
        object.__setattr__(self, "weights", weights)
        if not np.isfinite(self.rrf_k) or self.rrf_k < 0:
            raise ConfigError(f"rrf_k must be finite and >= 0; got {self.rrf_k!r}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise ConfigError(f"candidates must be an int >= 1; got {self.candidates!r}")
        if not isinstance(self.cache_capacity, int) or self.cache_capacity < 0:
            raise ConfigError(f"cache_capacity must be an int >= 0; got {self.cache_capacity!r}")


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    """What a query returns: ids ``[n]`` and fused scores ``[n]``, best first, and whether it was cached."""

    ids: np.ndarray
    scores: np.ndarray
    from_cache: bool = False


def _default_dense_index(dim: int):
    try:
        from .hnsw import HNSW
    except ImportError:
        from .flat_index import FlatIndex
        return FlatIndex(dim, metric="cosine")
    return HNSW(dim, metric="cosine")


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class RetrievalPipeline:
    """Documents in; dense + sparse search, fusion, top-K and a hot-query cache out.

    Parameters
    ----------
    embedder : object with ``dim`` and ``embed(texts) -> [n, dim]``, optional
        Embeds texts that come without vectors (default ``HashingEmbedder()``).
    dense_index : object with ``add(vectors, ids)``, ``search(queries, k) -> (ids, distances)``,
        ``delete(ids)`` and ``len``, optional (default: ``HNSW(embedder.dim, metric="cosine")``).
    sparse_index : InvertedIndex (or an object with its ``add``, ``delete``, ``search``, ``snapshot``
        and ``restore``), optional (default ``InvertedIndex()``)
    config : PipelineConfig
    """

    def __init__(self, embedder=None, dense_index=None, sparse_index: InvertedIndex | None = None,
                 config: PipelineConfig | None = None):
        self.config = config or PipelineConfig()
        self.embedder = embedder if embedder is not None else HashingEmbedder()
        self.dense_index = dense_index if dense_index is not None else _default_dense_index(self.embedder.dim)
        self.sparse_index = sparse_index if sparse_index is not None else InvertedIndex()
        self.cache = HotQueryCache(self.config.cache_capacity) if self.config.cache_capacity else None
        self._texts: dict[int, str] = {}
        self._next_id = 0
        self._timings = {stage: [0, 0.0] for stage in STAGES}  # stage -> [calls, seconds]
        self.queries = 0

    def __len__(self) -> int:
        return len(self._texts)

    def text(self, doc_id: int) -> str:
        """The text of a document."""
        if isinstance(doc_id, (list, tuple, np.ndarray, torch.Tensor)) and np.size(doc_id) != 1:
            raise InvalidIds(f"text takes one id; got {np.size(doc_id)}")
        return self._texts[int(check_known_ids(doc_id, self._texts)[0])]

    def _timed(self, stage: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self._timings[stage][0] += 1
        self._timings[stage][1] += time.perf_counter() - start
        return out

    # ------------------------------------------------------------------------------------ building

    def add(self, texts: Sequence[str], vectors=None, ids=None) -> np.ndarray:
        """Add documents to both indexes.

        Parameters
        ----------
        texts : sequence of str, ``[n]``
        vectors : ``[n, dim]`` (torch or numpy), optional; default: ``embedder.embed(texts)``
        ids : sequence of int, optional
            Non-negative and new (else ``InvalidIds`` / ``DuplicateIds``); default consecutive from
            one past the largest id so far.

        Returns
        -------
        np.ndarray of int64, ``[n]``
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidDocument("texts must be a list of str; wrap a single text in a list")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InvalidDocument(f"texts {bad[:10]} are not str; the pipeline takes raw text documents")
        if vectors is None:
            vectors = self._timed("embed", self.embedder.embed, list(texts))
        shape = tuple(vectors.shape)
        if shape != (len(texts), self.embedder.dim):
            raise DimensionMismatch(f"vectors must be [{len(texts)}, {self.embedder.dim}]; got {list(shape)}")
        if not np.isfinite(_to_numpy(vectors)).all():
            raise NonFiniteVectors("vectors hold NaN or infinity; only finite values are allowed")
        new_ids = self._check_new_ids(ids, len(texts))
        before = self.sparse_index.snapshot()
        self.sparse_index.add(list(texts), ids=new_ids)
        try:
            self.dense_index.add(vectors, ids=new_ids)  # validates the vectors its own way, before any change
        except BaseException:
            self.sparse_index.restore(before)  # keep the two indexes in step: nothing half-done
            raise
        self._next_id = max(self._next_id, int(new_ids.max()) + 1) if new_ids.size else self._next_id
        self._texts.update(zip(new_ids.tolist(), texts))
        if self.cache is not None:
            self.cache.clear()
        return new_ids

    def _check_new_ids(self, ids, count: int) -> np.ndarray:
        if ids is None:
            return default_ids(self._next_id, count)
        return check_new_ids(ids, count, self._texts, "texts")

    def delete(self, ids) -> None:
        """Remove documents from both indexes.

        The ids must be distinct non-negative integers, all in the pipeline; otherwise
        ``InvalidIds``, ``DuplicateIds`` or ``UnknownIds`` is raised and nothing changes. Should the
        dense index fail, the sparse index is restored, so the two never disagree.
        """
        ids = check_known_ids(ids, self._texts).tolist()
        if not ids:
            return
        before = self.sparse_index.snapshot()
        self.sparse_index.delete(ids)
        try:
            self.dense_index.delete(np.asarray(ids, dtype=np.int64))
        except BaseException:
            self.sparse_index.restore(before)
            raise
        for i in ids:
            self._texts.pop(i, None)
        if self.cache is not None:
            self.cache.clear()

    # ------------------------------------------------------------------------------------ querying

    def query(self, text: str, k: int = 10, vector=None) -> RetrievalResult:
        """The ``k`` best documents for a text query (and optional query vector ``[dim]``).

        Empty queries or queries of unknown words still search the dense side; an empty pipeline
        gives an empty result.
        """
        if not isinstance(text, str):
            raise InvalidQuery(f"the query must be str; got {type(text).__name__}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidSearchParameter(f"k must be an int >= 1; got {k!r}")
        if vector is not None:
            vector = _to_numpy(vector).astype(np.float32).reshape(-1)
            if vector.size != self.embedder.dim or not np.all(np.isfinite(vector)):
                raise DimensionMismatch(f"the query vector must be [{self.embedder.dim}] and finite")
        self.queries += 1
        key = self._cache_key(text, int(k), vector)
        if self.cache is not None:
            cached = self._timed("cache", self.cache.get, key)
            if cached is not None:
                return RetrievalResult(cached.ids, cached.scores, from_cache=True)
        result = self._search(text, int(k), vector)
        if self.cache is not None:
            self.cache.put(key, result)
        return result

    def _search(self, text: str, k: int, vector) -> RetrievalResult:
        candidates = max(self.config.candidates, k)
        results = []
        if len(self.dense_index) > 0:
            if vector is None:
                vector = _to_numpy(self._timed("embed", self.embedder.embed, [text]))[0]
            kd = min(candidates, len(self.dense_index))
            ids, distances = self._timed("dense", self.dense_index.search, vector[None, :], kd)
            ids, distances = _to_numpy(ids)[0], _to_numpy(distances)[0].astype(np.float64)
            found = (ids >= 0) & np.isfinite(distances)
            results.append((ids[found], -distances[found]))
        else:
            results.append((np.empty(0, dtype=np.int64), np.empty(0)))
        results.append(self._timed("sparse", self.sparse_index.search, text, candidates))
        ids, scores = self._timed("fusion", fuse, results, k, self.config.fusion, self.config.weights,
                                  self.config.normalization, self.config.rrf_k)
        ids.setflags(write=False)
        scores.setflags(write=False)
        return RetrievalResult(ids, scores)

    @staticmethod
    def _cache_key(text: str, k: int, vector) -> str:
        digest = None if vector is None else hashlib.sha256(vector.tobytes()).hexdigest()[:32]
        return json.dumps([text, k, digest])

    def prime_cache(self, source=None) -> int:
        """Fill the cache with results of the heaviest text-only queries of ``source``'s sketch
        (default: the cache's own). Return how many entries were inserted."""
        if self.cache is None:
            return 0

        def fetch(key):
            text, k, digest = json.loads(key)
            return self._search(text, k, None)

        def text_only(key) -> bool:
            try:
                return isinstance(key, str) and json.loads(key)[2] is None
            except (ValueError, TypeError, IndexError, KeyError):
                return False

        return self.cache.prime(fetch, source=source, accept=text_only)

    def reset_timings(self) -> None:
        """Zero the per-stage timings (for example after a warm-up query compiled the search loops)."""
        self._timings = {stage: [0, 0.0] for stage in STAGES}

    def stats(self) -> dict:
        """Counts, per-stage timings (calls, total and mean milliseconds), cache and index stats."""
        stages = {stage: {"calls": calls, "total_ms": 1e3 * seconds, "mean_ms": 1e3 * seconds / calls if calls else 0.0}
                  for stage, (calls, seconds) in self._timings.items()}
        return {
            "num_documents": len(self._texts),
            "queries": self.queries,
            "stages": stages,
            "cache": self.cache.stats() if self.cache is not None else None,
            "sparse": self.sparse_index.stats(),
        }
