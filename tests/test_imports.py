"""The library imports and every CPU path runs where triton cannot be imported (macOS, Windows, a
Linux install without the ``gpu`` extra); ``errors`` imports nothing; numba's cache lies outside the
package.

Each check runs in a fresh interpreter whose import system refuses ``triton`` (a ``sys.meta_path``
finder raising ``ImportError``), so an import of triton anywhere on the path fails the run.
"""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BLOCK_TRITON = textwrap.dedent("""
    import sys

    class RefuseTriton:
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, RefuseTriton())
""")

CPU_PATHS = textwrap.dedent("""
    try:
        import triton  # noqa: F401
        raise SystemExit("the blocker let triton through")
    except ImportError:
        pass

    import torch
    import llmds_torch
    from llmds_torch.kernels import TritonUnavailable, resolve_backend, triton_available
    from llmds_torch.kernels.kv_write import kv_write
    from llmds_torch.kernels.reference import kv_write_reference
    assert not triton_available()
    assert resolve_backend("auto", torch.device("cpu")) == "torch"

    # kernels: the torch path runs, an explicit Triton request is refused by name
    pool = torch.randn(4, 2, 4, 2, 8)
    slots = torch.tensor([0, 5, 9])
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    expected = pool.clone()
    kv_write_reference(expected, slots, k, v)
    kv_write(pool, slots, k, v)
    assert torch.equal(pool, expected)
    try:
        kv_write(pool, slots, k, v, backend="triton")
        raise SystemExit("backend='triton' ran without triton")
    except (TritonUnavailable, ValueError):
        pass

    # the built-in model generating on the paged KV cache (attention through the torch references):
    # attach, write, fork with copy-on-write, prefix hits, compaction, read back
    from llmds_torch.kv import KVCacheConfig, PagedKVCache
    from llmds_torch.models.config import LlamaConfig
    from llmds_torch.models.engine import GenerationEngine
    from llmds_torch.models.llama import LlamaModel
    from llmds_torch.models.sampling import SamplingParams
    model = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                   num_kv_heads=2, max_position=256), seed=0, device="cpu")
    cache = PagedKVCache(KVCacheConfig(num_layers=2, num_kv_heads=2, head_dim=8, page_size=4, num_pages=64,
                                       dtype=torch.float32, device="cpu"))
    engine = GenerationEngine(model, cache)
    results = engine.generate([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]],
                              SamplingParams(max_new_tokens=3, n=2, temperature=0.8, seed=0))
    assert len(results) == 1
    assert cache.stats()["cow_copies"] > 0
    seq = cache.attach(list(range(1, 12)))
    assert cache.num_cached_tokens(seq) == 8
    k_before, _ = cache.get(seq)
    cache.defragment(order="sequence")
    assert torch.equal(cache.get(seq)[0], k_before)

    # paged attention on CPU
    from llmds_torch.attention import paged_attention
    q = torch.randn(1, 4, 8)
    cache.append(seq, [12])
    paged_attention(q, cache, 0, [seq])

    # the scheduler
    from llmds_torch.sched import Request, Scheduler, SchedulerConfig
    scheduler = Scheduler(cache, SchedulerConfig())
    scheduler.submit(Request(list(range(20, 30)), max_new_tokens=2), now=0.0)
    assert scheduler.get_batch(0.0)

    # retrieval: HNSW, BM25 and the pipeline (numba)
    from llmds_torch.retrieval import RetrievalPipeline
    pipeline = RetrievalPipeline()
    pipeline.add(["paged attention over pages", "a heap of requests", "fusion of scores"])
    assert len(pipeline.query("requests heap", k=2).ids) == 2

    assert "triton" not in sys.modules
    print("ok")
""")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    environment.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=environment)


def test_cpu_paths_run_where_triton_cannot_be_imported():
    out = run_python(BLOCK_TRITON + CPU_PATHS)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_the_blocker_blocks():
    out = run_python(BLOCK_TRITON + "import triton\n")
    assert out.returncode != 0 and "blocked in this test" in out.stderr


def test_kernel_modules_load_without_triton_and_refuse_to_launch():
    code = BLOCK_TRITON + textwrap.dedent("""
        import torch
        from llmds_torch.kernels import TritonUnavailable
        from llmds_torch.kernels import paged_attention, page_copy, kv_write
        try:
            kv_write._kv_write_kernel[(1,)]()
        except TritonUnavailable as exc:
            print("refused:", exc)
        try:
            with __import__("unittest.mock").mock.patch.dict("os.environ", {"TRITON_INTERPRET": "1"}):
                kv_write.kv_write(torch.zeros(2, 2, 4, 1, 4), torch.tensor([0]), torch.zeros(1, 1, 4),
                                  torch.zeros(1, 1, 4), backend="triton")
        except TritonUnavailable as exc:
            print("refused:", exc)
    """)
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("refused:") == 2 and "install triton" in out.stdout


def test_errors_module_imports_nothing():
    tree = ast.parse((ROOT / "llmds_torch" / "errors.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports == []


def test_numba_cache_is_outside_the_package(tmp_path):
    code = "import os, llmds_torch; print(os.environ['NUMBA_CACHE_DIR'])"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "LLMDS_TORCH_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    if sys.platform.startswith("linux"):
        assert Path(out.stdout.strip()).parent == tmp_path / "xdg" / "llmds_torch" / "numba"
    env["LLMDS_TORCH_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert Path(out.stdout.strip()).parent == tmp_path / "mine" / "numba"
    assert Path(out.stdout.strip()).name.startswith("src-")
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-own")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert Path(out.stdout.strip()) == tmp_path / "numba-own"


def test_compiled_code_is_written_to_the_user_cache_not_the_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["LLMDS_TORCH_CACHE_DIR"] = str(tmp_path)
    code = "from llmds_torch.sched import IndexedHeap; h = IndexedHeap(); h.push(1, 1.0); h.pop()"
    package = ROOT / "llmds_torch"
    before = set(package.rglob("*.nb[ic]"))  # left by an older build of this checkout, if any
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "numba").rglob("*.nbi")), "numba wrote no index into the user cache"
    assert set(package.rglob("*.nb[ic]")) == before


def test_every_compiled_module_is_in_the_cache_fingerprint():
    from llmds_torch.jit_cache import COMPILED_SOURCES

    package = ROOT / "llmds_torch"
    covered = {path for pattern in COMPILED_SOURCES for path in package.glob(pattern)}
    compiled = {path for path in package.rglob("*.py") if "njit" in path.read_text()}
    assert compiled and compiled <= covered, sorted(str(p.relative_to(package)) for p in compiled - covered)


def test_editing_a_compiled_source_moves_the_cache(tmp_path, monkeypatch):
    import llmds_torch.jit_cache as jit_cache

    (tmp_path / "heap.py").write_text("x = 1\n")
    (tmp_path / "retrieval").mkdir()
    (tmp_path / "retrieval" / "varint.py").write_text("y = 1\n")
    monkeypatch.setattr(jit_cache, "_PACKAGE", tmp_path)
    before = jit_cache.compiled_sources_fingerprint()
    assert jit_cache.compiled_sources_fingerprint() == before
    (tmp_path / "retrieval" / "varint.py").write_text("y = 22\n")  # another size
    edited = jit_cache.compiled_sources_fingerprint()
    assert edited != before
    (tmp_path / "retrieval" / "postings.py").write_text("z = 1\n")
    assert jit_cache.compiled_sources_fingerprint() not in (before, edited)
