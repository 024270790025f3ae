"""Compiled BM25 top-k search over the segments of an inverted index (the inner loops of InvertedIndex).

The index's postings sit in segments (see ``inverted_index_segment``), each covering a contiguous run
of document slots; search reads them concatenated (:data:`PostingArrays`, located by
:data:`SegmentTable`). Within a segment: term-at-a-time accumulation into a dense per-slot array, terms
in descending order of their upper bound (the same order with pruning on or off, so every fully scored
document gets bit-identical scores either way). One top-k heap of the current partial scores serves
all segments and is kept up to date posting by posting (a document already in it moves when its score
grows), so ``theta``, the heap's worst score, is at all times the k-th best partial score, and the
segments after the first start pruning with the heap the earlier ones filled. Every document belongs
to one segment, so the segments' top k together are the index's top k. Deleted documents keep their
postings until their segment is merged: they are scored but never enter the heap.

Pruning (when ``prune`` is set), Lucene-style block-max MaxScore: every contribution is >= 0, so
partial scores only grow and ``theta`` is a lower bound of the final k-th score. Documents are grouped
in windows of ``2**WINDOW_SHIFT`` slots, each with the largest partial score in it (0 for untouched
documents). A block of a term is skipped without decoding when no document in its slot range could
reach ``theta``: window maximum + the block's largest contribution + the bound of every later term
< ``theta``. Once the bounds of the terms not yet processed sum below ``theta``, documents that no
earlier term touched cannot enter the top k and are passed over. A relative slack of 1e-9 keeps
floating-point rounding of bound sums on the safe side. A document that loses a contribution this way
already ends strictly below ``theta``, so the heap's k documents are fully scored and are exactly those
of an exhaustive run.

A segment's block maxima were computed at the average document length of the time it was written;
:func:`_rescaled_bound` turns them into bounds at today's average (exact when it has not grown).
Single-block terms carry no block metadata (see ``postings.BlockedPostings``); their bound is found by
decoding them in a first pass.

Frequent terms are read from an :class:`ImpactCache` (decoded slots and contributions) instead of the
varint stream; the contributions are the same float64 values, so the cache never changes a score. The
posting loops avoid branches that depend on the data: with the documents of frequent terms touched at
random, mispredicted branches cost more than the arithmetic.

Stages of one query (:func:`_search_one`): the query's term weights, then per segment
:func:`_plan_segment` decodes the term headers and bounds the terms, and :func:`_score_segment` walks
their blocks: :func:`_prune_block` decides whether to skip one; an uncached block is decoded into the
scratch's block buffers by :func:`_decode_block`, a cached one is read in place, and both feed the one
:func:`_accumulate`; finally :func:`_select` pops the heap into the output and :func:`_clear` zeroes
the scratch. The arrays travel in named groups (:data:`PostingArrays`, :data:`SegmentTable`,
:data:`Scoring`, :data:`CachedImpacts`, :data:`Queries`, :data:`Scratch`, :data:`Results`).
"""

from collections import namedtuple
from dataclasses import dataclass

import numba
import numpy as np

from llmds_torch.heap import ordered_by

from .bm25 import idf_by_code, tfc_by_code
from .postings import posting_at
from .varint import varint_at

_SLACK = 1e-9
_BOUND_SLACK = 1e-12  # relative margin on a rescaled block bound, above its floating-point error
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


@numba.njit(inline="always")
def _rescaled_bound(bound, scale, code, k1, delta, absent):
    """A bound of ``tfc - tfc(0)`` at the average length ``avgdl`` from ``bound``, one at ``avgdl0``.

    ``scale = min(1, avgdl0 / avgdl)``. Every variant's tfc depends on the length only through
    ``L = 1 - b + b * |d| / avgdl``, and ``L(avgdl) >= scale * L(avgdl0)`` for ``b`` in [0, 1]. With
    ``x = k1 * L / tf``, lucene and robertson have ``tfc = 1 / (1 + x)``, atire ``(k1 + 1) / (1 + x)``
    and bm25+ that plus ``delta`` (= tfc(0)); bm25l grows with ``c = tf / L``. Solving the old bound for
    the smallest ``x`` (largest ``c``) and scaling it gives the new bound. A shorter average only
    lowers every contribution, so the old bound stands.
    """
    if scale >= 1.0 or bound <= 0.0:
        return bound
    if code == 3:
        top = k1 + 1.0
        value = bound + absent
        if value >= top:
            return top - absent
        c = max(k1 * value / (top - value) - delta, 0.0) / scale
        return (top * (c + delta) / (k1 + c + delta) - absent) * (1.0 + _BOUND_SLACK)
    top = 1.0 if code <= 1 else k1 + 1.0
    x = max(top / bound - 1.0, 0.0)
    return top / (1.0 + scale * x) * (1.0 + _BOUND_SLACK)


# Named groups of what the compiled search reads and writes (numba compiles attribute access on them).
PostingArrays = namedtuple("PostingArrays", [
    "data", "term_byte_start", "block_byte_start", "block_last_doc", "block_max_impact", "block_size"])
PostingArrays.__doc__ = """The arrays of every segment's ``postings.BlockedPostings``, concatenated in segment order
(offsets and block numbers stay relative to their segment; :data:`SegmentTable` locates them), and the block size."""
SegmentTable = namedtuple("SegmentTable", [
    "terms", "term_start", "data_start", "block_start", "slot_start", "bound_scale", "cache_term_start"])
SegmentTable.__doc__ = """Where each of ``n_segments`` segments lies: ``terms`` int32 ``[n_local_terms]`` the global term id
of every segment-local term (ascending within a segment; segment ``s`` owns ``term_start[s]:term_start[s + 1]``, int64
``[n_segments + 1]``, which also indexes ``term_byte_start``); int64 ``[n_segments]`` starts in ``data``, in the block
arrays and of its slot range; ``bound_scale`` float64 ``[n_segments]`` (see :func:`_rescaled_bound`); its cached terms
are ``cache_term_start[s]:cache_term_start[s + 1]`` of :data:`CachedImpacts` ``terms``."""
Scoring = namedtuple("Scoring", [
    "tfc_one", "doc_lengths", "num_docs", "avgdl", "code", "k1", "b", "delta", "live", "doc_freq"])
Scoring.__doc__ = """BM25 inputs: ``tfc_one`` float64 ``[n_slots]`` (see :func:`tfc_of_one`), ``doc_lengths`` ``[n_slots]``,
the live document count, the average length, the variant's code and parameters, ``live`` bool ``[n_slots]`` and
``doc_freq`` int64 ``[n_terms]``, the live documents holding each term (query terms must be below ``n_terms``)."""
CachedImpacts = namedtuple("CachedImpacts", ["terms", "start", "docs", "impacts"])
CachedImpacts.__doc__ = "The arrays of an :class:`ImpactCache`."
Queries = namedtuple("Queries", ["ptr", "terms", "counts"])
Queries.__doc__ = """Queries in CSR form: query ``q``'s vocabulary ids are ``terms[ptr[q]:ptr[q + 1]]`` (int64), with their
counts in the query (float64)."""
Results = namedtuple("Results", ["slots", "scores", "sizes"])
Results.__doc__ = "Per query ``q``: ``slots[q]`` int64 ``[k]`` and ``scores[q]`` float64 ``[k]``, best first; ``sizes[q]`` found."
Scratch = namedtuple("Scratch", [
    "acc", "state", "touched", "heap_pos", "window_max", "heap_scores", "heap_slots", "block_docs", "block_impacts"])
Scratch.__doc__ = "Per-thread search state, all zero between queries (see :func:`new_scratch`)."
QueryPlan = namedtuple("QueryPlan", ["doc_freqs", "first_blocks", "starts", "cached_at", "order", "remaining", "last"])
QueryPlan.__doc__ = """One segment's part of a query: its postings per query term, first block (in the concatenated
block arrays, -1 for a single-block term), first posting's byte, where a cached term's impacts start (else -1);
``order`` the scoring order (descending bound), ``remaining[j]`` the bound sum of terms ``order[j:]``, ``last`` the
position in ``order`` of the last term with postings here."""


@dataclass(frozen=True, slots=True)
class ImpactCache:
    """Decoded postings of the most frequent terms of every segment: slots and contributions ``tfc - tfc(0)``.

    Search reads a cached term from here instead of decoding its varints and computing its
    contributions. The contributions are computed by the same compiled function search uses, so
    scores are bit-identical with and without the cache. It is derived state: rebuilt from the
    postings after every change, before the next search, and never saved.

    Attributes
    ----------
    terms : int64 ``[n_cached]`` segment-local term ids, ascending within each segment's range
    term_start : int64 ``[n_segments + 1]`` — segment ``s``'s cached terms are ``terms[term_start[s]:term_start[s + 1]]``
    start : int64 ``[n_cached + 1]`` (empty when nothing is cached) — ``terms[i]``'s postings are ``start[i]:start[i + 1]``
    docs : int32 ``[n_cached_postings]`` slots
    impacts : float64 ``[n_cached_postings]``
    """

    terms: np.ndarray
    term_start: np.ndarray
    start: np.ndarray
    docs: np.ndarray
    impacts: np.ndarray

    def nbytes(self) -> int:
        return int(self.terms.nbytes + self.start.nbytes + self.docs.nbytes + self.impacts.nbytes)

    def arrays(self) -> "CachedImpacts":
        """The arrays as the compiled search takes them."""
        return CachedImpacts(self.terms, self.start, self.docs, self.impacts)


CACHE_BYTES_PER_POSTING = 12  # int32 slot + float64 contribution


def build_impact_cache(postings: PostingArrays, doc_freqs: np.ndarray, header_pos: np.ndarray, segments,
                       budget_bytes: int, scoring: Scoring) -> ImpactCache:
    """Cache the (segment, term) pairs with the most postings, most first, while the arrays fit in ``budget_bytes``.

    ``doc_freqs`` and ``header_pos`` are int64 ``[n_local_terms]``: each segment-local term's postings and
    the byte of its first posting. Only terms longer than one block are candidates (shorter ones are
    cheap to decode). Ties in posting count go to the earlier segment, then the smaller term.
    """
    candidates = np.flatnonzero(doc_freqs > postings.block_size)
    candidates = candidates[np.argsort(-doc_freqs[candidates], kind="stable")]
    per_term_bytes = CACHE_BYTES_PER_POSTING * doc_freqs[candidates] + 16  # + its terms and start entries
    fits = int(np.searchsorted(np.cumsum(per_term_bytes) + 8, budget_bytes, side="right"))  # + start[0]
    chosen = np.sort(candidates[:fits])  # flat local-term positions, so grouped by segment
    segment_of = np.searchsorted(segments.term_start, chosen, side="right") - 1
    term_start = np.searchsorted(chosen, segments.term_start).astype(np.int64)
    start = np.zeros(chosen.size + 1 if chosen.size else 0, dtype=np.int64)
    if chosen.size:
        np.cumsum(doc_freqs[chosen], out=start[1:])
    num_cached = int(start[-1]) if chosen.size else 0
    docs = np.empty(num_cached, dtype=np.int32)
    impacts = np.empty(num_cached)
    _fill_impact_cache(postings.data, header_pos[chosen], segments.slot_start[segment_of], start, scoring, docs,
                       impacts)
    local_terms = (chosen - segments.term_start[segment_of]).astype(np.int64)
    return ImpactCache(local_terms, term_start, start, docs, impacts)


@numba.njit(cache=True)
def _fill_impact_cache(data, positions, slot_starts, start, scoring, docs, impacts):
    absent = tfc_by_code(scoring.code, 0.0, scoring.avgdl, scoring.avgdl, scoring.k1, scoring.b, scoring.delta)
    for i in range(positions.shape[0]):
        pos = positions[i]
        doc = slot_starts[i]
        for t in range(start[i], start[i + 1]):
            gap, tf, pos = posting_at(data, pos)
            doc += gap
            docs[t] = doc
            impacts[t] = _contribution(tf, doc, scoring.tfc_one, scoring.doc_lengths, scoring.avgdl, scoring.code,
                                       scoring.k1, scoring.b, scoring.delta, absent)


@numba.njit(cache=True)
def read_term_headers(data, term_byte_start, data_start, term_start, block_size, doc_freqs, header_pos):
    """Each segment-local term's postings count and first posting's byte (absolute), into the int64
    ``[n_local_terms]`` outputs."""
    for s in range(data_start.shape[0]):
        for t in range(term_start[s], term_start[s + 1]):
            df, pos = varint_at(data, data_start[s] + np.int64(term_byte_start[t]))
            if df > block_size:
                _, pos = varint_at(data, pos)
            doc_freqs[t], header_pos[t] = df, pos


@numba.njit(inline="always")
def _worse_first(score_a, slot_a, score_b, slot_b, ties):
    # The order of the top-k heap (ties unused): its root is the worst of the kept k, the lower score,
    # on a tie the later document (larger slot).
    return score_a < score_b or (score_a == score_b and slot_a > slot_b)


_TOP_K = ordered_by(_worse_first)


@numba.njit
def _offer(doc, score, k, size, state, heap_scores, heap_slots, heap_pos):
    """Doc's partial score grew to ``score``; keep the heap the k best. ``state``: bit 1 touched, bit 2 in the heap."""
    if state[doc] == _IN_HEAP:
        heap_scores[heap_pos[doc]] = score  # a grown score can only move away from the root
        _TOP_K.sift_down(heap_scores, heap_slots, heap_pos, None, size, heap_pos[doc])
    elif size < k:
        state[doc] = _IN_HEAP
        size = _TOP_K.push(heap_scores, heap_slots, heap_pos, None, size, score, doc)
    elif _worse_first(heap_scores[0], heap_slots[0], score, doc, None):
        state[heap_slots[0]] = _TOUCHED
        state[doc] = _IN_HEAP
        _TOP_K.replace_root(heap_scores, heap_slots, heap_pos, None, size, score, doc)
    return size


@numba.njit(inline="always")
def _cut(theta):
    return theta - _SLACK * (1.0 + abs(theta))


@numba.njit
def _query_weights(terms, counts, scoring):
    """Each query term's weight ``count * idf`` (float64 ``[n_terms]``; 0 for a term no live document holds)."""
    weights = np.zeros(terms.shape[0])
    for j in range(terms.shape[0]):
        df = scoring.doc_freq[terms[j]]
        if df > 0:
            weights[j] = counts[j] * idf_by_code(scoring.code, df, scoring.num_docs)
    return weights


@numba.njit
def _plan_segment(s, terms, weights, postings, segments, scoring, cache, absent):
    """Find the query terms in segment ``s``, decode their headers and bound them; see :data:`QueryPlan`."""
    num_terms = terms.shape[0]
    block_size = postings.block_size
    bounds = np.zeros(num_terms)
    doc_freqs = np.zeros(num_terms, dtype=np.int64)
    first_blocks = np.full(num_terms, -1, dtype=np.int64)
    starts = np.zeros(num_terms, dtype=np.int64)
    cached_at = np.full(num_terms, -1, dtype=np.int64)  # where a cached term's impacts start, else -1
    low, high = segments.term_start[s], segments.term_start[s + 1]
    cache_low, cache_high = segments.cache_term_start[s], segments.cache_term_start[s + 1]
    for j in range(num_terms):
        if scoring.doc_freq[terms[j]] == 0:  # only deleted documents hold it
            continue
        local = np.searchsorted(segments.terms[low:high], terms[j])
        if local == high - low or segments.terms[low + local] != terms[j]:
            continue
        df, pos = varint_at(postings.data, segments.data_start[s] + np.int64(postings.term_byte_start[low + local]))
        best = 0.0
        if df > block_size:
            first_block, pos = varint_at(postings.data, pos)
            first_block += segments.block_start[s]
            first_blocks[j] = first_block
            for block in range(first_block, first_block + (df + block_size - 1) // block_size):
                best = max(best, np.float64(postings.block_max_impact[block]))
            best = _rescaled_bound(best, segments.bound_scale[s], scoring.code, scoring.k1, scoring.delta, absent)
            slot = cache_low + np.searchsorted(cache.terms[cache_low:cache_high], local)
            if slot < cache_high and cache.terms[slot] == local:
                cached_at[j] = cache.start[slot]
        else:
            doc = segments.slot_start[s]
            scan = pos
            for _ in range(df):
                gap, tf, scan = posting_at(postings.data, scan)
                doc += gap
                best = max(best, _contribution(tf, doc, scoring.tfc_one, scoring.doc_lengths, scoring.avgdl,
                                               scoring.code, scoring.k1, scoring.b, scoring.delta, absent))
        doc_freqs[j], starts[j] = df, pos
        bounds[j] = weights[j] * best
    order = np.argsort(-bounds, kind="mergesort")
    remaining = np.zeros(num_terms + 1)
    for j in range(num_terms - 1, -1, -1):
        remaining[j] = remaining[j + 1] + bounds[order[j]]
    last = -1
    for jj in range(num_terms):
        if doc_freqs[order[jj]] > 0:
            last = jj
    return QueryPlan(doc_freqs, first_blocks, starts, cached_at, order, remaining, last)


@numba.njit(inline="always")
def _prune_block(first_doc, last_doc, block_bound, after, remaining_here, theta, window_max):
    """Block-max check of a block holding slots ``first_doc..last_doc`` at most: return ``(skip, only_touched)``."""
    cut = _cut(theta)
    best = 0.0
    for w in range(first_doc >> WINDOW_SHIFT, (last_doc >> WINDOW_SHIFT) + 1):
        best = max(best, window_max[w])
    skip = best + block_bound + after < cut
    return skip, remaining_here < cut


@numba.njit(inline="always")
def _decode_block(postings, scoring, absent, pos, base, count, docs, impacts):
    """Decode ``count`` postings from byte ``pos`` (slot gaps from ``base``) into ``docs`` / ``impacts[:count]``."""
    doc = base
    for t in range(count):
        gap, tf, pos = posting_at(postings.data, pos)
        doc += gap
        docs[t] = doc
        impacts[t] = _contribution(tf, doc, scoring.tfc_one, scoring.doc_lengths, scoring.avgdl, scoring.code,
                                   scoring.k1, scoring.b, scoring.delta, absent)


@numba.njit(inline="always")
def _accumulate(docs, impacts, first, count, weight, only_touched, windows, k, size, num_touched, live, scratch):
    """Add ``weight * impacts[t]`` to the documents ``docs[t]``, ``t`` in ``first:first + count``, keeping the
    heap (of ``live`` documents only), the touched list and (when ``windows``) the window maxima current;
    return ``(size, num_touched)``.

    With ``only_touched``, documents no earlier term touched are passed over. The loop avoids branches on
    data (touched or not, a new window maximum): with the documents of frequent terms touched at random,
    mispredicted branches cost more than the arithmetic; its branches on ``only_touched`` and ``windows``
    are the same for every posting. Window maxima are carried in a register while the window stays the same.
    """
    acc, state, window_max, heap_scores = scratch.acc, scratch.state, scratch.window_max, scratch.heap_scores
    touched = scratch.touched
    window = np.int64(docs[first]) >> WINDOW_SHIFT
    window_best = window_max[window]
    for t in range(first, first + count):
        doc = np.int64(docs[t])
        held = state[doc] != 0
        if only_touched:
            score = acc[doc] + weight * (impacts[t] * np.float64(held))  # untouched: stays 0
            offer = score >= heap_scores[0] and held
        else:
            touched[num_touched] = doc  # kept only when new
            num_touched += not held
            state[doc] |= _TOUCHED
            score = acc[doc] + weight * impacts[t]
            offer = size < k or score >= heap_scores[0]
        acc[doc] = score
        if windows:
            if doc >> WINDOW_SHIFT != window:
                window_max[window] = window_best
                window = doc >> WINDOW_SHIFT
                window_best = window_max[window]
            window_best = max(window_best, score)
        if offer and live[doc]:
            size = _offer(doc, score, k, size, state, heap_scores, scratch.heap_slots, scratch.heap_pos)
    if windows:
        window_max[window] = window_best
    return size, num_touched


@numba.njit
def _select(size, baseline, scratch, out_slots, out_scores):
    """Pop the heap worst-first into the tail of ``out_*`` so the output is best-first."""
    heap_scores, heap_slots, heap_pos = scratch.heap_scores, scratch.heap_slots, scratch.heap_pos
    for i in range(size - 1, -1, -1):
        out_scores[i] = heap_scores[0] + baseline
        out_slots[i] = heap_slots[0]
        _TOP_K.pop(heap_scores, heap_slots, heap_pos, None, i + 1)


@numba.njit
def _clear(num_touched, scratch):
    """Zero what the query touched, so the scratch is all zero for the next one."""
    for i in range(num_touched):
        doc = scratch.touched[i]
        scratch.acc[doc] = 0.0
        scratch.state[doc] = 0
        scratch.window_max[doc >> WINDOW_SHIFT] = 0.0


@numba.njit
def _score_segment(s, plan, weights, k, prune, size, num_touched, postings, segments, scoring, cache, scratch,
                   absent):
    """Accumulate segment ``s``'s postings of the query terms in ``plan.order``; return ``(size, num_touched)``."""
    block_size = postings.block_size
    slot_start, scale = segments.slot_start[s], segments.bound_scale[s]
    for jj in range(plan.order.shape[0]):
        j = plan.order[jj]
        df, first_block, weight = plan.doc_freqs[j], plan.first_blocks[j], weights[j]
        if df == 0:
            continue
        windows = prune and jj < plan.last  # window maxima serve the block checks of later terms only
        num_blocks = 1 if first_block < 0 else (df + block_size - 1) // block_size
        for i in range(num_blocks):
            only_touched = False
            if first_block < 0:
                pos, base, count = plan.starts[j], slot_start, df
                if prune and size == k:
                    only_touched = plan.remaining[jj] < _cut(scratch.heap_scores[0])
            else:
                block = first_block + i
                pos = segments.data_start[s] + np.int64(postings.block_byte_start[block])
                base = slot_start + (np.int64(postings.block_last_doc[block - 1]) if i > 0 else np.int64(0))
                count = min(block_size, df - i * block_size)
                if prune and size == k:
                    block_bound = weight * _rescaled_bound(np.float64(postings.block_max_impact[block]), scale,
                                                           scoring.code, scoring.k1, scoring.delta, absent)
                    skip, only_touched = _prune_block(
                        base + (i > 0), slot_start + np.int64(postings.block_last_doc[block]), block_bound,
                        plan.remaining[jj + 1], plan.remaining[jj], scratch.heap_scores[0], scratch.window_max)
                    if skip:
                        continue
            if plan.cached_at[j] >= 0:
                size, num_touched = _accumulate(cache.docs, cache.impacts, plan.cached_at[j] + i * block_size, count,
                                                weight, only_touched, windows, k, size, num_touched, scoring.live,
                                                scratch)
            else:
                _decode_block(postings, scoring, absent, pos, base, count, scratch.block_docs, scratch.block_impacts)
                size, num_touched = _accumulate(scratch.block_docs, scratch.block_impacts, 0, count, weight,
                                                only_touched, windows, k, size, num_touched, scoring.live, scratch)
    return size, num_touched


@numba.njit
def _search_one(terms, counts, k, prune, postings, segments, scoring, cache, scratch, out_slots, out_scores):
    """Score one query over every segment; write its top k to ``out_slots`` / ``out_scores`` (``[k]``, best
    first); return how many."""
    absent = tfc_by_code(scoring.code, 0.0, scoring.avgdl, scoring.avgdl, scoring.k1, scoring.b, scoring.delta)
    weights = _query_weights(terms, counts, scoring)
    size = 0
    num_touched = 0
    for s in range(segments.slot_start.shape[0]):
        plan = _plan_segment(s, terms, weights, postings, segments, scoring, cache, absent)
        size, num_touched = _score_segment(s, plan, weights, k, prune, size, num_touched, postings, segments,
                                           scoring, cache, scratch, absent)
    _select(size, weights.sum() * absent, scratch, out_slots, out_scores)
    _clear(num_touched, scratch)
    return size


@numba.njit(cache=True)
def new_scratch(num_slots, k, block_size):
    """Per-thread scratch of :func:`search_range`, all zero between queries.

    Returns
    -------
    Scratch of acc : float64 ``[num_slots]``, state : uint8 ``[num_slots]``, touched : int32 ``[num_slots + 1]``,
    heap_pos : int32 ``[num_slots]``, window_max : float64 ``[num_slots // 2**WINDOW_SHIFT + 1]``,
    heap_scores : float64 ``[k]``, heap_slots : int64 ``[k]``, block_docs : int32 ``[block_size]``,
    block_impacts : float64 ``[block_size]`` (one decoded block)
    """
    return Scratch(np.zeros(num_slots), np.zeros(num_slots, dtype=np.uint8), np.zeros(num_slots + 1, dtype=np.int32),
                   np.zeros(num_slots, dtype=np.int32), np.zeros((num_slots >> WINDOW_SHIFT) + 1),
                   np.zeros(k), np.zeros(k, dtype=np.int64), np.zeros(block_size, dtype=np.int32),
                   np.zeros(block_size))


def scratch_nbytes(num_slots: int) -> int:
    """Bytes of one :func:`new_scratch` set (without the ``[k]`` heap and ``[block_size]`` block arrays); one per
    searching thread."""
    return num_slots * (8 + 1 + 4 + 4) + 4 + 8 * ((num_slots >> WINDOW_SHIFT) + 1)


@numba.njit
def _search_range(first, last, queries, k, prune, postings, segments, scoring, cache, scratch, results):
    for q in range(first, last):
        lo, hi = queries.ptr[q], queries.ptr[q + 1]
        results.sizes[q] = _search_one(queries.terms[lo:hi], queries.counts[lo:hi], k, prune, postings, segments,
                                       scoring, cache, scratch, results.slots[q], results.scores[q])


# The compiled entry points take the groups as plain tuples in their fields' order and name them inside:
# numba's dispatcher types plain tuples of arrays in C, named tuples in Python (costly per single query).
@numba.njit(cache=True)
def _search_range_entry(first, last, queries, k, prune, postings, segments, scoring, cache, scratch, results):
    _search_range(first, last, Queries(*queries), k, prune, PostingArrays(*postings), SegmentTable(*segments),
                  Scoring(*scoring), CachedImpacts(*cache), Scratch(*scratch), Results(*results))


@numba.njit(parallel=True, cache=True)
def _search_parallel_entry(num_chunks, queries, k, prune, postings, segments, scoring, cache, results):
    queries, postings, segments = Queries(*queries), PostingArrays(*postings), SegmentTable(*segments)
    scoring, cache, results = Scoring(*scoring), CachedImpacts(*cache), Results(*results)
    num_queries = queries.ptr.shape[0] - 1
    chunk = (num_queries + num_chunks - 1) // num_chunks
    num_slots = scoring.doc_lengths.shape[0]
    for c in numba.prange(num_chunks):
        # One scratch set per chunk, allocated by the thread that uses it.
        _search_range(c * chunk, min(num_queries, (c + 1) * chunk), queries, k, prune, postings, segments, scoring,
                      cache, new_scratch(num_slots, k, postings.block_size), results)


def search_range(first: int, last: int, queries: Queries, k: int, prune: bool, postings: PostingArrays,
                 segments: SegmentTable, scoring: Scoring, cache: CachedImpacts, scratch: Scratch,
                 results: Results) -> None:
    """Search queries ``first:last`` with one scratch set (see :func:`new_scratch`); fills ``results`` at them."""
    _search_range_entry(first, last, tuple(queries), k, prune, tuple(postings), tuple(segments), tuple(scoring),
                        tuple(cache), tuple(scratch), tuple(results))


def search_parallel(num_chunks: int, queries: Queries, k: int, prune: bool, postings: PostingArrays,
                    segments: SegmentTable, scoring: Scoring, cache: CachedImpacts, results: Results) -> None:
    """Queries split into ``num_chunks`` contiguous chunks, each searched like :func:`search_range`, in parallel."""
    _search_parallel_entry(num_chunks, tuple(queries), k, prune, tuple(postings), tuple(segments), tuple(scoring),
                           tuple(cache), tuple(results))
