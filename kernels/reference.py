"""Torch references for every kernel in this package: plain, readable, and the ``"torch"`` backend
of each launcher (so they run on any device). They take already-validated inputs; the launchers
check them. This module imports no triton.

Layouts (FlashInfer's NHD):
    pool         [num_layers, num_pages, 2, page_size, num_kv_heads, head_dim]
    layer_cache  [num_pages, 2, page_size, num_kv_heads, head_dim]     ([:, 0] = K, [:, 1] = V)
    slot         page * page_size + offset within the page
"""

import math

import torch


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


def _gather_kv(layer_cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int):
    """K and V of one sequence, each ``[seq_len, num_kv_heads, head_dim]``."""
    page_size = layer_cache.shape[2]
    pages = block_table_row[: math.ceil(seq_len / page_size)].long()
    kv = layer_cache[pages]                                  # [pages, 2, page_size, Hkv, D]
    k = kv[:, 0].reshape(-1, *kv.shape[-2:])[:seq_len]
    v = kv[:, 1].reshape(-1, *kv.shape[-2:])[:seq_len]
    return k, v


def paged_attention_decode_reference(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                                     seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence over its pages.

    Parameters
    ----------
    q : ``[batch, num_q_heads, head_dim]``
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``
    block_table : int32 ``[batch, max_pages]``, padded past each sequence's pages
    seq_lens : int32 ``[batch]``, each >= 1
    scale : softmax scale applied to q·k

    Returns
    -------
    ``[batch, num_q_heads, head_dim]`` in q's dtype; softmax and sums in fp32.
    """
    batch, num_q_heads, head_dim = q.shape
    page_size, num_kv_heads = layer_cache.shape[2], layer_cache.shape[3]
    group = num_q_heads // num_kv_heads
    num_pages = math.ceil(int(seq_lens.max()) / page_size)
    num_keys = num_pages * page_size
    pages_per_seq = (seq_lens.long() + page_size - 1) // page_size
    in_seq = torch.arange(num_pages, device=q.device)[None, :] < pages_per_seq[:, None]
    pages = torch.where(in_seq, block_table[:, :num_pages].long(), 0).flatten()   # padding reads page 0
    # gather whole pages: k, v [B, N, Hkv, D] with N = num_pages * page_size, masked past seq_len below
    k = layer_cache[:, 0].index_select(0, pages).view(batch, num_keys, num_kv_heads, head_dim).float()
    v = layer_cache[:, 1].index_select(0, pages).view(batch, num_keys, num_kv_heads, head_dim).float()
    q_grouped = q.float().view(batch, num_kv_heads, group, head_dim)        # query head h = kv_head * group + g
    # each KV head's group of query heads against that head's keys (strided views, no copy)
    scores = torch.stack([torch.bmm(q_grouped[:, h], k[:, :, h].transpose(1, 2)) for h in range(num_kv_heads)],
                         dim=1) * scale                                      # [B, Hkv, group, N]
    beyond = torch.arange(num_keys, device=q.device)[None, :] >= seq_lens.long()[:, None]   # [B, N]
    v = v.masked_fill(beyond[:, :, None, None], 0.0)  # unwritten slots may hold NaN; 0 * NaN is NaN
    probs = torch.softmax(scores.masked_fill(beyond[:, None, None, :], float("-inf")), dim=-1)
    out = torch.stack([torch.bmm(probs[:, h], v[:, :, h]) for h in range(num_kv_heads)], dim=1)   # [B, Hkv, group, D]
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype)


def paged_attention_prefill_reference(q: torch.Tensor, layer_cache: torch.Tensor, block_table: torch.Tensor,
                                      seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                                      scale: float) -> torch.Tensor:
    """New tokens attend causally over their sequence's cached prefix and themselves.

    Parameters
    ----------
    q : ``[total_new_tokens, num_q_heads, head_dim]``; sequence b owns rows
        ``query_start_loc[b]:query_start_loc[b+1]``, which are its LAST tokens
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``, new tokens' K/V already written
    block_table : int32 ``[batch, max_pages]``
    seq_lens : int32 ``[batch]``, tokens of each sequence including the new ones
    query_start_loc : int32 ``[batch + 1]``
    scale : softmax scale

    Returns
    -------
    ``[total_new_tokens, num_q_heads, head_dim]`` in q's dtype.
    """
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = layer_cache.shape[3]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        query_len = starts[b + 1] - starts[b]
        if query_len == 0:
            continue
        k, v = _gather_kv(layer_cache, block_table[b], seq_len)           # [seq_len, Hkv, D]
        k, v = k.float(), v.float()
        q_b = q[starts[b]: starts[b + 1]].float().view(query_len, num_kv_heads, group, head_dim)
        query_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)
        future = torch.arange(seq_len, device=q.device)[None, :] > query_pos[:, None]   # [q_len, seq_len]
        per_head = []
        for h in range(num_kv_heads):                                       # the group of query heads sharing h
            scores = torch.einsum("qgd,nd->qgn", q_b[:, h], k[:, h]) * scale  # [q_len, group, seq_len]
            probs = torch.softmax(scores.masked_fill(future[:, None, :], float("-inf")), dim=-1)
            per_head.append(torch.einsum("qgn,nd->qgd", probs, v[:, h]))
        out[starts[b]: starts[b + 1]] = torch.stack(per_head, dim=1).reshape(query_len, num_q_heads, head_dim).to(q.dtype)
    return out
