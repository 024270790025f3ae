"""Named exceptions of the scheduler package. Each is raised before any state changes."""

from llmds_torch.errors import LLMDSError, RequestTooLarge  # RequestTooLarge: re-exported


class InvalidPriority(LLMDSError, ValueError):
    """A priority that is NaN (or not a real number); priorities must be comparable floats."""


class KeyAlreadyPresent(LLMDSError, KeyError):
    """``push`` of a key the heap already holds; use ``update`` to change its priority."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "key already present"


class KeyNotFound(LLMDSError, KeyError):
    """``update`` / ``remove`` / ``priority`` of a key the heap does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "key not found"


class InvalidRequest(LLMDSError, ValueError):
    """A request with a negative or NaN length, priority, deadline or SLO, or bad token ids."""


class RequestRefused(LLMDSError, RuntimeError):
    """Admission control refused a request for now.

    Attributes
    ----------
    reason : str
        A short machine-readable reason, e.g. ``"request_rate"``, ``"token_rate"``,
        ``"queued_requests"``, ``"queued_tokens"``, ``"tenant_request_rate"``.
    retry_after : float
        Seconds after which the same request may be admitted (``math.inf`` when it never can).
    """

    def __init__(self, message: str, *, reason: str, retry_after: float):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class UnknownRequest(LLMDSError, KeyError):
    """A request id the scheduler does not know, or that is not in the batch being completed."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown request"


class SchedulerStateError(LLMDSError, RuntimeError):
    """A call out of order, e.g. ``get_batch`` while the previous batch is not completed."""


class InvalidStepResult(LLMDSError, ValueError):
    """``complete_batch`` results that do not match the batch (missing, extra, or malformed)."""


class NonMonotonicTime(LLMDSError, ValueError):
    """A ``now`` earlier than one already seen; clocks given to the scheduler must not go back."""


class TraceFileNotFound(LLMDSError, FileNotFoundError):
    """A trace file path that does not exist."""


class MalformedTrace(LLMDSError, ValueError):
    """A trace file whose header or rows cannot be parsed; the message names the line."""


__all__ = [
    "InvalidPriority",
    "KeyAlreadyPresent",
    "KeyNotFound",
    "InvalidRequest",
    "RequestRefused",
    "RequestTooLarge",
    "UnknownRequest",
    "SchedulerStateError",
    "InvalidStepResult",
    "NonMonotonicTime",
    "TraceFileNotFound",
    "MalformedTrace",
]
