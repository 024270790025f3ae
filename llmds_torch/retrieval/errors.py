"""Named errors of the retrieval package. Each is raised before any state changes.

Every class derives from :class:`llmds_torch.errors.LLMDSError` and from the builtin that fits
(``ValueError``, ``TypeError``, ``KeyError``), so callers may catch either.
"""

from llmds_torch.errors import LLMDSError


class CorruptFile(LLMDSError, ValueError):
    """A saved index or sketch whose magic, version, checksum or layout does not check out."""


class CorruptVarint(LLMDSError, ValueError):
    """Bytes that are not a valid LEB128 varint stream (truncated, overlong, or over 64 bits)."""


class InvalidDocument(LLMDSError, TypeError):
    """A document that is neither a string nor a list of strings."""


class InvalidQuery(LLMDSError, TypeError):
    """A query that is neither a string nor a list of strings (or a vector of the wrong shape)."""


class UnknownDocumentId(LLMDSError, KeyError):
    """A document id that is not in the index (never added, or already deleted)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown document id"


class DuplicateDocumentId(LLMDSError, ValueError):
    """A document id that is already in the index, or repeated within one call."""


class InvalidFusionInput(LLMDSError, ValueError):
    """Fusion inputs with NaN or infinite weights or scores, or mismatched lengths."""


class SketchMismatch(LLMDSError, ValueError):
    """Two Count-Min sketches that differ in width, depth or seed cannot be merged."""


__all__ = [
    "CorruptFile",
    "CorruptVarint",
    "InvalidDocument",
    "InvalidQuery",
    "UnknownDocumentId",
    "DuplicateDocumentId",
    "InvalidFusionInput",
    "SketchMismatch",
]
