"""Compile the Triton kernels before serving, so that no request waits for a compile.

Each kernel compiles about a second per variant on first use. For one pool and one model the
attention kernels have a fixed set of variants whatever the batch size or context length
(``paged_attention.COMPILED_VARIANTS``): ``warm_up`` launches each of them once on a tiny batch
that reads page 0 of the pool. It also launches ``kv_write`` with a skipped slot (it writes
nothing) and ``page_copy`` of page 0 onto itself (its contents stay as they were).
"""

from collections.abc import Iterable

import torch

from . import resolve_backend
from .kv_write import kv_write
from .page_copy import page_copy
from .paged_attention import DECODE_BLOCK_N, paged_attention_decode, paged_attention_prefill
from .validation import KernelInputError, check_tensor


def warm_up(pool: torch.Tensor, num_q_heads: int, *, softcaps: Iterable[float | None] = (None,),
            backend: str = "auto") -> int:
    """Compile every kernel variant serving on ``pool`` launches, now. Returns the launches made
    (0 when the backend is torch: nothing to compile).

    Parameters
    ----------
    pool : ``[num_layers, num_pages, 2, page_size, num_kv_heads, head_dim]``, the cache's pool
        (``cache.pool``); its layers' layout is what the kernels specialise on, so warm up the
        pool that will serve
    num_q_heads : the model's query heads (a multiple of ``num_kv_heads``)
    softcaps : the soft-capping values the model's layers use (None: none); soft-capping is a
        compile-time switch, so a model mixing capped and uncapped layers passes both
    backend : ``"auto"``, ``"triton"`` or ``"torch"``

    Notes
    -----
    Variants also depend on the strides of the K and V tensors handed to ``kv_write`` and of ``q``:
    warm-up uses contiguous ones, as the built-in decoder passes.
    """
    check_tensor("pool", pool, ndim=6)
    if resolve_backend(backend, pool.device) == "torch":
        return 0
    layer_cache = pool[0]                                # every layer has the same strides
    _, _, page_size, num_kv_heads, head_dim = layer_cache.shape
    if num_q_heads < 1 or num_q_heads % num_kv_heads:
        raise KernelInputError(f"num_q_heads ({num_q_heads}) must be a positive multiple of "
                               f"num_kv_heads ({num_kv_heads})")
    device, dtype = pool.device, pool.dtype
    launches = 0
    k = torch.zeros(1, num_kv_heads, head_dim, dtype=dtype, device=device)
    kv_write(layer_cache, torch.tensor([-1], device=device), k, k, backend=backend)    # slot -1: skipped
    page = torch.zeros(1, dtype=torch.int64, device=device)
    page_copy(pool, page, page, backend=backend)                                    # page 0 onto itself
    launches += 2

    # one sequence of one page's length over page 0, in a table wide enough for two splits
    table = torch.zeros(1, 2 * -(-DECODE_BLOCK_N // page_size), dtype=torch.int32, device=device)
    seq_lens = torch.full((1,), page_size, dtype=torch.int32, device=device)
    query_start_loc = torch.tensor([0, page_size], dtype=torch.int32, device=device)
    q = torch.zeros(1, num_q_heads, head_dim, dtype=dtype, device=device)
    q_prefill = torch.zeros(page_size, num_q_heads, head_dim, dtype=dtype, device=device)
    for softcap in {None if c is None else 1.0 for c in softcaps}:                  # only on / off matters
        for num_splits in (1, 2):                                                   # 2: partitions + reduce
            paged_attention_decode(q, layer_cache, table, seq_lens, softcap=softcap, backend=backend,
                                   num_splits=num_splits, validate_indices=False)
            launches += num_splits
        paged_attention_prefill(q_prefill, layer_cache, table, seq_lens, query_start_loc, softcap=softcap,
                                backend=backend, max_query_len=page_size, validate_indices=False)
        launches += 1
    return launches


__all__ = ["warm_up"]
