"""HNSW recall against FAISS exact search, determinism, deletes, filters, persistence, bad input."""

import subprocess
import sys

import numba
import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss")  # the exact-search oracle (test extra); absent on some GPU images

from llmds_torch.errors import LLMDSError
from llmds_torch.retrieval.errors import (
    CorruptIndexFile,
    DimensionMismatch,
    DuplicateIds,
    EmptyIndex,
    InvalidSearchParameter,
    NonFiniteVectors,
    UnknownIds,
)
from llmds_torch.retrieval import hnsw_numba
from llmds_torch.retrieval.hnsw import HNSW
from llmds_torch.retrieval.errors import InvalidIds

DIM = 24
N = 2000
NQ = 100
K = 10


def _data(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "clusters":
        centers = np.random.default_rng(99).standard_normal((20, DIM)) * 4
        x = centers[rng.integers(0, 20, n)] + rng.standard_normal((n, DIM))
    elif kind == "uniform":
        x = rng.random((n, DIM))
    else:  # "normalized"
        x = rng.standard_normal((n, DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _exact(x: np.ndarray, q: np.ndarray, metric: str, ids: np.ndarray | None = None, k: int = K):
    """FAISS exact top-k ids (mapped through ``ids``) and FAISS's own scores."""
    if metric == "l2":
        flat = faiss.IndexFlatL2(x.shape[1])
    else:
        flat = faiss.IndexFlatIP(x.shape[1])
        if metric == "cosine":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
    flat.add(x)
    scores, rows = flat.search(q, k)
    return (rows if ids is None else ids[rows]), scores


def _recall(found: torch.Tensor, truth: np.ndarray) -> float:
    found = found.numpy()
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


CASES = [("clusters", "l2"), ("uniform", "l2"), ("clusters", "ip"), ("normalized", "cosine")]


@pytest.fixture(scope="module")
def built():
    """One index per (data kind, metric), built once for the module."""
    out = {}
    for kind, metric in CASES:
        x = _data(kind, N, seed=1)
        q = _data(kind, NQ, seed=2)
        index = HNSW(DIM, M=12, ef_construction=100, metric=metric, seed=0)
        index.add(x)
        out[kind, metric] = (index, x, q)
    return out


@pytest.mark.parametrize("kind,metric", CASES)
def test_recall_at_default_ef_against_faiss_exact(built, kind, metric):
    index, x, q = built[kind, metric]
    truth, _ = _exact(x, q, metric)
    ids, dists = index.search(torch.from_numpy(q), K)
    assert ids.shape == (NQ, K) and ids.dtype == torch.int64 and dists.dtype == torch.float32
    assert _recall(ids, truth) >= 0.95
    assert torch.all(dists[:, 1:] >= dists[:, :-1])


@pytest.mark.parametrize("kind,metric", CASES)
def test_distances_follow_the_documented_convention(built, kind, metric):
    index, x, q = built[kind, metric]
    ids, dists = index.search(q, K)
    xs, qs = x.astype(np.float64), q.astype(np.float64)
    points = xs[ids.numpy()]                                   # [NQ, K, DIM]
    if metric == "l2":
        expected = ((points - qs[:, None, :]) ** 2).sum(-1)
    elif metric == "ip":
        expected = -(points * qs[:, None, :]).sum(-1)
    else:
        pn = points / np.linalg.norm(points, axis=-1, keepdims=True)
        qn = qs / np.linalg.norm(qs, axis=1, keepdims=True)
        expected = 1 - (pn * qn[:, None, :]).sum(-1)
    np.testing.assert_allclose(dists.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,metric", CASES)
def test_lockstep_torch_search_matches_numba(built, kind, metric):
    index, x, q = built[kind, metric]
    truth, _ = _exact(x, q, metric)
    ids_nb, d_nb = index.search(q, K, backend="numba")
    ids_t, d_t = index.search(q, K, backend="torch")
    assert _recall(ids_t, truth) >= _recall(ids_nb, truth) - 0.01
    same = (ids_t == ids_nb).float().mean().item()
    assert same >= 0.97
    matched = ids_t == ids_nb
    torch.testing.assert_close(d_t[matched], d_nb[matched], rtol=1e-4, atol=1e-4)


def test_single_query_matches_batch(built):
    index, _, q = built["clusters", "l2"]
    ids, dists = index.search(q, K)
    for i in range(5):
        one_ids, one_d = index.search(q[i], K)
        assert one_ids.shape == (1, K)
        assert torch.equal(one_ids[0], ids[i]) and torch.equal(one_d[0], dists[i])


def test_each_compiled_kernel_wraps_its_own_function():
    """numba's disk cache keys entries by function, not by jit options: one function compiled both
    serial and parallel would load one cached variant for both."""
    dispatchers = [obj for obj in vars(hnsw_numba).values() if isinstance(obj, numba.core.registry.CPUDispatcher)]
    assert len(dispatchers) > 5
    functions = [d.py_func for d in dispatchers]
    assert len(set(functions)) == len(functions)


def test_single_query_search_never_starts_the_parallel_runtime(tmp_path, built):
    index, _, q = built["clusters", "l2"]
    index.save(tmp_path / "index.hnsw")
    expected, _ = index.search(q[3], K)
    script = (
        "import sys, numba, numpy as np\n"
        "from llmds_torch.retrieval.hnsw import HNSW\n"
        "index = HNSW.load(sys.argv[1])\n"
        "ids, _ = index.search(np.load(sys.argv[2]), 10)\n"
        "try:\n"
        "    layer = numba.threading_layer()\n"
        "except ValueError:\n"
        "    layer = 'none'\n"
        "print(layer, ids[0].tolist())\n"
    )
    np.save(tmp_path / "query.npy", q[3])
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "index.hnsw"), str(tmp_path / "query.npy")],
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert out[0] == "none"  # numba's threading layer was never initialized
    assert out[1].strip() == str(expected[0].tolist())


def test_compiled_input_checks_match_numpy():
    rng = np.random.default_rng(60)
    x = (rng.standard_normal((50, DIM)) * rng.uniform(1e-3, 1e3, (50, 1))).astype(np.float32)
    assert hnsw_numba.first_nonfinite_row(x) == -1
    for row, value in ((7, np.nan), (3, np.inf), (0, -np.inf)):
        bad = x.copy()
        bad[row, DIM - 1] = value
        bad[row + 20, 0] = np.nan
        assert hnsw_numba.first_nonfinite_row(bad) == row
    unit = np.empty_like(x)
    assert hnsw_numba.normalize_rows(x, unit) == -1
    np.testing.assert_allclose(unit, x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True), rtol=1e-6)
    x[11] = 0.0
    assert hnsw_numba.normalize_rows(x, unit) == 11


def _graph(index):
    return {name: t.clone() for name, t in index.graph_tensors().items()}


def test_same_seed_same_graph_for_any_thread_count():
    x = _data("clusters", 1500, seed=5)
    graphs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            index = HNSW(DIM, M=8, ef_construction=64, seed=7)
            index.add(x[:700])
            index.add(x[700:])
            graphs.append(_graph(index))
    finally:
        numba.set_num_threads(before)
    for name in graphs[0]:
        assert torch.equal(graphs[0][name], graphs[1][name]), name
    other = HNSW(DIM, M=8, ef_construction=64, seed=8)
    other.add(x[:700])
    other.add(x[700:])
    assert not torch.equal(_graph(other)["links0"], graphs[0]["links0"])


def test_levels_follow_the_paper_distribution():
    index = HNSW(4, M=4, ef_construction=8, seed=3)
    index.add(np.random.default_rng(0).standard_normal((4000, 4)).astype(np.float32))
    counts = np.array(index.stats()["points_per_level"], dtype=np.float64)
    # P(level >= 1) = 1/M = 0.25 with mL = 1/ln M; binomial sd is ~27 points for 4000.
    assert abs(counts[1:].sum() - 1000) < 150
    assert index.stats()["n_live"] == 4000


def test_deleted_ids_never_returned_and_slots_reused():
    x = _data("clusters", N, seed=11)
    q = _data("clusters", NQ, seed=12)
    index = HNSW(DIM, M=12, ef_construction=100, seed=0)
    ids = index.add(x).numpy()
    gone = np.random.default_rng(0).choice(ids, size=N // 4, replace=False)
    index.delete(gone)
    assert len(index) == N - N // 4
    found, _ = index.search(q, K)
    assert not np.isin(found.numpy(), gone).any()
    allow = np.random.default_rng(1).choice(ids, size=N // 2, replace=False)
    for factor in (0.0, 1.0):  # graph path, exact path
        index.exact_filter_factor = factor
        found, _ = index.search(q, K, allow=allow)
        assert not np.isin(found.numpy(), gone).any()
    slots_before = index.stats()["n_slots"]
    index.add(_data("clusters", 100, seed=13))
    assert index.stats()["n_slots"] == slots_before  # reused freed slots, did not grow
    with pytest.raises(UnknownIds):
        index.delete(gone[:1])


def test_entry_point_deleted_is_rechosen():
    x = _data("uniform", 500, seed=3)
    q = _data("uniform", 20, seed=4)
    index = HNSW(DIM, M=8, ef_construction=50, seed=0)
    index.add(x)
    entry = index.stats()["entry_id"]
    index.delete([entry])
    assert index.stats()["entry_id"] != entry
    ids, _ = index.search(q, 5)
    assert (ids != entry).all() and (ids >= 0).all()
    index.delete([i for i in range(500) if i != entry])
    assert len(index) == 0 and index.stats()["entry_id"] is None
    with pytest.raises(EmptyIndex):
        index.search(q, 1)
    index.add(x[:50], ids=np.arange(1000, 1050))
    ids, _ = index.search(x[:3], 1)
    assert ids[:, 0].tolist() == [1000, 1001, 1002]


@pytest.mark.parametrize("kind,metric", [("clusters", "l2"), ("normalized", "cosine")])
def test_recall_holds_after_deleting_and_readding_a_fifth(kind, metric):
    x = _data(kind, N, seed=21)
    q = _data(kind, NQ, seed=22)
    index = HNSW(DIM, M=12, ef_construction=100, metric=metric, seed=0)
    ids = index.add(x).numpy()
    rng = np.random.default_rng(5)
    for round_ in range(2):
        gone = rng.choice(ids, size=N // 5, replace=False)
        index.delete(gone)
        fresh = _data(kind, N // 5, seed=100 + round_)
        new_ids = np.arange(10_000 * (round_ + 1), 10_000 * (round_ + 1) + N // 5)
        index.add(fresh, ids=new_ids)
        keep = ~np.isin(ids, gone)
        x = np.concatenate([x[keep], fresh])
        ids = np.concatenate([ids[keep], new_ids])
        truth, _ = _exact(x, q, metric, ids=ids)
        found, _ = index.search(q, K)
        assert _recall(found, truth) >= 0.95, round_


@pytest.mark.parametrize("factor", [0.0, 1.0])  # 0 forces the graph walk, 1 is the default rule
def test_filtered_search_matches_exact_on_the_allowed_subset(built, factor):
    index, x, q = built["clusters", "l2"]
    rng = np.random.default_rng(8)
    index.exact_filter_factor = factor
    try:
        for size in (1000, 300) if factor == 0.0 else (1000, 300, 40):
            allow = np.sort(rng.choice(N, size=size, replace=False))
            truth, exact_d = _exact(x[allow], q, "l2", ids=allow)
            for backend in ("numba", "torch"):
                found, dists = index.search(q, K, allow=allow, backend=backend)
                assert np.isin(found.numpy(), allow).all()
                assert _recall(found, truth) >= 0.95, (size, backend)
                if factor == 1.0:  # exact path for these sizes (size**2 <= 1.0 * M0 * ef * N)
                    np.testing.assert_allclose(dists.numpy(), exact_d, rtol=1e-4, atol=1e-4)
    finally:
        index.exact_filter_factor = 1.0


def test_filter_with_fewer_allowed_than_k_pads(built):
    index, x, q = built["clusters", "l2"]
    found, dists = index.search(q[:3], K, allow=[5, 9, 123456789])
    assert (found[:, :2].sort(1).values == torch.tensor([5, 9])).all()
    assert (found[:, 2:] == -1).all() and torch.isinf(dists[:, 2:]).all()


def test_save_load_round_trip_is_exact(tmp_path, built):
    index, x, q = built["clusters", "ip"]
    index.save(tmp_path / "index.hnsw")
    loaded = HNSW.load(tmp_path / "index.hnsw")
    a, b = _graph(index), _graph(loaded)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for got, want in zip(loaded.search(q, K), index.search(q, K)):
        assert torch.equal(got, want)
    assert len(loaded) == len(index) and loaded.dim == index.dim and loaded.metric == "ip"
    # the level generator's state travels too: the same later adds give the same graph
    more = _data("clusters", 200, seed=30)
    twin = HNSW.load(tmp_path / "index.hnsw")
    twin.add(more)
    loaded.add(more)
    for name, t in _graph(twin).items():
        assert torch.equal(t, _graph(loaded)[name])


def test_truncated_or_altered_file_refused(tmp_path, built):
    index = built["uniform", "l2"][0]
    path = tmp_path / "index.hnsw"
    index.save(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptIndexFile):
        HNSW.load(path)
    altered = bytearray(blob)
    altered[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(altered))
    with pytest.raises(CorruptIndexFile):
        HNSW.load(path)


def _snapshot(index, q):
    return len(index), _graph(index), index.search(q, 5)


def _assert_unchanged(index, q, before):
    n, graph, (ids, dists) = before
    assert len(index) == n
    for name, t in _graph(index).items():
        assert torch.equal(t, graph[name]), name
    got_ids, got_d = index.search(q, 5)
    assert torch.equal(got_ids, ids) and torch.equal(got_d, dists)


def test_bad_input_raises_named_errors_and_leaves_index_unchanged():
    x = _data("uniform", 300, seed=40)
    q = _data("uniform", 4, seed=41)
    index = HNSW(DIM, M=8, ef_construction=40, seed=0)
    index.add(x, ids=np.arange(300))
    before = _snapshot(index, q)
    nan = x[:3].copy()
    nan[1, 4] = np.nan
    inf = x[:3].copy()
    inf[2, 0] = np.inf
    bad_calls = [
        (DimensionMismatch, lambda: index.add(np.ones((3, DIM + 1), np.float32))),
        (DimensionMismatch, lambda: index.add(np.ones((2, 3, DIM), np.float32))),
        (NonFiniteVectors, lambda: index.add(nan, ids=[900, 901, 902])),
        (NonFiniteVectors, lambda: index.add(inf)),
        (DuplicateIds, lambda: index.add(x[:3], ids=[500, 501, 500])),
        (DuplicateIds, lambda: index.add(x[:2], ids=[7, 600])),
        (InvalidIds, lambda: index.add(x[:2], ids=[-1, 600])),
        (InvalidIds, lambda: index.add(x[:2], ids=[600])),
        (DimensionMismatch, lambda: index.search(np.ones((2, DIM - 1), np.float32), 5)),
        (NonFiniteVectors, lambda: index.search(nan, 5)),
        (NonFiniteVectors, lambda: index.search(nan[1], 5)),  # the one-query path checks too
        (NonFiniteVectors, lambda: index.search(-inf[2], 5)),
        (InvalidSearchParameter, lambda: index.search(q, 301)),
        (InvalidSearchParameter, lambda: index.search(q, 0)),
        (InvalidSearchParameter, lambda: index.search(q, 10, ef=5)),
        (UnknownIds, lambda: index.delete([5, 12345])),
        (DuplicateIds, lambda: index.delete([5, 5])),
    ]
    for error, call in bad_calls:
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, LLMDSError)
        _assert_unchanged(index, q, before)


def test_empty_index_and_zero_cosine_vector():
    index = HNSW(DIM, metric="cosine")
    with pytest.raises(EmptyIndex):
        index.search(np.ones(DIM, np.float32), 1)
    zero = np.zeros((2, DIM), np.float32)
    zero[0, 0] = 1.0
    with pytest.raises(NonFiniteVectors):
        index.add(zero)
    assert len(index) == 0
    index.add(zero[:1])
    with pytest.raises(NonFiniteVectors):
        index.search(zero[1], 1)


def test_growth_by_doubling_keeps_points_findable():
    x = _data("uniform", 700, seed=50)
    index = HNSW(DIM, M=8, ef_construction=60, seed=0)
    for start in range(0, 700, 70):  # many small adds: capacity doubles 16 -> 1024
        index.add(x[start:start + 70])
    assert index.stats()["capacity"] == 1024
    ids, dists = index.search(x, 1)
    assert (ids[:, 0].numpy() == np.arange(700)).mean() >= 0.99
