"""Fusing ranked lists from several retrievers (dense, sparse, ...) into one top-K.

Each input is a pair ``(ids, scores)`` of 1-D arrays of one length, higher score = better (turn
distances into scores by negating them first); ids are distinct non-negative integers (else
``InvalidIds`` / ``DuplicateIds``, as everywhere in retrieval). Every method builds a ``{id: fused score}`` map and
hands it to :func:`top_k`, the one heap all methods share; ties go to the smaller id.

- ``convex``: ``sum_i w_i * norm(s_i(d))`` with ``norm`` min-max (``(s - min) / (max - min)``) or
  z-score (``(s - mean) / std``); a document absent from a list gets 0 from it.
- ``rrf``: reciprocal rank fusion, ``sum_i w_i / (rrf_k + rank_i(d))`` with ranks from 1 and
  ``rrf_k = 60`` by default.
- ``dbsf``: distribution-based score fusion: each list is scaled so ``mean - 3 std`` maps to 0 and
  ``mean + 3 std`` to 1, clipped to [0, 1], then summed with weights.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from .errors import InvalidFusionInput
from .ids import check_distinct_ids

FUSION_METHODS = ("convex", "rrf", "dbsf")
NORMALIZATIONS = ("min_max", "z_score")


def min_max_normalize(scores) -> np.ndarray:
    """``[n]`` -> ``[n]`` in [0, 1]; a list of equal scores maps to all ones."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    low, high = scores.min(), scores.max()
    return np.ones_like(scores) if high == low else (scores - low) / (high - low)


def z_score_normalize(scores) -> np.ndarray:
    """``[n]`` -> ``[n]`` with mean 0 and standard deviation 1; equal scores map to zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    std = scores.std()
    return np.zeros_like(scores) if std == 0 else (scores - scores.mean()) / std


def distribution_normalize(scores) -> np.ndarray:
    """``[n]`` -> ``[n]``: ``mean - 3 std`` to 0, ``mean + 3 std`` to 1, clipped; equal scores map to 0.5."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    mean, std = scores.mean(), scores.std()
    if std == 0:
        return np.full_like(scores, 0.5)
    return np.clip((scores - (mean - 3 * std)) / (6 * std), 0.0, 1.0)


def top_k(scores_by_id: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best entries of ``{id: score}`` through a heap, best first, ties to the smaller id.

    Returns
    -------
    ids : int64 ``[min(k, n)]``
    scores : float64 ``[min(k, n)]``
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidFusionInput(f"k must be an int >= 1; got {k!r}")
    best = heapq.nlargest(int(k), scores_by_id.items(), key=lambda item: (item[1], -item[0]))
    return (np.array([i for i, _ in best], dtype=np.int64), np.array([s for _, s in best], dtype=np.float64))


def _check(results: Sequence, weights) -> tuple[list, np.ndarray]:
    checked = []
    for i, pair in enumerate(results):
        if len(pair) != 2:
            raise InvalidFusionInput(f"result {i} must be an (ids, scores) pair")
        ids = check_distinct_ids(pair[0], f"result {i} ids")
        scores = np.asarray(pair[1], dtype=np.float64).reshape(-1)
        if ids.shape != scores.shape:
            raise InvalidFusionInput(f"result {i} has {ids.size} ids but {scores.size} scores")
        if not np.all(np.isfinite(scores)):
            raise InvalidFusionInput(f"result {i} holds NaN or infinite scores; drop padding before fusing")
        checked.append((ids, scores))
    if weights is None:
        weights = np.ones(len(checked))
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.size != len(checked):
        raise InvalidFusionInput(f"{weights.size} weights for {len(checked)} results")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise InvalidFusionInput(f"weights must be finite and >= 0; got {weights.tolist()}")
    return checked, weights


def _weighted_sum(checked, weights, transform) -> dict:
    fused: dict[int, float] = {}
    for (ids, scores), weight in zip(checked, weights):
        for doc, value in zip(ids.tolist(), transform(scores).tolist()):
            fused[doc] = fused.get(doc, 0.0) + weight * value
    return fused


def convex_combination(results: Sequence, k: int, weights=None, normalization: str = "min_max"):
    """Weighted sum of normalized scores; see the module docstring.

    Parameters
    ----------
    results : list of (ids ``[n_i]``, scores ``[n_i]``)
    k : int
    weights : ``[len(results)]``, finite, >= 0 (default all ones)
    normalization : "min_max" or "z_score"

    Returns
    -------
    ids : int64 ``[<= k]``, scores : float64 ``[<= k]``
    """
    if normalization not in NORMALIZATIONS:
        raise InvalidFusionInput(f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}")
    checked, weights = _check(results, weights)
    transform = min_max_normalize if normalization == "min_max" else z_score_normalize
    return top_k(_weighted_sum(checked, weights, transform), k)


def reciprocal_rank_fusion(results: Sequence, k: int, weights=None, rrf_k: float = 60.0):
    """``sum_i w_i / (rrf_k + rank)``; ranks count from 1 in each list's score order (ties by id).

    Returns
    -------
    ids : int64 ``[<= k]``, scores : float64 ``[<= k]``
    """
    if not np.isfinite(rrf_k) or rrf_k < 0:
        raise InvalidFusionInput(f"rrf_k must be finite and >= 0; got {rrf_k!r}")
    checked, weights = _check(results, weights)
    ranked = []
    for ids, scores in checked:
        order = np.lexsort((ids, -scores))
        ranks = np.empty(ids.size)
        ranks[order] = np.arange(1, ids.size + 1)
        ranked.append((ids, ranks))
    return top_k(_weighted_sum(ranked, weights, lambda r: 1.0 / (rrf_k + r)), k)


def distribution_based_fusion(results: Sequence, k: int, weights=None):
    """Weighted sum of scores scaled by each list's mean +- 3 std; see the module docstring.

    Returns
    -------
    ids : int64 ``[<= k]``, scores : float64 ``[<= k]``
    """
    checked, weights = _check(results, weights)
    return top_k(_weighted_sum(checked, weights, distribution_normalize), k)


def fuse(results: Sequence, k: int, method: str = "rrf", weights=None, normalization: str = "min_max",
         rrf_k: float = 60.0):
    """Dispatch to one of ``FUSION_METHODS`` by name."""
    if method == "convex":
        return convex_combination(results, k, weights, normalization)
    if method == "rrf":
        return reciprocal_rank_fusion(results, k, weights, rrf_k)
    if method == "dbsf":
        return distribution_based_fusion(results, k, weights)
    raise InvalidFusionInput(f"unknown fusion method {method!r}; choose one of {FUSION_METHODS}")
