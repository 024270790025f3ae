"""A decode step through paged attention against attention over a dense contiguous KV cache.

For each batch size and context length: one query token per sequence, its K/V in scattered pages
read through a block table (``paged``), beside ``torch.nn.functional.scaled_dot_product_attention``
over the same K/V laid out contiguously (``sdpa``, the dense-cache baseline) and over a copy gathered
from the pages at every step (``gather+sdpa``: one ``index_select`` of the pages for K and one for V,
then the same SDPA call on views of the copy). SDPA is called two ways and ``sdpa`` is the
faster one in this run: for decode ``enable_gqa=True`` with one query row per head
(``sdpa_gqa_ms``) or each KV head's group of query heads passed as that head's query rows
(``sdpa_folded_ms``, which the CPU path uses too); for prefill ``enable_gqa=True`` or K/V repeated
per query head beforehand; each on every SDPA backend that accepts the call (flash, memory-efficient,
cuDNN, math), the fastest recorded in ``sdpa_backend`` and used for gather+sdpa too. The causal
mask of prefill over a cached prefix is ``causal_lower_right``, which the fused backends take.
Reported as time ratios (< 1 means paged is faster) and memory: the KV bytes
each layout holds for this batch, the bytes a dense cache preallocated for the longest context
holds, and the extra bytes gather+sdpa copies per step (on CUDA also the measured peak allocation
of each method).

Backend ``auto`` runs the Triton kernels on CUDA and the torch reference on CPU. GPU goals at batch
64 x 4096 and 256 x 1024 (32 query / 8 KV heads, head 128, bf16): paged within 1.15x of sdpa and
>= 2.5x faster than gather+sdpa. CPU goal (fp32, 8 query / 2 KV heads, head 64, ``--threads 1``):
paged within 1.5x of sdpa at batch >= 16 and context >= 1024.

    python -m benchmarks.decode [--quick] [--device cpu|cuda] [--threads N] [--prefill]
"""

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from benchmarks._common import hardware, kernel_parser, print_table, write_results
from benchmarks.kv_kernels import device_time
from llmds_torch.kernels import resolve_backend
from llmds_torch.kernels.paged_attention import paged_attention_decode, paged_attention_prefill


@dataclass(frozen=True, slots=True)
class AttentionShape:
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype


CPU_SHAPE = AttentionShape(8, 2, 64, 16, torch.float32)
CUDA_SHAPE = AttentionShape(32, 8, 128, 16, torch.bfloat16)
QUICK_SHAPE = AttentionShape(4, 2, 32, 16, torch.float32)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _mib(num_bytes: float) -> float:
    return num_bytes / 2**20


SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def fastest_sdpa(calls: dict, device: torch.device, repeat: int, graph: bool = False):
    """Time each ``calls[name]()`` (an SDPA call) on every SDPA backend that accepts it; return
    ``(seconds, (name, backend), {name: best seconds})`` of the fastest."""
    best, per_call = None, {}
    for name, fn in calls.items():
        for backend in SDPA_BACKENDS:
            try:
                with warnings.catch_warnings(), sdpa_kernel([getattr(SDPBackend, backend)]):
                    warnings.simplefilter("ignore")
                    fn()                                              # raises when the backend refuses the call
                    seconds = device_time(fn, device, repeat=repeat, graph=graph)
            except RuntimeError:
                continue
            per_call[name] = min(per_call.get(name, math.inf), seconds)
            if best is None or seconds < best[0]:
                best = (seconds, (name, backend))
    if best is None:
        raise RuntimeError("no SDPA backend accepted the baseline call")
    return best[0], best[1], per_call


def with_backend(fn, backend: str):
    """``fn`` run with SDPA restricted to ``backend``."""
    def call(*args):
        with sdpa_kernel([getattr(SDPBackend, backend)]):
            return fn(*args)
    return call


def paged_layout(batch: int, lengths: list[int], shape: AttentionShape, device, seed: int = 0):
    """A layer cache with each sequence's pages at random places, and its block table / lengths.
    The cache is generated on ``device`` (a device-side generator: no host-side copy of its size)."""
    device = torch.device(device)
    pages_per_seq = [math.ceil(n / shape.page_size) for n in lengths]
    num_pages = sum(pages_per_seq) + 1
    cache = torch.randn(num_pages, 2, shape.page_size, shape.num_kv_heads, shape.head_dim, device=device,
                        dtype=shape.dtype, generator=torch.Generator(device=device).manual_seed(seed))
    order = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed))
    table = torch.full((batch, max(pages_per_seq)), -1, dtype=torch.int32)
    used = 0
    for b, count in enumerate(pages_per_seq):
        table[b, :count] = order[used: used + count].to(torch.int32)
        used += count
    return cache, table.to(device), torch.tensor(lengths, dtype=torch.int32, device=device), sum(pages_per_seq)


def gather_pages(cache: torch.Tensor, table: torch.Tensor, context: int):
    """Equal-length sequences copied out of their pages by one ``index_select`` for K and one for V:
    k, v ``[batch, num_kv_heads, context, head_dim]``, views of ``[batch, tokens, num_kv_heads, head_dim]``
    copies."""
    batch, width = table.shape
    pages = table.long().clamp(min=0).flatten()
    tokens = width * cache.shape[2]
    k = cache[:, 0].index_select(0, pages).view(batch, tokens, *cache.shape[3:])[:, :context]
    v = cache[:, 1].index_select(0, pages).view(batch, tokens, *cache.shape[3:])[:, :context]
    return k.transpose(1, 2), v.transpose(1, 2)


def dense_kv(cache: torch.Tensor, table: torch.Tensor, context: int):
    """The dense cache: k, v contiguous ``[batch, num_kv_heads, context, head_dim]``."""
    k, v = gather_pages(cache, table, context)
    return k.contiguous(), v.contiguous()


def _peak_extra_mib(fn, device) -> float | None:
    """Memory ``fn`` allocates on top of what is live, on CUDA; None elsewhere."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return _mib(torch.cuda.max_memory_allocated(device) - base)


def bench_decode_case(batch: int, context: int, shape: AttentionShape, device: torch.device, backend: str,
                      repeat: int, max_context: int, graph: bool = False) -> dict:
    cache, table, lens, pages_used = paged_layout(batch, [context] * batch, shape, device, seed=batch + context)
    k_dense, v_dense = dense_kv(cache, table, context)                 # [B, Hkv, ctx, D]
    q = torch.randn(batch, shape.num_q_heads, shape.head_dim, device=device, dtype=shape.dtype)
    q_folded = q.view(batch, shape.num_kv_heads, shape.num_q_heads // shape.num_kv_heads, shape.head_dim)

    def attend_gqa(k, v):                                              # q: [B, Hq, 1, D]
        return F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)[:, :, 0]

    def attend_folded(k, v):                                           # q: [B, Hkv, group, D]
        return F.scaled_dot_product_attention(q_folded, k, v).reshape(q.shape)

    def paged():
        return paged_attention_decode(q, cache, table, lens, backend=backend, validate_indices=False)

    expected = attend_gqa(k_dense, v_dense)
    error = (paged().float() - expected.float()).abs().max().item()
    folded_error = (attend_folded(k_dense, v_dense).float() - expected.float()).abs().max().item()
    if max(error, folded_error) > TOLERANCE[shape.dtype] * 10:
        raise AssertionError(f"paged decode (or folded SDPA) differs from SDPA by {max(error, folded_error)} "
                             f"at batch {batch}, context {context}")
    t_paged = device_time(paged, device, repeat=repeat, graph=graph)
    forms = {"gqa": attend_gqa, "folded": attend_folded}
    t_sdpa, (form, sdpa_backend), per_form = fastest_sdpa(
        {name: (lambda f=f: f(k_dense, v_dense)) for name, f in forms.items()}, device, repeat, graph)
    attend = with_backend(lambda k, v: forms[form](k, v), sdpa_backend)

    def sdpa():
        return attend(k_dense, v_dense)

    def gather_sdpa():
        return attend(*gather_pages(cache, table, context))

    t_gather = device_time(gather_sdpa, device, repeat=repeat, graph=graph)
    itemsize = torch.empty(0, dtype=shape.dtype).element_size()
    token_bytes = 2 * shape.num_kv_heads * shape.head_dim * itemsize
    row = {
        "batch": batch, "context": context,
        "paged_ms": t_paged * 1e3, "sdpa_ms": t_sdpa * 1e3, "gather_sdpa_ms": t_gather * 1e3,
        "sdpa_gqa_ms": per_form.get("gqa", math.nan) * 1e3, "sdpa_folded_ms": per_form.get("folded", math.nan) * 1e3,
        "sdpa_backend": f"{sdpa_backend.lower()} ({form})",
        "paged/sdpa": t_paged / t_sdpa, "gather/paged": t_gather / t_paged,
        "max_abs_err": error,
        "paged_kv_MiB": _mib(pages_used * shape.page_size * token_bytes),
        "dense_kv_MiB": _mib(batch * context * token_bytes),
        "dense_prealloc_MiB": _mib(batch * max_context * token_bytes),
        "gather_copy_MiB": _mib(batch * context * token_bytes),
    }
    for name, fn in (("paged", paged), ("sdpa", sdpa), ("gather_sdpa", gather_sdpa)):
        peak = _peak_extra_mib(fn, device)
        if peak is not None:
            row[f"{name}_peak_extra_MiB"] = peak
    return row


def bench_prefill_case(batch: int, cached: int, new: int, shape: AttentionShape, device: torch.device,
                       backend: str, repeat: int, graph: bool = False) -> dict:
    """New tokens of ``batch`` sequences attending causally over ``cached`` prefix tokens and
    themselves: the paged prefill kernel against SDPA on contiguous K/V and gather-then-SDPA."""
    context = cached + new
    cache, table, lens, _ = paged_layout(batch, [context] * batch, shape, device, seed=context)
    k_dense, v_dense = dense_kv(cache, table, context)
    q_dense = torch.randn(batch, shape.num_q_heads, new, shape.head_dim, device=device, dtype=shape.dtype)
    q_flat = q_dense.transpose(1, 2).reshape(batch * new, shape.num_q_heads, shape.head_dim).contiguous()
    query_start_loc = torch.arange(0, batch * new + 1, new, dtype=torch.int32, device=device)
    # bottom-right causal mask: new token j (position cached + j) sees keys 0 .. cached + j
    mask = causal_lower_right(new, context)
    group = shape.num_q_heads // shape.num_kv_heads

    def attend_gqa(k, v):
        return F.scaled_dot_product_attention(q_dense, k, v, attn_mask=mask, enable_gqa=True)

    def attend_repeated(k, v):                                          # K/V repeated per query head
        return F.scaled_dot_product_attention(q_dense, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                              attn_mask=mask)

    k_repeated, v_repeated = k_dense.repeat_interleave(group, 1), v_dense.repeat_interleave(group, 1)
    t_sdpa, (form, sdpa_backend), _ = fastest_sdpa(
        {"gqa": lambda: attend_gqa(k_dense, v_dense),
         "repeated kv": lambda: F.scaled_dot_product_attention(q_dense, k_repeated, v_repeated, attn_mask=mask)},
        device, repeat, graph)
    del k_repeated, v_repeated
    attend = with_backend(attend_gqa if form == "gqa" else attend_repeated, sdpa_backend)

    def paged():
        return paged_attention_prefill(q_flat, cache, table, lens, query_start_loc, backend=backend,
                                       max_query_len=new, validate_indices=False)

    def sdpa():
        return attend(k_dense, v_dense)

    def gather_sdpa():
        return attend(*gather_pages(cache, table, context))

    expected = sdpa().transpose(1, 2).reshape(batch * new, shape.num_q_heads, shape.head_dim)
    error = (paged().float() - expected.float()).abs().max().item()
    if error > TOLERANCE[shape.dtype] * 10:
        raise AssertionError(f"paged prefill differs from SDPA by {error}")
    t_paged = device_time(paged, device, repeat=repeat, graph=graph)
    t_gather = device_time(gather_sdpa, device, repeat=repeat, graph=graph)
    return {"batch": batch, "cached": cached, "new": new, "paged_ms": t_paged * 1e3, "sdpa_ms": t_sdpa * 1e3,
            "gather_sdpa_ms": t_gather * 1e3, "paged/sdpa": t_paged / t_sdpa, "gather/paged": t_gather / t_paged,
            "sdpa_backend": f"{sdpa_backend.lower()} ({form})", "max_abs_err": error}


def run(batches, contexts, shape: AttentionShape, device: torch.device, backend: str = "auto", repeat: int = 10,
        max_tokens: int | None = None, prefill_cases=()) -> dict:
    """The decode sweep (cases with batch x context above ``max_tokens`` skipped) and prefill cases
    ``(batch, cached, new)``, as a JSON-ready dict."""
    decode_rows = []
    for batch in batches:
        for context in contexts:
            if max_tokens is not None and batch * context > max_tokens:
                continue
            decode_rows.append(bench_decode_case(batch, context, shape, device, backend, repeat, max(contexts)))
    prefill_rows = [bench_prefill_case(*case, shape, device, backend, repeat) for case in prefill_cases]
    return {"device": str(device), "backend": resolve_backend(backend, device),
            "shape": {**{f: getattr(shape, f) for f in AttentionShape.__dataclass_fields__}, "dtype": str(shape.dtype)},
            "max_tokens": max_tokens, "decode": decode_rows, "prefill": prefill_rows}


DECODE_COLUMNS = ["batch", "context", "paged_ms", "sdpa_ms", "sdpa_gqa_ms", "gather_sdpa_ms", "paged/sdpa",
                  "gather/paged", "sdpa_backend", "max_abs_err", "paged_kv_MiB", "dense_prealloc_MiB",
                  "gather_copy_MiB"]
PREFILL_COLUMNS = ["batch", "cached", "new", "paged_ms", "sdpa_ms", "gather_sdpa_ms", "paged/sdpa", "gather/paged",
                   "sdpa_backend", "max_abs_err"]


def main(argv=None) -> None:
    parser = kernel_parser(__doc__, repeat=10)
    parser.add_argument("--prefill", action="store_true", help="also time prefill over a cached prefix")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        shape, batches, contexts, max_tokens = QUICK_SHAPE, [1, 4], [128, 300], None
        prefill_cases = [(2, 64, 32)]
    elif device.type == "cuda":
        shape, batches, contexts, max_tokens = CUDA_SHAPE, [1, 16, 64, 256], [128, 1024, 4096], None
        prefill_cases = [(8, 3072, 1024), (4, 0, 2048)]
    else:
        # CPU: fp32 (CPU bf16 matmuls are slow), smaller heads, batch x context capped so the sweep
        # (including the dense copies it times against) finishes in a few minutes on 2 cores
        shape, batches, contexts, max_tokens = CPU_SHAPE, [1, 4, 16, 64, 256], [128, 512, 1024, 4096], 2**18
        prefill_cases = [(2, 768, 256)]
    payload = run(batches, contexts, shape, device, args.backend, args.repeat, max_tokens,
                  prefill_cases if args.prefill or args.quick else ())
    print(f"hardware: {hardware()}")
    print(f"shape: {payload['shape']}, backend: {payload['backend']}")
    print_table(payload["decode"], DECODE_COLUMNS)
    if payload["prefill"]:
        print_table(payload["prefill"], PREFILL_COLUMNS)
    write_results("decode_quick" if args.quick else "decode", payload)


if __name__ == "__main__":
    main()
