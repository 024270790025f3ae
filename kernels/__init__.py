"""Triton kernels for the paged KV cache, one op per file, each with a torch reference in
``reference.py``. This package imports torch and triton only, never ``llmds_torch``.

Backend choice: ``"triton"`` on CUDA tensors, ``"torch"`` (the reference) on CPU tensors, and
Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1`` was set before import.
"""

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
