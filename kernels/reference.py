"""Torch references for every kernel in this package: plain, readable, and the ``"torch"`` backend
of each launcher (so they run on any device). They take already-validated inputs; the launchers
check them. This module imports no triton. The attention references are also what every CPU user
runs, so they gather pages into chunks and call torch's SDPA; the tests hold them to float64 loops.

Layouts (FlashInfer's NHD):
    pool         [num_layers, num_pages, 2, page_size, num_kv_heads, head_dim]
    layer_cache  [num_pages, 2, page_size, num_kv_heads, head_dim]     ([:, 0] = K, [:, 1] = V)
    slot         page * page_size + offset within the page
"""

import math
import threading

import torch
import torch.nn.functional as F


def kv_write_reference(layer_cache: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor) -> None:
    """Scatter ``k`` and ``v`` ``[num_tokens, num_kv_heads, head_dim]`` into ``layer_cache`` at
    ``slot_mapping`` ``[num_tokens]``; tokens with a negative slot are skipped. In place."""
    page_size = layer_cache.shape[2]
    keep = slot_mapping >= 0
    if not bool(keep.all()):                                        # drop skipped tokens
        slot_mapping, k, v = slot_mapping[keep], k[keep], v[keep]
    pages, offsets = slot_mapping // page_size, slot_mapping % page_size
    layer_cache[:, 0].index_put_((pages, offsets), k)               # K of every page: [pages, page_size, Hkv, D]
    layer_cache[:, 1].index_put_((pages, offsets), v)


def page_copy_reference(pool: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor) -> None:
    """Copy page ``src_pages[i]`` to page ``dst_pages[i]`` ``[num_pairs]`` in every layer of
    ``pool``. All sources are read before any destination is written. In place."""
    if pool.device.type == "cpu":
        src, dst = src_pages.tolist(), dst_pages.tolist()
        if not set(src) & set(dst):
            # a memcpy per page is about 10x faster on CPU than gathering and scattering by index
            for s, d in zip(src, dst):
                pool[:, d].copy_(pool[:, s])
            return
    pool[:, dst_pages] = pool[:, src_pages]


# Bytes of fp32 K+V gathered per chunk of decode sequences. Each chunk is gathered into the same
# buffer, small enough to stay in the CPU's cache for SDPA to read right back, and the temporary
# memory is bounded whatever the batch. A sequence longer than the budget gets a chunk of its own.
GATHER_CHUNK_BYTES = 4 * 2**20

# On CPU the gather buffer is kept between calls, one per thread: fresh memory page-faults on first
# touch, 4 KiB at a time, and that cost several times the attention itself (a 4 MiB buffer made a
# one-sequence 4096-token decode step 12x slower). Buffers above SCRATCH_KEEP_BYTES are not kept.
SCRATCH_KEEP_BYTES = 64 * 2**20
_scratch = threading.local()


def _scratch_bytes(num_bytes: int, device: torch.device) -> torch.Tensor:
    """A uint8 buffer of at least ``num_bytes`` on ``device``; on CPU this thread's kept buffer when
    it is large enough. Its contents are garbage."""
    if device.type != "cpu":                                   # CUDA's caching allocator already reuses
        return torch.empty(num_bytes, dtype=torch.uint8, device=device)
    kept = getattr(_scratch, "buffer", None)
    if kept is not None and kept.numel() >= num_bytes:
        return kept
    buffer = torch.empty(num_bytes, dtype=torch.uint8)
    if num_bytes <= SCRATCH_KEEP_BYTES:
        _scratch.buffer = buffer
    return buffer


def _gather_pages(layer_cache: torch.Tensor, pages: torch.Tensor, k_out: torch.Tensor, v_out: torch.Tensor,
                  staging: torch.Tensor | None) -> None:
    """K and V of ``pages`` ``[n]`` into ``k_out`` and ``v_out`` ``[n, page_size, num_kv_heads, head_dim]``
    (fp32), through ``staging`` (same shape, the pool's dtype) when the pool is not fp32."""
    for part, out in ((0, k_out), (1, v_out)):
        if staging is None:
            torch.index_select(layer_cache[:, part], 0, pages, out=out)
        else:
            torch.index_select(layer_cache[:, part], 0, pages, out=staging)
            out.copy_(staging)                                       # upcast: arithmetic in fp32


def _gather_buffers(layer_cache: torch.Tensor, max_pages: int):
    """fp32 K and V buffers of ``max_pages`` pages each, ``[max_pages, page_size, num_kv_heads,
    head_dim]``, and a staging buffer of that shape in the pool's dtype when it is not fp32 (else
    None): views of one scratch buffer, so callers must be done with them before the next call."""
    shape = (max_pages, *layer_cache.shape[2:])                              # [pages, S, Hkv, D]
    numel = math.prod(shape)
    staging_bytes = 0 if layer_cache.dtype == torch.float32 else numel * layer_cache.element_size()
    scratch = _scratch_bytes(8 * numel + staging_bytes, layer_cache.device)
    k_buf = scratch[: 4 * numel].view(torch.float32).view(shape)
    v_buf = scratch[4 * numel: 8 * numel].view(torch.float32).view(shape)
    staging = None if not staging_bytes else scratch[8 * numel: 8 * numel + staging_bytes].view(
        layer_cache.dtype).view(shape)
    return k_buf, v_buf, staging


# Query rows per soft-capped attention call: bounds the [heads, rows, keys] score tensor.
SOFTCAP_ROWS_PER_CALL = 256


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
            softcap: float | None, *, is_causal: bool = False, enable_gqa: bool = False) -> torch.Tensor:
    """Softmax attention of ``q`` ``[..., Hq, n, D]`` over ``k``, ``v`` ``[..., Hkv, m, D]`` (Hkv = Hq
    unless ``enable_gqa``), ``mask`` (True = attend) broadcastable to ``[..., Hq, n, m]``; with
    ``softcap`` the scores are ``softcap * tanh(scale * q.k / softcap)``. SDPA without a softcap,
    else the same arithmetic written out, ``SOFTCAP_ROWS_PER_CALL`` query rows at a time."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)
    assert not is_causal, "pass an explicit mask with a softcap"
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, -3), v.repeat_interleave(group, -3)          # [..., Hq, m, D]
    out = torch.empty_like(q)
    for row in range(0, q.shape[-2], SOFTCAP_ROWS_PER_CALL):
        rows = slice(row, row + SOFTCAP_ROWS_PER_CALL)
        scores = torch.tanh(q[..., rows, :] @ k.transpose(-2, -1) * (scale / softcap)) * softcap   # [..., H, r, m]
        if mask is not None:
            scores = scores.masked_fill(~(mask if mask.shape[-2] == 1 else mask[..., rows, :]), float("-inf"))
        out[..., rows, :] = torch.softmax(scores, dim=-1) @ v
    return out


def _chunk_bounds(sorted_lens: list[int], page_size: int, pages_per_chunk: int) -> list[tuple[int, int]]:
    """Cut sequences sorted by length into runs ``[start, end)`` whose members, each padded to the
    run's longest, hold at most ``pages_per_chunk`` pages (a longer sequence runs alone). Sorting
    keeps sequences of similar length together, so padding wastes little."""
    bounds, start = [], 0
    for i, seq_len in enumerate(sorted_lens):
        if i > start and (i + 1 - start) * -(-seq_len // page_size) > pages_per_chunk:
            bounds.append((start, i))
            start = i
    return bounds + [(start, len(sorted_lens))]


def paged_attention_decode_reference(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                                     seq_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
                                     softcap: float | None = None) -> torch.Tensor:
    """One query token per sequence over its pages.

    Sequences are taken in order of length, in chunks of about ``GATHER_CHUNK_BYTES`` of K/V: each
    chunk's pages are gathered (one ``index_select`` for K, one for V) into a kept fp32 buffer
    ``[chunk, tokens, num_kv_heads, head_dim]``, then attended with
    ``torch.nn.functional.scaled_dot_product_attention``, each KV head's group of query heads
    passed as that head's query rows. Slots past a sequence's length are zeroed and masked, so
    whatever an unwritten slot holds (NaN included) never reaches the output. With a sliding window
    each sequence's gather starts at the page holding its first visible key (earlier keys of that
    page are masked).

    Parameters
    ----------
    q : ``[batch, num_q_heads, head_dim]``
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``
    block_table : int32 ``[batch, max_pages]``, padded past each sequence's pages
    seq_lens : int32 ``[batch]``, each >= 1
    scale : softmax scale applied to q·k
    sliding_window : W, or None; the query (at position ``seq_len - 1``) sees keys ``seq_len - W <= j``
    softcap : c, or None; scores become ``c * tanh(scale * q·k / c)``

    Returns
    -------
    ``[batch, num_q_heads, head_dim]`` in q's dtype; softmax and sums in fp32.
    """
    batch, num_q_heads, head_dim = q.shape
    page_size, num_kv_heads = layer_cache.shape[2], layer_cache.shape[3]
    group = num_q_heads // num_kv_heads
    device = q.device
    lengths = seq_lens.tolist()
    first_visible = None                       # per sequence: slot of its first visible key in its shifted table
    if sliding_window is not None and max(lengths) > sliding_window:
        skip = [max(0, n - sliding_window) // page_size for n in lengths]   # whole pages before the window
        first_visible = [max(0, n - sliding_window) - s * page_size for n, s in zip(lengths, skip)]
        lengths = [n - s * page_size for n, s in zip(lengths, skip)]
        width = block_table.shape[1]
        columns = torch.tensor(skip, device=device)[:, None] + torch.arange(width, device=device)[None, :]
        block_table = torch.gather(block_table, 1, columns.clamp_(max=width - 1))
        seq_lens = torch.tensor(lengths, dtype=seq_lens.dtype, device=device)
    order = sorted(range(batch), key=lengths.__getitem__)
    sorted_lens = [lengths[b] for b in order]
    page_bytes = 2 * page_size * num_kv_heads * head_dim * 4                # K and V of a page, fp32
    chunks = _chunk_bounds(sorted_lens, page_size, max(1, GATHER_CHUNK_BYTES // page_bytes))
    k_buf, v_buf, staging = _gather_buffers(
        layer_cache, max((end - start) * -(-sorted_lens[end - 1] // page_size) for start, end in chunks))
    # everything below is in length order: row i is sequence order[i]
    rows = None if order == list(range(batch)) else torch.tensor(order, device=device)

    def in_order(t: torch.Tensor) -> torch.Tensor:
        return t if rows is None else t.index_select(0, rows)

    lens = in_order(seq_lens)                                                           # [B]
    firsts = None if first_visible is None else in_order(torch.tensor(first_visible, device=device))
    max_pages = -(-sorted_lens[-1] // page_size)
    pages = in_order(block_table)[:, :max_pages].long()                                 # [B, max_pages]
    if -(-sorted_lens[0] // page_size) < max_pages:           # padding entries (e.g. -1) read page 0 instead
        pages = torch.where(torch.arange(max_pages, device=device)[None, :] * page_size < lens[:, None], pages, 0)
    q_grouped = in_order(q).float().view(batch, num_kv_heads, group, head_dim)          # h = kv_head * group + g
    attended = torch.empty_like(q_grouped)                                              # [B, Hkv, group, D]
    for start, end in chunks:
        count, longest = end - start, sorted_lens[end - 1]
        num_pages = -(-longest // page_size)
        size = count * num_pages
        _gather_pages(layer_cache, pages[start:end, :num_pages].flatten(), k_buf[:size], v_buf[:size],
                      None if staging is None else staging[:size])
        # k, v: [count, longest, Hkv, D] views of the buffer (slots past the longest are never read)
        k = k_buf[:size].view(count, num_pages * page_size, num_kv_heads, head_dim)[:, :longest]
        v = v_buf[:size].view(count, num_pages * page_size, num_kv_heads, head_dim)[:, :longest]
        visible = None                                        # [count, longest], None: every slot
        slots = torch.arange(longest, device=device)[None, :]
        if sorted_lens[start] < longest:                      # some sequences shorter than the chunk's longest
            beyond = slots >= lens[start:end, None]           # [count, longest]
            k[beyond] = 0.0                                   # unwritten slots may hold NaN; 0 * NaN is NaN
            v[beyond] = 0.0
            visible = ~beyond
        if firsts is not None:                                # keys before the sliding window
            in_window = slots >= firsts[start:end, None]
            visible = in_window if visible is None else visible & in_window
        mask = None if visible is None else visible[:, None, None, :]          # [count, 1, 1, longest]
        attended[start:end] = _attend(q_grouped[start:end], k.transpose(1, 2), v.transpose(1, 2), mask, scale,
                                      softcap)
    attended = attended.view(batch, num_q_heads, head_dim).to(q.dtype)
    return attended if rows is None else torch.empty_like(q).index_copy_(0, rows, attended)


def paged_attention_prefill_reference(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                                      seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                                      scale: float, sliding_window: int | None = None,
                                      softcap: float | None = None) -> torch.Tensor:
    """New tokens attend causally over their sequence's cached prefix and themselves.

    Sequences with one new token go through ``paged_attention_decode_reference`` together; each
    other sequence's pages are gathered into a kept fp32 buffer, exactly its ``seq_len`` tokens
    (no unwritten slot is read; with a sliding window, from the page holding the first visible key
    of its first new token), and attended with ``torch.nn.functional.scaled_dot_product_attention``
    under a bottom-right causal mask (and the window's lower bound).

    Parameters
    ----------
    q : ``[total_new_tokens, num_q_heads, head_dim]``; sequence b owns rows
        ``query_start_loc[b]:query_start_loc[b+1]``, which are its LAST tokens
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``, new tokens' K/V already written
    block_table : int32 ``[batch, max_pages]``
    seq_lens : int32 ``[batch]``, tokens of each sequence including the new ones
    query_start_loc : int32 ``[batch + 1]``
    scale : softmax scale
    sliding_window : W, or None; new token at position i sees keys ``i - W < j <= i``
    softcap : c, or None; scores become ``c * tanh(scale * q·k / c)``

    Returns
    -------
    ``[total_new_tokens, num_q_heads, head_dim]`` in q's dtype; softmax and sums in fp32.
    """
    head_dim = q.shape[2]
    page_size, num_kv_heads = layer_cache.shape[2], layer_cache.shape[3]
    device = q.device
    out = torch.empty_like(q)
    starts, lengths = query_start_loc.tolist(), seq_lens.tolist()
    query_lens = [end - start for start, end in zip(starts, starts[1:])]
    single = [b for b, query_len in enumerate(query_lens) if query_len == 1]
    if single:                                                # one new token is a decode step
        seqs = torch.tensor(single, device=device)
        rows = torch.tensor([starts[b] for b in single], device=device)
        out[rows] = paged_attention_decode_reference(q[rows], layer_cache, block_table[seqs], seq_lens[seqs], scale,
                                                     sliding_window, softcap)
    longer = [b for b, query_len in enumerate(query_lens) if query_len > 1]
    if not longer:
        return out
    k_buf, v_buf, staging = _gather_buffers(layer_cache, max(-(-lengths[b] // page_size) for b in longer))
    for b in longer:
        seq_len, query_len = lengths[b], query_lens[b]
        first_query = seq_len - query_len                     # new token j sits at first_query + j
        first_key = 0 if sliding_window is None else max(0, first_query - sliding_window + 1)
        skip = first_key // page_size                         # whole pages no new token sees
        num_pages = -(-seq_len // page_size) - skip
        _gather_pages(layer_cache, block_table[b, skip: skip + num_pages].long(), k_buf[:num_pages],
                      v_buf[:num_pages], None if staging is None else staging[:num_pages])
        # k, v: [1, Hkv, kv_len, D] views of the buffer: keys at positions skip * page_size ... seq_len - 1
        kv_len = seq_len - skip * page_size
        k = k_buf[:num_pages].view(1, -1, num_kv_heads, head_dim)[:, :kv_len].transpose(1, 2)
        v = v_buf[:num_pages].view(1, -1, num_kv_heads, head_dim)[:, :kv_len].transpose(1, 2)
        q_b = q[starts[b]: starts[b + 1]].float().transpose(0, 1)[None]             # [1, Hq, q_len, D]
        mask = None
        if query_len < kv_len or sliding_window is not None or softcap is not None:
            key_pos = torch.arange(skip * page_size, seq_len, device=device)[None, :]
            query_pos = torch.arange(first_query, seq_len, device=device)[:, None]
            mask = key_pos <= query_pos                                              # [q_len, kv_len]
            if sliding_window is not None:
                mask &= key_pos > query_pos - sliding_window
        attended = _attend(q_b, k, v, mask, scale, softcap, is_causal=mask is None,
                           enable_gqa=True)                                          # [1, Hq, q_len, D]
        out[starts[b]: starts[b + 1]] = attended[0].transpose(0, 1).to(q.dtype)
    return out
