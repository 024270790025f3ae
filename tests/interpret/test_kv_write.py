"""kv_write's Triton kernel under the interpreter (CPU tensors) against the torch reference."""

import pytest
import torch

from llmds_torch.kernels.kv_write import kv_write
from llmds_torch.kernels.reference import kv_write_reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("page_size,num_kv_heads,head_dim", [(1, 1, 16), (4, 2, 80), (16, 2, 64)])
def test_kv_write_kernel_matches_reference(dtype, page_size, num_kv_heads, head_dim):
    gen = torch.Generator().manual_seed(page_size)
    num_pages, num_tokens = 6, 5
    cache = torch.randn(num_pages, 2, page_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    slots = torch.randperm(num_pages * page_size, generator=gen)[:num_tokens]
    slots[1] = -1                                                 # skipped
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    expected = cache.clone()
    kv_write_reference(expected, slots, k, v)
    kv_write(cache, slots, k, v, backend="triton")
    assert torch.equal(cache, expected)


def test_kv_write_kernel_uses_strides_of_a_layer_view_and_of_k():
    gen = torch.Generator().manual_seed(7)
    pool = torch.randn(5, 3, 2, 4, 2, 16, generator=gen)          # [pages, layers, ...]
    k_wide = torch.randn(6, 2, 32, generator=gen)
    k, v = k_wide[..., ::2], torch.randn(6, 2, 16, generator=gen)  # k has a gap between elements
    slots = torch.tensor([3, 0, 19, -1, 8, 12])
    expected = pool.clone()
    kv_write_reference(expected[:, 2], slots, k, v)
    kv_write(pool[:, 2], slots, k, v, backend="triton")
    assert torch.equal(pool, expected)


def test_kv_write_kernel_reads_a_strided_slot_mapping():
    """A column of a table is a strided view: slots 3, 9, 14 must not be read as 3, 100, 9."""
    gen = torch.Generator().manual_seed(8)
    cache = torch.randn(6, 2, 4, 2, 16, generator=gen)
    table = torch.tensor([[3, 100, 7], [9, 101, 8], [14, 102, 9]])
    slots = table[:, 0]
    assert not slots.is_contiguous()
    k, v = torch.randn(3, 2, 16, generator=gen), torch.randn(3, 2, 16, generator=gen)
    expected = cache.clone()
    kv_write_reference(expected, slots.contiguous(), k, v)
    kv_write(cache, slots, k, v, backend="triton")
    assert torch.equal(cache, expected)
