"""A segment of an inverted index: the postings of a contiguous run of document slots, written once.

``InvertedIndex.add`` writes its documents as a new segment; ``delete`` only marks documents dead;
merging adjacent segments (:func:`merge_segments`) rewrites them as one without their dead documents.
Inside a segment, terms and documents are numbered locally: local term ``t`` is the global term
``terms[t]`` (ascending), local document ``d`` the slot ``slot_start + d`` of the index. A forward
index (each document's local terms) lets ``delete`` lower the document frequencies of exactly the
terms a document holds without decoding the postings.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    doc_term_data : uint8 ``[n_bytes]`` — per document, its ascending local term ids as varint gaps
    doc_term_start : int64 ``[num_docs + 1]`` — document ``d``'s bytes are ``doc_term_start[d]:doc_term_start[d + 1]``
    """

    postings: BlockedPostings
    terms: np.ndarray
    num_docs: int
    avgdl: float
    doc_term_data: np.ndarray
    doc_term_start: np.ndarray

    def nbytes(self) -> int:
        """Postings (see ``BlockedPostings.nbytes``), term map and forward index."""
        return int(self.postings.nbytes() + self.terms.nbytes + self.doc_term_data.nbytes + self.doc_term_start.nbytes)

    def global_terms_of(self, docs: np.ndarray) -> np.ndarray:
        """Global term ids held by the local documents ``docs`` (int64 ``[n]``), one entry per (document, term)."""
        docs = np.asarray(docs, dtype=np.int64)
        counts = self.doc_term_start[docs + 1] - self.doc_term_start[docs]  # bytes: at least one per term
        out = np.empty(int(counts.sum()), dtype=np.int64)
        n = _read_doc_terms(self.doc_term_data, self.doc_term_start, docs, out)
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
                  block_size: int) -> Segment:
    """A segment of the postings ``(term_ids, doc_ids, term_freqs)`` (int64 ``[n]`` each; global term ids,
    local doc ids, each (term, doc) pair once) of documents of lengths ``doc_lengths`` (int64 ``[num_docs]``),
    block maxima at ``avgdl``."""
    terms, local_terms = np.unique(np.asarray(term_ids, dtype=np.int64), return_inverse=True)
    local_terms = local_terms.reshape(-1).astype(np.int64)
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    term_freqs = np.asarray(term_freqs, dtype=np.int64)
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    tfc_one = tfc_of_one(doc_lengths, avgdl, params.code, params.k1, params.b, params.delta)
    impacts = posting_contributions(term_freqs, doc_ids, tfc_one, doc_lengths, avgdl, params.code, params.k1,
                                    params.b, params.delta)
    postings = encode_blocked_postings(local_terms, doc_ids, term_freqs, terms.size, block_size, impacts)
    data, start = _forward_index(local_terms, doc_ids, doc_lengths.size)
    return Segment(postings, terms.astype(np.int32), int(doc_lengths.size), float(avgdl), data, start)


def segment_from_decoded(postings: BlockedPostings, terms: np.ndarray, num_docs: int, avgdl: float,
                         local_terms: np.ndarray, doc_ids: np.ndarray) -> Segment:
    """A segment around checked, decoded ``postings`` (as loaded), with its forward index rebuilt."""
    data, start = _forward_index(local_terms, doc_ids, num_docs)
    return Segment(postings, terms, int(num_docs), float(avgdl), data, start)


def _forward_index(local_terms: np.ndarray, doc_ids: np.ndarray, num_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Each document's ascending local term ids as varint gaps (the first from 0) and per-document byte starts."""
    key = doc_ids * max(int(local_terms.max(initial=0)) + 1, 1) + local_terms
    if key.size > 1 and not bool((key[1:] > key[:-1]).all()):  # postings come sorted by document from add
        order = np.argsort(key, kind="stable")
        local_terms, doc_ids = local_terms[order], doc_ids[order]
    terms, docs = local_terms, doc_ids
    gaps = terms.copy()
    gaps[1:] -= np.where(docs[1:] == docs[:-1], terms[:-1], 0)
    start = np.zeros(num_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(docs, weights=uvarint_lengths(gaps), minlength=num_docs).astype(np.int64), out=start[1:])
    return encode_uvarint(gaps), start


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
    return build_segment(terms[kept], new_doc[docs[kept]], tfs[kept], doc_lengths[live], avgdl, params, block_size)


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
