"""Integer codecs for postings: LEB128 varints, zigzag, delta gaps, and blocked postings.

Everything here works on whole numpy arrays; there is no Python loop per integer. The encoders
loop over the (at most ten) byte positions of a varint; the decoder finds value boundaries with
one comparison and assembles values with ``np.bitwise_or.reduceat``. A numba decoder
(:func:`decode_uvarint_numba`) and the per-value step it uses (:func:`uvarint_at`) serve the
compiled search loops.

LEB128: seven payload bits per byte, least significant group first, the high bit set on every byte
but the last. A uint64 takes one to ten bytes. Decoding refuses truncated streams (last byte has its
continuation bit set), overlong encodings (a multi-byte value whose last byte is zero, or more than
ten bytes), and values over 64 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from llmds_torch.errors import LLMDSError

from .errors import CorruptVarint

MAX_VARINT_BYTES = 10
DEFAULT_BLOCK_SIZE = 128
MAX_BLOCK_SIZE = 65535  # block_count is stored as uint16


class UnsortedIds(LLMDSError, ValueError):
    """Ids given to delta encoding that are not sorted (non-decreasing), or duplicate postings."""


def _as_uint64(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise TypeError(f"{what} must be a 1-D integer array; got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.uint64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers; got dtype {array.dtype}")
    if array.dtype.kind == "i" and array.min() < 0:
        raise ValueError(f"{what} must be non-negative for unsigned varints; use encode_svarint for signed")
    return array.astype(np.uint64)


def uvarint_lengths(values) -> np.ndarray:
    """Bytes each value takes as a LEB128 varint.

    Parameters
    ----------
    values : array of non-negative ints, ``[n]``

    Returns
    -------
    np.ndarray of int64, ``[n]``, each in 1..10.
    """
    values = _as_uint64(values, "values")
    lengths = np.ones(values.shape, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        lengths += values >= np.uint64(1 << (7 * j))
    return lengths


def encode_uvarint(values) -> np.ndarray:
    """Encode unsigned integers as one LEB128 byte stream.

    Parameters
    ----------
    values : array of non-negative ints, ``[n]`` (any integer dtype up to uint64)

    Returns
    -------
    np.ndarray of uint8, ``[sum of uvarint_lengths(values)]``
    """
    values = _as_uint64(values, "values")
    if values.size == 0:
        return np.empty(0, dtype=np.uint8)
    lengths = uvarint_lengths(values)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):
        has_byte = lengths > j
        if not has_byte.any():
            break
        group = (values[has_byte] >> np.uint64(7 * j)) & np.uint64(0x7F)
        continues = (lengths[has_byte] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has_byte] + j] = (group | continues).astype(np.uint8)
    return out


def _as_bytes(data) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    array = np.asarray(data)
    if array.ndim != 1 or array.dtype != np.uint8:
        raise TypeError(f"varint data must be bytes or a 1-D uint8 array; got {array.dtype} {array.shape}")
    return array


def decode_uvarint(data, count: int | None = None) -> np.ndarray:
    """Decode a LEB128 byte stream into unsigned integers.

    Parameters
    ----------
    data : bytes or np.ndarray of uint8, ``[n_bytes]``
    count : int, optional
        How many values the stream must hold; a different number raises.

    Returns
    -------
    np.ndarray of uint64, ``[n_values]``

    Raises
    ------
    CorruptVarint
        Truncated stream, overlong encoding, a value over 64 bits, or a count mismatch.
    """
    data = _as_bytes(data)
    if data.size == 0:
        values = np.empty(0, dtype=np.uint64)
    else:
        is_last = data < 0x80
        if not is_last[-1]:
            raise CorruptVarint("truncated varint: the stream ends on a byte whose continuation bit is set")
        ends = np.flatnonzero(is_last)
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        lengths = ends - starts + 1
        too_long = lengths > MAX_VARINT_BYTES
        if too_long.any():
            at = int(starts[np.argmax(too_long)])
            raise CorruptVarint(f"overlong varint at byte {at}: more than {MAX_VARINT_BYTES} bytes")
        overlong = (lengths > 1) & (data[ends] == 0)
        if overlong.any():
            at = int(starts[np.argmax(overlong)])
            raise CorruptVarint(f"overlong varint at byte {at}: a multi-byte value ends in a zero byte")
        overflow = (lengths == MAX_VARINT_BYTES) & (data[ends] > 1)
        if overflow.any():
            at = int(starts[np.argmax(overflow)])
            raise CorruptVarint(f"varint at byte {at} does not fit in 64 bits")
        value_of_byte = np.repeat(np.arange(ends.size), lengths)
        position = np.arange(data.size) - starts[value_of_byte]
        groups = (data & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
        values = np.bitwise_or.reduceat(groups, starts)
    if count is not None and values.size != count:
        raise CorruptVarint(f"expected {count} varints, the stream holds {values.size}")
    return values


@numba.njit(inline="always")
def uvarint_at(data, pos):
    """Decode one varint of trusted data starting at ``pos``; return ``(value, next_pos)``."""
    value = np.uint64(0)
    shift = np.uint64(0)
    while True:
        byte = np.uint64(data[pos])
        pos += 1
        value |= (byte & np.uint64(0x7F)) << shift
        if byte < np.uint64(0x80):
            return value, pos
        shift += np.uint64(7)


@numba.njit(cache=True)
def _decode_uvarint_checked(data, count, out):
    # Returns 0 on success, else a negative code: -1 truncated, -2 overlong, -3 overflow, -4 count.
    pos = 0
    n = data.shape[0]
    for i in range(count):
        value = np.uint64(0)
        length = 0
        while True:
            if pos >= n:
                return -1 if length > 0 else -4
            byte = data[pos]
            pos += 1
            if length == MAX_VARINT_BYTES - 1 and byte > 1:
                return -3
            value |= np.uint64(byte & 0x7F) << np.uint64(7 * length)
            length += 1
            if byte < 0x80:
                if length > 1 and byte == 0:
                    return -2
                break
        out[i] = value
    return 0 if pos == n else -4


def decode_uvarint_numba(data, count: int) -> np.ndarray:
    """Decode exactly ``count`` varints with a compiled loop; same checks as :func:`decode_uvarint`.

    Parameters
    ----------
    data : bytes or np.ndarray of uint8, ``[n_bytes]``
    count : int

    Returns
    -------
    np.ndarray of uint64, ``[count]``
    """
    data = _as_bytes(data)
    out = np.empty(int(count), dtype=np.uint64)
    code = _decode_uvarint_checked(data, int(count), out)
    if code == -1:
        raise CorruptVarint("truncated varint: the stream ends inside a value")
    if code == -2:
        raise CorruptVarint("overlong varint: a multi-byte value ends in a zero byte")
    if code == -3:
        raise CorruptVarint("varint does not fit in 64 bits")
    if code == -4:
        raise CorruptVarint(f"expected exactly {count} varints in {data.size} bytes")
    return out


def zigzag_encode(values) -> np.ndarray:
    """Map signed int64 to uint64 so small magnitudes stay small: 0, -1, 1, -2 -> 0, 1, 2, 3.

    Parameters
    ----------
    values : array of ints within int64, ``[n]``

    Returns
    -------
    np.ndarray of uint64, ``[n]``
    """
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"zigzag input must be integers; got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError("zigzag input must fit in int64")
    signed = array.astype(np.int64)
    return (signed.astype(np.uint64) << np.uint64(1)) ^ (signed >> np.int64(63)).astype(np.uint64)


def zigzag_decode(values) -> np.ndarray:
    """Inverse of :func:`zigzag_encode`: uint64 ``[n]`` -> int64 ``[n]``."""
    unsigned = np.asarray(values).astype(np.uint64)
    return ((unsigned >> np.uint64(1)) ^ (np.uint64(0) - (unsigned & np.uint64(1)))).view(np.int64)


def encode_svarint(values) -> np.ndarray:
    """Signed varints: zigzag, then LEB128. int64 ``[n]`` -> uint8 ``[n_bytes]``."""
    return encode_uvarint(zigzag_encode(values))


def decode_svarint(data, count: int | None = None) -> np.ndarray:
    """Inverse of :func:`encode_svarint`: uint8 ``[n_bytes]`` -> int64 ``[n]``."""
    return zigzag_decode(decode_uvarint(data, count))


def delta_encode(sorted_ids) -> np.ndarray:
    """Gaps of a non-decreasing id sequence; the first gap is the first id itself.

    Parameters
    ----------
    sorted_ids : array of non-negative ints, ``[n]``, non-decreasing

    Returns
    -------
    np.ndarray of uint64, ``[n]``
    """
    ids = _as_uint64(sorted_ids, "sorted_ids")
    if ids.size > 1 and np.any(ids[1:] < ids[:-1]):
        raise UnsortedIds("delta encoding needs non-decreasing ids")
    gaps = ids.copy()
    gaps[1:] -= ids[:-1]
    return gaps


def delta_decode(gaps) -> np.ndarray:
    """Inverse of :func:`delta_encode`: gaps ``[n]`` -> ids ``[n]`` (uint64)."""
    return np.cumsum(_as_uint64(gaps, "gaps"), dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class BlockedPostings:
    """Postings of many terms in one varint stream, cut into blocks with per-block maxima.

    Within a term, postings are sorted by doc id and cut into blocks of ``block_size``. Each posting
    is two varints, the doc gap then the term frequency. The first gap of a term is its first doc id;
    the first gap of a later block is taken from the previous block's last doc id, which is stored,
    so any block decodes on its own.

    Attributes
    ----------
    data : uint8 ``[n_bytes]``
    term_block_start : int64 ``[n_terms + 1]`` — blocks of term ``t`` are ``term_block_start[t]:[t+1]``
    doc_freq : int64 ``[n_terms]`` — postings per term
    block_byte_start : int64 ``[n_blocks + 1]`` — where each block's bytes start in ``data``
    block_count : uint16 ``[n_blocks]`` — postings per block
    block_last_doc : int32 ``[n_blocks]`` — the largest doc id in each block
    block_max_tf : int32 ``[n_blocks]`` — the largest term frequency in each block
    block_min_doc_length : int32 ``[n_blocks]`` — the shortest document in each block
    block_size : int
    """

    data: np.ndarray
    term_block_start: np.ndarray
    doc_freq: np.ndarray
    block_byte_start: np.ndarray
    block_count: np.ndarray
    block_last_doc: np.ndarray
    block_max_tf: np.ndarray
    block_min_doc_length: np.ndarray
    block_size: int

    @property
    def num_terms(self) -> int:
        return int(self.doc_freq.size)

    @property
    def num_postings(self) -> int:
        return int(self.doc_freq.sum())

    def nbytes(self) -> int:
        """Bytes of the stream plus all block and term metadata."""
        return int(sum(getattr(self, name).nbytes for name in _ARRAY_FIELDS))

    def arrays(self) -> dict:
        """The arrays by field name (for saving)."""
        return {name: getattr(self, name) for name in _ARRAY_FIELDS}


_ARRAY_FIELDS = (
    "data",
    "term_block_start",
    "doc_freq",
    "block_byte_start",
    "block_count",
    "block_last_doc",
    "block_max_tf",
    "block_min_doc_length",
)


def encode_blocked_postings(term_ids, doc_ids, term_freqs, doc_lengths, num_terms: int,
                            block_size: int = DEFAULT_BLOCK_SIZE) -> BlockedPostings:
    """Build :class:`BlockedPostings` from (term, doc, tf) triples in any order.

    Parameters
    ----------
    term_ids : int array ``[n_postings]``, each in ``[0, num_terms)``
    doc_ids : int array ``[n_postings]``, non-negative
    term_freqs : int array ``[n_postings]``, each >= 1
    doc_lengths : int array ``[n_docs]`` indexed by doc id (for the per-block shortest document)
    num_terms : int
    block_size : int

    Raises
    ------
    UnsortedIds
        If a (term, doc) pair repeats.
    """
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be in [1, {MAX_BLOCK_SIZE}]; got {block_size}")
    term_ids = np.asarray(term_ids, dtype=np.int64)
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    term_freqs = np.asarray(term_freqs, dtype=np.int64)
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    if doc_ids.size and doc_ids.max() > np.iinfo(np.int32).max:
        raise ValueError("doc ids must fit in int32")
    if not (term_ids.shape == doc_ids.shape == term_freqs.shape) or term_ids.ndim != 1:
        raise ValueError("term_ids, doc_ids and term_freqs must be 1-D arrays of one length")
    if term_ids.size and (term_ids.min() < 0 or term_ids.max() >= num_terms):
        raise ValueError(f"term ids must lie in [0, {num_terms})")
    if term_freqs.size and term_freqs.min() < 1:
        raise ValueError("term frequencies must be >= 1")
    order = np.lexsort((doc_ids, term_ids))
    term_ids, doc_ids, term_freqs = term_ids[order], doc_ids[order], term_freqs[order]
    if term_ids.size > 1 and np.any((term_ids[1:] == term_ids[:-1]) & (doc_ids[1:] == doc_ids[:-1])):
        raise UnsortedIds("a (term, doc) posting appears twice; sum the frequencies first")

    doc_freq = np.bincount(term_ids, minlength=num_terms).astype(np.int64)
    blocks_per_term = -(-doc_freq // block_size)
    term_block_start = np.zeros(num_terms + 1, dtype=np.int64)
    np.cumsum(blocks_per_term, out=term_block_start[1:])
    term_posting_start = np.zeros(num_terms + 1, dtype=np.int64)
    np.cumsum(doc_freq, out=term_posting_start[1:])
    index_in_term = np.arange(term_ids.size) - term_posting_start[term_ids]

    previous_doc = np.empty_like(doc_ids)
    previous_doc[:1] = 0
    previous_doc[1:] = doc_ids[:-1]
    previous_doc[index_in_term == 0] = 0
    gaps = doc_ids - previous_doc

    interleaved = np.empty(2 * term_ids.size, dtype=np.uint64)
    interleaved[0::2] = gaps
    interleaved[1::2] = term_freqs
    data = encode_uvarint(interleaved)
    posting_bytes = uvarint_lengths(interleaved).reshape(-1, 2).sum(axis=1)

    block_first = np.flatnonzero(index_in_term % block_size == 0)
    posting_byte_start = np.cumsum(posting_bytes) - posting_bytes
    block_byte_start = np.append(posting_byte_start[block_first], data.size).astype(np.int64)
    block_end = np.append(block_first[1:], term_ids.size)
    if block_first.size:
        block_max_tf = np.maximum.reduceat(term_freqs, block_first).astype(np.int32)
        block_min_len = np.minimum.reduceat(doc_lengths[doc_ids], block_first).astype(np.int32)
    else:
        block_max_tf = np.empty(0, dtype=np.int32)
        block_min_len = np.empty(0, dtype=np.int32)
    return BlockedPostings(
        data=data,
        term_block_start=term_block_start,
        doc_freq=doc_freq,
        block_byte_start=block_byte_start,
        block_count=(block_end - block_first).astype(np.uint16),
        block_last_doc=(doc_ids[block_end - 1] if block_first.size else np.empty(0, dtype=np.int64)).astype(np.int32),
        block_max_tf=block_max_tf,
        block_min_doc_length=block_min_len,
        block_size=int(block_size),
    )


def decode_blocked_postings(postings: BlockedPostings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All postings back as (term, doc, tf) arrays, sorted by term then doc.

    Returns
    -------
    term_ids : int64 ``[n_postings]``
    doc_ids : int64 ``[n_postings]``
    term_freqs : int64 ``[n_postings]``
    """
    n_postings = postings.num_postings
    interleaved = decode_uvarint(postings.data, count=2 * n_postings).astype(np.int64)
    gaps, term_freqs = interleaved[0::2], interleaved[1::2]
    term_ids = np.repeat(np.arange(postings.num_terms, dtype=np.int64), postings.doc_freq)
    running = np.cumsum(gaps)
    term_start = np.zeros(postings.num_terms + 1, dtype=np.int64)
    np.cumsum(postings.doc_freq, out=term_start[1:])
    has_postings = postings.doc_freq > 0
    base = np.zeros(postings.num_terms, dtype=np.int64)
    first = term_start[:-1][has_postings]
    base[has_postings] = running[first] - gaps[first]
    doc_ids = running - base[term_ids]
    return term_ids, doc_ids, term_freqs


def postings_from_arrays(arrays: dict, block_size: int) -> BlockedPostings:
    """Rebuild :class:`BlockedPostings` from :meth:`BlockedPostings.arrays` output, checking shapes."""
    missing = [name for name in _ARRAY_FIELDS if name not in arrays]
    if missing:
        raise CorruptVarint(f"postings arrays missing: {missing}")
    postings = BlockedPostings(block_size=int(block_size), **{name: arrays[name] for name in _ARRAY_FIELDS})
    n_blocks = postings.block_count.size
    consistent = (
        postings.term_block_start.size == postings.doc_freq.size + 1
        and postings.block_byte_start.size == n_blocks + 1
        and postings.block_last_doc.size == n_blocks == postings.block_max_tf.size
        and postings.block_min_doc_length.size == n_blocks
        and int(postings.term_block_start[-1]) == n_blocks
        and int(postings.block_byte_start[-1]) == postings.data.size
        and int(postings.block_count.sum()) == postings.num_postings
    )
    if not consistent:
        raise CorruptVarint("postings arrays have inconsistent sizes")
    return postings
