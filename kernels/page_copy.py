"""page_copy: copy whole pages, in every layer of the pool, in one launch (copy-on-write).

The grid is ``(num_pairs, num_layers, chunks per page)``: each program copies ``BLOCK`` contiguous
elements of one page of one layer. A page of one layer (``[2, page_size, num_kv_heads, head_dim]``) is
one contiguous run of memory, so the copy is a flat, vectorizable block move.
"""

import torch

from ._triton import tl, triton
from .reference import page_copy_reference
from .validation import (KV_DTYPES, check_distinct, check_index_range, check_inner_contiguous,
                         check_tensor, KernelInputError)
from . import launch_device, resolve_backend

MAX_BLOCK = 4096


@triton.jit
def _page_copy_kernel(
    pool_ptr, src_pages_ptr, dst_pages_ptr,
    stride_pool_layer, stride_pool_page,
    PAGE_NUMEL: tl.constexpr, BLOCK: tl.constexpr,
):
    pair = tl.program_id(0).to(tl.int64)
    layer = tl.program_id(1).to(tl.int64)
    chunk = tl.program_id(2).to(tl.int64)
    src_page = tl.load(src_pages_ptr + pair)
    dst_page = tl.load(dst_pages_ptr + pair)

    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PAGE_NUMEL
    layer_base = pool_ptr + layer * stride_pool_layer
    values = tl.load(layer_base + src_page * stride_pool_page + offs, mask=mask)
    tl.store(layer_base + dst_page * stride_pool_page + offs, values, mask=mask)


def check_page_pairs(pool: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor, *,
                     validate_indices: bool) -> None:
    """The checks page_copy and page_move share: pool layout, index dtypes, ranges, distinct dsts."""
    check_tensor("pool", pool, ndim=6, dtypes=KV_DTYPES)
    if pool.shape[2] != 2:
        raise KernelInputError("pool must be [num_layers, num_pages, 2, page_size, num_kv_heads, head_dim] "
                               f"(dim 2 holds K and V), got shape {tuple(pool.shape)}")
    check_inner_contiguous("pool", pool, 2)
    check_tensor("src_pages", src_pages, ndim=1, dtypes=(torch.int64,), device=pool.device)
    check_tensor("dst_pages", dst_pages, ndim=1, dtypes=(torch.int64,), device=pool.device,
                 shape=(src_pages.shape[0],))
    if validate_indices:
        check_index_range("src_pages", src_pages, pool.shape[1])
        check_index_range("dst_pages", dst_pages, pool.shape[1])
        check_distinct("dst_pages", dst_pages)


def launch_page_copy(pool: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor, backend: str) -> None:
    """Copy already-validated page pairs with the chosen backend (shared by page_copy and page_move)."""
    num_pairs, num_layers = src_pages.shape[0], pool.shape[0]
    if num_pairs == 0 or num_layers == 0:
        return
    if resolve_backend(backend, pool.device) == "torch":
        page_copy_reference(pool, src_pages, dst_pages)
        return
    page_numel = pool[0, 0].numel()
    block = min(triton.next_power_of_2(page_numel), MAX_BLOCK)
    grid = (num_pairs, num_layers, triton.cdiv(page_numel, block))
    if grid[1] > 65535 or grid[2] > 65535:
        raise KernelInputError(f"pool too large for one launch: {num_layers} layers x {grid[2]} chunks per page "
                               "(each at most 65535)")
    with launch_device(pool.device):
        _page_copy_kernel[grid](
            pool, src_pages.contiguous(), dst_pages.contiguous(),   # the kernel reads pair i at ptr + i
            pool.stride(0), pool.stride(1),
            PAGE_NUMEL=page_numel, BLOCK=block,
        )


def page_copy(pool: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor, *,
              backend: str = "auto", validate_indices: bool = True) -> None:
    """Copy page ``src_pages[i]`` onto page ``dst_pages[i]`` in every layer, in one launch. In place.

    Parameters
    ----------
    pool : ``[num_layers, num_pages, 2, page_size, num_kv_heads, head_dim]``, fp16/bf16/fp32;
        layers and pages may have any strides, the dims after them must be contiguous
    src_pages, dst_pages : int64 ``[num_pairs]`` in ``[0, num_pages)``, any stride; ``dst_pages`` distinct.
        A page that is both a source and a destination in one call is read and written by
        concurrent Triton programs in no set order (the torch backend reads every source first);
        use ``page_move``, which rejects such calls, when it can happen.
    backend : ``"auto"``, ``"triton"`` or ``"torch"``
    validate_indices : check ranges and distinctness (a device sync); False only when guaranteed

    Raises
    ------
    KernelInputError
        on a wrong layout, dtype, device or page index, before anything is copied.
    """
    check_page_pairs(pool, src_pages, dst_pages, validate_indices=validate_indices)
    launch_page_copy(pool, src_pages, dst_pages, backend)


__all__ = ["page_copy", "check_page_pairs", "launch_page_copy"]
