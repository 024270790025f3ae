"""Dropping one block-table reference from each of many pages, as one compiled loop.

A release touches every page of a sequence; done as numpy calls it costs a dozen small-array
operations (each about a microsecond), done in Python a loop over scalar array items. One numba call
decrements the reference counts, moves pages that reach zero to their new state, and hands back the
ones the free list and the eviction policy must take.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def release_pages(pages, refcount, state, published, pins, free_state, cached_state, out):
    """Drop one reference from each of ``pages`` (distinct), in order.

    Parameters
    ----------
    pages : int ``[n]``
    refcount : int32 ``[num_pages]``, state : int8 ``[num_pages]``, published : bool ``[num_pages]``,
    pins : int32 ``[num_pages]``
        The allocator's page arrays, changed in place: a page reaching refcount 0 takes state
        ``cached_state`` when published, else ``free_state``.
    out : int64 ``[2 * n]``
        Receives the pages that became free at ``out[:num_free]`` and those that became cached and
        unpinned (evictable) at ``out[n:n + num_evictable]``, each in the order of ``pages``.

    Returns
    -------
    (num_free, num_cached, num_evictable)
    """
    n = pages.shape[0]
    num_free = 0
    num_cached = 0
    num_evictable = 0
    for i in range(n):
        page = pages[i]
        left = refcount[page] - 1
        refcount[page] = left
        if left == 0:
            if published[page]:
                state[page] = cached_state
                num_cached += 1
                if pins[page] == 0:
                    out[n + num_evictable] = page
                    num_evictable += 1
            else:
                state[page] = free_state
                out[num_free] = page
                num_free += 1
    return num_free, num_cached, num_evictable


def release_buffer(n: int, buffer: np.ndarray | None) -> np.ndarray:
    """An int64 ``[>= 2 * n]`` scratch array for ``release_pages``, reusing ``buffer`` when it fits."""
    if buffer is None or buffer.shape[0] < 2 * n:
        return np.empty(max(2 * n, 256), dtype=np.int64)
    return buffer
