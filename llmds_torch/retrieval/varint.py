"""LEB128 varints, zigzag and delta gaps over whole numpy arrays, and three decoders of one format.

LEB128: seven payload bits per byte, least significant group first, the high bit set on every byte
but the last. A uint64 takes one to ten bytes. A stream is corrupt when it is truncated (its last
byte has the continuation bit set), overlong (a multi-byte value whose last byte is zero, or more
than ten bytes) or a value exceeds 64 bits.

The encoders loop over the (at most ten) byte positions of a varint, never over integers. Decoders:

- :func:`decode_uvarint`, vectorised numpy: value boundaries from one comparison, values assembled
  with ``np.bitwise_or.reduceat``; checks the whole stream.
- :func:`varint_at`, compiled, one value of trusted data at a position: what compiled loops over
  stored postings call.
- :func:`uvarint_checked_at`, compiled, one value with every check, reporting a status instead of
  raising; :func:`decode_uvarint_numba` (a whole stream) and the postings validation build on it.
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import CorruptVarint, UnsortedIds

MAX_VARINT_BYTES = 10

# Status of uvarint_checked_at.
VARINT_OK = 0
VARINT_TRUNCATED = -1
VARINT_OVERLONG = -2
VARINT_OVERFLOW = -3
_COUNT_MISMATCH = -4


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
def uvarint_checked_at(data, pos, end):
    """Decode one varint from ``data[pos:end]`` with every check; return ``(status, value, next_pos)``.

    ``status`` is ``VARINT_OK`` or names the fault (``VARINT_TRUNCATED``, ``VARINT_OVERLONG``,
    ``VARINT_OVERFLOW``); ``value`` is uint64 and only meaningful when the status is ``VARINT_OK``.
    """
    value = np.uint64(0)
    for length in range(MAX_VARINT_BYTES):
        if pos >= end:
            return VARINT_TRUNCATED, value, pos
        byte = data[pos]
        pos += 1
        if length == MAX_VARINT_BYTES - 1 and byte > 1:
            return VARINT_OVERFLOW, value, pos
        value |= np.uint64(byte & 0x7F) << np.uint64(7 * length)
        if byte < 0x80:
            if length > 0 and byte == 0:
                return VARINT_OVERLONG, value, pos
            return VARINT_OK, value, pos
    return VARINT_OVERFLOW, value, pos


@numba.njit(cache=True)
def _decode_uvarint_stream(data, count, out):
    # Returns VARINT_OK or the first fault; _COUNT_MISMATCH when the stream holds another number of values.
    pos = 0
    n = data.shape[0]
    for i in range(count):
        if pos >= n:
            return _COUNT_MISMATCH
        status, value, pos = uvarint_checked_at(data, pos, n)
        if status != VARINT_OK:
            return status
        out[i] = value
    return VARINT_OK if pos == n else _COUNT_MISMATCH


def decode_uvarint_numba(data, count: int) -> np.ndarray:
    """Decode exactly ``count`` varints with a compiled loop; same checks as :func:`decode_uvarint`.

    Parameters
    ----------
    data : bytes or np.ndarray of uint8, ``[n_bytes]``
    count : int
        In ``[0, n_bytes]`` (every varint takes at least one byte); others raise ``CorruptVarint``
        before anything is allocated.

    Returns
    -------
    np.ndarray of uint64, ``[count]``
    """
    data = _as_bytes(data)
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or not 0 <= count <= data.size:
        raise CorruptVarint(f"expected {count!r} varints; {data.size} bytes hold between 0 and {data.size}")
    out = np.empty(int(count), dtype=np.uint64)
    status = _decode_uvarint_stream(data, int(count), out)
    if status != VARINT_OK:
        raise CorruptVarint(_STREAM_FAULTS[status].format(count=count, size=data.size))
    return out


_STREAM_FAULTS = {
    VARINT_TRUNCATED: "truncated varint: the stream ends inside a value",
    VARINT_OVERLONG: "overlong varint: a multi-byte value ends in a zero byte",
    VARINT_OVERFLOW: "varint does not fit in 64 bits",
    _COUNT_MISMATCH: "expected exactly {count} varints in {size} bytes",
}


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


@numba.njit(inline="always")
def varint_at(data, pos):
    """Decode one varint of trusted data (no checks) at ``pos`` as int64 (values below 2**63); return ``(value, next_pos)``.

    One- and two-byte values take an inlined path; longer ones call :func:`_long_varint_at`. (With the
    loop inlined into the search loops, numba's compiled decoder ran ten times slower.)
    """
    first = np.int64(data[pos])
    if first < 0x80:
        return first, pos + 1
    second = np.int64(data[pos + 1])
    if second < 0x80:
        return (first & 0x7F) | (second << 7), pos + 2
    return _long_varint_at(data, pos)


@numba.njit
def _long_varint_at(data, pos):
    value = np.int64(0)
    shift = 0
    while True:
        byte = np.int64(data[pos])
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
