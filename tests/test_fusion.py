"""Fusion methods against hand-written plain-loop formulas, and refusal of bad inputs."""

import math

import numpy as np
import pytest

from llmds_torch.retrieval.errors import DuplicateIds, InvalidFusionInput
from llmds_torch.retrieval.fusion import (
    convex_combination,
    distribution_based_fusion,
    fuse,
    reciprocal_rank_fusion,
    top_k,
)


def random_lists(seed, n_lists=2, n=30, universe=60):
    rng = np.random.default_rng(seed)
    return [(rng.choice(universe, n, replace=False), rng.normal(rng.uniform(-3, 3), rng.uniform(0.1, 4), n))
            for _ in range(n_lists)]


def loop_fusion(results, contributions):
    """Fused score per document, summed in a plain loop; ``contributions(i, ids, scores)`` gives the
    ``(document, contribution)`` pairs of list ``i`` (ids and scores as Python lists)."""
    fused = {}
    for i, (ids, scores) in enumerate(results):
        for d, contribution in contributions(i, ids.tolist(), scores.tolist()):
            fused[d] = fused.get(d, 0.0) + contribution
    return fused


def assert_fused(got, fused, k, atol):
    """``got`` (ids, scores) is the top ``k`` of ``fused``, best first, ties to the smaller id."""
    ids, scores = got
    assert ids.tolist() == sorted(fused, key=lambda d: (-fused[d], d))[:k]
    np.testing.assert_allclose(scores, [fused[d] for d in ids.tolist()], atol=atol)


def _mean_std(scores):
    mean = sum(scores) / len(scores)
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("normalization", ["min_max", "z_score"])
def test_convex_matches_loop(seed, normalization):
    results = random_lists(seed, n_lists=3)
    weights = [0.5, 0.3, 0.2]

    def contributions(i, ids, scores):
        lo, hi = min(scores), max(scores)
        mean, std = _mean_std(scores)
        for d, s in zip(ids, scores):
            yield d, weights[i] * ((s - lo) / (hi - lo) if normalization == "min_max" else (s - mean) / std)

    assert_fused(convex_combination(results, 10, weights, normalization), loop_fusion(results, contributions), 10,
                 atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_rrf_matches_loop(seed):
    results = random_lists(seed)

    def contributions(i, ids, scores):
        ranked = sorted(zip(ids, scores), key=lambda p: (-p[1], p[0]))
        return [(d, 1.0 / (60 + rank)) for rank, (d, _) in enumerate(ranked, start=1)]

    assert_fused(reciprocal_rank_fusion(results, 15), loop_fusion(results, contributions), 15, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_dbsf_matches_loop(seed):
    results = random_lists(seed)

    def contributions(i, ids, scores):
        mean, std = _mean_std(scores)
        return [(d, min(1.0, max(0.0, (s - (mean - 3 * std)) / (6 * std)))) for d, s in zip(ids, scores)]

    assert_fused(distribution_based_fusion(results, 10), loop_fusion(results, contributions), 10, atol=1e-12)


def test_top_k_heap_ties_and_sizes():
    ids, scores = top_k({5: 1.0, 3: 1.0, 9: 2.0, 1: 0.5}, 3)
    assert ids.tolist() == [9, 3, 5] and scores.tolist() == [2.0, 1.0, 1.0]
    assert top_k({}, 4)[0].size == 0
    assert top_k({1: 1.0}, 10)[0].tolist() == [1]


def test_fuse_dispatch_and_empty_lists():
    results = random_lists(4)
    for method in ["convex", "rrf", "dbsf"]:
        ids, _ = fuse(results, 5, method=method)
        assert ids.size == 5
    assert fuse([([], []), ([], [])], 5)[0].size == 0
    ids, _ = fuse([([7], [0.3]), ([], [])], 5, method="convex")
    assert ids.tolist() == [7]


@pytest.mark.parametrize("method", ["convex", "rrf", "dbsf"])
def test_bad_inputs(method):
    good = random_lists(5)
    with pytest.raises(InvalidFusionInput, match="weights"):
        fuse(good, 5, method=method, weights=[0.5, float("nan")])
    with pytest.raises(InvalidFusionInput, match="weights"):
        fuse(good, 5, method=method, weights=[1.0])
    with pytest.raises(InvalidFusionInput, match="weights"):
        fuse(good, 5, method=method, weights=[1.0, -1.0])
    with pytest.raises(InvalidFusionInput, match="NaN"):
        fuse([([1, 2], [0.5, float("nan")])], 5, method=method)
    with pytest.raises(InvalidFusionInput, match="ids"):
        fuse([([1, 2, 3], [0.5, 0.2])], 5, method=method)
    with pytest.raises(DuplicateIds):
        fuse([([1, 1], [0.5, 0.2])], 5, method=method)
    with pytest.raises(InvalidFusionInput):
        fuse(good, 0, method=method)
    with pytest.raises(InvalidFusionInput):
        fuse(good, 5, method="borda")
