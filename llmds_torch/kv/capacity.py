"""Capacity arithmetic of a paged cache: how many pages tokens take, and what an append costs.
Works on Python ints and on numpy arrays alike (a whole batch at once)."""

import numpy as np


def pages_needed(num_tokens, page_size: int):
    """Pages that hold ``num_tokens`` tokens: ``ceil(num_tokens / page_size)``."""
    return -(-num_tokens // page_size)


def append_cost(num_tokens: np.ndarray, num_pages: np.ndarray, last_page_shared: np.ndarray, add,
                page_size: int) -> tuple[np.ndarray, np.ndarray]:
    """What appending ``add`` tokens to each sequence takes.

    Parameters
    ----------
    num_tokens, num_pages : int64 ``[batch]``
        Tokens and pages each sequence holds now.
    last_page_shared : bool ``[batch]``
        Its last page has other holders (refcount > 1).
    add : int or int64 ``[batch]``

    Returns
    -------
    copy_on_write : bool ``[batch]``: the partly filled last page must be copied first.
    extra : int64 ``[batch]``: new pages.
    """
    copy_on_write = (num_tokens % page_size != 0) & last_page_shared
    return copy_on_write, pages_needed(num_tokens + add, page_size) - num_pages
