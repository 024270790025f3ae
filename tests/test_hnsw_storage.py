"""HNSW storage: the field table, 8-bit codes with exact re-ranking, breadth-first renumbering.

Oracles: FAISS exact search for recall, exact distances recomputed in torch for what is returned,
and the same index before and after renumbering, saving and loading.
"""

import copy
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from llmds_torch.retrieval import hnsw_sq8, hnsw_storage
from llmds_torch.retrieval.errors import CorruptIndexFile
from llmds_torch.retrieval.hnsw import HNSW

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from retrieval_files import HNSW_KIND, read, write  # noqa: E402

N, DIM, NQ, K = 3000, 24, 100, 10


def _data(metric: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM)).astype(np.float32)
    x = (centres[rng.integers(0, 30, N)] + 0.4 * rng.standard_normal((N, DIM))).astype(np.float32)
    q = (centres[rng.integers(0, 30, NQ)] + 0.4 * rng.standard_normal((NQ, DIM))).astype(np.float32)
    if metric == "cosine":
        x, q = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def _truth(x, q, metric):
    flat = faiss.IndexFlatL2(DIM) if metric == "l2" else faiss.IndexFlatIP(DIM)
    flat.add(x)
    return flat.search(q, K)[1]


def _recall(found: torch.Tensor, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.numpy(), truth)]))


def _exact_distances(x, q, ids, metric):
    """Reported distances of ``ids`` ``[nq, k]`` recomputed from the vectors (float64)."""
    x, q = torch.from_numpy(x).double(), torch.from_numpy(q).double()
    points = x[ids]                                       # [nq, k, dim]
    if metric == "l2":
        return ((points - q[:, None]) ** 2).sum(-1)
    dot = torch.einsum("qkd,qd->qk", points, q)
    return 1 - dot if metric == "cosine" else -dot


@pytest.fixture(scope="module", params=["l2", "ip", "cosine"])
def pair(request):
    """The same data built with float32 and with sq8 storage."""
    metric = request.param
    x, q = _data(metric)
    built = {}
    for storage in ("float32", "sq8"):
        index = HNSW(DIM, M=8, ef_construction=100, metric=metric, seed=1, storage=storage)
        index.add(x)
        built[storage] = index
    return metric, x, q, built


def test_field_table_drives_every_storage_tensor(pair):
    _, _, _, built = pair
    for storage, index in built.items():
        names = [f.name for f in hnsw_storage.fields_for(storage)]
        assert list(index.graph_tensors()) == names
        for field in hnsw_storage.fields_for(storage):
            tensor = getattr(index, "_" + field.name)
            assert tensor.dtype == field.torch_dtype, field.name
            sizes = {"slots": index.stats()["capacity"], "upper": index._upper_links.shape[0], "dim": DIM,
                     "M0": index.M0, "M": index.M}
            assert tuple(tensor.shape) == field.shape(sizes), field.name
        assert index.stats()["memory_bytes"] == sum(t.numel() * t.element_size() for t in index._tensors().values())
    assert "codes" not in built["float32"].graph_tensors()


def test_sq8_recall_matches_float32_against_exact_search(pair):
    metric, x, q, built = pair
    truth = _truth(x, q, metric)
    for ef in (16, 64):
        recalls = {}
        for storage, index in built.items():
            ids, dists = index.search(q, K, ef=ef)
            recalls[storage] = _recall(ids, truth)
            # Whatever the walk used, the reported distances are the exact ones, best first.
            torch.testing.assert_close(dists.double(), _exact_distances(x, q, ids, metric), rtol=1e-4, atol=1e-4)
            assert torch.all(dists[:, 1:] >= dists[:, :-1])
        assert recalls["sq8"] >= recalls["float32"] - 0.02, (ef, recalls)
        if ef == 64:
            assert recalls["sq8"] >= 0.95, recalls


def test_sq8_codes_follow_the_range_as_it_grows():
    x, q = _data("l2", seed=3)
    index = HNSW(DIM, M=8, ef_construction=60, metric="l2", seed=0, storage="sq8")
    index.add(x[:10] * 0.1)   # a narrow first range; later adds widen it and every code is recomputed
    index.add(x[10:1000])
    index.add(x[1000:] * 2.0)
    stored = index.graph_tensors()
    vectors = stored["vectors"].numpy()
    low, high = stored["sq_low"].numpy(), stored["sq_high"].numpy()
    np.testing.assert_array_equal(low, vectors.min(0))
    np.testing.assert_array_equal(high, vectors.max(0))
    step = hnsw_sq8.steps(low, high, l2=True)
    np.testing.assert_array_equal(stored["codes"].numpy(), hnsw_sq8.encode(vectors, low, step))
    truth = _truth(vectors, q, "l2")
    assert _recall(index.search(q, K, ef=64)[0], truth) >= 0.95


def test_sq8_delete_and_readd_keep_recall():
    x, q = _data("cosine", seed=4)
    index = HNSW(DIM, M=8, ef_construction=80, metric="cosine", seed=0, storage="sq8")
    index.add(x)
    gone = np.arange(0, N, 5)
    index.delete(gone)
    keep = np.setdiff1d(np.arange(N), gone)
    ids, _ = index.search(q, K, ef=64)
    assert not set(ids.reshape(-1).tolist()) & set(gone.tolist())
    assert _recall(ids, keep[_truth(x[keep], q, "cosine")]) >= 0.95
    index.add(x[gone], ids=gone)
    assert _recall(index.search(q, K, ef=64)[0], _truth(x, q, "cosine")) >= 0.95


@pytest.mark.parametrize("storage", ["float32", "sq8"])
def test_reorder_keeps_ids_results_and_file_round_trip(tmp_path, storage):
    x, q = _data("l2", seed=5)
    index = HNSW(DIM, M=8, ef_construction=80, metric="l2", seed=2, storage=storage)
    index.add(x)
    index.delete(np.arange(0, 300, 3))   # free slots move to the end
    before = index.search(q, K, ef=48)
    before_one = index.search(q[0], K, ef=48)
    old = copy.deepcopy(index.graph_tensors())
    index.reorder()
    new = index.graph_tensors()
    assert not torch.equal(new["ids"], old["ids"])  # the slots really moved
    n_live = len(index)
    assert new["live"][:n_live].all() and not new["live"][n_live:].any()
    # The graph is the same graph: the same id's neighbours by id, before and after.
    for graph in (old, new):
        graph["by_id"] = {int(i): sorted(int(graph["ids"][v]) for v in row if v >= 0)
                          for i, row, alive in zip(graph["ids"], graph["links0"], graph["live"]) if alive}
    assert old["by_id"] == new["by_id"]
    for got, want in zip(index.search(q, K, ef=48), before):
        assert torch.equal(got, want)
    for got, want in zip(index.search(q[0], K, ef=48), before_one):
        assert torch.equal(got, want)
    index.save(tmp_path / "reordered")
    loaded = HNSW.load(tmp_path / "reordered")
    assert loaded.storage == storage
    for name, tensor in loaded.graph_tensors().items():
        assert torch.equal(tensor, index.graph_tensors()[name]), name
    for got, want in zip(loaded.search(q, K, ef=48), before):
        assert torch.equal(got, want)
    loaded.add(x[:50] + 0.01)  # reused slots, grown storage: still found
    ids, _ = loaded.search(x[:50] + 0.01, 1, ef=32)
    assert (ids[:, 0] >= N).float().mean() >= 0.95


@pytest.fixture(scope="module")
def sq8_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sq8") / "index.hnsw"
    x, _ = _data("ip", seed=6)
    index = HNSW(DIM, M=4, ef_construction=40, metric="ip", seed=0, storage="sq8")
    index.add(x[:400])
    index.save(path)
    return path, index


def _edit(path, tmp_path, change):
    meta, arrays, version = read(path, HNSW_KIND)
    meta, arrays = copy.deepcopy(meta), {name: a.copy() for name, a in arrays.items()}
    change(meta, arrays)
    write(tmp_path / "edited", HNSW_KIND, version, meta, arrays)
    return tmp_path / "edited"


def _low_above_a_value(meta, arrays):
    arrays["sq_low"][3] = arrays["vectors"][arrays["live"], 3].min() + 0.01


SQ8_CASES = {
    "storage unknown": (lambda m, a: m.update(storage="int4"), "storage"),
    "storage not a string": (lambda m, a: m.update(storage=8), "storage"),
    "low missing": (lambda m, a: a.pop("sq_low"), "sq_low"),
    "low of the wrong dtype": (lambda m, a: a.update(sq_low=a["sq_low"].astype(np.float64)), "sq_low"),
    "high of the wrong shape": (lambda m, a: a.update(sq_high=a["sq_high"][:-1]), "sq_high"),
    "low NaN": (lambda m, a: a["sq_low"].__setitem__(0, np.nan), "sq_low"),
    "high infinite": (lambda m, a: a["sq_high"].__setitem__(2, np.inf), "sq_high"),
    "high below low": (lambda m, a: a.update(sq_high=a["sq_low"] - 1), "sq_high"),
    "low above a live value": (_low_above_a_value, "sq_low"),
    "low of the wrong shape": (lambda m, a: a.update(sq_low=np.zeros((2, DIM), np.float32)), "sq_low"),
}


@pytest.mark.parametrize("case", list(SQ8_CASES))
def test_crafted_sq8_file_is_refused_by_field(sq8_file, tmp_path, case):
    change, field = SQ8_CASES[case]
    with pytest.raises(CorruptIndexFile, match=field):
        HNSW.load(_edit(sq8_file[0], tmp_path, change))


def test_sq8_file_loads_and_searches_as_saved(sq8_file, tmp_path):
    path, original = sq8_file
    loaded = HNSW.load(path)
    assert loaded.storage == "sq8"
    for name, tensor in original.graph_tensors().items():  # codes recomputed from the vectors
        assert torch.equal(loaded.graph_tensors()[name], tensor), name
    q = np.random.default_rng(7).standard_normal((9, DIM)).astype(np.float32)
    for got, want in zip(loaded.search(q, 5), original.search(q, 5)):
        assert torch.equal(got, want)
    # A file written before storage modes existed has no "storage" field: float32.
    plain = HNSW(DIM, M=4, seed=0)
    plain.add(q)
    plain.save(tmp_path / "plain")
    assert HNSW.load(_edit(tmp_path / "plain", tmp_path, lambda m, a: m.pop("storage"))).storage == "float32"


def test_torch_backend_ends_on_tied_distances(tmp_path):
    """Every point has 39 exact copies: the lockstep beam meets equal distances everywhere and
    must still end (run in a subprocess so that a search that never ends fails by timeout)."""
    script = (
        "import numpy as np, torch\n"
        "from llmds_torch.retrieval.hnsw import HNSW\n"
        "x = np.repeat(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32), 40, axis=0)\n"
        "index = HNSW(8, M=4, ef_construction=20)\n"
        "index.add(x)\n"
        "ids, d = index.search(x[::40], 5, ef=10, backend='torch')\n"
        "ref, ref_d = index.search(x[::40], 5, ef=10, backend='numba')\n"
        "assert (ids >= 0).all() and (d[:, 0] == 0).all(), (ids, d)\n"
        "assert ((ids[:, 0] // 40) == torch.arange(5)).all(), ids\n"
        "torch.testing.assert_close(d, ref_d)  # as good as the compiled search on the same graph\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_bad_storage_is_refused():
    from llmds_torch.errors import ConfigError

    with pytest.raises(ConfigError, match="storage"):
        HNSW(4, storage="int8")
