"""Named exceptions of the retrieval package. Each is raised before any index state changes.

Ids: ``InvalidIds`` for an id that is not a non-negative int64 (or a count that does not match),
``DuplicateIds`` for one repeated within a call or already present, ``UnknownIds`` for one not in
the index; the same bad id raises the same class in every index, the pipeline and fusion
(:mod:`llmds_torch.retrieval.ids` holds the checks).
"""

from llmds_torch.errors import LLMDSError


class DimensionMismatch(LLMDSError, ValueError):
    """Vectors or queries whose last dimension is not the index's ``dim`` (or of the wrong rank)."""


class NonFiniteVectors(LLMDSError, ValueError):
    """Vectors or queries containing NaN or infinity (or zero vectors where cosine needs a norm)."""


class InvalidIds(LLMDSError, ValueError):
    """Ids that are not non-negative integers within int64 (bools, floats, negatives, too large), or
    whose count does not match the vectors / documents they label."""


class DuplicateIds(InvalidIds):
    """Ids repeated within one call, or already present in the index."""


class UnknownIds(InvalidIds, KeyError):
    """Ids that are not in the index (never added, or already deleted)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown ids"


class EmptyIndex(LLMDSError, ValueError):
    """A search on an index that holds no live points."""


class InvalidSearchParameter(LLMDSError, ValueError):
    """A ``k`` or ``ef`` outside the allowed range (e.g. ``k`` larger than the index)."""


class CorruptIndexFile(LLMDSError, ValueError):
    """A saved file that is truncated, altered, of another kind, or of an unknown format version."""


class CorruptVarint(LLMDSError, ValueError):
    """Bytes that are not a valid LEB128 varint stream (truncated, overlong, or over 64 bits)."""


class UnsortedIds(LLMDSError, ValueError):
    """Ids given to delta encoding that are not sorted (non-decreasing), or duplicate postings."""


class InvalidDocument(LLMDSError, TypeError):
    """A document that is neither a string nor a list of strings."""


class InvalidQuery(LLMDSError, TypeError):
    """A query that is neither a string nor a list of strings."""


class InvalidFusionInput(LLMDSError, ValueError):
    """Fusion inputs with NaN or infinite weights or scores, or ids and scores of different lengths
    (bad ids themselves raise the id errors above)."""


class SketchMismatch(LLMDSError, ValueError):
    """Two Count-Min sketches that differ in width, depth or seed cannot be merged."""


class SketchOverflow(LLMDSError, OverflowError):
    """An update or merge that would take a Count-Min sketch's total past ``2**63 - 1``."""


__all__ = [
    "DimensionMismatch",
    "NonFiniteVectors",
    "InvalidIds",
    "DuplicateIds",
    "UnknownIds",
    "EmptyIndex",
    "InvalidSearchParameter",
    "CorruptIndexFile",
    "CorruptVarint",
    "UnsortedIds",
    "InvalidDocument",
    "InvalidQuery",
    "InvalidFusionInput",
    "SketchMismatch",
    "SketchOverflow",
]
