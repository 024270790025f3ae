"""Compiled BM25 top-k search over blocked varint postings (the inner loops of InvertedIndex).

Term-at-a-time accumulation into a dense per-document array, with MaxScore-style pruning by
per-block upper bounds, then an exact top-k through a binary heap. Terms are processed in
descending order of their upper bound, the same order with pruning on or off, so every document
that is fully scored gets bit-identical scores either way.

Pruning (when ``prune`` is set): every contribution is >= 0, so partial scores only grow and the
k-th largest partial score ``theta`` is a lower bound of the final k-th score. Once the bounds of
the terms not yet processed sum below ``theta``, no untouched document can enter the top k, so
later terms only update documents already touched; a block is skipped (not even decoded) when no
touched document in its doc-id range could reach ``theta`` even if it scored the block's bound and
every later term's bound. A relative slack of 1e-9 keeps floating-point rounding of bound sums on the
safe side. Skipped documents end strictly below ``theta``, so the top k are exactly those of an
exhaustive run.
"""

import numba
import numpy as np

from .bm25 import tfc_by_code
from .codec import uvarint_at

_SLACK = 1e-9


@numba.njit(inline="always")
def _better(score_a, slot_a, score_b, slot_b):
    # Higher score wins; on a tie, the earlier document (smaller slot).
    return score_a > score_b or (score_a == score_b and slot_a < slot_b)


@numba.njit(inline="always")
def _sift_down(heap_scores, heap_slots, size, i):
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
        heap_scores[i], heap_scores[worst] = heap_scores[worst], heap_scores[i]
        heap_slots[i], heap_slots[worst] = heap_slots[worst], heap_slots[i]
        i = worst


@numba.njit(inline="always")
def _sift_up(heap_scores, heap_slots, i):
    while i > 0:
        parent = (i - 1) // 2
        if _better(heap_scores[parent], heap_slots[parent], heap_scores[i], heap_slots[i]):
            heap_scores[i], heap_scores[parent] = heap_scores[parent], heap_scores[i]
            heap_slots[i], heap_slots[parent] = heap_slots[parent], heap_slots[i]
            i = parent
        else:
            return


@numba.njit
def _top_k(acc, touched, num_touched, k, heap_scores, heap_slots):
    """Keep the k best touched documents in the heap; return how many were kept."""
    size = 0
    for i in range(num_touched):
        slot = touched[i]
        score = acc[slot]
        if size < k:
            heap_scores[size] = score
            heap_slots[size] = slot
            _sift_up(heap_scores, heap_slots, size)
            size += 1
        elif _better(score, slot, heap_scores[0], heap_slots[0]):
            heap_scores[0] = score
            heap_slots[0] = slot
            _sift_down(heap_scores, heap_slots, size, 0)
    return size


@numba.njit
def _kth_best(acc, touched, num_touched, k, heap_scores, heap_slots):
    if num_touched < k:
        return -np.inf
    _top_k(acc, touched, num_touched, k, heap_scores, heap_slots)
    return heap_scores[0]


@numba.njit(inline="always")
def _block_bound(block, weight, absent, block_max_tf, block_min_doc_length, avgdl, code, k1, b, delta):
    tfc = tfc_by_code(code, np.float64(block_max_tf[block]), np.float64(block_min_doc_length[block]),
                      avgdl, k1, b, delta)
    return weight * (tfc - absent)


@numba.njit
def _search_one(terms, weights, k, prune, data, term_block_start, block_byte_start, block_count,
                block_last_doc, block_max_tf, block_min_doc_length, doc_lengths, avgdl, code, k1, b,
                delta, acc, touched_flag, touched, heap_scores, heap_slots, out_slots, out_scores):
    """Score one query; write its top k to ``out_slots`` / ``out_scores`` (``[k]``, best first)."""
    num_terms = terms.shape[0]
    absent = tfc_by_code(code, 0.0, avgdl, avgdl, k1, b, delta)
    bounds = np.zeros(num_terms)
    for j in range(num_terms):
        term = terms[j]
        for block in range(term_block_start[term], term_block_start[term + 1]):
            bound = _block_bound(block, weights[j], absent, block_max_tf, block_min_doc_length, avgdl,
                                 code, k1, b, delta)
            bounds[j] = max(bounds[j], bound)
    order = np.argsort(-bounds, kind="mergesort")
    remaining = np.zeros(num_terms + 1)  # remaining[j]: bound sum of terms order[j:]
    for j in range(num_terms - 1, -1, -1):
        remaining[j] = remaining[j + 1] + bounds[order[j]]

    num_touched = 0
    theta = -np.inf
    essential = True
    candidates = np.empty(0, dtype=np.int64)
    for j in range(num_terms):
        term = terms[order[j]]
        weight = weights[order[j]]
        first_block = term_block_start[term]
        if prune and essential and remaining[j] < theta - _SLACK * (1.0 + abs(theta)):
            essential = False
            candidates = np.sort(touched[:num_touched])
        after = remaining[j + 1]
        if not essential:
            # Keep only touched documents that could still reach theta.
            alive = 0
            for i in range(candidates.shape[0]):
                slot = candidates[i]
                if acc[slot] + bounds[order[j]] + after >= theta - _SLACK * (1.0 + abs(theta)):
                    candidates[alive] = slot
                    alive += 1
            candidates = candidates[:alive]
            if alive == 0:
                break
        cursor = 0
        for block in range(first_block, term_block_start[term + 1]):
            base = block_last_doc[block - 1] if block > first_block else 0
            if not essential:
                while cursor < candidates.shape[0] and candidates[cursor] <= base and block > first_block:
                    cursor += 1
                best = -np.inf
                scan = cursor
                while scan < candidates.shape[0] and candidates[scan] <= block_last_doc[block]:
                    best = max(best, acc[candidates[scan]])
                    scan += 1
                if scan == cursor:
                    continue
                bound = _block_bound(block, weight, absent, block_max_tf, block_min_doc_length, avgdl,
                                     code, k1, b, delta)
                if best + bound + after < theta - _SLACK * (1.0 + abs(theta)):
                    continue
            pos = block_byte_start[block]
            doc = np.int64(base)
            for _ in range(block_count[block]):
                gap, pos = uvarint_at(data, pos)
                tf, pos = uvarint_at(data, pos)
                doc += np.int64(gap)
                if essential:
                    if touched_flag[doc] == 0:
                        touched_flag[doc] = 1
                        touched[num_touched] = doc
                        num_touched += 1
                elif touched_flag[doc] == 0:
                    continue
                tfc = tfc_by_code(code, np.float64(tf), doc_lengths[doc], avgdl, k1, b, delta)
                acc[doc] += weight * (tfc - absent)
        if prune and essential:
            theta = _kth_best(acc, touched, num_touched, k, heap_scores, heap_slots)

    size = _top_k(acc, touched, num_touched, k, heap_scores, heap_slots)
    # Pop worst-first into the tail so the output is best-first.
    for i in range(size - 1, -1, -1):
        out_scores[i] = heap_scores[0]
        out_slots[i] = heap_slots[0]
        heap_scores[0] = heap_scores[i]
        heap_slots[0] = heap_slots[i]
        _sift_down(heap_scores, heap_slots, i, 0)
    for i in range(num_touched):
        acc[touched[i]] = 0.0
        touched_flag[touched[i]] = 0
    return size


@numba.njit(cache=True)
def search_range(first, last, query_ptr, query_terms, query_weights, k, prune, data, term_block_start,
                 block_byte_start, block_count, block_last_doc, block_max_tf, block_min_doc_length, doc_lengths,
                 avgdl, code, k1, b, delta, out_slots, out_scores, out_sizes):
    """Search queries ``first:last`` with one set of per-document scratch arrays."""
    num_slots = doc_lengths.shape[0]
    acc = np.zeros(num_slots)
    touched_flag = np.zeros(num_slots, dtype=np.uint8)
    touched = np.empty(num_slots, dtype=np.int64)
    heap_scores = np.empty(k)
    heap_slots = np.empty(k, dtype=np.int64)
    for q in range(first, last):
        lo, hi = query_ptr[q], query_ptr[q + 1]
        out_sizes[q] = _search_one(
            query_terms[lo:hi], query_weights[lo:hi], k, prune, data, term_block_start, block_byte_start,
            block_count, block_last_doc, block_max_tf, block_min_doc_length, doc_lengths, avgdl, code, k1,
            b, delta, acc, touched_flag, touched, heap_scores, heap_slots, out_slots[q], out_scores[q])


@numba.njit(parallel=True)
def search_parallel(num_chunks, query_ptr, query_terms, query_weights, k, prune, data, term_block_start,
                    block_byte_start, block_count, block_last_doc, block_max_tf, block_min_doc_length, doc_lengths,
                    avgdl, code, k1, b, delta, out_slots, out_scores, out_sizes):
    """Queries split into ``num_chunks`` contiguous chunks, one :func:`search_range` each, in parallel."""
    num_queries = query_ptr.shape[0] - 1
    chunk = (num_queries + num_chunks - 1) // num_chunks
    for c in numba.prange(num_chunks):
        search_range(c * chunk, min(num_queries, (c + 1) * chunk), query_ptr, query_terms, query_weights, k,
                     prune, data, term_block_start, block_byte_start, block_count, block_last_doc, block_max_tf,
                     block_min_doc_length, doc_lengths, avgdl, code, k1, b, delta, out_slots, out_scores,
                     out_sizes)
