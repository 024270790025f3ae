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

Backend choice (``backend.py``): ``"triton"`` on CUDA tensors, ``"torch"`` (the reference) on CPU
tensors, and Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1`` was set before import.
Triton is optional: without it every op runs its torch reference.
"""

from .backend import BACKENDS, interpreter_enabled, resolve_backend, triton_available
from ._triton import TritonUnavailable
from .validation import KernelInputError

__all__ = [
    "BACKENDS",
    "interpreter_enabled",
    "resolve_backend",
    "triton_available",
    "KernelInputError",
    "TritonUnavailable",
]
