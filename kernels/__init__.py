"""Triton kernels for the paged KV cache, one op per module, each with a torch reference in
``reference.py``. This package imports torch (and triton where it is installed), never
``llmds_torch``.

Import each op from its module; the package itself holds only what they share:

==========================  ============================================================
``kv_write``                ``llmds_torch.kernels.kv_write.kv_write``
``page_copy``               ``llmds_torch.kernels.page_copy.page_copy``
``page_move``               ``llmds_torch.kernels.page_move.page_move``
``paged_attention_decode``  ``llmds_torch.kernels.paged_attention.paged_attention_decode``
``paged_attention_prefill`` ``llmds_torch.kernels.paged_attention.paged_attention_prefill``
==========================  ============================================================

Backend choice: ``"triton"`` on CUDA tensors, ``"torch"`` (the reference) on CPU tensors, and
Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1`` was set before import. Triton is
optional: where it is not installed, ``"auto"`` always means ``"torch"`` (with one warning when the
tensors are on CUDA: the reference is correct there, but slower).
"""

import contextlib
import os
import warnings

import torch

from ._triton import INSTALL_HINT, TRITON_AVAILABLE, TritonUnavailable
from .validation import KernelInputError

BACKENDS = ("auto", "triton", "torch")
_warned_cuda_without_triton = False


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """True when triton imported; without it every kernel runs its torch reference."""
    return TRITON_AVAILABLE


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to ``"triton"`` or ``"torch"`` for tensors on ``device``.

    Raises
    ------
    ValueError
        for an unknown name, or ``"triton"`` on CPU tensors without the interpreter.
    TritonUnavailable
        for ``"triton"`` where triton is not installed.
    """
    global _warned_cuda_without_triton
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return backend
    wants_triton = device.type == "cuda" or interpreter_enabled()
    if backend == "triton":
        if not wants_triton:
            raise ValueError("backend='triton' needs CUDA tensors or TRITON_INTERPRET=1")
        if not TRITON_AVAILABLE:
            raise TritonUnavailable(f"backend='triton' but triton is not installed: {INSTALL_HINT}")
        return backend
    if wants_triton and TRITON_AVAILABLE:
        return "triton"
    if device.type == "cuda" and not _warned_cuda_without_triton:
        _warned_cuda_without_triton = True
        warnings.warn(f"triton is not installed, so the KV kernels run their torch references on CUDA "
                      f"(correct, slower): {INSTALL_HINT}", RuntimeWarning, stacklevel=2)
    return "torch"


def launch_device(device: torch.device):
    """The context every launch runs in: Triton launches on the current CUDA device, not on the
    device of the tensors it is given, so a launch for tensors on ``cuda:1`` must make it current.
    A no-op for CPU tensors (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


__all__ = [
    "BACKENDS",
    "interpreter_enabled",
    "resolve_backend",
    "triton_available",
    "KernelInputError",
    "TritonUnavailable",
]
