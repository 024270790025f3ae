"""IndexedHeap against a sorted-list oracle, plus its errors."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds_torch.sched import IndexedHeap, InvalidPriority, KeyAlreadyPresent, KeyNotFound


class SortedListOracle:
    """Entries [(-priority, seq, key)] kept sorted; pop takes the first."""

    def __init__(self):
        self.entries = []
        self.seq = 0

    def _find(self, key):
        for i, entry in enumerate(self.entries):
            if entry[2] == key:
                return i
        return None

    def push(self, key, priority):
        self.entries.append((-priority, self.seq, key))
        self.seq += 1
        self.entries.sort()

    def update(self, key, priority):
        del self.entries[self._find(key)]
        self.push(key, priority)

    def remove(self, key):
        neg, _, _ = self.entries.pop(self._find(key))
        return -neg

    def pop(self):
        neg, _, key = self.entries.pop(0)
        return key, -neg

    def items(self):
        return [(key, -neg) for neg, _, key in self.entries]


# Few distinct priorities so that ties (and their insertion order) are exercised often.
priorities = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.5, math.inf, -math.inf]),
                       st.floats(-1e6, 1e6, allow_nan=False))
keys = st.integers(0, 40)
operations = st.lists(st.tuples(st.sampled_from(["push", "update", "remove", "pop", "peek", "iter"]), keys, priorities),
                      max_size=300)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_matches_sorted_list_oracle(ops):
    heap, oracle = IndexedHeap(capacity=2), SortedListOracle()  # capacity 2 exercises growth
    for op, key, priority in ops:
        present = oracle._find(key) is not None
        if op == "push":
            if present:
                with pytest.raises(KeyAlreadyPresent):
                    heap.push(key, priority)
            else:
                heap.push(key, priority)
                oracle.push(key, priority)
        elif op == "update":
            if present:
                heap.update(key, priority)
                oracle.update(key, priority)
            else:
                with pytest.raises(KeyNotFound):
                    heap.update(key, priority)
        elif op == "remove":
            if present:
                assert heap.remove(key) == oracle.remove(key)
            else:
                with pytest.raises(KeyNotFound):
                    heap.remove(key)
        elif op == "pop":
            if oracle.entries:
                assert heap.pop() == oracle.pop()
            else:
                with pytest.raises(IndexError):
                    heap.pop()
        elif op == "peek":
            if oracle.entries:
                assert heap.peek() == oracle.items()[0]
            else:
                with pytest.raises(IndexError):
                    heap.peek()
        else:
            assert list(heap.items()) == oracle.items()
            assert list(heap) == [k for k, _ in oracle.items()]
        assert len(heap) == len(oracle.entries)
        assert (key in heap) == (oracle._find(key) is not None)
    drained = [heap.pop() for _ in range(len(heap))]
    assert drained == oracle.items()
    assert len(heap) == 0


def test_ties_pop_in_insertion_order_and_update_counts_as_new_insertion():
    heap = IndexedHeap()
    for key in "abcd":
        heap.push(key, 1.0)
    heap.update("a", 1.0)  # same priority, but now the newest
    assert [heap.pop()[0] for _ in range(4)] == ["b", "c", "d", "a"]


def test_update_both_directions_and_remove_middle():
    heap = IndexedHeap()
    for i, p in enumerate([5.0, 3.0, 8.0, 1.0, 9.0]):
        heap.push(i, p)
    heap.update(4, -2.0)  # from the top to the bottom
    heap.update(3, 10.0)  # from the bottom to the top
    assert heap.remove(0) == 5.0
    assert heap.priority(2) == 8.0
    assert list(heap.items()) == [(3, 10.0), (2, 8.0), (1, 3.0), (4, -2.0)]
    assert len(heap) == 4  # iteration did not mutate
    assert [heap.pop() for _ in range(4)] == [(3, 10.0), (2, 8.0), (1, 3.0), (4, -2.0)]


def test_holds_only_live_entries():
    heap = IndexedHeap(capacity=4)
    for i in range(100):
        heap.push(i, float(i))
    for round_ in range(50):
        for i in range(100):
            heap.update(i, float((i * 7 + round_) % 13))
    assert len(heap) == 100
    assert len(heap._keys) <= 128  # capacity tracks live keys; updates leave no garbage
    for i in range(100):
        heap.remove(i)
    assert len(heap) == 0 and not heap
    heap.push("again", 1.0)
    assert heap.pop() == ("again", 1.0)


def test_bad_input_changes_nothing():
    heap = IndexedHeap()
    heap.push("a", 1.0)
    with pytest.raises(InvalidPriority):
        heap.push("b", float("nan"))
    with pytest.raises(InvalidPriority):
        heap.update("a", float("nan"))
    with pytest.raises(TypeError):
        heap.push("b", "3")
    with pytest.raises(TypeError):
        heap.push("b", True)
    with pytest.raises(KeyAlreadyPresent):
        heap.push("a", 2.0)
    with pytest.raises(KeyError):  # both key errors are KeyErrors
        heap.remove("zzz")
    assert "b" not in heap
    assert list(heap.items()) == [("a", 1.0)]


def test_accepts_ints_and_numpy_reals():
    import numpy as np

    heap = IndexedHeap()
    heap.push("i", 3)
    heap.push("f32", np.float32(2.5))
    heap.push("i64", np.int64(7))
    assert [heap.pop()[0] for _ in range(3)] == ["i64", "i", "f32"]
