"""An indexed max-heap: priorities of keys can be raised, lowered or removed in O(log n).

The heap lives in numpy arrays and every operation runs as one numba-compiled call into
:mod:`llmds_torch.heap`, so a Python caller pays one dict lookup and one native call per operation
instead of a Python loop per level. Keys are any hashable objects; each key owns an integer *slot*:

- ``_keys[i]``       float64 priority of the entry at heap position ``i``
- ``_ints[0, i]``    heap position ``i`` -> slot          (``_ints`` is int64 ``[3, capacity]``)
- ``_ints[1, slot]`` slot -> heap position
- ``_ints[2, slot]`` insertion sequence number of the key (ties pop in increasing sequence)

Order: slot ``a`` comes before slot ``b`` when its priority is higher, or the priorities are
equal and ``seq[a] < seq[b]``. ``push`` and ``update`` both take a fresh sequence number, so an
updated key ties behind every key already present with the same priority.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Iterator

import numpy as np
from numba import njit

from llmds_torch.heap import ordered_by
from llmds_torch.sched.errors import InvalidPriority, KeyAlreadyPresent, KeyNotFound

_INITIAL_CAPACITY = 64


@njit(inline="always")
def _higher_first(priority_a, slot_a, priority_b, slot_b, seq):
    return priority_a > priority_b or (priority_a == priority_b and seq[slot_a] < seq[slot_b])


_BY_PRIORITY = ordered_by(_higher_first)


@njit(cache=True)
def _push(keys, ints, size, slot, priority, seq):
    ints[2, slot] = seq
    _BY_PRIORITY.push(keys, ints[0], ints[1], ints[2], size, priority, slot)


@njit(cache=True)
def _pop(keys, ints, size):
    top = (ints[0, 0], keys[0])
    _BY_PRIORITY.pop(keys, ints[0], ints[1], ints[2], size)
    return top


@njit(cache=True)
def _update(keys, ints, size, slot, priority, seq):
    ints[2, slot] = seq
    _BY_PRIORITY.update(keys, ints[0], ints[1], ints[2], size, slot, priority)


@njit(cache=True)
def _remove(keys, ints, size, slot):
    priority = keys[ints[1, slot]]
    _BY_PRIORITY.remove(keys, ints[0], ints[1], ints[2], size, slot)
    return priority


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

    __slots__ = ("_slot_of", "_key_of", "_free_slots", "_keys", "_ints", "_size", "_next_seq")

    def __init__(self, capacity: int = _INITIAL_CAPACITY):
        capacity = max(int(capacity), 1)
        self._slot_of: dict[Hashable, int] = {}
        self._key_of: list = [None] * capacity
        self._free_slots: list[int] = list(range(capacity - 1, -1, -1))
        self._keys = np.zeros(capacity, dtype=np.float64)
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
        old = len(self._keys)
        new = 2 * old
        keys = np.zeros(new, dtype=np.float64)
        keys[:old] = self._keys
        ints = np.zeros((3, new), dtype=np.int64)
        ints[:, :old] = self._ints
        self._keys, self._ints = keys, ints
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
        _push(self._keys, self._ints, self._size, slot, value, self._next_seq)
        self._next_seq += 1
        self._size += 1

    def update(self, key: Hashable, priority: float) -> None:
        """Set ``key``'s priority (up or down); it ties behind keys already at that priority."""
        slot = self._slot_of.get(key)
        if slot is None:
            raise KeyNotFound(f"key {key!r} is not in the heap; push() it first")
        value = _as_priority(priority)
        _update(self._keys, self._ints, self._size, slot, value, self._next_seq)
        self._next_seq += 1

    def pop(self) -> tuple[Hashable, float]:
        """Remove and return ``(key, priority)`` of the highest priority (earliest among ties)."""
        if self._size == 0:
            raise IndexError("pop from an empty IndexedHeap")
        slot, priority = _pop(self._keys, self._ints, self._size)
        self._size -= 1
        return self._release(slot), priority

    def peek(self) -> tuple[Hashable, float]:
        """``(key, priority)`` that ``pop`` would return, without removing it."""
        if self._size == 0:
            raise IndexError("peek into an empty IndexedHeap")
        return self._key_of[self._ints[0, 0]], float(self._keys[0])

    def remove(self, key: Hashable) -> float:
        """Remove ``key`` and return its priority; :class:`KeyNotFound` if absent."""
        slot = self._slot_of.get(key)
        if slot is None:
            raise KeyNotFound(f"key {key!r} is not in the heap")
        priority = _remove(self._keys, self._ints, self._size, slot)
        self._size -= 1
        self._release(slot)
        return priority

    def priority(self, key: Hashable) -> float:
        """The priority of ``key``; :class:`KeyNotFound` if absent."""
        slot = self._slot_of.get(key)
        if slot is None:
            raise KeyNotFound(f"key {key!r} is not in the heap")
        return float(self._keys[self._ints[1, slot]])

    def _release(self, slot: int) -> Hashable:
        key = self._key_of[slot]
        self._key_of[slot] = None
        del self._slot_of[key]
        self._free_slots.append(slot)
        return key

    def _pop_order(self) -> np.ndarray:
        """Heap positions in pop order."""
        live = self._ints[0, : self._size]
        # lexsort sorts by the last key first: priority descending, then sequence ascending.
        return np.lexsort((self._ints[2, live], -self._keys[: self._size]))

    def items(self) -> Iterator[tuple[Hashable, float]]:
        """``(key, priority)`` pairs in pop order, without changing the heap (O(n log n) snapshot)."""
        order = self._pop_order()
        slots, priorities = self._ints[0, order].tolist(), self._keys[order].tolist()
        key_of = self._key_of
        return iter([(key_of[s], p) for s, p in zip(slots, priorities)])

    def __iter__(self) -> Iterator[Hashable]:
        """Keys in pop order, without changing the heap (a snapshot taken when iteration starts)."""
        key_of = self._key_of
        return iter([key_of[s] for s in self._ints[0, self._pop_order()].tolist()])

    def clear(self) -> None:
        """Remove every key."""
        self.__init__(len(self._keys))
