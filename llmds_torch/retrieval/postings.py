"""The BM25 postings format: every term's postings in one LEB128 stream (see :mod:`.varint`), cut
into blocks with per-block maxima for block-max pruning (layout in :class:`BlockedPostings`).

Search reads postings with :func:`posting_at` and :func:`term_header_at` (trusted data, no checks);
:func:`decode_blocked_postings` decodes and checks everything, for loading and for rebuilding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .errors import CorruptVarint
from .varint import VARINT_OK, UnsortedIds, encode_uvarint, uvarint_checked_at, uvarint_lengths, varint_at

DEFAULT_BLOCK_SIZE = 128
MAX_BLOCK_SIZE = 65535
_INT64_LIMIT = np.uint64(2**63)


@numba.njit(inline="always")
def posting_at(data, pos):
    """Decode one posting at ``pos``: return ``(doc_gap, term_freq, next_pos)`` (see :class:`BlockedPostings`)."""
    code, pos = varint_at(data, pos)
    if code & 1:
        return code >> 1, np.int64(1), pos
    tf, pos = varint_at(data, pos)  # an early return: one shared exit made numba's compiled loop ~10x slower
    return code >> 1, tf + 2, pos


@numba.njit(inline="always")
def term_header_at(data, term_byte_start, term, block_size):
    """A term's header: return ``(doc_freq, first_block, first_posting_pos)``; ``first_block`` is -1 when the
    term fits in one block (it then has no block metadata)."""
    df, pos = varint_at(data, np.int64(term_byte_start[term]))
    first_block = np.int64(-1)
    if df > block_size:
        first_block, pos = varint_at(data, pos)
    return df, first_block, pos


@dataclass(frozen=True, slots=True)
class BlockedPostings:
    """Postings of many terms in one varint stream; block metadata only for terms longer than one block.

    Layout of term ``t``'s bytes, from ``term_byte_start[t]`` (all LEB128 varints)::

        doc_freq                      postings of the term
        first_block                   only if doc_freq > block_size: index of its first block below
        per posting, in doc order:
          (doc_gap << 1) | (tf == 1)  doc_gap from the previous posting's doc (the first from 0)
          tf - 2                      only if tf >= 2

    A term with more than ``block_size`` postings is cut into blocks of ``block_size`` (the last may be
    shorter); its blocks ``first_block, first_block + 1, ...`` each record where they start in ``data``,
    their largest doc id (the base the next block's first gap is taken from, so any block decodes on
    its own) and their largest impact. A term that fits in one block carries no metadata: it is
    decoded whole, and its bound is found by decoding it.

    Attributes
    ----------
    data : uint8 ``[n_bytes]``
    term_byte_start : uint32 (uint64 past 4 GiB) ``[n_terms]``
    block_byte_start : same dtype as ``term_byte_start``, ``[n_blocks]``
    block_last_doc : int32 ``[n_blocks]``
    block_max_impact : float32 ``[n_blocks]`` — the largest impact in the block, rounded up to float32
    block_size : int
    num_postings : int
    """

    data: np.ndarray
    term_byte_start: np.ndarray
    block_byte_start: np.ndarray
    block_last_doc: np.ndarray
    block_max_impact: np.ndarray
    block_size: int
    num_postings: int

    @property
    def num_terms(self) -> int:
        return int(self.term_byte_start.size)

    @property
    def num_blocks(self) -> int:
        return int(self.block_last_doc.size)

    def doc_freq(self) -> np.ndarray:
        """Postings per term, read from the term headers: int64 ``[n_terms]``."""
        out = np.empty(self.num_terms, dtype=np.int64)
        _read_doc_freqs(self.data, self.term_byte_start, self.block_size, out)
        return out

    def nbytes(self) -> int:
        """Every byte search reads: the stream, the term directory and the block metadata."""
        return int(sum(getattr(self, name).nbytes for name in _ARRAY_FIELDS))

    def arrays(self) -> dict:
        """The arrays by field name (for saving)."""
        return {name: getattr(self, name) for name in _ARRAY_FIELDS}


_ARRAY_FIELDS = ("data", "term_byte_start", "block_byte_start", "block_last_doc", "block_max_impact")


@numba.njit(cache=True)
def _read_doc_freqs(data, term_byte_start, block_size, out):
    for term in range(term_byte_start.shape[0]):
        out[term], _ = varint_at(data, np.int64(term_byte_start[term]))


def _round_up_to_float32(values: np.ndarray) -> np.ndarray:
    rounded = values.astype(np.float32)
    low = rounded.astype(np.float64) < values
    rounded[low] = np.nextafter(rounded[low], np.float32(np.inf))
    return rounded


def encode_blocked_postings(term_ids, doc_ids, term_freqs, num_terms: int, block_size: int = DEFAULT_BLOCK_SIZE,
                            impacts=None) -> BlockedPostings:
    """Build :class:`BlockedPostings` from (term, doc, tf) triples in any order.

    Parameters
    ----------
    term_ids : int array ``[n_postings]``, each in ``[0, num_terms)``
    doc_ids : int array ``[n_postings]``, in ``[0, 2**31)``
    term_freqs : int array ``[n_postings]``, each >= 1
    num_terms : int
    block_size : int
    impacts : float array ``[n_postings]``, optional
        What each posting can add to a score per unit of query weight (BM25: ``tfc - tfc(0)``); the
        per-block maxima bound pruning. Default: the term frequency.

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
    impacts = term_freqs.astype(np.float64) if impacts is None else np.asarray(impacts, dtype=np.float64)
    if not (term_ids.shape == doc_ids.shape == term_freqs.shape == impacts.shape) or term_ids.ndim != 1:
        raise ValueError("term_ids, doc_ids, term_freqs and impacts must be 1-D arrays of one length")
    if doc_ids.size and (doc_ids.min() < 0 or doc_ids.max() > np.iinfo(np.int32).max):
        raise ValueError("doc ids must lie in [0, 2**31)")
    if term_ids.size and (term_ids.min() < 0 or term_ids.max() >= num_terms):
        raise ValueError(f"term ids must lie in [0, {num_terms})")
    if term_freqs.size and term_freqs.min() < 1:
        raise ValueError("term frequencies must be >= 1")
    order = np.lexsort((doc_ids, term_ids))
    term_ids, doc_ids, term_freqs, impacts = term_ids[order], doc_ids[order], term_freqs[order], impacts[order]
    if term_ids.size > 1 and np.any((term_ids[1:] == term_ids[:-1]) & (doc_ids[1:] == doc_ids[:-1])):
        raise UnsortedIds("a (term, doc) posting appears twice; sum the frequencies first")

    num_postings = term_ids.size
    doc_freq = np.bincount(term_ids, minlength=num_terms).astype(np.int64)
    posting_start = np.zeros(num_terms + 1, dtype=np.int64)
    np.cumsum(doc_freq, out=posting_start[1:])
    index_in_term = np.arange(num_postings) - posting_start[term_ids]
    blocks_per_term = np.where(doc_freq > block_size, -(-doc_freq // block_size), 0)
    first_block = np.cumsum(blocks_per_term) - blocks_per_term

    previous_doc = np.zeros_like(doc_ids)
    previous_doc[1:] = doc_ids[:-1]
    previous_doc[index_in_term == 0] = 0
    gaps = doc_ids - previous_doc

    # Every term gets two varint slots for its header and every posting two for (code, tf - 2); slots
    # that a term or posting does not use are dropped before encoding.
    header_slot = 2 * np.arange(num_terms) + 2 * posting_start[:-1]
    posting_slot = 2 * (term_ids + 1) + 2 * np.arange(num_postings)
    values = np.zeros(2 * (num_terms + num_postings), dtype=np.uint64)
    used = np.zeros(values.size, dtype=bool)
    values[header_slot], used[header_slot] = doc_freq, True
    values[header_slot + 1], used[header_slot + 1] = first_block, blocks_per_term > 0
    values[posting_slot], used[posting_slot] = (gaps << 1) | (term_freqs == 1), True
    values[posting_slot + 1], used[posting_slot + 1] = np.maximum(term_freqs - 2, 0), term_freqs > 1
    values = values[used]
    lengths = uvarint_lengths(values)
    data = encode_uvarint(values)
    slot_byte = np.zeros(used.size, dtype=np.int64)
    slot_byte[used] = np.cumsum(lengths) - lengths

    offset_dtype = np.uint32 if data.size < 2**32 else np.uint64
    block_first, block_end = _block_ranges(term_ids, posting_start, block_size)
    return BlockedPostings(
        data=data,
        term_byte_start=slot_byte[header_slot].astype(offset_dtype),
        block_byte_start=slot_byte[posting_slot[block_first]].astype(offset_dtype),
        block_last_doc=doc_ids[block_end - 1].astype(np.int32),
        block_max_impact=_block_maxima(impacts, block_first, block_end),
        block_size=int(block_size),
        num_postings=int(num_postings),
    )


def _block_ranges(term_ids: np.ndarray, posting_start: np.ndarray, block_size: int) -> tuple:
    """First and one-past-last posting of every block, int64 ``[n_blocks]`` each, for postings sorted by
    term; only terms with more than ``block_size`` postings have blocks."""
    doc_freq = np.diff(posting_start)
    index_in_term = np.arange(term_ids.size) - posting_start[term_ids]
    in_blocks = doc_freq[term_ids] > block_size
    block_first = np.flatnonzero(in_blocks & (index_in_term % block_size == 0))
    block_end = np.minimum(block_first + block_size, posting_start[term_ids[block_first] + 1])
    return block_first, block_end


def _block_maxima(impacts: np.ndarray, block_first: np.ndarray, block_end: np.ndarray) -> np.ndarray:
    """Largest impact of each block, rounded up to float32 ``[n_blocks]``."""
    if not block_first.size:
        return np.empty(0, dtype=np.float32)
    bounds = np.column_stack([block_first, block_end]).ravel()  # the odd segments lie between blocks
    return _round_up_to_float32(np.maximum.reduceat(np.append(impacts, 0.0), bounds)[0::2])


def block_max_impacts(term_ids, impacts, num_terms: int, block_size: int) -> np.ndarray:
    """The ``block_max_impact`` that :func:`encode_blocked_postings` stores for postings sorted by term
    then doc (as :func:`decode_blocked_postings` returns them): float32 ``[n_blocks]``."""
    term_ids = np.asarray(term_ids, dtype=np.int64)
    posting_start = np.zeros(num_terms + 1, dtype=np.int64)
    np.cumsum(np.bincount(term_ids, minlength=num_terms), out=posting_start[1:])
    return _block_maxima(np.asarray(impacts, dtype=np.float64), *_block_ranges(term_ids, posting_start, block_size))


@numba.njit(inline="always")
def _checked_int_at(data, pos, end):
    # One checked varint below 2**63 as int64, or -1 when the bytes are corrupt or the value larger.
    status, value, pos = uvarint_checked_at(data, pos, end)
    if status != VARINT_OK or value >= _INT64_LIMIT:
        return np.int64(-1), pos
    return np.int64(value), pos


@numba.njit(cache=True)
def _decode_all(data, term_byte_start, block_byte_start, block_last_doc, block_size, num_slots,
                out_terms, out_docs, out_tfs):
    # Decode every posting, checking the stream's structure and the block metadata against it.
    # Returns 0, or a negative code naming the first inconsistency.
    num_terms = term_byte_start.shape[0]
    num_postings = out_docs.shape[0]
    n = 0
    next_block = 0
    for term in range(num_terms):
        pos = np.int64(term_byte_start[term])
        end = np.int64(term_byte_start[term + 1]) if term + 1 < num_terms else np.int64(data.shape[0])
        if pos < 0 or pos > end or end > data.shape[0]:  # uint64 offsets past 2**63 read as negative
            return -1
        df, pos = _checked_int_at(data, pos, end)
        if df < 0 or n + df > num_postings:
            return -2
        block = np.int64(-1)
        if df > block_size:
            block, pos = _checked_int_at(data, pos, end)
            if block != next_block:
                return -3
            next_block += (df + block_size - 1) // block_size
            if next_block > block_last_doc.shape[0]:
                return -3
        doc = np.int64(0)
        for i in range(df):
            if block >= 0 and i % block_size == 0:
                if np.int64(block_byte_start[block]) != pos:
                    return -3
            code, pos = _checked_int_at(data, pos, end)
            if code < 0:
                return -2
            tf = np.int64(1)
            if code & 1 == 0:
                tf, pos = _checked_int_at(data, pos, end)
                if tf < 0:
                    return -2
                tf += 2
            doc += code >> 1
            if (i > 0 and code >> 1 == 0) or doc >= num_slots:
                return -4
            out_terms[n], out_docs[n], out_tfs[n] = term, doc, tf
            n += 1
            if block >= 0 and (i % block_size == block_size - 1 or i == df - 1):
                if block_last_doc[block] != doc:
                    return -3
                block += 1
        if pos != end:
            return -2
    if n != num_postings or next_block != block_last_doc.shape[0]:
        return -2
    return 0


_DECODE_ERRORS = {
    -1: "term offsets are out of order or past the stream",
    -2: "the stream does not hold the postings its headers announce",
    -3: "block metadata disagrees with the stream",
    -4: "doc ids repeat within a term or exceed the number of documents",
}


def decode_blocked_postings(postings: BlockedPostings, num_slots: int = 2**31) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All postings back as (term, doc, tf) arrays, sorted by term then doc, checking the whole layout.

    Parameters
    ----------
    postings : BlockedPostings
    num_slots : int
        Doc ids must be below this.

    Returns
    -------
    term_ids : int64 ``[n_postings]``
    doc_ids : int64 ``[n_postings]``
    term_freqs : int64 ``[n_postings]``

    Raises
    ------
    CorruptVarint
        If the stream, term directory and block metadata do not agree.
    """
    n = postings.num_postings
    terms, docs, tfs = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    code = _decode_all(postings.data, postings.term_byte_start, postings.block_byte_start, postings.block_last_doc,
                       postings.block_size, int(num_slots), terms, docs, tfs)
    if code != 0:
        raise CorruptVarint(f"corrupt blocked postings: {_DECODE_ERRORS[code]}")
    return terms, docs, tfs


def postings_from_arrays(arrays: dict, block_size: int, num_postings: int, num_slots: int) -> BlockedPostings:
    """Rebuild :class:`BlockedPostings` from :meth:`BlockedPostings.arrays` output and check it all by decoding.

    Raises
    ------
    CorruptVarint
        Missing arrays, wrong dtypes or sizes, or a stream that does not decode to the metadata.
    """
    missing = [name for name in _ARRAY_FIELDS if name not in arrays]
    if missing:
        raise CorruptVarint(f"postings arrays missing: {missing}")
    postings = BlockedPostings(block_size=int(block_size), num_postings=int(num_postings),
                               **{name: arrays[name] for name in _ARRAY_FIELDS})
    dtypes_ok = (postings.data.dtype == np.uint8 and postings.term_byte_start.dtype in (np.uint32, np.uint64)
                 and postings.block_byte_start.dtype == postings.term_byte_start.dtype
                 and postings.block_last_doc.dtype == np.int32 and postings.block_max_impact.dtype == np.float32)
    sizes_ok = postings.block_byte_start.size == postings.block_last_doc.size == postings.block_max_impact.size
    counts_ok = 1 <= block_size <= MAX_BLOCK_SIZE and 0 <= num_postings <= postings.data.size
    if not (dtypes_ok and sizes_ok and counts_ok):
        raise CorruptVarint("postings arrays have unexpected dtypes or inconsistent sizes")
    decode_blocked_postings(postings, num_slots)
    return postings
