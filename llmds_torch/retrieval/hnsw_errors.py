"""Named exceptions of the HNSW index. Each is raised before any index state changes.

Every class derives from :class:`llmds_torch.errors.LLMDSError` and from the builtin that fits, so
callers may catch either. A corrupt saved file raises the persistence module's error.
"""

from llmds_torch.errors import LLMDSError


class DimensionMismatch(LLMDSError, ValueError):
    """Vectors or queries of the wrong rank, or whose last dimension is not the index's ``dim``."""


class NonFiniteVectors(LLMDSError, ValueError):
    """Vectors or queries holding NaN or infinity (or, for cosine, a zero vector that has no direction)."""


class DuplicateIds(LLMDSError, ValueError):
    """Ids repeated within one add, or already present in the index."""


class UnknownIds(LLMDSError, KeyError):
    """Ids that are not in the index (never added, or already deleted)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown ids"


class InvalidIds(LLMDSError, ValueError):
    """Ids that are not non-negative integers, or whose count does not match the vectors."""


class EmptyIndex(LLMDSError, ValueError):
    """A search on an index that holds no live points."""


class InvalidSearchParameter(LLMDSError, ValueError):
    """A ``k`` or ``ef`` outside the allowed range (e.g. ``k`` larger than the index)."""


__all__ = [
    "DimensionMismatch",
    "NonFiniteVectors",
    "DuplicateIds",
    "UnknownIds",
    "InvalidIds",
    "EmptyIndex",
    "InvalidSearchParameter",
]
