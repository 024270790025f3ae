"""The HNSW index's one error that the shared ``llmds_torch.retrieval.errors`` does not define.

The others HNSW raises (``DimensionMismatch``, ``NonFiniteVectors``, ``DuplicateIds``,
``UnknownIds``, ``EmptyIndex``, ``InvalidSearchParameter``, ``CorruptIndexFile``) live there.
"""

from llmds_torch.errors import LLMDSError


class InvalidIds(LLMDSError, ValueError):
    """Ids that are not non-negative integers, or whose count does not match the vectors."""


__all__ = ["InvalidIds"]
