"""page_copy / page_move's Triton kernel under the interpreter against the torch reference."""

import pytest
import torch

from llmds_torch.kernels.page_copy import page_copy
from llmds_torch.kernels.page_move import page_move
from llmds_torch.kernels.reference import page_copy_reference


@pytest.mark.parametrize("op", [page_copy, page_move])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("page_size,head_dim", [(1, 16), (4, 80), (16, 64)])
def test_page_copy_kernel_matches_reference_in_every_layer(op, dtype, page_size, head_dim):
    gen = torch.Generator().manual_seed(page_size + head_dim)
    pool = torch.randn(3, 8, 2, page_size, 2, head_dim, generator=gen).to(dtype)
    src, dst = torch.tensor([5, 0, 5]), torch.tensor([1, 7, 3])
    expected = pool.clone()
    page_copy_reference(expected, src, dst)
    op(pool, src, dst, backend="triton")
    assert torch.equal(pool, expected)


def test_page_copy_kernel_in_a_strided_pool_view():
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(4, 10, 2, 4, 2, 16, generator=gen)
    src, dst = torch.tensor([0, 3]), torch.tensor([4, 1])
    expected = big.clone()
    page_copy_reference(expected[1::2, ::2], src, dst)
    page_copy(big[1::2, ::2], src, dst, backend="triton")
    assert torch.equal(big, expected)


@pytest.mark.parametrize("op", [page_copy, page_move])
def test_page_copy_kernel_reads_strided_page_pairs(op):
    """``pairs[:, 0]`` and ``pairs[:, 1]`` are strided views of one [num_pairs, 2] tensor."""
    gen = torch.Generator().manual_seed(2)
    pool = torch.randn(2, 10, 2, 4, 2, 16, generator=gen)
    pairs = torch.tensor([[0, 5], [2, 7], [3, 9]])
    src, dst = pairs[:, 0], pairs[:, 1]
    assert not src.is_contiguous()
    expected = pool.clone()
    page_copy_reference(expected, src.contiguous(), dst.contiguous())
    op(pool, src, dst, backend="triton")
    assert torch.equal(pool, expected)
