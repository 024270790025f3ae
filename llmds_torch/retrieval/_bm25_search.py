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

Stages of one query (:func:`_search_one`): :func:`_plan_query` decodes the term headers and bounds
the terms; per block, :func:`_prune_block` decides whether to skip it; an uncached block is decoded
into the scratch's block buffers by :func:`_decode_block`, and a cached one is read in place; both
feed the one :func:`_accumulate`; :func:`_select` pops the heap into the output and :func:`_clear`
zeroes the scratch. The arrays travel in named groups (:data:`PostingArrays`, :data:`Scoring`,
:data:`CachedImpacts`, :data:`Queries`, :data:`Scratch`, :data:`Results`).
"""

from collections import namedtuple
from dataclasses import dataclass

import numba
import numpy as np

from llmds_torch.heap import ordered_by

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


# Named groups of what the compiled search reads and writes (numba compiles attribute access on them).
PostingArrays = namedtuple("PostingArrays", [
    "data", "term_byte_start", "block_byte_start", "block_last_doc", "block_max_impact", "block_size"])
PostingArrays.__doc__ = "The arrays of a ``postings.BlockedPostings`` and its block size."
Scoring = namedtuple("Scoring", ["tfc_one", "doc_lengths", "num_docs", "avgdl", "code", "k1", "b", "delta"])
Scoring.__doc__ = """BM25 inputs: ``tfc_one`` float64 ``[n_slots]`` (see :func:`tfc_of_one`), ``doc_lengths`` ``[n_slots]``,
the live document count, the average length and the variant's code and parameters."""
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
QueryPlan = namedtuple("QueryPlan", [
    "weights", "doc_freqs", "first_blocks", "starts", "cached_at", "order", "remaining", "baseline", "last"])
QueryPlan.__doc__ = """One query's terms, decoded headers and bounds; ``order`` is the scoring order (descending
bound), ``remaining[j]`` the bound sum of terms ``order[j:]``, ``last`` the position in ``order`` of the last term
with postings."""


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

    def arrays(self) -> "CachedImpacts":
        """The arrays as the compiled search takes them."""
        return CachedImpacts(self.terms, self.start, self.docs, self.impacts)


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
def _plan_query(terms, counts, postings, scoring, cache, absent):
    """Decode the query terms' headers, weigh them and bound them; see :data:`QueryPlan`."""
    num_terms = terms.shape[0]
    block_size = postings.block_size
    weights = np.zeros(num_terms)
    bounds = np.zeros(num_terms)
    doc_freqs = np.zeros(num_terms, dtype=np.int64)
    first_blocks = np.zeros(num_terms, dtype=np.int64)
    starts = np.zeros(num_terms, dtype=np.int64)
    cached_at = np.full(num_terms, -1, dtype=np.int64)  # where a cached term's impacts start, else -1
    baseline = 0.0
    for j in range(num_terms):
        df, first_block, pos = term_header_at(postings.data, postings.term_byte_start, terms[j], block_size)
        doc_freqs[j], first_blocks[j], starts[j] = df, first_block, pos
        if df == 0:
            continue
        weight = counts[j] * idf_by_code(scoring.code, df, scoring.num_docs)
        weights[j] = weight
        baseline += weight * absent
        best = 0.0
        if first_block >= 0:
            for block in range(first_block, first_block + (df + block_size - 1) // block_size):
                best = max(best, np.float64(postings.block_max_impact[block]))
            slot = np.searchsorted(cache.terms, terms[j])
            if slot < cache.terms.shape[0] and cache.terms[slot] == terms[j]:
                cached_at[j] = cache.start[slot]
        else:
            doc = np.int64(0)
            for _ in range(df):
                gap, tf, pos = posting_at(postings.data, pos)
                doc += gap
                best = max(best, _contribution(tf, doc, scoring.tfc_one, scoring.doc_lengths, scoring.avgdl,
                                               scoring.code, scoring.k1, scoring.b, scoring.delta, absent))
        bounds[j] = weight * best
    order = np.argsort(-bounds, kind="mergesort")
    remaining = np.zeros(num_terms + 1)
    for j in range(num_terms - 1, -1, -1):
        remaining[j] = remaining[j + 1] + bounds[order[j]]
    last = -1
    for jj in range(num_terms):
        if doc_freqs[order[jj]] > 0:
            last = jj
    return QueryPlan(weights, doc_freqs, first_blocks, starts, cached_at, order, remaining, baseline, last)


@numba.njit(inline="always")
def _prune_block(postings, block, i, weight, after, remaining_here, theta, window_max):
    """Block-max check of block ``block`` (the term's ``i``-th): return ``(skip, only_touched)``."""
    cut = _cut(theta)
    base = np.int64(postings.block_last_doc[block - 1]) if i > 0 else np.int64(0)
    best = 0.0
    for w in range((base + (i > 0)) >> WINDOW_SHIFT, (np.int64(postings.block_last_doc[block]) >> WINDOW_SHIFT) + 1):
        best = max(best, window_max[w])
    skip = best + weight * np.float64(postings.block_max_impact[block]) + after < cut
    return skip, remaining_here < cut


@numba.njit(inline="always")
def _decode_block(postings, scoring, absent, pos, base, count, docs, impacts):
    """Decode ``count`` postings from byte ``pos`` (doc gaps from ``base``) into ``docs`` / ``impacts[:count]``."""
    doc = base
    for t in range(count):
        gap, tf, pos = posting_at(postings.data, pos)
        doc += gap
        docs[t] = doc
        impacts[t] = _contribution(tf, doc, scoring.tfc_one, scoring.doc_lengths, scoring.avgdl, scoring.code,
                                   scoring.k1, scoring.b, scoring.delta, absent)


@numba.njit(inline="always")
def _accumulate(docs, impacts, first, count, weight, only_touched, windows, k, size, num_touched, scratch):
    """Add ``weight * impacts[t]`` to the documents ``docs[t]``, ``t`` in ``first:first + count``, keeping the
    heap, the touched list and (when ``windows``) the window maxima current; return ``(size, num_touched)``.

    With ``only_touched``, documents no earlier term touched are passed over. The loops avoid branches on
    data (touched or not, a new window maximum): with the documents of frequent terms touched at random,
    mispredicted branches cost more than the arithmetic. Window maxima are carried in a register while
    the window stays the same.
    """
    acc, state, window_max, heap_scores = scratch.acc, scratch.state, scratch.window_max, scratch.heap_scores
    window = np.int64(docs[first]) >> WINDOW_SHIFT
    window_best = window_max[window]
    if only_touched:
        for t in range(first, first + count):
            doc = np.int64(docs[t])
            held = state[doc] != 0
            score = acc[doc] + weight * (impacts[t] * np.float64(held))  # untouched: stays 0
            acc[doc] = score
            if windows:
                if doc >> WINDOW_SHIFT != window:
                    window_max[window] = window_best
                    window = doc >> WINDOW_SHIFT
                    window_best = window_max[window]
                window_best = max(window_best, score)
            if score >= heap_scores[0] and held:
                size = _offer(doc, score, k, size, state, heap_scores, scratch.heap_slots, scratch.heap_pos)
    else:
        touched = scratch.touched
        for t in range(first, first + count):
            doc = np.int64(docs[t])
            touched[num_touched] = doc  # kept only when new
            num_touched += state[doc] == 0
            state[doc] |= _TOUCHED
            score = acc[doc] + weight * impacts[t]
            acc[doc] = score
            if windows:
                if doc >> WINDOW_SHIFT != window:
                    window_max[window] = window_best
                    window = doc >> WINDOW_SHIFT
                    window_best = window_max[window]
                window_best = max(window_best, score)
            if size < k or score >= heap_scores[0]:
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
def _search_one(terms, counts, k, prune, postings, scoring, cache, scratch, out_slots, out_scores):
    """Score one query; write its top k to ``out_slots`` / ``out_scores`` (``[k]``, best first); return how many."""
    absent = tfc_by_code(scoring.code, 0.0, scoring.avgdl, scoring.avgdl, scoring.k1, scoring.b, scoring.delta)
    plan = _plan_query(terms, counts, postings, scoring, cache, absent)
    block_size = postings.block_size
    num_touched = 0
    size = 0
    for jj in range(terms.shape[0]):
        j = plan.order[jj]
        df, first_block, weight = plan.doc_freqs[j], plan.first_blocks[j], plan.weights[j]
        if df == 0:
            continue
        windows = prune and jj < plan.last  # window maxima serve the block checks of later terms only
        num_blocks = 1 if first_block < 0 else (df + block_size - 1) // block_size
        for i in range(num_blocks):
            only_touched = False
            if first_block < 0:
                pos, base, count = plan.starts[j], np.int64(0), df
                if prune and size == k:
                    only_touched = plan.remaining[jj] < _cut(scratch.heap_scores[0])
            else:
                block = first_block + i
                pos = np.int64(postings.block_byte_start[block])
                base = np.int64(postings.block_last_doc[block - 1]) if i > 0 else np.int64(0)
                count = min(block_size, df - i * block_size)
                if prune and size == k:
                    skip, only_touched = _prune_block(postings, block, i, weight, plan.remaining[jj + 1],
                                                      plan.remaining[jj], scratch.heap_scores[0], scratch.window_max)
                    if skip:
                        continue
            if plan.cached_at[j] >= 0:
                size, num_touched = _accumulate(cache.docs, cache.impacts, plan.cached_at[j] + i * block_size, count,
                                                weight, only_touched, windows, k, size, num_touched, scratch)
            else:
                _decode_block(postings, scoring, absent, pos, base, count, scratch.block_docs, scratch.block_impacts)
                size, num_touched = _accumulate(scratch.block_docs, scratch.block_impacts, 0, count, weight,
                                                only_touched, windows, k, size, num_touched, scratch)
    _select(size, plan.baseline, scratch, out_slots, out_scores)
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
def _search_range(first, last, queries, k, prune, postings, scoring, cache, scratch, results):
    for q in range(first, last):
        lo, hi = queries.ptr[q], queries.ptr[q + 1]
        results.sizes[q] = _search_one(queries.terms[lo:hi], queries.counts[lo:hi], k, prune, postings, scoring,
                                       cache, scratch, results.slots[q], results.scores[q])


# The compiled entry points take the groups as plain tuples in their fields' order and name them inside:
# numba's dispatcher types plain tuples of arrays in C, named tuples in Python (costly per single query).
@numba.njit(cache=True)
def _search_range_entry(first, last, queries, k, prune, postings, scoring, cache, scratch, results):
    _search_range(first, last, Queries(*queries), k, prune, PostingArrays(*postings), Scoring(*scoring),
                  CachedImpacts(*cache), Scratch(*scratch), Results(*results))


@numba.njit(parallel=True, cache=True)
def _search_parallel_entry(num_chunks, queries, k, prune, postings, scoring, cache, results):
    queries, postings, scoring = Queries(*queries), PostingArrays(*postings), Scoring(*scoring)
    cache, results = CachedImpacts(*cache), Results(*results)
    num_queries = queries.ptr.shape[0] - 1
    chunk = (num_queries + num_chunks - 1) // num_chunks
    num_slots = scoring.doc_lengths.shape[0]
    for c in numba.prange(num_chunks):
        # One scratch set per chunk, allocated by the thread that uses it.
        _search_range(c * chunk, min(num_queries, (c + 1) * chunk), queries, k, prune, postings, scoring, cache,
                      new_scratch(num_slots, k, postings.block_size), results)


def search_range(first: int, last: int, queries: Queries, k: int, prune: bool, postings: PostingArrays,
                 scoring: Scoring, cache: CachedImpacts, scratch: Scratch, results: Results) -> None:
    """Search queries ``first:last`` with one scratch set (see :func:`new_scratch`); fills ``results`` at them."""
    _search_range_entry(first, last, tuple(queries), k, prune, tuple(postings), tuple(scoring), tuple(cache),
                        tuple(scratch), tuple(results))


def search_parallel(num_chunks: int, queries: Queries, k: int, prune: bool, postings: PostingArrays,
                    scoring: Scoring, cache: CachedImpacts, results: Results) -> None:
    """Queries split into ``num_chunks`` contiguous chunks, each searched like :func:`search_range`, in parallel."""
    _search_parallel_entry(num_chunks, tuple(queries), k, prune, tuple(postings), tuple(scoring), tuple(cache),
                           tuple(results))
