"""page_move: relocate pages for compaction, with the page_copy kernel.

Every destination must be distinct and none may also be a source in the same call, so all the
copies of one call can run in parallel without a program reading a page another one writes.
A compaction plan whose moves chain (``a -> b`` while ``b -> c``) is issued as several calls.
"""

import torch

from .page_copy import check_page_pairs, launch_page_copy
from .validation import check_disjoint


def page_move(pool: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor, *,
              backend: str = "auto", validate_indices: bool = True) -> None:
    """Move page ``src_pages[i]`` to page ``dst_pages[i]`` in every layer, in one launch. In place;
    the source pages keep their contents (the caller frees them).

    Parameters
    ----------
    pool : ``[num_layers, num_pages, 2, page_size, num_kv_heads, head_dim]``, fp16/bf16/fp32;
        the dims after ``num_pages`` must be contiguous
    src_pages, dst_pages : int64 ``[num_pairs]`` in ``[0, num_pages)``; ``dst_pages`` distinct and
        disjoint from ``src_pages``
    backend : ``"auto"``, ``"triton"`` or ``"torch"``
    validate_indices : check ranges, distinctness and disjointness (a device sync)

    Raises
    ------
    KernelInputError
        on a wrong layout, dtype, device or page index, or a destination that is also a source,
        before anything is moved.
    """
    check_page_pairs(pool, src_pages, dst_pages, validate_indices=validate_indices)
    if validate_indices:
        check_disjoint("src_pages", src_pages, "dst_pages", dst_pages)
    launch_page_copy(pool, src_pages, dst_pages, backend)


__all__ = ["page_move"]
