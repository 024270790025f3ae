"""Shared input checks for kernel launchers: shapes, dtypes, devices, index ranges."""

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
    lo, hi = int(idx.min()), int(idx.max())
    if hi >= upper or (lo < 0 and not allow_negative):
        raise KernelInputError(f"{name} holds values in [{lo}, {hi}]; allowed: 0 <= value < {upper}"
                               + (" (or negative to skip)" if allow_negative else ""))
