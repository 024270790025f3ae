"""Named exceptions shared across the library. Each is raised before any state changes.

This module imports nothing, so every layer may use it. Errors of one part live beside it
(``llmds_torch.sched.errors``, ``llmds_torch.retrieval.errors``) and derive from ``LLMDSError``;
the kernels, which never import ``llmds_torch``, raise ``llmds_torch.kernels.KernelInputError``.
"""


class LLMDSError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(LLMDSError, ValueError):
    """A configuration value makes no sense; the message says what is allowed."""


class OutOfPages(LLMDSError, RuntimeError):
    """Not enough free or evictable pages; nothing was allocated."""


class UnknownSequence(LLMDSError, KeyError):
    """A sequence id that was never attached, or was already detached."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown sequence"


class InvalidTokenIds(LLMDSError, ValueError):
    """Token ids that are not non-negative integers within int32."""


class ContextWindowExceeded(LLMDSError, ValueError):
    """A sequence would grow past the allowed context length."""


class BudgetExceeded(LLMDSError, ValueError):
    """A request that can never fit the token budget."""


class RequestTooLarge(BudgetExceeded):
    """A request that can never run: longer than the context window, or needing more pages than the
    whole cache has. Raised by the scheduler and the generation engine alike."""


__all__ = [
    "LLMDSError",
    "ConfigError",
    "OutOfPages",
    "UnknownSequence",
    "InvalidTokenIds",
    "ContextWindowExceeded",
    "BudgetExceeded",
    "RequestTooLarge",
]
