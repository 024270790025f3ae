"""An indexed max-heap: priorities of keys can be raised, lowered or removed in O(log n).

The heap lives in numpy arrays and every sift runs as one numba-compiled call, so a Python caller
pays one dict lookup and one native call per operation instead of a Python loop per level. Keys
are any hashable objects; each key owns an integer *slot* in the arrays:

- ``_prio[slot]``   float64 priority of the key in ``slot``
- ``_ints[0, i]``   heap position ``i`` -> slot          (``_ints`` is int64 ``[3, capacity]``)
- ``_ints[1, slot]`` slot -> heap position
- ``_ints[2, slot]`` insertion sequence number of the key (ties pop in increasing sequence)

Order: slot ``a`` comes before slot ``b`` when ``prio[a] > prio[b]``, or the priorities are
equal and ``seq[a] < seq[b]``. ``push`` and ``update`` both take a fresh sequence number, so an
updated key ties behind every key already present with the same priority.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Iterator

import numpy as np
from numba import njit

from llmds_torch.sched.errors import InvalidPriority, KeyAlreadyPresent, KeyNotFound

_INITIAL_CAPACITY = 64


@njit(cache=True, inline="always")
def _before(prio, seq, a, b):
    pa = prio[a]
    pb = prio[b]
    return pa > pb or (pa == pb and seq[a] < seq[b])


@njit(cache=True)
def _sift_up(prio, ints, i):
    heap = ints[0]
    pos = ints[1]
    seq = ints[2]
    slot = heap[i]
    while i > 0:
        parent = (i - 1) >> 1
        parent_slot = heap[parent]
        if not _before(prio, seq, slot, parent_slot):
            break
        heap[i] = parent_slot
        pos[parent_slot] = i
        i = parent
    heap[i] = slot
    pos[slot] = i


@njit(cache=True)
def _sift_down(prio, ints, i, size):
    heap = ints[0]
    pos = ints[1]
    seq = ints[2]
    slot = heap[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        right = child + 1
        if right < size and _before(prio, seq, heap[right], heap[child]):
            child = right
        child_slot = heap[child]
        if not _before(prio, seq, child_slot, slot):
            break
        heap[i] = child_slot
        pos[child_slot] = i
        i = child
    heap[i] = slot
    pos[slot] = i


@njit(cache=True)
def _push(prio, ints, size, slot, priority, seq):
    prio[slot] = priority
    ints[2, slot] = seq
    ints[0, size] = slot
    ints[1, slot] = size
    _sift_up(prio, ints, size)


@njit(cache=True)
def _pop(prio, ints, size):
    heap = ints[0]
    top = heap[0]
    last = heap[size - 1]
    size -= 1
    if size > 0:
        heap[0] = last
        ints[1, last] = 0
        _sift_down(prio, ints, 0, size)
    return top


@njit(cache=True)
def _update(prio, ints, size, slot, priority, seq):
    prio[slot] = priority
    ints[2, slot] = seq
    _sift_up(prio, ints, ints[1, slot])
    _sift_down(prio, ints, ints[1, slot], size)


@njit(cache=True)
def _remove(prio, ints, size, slot):
    heap = ints[0]
    i = ints[1, slot]
    last = heap[size - 1]
    size -= 1
    if i != size:
        heap[i] = last
        ints[1, last] = i
        _sift_up(prio, ints, i)
        _sift_down(prio, ints, ints[1, last], size)


def _as_priority(priority) -> float:
    """The priority as a float; TypeError for non-reals, InvalidPriority for NaN."""
    kind = type(priority)
    if kind is not float and kind is not int:
        if isinstance(priority, bool) or not isinstance(priority, numbers.Real):
            raise TypeError(f"priority must be a real number (int or float), got {kind.__name__}")
    value = float(priority)
    if value != value:
        raise InvalidPriority("priority is NaN; priorities must be comparable (±inf is allowed)")
    return value


class IndexedHeap:
    """A max-heap of ``(key, priority)`` pairs addressed by key.

    ``pop`` returns the key with the highest priority; among equal priorities the one pushed or
    updated earliest. Every operation but iteration is O(log n); the heap holds exactly its live
    keys (no lazy deletion), so ``len`` is exact and memory is O(n).

    Errors: ``push`` of a present key raises :class:`KeyAlreadyPresent` (a ``KeyError``);
    ``update`` / ``remove`` / ``priority`` of an absent key raise :class:`KeyNotFound` (a
    ``KeyError``); ``pop`` / ``peek`` of an empty heap raise ``IndexError``; a NaN priority
    raises :class:`InvalidPriority` (a ``ValueError``), a non-real one ``TypeError``. A refused
    call changes nothing.

    Examples
    --------
    >>> h = IndexedHeap()
    >>> h.push("a", 1.0); h.push("b", 3.0); h.update("a", 5.0)
    >>> h.pop()
    ('a', 5.0)
    """

    __slots__ = ("_slot_of", "_key_of", "_free_slots", "_prio", "_ints", "_size", "_next_seq")

    def __init__(self, capacity: int = _INITIAL_CAPACITY):
        capacity = max(int(capacity), 1)
        self._slot_of: dict[Hashable, int] = {}
        self._key_of: list = [None] * capacity
        self._free_slots: list[int] = list(range(capacity - 1, -1, -1))
        self._prio = np.zeros(capacity, dtype=np.float64)
        self._ints = np.zeros((3, capacity), dtype=np.int64)
        self._size = 0
        self._next_seq = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __contains__(self, key) -> bool:
        return key in self._slot_of

    def __repr__(self) -> str:
        return f"IndexedHeap(size={self._size})"

    def _grow(self) -> None:
        old = len(self._prio)
        new = 2 * old
        prio = np.zeros(new, dtype=np.float64)
        prio[:old] = self._prio
        ints = np.zeros((3, new), dtype=np.int64)
        ints[:, :old] = self._ints
        self._prio, self._ints = prio, ints
        self._key_of.extend([None] * (new - old))
        self._free_slots.extend(range(new - 1, old - 1, -1))

    def push(self, key: Hashable, priority: float) -> None:
        """Insert ``key`` with ``priority``; :class:`KeyAlreadyPresent` if it is already held."""
        if key in self._slot_of:
            raise KeyAlreadyPresent(f"key {key!r} is already in the heap; use update() to change it")
        value = _as_priority(priority)
        if not self._free_slots:
            self._grow()
        slot = self._free_slots.pop()
        self._slot_of[key] = slot
        self._key_of[slot] = key
        _push(self._prio, self._ints, self._size, slot, value, self._next_seq)
        self._next_seq += 1
        self._size += 1

    def update(self, key: Hashable, priority: float) -> None:
        """Set ``key``'s priority (up or down); it ties behind keys already at that priority."""
        slot = self._slot_of.get(key)
        if slot is None:
            raise KeyNotFound(f"key {key!r} is not in the heap; push() it first")
        value = _as_priority(priority)
        _update(self._prio, self._ints, self._size, slot, value, self._next_seq)
        self._next_seq += 1

    def pop(self) -> tuple[Hashable, float]:
        """Remove and return ``(key, priority)`` of the highest priority (earliest among ties)."""
        if self._size == 0:
            raise IndexError("pop from an empty IndexedHeap")
        slot = _pop(self._prio, self._ints, self._size)
        self._size -= 1
        return self._release(slot)

    def peek(self) -> tuple[Hashable, float]:
        """``(key, priority)`` that ``pop`` would return, without removing it."""
        if self._size == 0:
            raise IndexError("peek into an empty IndexedHeap")
        slot = int(self._ints[0, 0])
        return self._key_of[slot], float(self._prio[slot])

    def remove(self, key: Hashable) -> float:
        """Remove ``key`` and return its priority; :class:`KeyNotFound` if absent."""
        slot = self._slot_of.get(key)
        if slot is None:
            raise KeyNotFound(f"key {key!r} is not in the heap")
        _remove(self._prio, self._ints, self._size, slot)
        self._size -= 1
        return self._release(slot)[1]

    def priority(self, key: Hashable) -> float:
        """The priority of ``key``; :class:`KeyNotFound` if absent."""
        slot = self._slot_of.get(key)
        if slot is None:
            raise KeyNotFound(f"key {key!r} is not in the heap")
        return float(self._prio[slot])

    def _release(self, slot: int) -> tuple[Hashable, float]:
        key = self._key_of[slot]
        self._key_of[slot] = None
        del self._slot_of[key]
        self._free_slots.append(slot)
        return key, float(self._prio[slot])

    def _ordered_slots(self) -> np.ndarray:
        live = self._ints[0, : self._size]
        # lexsort sorts by the last key first: priority descending, then sequence ascending.
        order = np.lexsort((self._ints[2, live], -self._prio[live]))
        return live[order]

    def items(self) -> Iterator[tuple[Hashable, float]]:
        """``(key, priority)`` pairs in pop order, without changing the heap (O(n log n) snapshot)."""
        slots = self._ordered_slots()
        key_of, prio = self._key_of, self._prio
        return iter([(key_of[s], float(prio[s])) for s in slots.tolist()])

    def __iter__(self) -> Iterator[Hashable]:
        """Keys in pop order, without changing the heap (a snapshot taken when iteration starts)."""
        key_of = self._key_of
        return iter([key_of[s] for s in self._ordered_slots().tolist()])

    def clear(self) -> None:
        """Remove every key."""
        self.__init__(len(self._prio))
