"""Compile the library's numba loops ahead of time, so that the first real call is fast.

Each target runs a few public calls on tiny inputs of the dtypes real use passes, which makes numba
compile (or load from its cache, see ``jit_cache``) every loop those calls reach: HNSW insertion and
search (l2, inner product, cosine, filtered, 8-bit), BM25 indexing, search, deletes, segment merges and
file checks, the count-min sketch, the scheduler's heap, the retrieval pipeline that ties them
together, and the KV block manager's page release. Compiled code is
cached on disk, so this costs seconds once per install (``llmds warmup``) and well under a second
after that. ``llmds demo`` warms only the loops it uses (``DEMO_TARGETS``).

Numba compiles one function at a time in one thread. On a cold cache the targets are therefore
first compiled side by side in worker processes (one per core, at most ``processes``), which write
numba's disk cache; the calling process then runs every target itself, loading what the workers
wrote. Should the workers fail to start, the calling process compiles everything alone.
"""

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from llmds_torch.jit_cache import numba_cache_dir
from llmds_torch.progress import bar

_TEXTS = ["paged attention reads keys and values from pages", "a heap orders requests by priority",
          "hybrid retrieval fuses dense and sparse scores", "the sketch counts frequent queries"]


def _scheduler_heap() -> None:
    from llmds_torch.sched import IndexedHeap

    heap = IndexedHeap()
    for key in range(8):
        heap.push(key, float(key % 3))
    heap.update(3, 10.0)
    heap.remove(5)
    heap.peek()
    while len(heap):
        heap.pop()


def _hnsw_build_and_search() -> None:
    import torch
    from llmds_torch.retrieval import HNSW

    vectors = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    index = HNSW(8, M=4, ef_construction=16, metric="cosine")  # one compile serves every metric
    index.add(vectors)
    index.search(vectors[:1], k=3)


def _hnsw_batches_filters_deletes() -> None:
    import torch
    from llmds_torch.retrieval import HNSW

    vectors = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    index = HNSW(8, M=4, ef_construction=16, metric="l2")
    index.add(vectors)
    index.search(vectors[:4], k=3)
    index.search(vectors[:2], k=3, allow=[0, 2, 4, 6])          # exact search over the allowed
    index.exact_filter_factor = 0.0
    index.search(vectors[:2], k=3, allow=[0, 2, 4, 6])          # the graph, filtered
    index.delete([0, 1])
    index.search(vectors[:2], k=3)
    coded = HNSW(8, M=4, ef_construction=16, metric="l2", storage="sq8")  # the 8-bit walk and re-rank
    coded.add(vectors)
    coded.search(vectors[:4], k=3)
    coded.search(vectors[:1], k=3)


def _bm25_build_and_search() -> None:
    from llmds_torch.retrieval import InvertedIndex

    index = InvertedIndex()
    index.add(_TEXTS)
    index.search("heap priority", k=2)


def _bm25_batches_deletes() -> None:
    from llmds_torch.retrieval import InvertedIndex

    index = InvertedIndex()
    index.add(_TEXTS)
    index.search_batch(["pages keys", "dense sparse"], k=2)
    index.delete([1])
    index.search("heap priority", k=2)


def _bm25_segments_and_files() -> None:
    import tempfile
    from pathlib import Path

    from llmds_torch.retrieval import InvertedIndex

    index = InvertedIndex(merge_factor=2)
    for text in _TEXTS:  # one segment per add; the merge policy rewrites pairs
        index.add([text])
    index.delete([0])  # derives the touched segment's forward index from its postings
    index.optimize()
    with tempfile.TemporaryDirectory() as folder:
        index.save(Path(folder) / "index")
        InvertedIndex.load(Path(folder) / "index").search("heap priority", k=2)  # the load checks


def _sketch() -> None:
    from llmds_torch.retrieval import CountMinSketch

    sketch = CountMinSketch(64, 3, conservative=True)
    sketch.update(["a", "b", "a"])
    sketch.estimate(["a", "c"])
    sketch.heavy_hitters(2)
    other = CountMinSketch(64, 3)
    other.update(np.arange(4))
    other.merge(CountMinSketch(64, 3))


def _kv_page_release() -> None:
    from llmds_torch.kv.block_manager import BlockManager

    manager = BlockManager(16, 4)
    first = manager.attach(list(range(1, 10)))
    manager.mark_written(first)
    second = manager.fork(first)
    manager.append(second, [3])  # copy-on-write of the shared last page releases one page by id
    manager.detach(second)       # a sequence's pages, tail first, straight off its block-table row
    manager.detach(first)


def _pipeline() -> None:
    from llmds_torch.retrieval import RetrievalPipeline, default_embedder

    pipeline = RetrievalPipeline(embedder=default_embedder())
    pipeline.add(_TEXTS)
    pipeline.query("what orders requests", k=2)
    pipeline.query("what orders requests", k=2)


# (name, the calls that compile its loops), the demo's first.
TARGETS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("scheduler heap", _scheduler_heap),
    ("BM25 indexing and search", _bm25_build_and_search),
    ("HNSW insertion and search", _hnsw_build_and_search),
    ("retrieval pipeline", _pipeline),
    ("KV page release", _kv_page_release),
    ("count-min sketch", _sketch),
    ("BM25 batches and deletes", _bm25_batches_deletes),
    ("BM25 segments, merges and files", _bm25_segments_and_files),
    ("HNSW batches, filters and deletes", _hnsw_batches_filters_deletes),
)
# What ``llmds demo`` runs: the rest is compiled on first use or by ``llmds warmup``.
DEMO_TARGETS = ("scheduler heap", "BM25 indexing and search", "HNSW insertion and search", "retrieval pipeline",
                "KV page release")


# Targets that mostly reuse other targets' loops: compiled in the calling process only, after them.
_AFTER_OTHERS = ("retrieval pipeline",)


def _run_target(name: str) -> float:
    """Run one target by name (in a worker process); return its seconds."""
    start = time.perf_counter()
    dict(TARGETS)[name]()
    return time.perf_counter() - start


def _compile_in_workers(names: list[str], processes: int, progress_bar) -> dict[str, float]:
    """Compile ``names`` in up to ``processes`` spawned workers; return seconds per finished target
    (empty when the workers could not run: the caller then compiles alone)."""
    import multiprocessing

    seconds: dict[str, float] = {}
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_target, name): name for name in names}
            for future in as_completed(futures):
                seconds[futures[future]] = future.result()
                progress_bar.set_postfix_str(f"compiled {futures[future]}")
    except Exception:  # a worker that cannot start or dies only costs the head start
        return {}
    return seconds


def kernels_cached() -> bool:
    """True when numba's cache already holds the library's search loops (a warm start)."""
    return any(numba_cache_dir().glob("retrieval_*/*.nbi"))


def warmup(names: tuple[str, ...] | None = None, *, progress: bool = True,
           processes: int | None = None) -> dict[str, float]:
    """Compile (or load) the numba loops of ``names`` (default: every target); return seconds per
    target (in a worker when one compiled it, plus loading it here). The progress bar says when
    this is a cold compile. ``processes``: most workers for a cold compile (default: the cores
    this process may use, at most 4; 1 compiles here only)."""
    unknown = set(names or ()) - {name for name, _ in TARGETS}
    if unknown:
        raise ValueError(f"unknown warm-up targets {sorted(unknown)}; known: {[name for name, _ in TARGETS]}")
    targets = [(name, run) for name, run in TARGETS if names is None or name in names]
    cold = not kernels_cached()
    desc = "compiling search kernels (first run only)" if cold else "loading search kernels"
    if processes is None:
        processes = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    progress_bar = bar(desc, total=len(targets), unit="part", enabled=progress)
    try:
        seconds = {}
        parallel = [name for name, _ in targets if name not in _AFTER_OTHERS]
        if cold and processes > 1 and len(parallel) > 1:
            seconds = _compile_in_workers(parallel, min(processes, len(parallel)), progress_bar)
        for name, run in targets:
            progress_bar.set_postfix_str(name)
            start = time.perf_counter()
            run()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            progress_bar.update(1)
    finally:
        progress_bar.close()
    return {name: seconds[name] for name, _ in targets}


__all__ = ["TARGETS", "DEMO_TARGETS", "kernels_cached", "warmup"]
