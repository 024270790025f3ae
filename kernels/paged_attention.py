"""Paged attention: queries attend over K/V stored in pages named by a block table.

Decode (one new token per sequence) is flash-decoding: the grid is ``(batch, num_kv_heads,
num_splits)``; each program takes one KV head with all the query heads that share it (GQA) and one
partition of the context, walks it ``BLOCK_N`` tokens at a time (looking up each token's page in the
block table) with an online softmax in fp32, and writes a partial output plus its log-sum-exp.
With one partition the first kernel writes the output directly.

A second kernel combines the partitions by log-sum-exp, ``REDUCE_BLOCK_S`` partitions at a time with
a running maximum (registers do not grow with the split count); a sequence of length 0 (a padding
row) gives zeros with any split count.

Prefill (new tokens over a cached prefix) folds each KV head's query group into the rows, as decode
does: the grid is ``(batch, num_kv_heads, row blocks)``, row ``t * group + g`` is query head ``g`` of
the group for new token ``t``, so each K/V block is read once for the whole group. Each program walks
the keys up to its last token's position, masking causally.

Softmax runs in base 2 (``exp2``) with the scale folded into ``scale * log2(e)``. Options every
call may set: ``scale``; ``sliding_window`` W (a query at position i sees keys i - W < j <= i: decode
partitions only the window, prefill starts each row block's key walk at its first row's window);
``softcap`` c (scores ``c * tanh(scale * q.k / c)``, a compile-time switch).

Compiled variants. Triton compiles one variant per set of compile-time constants and per
specialisation of integer arguments (equal to 1, divisible by 16) and pointer alignment. Arguments
that change with the batch, the context length or the split count (window, tokens per split, split
count, the block table's row stride, the log-sum-exp strides) are exempt (``do_not_specialize``) and
the reduce kernel's block is fixed, so for one model (dtype, head counts, head_dim, page size, softcap
on or off) and one pool layout every batch size and context length runs ``COMPILED_VARIANTS``:
decode with and without splits, the reduce and prefill. ``kernels.warm_up`` compiles them at start.
Launches run in the tensors' device context (``launch_device``); index tensors are made contiguous.
"""

import torch

from ._triton import tl, triton
from .reference import paged_attention_decode_reference, paged_attention_prefill_reference
from .validation import (KV_DTYPES, KernelInputError, check_attention_options, check_block_table,
                         check_kv_layer, check_query_start_loc, check_tensor)
from . import launch_device, resolve_backend

LOG2_E = 1.4426950408889634
MAX_TRITON_HEAD_DIM = 256
MIN_TOKENS_PER_SPLIT = 256
DECODE_BLOCK_N = 64
REDUCE_BLOCK_S = 16            # splits the reduce kernel combines per step, whatever their number
# variants per kernel for one model and pool layout, over every batch size and context length
COMPILED_VARIANTS = {"_paged_decode_kernel": 2, "_decode_reduce_kernel": 1, "_paged_prefill_kernel": 1}


@triton.jit
def _scores(qk, qk_scale, softcap_log2, SOFTCAP: tl.constexpr):
    """Attention scores in log2 units from raw ``q.k``: ``qk * scale * log2(e)``, or with a softcap c
    ``c * log2(e) * tanh(qk * scale / c)`` (the launcher folds the constants into ``qk_scale`` and
    ``softcap_log2``)."""
    if SOFTCAP:
        return softcap_log2 * (2.0 * tl.sigmoid(2.0 * qk * qk_scale) - 1.0)
    return qk * qk_scale


@triton.jit
def _tile_mask(row_mask, d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a ``[rows, BLOCK_D]`` tile from ``row_mask`` ``[rows]``: when the head fills the block the
    compiler sees a mask constant along each row, so loads and stores stay vectorized."""
    if HEAD_DIM == BLOCK_D:
        return row_mask[:, None] & tl.full([1, BLOCK_D], 1, tl.int1)
    return row_mask[:, None] & (d < HEAD_DIM)[None, :]


@triton.jit
def _key_block(k_base, block_table_ptr, batch, n, n_mask, d, stride_bt_batch, stride_bt_page, stride_cache_page,
               stride_cache_slot, stride_cache_dim, PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """The keys ``[BLOCK_N, BLOCK_D]`` of token positions ``n`` ``[BLOCK_N]`` (``n_mask``: real tokens),
    each token's page looked up in the block table, with their offsets from ``k_base`` and the tile
    mask: ``(k, kv_offsets, kv_mask)``. The values lie ``stride_cache_kv`` past the keys."""
    page = tl.load(block_table_ptr + batch * stride_bt_batch + (n // PAGE_SIZE) * stride_bt_page,
                   mask=n_mask, other=0).to(tl.int64)
    token_offset = page * stride_cache_page + (n % PAGE_SIZE).to(tl.int64) * stride_cache_slot
    kv_offsets = token_offset[:, None] + d[None, :] * stride_cache_dim
    kv_mask = _tile_mask(n_mask, d, HEAD_DIM, BLOCK_D)
    k = tl.load(k_base + kv_offsets, mask=kv_mask, other=0.0)
    return k, kv_offsets, kv_mask


@triton.jit
def _online_softmax_step(m, l, acc, scores, k_base, stride_cache_kv, kv_offsets, kv_mask, DOT_PRECISION: tl.constexpr):
    """Fold one key block into the running max ``m`` and sum ``l`` ``[rows]`` (log2 units) and the
    output ``acc`` ``[rows, BLOCK_D]``: ``scores`` ``[rows, BLOCK_N]`` (-inf where not visible), and the
    block's values, loaded under ``kv_mask`` from ``stride_cache_kv`` past its keys (``k_base + kv_offsets``).
    Returns the new ``(m, l, acc)``."""
    m_new = tl.maximum(m, tl.max(scores, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)          # a row that has seen no key yet
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l = l * alpha + tl.sum(p, 1)
    v = tl.load(k_base + stride_cache_kv + kv_offsets, mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l, acc


@triton.jit(do_not_specialize=["window", "tokens_per_split", "stride_bt_batch", "stride_lse_batch",
                               "stride_lse_head"])
def _paged_decode_kernel(
    q_ptr, cache_ptr, block_table_ptr, seq_lens_ptr, out_ptr, lse_ptr,
    qk_scale, softcap_log2, window, tokens_per_split,
    stride_q_batch, stride_q_head, stride_q_dim,
    stride_cache_page, stride_cache_kv, stride_cache_slot, stride_cache_head, stride_cache_dim,
    stride_bt_batch, stride_bt_page,
    stride_out_batch, stride_out_head, stride_out_split, stride_out_dim,
    stride_lse_batch, stride_lse_head, stride_lse_split,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, QUERY_GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    WRITE_LSE: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + batch)
    start = tl.maximum(seq_len - window, 0) + split * tokens_per_split   # the splits share the window
    end = tl.minimum(start + tokens_per_split, seq_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < QUERY_GROUP
    head = kv_head * QUERY_GROUP + g                                   # [BLOCK_G] query heads
    q = tl.load(q_ptr + batch * stride_q_batch + head[:, None] * stride_q_head + d[None, :] * stride_q_dim,
                mask=_tile_mask(g_mask, d, HEAD_DIM, BLOCK_D), other=0.0)   # [BLOCK_G, BLOCK_D]

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)                  # running max (log2 units)
    l = tl.zeros([BLOCK_G], tl.float32)                                # running sum of exp2
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    k_base = cache_ptr + kv_head * stride_cache_head
    for block_start in range(start, end, BLOCK_N):
        n = block_start + tl.arange(0, BLOCK_N)                       # [BLOCK_N] token positions
        n_mask = n < end
        k, kv_offsets, kv_mask = _key_block(k_base, block_table_ptr, batch, n, n_mask, d, stride_bt_batch,
                                            stride_bt_page, stride_cache_page, stride_cache_slot, stride_cache_dim,
                                            PAGE_SIZE, HEAD_DIM, BLOCK_D)
        scores = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), qk_scale, softcap_log2,
                         SOFTCAP)                                      # [BLOCK_G, BLOCK_N]
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        m, l, acc = _online_softmax_step(m, l, acc, scores, k_base, stride_cache_kv, kv_offsets, kv_mask,
                                         DOT_PRECISION)

    out = acc / tl.where(l > 0, l, 1.0)[:, None]                       # an empty split writes zeros
    out_ptrs = out_ptr + batch * stride_out_batch + head[:, None] * stride_out_head \
        + split * stride_out_split + d[None, :] * stride_out_dim
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=_tile_mask(g_mask, d, HEAD_DIM, BLOCK_D))
    if WRITE_LSE:
        has_tokens = l > 0
        lse = tl.where(has_tokens, m + tl.log2(tl.where(has_tokens, l, 1.0)), float("-inf"))
        tl.store(lse_ptr + batch * stride_lse_batch + head * stride_lse_head + split * stride_lse_split,
                 lse, mask=g_mask)


@triton.jit(do_not_specialize=["num_splits", "stride_lse_batch", "stride_lse_head"])
def _decode_reduce_kernel(
    partial_ptr, lse_ptr, out_ptr, num_splits,
    stride_partial_batch, stride_partial_head, stride_partial_split, stride_partial_dim,
    stride_lse_batch, stride_lse_head, stride_lse_split,
    stride_out_batch, stride_out_head, stride_out_dim,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    lse_base = lse_ptr + batch * stride_lse_batch + head * stride_lse_head
    partial_base = partial_ptr + batch * stride_partial_batch + head * stride_partial_head
    # the splits BLOCK_S at a time, with a running maximum, as the attention kernels walk keys
    m = tl.max(tl.full([BLOCK_S], float("-inf"), tl.float32), 0)       # running max of the lse (log2)
    total = tl.zeros([BLOCK_S], tl.float32).sum(0)                       # sum of exp2(lse - m)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for first in range(0, num_splits, BLOCK_S):
        s = first + tl.arange(0, BLOCK_S)
        s_mask = s < num_splits
        lse = tl.load(lse_base + s * stride_lse_split, mask=s_mask, other=float("-inf"))   # [BLOCK_S]
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)            # every split so far empty
        alpha = tl.exp2(m - m_safe)
        weight = tl.exp2(lse - m_safe)                                   # an empty split (lse -inf) weighs 0
        partial = tl.load(partial_base + s[:, None] * stride_partial_split + d[None, :] * stride_partial_dim,
                          mask=_tile_mask(s_mask, d, HEAD_DIM, BLOCK_D), other=0.0)   # [BLOCK_S, BLOCK_D]
        acc = acc * alpha + tl.sum(partial * weight[:, None], 0)
        total = total * alpha + tl.sum(weight, 0)
        m = m_new
    out = acc / tl.where(total > 0, total, 1.0)                          # a length-0 row gives zeros
    tl.store(out_ptr + batch * stride_out_batch + head * stride_out_head + d * stride_out_dim,
             out.to(out_ptr.dtype.element_ty), mask=d_mask)


@triton.jit(do_not_specialize=["window", "stride_bt_batch"])
def _paged_prefill_kernel(
    q_ptr, cache_ptr, block_table_ptr, seq_lens_ptr, query_start_loc_ptr, out_ptr,
    qk_scale, softcap_log2, window,
    stride_q_token, stride_q_head, stride_q_dim,
    stride_cache_page, stride_cache_kv, stride_cache_slot, stride_cache_head, stride_cache_dim,
    stride_bt_batch, stride_bt_page,
    stride_out_token, stride_out_head, stride_out_dim,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, QUERY_GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    row_block = tl.program_id(2)
    query_start = tl.load(query_start_loc_ptr + batch).to(tl.int64)
    query_len = tl.load(query_start_loc_ptr + batch + 1) - tl.load(query_start_loc_ptr + batch)
    seq_len = tl.load(seq_lens_ptr + batch)
    context_len = seq_len - query_len                                  # cached tokens before the new ones

    # row r is query head kv_head * QUERY_GROUP + g of new token t, r = t * QUERY_GROUP + g: every
    # query head sharing this KV head is in the block, so each K/V block is read once for all of them
    flat = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    token = flat // QUERY_GROUP                                        # [BLOCK_M] new-token index
    head = kv_head * QUERY_GROUP + flat % QUERY_GROUP                  # [BLOCK_M] query head
    row_mask = token < query_len
    positions = context_len + token                                    # each row's place in the sequence
    d = tl.arange(0, BLOCK_D)
    row_offsets = (query_start + token.to(tl.int64)) * stride_q_token + head * stride_q_head
    q = tl.load(q_ptr + row_offsets[:, None] + d[None, :] * stride_q_dim,
                mask=_tile_mask(row_mask, d, HEAD_DIM, BLOCK_D), other=0.0)   # [BLOCK_M, BLOCK_D]

    # keys from the first row's window start up to the last row's position; a block past this
    # sequence's new tokens reads none
    first_token = (row_block * BLOCK_M) // QUERY_GROUP
    last_token = ((row_block + 1) * BLOCK_M - 1) // QUERY_GROUP
    kv_start = tl.maximum(context_len + first_token - window + 1, 0)
    kv_end = tl.minimum(seq_len, context_len + last_token + 1)
    kv_end = tl.where(first_token < query_len, kv_end, 0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = cache_ptr + kv_head * stride_cache_head
    for block_start in range(kv_start, kv_end, BLOCK_N):
        n = block_start + tl.arange(0, BLOCK_N)
        n_mask = n < kv_end
        k, kv_offsets, kv_mask = _key_block(k_base, block_table_ptr, batch, n, n_mask, d, stride_bt_batch,
                                            stride_bt_page, stride_cache_page, stride_cache_slot, stride_cache_dim,
                                            PAGE_SIZE, HEAD_DIM, BLOCK_D)
        scores = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), qk_scale, softcap_log2,
                         SOFTCAP)                                      # [BLOCK_M, BLOCK_N]
        visible = n_mask[None, :] & (n[None, :] <= positions[:, None]) & (n[None, :] > positions[:, None] - window)
        scores = tl.where(visible, scores, float("-inf"))
        m, l, acc = _online_softmax_step(m, l, acc, scores, k_base, stride_cache_kv, kv_offsets, kv_mask,
                                         DOT_PRECISION)

    out = acc / tl.where(l > 0, l, 1.0)[:, None]                       # a row that saw no key writes zeros
    out_offsets = (query_start + token.to(tl.int64)) * stride_out_token + head * stride_out_head
    tl.store(out_ptr + out_offsets[:, None] + d[None, :] * stride_out_dim, out.to(out_ptr.dtype.element_ty),
             mask=_tile_mask(row_mask, d, HEAD_DIM, BLOCK_D))


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


def _score_constants(scale: float, softcap: float | None) -> tuple[float, float]:
    """``(qk_scale, softcap_log2)`` for ``_scores``."""
    if softcap is None:
        return scale * LOG2_E, 0.0
    return scale / softcap, softcap * LOG2_E


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs multiply in full fp32 ("ieee"), not TF32, so they match the reference."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _prefill_tiles(dtype: torch.dtype, head_dim: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)`` for prefill. fp32 tiles multiply without tensor cores:
    smaller tiles keep them in registers. Heads of 128 and more take 8 warps and heads above 128 key
    blocks of 32, so that no variant spills (``ptxas -v`` for sm_90, bf16, 32 / 8 heads: 173
    registers and 82 KB of shared memory at head 128, 186 and 98 KB at head 256; with 4 warps
    head 256 spilled)."""
    if dtype == torch.float32:
        return 32, 32, 4
    block_d = max(16, triton.next_power_of_2(head_dim))
    return 64, 64 if block_d <= 128 else 32, 4 if block_d < 128 else 8


def default_num_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device,
                       processors: int | None = None) -> int:
    """Context partitions per sequence: enough programs for about four per streaming
    multiprocessor (``processors``, default the device's count, 1 on CPU), but no partition
    shorter than ``MIN_TOKENS_PER_SPLIT`` tokens."""
    if processors is None:
        processors = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    wanted = triton.cdiv(4 * processors, max(batch * num_kv_heads, 1))
    return max(1, min(wanted, triton.cdiv(max_context, MIN_TOKENS_PER_SPLIT)))


def paged_attention_decode(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                           seq_lens: torch.Tensor, *, scale: float | None = None,
                           sliding_window: int | None = None, softcap: float | None = None,
                           backend: str = "auto", num_splits: int | None = None,
                           validate_indices: bool = True) -> torch.Tensor:
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
        ``[0, max_pages * page_size]``; a row of length 0 (padding) gives zeros
    scale : softmax scale, a finite number > 0, default ``head_dim ** -0.5``
    sliding_window : W >= 1, or None; the query (at position ``seq_len - 1``) sees only keys at
        positions ``seq_len - W <= j``
    softcap : c > 0, or None; scores become ``c * tanh(scale * q·k / c)``
    backend : ``"auto"``, ``"triton"`` or ``"torch"``
    num_splits : context partitions per sequence (flash-decoding); default from the batch size,
        the longest possible context (or the window) and the device
    validate_indices : check seq_lens and block_table values (a device sync)

    Returns
    -------
    ``[batch, num_q_heads, head_dim]`` in q's dtype (accumulated in fp32).

    Raises
    ------
    KernelInputError
        on heads that do not divide, mismatched dtype/device/head_dim, a seq_len outside its
        row's pages, a page index outside the pool, or a bad scale / window / softcap, before any
        launch.
    """
    _, page_size, num_kv_heads, head_dim = _check_attention_inputs(
        q, layer_cache, block_table, seq_lens, validate_indices=validate_indices)
    batch, num_q_heads = q.shape[0], q.shape[1]
    if q.shape[0] != block_table.shape[0]:
        raise KernelInputError(f"q has {q.shape[0]} sequences but block_table has {block_table.shape[0]} rows")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise KernelInputError(f"num_splits must be a positive int or None, got {num_splits!r}")
    scale, sliding_window, softcap = check_attention_options(scale, sliding_window, softcap, head_dim)
    if batch == 0:
        return torch.empty_like(q)
    if resolve_backend(backend, q.device) == "torch":
        return paged_attention_decode_reference(q, layer_cache, block_table, seq_lens, scale, sliding_window, softcap)
    _check_triton_head_dim(head_dim)

    group = num_q_heads // num_kv_heads
    block_n = DECODE_BLOCK_N
    # the keys one query may see: the table's width, or the window when shorter (then a window of
    # the full width is the same as none)
    span = max(1, block_table.shape[1] * page_size)
    if sliding_window is not None:
        span = min(span, sliding_window)
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads, span, q.device)
    tokens_per_split = triton.cdiv(triton.cdiv(span, num_splits), block_n) * block_n
    num_splits = triton.cdiv(span, tokens_per_split)
    seq_lens = seq_lens.contiguous()                                   # read as seq_lens_ptr + b
    out = torch.empty_like(q)
    if num_splits == 1:
        partial = out.unsqueeze(2)                                     # [B, Hq, 1, D]: write in place
        lse = out.new_empty((1, 1, 1), dtype=torch.float32)            # unused
    else:
        partial = torch.empty((batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    with launch_device(q.device):
        _paged_decode_kernel[(batch, num_kv_heads, num_splits)](
            q, layer_cache, block_table, seq_lens, partial, lse,
            *_score_constants(scale, softcap), span, tokens_per_split,
            *q.stride(), *layer_cache.stride(), *block_table.stride(), *partial.stride(), *lse.stride(),
            PAGE_SIZE=page_size, HEAD_DIM=head_dim, QUERY_GROUP=group,
            BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_D=block_d, BLOCK_N=block_n,
            WRITE_LSE=num_splits > 1, SOFTCAP=softcap is not None, DOT_PRECISION=_dot_precision(q.dtype),
            num_warps=4 if block_d <= 128 else 8,
        )
        if num_splits > 1:
            _decode_reduce_kernel[(batch, num_q_heads)](
                partial, lse, out, num_splits,
                *partial.stride(), *lse.stride(), *out.stride(),
                HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=REDUCE_BLOCK_S,
            )
    return out


def paged_attention_prefill(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                            seq_lens: torch.Tensor, query_start_loc: torch.Tensor, *,
                            scale: float | None = None, sliding_window: int | None = None,
                            softcap: float | None = None, backend: str = "auto",
                            max_query_len: int | None = None, validate_indices: bool = True) -> torch.Tensor:
    """Causal attention of new tokens over their sequence's cached prefix and themselves.

    Sequence b's new tokens are its LAST ``q_len_b = query_start_loc[b+1] - query_start_loc[b]`` of
    ``seq_lens[b]`` tokens (their K/V already written into the pages); new token j sits at position
    ``seq_lens[b] - q_len_b + j`` and attends to every position up to its own (only the last
    ``sliding_window`` of them with a window).

    Parameters
    ----------
    q : ``[total_new_tokens, num_q_heads, head_dim]``, fp16/bf16/fp32
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``, q's dtype and device
    block_table : int32 ``[batch, max_pages]``, padded past each sequence's pages
    seq_lens : int32 ``[batch]`` in ``[0, max_pages * page_size]``
    query_start_loc : int32 ``[batch + 1]``, cumulative new-token counts (``cu_seqlens``), from 0 to
        ``total_new_tokens``; a sequence may have 0 new tokens
    scale : softmax scale, a finite number > 0, default ``head_dim ** -0.5``
    sliding_window : W >= 1, or None; the token at position i sees keys at ``i - W < j <= i``
    softcap : c > 0, or None; scores become ``c * tanh(scale * q·k / c)``
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
    scale, sliding_window, softcap = check_attention_options(scale, sliding_window, softcap, head_dim)
    if q.shape[0] == 0:
        return torch.empty_like(q)
    if resolve_backend(backend, q.device) == "torch":
        return paged_attention_prefill_reference(q, layer_cache, block_table, seq_lens, query_start_loc, scale,
                                                 sliding_window, softcap)
    _check_triton_head_dim(head_dim)

    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    num_q_heads = q.shape[1]
    block_m, block_n, num_warps = _prefill_tiles(q.dtype, head_dim)
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    grid = (batch, num_kv_heads, triton.cdiv(max_query_len * group, block_m))    # rows: new tokens x group
    max_context = max(1, block_table.shape[1] * page_size)       # a window this wide is no window
    window = max_context if sliding_window is None else min(sliding_window, max_context)
    with launch_device(q.device):
        _paged_prefill_kernel[grid](
            q, layer_cache, block_table, seq_lens.contiguous(), query_start_loc.contiguous(), out,
            *_score_constants(scale, softcap), window,
            *q.stride(), *layer_cache.stride(), *block_table.stride(), *out.stride(),
            PAGE_SIZE=page_size, HEAD_DIM=head_dim, QUERY_GROUP=group,
            BLOCK_M=block_m, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_N=block_n,
            SOFTCAP=softcap is not None, DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps,
        )
    return out


__all__ = ["paged_attention_decode", "paged_attention_prefill", "default_num_splits", "COMPILED_VARIANTS"]
