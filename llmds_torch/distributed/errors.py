"""Named errors of tensor parallelism."""

from llmds_torch.errors import LLMDSError


class TensorParallelError(LLMDSError, RuntimeError):
    """Base class of the tensor-parallel errors."""


class HeadsNotDivisible(TensorParallelError, ValueError):
    """The world size does not divide the query heads, the KV heads or the MLP width."""


class ConfigMismatch(TensorParallelError):
    """Ranks started with different model or cache configurations (their fingerprints differ)."""


class CollectiveFailed(TensorParallelError):
    """A collective did not complete: a rank died, or none answered within the group's timeout."""


class TensorParallelUnsupported(TensorParallelError, TypeError):
    """The model or cache option has no tensor-parallel form (Hugging Face models, the host tier)."""


__all__ = ["TensorParallelError", "HeadsNotDivisible", "ConfigMismatch", "CollectiveFailed", "TensorParallelUnsupported"]
