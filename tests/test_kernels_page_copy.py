"""page_copy and page_move against a plain loop over layers and pairs, and their input checks."""

import pytest
import torch

from llmds_torch.kernels import KernelInputError
from llmds_torch.kernels.page_copy import page_copy
from llmds_torch.kernels.page_move import page_move

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def copy_loop(pool, src_pages, dst_pages):
    """Oracle: every source read from a snapshot, so the result does not depend on order."""
    snapshot = pool.clone()
    for layer in range(pool.shape[0]):
        for src, dst in zip(src_pages.tolist(), dst_pages.tolist()):
            pool[layer, dst] = snapshot[layer, src]


def random_pool(num_layers, num_pages, page_size, num_kv_heads, head_dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (num_layers, num_pages, 2, page_size, num_kv_heads, head_dim)
    return torch.randn(shape, generator=gen).to(dtype).to(device)


def pages(values, device):
    return torch.tensor(values, dtype=torch.int64, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", [page_copy, page_move])
@pytest.mark.parametrize("page_size,head_dim", [(1, 16), (4, 80), (16, 64)])
def test_copies_every_layer_like_the_loop(device, dtype, op, page_size, head_dim):
    pool = random_pool(3, 10, page_size, 2, head_dim, dtype, device)
    src, dst = pages([7, 1, 2, 1], device), pages([0, 9, 4, 5], device)   # a source may repeat
    expected = pool.cpu().clone()
    copy_loop(expected, src.cpu(), dst.cpu())
    op(pool, src, dst)
    assert torch.equal(pool.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_copy_in_a_pool_view_with_strided_layers_and_pages(device):
    big = random_pool(4, 12, 4, 2, 16, torch.float32, device)
    view = big[::2, 1::2]                       # layers 0, 2; pages 1, 3, 5, ...
    expected = big.cpu().clone()
    copy_loop(expected[::2, 1::2], pages([0, 2], "cpu"), pages([5, 4], "cpu"))
    page_copy(view, pages([0, 2], device), pages([5, 4], device))
    assert torch.equal(big.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_no_pairs_is_a_no_op(device):
    pool = random_pool(2, 4, 4, 2, 16, torch.float32, device)
    before = pool.clone()
    page_copy(pool, pages([], device), pages([], device))
    page_move(pool, pages([], device), pages([], device))
    assert torch.equal(pool, before)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_torch_on_cuda(dtype):
    pool = random_pool(4, 128, 16, 8, 128, dtype, "cuda")
    src = torch.arange(0, 64, device="cuda")
    dst = torch.randperm(64, device="cuda") + 64
    expected = pool.clone()
    page_move(expected, src, dst, backend="torch")
    page_move(pool, src, dst, backend="triton")
    assert torch.equal(pool, expected)


def _bad_copy_inputs():
    pool = random_pool(2, 6, 4, 2, 16, torch.float32, "cpu")
    src, dst = pages([0, 1], "cpu"), pages([2, 3], "cpu")
    return [
        ("dst_pages must hold distinct", (pool, src, pages([2, 2], "cpu"))),
        ("src_pages holds values in \\[0, 6\\]", (pool, pages([0, 6], "cpu"), dst)),
        ("dst_pages holds values in \\[-1, 3\\]", (pool, src, pages([-1, 3], "cpu"))),
        ("dst_pages must have shape", (pool, src, pages([2], "cpu"))),
        ("src_pages has dtype", (pool, src.int(), dst)),
        ("dim 2 holds K and V", (pool[:, :, :1], src, dst)),
        ("must be contiguous from dim 2", (pool.transpose(4, 5), src, dst)),
        ("pool has dtype", (pool.double(), src, dst)),
        ("expected cpu", (pool, src, dst.to("meta"))),
    ]


@pytest.mark.parametrize("op", [page_copy, page_move])
@pytest.mark.parametrize("message,args", _bad_copy_inputs(), ids=[m for m, _ in _bad_copy_inputs()])
def test_bad_input_is_rejected_before_copying(op, message, args):
    pool = args[0]
    before = pool.clone()
    with pytest.raises(KernelInputError, match=message):
        op(*args)
    assert torch.equal(pool, before)


def test_page_move_rejects_a_destination_that_is_also_a_source():
    pool = random_pool(2, 6, 4, 2, 16, torch.float32, "cpu")
    before = pool.clone()
    with pytest.raises(KernelInputError, match="3 is in both"):
        page_move(pool, pages([1, 3], "cpu"), pages([3, 4], "cpu"))
    assert torch.equal(pool, before)


def test_torch_page_copy_reads_every_source_before_writing():
    # a page both read and written in one call: the torch backend reads all sources first
    # (the Triton backend gives no order; page_move rejects such calls)
    pool = random_pool(2, 6, 4, 2, 16, torch.float32, "cpu")
    src, dst = pages([1, 3, 4], "cpu"), pages([3, 4, 0], "cpu")
    expected = pool.clone()
    copy_loop(expected, src, dst)
    page_copy(pool, src, dst, backend="torch")
    assert torch.equal(pool, expected)
