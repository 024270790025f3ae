"""Named exceptions of the KV cache package.

The cache's input errors are shared with the scheduler and the models, so they live in
:mod:`llmds_torch.errors` and are re-exported here: ``OutOfPages``, ``UnknownSequence``,
``InvalidTokenIds``, ``ContextWindowExceeded``. The two below are the cache's own.
"""

from llmds_torch.errors import ContextWindowExceeded, InvalidTokenIds, LLMDSError, OutOfPages, UnknownSequence


class InvariantViolation(LLMDSError, AssertionError):
    """``check_invariants`` found inconsistent bookkeeping (a bug, never bad input)."""


class TransactionError(LLMDSError, RuntimeError):
    """A transaction was nested, or a call is not allowed inside one."""


__all__ = [
    "OutOfPages",
    "UnknownSequence",
    "InvalidTokenIds",
    "ContextWindowExceeded",
    "InvariantViolation",
    "TransactionError",
]
