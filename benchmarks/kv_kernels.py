"""Bandwidth of the KV data-movement kernels against the copy limit.

page_copy / page_move (64 pages of 2 MiB: page_size 16 x 8 KV heads x 128 dims x fp16 x K,V x 32
layers, by default) and kv_write (a 4096-token prefill into one layer), each as bytes read + written
per second, beside two baselines over the same bytes in the same run:

* ``device copy``: ``dst.copy_(src)`` of a contiguous tensor of the moved size (the copy limit);
* ``index_copy_``: the plain-torch way to do the same scatter (``index_select`` + ``index_copy_``).

Backend ``auto`` runs Triton on CUDA and the torch reference on CPU. Goals on a GPU: page copy / move
at >= 90% of the device-copy bandwidth, kv_write at >= 70%.

    python -m benchmarks.kv_kernels [--quick] [--device cpu|cuda] [--backend auto|triton|torch]
"""

import statistics
import time
from dataclasses import dataclass

import torch

from benchmarks._common import hardware, kernel_parser, print_table, write_results
from llmds_torch.kernels import resolve_backend
from llmds_torch.kernels.kv_write import kv_write
from llmds_torch.kernels.page_copy import page_copy
from llmds_torch.kernels.page_move import page_move
from llmds_torch.kernels.reference import kv_write_reference, page_copy_reference


@dataclass(frozen=True, slots=True)
class KernelSizes:
    num_layers: int = 32
    num_pairs: int = 64
    page_size: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    prefill_tokens: int = 4096
    dtype: torch.dtype = torch.float16


QUICK = KernelSizes(num_layers=4, num_pairs=8, page_size=16, num_kv_heads=2, head_dim=64, prefill_tokens=256)


GRAPH_CALLS = 10


def graph_time(fn, device: torch.device, *, repeat: int = 20) -> float | None:
    """Median seconds per call of ``fn()`` replayed from a CUDA graph of ``GRAPH_CALLS`` calls: GPU
    time without the host's launch overhead, which dominates kernels of a few microseconds. None
    when ``fn`` cannot be captured (it syncs with the host, e.g. to check indices)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(stream):
            fn()                                                   # allocations settle outside the capture
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.cuda.graph(graph):
            for _ in range(GRAPH_CALLS):
                fn()
    except RuntimeError:
        torch.cuda.synchronize(device)
        return None
    graph.replay()
    torch.cuda.synchronize(device)
    samples = []
    for _ in range(max(repeat // 4, 3)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / GRAPH_CALLS / 1e3)
    return statistics.median(samples)


def device_time(fn, device: torch.device, *, repeat: int = 20, warmup: int = 3, graph: bool = False) -> float:
    """Median seconds per call of ``fn()``. On CUDA with ``graph``, replayed from a CUDA graph when
    ``fn`` can be captured (``graph_time``); else CUDA events around batches of 5 calls (so a host
    sync per call does not inflate the time); on CPU, wall time per call."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda" and graph:
        seconds = graph_time(fn, device, repeat=repeat)
        if seconds is not None:
            return seconds
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        samples = []
        for _ in range(max(repeat // 5, 3)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 5 / 1e3)
        return statistics.median(samples)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _row(op, variant, moved_bytes, seconds, copy_seconds, index_copy_seconds, checked):
    traffic = 2 * moved_bytes                                  # every byte moved is read once and written once
    return {
        "op": op, "variant": variant, "MiB_moved": moved_bytes / 2**20, "ms": seconds * 1e3,
        "GB/s": traffic / seconds / 1e9,
        "vs_copy": copy_seconds / seconds,                     # fraction of device-copy bandwidth
        "vs_index_copy": index_copy_seconds / seconds,         # > 1: faster than index_copy_
        "checked": checked,
    }


def bench_page_ops(sizes: KernelSizes, device: torch.device, backend: str, repeat: int,
                   graph: bool = False) -> list[dict]:
    """page_copy and page_move of ``num_pairs`` pages across all layers."""
    s = sizes
    num_pages = 2 * s.num_pairs + 8
    pool = torch.randn(s.num_layers, num_pages, 2, s.page_size, s.num_kv_heads, s.head_dim,
                       device=device, dtype=s.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(num_pages, generator=gen, device=device)
    src, dst = order[: s.num_pairs], order[s.num_pairs: 2 * s.num_pairs]
    moved = s.num_pairs * s.num_layers * pool[0, 0].numel() * pool.element_size()
    flat_src = torch.randn(moved // pool.element_size(), device=device).to(s.dtype)
    flat_dst = torch.empty_like(flat_src)

    copy_s = device_time(lambda: flat_dst.copy_(flat_src), device, repeat=repeat, graph=graph)
    index_copy_s = device_time(lambda: pool.index_copy_(1, dst, pool.index_select(1, src)), device, repeat=repeat,
                               graph=graph)
    runs = {
        ("page_copy", "checked"): lambda: page_copy(pool, src, dst, backend=backend),
        ("page_copy", "no index checks"): lambda: page_copy(pool, src, dst, backend=backend, validate_indices=False),
        ("page_move", "checked"): lambda: page_move(pool, src, dst, backend=backend),
        ("page_move", "no index checks"): lambda: page_move(pool, src, dst, backend=backend, validate_indices=False),
    }
    checked = "yes" if resolve_backend(backend, device) == "triton" else "is reference"
    if checked == "yes":
        got, want = pool.clone(), pool.clone()
        page_copy(got, src, dst, backend=backend)
        page_copy_reference(want, src, dst)
        if not torch.equal(got, want):
            raise AssertionError("page_copy differs from the torch reference")
    rows = [_row("device copy", "dst.copy_(src)", moved, copy_s, copy_s, index_copy_s, "-"),
            _row("index_copy_", "index_select + index_copy_", moved, index_copy_s, copy_s, index_copy_s, "-")]
    for (op, variant), fn in runs.items():
        rows.append(_row(op, variant, moved, device_time(fn, device, repeat=repeat, graph=graph), copy_s,
                         index_copy_s, checked))
    return rows


def bench_kv_write(sizes: KernelSizes, device: torch.device, backend: str, repeat: int,
                   graph: bool = False) -> list[dict]:
    """kv_write of a ``prefill_tokens``-token prefill into one layer."""
    s = sizes
    num_pages = 2 * s.prefill_tokens // s.page_size + 8
    layer_cache = torch.randn(num_pages, 2, s.page_size, s.num_kv_heads, s.head_dim, device=device, dtype=s.dtype)
    gen = torch.Generator(device=device).manual_seed(1)
    slots = torch.randperm(num_pages * s.page_size, generator=gen, device=device)[: s.prefill_tokens]
    k = torch.randn(s.prefill_tokens, s.num_kv_heads, s.head_dim, device=device, dtype=s.dtype)
    v = torch.randn_like(k)
    moved = 2 * k.numel() * k.element_size()
    flat_src = torch.randn(2 * k.numel(), device=device).to(s.dtype)
    flat_dst = torch.empty_like(flat_src)

    # index_copy_ baseline: rows of [num_pages * 2 * page_size, heads * dim]; K of slot s is row
    # page * 2 * page_size + offset, V the row page_size further
    rows_view = layer_cache.view(num_pages * 2 * s.page_size, s.num_kv_heads * s.head_dim)
    k_rows = (slots // s.page_size) * 2 * s.page_size + slots % s.page_size
    v_rows = k_rows + s.page_size
    k_flat, v_flat = k.view(s.prefill_tokens, -1), v.view(s.prefill_tokens, -1)

    def index_copy():
        rows_view.index_copy_(0, k_rows, k_flat)
        rows_view.index_copy_(0, v_rows, v_flat)

    copy_s = device_time(lambda: flat_dst.copy_(flat_src), device, repeat=repeat, graph=graph)
    index_copy_s = device_time(index_copy, device, repeat=repeat, graph=graph)
    checked = "yes" if resolve_backend(backend, device) == "triton" else "is reference"
    if checked == "yes":
        got, want = layer_cache.clone(), layer_cache.clone()
        kv_write(got, slots, k, v, backend=backend)
        kv_write_reference(want, slots, k, v)
        if not torch.equal(got, want):
            raise AssertionError("kv_write differs from the torch reference")
    rows = [_row("device copy", "dst.copy_(src)", moved, copy_s, copy_s, index_copy_s, "-"),
            _row("index_copy_", "2x index_copy_", moved, index_copy_s, copy_s, index_copy_s, "-")]
    for variant, kwargs in (("checked", {}), ("no index checks", {"validate_indices": False})):
        t = device_time(lambda: kv_write(layer_cache, slots, k, v, backend=backend, **kwargs), device, repeat=repeat,
                        graph=graph)
        rows.append(_row(f"kv_write {s.prefill_tokens} tok", variant, moved, t, copy_s, index_copy_s, checked))
    return rows


def run(sizes: KernelSizes, device: torch.device, backend: str = "auto", repeat: int = 20,
        graph: bool = False) -> dict:
    """All kernel bandwidth rows plus the settings, as a JSON-ready dict (``graph``: time on CUDA
    through CUDA graphs where a call can be captured)."""
    page_rows = bench_page_ops(sizes, device, backend, repeat, graph)
    write_rows = bench_kv_write(sizes, device, backend, repeat, graph)
    page_bytes = sizes.num_layers * 2 * sizes.page_size * sizes.num_kv_heads * sizes.head_dim * \
        torch.empty(0, dtype=sizes.dtype).element_size()
    return {
        "device": str(device), "backend": resolve_backend(backend, device),
        "sizes": {**{f: getattr(sizes, f) for f in KernelSizes.__dataclass_fields__}, "dtype": str(sizes.dtype),
                  "page_bytes_all_layers": page_bytes},
        "rows": page_rows + write_rows,
    }


COLUMNS = ["op", "variant", "MiB_moved", "ms", "GB/s", "vs_copy", "vs_index_copy", "checked"]


def main(argv=None) -> None:
    parser = kernel_parser(__doc__, repeat=20)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else KernelSizes()
    payload = run(sizes, torch.device(args.device), args.backend, args.repeat)
    print(f"hardware: {hardware()}")
    print_table(payload["rows"], COLUMNS)
    write_results("kv_kernels_quick" if args.quick else "kv_kernels", payload)


if __name__ == "__main__":
    main()
