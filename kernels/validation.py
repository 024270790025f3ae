"""Shared input checks for kernel launchers: shapes, dtypes, devices, strides, index ranges.

Checks that read tensor values (``check_index_range``, ``check_distinct``, ``check_disjoint``,
``check_block_table``, ``check_query_start_loc``) copy a few numbers to the host, which waits for the
device; launchers let a caller that already guarantees them skip them with ``validate_indices=False``.
"""

import math
import numbers
from collections.abc import Sequence

import torch

KV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelInputError(ValueError):
    """A tensor handed to a kernel has the wrong shape, dtype, device or values."""


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes: Sequence[torch.dtype] | None = None,
                 device: torch.device | None = None, shape: Sequence[int | None] | None = None) -> None:
    """Raise ``KernelInputError`` unless ``t`` is a tensor with the given properties.

    ``shape`` entries that are ``None`` match any size.
    """
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise KernelInputError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise KernelInputError(f"{name} has dtype {t.dtype}; allowed: {allowed}")
    if device is not None and t.device != device:
        raise KernelInputError(f"{name} is on {t.device}, expected {device} (all tensors on one device)")
    if shape is not None:
        if len(shape) != t.dim() or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise KernelInputError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def check_index_range(name: str, idx: torch.Tensor, upper: int, *, allow_negative: bool = False) -> None:
    """Raise unless every entry of ``idx`` lies in ``[0, upper)`` (or is negative, when allowed:
    negative entries mean "skip")."""
    if idx.numel() == 0:
        return
    lo, hi = (int(x) for x in torch.stack(torch.aminmax(idx)).tolist())
    if hi >= upper or (lo < 0 and not allow_negative):
        raise KernelInputError(f"{name} holds values in [{lo}, {hi}]; allowed: 0 <= value < {upper}"
                               + (" (or negative to skip)" if allow_negative else ""))


def check_kv_layer(name: str, t) -> tuple[int, int, int, int]:
    """Check one layer of a KV pool, ``[num_pages, 2, page_size, num_kv_heads, head_dim]``, and
    return ``(num_pages, page_size, num_kv_heads, head_dim)``. Any strides are accepted."""
    check_tensor(name, t, ndim=5, dtypes=KV_DTYPES)
    if t.shape[1] != 2:
        raise KernelInputError(f"{name} must be [num_pages, 2, page_size, num_kv_heads, head_dim] "
                               f"(dim 1 holds K and V), got shape {tuple(t.shape)}")
    num_pages, _, page_size, num_kv_heads, head_dim = t.shape
    if min(num_pages, page_size, num_kv_heads, head_dim) == 0:
        raise KernelInputError(f"{name} has an empty dimension: shape {tuple(t.shape)}")
    return num_pages, page_size, num_kv_heads, head_dim


def check_inner_contiguous(name: str, t: torch.Tensor, first_dim: int) -> None:
    """Raise unless dims ``first_dim`` and after of ``t`` are laid out row-major without gaps
    (so each index of the leading dims names one contiguous block)."""
    expected = 1
    for size, stride in reversed(list(zip(t.shape[first_dim:], t.stride()[first_dim:]))):
        if size != 1 and stride != expected:
            raise KernelInputError(
                f"{name} must be contiguous from dim {first_dim} on (strides {t.stride()} for shape "
                f"{tuple(t.shape)}); only the leading {first_dim} dims may have free strides")
        expected *= size


def check_distinct(name: str, idx: torch.Tensor, *, ignore_negative: bool = False) -> None:
    """Raise if a value occurs twice in the 1-D ``idx`` (negative values are not compared when
    ``ignore_negative``)."""
    values = idx[idx >= 0] if ignore_negative else idx
    if values.numel() < 2:
        return
    ordered = torch.sort(values).values
    repeats = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeats.numel():
        raise KernelInputError(f"{name} must hold distinct values; {int(repeats[0])} occurs more than once")


def check_disjoint(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise if some value occurs in both 1-D tensors ``a`` and ``b``."""
    if a.numel() == 0 or b.numel() == 0:
        return
    shared = a[torch.isin(a, b)]
    if shared.numel():
        raise KernelInputError(f"{name_a} and {name_b} must not share values; {int(shared[0])} is in both")


def check_block_table(block_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int,
                      num_pages: int) -> None:
    """Check ``seq_lens`` ``[batch]`` against ``block_table`` ``[batch, max_pages]``.

    Every length must lie in ``[1, max_pages * page_size]``, and each row's first
    ``ceil(seq_len / page_size)`` entries must name pages in ``[0, num_pages)``; later entries
    (padding) are never read and may hold anything.
    """
    if seq_lens.numel() == 0:
        return
    max_pages = block_table.shape[1]
    lens = seq_lens.to(torch.int64)
    pages_needed = (lens + page_size - 1) // page_size
    used = torch.arange(max_pages, device=block_table.device)[None, :] < pages_needed[:, None]
    bad_page = used & ((block_table < 0) | (block_table >= num_pages))
    lo, hi, num_bad = torch.stack([lens.min(), lens.max(), bad_page.sum()]).tolist()
    if lo < 1 or hi > max_pages * page_size:
        raise KernelInputError(
            f"seq_lens holds values in [{lo}, {hi}]; allowed: 1 <= seq_len <= max_pages * page_size "
            f"= {max_pages} * {page_size} (the pages a block_table row has room for)")
    if num_bad:
        row, col = (int(x) for x in bad_page.nonzero()[0].tolist())
        raise KernelInputError(
            f"block_table[{row}, {col}] = {int(block_table[row, col])} names no page of the pool; "
            f"entries within a sequence's length must lie in [0, {num_pages})")


def check_query_start_loc(query_start_loc: torch.Tensor, seq_lens: torch.Tensor, num_tokens: int) -> int:
    """Check the cumulative query lengths ``[batch + 1]`` and return the longest query length.

    ``query_start_loc`` must start at 0, end at ``num_tokens``, never decrease, and give no
    sequence more new tokens than its ``seq_len``.
    """
    starts = query_start_loc.to(torch.int64)
    query_lens = starts[1:] - starts[:-1]
    first, last = starts[0], starts[-1]
    if query_lens.numel() == 0:
        stats = torch.stack([first, last]).tolist()
        shortest = longest = excess = 0
    else:
        stats = torch.stack([first, last, query_lens.min(), query_lens.max(),
                             (query_lens - seq_lens.to(torch.int64)).max()]).tolist()
        shortest, longest, excess = stats[2:]
    if stats[0] != 0 or stats[1] != num_tokens:
        raise KernelInputError(f"query_start_loc must start at 0 and end at the number of query tokens "
                               f"{num_tokens}; got {stats[0]} ... {stats[1]}")
    if shortest < 0:
        raise KernelInputError("query_start_loc must not decrease (query lengths are >= 0)")
    if excess > 0:
        raise KernelInputError("a sequence has more new tokens (query_start_loc[b+1] - query_start_loc[b]) "
                               "than its seq_len; new tokens are the last tokens of the sequence")
    return int(longest)


def check_attention_options(scale, sliding_window, softcap, head_dim: int) -> tuple[float, int | None, float | None]:
    """Check the attention keyword arguments and return ``(scale, sliding_window, softcap)`` with
    the scale's default (``head_dim ** -0.5``) filled in.

    ``scale`` must be a finite number > 0, ``sliding_window`` an int >= 1 or None, ``softcap`` a
    finite number > 0 or None.
    """
    if scale is None:
        scale = head_dim ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise KernelInputError(f"scale must be a finite number > 0 or None, got {scale!r}")
    if sliding_window is not None and (isinstance(sliding_window, bool) or not isinstance(sliding_window, numbers.Integral)
                                       or sliding_window < 1):
        raise KernelInputError(f"sliding_window must be an int >= 1 or None (a query at position i sees "
                               f"keys i - W < j <= i), got {sliding_window!r}")
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, numbers.Real)
                                or not math.isfinite(softcap) or softcap <= 0):
        raise KernelInputError(f"softcap must be a finite number > 0 or None, got {softcap!r}")
    window = None if sliding_window is None else int(sliding_window)
    return float(scale), window, None if softcap is None else float(softcap)
