"""The shared indexed heap (llmds_torch.heap) against Python's heapq and sorted() as oracles.

Two orders as the library uses them: ties broken by an array indexed by item (the scheduler's
insertion sequence) and ties broken by the item itself with no array (BM25's top k).
"""

import heapq
import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from llmds_torch import heap

CAPACITY = 32


@njit
def smaller_then_earlier(key_a, item_a, key_b, item_b, seq):
    return key_a < key_b or (key_a == key_b and seq[item_a] < seq[item_b])


@njit
def worse_first(score_a, slot_a, score_b, slot_b, ties):
    return score_a < score_b or (score_a == score_b and slot_a > slot_b)


BY_KEY_THEN_SEQ = heap.ordered_by(smaller_then_earlier)
TOP_K = heap.ordered_by(worse_first)


def check_structure(keys, items, where, size, seq):
    """Every item at its recorded position; no child comes before its parent."""
    for i in range(size):
        assert where[items[i]] == i
        if i:
            parent = (i - 1) // 2
            assert not smaller_then_earlier(keys[i], items[i], keys[parent], items[parent], seq)


# Few distinct keys, so that equal keys (and their tie-break) come up often.
key_values = st.sampled_from([0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, -0.0])
ops = st.lists(st.tuples(st.sampled_from(["push", "pop", "update", "remove"]), st.integers(0, CAPACITY - 1),
                         key_values), max_size=200)


@settings(max_examples=200, deadline=None)
@given(st.lists(key_values, max_size=CAPACITY), ops)
def test_push_pop_update_remove_match_heapq(initial, operations):
    """Items ``0..len(initial)-1`` pushed first (a heap several levels deep), then the operations."""
    keys, items = np.zeros(CAPACITY), np.zeros(CAPACITY, dtype=np.int64)
    where, seq = np.zeros(CAPACITY, dtype=np.int64), np.zeros(CAPACITY, dtype=np.int64)
    size, next_seq = 0, 0
    oracle, live = [], {}  # heapq of (key, seq, item) with stale entries skipped; item -> its live entry
    for op, item, key in [("push", item, key) for item, key in enumerate(initial)] + operations:
        if op == "push" and item not in live:
            seq[item] = next_seq
            size = BY_KEY_THEN_SEQ.push(keys, items, where, seq, size, key, item)
        elif op == "update" and item in live:
            seq[item] = next_seq
            BY_KEY_THEN_SEQ.update(keys, items, where, seq, size, item, key)
        elif op == "remove" and item in live:
            assert keys[where[item]] == live.pop(item)[0]
            size = BY_KEY_THEN_SEQ.remove(keys, items, where, seq, size, item)
        elif op == "pop" and live:
            while oracle[0] != live.get(oracle[0][2]):
                heapq.heappop(oracle)
            expected = heapq.heappop(oracle)
            assert (keys[0], items[0]) == (expected[0], expected[2])
            del live[expected[2]]
            size = BY_KEY_THEN_SEQ.pop(keys, items, where, seq, size)
        else:
            continue
        if op in ("push", "update"):
            live[item] = (key, next_seq, item)
            heapq.heappush(oracle, live[item])
            next_seq += 1
        check_structure(keys, items, where, size, seq)
    assert size == len(live)
    drained = []
    while size:
        drained.append((keys[0], items[0]))
        size = BY_KEY_THEN_SEQ.pop(keys, items, where, seq, size)
    assert drained == [(key, item) for key, _, item in sorted(live.values())]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.sampled_from([0.0, 0.5, 1.0, 2.0])), max_size=300),
       st.integers(1, 12))
def test_top_k_of_growing_scores_matches_sorted(increments, k):
    """BM25's use: scores only grow; the heap keeps the k best (ties to the smaller slot), worst at the root."""
    num_slots = 61
    keys, items, where = np.zeros(k), np.zeros(k, dtype=np.int64), np.zeros(num_slots, dtype=np.int64)
    held = np.zeros(num_slots, dtype=bool)
    score = np.zeros(num_slots)
    size = 0
    for slot, increment in increments:
        score[slot] += increment
        if held[slot]:
            keys[where[slot]] = score[slot]
            TOP_K.sift_down(keys, items, where, None, size, where[slot])
        elif size < k:
            held[slot] = True
            size = TOP_K.push(keys, items, where, None, size, score[slot], slot)
        elif worse_first(keys[0], items[0], score[slot], slot, None):
            held[items[0]] = False
            held[slot] = True
            TOP_K.replace_root(keys, items, where, None, size, score[slot], slot)
    touched = sorted({slot for slot, _ in increments}, key=lambda s: (-score[s], s))
    best = []
    while size:
        best.append((items[0], keys[0]))
        size = TOP_K.pop(keys, items, where, None, size)
    assert best[::-1] == [(s, score[s]) for s in touched[:k]]


ORDER_WITH_THE_SCHEDULERS_TYPES = """
import numpy as np
from numba import njit
from llmds_torch.heap import ordered_by
from llmds_torch.sched import IndexedHeap

@njit
def lower_first(key_a, item_a, key_b, item_b, seq):
    return key_a < key_b or (key_a == key_b and seq[item_a] < seq[item_b])

# The same array types as IndexedHeap's, compiled first; then IndexedHeap must still pop the highest first.
by_key = ordered_by(lower_first)
keys, items, where, seq = np.zeros(4), np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64)
by_key.pop(keys, items, where, seq, by_key.push(keys, items, where, seq, 0, 1.0, 0))
heap = IndexedHeap(capacity=2)
heap.push(0, -1.0); heap.push(1, 0.0); heap.push(2, 0.0)
print([heap.pop() for _ in range(3)])
"""


def test_orders_compiled_in_one_process_keep_their_own_code():
    """Two orders' functions share their Python code; each must still run its own order (freshly
    compiled, and with the scheduler's functions loaded from numba's cache)."""
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", ORDER_WITH_THE_SCHEDULERS_TYPES], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "[(1, 0.0), (2, 0.0), (0, -1.0)]"
