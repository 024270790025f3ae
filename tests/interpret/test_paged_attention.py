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
