"""Paged attention's Triton kernels (decode with and without splits, prefill) under the
interpreter against the torch references. fp32 and fp16 only: the interpreter gets bf16 arithmetic
wrong."""

import math

import pytest
import torch

from llmds_torch.kernels.paged_attention import paged_attention_decode, paged_attention_prefill
from llmds_torch.kernels.reference import paged_attention_decode_reference, paged_attention_prefill_reference

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


def paged_case(seq_lens, page_size, num_kv_heads, head_dim, dtype, seed=0):
    """Scattered pages, a -1 padded block table, seq_lens."""
    gen = torch.Generator().manual_seed(seed)
    pages_per_seq = [math.ceil(n / page_size) for n in seq_lens]
    num_pages = sum(pages_per_seq) + 2
    cache = torch.randn(num_pages, 2, page_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    order = torch.randperm(num_pages, generator=gen).tolist()
    table = torch.full((len(seq_lens), max(pages_per_seq) + 1), -1, dtype=torch.int32)
    for b, count in enumerate(pages_per_seq):
        table[b, :count] = torch.tensor([order.pop() for _ in range(count)], dtype=torch.int32)
    return cache, table, torch.tensor(seq_lens, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size", [1, 4, 16])
@pytest.mark.parametrize("head_dim,group", [(16, 1), (80, 4), (64, 4)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_kernel_matches_reference(dtype, page_size, head_dim, group, num_splits):
    seq_lens = [1, 2 * page_size + 3, 150]                         # 150 spans 3 blocks of 64 tokens
    cache, table, lens = paged_case(seq_lens, page_size, 2, head_dim, dtype)
    q = torch.randn(3, 2 * group, head_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = paged_attention_decode(q, cache, table, lens, backend="triton", num_splits=num_splits)
    expected = paged_attention_decode_reference(q, cache, table, lens, head_dim ** -0.5)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)
    assert out.dtype == dtype


def test_decode_kernel_with_strided_layer_view_and_default_splits():
    cache, table, lens = paged_case([70, 3], 8, 2, 32, torch.float32)
    pool = torch.stack([torch.randn_like(cache), cache], dim=1)     # [pages, layers, ...]
    q = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(3))
    out = paged_attention_decode(q, pool[:, 1], table, lens, backend="triton", scale=0.2)
    expected = paged_attention_decode_reference(q, cache, table, lens, 0.2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size", [1, 4, 16])
@pytest.mark.parametrize("head_dim,group", [(16, 1), (80, 2)])
def test_prefill_kernel_matches_reference(dtype, page_size, head_dim, group):
    # whole prompt new (more rows than one 64-row block), cached prefix + new, one new token, none
    seq_lens, query_lens = [70, 3 * page_size + 5, 9, 6], [70, page_size + 2, 1, 0]
    cache, table, lens = paged_case(seq_lens, page_size, 1, head_dim, dtype, seed=page_size)
    query_start_loc = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(query_lens), group, head_dim, generator=torch.Generator().manual_seed(2)).to(dtype)
    out = paged_attention_prefill(q, cache, table, lens, query_start_loc, backend="triton")
    expected = paged_attention_prefill_reference(q, cache, table, lens, query_start_loc, head_dim ** -0.5)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


def dense_loop(q, cache, table, seq_lens, query_lens, scale, window, softcap):
    """Plain loops in float64: sequence b's new tokens are its last ``query_lens[b]``; the token at
    position i sees keys ``i - window < j <= i``; scores ``softcap * tanh(scale * q.k / softcap)``."""
    page_size, num_kv_heads = cache.shape[2], cache.shape[3]
    group = q.shape[1] // num_kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    row = 0
    for b, (seq_len, query_len) in enumerate(zip(seq_lens, query_lens)):
        kv = torch.stack([cache[int(table[b, j // page_size]), :, j % page_size] for j in range(seq_len)]).double()
        for position in range(seq_len - query_len, seq_len):
            first = 0 if window is None else max(0, position - window + 1)
            for head in range(q.shape[1]):
                k = kv[first: position + 1, 0, head // group]                    # [n, D]
                v = kv[first: position + 1, 1, head // group]
                scores = k @ q[row, head].double() * scale
                if softcap is not None:
                    scores = softcap * torch.tanh(scores / softcap)
                out[row, head] = torch.softmax(scores, 0) @ v
            row += 1
    return out


@pytest.mark.parametrize("window", [1, 5, 64, 1000, None])
@pytest.mark.parametrize("softcap", [None, 1.5])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_kernel_window_softcap_match_loop(window, softcap, num_splits):
    seq_lens = [1, 9, 150]                                       # window 5 splits a 4-token page
    cache, table, lens = paged_case(seq_lens, 4, 2, 16, torch.float32, seed=4)
    q = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(5))        # GQA 8 / 2
    out = paged_attention_decode(q, cache, table, lens, scale=0.5, sliding_window=window, softcap=softcap,
                                 backend="triton", num_splits=num_splits)
    expected = dense_loop(q, cache, table, seq_lens, [1, 1, 1], 0.5, window, softcap)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 5, 40, 1000, None])
@pytest.mark.parametrize("softcap", [None, 1.5])
def test_prefill_kernel_window_softcap_match_loop(window, softcap):
    # whole prompt new (two row blocks), new tokens over a cached prefix, one new token, none
    seq_lens, query_lens = [45, 70, 9, 6], [45, 12, 1, 0]
    cache, table, lens = paged_case(seq_lens, 4, 2, 16, torch.float32, seed=6)
    query_start_loc = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(query_lens), 4, 16, generator=torch.Generator().manual_seed(7))   # GQA 4 / 2
    out = paged_attention_prefill(q, cache, table, lens, query_start_loc, scale=0.5, sliding_window=window,
                                  softcap=softcap, backend="triton")
    expected = dense_loop(q, cache, table, seq_lens, query_lens, 0.5, window, softcap)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_splits", [1, 2, 4])
@pytest.mark.parametrize("window", [None, 3])
def test_decode_kernel_gives_zeros_for_length_zero_rows(num_splits, window):
    """Padding rows (seq_len 0, as a fixed-size batch has) attend to nothing: zeros, never NaN, with
    any split count; the other rows are unaffected."""
    seq_lens = [0, 150, 0, 9]
    cache, table, lens = paged_case([1, 150, 1, 9], 4, 2, 16, torch.float32, seed=8)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    q = torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(9))
    out = paged_attention_decode(q, cache, table, lens, sliding_window=window, backend="triton",
                                 num_splits=num_splits)
    assert torch.equal(out[[0, 2]], torch.zeros(2, 4, 16))
    expected = dense_loop(q[[1, 3]], cache, table[[1, 3]], [150, 9], [1, 1], 16 ** -0.5, window, None)
    torch.testing.assert_close(out[[1, 3]].double(), expected, atol=1e-5, rtol=1e-5)


def test_decode_reduce_combines_more_splits_than_its_block():
    """More partitions than the reduce kernel takes per step: the running maximum carries across."""
    from llmds_torch.kernels.paged_attention import DECODE_BLOCK_N, REDUCE_BLOCK_S
    seq_len = (2 * REDUCE_BLOCK_S + 3) * DECODE_BLOCK_N
    cache, table, lens = paged_case([seq_len, 5], 16, 1, 16, torch.float32, seed=10)
    q = torch.randn(2, 2, 16, generator=torch.Generator().manual_seed(11)) * 3
    out = paged_attention_decode(q, cache, table, lens, backend="triton", num_splits=2 * REDUCE_BLOCK_S + 3)
    expected = dense_loop(q, cache, table, [seq_len, 5], [1, 1], 16 ** -0.5, None, None)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group", [1, 3, 8])
def test_prefill_kernel_with_query_groups_that_straddle_row_blocks(group):
    """Rows are (new token, query head of the group) pairs: groups of 3 do not divide the row block,
    groups of 8 fill it with 4 tokens; short and long queries over cached prefixes."""
    seq_lens, query_lens = [50, 21, 6], [13, 21, 2]
    cache, table, lens = paged_case(seq_lens, 4, 2, 16, torch.float32, seed=12)
    query_start_loc = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(query_lens), 2 * group, 16, generator=torch.Generator().manual_seed(13))
    out = paged_attention_prefill(q, cache, table, lens, query_start_loc, backend="triton")
    expected = dense_loop(q, cache, table, seq_lens, query_lens, 16 ** -0.5, None, None)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
