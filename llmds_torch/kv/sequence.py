"""One sequence's view of the cache: its tokens, its pages, and how far its KV is written."""

import sys
from array import array
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from llmds_torch.errors import InvalidTokenIds
from llmds_torch.kv.block_tables import BlockTables

INT32_MAX = 2**31 - 1


@dataclass(slots=True, eq=False)
class Sequence:
    """Bookkeeping of one attached sequence (no tensors).

    ``pages[i]`` holds positions ``[i * page_size, (i + 1) * page_size)``; the same ids sit in row
    ``row`` of the manager's block tables, which also hold the token counts. Positions below
    ``num_written`` have KV in every layer; ``[num_written, len(tokens))`` are reserved, pending.
    ``keys[i]`` is the prefix key of full page ``i``, known for every full page of the reserved
    tokens (hashed once, when the page fills); the first ``num_published`` are in the prefix index
    (or were offered to it while another page already held the key).
    """

    seq_id: int
    tokens: array  # int32 ("i"): freed in one piece, built from the prompt's bytes without Python ints
    pages: list[int]
    salt_block: bytes
    tables: BlockTables
    row: int
    num_cached: int = 0
    keys: list[bytes] = field(default_factory=list)
    num_published: int = 0
    prompt_bytes: bytes = b""  # the prompt as little-endian int32, kept for publishing its pages

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_written(self) -> int:
        return int(self.tables.num_written[self.row])

    @num_written.setter
    def num_written(self, value: int) -> None:
        self.tables.num_written[self.row] = value


def token_array(token_bytes: bytes) -> array:
    """An int32 ``array`` of token ids from their little-endian int32 bytes."""
    tokens = array("i")
    tokens.frombytes(token_bytes)
    if sys.byteorder != "little":
        tokens.byteswap()
    return tokens


def le_bytes(tokens: array) -> bytes:
    """Tokens of an int32 ``array`` as little-endian int32 bytes."""
    if sys.byteorder == "little":
        return tokens.tobytes()
    swapped = array("i", tokens)
    swapped.byteswap()
    return swapped.tobytes()


def validate_token_ids(token_ids, *, allow_empty: bool = False) -> list[int]:
    """Check that ``token_ids`` (list, tuple, numpy array or torch tensor of integers) are
    non-negative and within int32; return them as a list of Python ints."""
    arr = validate_token_array(token_ids, allow_empty=allow_empty)
    return arr.tolist() if arr.dtype != object else [int(t) for t in arr]


def validate_token_array(token_ids, *, allow_empty: bool = False) -> np.ndarray:
    """``validate_token_ids``, returning the checked 1-D integer array."""
    if hasattr(token_ids, "detach"):  # torch tensor
        token_ids = token_ids.detach().cpu().numpy()
    if isinstance(token_ids, (str, bytes)) or np.isscalar(token_ids):
        raise InvalidTokenIds(f"token_ids must be a sequence of integers, got {type(token_ids).__name__}")
    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise InvalidTokenIds(f"token_ids must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        if allow_empty:
            return np.zeros(0, dtype=np.int64)
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
    return arr


def int32_bytes(token_ids) -> bytes:
    """``validate_token_array``'s check, returning the tokens as little-endian int32 bytes. A list
    that numpy reads as int64 (Python ints, numpy integers, int subclasses, ints mixed with bools:
    what the full check accepts) is range-checked with one reduction: viewed as uint64, a negative
    value is above ``INT32_MAX``."""
    if type(token_ids) is list:
        arr = np.asarray(token_ids)
        if arr.dtype == np.int64 and arr.ndim == 1 and arr.size and arr.view(np.uint64).max() <= INT32_MAX:
            return arr.astype("<i4").tobytes()
    return validate_token_array(token_ids).astype("<i4").tobytes()


def _in_range(tokens, *, allow_empty: bool = False) -> list[int]:
    """``validate_token_ids`` of Python ints (checked by the caller): one C conversion to int32,
    which refuses values beyond int32, and a minimum; the full check only to word an error."""
    try:
        packed = array("i", tokens)
    except OverflowError:
        packed = None
    if packed is None or not packed or np.frombuffer(packed, dtype=np.int32).min() < 0:
        return validate_token_ids(tokens, allow_empty=allow_empty)
    return tokens if type(tokens) is list else list(tokens)


def _is_token(t) -> bool:
    return isinstance(t, (int, np.integer)) and not isinstance(t, bool)


def validate_token_batch(token_ids) -> tuple[list[int], list[int] | None]:
    """Check the tokens of a batch once, whatever their form: ``token_ids[i]`` is an int or a
    sequence of ints for sequence ``i``; a 1-D array or tensor holds one token per sequence, a 2-D
    one a row per sequence.

    Returns
    -------
    flat : list[int]
        Every token, sequence after sequence.
    counts : list[int] | None
        Tokens per sequence; None when each sequence gets exactly one.
    """
    if hasattr(token_ids, "detach"):  # torch tensor
        token_ids = token_ids.detach().cpu().numpy()
    if isinstance(token_ids, np.ndarray) and token_ids.dtype != object:
        if token_ids.ndim == 1:
            return validate_token_ids(token_ids, allow_empty=True), None
        if token_ids.ndim != 2 or token_ids.shape[1] == 0:
            raise InvalidTokenIds(f"a batch of token ids must be 1-D (one each) or 2-D (a row each) with at "
                                  f"least one token per sequence, got shape {token_ids.shape}")
        return validate_token_ids(token_ids.reshape(-1), allow_empty=True), [token_ids.shape[1]] * token_ids.shape[0]
    types = set(map(type, token_ids))
    if types <= {int}:
        return _in_range(token_ids, allow_empty=True), None
    if all(_is_token(t) for t in token_ids):
        return validate_token_ids(token_ids, allow_empty=True), None
    if types <= {list, tuple}:
        try:
            flat = [t for (t,) in token_ids]  # one token each, the common decode form
        except ValueError:
            flat = None
        if flat is not None and set(map(type, flat)) <= {int}:
            return _in_range(flat), None
        counts = list(map(len, token_ids))
        if 0 in counts:
            raise InvalidTokenIds("token_ids is empty; at least one token is required")
        flat = list(chain.from_iterable(token_ids))
        if set(map(type, flat)) <= {int}:
            return _in_range(flat), counts
        if not all(_is_token(t) for t in flat):
            raise InvalidTokenIds("token_ids must all be integers")
        return validate_token_ids(flat), counts
    lists = [validate_token_ids([t] if _is_token(t) else t) for t in token_ids]
    return [t for tokens in lists for t in tokens], [len(t) for t in lists]
