"""One sequence's view of the cache: its tokens, its pages, and how far its KV is written."""

from dataclasses import dataclass, field

import numpy as np

from llmds_torch.errors import InvalidTokenIds

INT32_MAX = 2**31 - 1


@dataclass(slots=True)
class Sequence:
    """Bookkeeping of one attached sequence (no tensors).

    ``pages[i]`` holds positions ``[i * page_size, (i + 1) * page_size)``. Positions below
    ``num_written`` have KV in every layer; ``[num_written, len(tokens))`` are reserved, pending.
    ``keys[i]`` is the prefix key of full page ``i``, known for every full page of the reserved
    tokens (hashed once, when the page fills); the first ``num_published`` are in the prefix index
    (or were offered to it while another page already held the key).
    """

    seq_id: int
    tokens: list[int]
    pages: list[int]
    salt_block: bytes
    num_written: int = 0
    num_cached: int = 0
    keys: list[bytes] = field(default_factory=list)
    num_published: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def validate_token_ids(token_ids, *, allow_empty: bool = False) -> list[int]:
    """Check that ``token_ids`` (list, tuple, numpy array or torch tensor of integers) are
    non-negative and within int32; return them as a list of Python ints."""
    if hasattr(token_ids, "detach"):  # torch tensor
        token_ids = token_ids.detach().cpu().numpy()
    if isinstance(token_ids, (str, bytes)) or np.isscalar(token_ids):
        raise InvalidTokenIds(f"token_ids must be a sequence of integers, got {type(token_ids).__name__}")
    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise InvalidTokenIds(f"token_ids must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        if allow_empty:
            return []
        raise InvalidTokenIds("token_ids is empty; at least one token is required")
    if arr.dtype == object:
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in arr):
            raise InvalidTokenIds("token_ids must all be integers")
        lo, hi = min(arr), max(arr)
    elif arr.dtype.kind in "iu":
        lo, hi = arr.min(), arr.max()
    else:
        raise InvalidTokenIds(f"token_ids must be integers, got dtype {arr.dtype}")
    if lo < 0 or hi > INT32_MAX:
        raise InvalidTokenIds(f"token ids must lie in [0, {INT32_MAX}] (int32); got values in [{lo}, {hi}]")
    return arr.tolist() if arr.dtype != object else [int(t) for t in arr]
