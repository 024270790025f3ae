"""Triton kernels for the paged KV cache, one op per file, each with a torch reference in
``reference.py``. This package imports torch and triton only, never ``llmds_torch``.

Backend choice: ``"triton"`` on CUDA tensors, ``"torch"`` (the reference) on CPU tensors, and
Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1`` was set before import.
"""

import contextlib
import os

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to ``"triton"`` or ``"torch"`` for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if backend == "triton" and device.type != "cuda" and not interpreter_enabled():
            raise ValueError("backend='triton' needs CUDA tensors or TRITON_INTERPRET=1")
        return backend
    if device.type == "cuda" or interpreter_enabled():
        return "triton"
    return "torch"


def launch_device(device: torch.device):
    """The context every launch runs in: Triton launches on the current CUDA device, not on the
    device of the tensors it is given, so a launch for tensors on ``cuda:1`` must make it current.
    A no-op for CPU tensors (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# Imported after resolve_backend and launch_device are defined: the kernel modules use it.
from .validation import KernelInputError  # noqa: E402
from .kv_write import kv_write  # noqa: E402
from .page_copy import page_copy  # noqa: E402
from .page_move import page_move  # noqa: E402
from .paged_attention import paged_attention_decode, paged_attention_prefill  # noqa: E402
from .warm_up import warm_up  # noqa: E402

__all__ = [
    "BACKENDS",
    "interpreter_enabled",
    "resolve_backend",
    "launch_device",
    "KernelInputError",
    "kv_write",
    "page_copy",
    "page_move",
    "paged_attention_decode",
    "paged_attention_prefill",
    "warm_up",
]
