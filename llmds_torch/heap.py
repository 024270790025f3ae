"""Indexed binary heaps over parallel numpy arrays, compiled with numba.

The scheduler's :class:`~llmds_torch.sched.IndexedHeap` and BM25's top-k heap are both this heap.
A heap of ``size`` entries is three arrays:

- ``keys[i]``     float64 key of the entry at position ``i < size``
- ``items[i]``    its item, an integer in ``[0, len(where))``, held at most once
- ``where[item]`` the item's position, ``where[items[i]] == i``, so that an item can be re-keyed or
  removed in O(log n)

The order is a compiled function ``before(key_a, item_a, key_b, item_b, ties) -> bool``, true when
entry ``a`` belongs above entry ``b``; it must be a strict total order on the entries held. ``ties``
is what the order may read to break ties among equal keys, e.g. an array indexed by item (an order
that breaks ties by the item itself takes ``None``). The root, ``items[0]``, comes first.

:func:`ordered_by` compiles the heap's functions for one order, which they call directly, so a heap
costs what one written by hand for its order costs. Use them from compiled code, e.g.

    BY_SCORE = ordered_by(lower_score_first)      # module level

    @njit
    def top_k(...):
        size = BY_SCORE.push(keys, items, where, None, size, score, doc)

The functions are compiled into their callers. numba's on-disk cache of a caller would not notice an
edit of this file by itself; the library's cache folder is keyed by all compiled sources
(:mod:`llmds_torch.jit_cache`), so an edit here starts a fresh cache.
"""

from collections import namedtuple

from numba import njit

HeapFunctions = namedtuple("HeapFunctions", ["sift_up", "sift_down", "push", "pop", "replace_root", "update",
                                             "remove"])
HeapFunctions.__doc__ = "The compiled functions of a heap for one order (see :func:`ordered_by`)."


@njit(inline="always")
def _place(keys, items, where, i, key, item):
    """Write the entry ``(key, item)`` at position ``i``."""
    keys[i] = key
    items[i] = item
    where[item] = i


def ordered_by(before) -> HeapFunctions:
    """The heap functions for the order ``before`` (a numba-compiled function, see the module docstring).

    Each takes the heap's arrays ``keys, items, where, ties`` first. Sifts move a hole instead of
    swapping: each level writes one entry, and the moving entry is written once at the end.
    """
    order = f"{before.py_func.__module__}.{before.py_func.__qualname__}"

    def compiled(func):
        # Every order's functions share these Python definitions, and numba tells compiled functions
        # apart by qualified name: without a name of their own, code compiled for one order can stand in
        # for another's with the same argument types (tests/test_heap.py runs that case).
        func.__qualname__ = f"ordered_by({order}).{func.__name__}"
        return njit(func)

    @compiled
    def sift_up(keys, items, where, ties, i):
        """Move the entry at position ``i`` towards the root until its parent comes before it."""
        key = keys[i]
        item = items[i]
        while i > 0:
            parent = (i - 1) >> 1
            if not before(key, item, keys[parent], items[parent], ties):
                break
            _place(keys, items, where, i, keys[parent], items[parent])
            i = parent
        _place(keys, items, where, i, key, item)

    @compiled
    def sift_down(keys, items, where, ties, size, i):
        """Move the entry at position ``i`` away from the root until it comes before both children."""
        key = keys[i]
        item = items[i]
        while True:
            child = 2 * i + 1
            if child >= size:
                break
            right = child + 1
            if right < size and before(keys[right], items[right], keys[child], items[child], ties):
                child = right
            if not before(keys[child], items[child], key, item, ties):
                break
            _place(keys, items, where, i, keys[child], items[child])
            i = child
        _place(keys, items, where, i, key, item)

    @compiled
    def push(keys, items, where, ties, size, key, item):
        """Add ``item`` (not held) with ``key``; the arrays have room for ``size + 1``. Returns the new size."""
        keys[size] = key
        items[size] = item
        sift_up(keys, items, where, ties, size)
        return size + 1

    @compiled
    def pop(keys, items, where, ties, size):
        """Remove the root (read ``keys[0]``, ``items[0]`` before); ``size > 0``. Returns the new size."""
        size -= 1
        if size > 0:
            keys[0] = keys[size]
            items[0] = items[size]
            sift_down(keys, items, where, ties, size, 0)
        return size

    @compiled
    def replace_root(keys, items, where, ties, size, key, item):
        """Remove the root and add ``item`` (not held) with ``key``, in one sift; ``size > 0``."""
        keys[0] = key
        items[0] = item
        sift_down(keys, items, where, ties, size, 0)

    @compiled
    def update(keys, items, where, ties, size, item, key):
        """Give the held ``item`` the key ``key``; it moves either way. Update ``ties`` for it first."""
        i = where[item]
        keys[i] = key
        sift_up(keys, items, where, ties, i)
        sift_down(keys, items, where, ties, size, where[item])

    @compiled
    def remove(keys, items, where, ties, size, item):
        """Remove the held ``item``. Returns the new size."""
        i = where[item]
        size -= 1
        if i != size:
            keys[i] = keys[size]
            items[i] = items[size]
            moved = items[i]
            sift_up(keys, items, where, ties, i)
            sift_down(keys, items, where, ties, size, where[moved])
        return size

    return HeapFunctions(sift_up, sift_down, push, pop, replace_root, update, remove)
