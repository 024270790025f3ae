"""Paged attention: queries attend over K/V stored in pages named by a block table.

Decode (one new token per sequence) is flash-decoding: the grid is ``(batch, num_kv_heads,
num_splits)``; each program takes one KV head with all the query heads that share it (GQA) and one
partition of the context, walks it ``BLOCK_N`` tokens at a time (looking up each token's page in the
block table) with an online softmax in fp32, and writes a partial output plus its log-sum-exp.
A second kernel combines the partitions by log-sum-exp. With one partition the first kernel writes
the output directly.

Prefill (new tokens over a cached prefix) gives each program ``BLOCK_M`` new tokens of one query head
and walks the keys up to the last of those tokens' positions, masking causally.

Softmax runs in base 2 (``exp2``) with the scale folded into ``scale * log2(e)``.
"""

import torch

from ._triton import tl, triton
from .reference import paged_attention_decode_reference, paged_attention_prefill_reference
from .validation import (KV_DTYPES, KernelInputError, check_block_table, check_kv_layer,
                         check_query_start_loc, check_tensor)
from . import resolve_backend

LOG2_E = 1.4426950408889634
MAX_TRITON_HEAD_DIM = 256
MIN_TOKENS_PER_SPLIT = 256


@triton.jit
def _paged_decode_kernel(
    q_ptr, cache_ptr, block_table_ptr, seq_lens_ptr, out_ptr, lse_ptr,
    scale_log2, tokens_per_split,
    stride_q_batch, stride_q_head, stride_q_dim,
    stride_cache_page, stride_cache_kv, stride_cache_slot, stride_cache_head, stride_cache_dim,
    stride_bt_batch, stride_bt_page,
    stride_out_batch, stride_out_head, stride_out_split, stride_out_dim,
    stride_lse_batch, stride_lse_head, stride_lse_split,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, QUERY_GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    WRITE_LSE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + batch)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, seq_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < QUERY_GROUP
    d_mask = d < HEAD_DIM
    head = kv_head * QUERY_GROUP + g                                   # [BLOCK_G] query heads
    q = tl.load(q_ptr + batch * stride_q_batch + head[:, None] * stride_q_head + d[None, :] * stride_q_dim,
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)     # [BLOCK_G, BLOCK_D]

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)                  # running max (log2 units)
    l = tl.zeros([BLOCK_G], tl.float32)                                # running sum of exp2
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    k_base = cache_ptr + kv_head * stride_cache_head
    for block_start in range(start, end, BLOCK_N):
        n = block_start + tl.arange(0, BLOCK_N)                       # [BLOCK_N] token positions
        n_mask = n < end
        page = tl.load(block_table_ptr + batch * stride_bt_batch + (n // PAGE_SIZE) * stride_bt_page,
                       mask=n_mask, other=0).to(tl.int64)
        token_offset = page * stride_cache_page + (n % PAGE_SIZE).to(tl.int64) * stride_cache_slot
        kv_offsets = token_offset[:, None] + d[None, :] * stride_cache_dim
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + kv_offsets, mask=kv_mask, other=0.0)      # [BLOCK_N, BLOCK_D]
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2   # [BLOCK_G, BLOCK_N]
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(k_base + stride_cache_kv + kv_offsets, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    out = acc / tl.where(l > 0, l, 1.0)[:, None]                       # an empty split writes zeros
    out_ptrs = out_ptr + batch * stride_out_batch + head[:, None] * stride_out_head \
        + split * stride_out_split + d[None, :] * stride_out_dim
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    if WRITE_LSE:
        has_tokens = l > 0
        lse = tl.where(has_tokens, m + tl.log2(tl.where(has_tokens, l, 1.0)), float("-inf"))
        tl.store(lse_ptr + batch * stride_lse_batch + head * stride_lse_head + split * stride_lse_split,
                 lse, mask=g_mask)


@triton.jit
def _decode_reduce_kernel(
    partial_ptr, lse_ptr, out_ptr, num_splits,
    stride_partial_batch, stride_partial_head, stride_partial_split, stride_partial_dim,
    stride_lse_batch, stride_lse_head, stride_lse_split,
    stride_out_batch, stride_out_head, stride_out_dim,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < num_splits
    d_mask = d < HEAD_DIM
    lse = tl.load(lse_ptr + batch * stride_lse_batch + head * stride_lse_head + s * stride_lse_split,
                  mask=s_mask, other=float("-inf"))                    # [BLOCK_S]
    weight = tl.exp2(lse - tl.max(lse, 0))                             # split 0 is never empty
    partial = tl.load(partial_ptr + batch * stride_partial_batch + head * stride_partial_head
                      + s[:, None] * stride_partial_split + d[None, :] * stride_partial_dim,
                      mask=s_mask[:, None] & d_mask[None, :], other=0.0)   # [BLOCK_S, BLOCK_D]
    out = tl.sum(partial * weight[:, None], 0) / tl.sum(weight, 0)
    tl.store(out_ptr + batch * stride_out_batch + head * stride_out_head + d * stride_out_dim,
             out.to(out_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def _paged_prefill_kernel(
    q_ptr, cache_ptr, block_table_ptr, seq_lens_ptr, query_start_loc_ptr, out_ptr,
    scale_log2,
    stride_q_token, stride_q_head, stride_q_dim,
    stride_cache_page, stride_cache_kv, stride_cache_slot, stride_cache_head, stride_cache_dim,
    stride_bt_batch, stride_bt_page,
    stride_out_token, stride_out_head, stride_out_dim,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, QUERY_GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    row_block = tl.program_id(2)
    query_start = tl.load(query_start_loc_ptr + batch).to(tl.int64)
    query_len = tl.load(query_start_loc_ptr + batch + 1) - tl.load(query_start_loc_ptr + batch)
    seq_len = tl.load(seq_lens_ptr + batch)
    context_len = seq_len - query_len                                  # cached tokens before the new ones

    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)                 # [BLOCK_M] new-token index
    row_mask = rows < query_len
    positions = context_len + rows                                     # each row's place in the sequence
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + (query_start + rows.to(tl.int64))[:, None] * stride_q_token + head * stride_q_head
                + d[None, :] * stride_q_dim, mask=row_mask[:, None] & d_mask[None, :], other=0.0)

    # keys up to the last row's position; a block past this sequence's new tokens reads none
    kv_end = tl.minimum(seq_len, context_len + (row_block + 1) * BLOCK_M)
    kv_end = tl.where(row_block * BLOCK_M < query_len, kv_end, 0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = cache_ptr + (head // QUERY_GROUP) * stride_cache_head
    for block_start in range(0, kv_end, BLOCK_N):
        n = block_start + tl.arange(0, BLOCK_N)
        n_mask = n < kv_end
        page = tl.load(block_table_ptr + batch * stride_bt_batch + (n // PAGE_SIZE) * stride_bt_page,
                       mask=n_mask, other=0).to(tl.int64)
        token_offset = page * stride_cache_page + (n % PAGE_SIZE).to(tl.int64) * stride_cache_slot
        kv_offsets = token_offset[:, None] + d[None, :] * stride_cache_dim
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + kv_offsets, mask=kv_mask, other=0.0)      # [BLOCK_N, BLOCK_D]
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2   # [BLOCK_M, BLOCK_N]
        visible = n_mask[None, :] & (n[None, :] <= positions[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(k_base + stride_cache_kv + kv_offsets, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(out_ptr + (query_start + rows.to(tl.int64))[:, None] * stride_out_token + head * stride_out_head
             + d[None, :] * stride_out_dim, out.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & d_mask[None, :])


def _check_attention_inputs(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                            seq_lens: torch.Tensor, *, validate_indices: bool) -> tuple[int, int, int, int]:
    """Checks decode and prefill share; returns ``(num_pages, page_size, num_kv_heads, head_dim)``."""
    check_tensor("q", q, ndim=3, dtypes=KV_DTYPES)
    num_pages, page_size, num_kv_heads, head_dim = check_kv_layer("layer_cache", layer_cache)
    device = q.device
    check_tensor("layer_cache", layer_cache, dtypes=(q.dtype,), device=device)
    if q.shape[2] != head_dim:
        raise KernelInputError(f"q has head_dim {q.shape[2]} but layer_cache has head_dim {head_dim}")
    if q.shape[1] == 0 or q.shape[1] % num_kv_heads:
        raise KernelInputError(f"num_q_heads ({q.shape[1]}) must be a positive multiple of "
                               f"num_kv_heads ({num_kv_heads}) for grouped-query attention")
    check_tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,), device=device)
    check_tensor("seq_lens", seq_lens, dtypes=(torch.int32,), device=device, shape=(block_table.shape[0],))
    if validate_indices:
        check_block_table(block_table, seq_lens, page_size, num_pages)
    return num_pages, page_size, num_kv_heads, head_dim


def _check_triton_head_dim(head_dim: int) -> None:
    if head_dim > MAX_TRITON_HEAD_DIM:
        raise KernelInputError(f"the Triton paged attention kernels support head_dim <= {MAX_TRITON_HEAD_DIM}, "
                               f"got {head_dim}; use backend='torch'")


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs multiply in full fp32 ("ieee"), not TF32, so they match the reference."""
    return "ieee" if dtype == torch.float32 else "tf32"


def default_num_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Context partitions per sequence: enough programs for about four per streaming
    multiprocessor, but no partition shorter than ``MIN_TOKENS_PER_SPLIT`` tokens."""
    processors = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    wanted = triton.cdiv(4 * processors, max(batch * num_kv_heads, 1))
    return max(1, min(wanted, triton.cdiv(max_context, MIN_TOKENS_PER_SPLIT)))


def paged_attention_decode(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                           seq_lens: torch.Tensor, *, scale: float | None = None, backend: str = "auto",
                           num_splits: int | None = None, validate_indices: bool = True) -> torch.Tensor:
    """Attention of one new query token per sequence over the sequence's pages.

    Parameters
    ----------
    q : ``[batch, num_q_heads, head_dim]``, fp16/bf16/fp32
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``, q's dtype and device, any strides;
        ``num_q_heads`` must be a multiple of ``num_kv_heads`` (query head h reads KV head
        ``h // (num_q_heads // num_kv_heads)``)
    block_table : int32 ``[batch, max_pages]``; row b's first ``ceil(seq_lens[b] / page_size)``
        entries name its pages, later entries (padding, e.g. -1) are never read
    seq_lens : int32 ``[batch]``, tokens of each sequence including the new one, in
        ``[1, max_pages * page_size]``
    scale : softmax scale, default ``head_dim ** -0.5``
    backend : ``"auto"``, ``"triton"`` or ``"torch"``
    num_splits : context partitions per sequence (flash-decoding); default from the batch size,
        the longest possible context and the device
    validate_indices : check seq_lens and block_table values (a device sync)

    Returns
    -------
    ``[batch, num_q_heads, head_dim]`` in q's dtype (accumulated in fp32).

    Raises
    ------
    KernelInputError
        on heads that do not divide, mismatched dtype/device/head_dim, a seq_len outside its
        row's pages, or a page index outside the pool, before any launch.
    """
    _, page_size, num_kv_heads, head_dim = _check_attention_inputs(
        q, layer_cache, block_table, seq_lens, validate_indices=validate_indices)
    batch, num_q_heads = q.shape[0], q.shape[1]
    if q.shape[0] != block_table.shape[0]:
        raise KernelInputError(f"q has {q.shape[0]} sequences but block_table has {block_table.shape[0]} rows")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise KernelInputError(f"num_splits must be a positive int or None, got {num_splits!r}")
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if batch == 0:
        return torch.empty_like(q)
    if resolve_backend(backend, q.device) == "torch":
        return paged_attention_decode_reference(q, layer_cache, block_table, seq_lens, scale)
    _check_triton_head_dim(head_dim)

    group = num_q_heads // num_kv_heads
    block_n = 64
    max_context = block_table.shape[1] * page_size
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads, max_context, q.device)
    tokens_per_split = triton.cdiv(triton.cdiv(max_context, num_splits), block_n) * block_n
    num_splits = triton.cdiv(max_context, tokens_per_split)
    seq_lens = seq_lens.contiguous()
    out = torch.empty_like(q)
    if num_splits == 1:
        partial = out.unsqueeze(2)                                     # [B, Hq, 1, D]: write in place
        lse = out.new_empty((1, 1, 1), dtype=torch.float32)            # unused
    else:
        partial = torch.empty((batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    _paged_decode_kernel[(batch, num_kv_heads, num_splits)](
        q, layer_cache, block_table, seq_lens, partial, lse,
        scale * LOG2_E, tokens_per_split,
        *q.stride(), *layer_cache.stride(), *block_table.stride(), *partial.stride(), *lse.stride(),
        PAGE_SIZE=page_size, HEAD_DIM=head_dim, QUERY_GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_D=block_d, BLOCK_N=block_n,
        WRITE_LSE=num_splits > 1, DOT_PRECISION=_dot_precision(q.dtype),
    )
    if num_splits > 1:
        _decode_reduce_kernel[(batch, num_q_heads)](
            partial, lse, out, num_splits,
            *partial.stride(), *lse.stride(), *out.stride(),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(num_splits),
        )
    return out


def paged_attention_prefill(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                            seq_lens: torch.Tensor, query_start_loc: torch.Tensor, *,
                            scale: float | None = None, backend: str = "auto",
                            max_query_len: int | None = None, validate_indices: bool = True) -> torch.Tensor:
    """Causal attention of new tokens over their sequence's cached prefix and themselves.

    Sequence b's new tokens are its LAST ``q_len_b = query_start_loc[b+1] - query_start_loc[b]`` of
    ``seq_lens[b]`` tokens (their K/V already written into the pages); new token j sits at position
    ``seq_lens[b] - q_len_b + j`` and attends to every position up to its own.

    Parameters
    ----------
    q : ``[total_new_tokens, num_q_heads, head_dim]``, fp16/bf16/fp32
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``, q's dtype and device
    block_table : int32 ``[batch, max_pages]``, padded past each sequence's pages
    seq_lens : int32 ``[batch]`` in ``[1, max_pages * page_size]``
    query_start_loc : int32 ``[batch + 1]``, cumulative new-token counts (``cu_seqlens``), from 0 to
        ``total_new_tokens``; a sequence may have 0 new tokens
    scale : softmax scale, default ``head_dim ** -0.5``
    backend : ``"auto"``, ``"triton"`` or ``"torch"``
    max_query_len : the largest ``q_len_b`` when the caller knows it (saves a device sync)
    validate_indices : check seq_lens, block_table and query_start_loc values (a device sync)

    Returns
    -------
    ``[total_new_tokens, num_q_heads, head_dim]`` in q's dtype (accumulated in fp32).

    Raises
    ------
    KernelInputError
        as ``paged_attention_decode``, and for a ``query_start_loc`` that does not start at 0, end at
        ``total_new_tokens``, increase monotonically, or give a sequence more new tokens than its length.
    """
    _, page_size, num_kv_heads, head_dim = _check_attention_inputs(
        q, layer_cache, block_table, seq_lens, validate_indices=validate_indices)
    batch = block_table.shape[0]
    check_tensor("query_start_loc", query_start_loc, ndim=1, dtypes=(torch.int32,), device=q.device,
                 shape=(batch + 1,))
    if validate_indices:
        longest = check_query_start_loc(query_start_loc, seq_lens, q.shape[0])
        if max_query_len is not None and max_query_len < longest:
            raise KernelInputError(f"max_query_len={max_query_len} but a sequence has {longest} new tokens")
        max_query_len = longest
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if q.shape[0] == 0:
        return torch.empty_like(q)
    if resolve_backend(backend, q.device) == "torch":
        return paged_attention_prefill_reference(q, layer_cache, block_table, seq_lens, query_start_loc, scale)
    _check_triton_head_dim(head_dim)

    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    num_q_heads = q.shape[1]
    # fp32 tiles multiply without tensor cores: smaller tiles keep them in registers
    block_m, block_n = (32, 32) if q.dtype == torch.float32 else (64, 64)
    out = torch.empty_like(q)
    grid = (batch, num_q_heads, triton.cdiv(max_query_len, block_m))
    _paged_prefill_kernel[grid](
        q, layer_cache, block_table, seq_lens.contiguous(), query_start_loc.contiguous(), out,
        scale * LOG2_E,
        *q.stride(), *layer_cache.stride(), *block_table.stride(), *out.stride(),
        PAGE_SIZE=page_size, HEAD_DIM=head_dim, QUERY_GROUP=num_q_heads // num_kv_heads,
        BLOCK_M=block_m, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_N=block_n,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out


__all__ = ["paged_attention_decode", "paged_attention_prefill", "default_num_splits"]
