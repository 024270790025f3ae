"""Compiled BM25 top-k search over blocked varint postings (the inner loops of InvertedIndex).

Term-at-a-time accumulation into a dense per-document array, terms in descending order of their
upper bound (the same order with pruning on or off, so every fully scored document gets bit-identical
scores either way). A top-k heap of the current partial scores is kept up to date posting by posting
(a document already in it moves when its score grows), so ``theta``, the heap's worst score, is at all
times the k-th best partial score.

Pruning (when ``prune`` is set), Lucene-style block-max MaxScore: every contribution is >= 0, so
partial scores only grow and ``theta`` is a lower bound of the final k-th score. Documents are grouped
in windows of ``2**WINDOW_SHIFT`` ids, each with the largest partial score in it (0 for untouched
documents). A block of a term is skipped without decoding when no document in its id range could
reach ``theta``: window maximum + the block's largest contribution + the bound of every later term
< ``theta``. Once the bounds of the terms not yet processed sum below ``theta``, documents that no
earlier term touched cannot enter the top k and are passed over. A relative slack of 1e-9 keeps
floating-point rounding of bound sums on the safe side. A document that loses a contribution this way
already ends strictly below ``theta``, so the heap's k documents are fully scored and are exactly those
of an exhaustive run.

Single-block terms carry no block metadata (see ``postings.BlockedPostings``); their bound is found by
decoding them in a first pass.

Frequent terms are read from an :class:`ImpactCache` (decoded doc ids and contributions) instead of
the varint stream when the index holds one; the contributions are the same float64 values, so the
cache never changes a score. The posting loops avoid branches that depend on the data: with the
documents of frequent terms touched at random, mispredicted branches cost more than the arithmetic.
"""

from dataclasses import dataclass

import numba
import numpy as np

from .bm25 import idf_by_code, tfc_by_code
from .postings import posting_at, term_header_at

_SLACK = 1e-9
_TOUCHED = 1  # state of a document some query term holds
_IN_HEAP = 3  # ... that is also in the top-k heap
WINDOW_SHIFT = 6


@numba.njit(cache=True)
def posting_contributions(term_freqs, doc_ids, tfc_one, doc_lengths, avgdl, code, k1, b, delta):
    """``tfc(tf, |d|) - tfc(0)`` per posting, float64 ``[n_postings]``: the block maxima the search bounds with."""
    absent = tfc_by_code(code, 0.0, avgdl, avgdl, k1, b, delta)
    out = np.empty(term_freqs.shape[0])
    for i in range(term_freqs.shape[0]):
        out[i] = _contribution(term_freqs[i], doc_ids[i], tfc_one, doc_lengths, avgdl, code, k1, b, delta, absent)
    return out


@numba.njit(cache=True)
def tfc_of_one(doc_lengths, avgdl, code, k1, b, delta):
    """``tfc(1, |d|) - tfc(0)`` per document, float64 ``[n_slots]``: the contribution of a tf = 1 posting.

    0 for empty documents, which hold no postings (and whose length norm is 0 when ``b = 1``).
    """
    absent = tfc_by_code(code, 0.0, avgdl, avgdl, k1, b, delta)
    out = np.zeros(doc_lengths.shape[0])
    for d in range(doc_lengths.shape[0]):
        if doc_lengths[d] > 0:
            out[d] = tfc_by_code(code, 1.0, np.float64(doc_lengths[d]), avgdl, k1, b, delta) - absent
    return out


@numba.njit(inline="always")
def _contribution(tf, doc, tfc_one, doc_lengths, avgdl, code, k1, b, delta, absent):
    if tf == 1:
        return tfc_one[doc]
    return tfc_by_code(code, np.float64(tf), np.float64(doc_lengths[doc]), avgdl, k1, b, delta) - absent


@dataclass(frozen=True, slots=True)
class ImpactCache:
    """Decoded postings of the most frequent terms: doc ids and contributions ``tfc - tfc(0)``.

    Search reads a cached term from here instead of decoding its varints and computing its
    contributions. The contributions are computed by the same compiled function search uses, so
    scores are bit-identical with and without the cache. It is derived state: rebuilt from the
    postings after every change and never saved.

    Attributes
    ----------
    terms : int64 ``[n_cached]``, sorted
    start : int64 ``[n_cached + 1]`` (empty when nothing is cached) — term ``terms[i]``'s postings are
        ``start[i]:start[i + 1]``
    docs : int32 ``[n_cached_postings]``
    impacts : float64 ``[n_cached_postings]``
    """

    terms: np.ndarray
    start: np.ndarray
    docs: np.ndarray
    impacts: np.ndarray

    def nbytes(self) -> int:
        return int(self.terms.nbytes + self.start.nbytes + self.docs.nbytes + self.impacts.nbytes)

    def arrays(self) -> tuple:
        """``(terms, start, docs, impacts)``, in the compiled search's argument order."""
        return self.terms, self.start, self.docs, self.impacts


CACHE_BYTES_PER_POSTING = 12  # int32 doc id + float64 contribution


def build_impact_cache(postings, budget_bytes: int, tfc_one, doc_lengths, avgdl, code, k1, b, delta) -> ImpactCache:
    """Cache the terms with the most postings, most first, while the cache's arrays fit in ``budget_bytes``.

    Only terms longer than one block are candidates (shorter ones are cheap to decode). Ties in
    posting count go to the smaller term id.
    """
    doc_freq = postings.doc_freq()
    candidates = np.flatnonzero(doc_freq > postings.block_size)
    candidates = candidates[np.argsort(-doc_freq[candidates], kind="stable")]
    per_term_bytes = CACHE_BYTES_PER_POSTING * doc_freq[candidates] + 16  # + its terms and start entries
    fits = int(np.searchsorted(np.cumsum(per_term_bytes) + 8, budget_bytes, side="right"))  # + start[0]
    terms = np.sort(candidates[:fits]).astype(np.int64)
    start = np.zeros(terms.size + 1 if terms.size else 0, dtype=np.int64)
    if terms.size:
        np.cumsum(doc_freq[terms], out=start[1:])
    num_cached = int(start[-1]) if terms.size else 0
    docs = np.empty(num_cached, dtype=np.int32)
    impacts = np.empty(num_cached)
    _fill_impact_cache(postings.data, postings.term_byte_start, postings.block_size, terms, start, tfc_one,
                       doc_lengths, avgdl, code, k1, b, delta, docs, impacts)
    return ImpactCache(terms, start, docs, impacts)


@numba.njit(cache=True)
def _fill_impact_cache(data, term_byte_start, block_size, terms, start, tfc_one, doc_lengths, avgdl, code, k1, b,
                       delta, docs, impacts):
    absent = tfc_by_code(code, 0.0, avgdl, avgdl, k1, b, delta)
    for i in range(terms.shape[0]):
        df, _, pos = term_header_at(data, term_byte_start, terms[i], block_size)
        doc = np.int64(0)
        for t in range(start[i], start[i] + df):
            gap, tf, pos = posting_at(data, pos)
            doc += gap
            docs[t] = doc
            impacts[t] = _contribution(tf, doc, tfc_one, doc_lengths, avgdl, code, k1, b, delta, absent)


@numba.njit(inline="always")
def _better(score_a, slot_a, score_b, slot_b):
    # Higher score wins; on a tie, the earlier document (smaller slot).
    return score_a > score_b or (score_a == score_b and slot_a < slot_b)


@numba.njit(inline="always")
def _swap(heap_scores, heap_slots, heap_pos, i, j):
    heap_scores[i], heap_scores[j] = heap_scores[j], heap_scores[i]
    heap_slots[i], heap_slots[j] = heap_slots[j], heap_slots[i]
    heap_pos[heap_slots[i]] = i
    heap_pos[heap_slots[j]] = j


@numba.njit
def _sift_down(heap_scores, heap_slots, heap_pos, size, i):
    # A min-heap on "worse first": the root is the worst of the kept k.
    while True:
        left = 2 * i + 1
        right = left + 1
        worst = i
        if left < size and _better(heap_scores[worst], heap_slots[worst], heap_scores[left], heap_slots[left]):
            worst = left
        if right < size and _better(heap_scores[worst], heap_slots[worst], heap_scores[right], heap_slots[right]):
            worst = right
        if worst == i:
            return
        _swap(heap_scores, heap_slots, heap_pos, i, worst)
        i = worst


@numba.njit
def _sift_up(heap_scores, heap_slots, heap_pos, i):
    while i > 0:
        parent = (i - 1) // 2
        if not _better(heap_scores[parent], heap_slots[parent], heap_scores[i], heap_slots[i]):
            return
        _swap(heap_scores, heap_slots, heap_pos, i, parent)
        i = parent


@numba.njit
def _offer(doc, score, k, size, state, heap_scores, heap_slots, heap_pos):
    """Doc's partial score grew to ``score``; keep the heap the k best. ``state``: bit 1 touched, bit 2 in the heap."""
    if state[doc] == _IN_HEAP:
        heap_scores[heap_pos[doc]] = score
        _sift_down(heap_scores, heap_slots, heap_pos, size, heap_pos[doc])
    elif size < k:
        heap_scores[size] = score
        heap_slots[size] = doc
        heap_pos[doc] = size
        state[doc] = _IN_HEAP
        _sift_up(heap_scores, heap_slots, heap_pos, size)
        size += 1
    elif _better(score, doc, heap_scores[0], heap_slots[0]):
        state[heap_slots[0]] = _TOUCHED
        heap_scores[0] = score
        heap_slots[0] = doc
        heap_pos[doc] = 0
        state[doc] = _IN_HEAP
        _sift_down(heap_scores, heap_slots, heap_pos, size, 0)
    return size


@numba.njit(inline="always")
def _cut(theta):
    return theta - _SLACK * (1.0 + abs(theta))


@numba.njit
def _search_one(terms, counts, k, prune, data, term_byte_start, block_byte_start, block_last_doc,
                block_max_impact, block_size, tfc_one, doc_lengths, num_docs, avgdl, code, k1, b, delta,
                cache_terms, cache_start, cache_docs, cache_impacts,
                acc, state, touched, heap_pos, window_max, heap_scores, heap_slots, out_slots, out_scores):
    """Score one query; write its top k to ``out_slots`` / ``out_scores`` (``[k]``, best first); return how many."""
    num_terms = terms.shape[0]
    absent = tfc_by_code(code, 0.0, avgdl, avgdl, k1, b, delta)
    weights = np.zeros(num_terms)
    bounds = np.zeros(num_terms)
    doc_freqs = np.zeros(num_terms, dtype=np.int64)
    first_blocks = np.zeros(num_terms, dtype=np.int64)
    starts = np.zeros(num_terms, dtype=np.int64)
    cached_at = np.full(num_terms, -1, dtype=np.int64)  # where a cached term's impacts start, else -1
    baseline = 0.0
    for j in range(num_terms):
        df, first_block, pos = term_header_at(data, term_byte_start, terms[j], block_size)
        doc_freqs[j], first_blocks[j], starts[j] = df, first_block, pos
        if df == 0:
            continue
        weight = counts[j] * idf_by_code(code, df, num_docs)
        weights[j] = weight
        baseline += weight * absent
        best = 0.0
        if first_block >= 0:
            for block in range(first_block, first_block + (df + block_size - 1) // block_size):
                best = max(best, np.float64(block_max_impact[block]))
            slot = np.searchsorted(cache_terms, terms[j])
            if slot < cache_terms.shape[0] and cache_terms[slot] == terms[j]:
                cached_at[j] = cache_start[slot]
        else:
            doc = np.int64(0)
            for _ in range(df):
                gap, tf, pos = posting_at(data, pos)
                doc += gap
                best = max(best, _contribution(tf, doc, tfc_one, doc_lengths, avgdl, code, k1, b, delta, absent))
        bounds[j] = weight * best
    order = np.argsort(-bounds, kind="mergesort")
    remaining = np.zeros(num_terms + 1)  # remaining[j]: bound sum of terms order[j:]
    for j in range(num_terms - 1, -1, -1):
        remaining[j] = remaining[j + 1] + bounds[order[j]]

    # Window maxima serve the block checks of later terms only.
    last = -1
    for jj in range(num_terms):
        if doc_freqs[order[jj]] > 0:
            last = jj
    windows_needed = prune
    num_touched = 0
    size = 0
    for jj in range(num_terms):
        j = order[jj]
        df, first_block, weight = doc_freqs[j], first_blocks[j], weights[j]
        if df == 0:
            continue
        after = remaining[jj + 1]
        num_blocks = 1 if first_block < 0 else (df + block_size - 1) // block_size
        for i in range(num_blocks):
            only_touched = False
            if first_block < 0:
                pos, base, count = starts[j], np.int64(0), df
                if prune and size == k:
                    only_touched = remaining[jj] < _cut(heap_scores[0])
            else:
                block = first_block + i
                pos = np.int64(block_byte_start[block])
                base = np.int64(block_last_doc[block - 1]) if i > 0 else np.int64(0)
                count = min(block_size, df - i * block_size)
                if prune and size == k:
                    cut = _cut(heap_scores[0])
                    best = 0.0
                    for w in range((base + (i > 0)) >> WINDOW_SHIFT, (np.int64(block_last_doc[block]) >> WINDOW_SHIFT) + 1):
                        best = max(best, window_max[w])
                    if best + weight * np.float64(block_max_impact[block]) + after < cut:
                        continue
                    only_touched = remaining[jj] < cut
            # The loops below avoid branches on data (touched or not, a new window maximum): with the
            # documents of frequent terms touched at random, mispredicted branches cost more than the
            # arithmetic. Window maxima are carried in a register while the window stays the same.
            windows = windows_needed and jj < last
            if cached_at[j] >= 0:
                first = cached_at[j] + i * block_size
                window = np.int64(cache_docs[first]) >> WINDOW_SHIFT
                window_best = window_max[window]
                if only_touched:
                    for t in range(first, first + count):
                        doc = np.int64(cache_docs[t])
                        held = state[doc] != 0
                        score = acc[doc] + weight * (cache_impacts[t] * np.float64(held))  # untouched: stays 0
                        acc[doc] = score
                        if windows:
                            if doc >> WINDOW_SHIFT != window:
                                window_max[window] = window_best
                                window = doc >> WINDOW_SHIFT
                                window_best = window_max[window]
                            window_best = max(window_best, score)
                        if score >= heap_scores[0] and held:
                            size = _offer(doc, score, k, size, state, heap_scores, heap_slots, heap_pos)
                else:
                    for t in range(first, first + count):
                        doc = np.int64(cache_docs[t])
                        touched[num_touched] = doc  # kept only when new
                        num_touched += state[doc] == 0
                        state[doc] |= _TOUCHED
                        score = acc[doc] + weight * cache_impacts[t]
                        acc[doc] = score
                        if windows:
                            if doc >> WINDOW_SHIFT != window:
                                window_max[window] = window_best
                                window = doc >> WINDOW_SHIFT
                                window_best = window_max[window]
                            window_best = max(window_best, score)
                        if size < k or score >= heap_scores[0]:
                            size = _offer(doc, score, k, size, state, heap_scores, heap_slots, heap_pos)
                if windows:
                    window_max[window] = window_best
                continue
            doc = base
            for _ in range(count):
                gap, tf, pos = posting_at(data, pos)
                doc += gap
                if only_touched and state[doc] == 0:
                    continue
                touched[num_touched] = doc
                num_touched += state[doc] == 0
                state[doc] |= _TOUCHED
                score = acc[doc] + weight * _contribution(tf, doc, tfc_one, doc_lengths, avgdl, code, k1, b, delta,
                                                          absent)
                acc[doc] = score
                if windows:
                    window_max[doc >> WINDOW_SHIFT] = max(window_max[doc >> WINDOW_SHIFT], score)
                if size < k or score >= heap_scores[0]:
                    size = _offer(doc, score, k, size, state, heap_scores, heap_slots, heap_pos)

    # Pop worst-first into the tail so the output is best-first.
    for i in range(size - 1, -1, -1):
        out_scores[i] = heap_scores[0] + baseline
        out_slots[i] = heap_slots[0]
        heap_scores[0] = heap_scores[i]
        heap_slots[0] = heap_slots[i]
        heap_pos[heap_slots[0]] = 0
        _sift_down(heap_scores, heap_slots, heap_pos, i, 0)
    for i in range(num_touched):
        doc = touched[i]
        acc[doc] = 0.0
        state[doc] = 0
        window_max[doc >> WINDOW_SHIFT] = 0.0
    return size


def new_scratch(num_slots: int, k: int):
    """Per-thread scratch of :func:`search_range`, all zero between queries.

    Returns
    -------
    acc : float64 ``[num_slots]``, state : uint8 ``[num_slots]``, touched : int32 ``[num_slots + 1]``,
    heap_pos : int32 ``[num_slots]``, window_max : float64 ``[num_slots // 2**WINDOW_SHIFT + 1]``,
    heap_scores : float64 ``[k]``, heap_slots : int64 ``[k]``
    """
    return (np.zeros(num_slots), np.zeros(num_slots, dtype=np.uint8), np.zeros(num_slots + 1, dtype=np.int32),
            np.zeros(num_slots, dtype=np.int32), np.zeros((num_slots >> WINDOW_SHIFT) + 1),
            np.zeros(k), np.zeros(k, dtype=np.int64))


def scratch_nbytes(num_slots: int) -> int:
    """Bytes of one :func:`new_scratch` set (without the two ``[k]`` heap arrays); one per searching thread."""
    return num_slots * (8 + 1 + 4 + 4) + 4 + 8 * ((num_slots >> WINDOW_SHIFT) + 1)


@numba.njit(cache=True)
def search_range(first, last, query_ptr, query_terms, query_counts, k, prune, data, term_byte_start,
                 block_byte_start, block_last_doc, block_max_impact, block_size, tfc_one, doc_lengths, num_docs,
                 avgdl, code, k1, b, delta, cache_terms, cache_start, cache_docs, cache_impacts, acc, state, touched,
                 heap_pos, window_max, heap_scores, heap_slots, out_slots, out_scores, out_sizes):
    """Search queries ``first:last`` with one scratch set (see :func:`new_scratch`); fills ``out_*[q]``."""
    for q in range(first, last):
        lo, hi = query_ptr[q], query_ptr[q + 1]
        out_sizes[q] = _search_one(
            query_terms[lo:hi], query_counts[lo:hi], k, prune, data, term_byte_start, block_byte_start,
            block_last_doc, block_max_impact, block_size, tfc_one, doc_lengths, num_docs, avgdl, code, k1, b,
            delta, cache_terms, cache_start, cache_docs, cache_impacts, acc, state, touched, heap_pos, window_max,
            heap_scores, heap_slots, out_slots[q], out_scores[q])


@numba.njit(cache=True)
def _search_chunk(first, last, query_ptr, query_terms, query_counts, k, prune, data, term_byte_start,
                  block_byte_start, block_last_doc, block_max_impact, block_size, tfc_one, doc_lengths, num_docs,
                  avgdl, code, k1, b, delta, cache_terms, cache_start, cache_docs, cache_impacts, out_slots,
                  out_scores, out_sizes):
    # One scratch set per chunk, allocated by the serial code that uses it.
    num_slots = doc_lengths.shape[0]
    search_range(first, last, query_ptr, query_terms, query_counts, k, prune, data, term_byte_start,
                 block_byte_start, block_last_doc, block_max_impact, block_size, tfc_one, doc_lengths, num_docs,
                 avgdl, code, k1, b, delta, cache_terms, cache_start, cache_docs, cache_impacts, np.zeros(num_slots),
                 np.zeros(num_slots, dtype=np.uint8), np.zeros(num_slots + 1, dtype=np.int32),
                 np.zeros(num_slots, dtype=np.int32), np.zeros((num_slots >> WINDOW_SHIFT) + 1), np.zeros(k),
                 np.zeros(k, dtype=np.int64), out_slots, out_scores, out_sizes)


@numba.njit(parallel=True, cache=True)
def search_parallel(num_chunks, query_ptr, query_terms, query_counts, k, prune, data, term_byte_start,
                    block_byte_start, block_last_doc, block_max_impact, block_size, tfc_one, doc_lengths, num_docs,
                    avgdl, code, k1, b, delta, cache_terms, cache_start, cache_docs, cache_impacts, out_slots,
                    out_scores, out_sizes):
    """Queries split into ``num_chunks`` contiguous chunks, one :func:`search_range` each, in parallel."""
    num_queries = query_ptr.shape[0] - 1
    chunk = (num_queries + num_chunks - 1) // num_chunks
    for c in numba.prange(num_chunks):
        _search_chunk(c * chunk, min(num_queries, (c + 1) * chunk), query_ptr, query_terms, query_counts, k, prune,
                      data, term_byte_start, block_byte_start, block_last_doc, block_max_impact, block_size, tfc_one,
                      doc_lengths, num_docs, avgdl, code, k1, b, delta, cache_terms, cache_start, cache_docs,
                      cache_impacts, out_slots, out_scores, out_sizes)
