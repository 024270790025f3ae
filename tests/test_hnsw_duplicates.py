"""HNSW recall on data with exact duplicate vectors, against exact search and against hnswlib.

Real corpora repeat themselves (boilerplate, repeated chunks). A group of identical points must not
become a clique that links only among itself, whatever the insertion order. Recall counts a
returned point as correct when its distance is within the k-th exact distance: among identical
points, which ones are returned is arbitrary.
"""

from functools import lru_cache

import numba
import numpy as np
import pytest

from llmds_torch.retrieval.hnsw import HNSW

N, DIM, K, N_QUERIES = 2000, 16, 10, 200


def with_duplicates(fraction: float, order: str, seed: int = 0) -> np.ndarray:
    """``[N, DIM]`` Gaussian points where ``fraction`` of the rows are copies of one of them,
    placed first, last or shuffled among the rest."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    n_dup = int(fraction * N)
    if n_dup == 0:
        return x
    copies = np.repeat(x[:1], n_dup, axis=0)
    rest = x[n_dup:]
    if order == "first":
        return np.concatenate([copies, rest])
    if order == "last":
        return np.concatenate([rest, copies])
    return np.concatenate([copies, rest])[rng.permutation(N)]


def queries(x: np.ndarray) -> np.ndarray:
    """Random queries, plus some next to the first point (the duplicated one, if any)."""
    rng = np.random.default_rng(99)
    near = x[:1] + 0.05 * rng.standard_normal((N_QUERIES // 10, DIM))
    return np.concatenate([rng.standard_normal((N_QUERIES - len(near), DIM)), near]).astype(np.float32)


def recall(found_dists: np.ndarray, x: np.ndarray, q: np.ndarray) -> float:
    exact = np.sort(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1), axis=1)[:, K - 1: K]
    return float((found_dists <= exact * (1 + 1e-4) + 1e-5).sum() / found_dists.size)


@lru_cache(maxsize=None)
def hnswlib_recall(fraction: float, order: str) -> float:
    hnswlib = pytest.importorskip("hnswlib")
    x = with_duplicates(fraction, order)
    q = queries(x)
    index = hnswlib.Index("l2", DIM)
    index.init_index(N, M=16, ef_construction=200, random_seed=0)
    index.add_items(x, num_threads=1)
    index.set_ef(64)
    _, dists = index.knn_query(q, K)
    return recall(dists, x, q)


@pytest.fixture
def one_thread():
    """Single-threaded numba: 2,000 one-point adds then never wait on a busy second core."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.mark.parametrize("build", ["one_by_one", "batched"])
@pytest.mark.parametrize("order", ["first", "shuffled", "last"])
@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.2])
def test_recall_with_duplicates_matches_hnswlib(fraction, order, build, one_thread):
    reference = hnswlib_recall(fraction, order)
    x = with_duplicates(fraction, order)
    q = queries(x)
    index = HNSW(DIM)  # default parameters, as hnswlib's above
    if build == "batched":
        index.add(x)
    else:
        for row in x:
            index.add(row)
    ids, dists = index.search(q, K)
    assert (ids >= 0).all(), "an unfiltered search with k <= len(index) must not pad"
    assert all(len(set(row)) == K for row in ids.tolist())
    assert recall(dists.numpy(), x, q) >= reference - 0.02


def test_unreachable_points_are_found_exactly():
    """A query whose beam reaches fewer than k points is answered by exact search, not padded."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    index = HNSW(8)
    index.add(x)
    index._links0[:] = -1  # cut every level-0 link: the beam sees only where the descent lands
    index._upper_links[:] = -1
    ids, dists = index.search(q, 10)
    exact = np.argsort(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids.numpy(), exact)
    ids, _ = index.search(q, 10, backend="torch")
    np.testing.assert_array_equal(ids.numpy(), exact)
