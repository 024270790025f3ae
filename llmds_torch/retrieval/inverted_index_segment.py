"""A segment of an inverted index: the postings of a contiguous run of document slots, written once.

``InvertedIndex.add`` writes its documents as a new segment; ``delete`` only marks documents dead;
merging adjacent segments (:func:`merge_segments`) rewrites them as one without their dead documents.
Inside a segment, terms and documents are numbered locally: local term ``t`` is the global term
``terms[t]`` (ascending), local document ``d`` the slot ``slot_start + d`` of the index. A forward
index (each document's local terms) lets ``delete`` lower the document frequencies of exactly the
terms a document holds without decoding the postings; it is derived from the postings (a transpose)
by the first delete that touches the segment, so adding, merging and loading never pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from ._bm25_search import posting_contributions, tfc_of_one
from .bm25 import BM25Params
from .postings import BlockedPostings, decode_blocked_postings, encode_blocked_postings
from .varint import encode_uvarint, uvarint_lengths, varint_at


@dataclass(frozen=True, slots=True)
class Segment:
    """Postings of ``num_docs`` documents, with block maxima computed at the average length ``avgdl``.

    Attributes
    ----------
    postings : BlockedPostings over local term ids ``[0, terms.size)`` and local doc ids ``[0, num_docs)``
    terms : int32 ``[n_local_terms]`` — the global term id of each local term, ascending
    num_docs : int
    avgdl : float — the average live document length of the index when the block maxima were computed
    forward_cache : list — empty until :meth:`forward_index` first runs, then its result (derived data,
        so snapshots may share it)
    """

    postings: BlockedPostings
    terms: np.ndarray
    num_docs: int
    avgdl: float
    forward_cache: list = field(default_factory=list, repr=False, compare=False)

    def nbytes(self) -> int:
        """Postings (see ``BlockedPostings.nbytes``), term map and the forward index once built."""
        return int(self.postings.nbytes() + self.terms.nbytes + self.forward_index_nbytes())

    def forward_index_nbytes(self) -> int:
        return int(sum(array.nbytes for array in self.forward_cache[0])) if self.forward_cache else 0

    def forward_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Each document's ascending local term ids as varint gaps (the first from 0), uint8 ``[n_bytes]``, and
        where each document's bytes start, int64 ``[num_docs + 1]``; built from the postings on first use."""
        if not self.forward_cache:
            local_terms, docs, _ = decode_blocked_postings(self.postings, self.num_docs)
            self.forward_cache.append(_forward_index(local_terms, docs, self.num_docs))
        return self.forward_cache[0]

    def global_terms_of(self, docs: np.ndarray) -> np.ndarray:
        """Global term ids held by the local documents ``docs`` (int64 ``[n]``), one entry per (document, term)."""
        data, start = self.forward_index()
        docs = np.asarray(docs, dtype=np.int64)
        counts = start[docs + 1] - start[docs]  # bytes: at least one per term
        out = np.empty(int(counts.sum()), dtype=np.int64)
        n = _read_doc_terms(data, start, docs, out)
        return self.terms[out[:n]]


@numba.njit(cache=True)
def _read_doc_terms(data, start, docs, out):
    n = 0
    for d in docs:
        pos, term = start[d], np.int64(0)
        while pos < start[d + 1]:
            gap, pos = varint_at(data, pos)
            term += gap
            out[n] = term
            n += 1
    return n


def build_segment(term_ids, doc_ids, term_freqs, doc_lengths, avgdl: float, params: BM25Params,
                  block_size: int, with_forward_index: bool = False) -> Segment:
    """A segment of the postings ``(term_ids, doc_ids, term_freqs)`` (int64 ``[n]`` each; global term ids,
    local doc ids, each (term, doc) pair once) of documents of lengths ``doc_lengths`` (int64 ``[num_docs]``),
    block maxima at ``avgdl``; with its forward index at once if asked (each document's postings must then
    come in ascending term order)."""
    term_ids = np.asarray(term_ids, dtype=np.int64)
    present = np.zeros(int(term_ids.max(initial=-1)) + 1, dtype=bool)
    present[term_ids] = True  # a mask, not np.unique: no sort of all the postings
    terms = np.flatnonzero(present)
    local_terms = (np.cumsum(present) - 1)[term_ids]
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    term_freqs = np.asarray(term_freqs, dtype=np.int64)
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    tfc_one = tfc_of_one(doc_lengths, avgdl, params.code, params.k1, params.b, params.delta)
    impacts = posting_contributions(term_freqs, doc_ids, tfc_one, doc_lengths, avgdl, params.code, params.k1,
                                    params.b, params.delta)
    postings = encode_blocked_postings(local_terms, doc_ids, term_freqs, terms.size, block_size, impacts)
    segment = Segment(postings, terms.astype(np.int32), int(doc_lengths.size), float(avgdl))
    if with_forward_index:
        segment.forward_cache.append(_forward_index(local_terms, doc_ids, segment.num_docs))
    return segment


def _forward_index(local_terms: np.ndarray, doc_ids: np.ndarray, num_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Postings (int64 ``[n]`` each, each document's in ascending term order) transposed: see
    ``Segment.forward_index``."""
    start, terms = _by_document(local_terms, doc_ids, num_docs)
    docs = np.repeat(np.arange(num_docs, dtype=np.int64), np.diff(start))
    gaps = terms.copy()
    gaps[1:] -= np.where(docs[1:] == docs[:-1], terms[:-1], 0)
    byte_start = np.zeros(num_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(docs, weights=uvarint_lengths(gaps), minlength=num_docs).astype(np.int64),
              out=byte_start[1:])
    return encode_uvarint(gaps), byte_start


@numba.njit(cache=True)
def _by_document(local_terms, doc_ids, num_docs):
    """A stable counting sort of the postings by document: per-document starts ``[num_docs + 1]`` and terms."""
    start = np.zeros(num_docs + 1, dtype=np.int64)
    for d in doc_ids:
        start[d + 1] += 1
    for d in range(num_docs):
        start[d + 1] += start[d]
    fill = start[:-1].copy()
    terms = np.empty(local_terms.size, dtype=np.int64)
    for i in range(local_terms.size):
        d = doc_ids[i]
        terms[fill[d]] = local_terms[i]
        fill[d] += 1
    return start, terms


def decode_segment(segment: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segment's postings as (global term, local doc, tf) int64 arrays, sorted by term then doc."""
    local_terms, docs, tfs = decode_blocked_postings(segment.postings, segment.num_docs)
    return segment.terms[local_terms], docs, tfs


def merge_segments(segments, live: np.ndarray, doc_lengths: np.ndarray, avgdl: float, params: BM25Params,
                   block_size: int) -> Segment:
    """One segment of the live documents of adjacent ``segments``, in slot order.

    ``live`` and ``doc_lengths`` are ``[sum of num_docs]``: the segments' slots, in order.
    """
    parts, offset = [], 0
    for segment in segments:
        terms, docs, tfs = decode_segment(segment)
        parts.append((terms, docs + offset, tfs))
        offset += segment.num_docs
    terms, docs, tfs = (np.concatenate([part[i] for part in parts]) for i in range(3))
    kept = live[docs]
    new_doc = np.cumsum(live) - 1
    # If deletes touched one of these segments, the merged one gets its forward index from the postings decoded here.
    deleted_from = any(segment.forward_cache for segment in segments)
    return build_segment(terms[kept], new_doc[docs[kept]], tfs[kept], doc_lengths[live], avgdl, params, block_size,
                         deleted_from)


def segments_to_merge(live_docs: list, num_docs: list, merge_factor: int) -> tuple[int, int] | None:
    """The adjacent segments ``[first, last)`` a log merge policy rewrites next, or None.

    A segment's level is ``floor(log_merge_factor(live documents))``. Merged: a segment more than half
    dead (alone, to drop its dead documents), else the longest run of at least ``merge_factor``
    adjacent segments of one level ending at the newest segment. The segment count thus stays below
    about ``merge_factor`` per level, and each document is rewritten about once per level.
    """
    for s, (live, total) in enumerate(zip(live_docs, num_docs)):
        if 2 * live < total:
            return s, s + 1
    if merge_factor < 2 or len(live_docs) < merge_factor:
        return None
    levels = [int(np.log(max(n, 1)) / np.log(merge_factor) + 1e-9) for n in live_docs]
    first = len(levels) - 1
    while first > 0 and levels[first - 1] == levels[-1]:
        first -= 1
    return (first, len(levels)) if len(levels) - first >= merge_factor else None
