"""The checks every retrieval structure runs on the ids it is given, so the same bad id raises the
same error in ``HNSW``, ``FlatIndex``, ``InvertedIndex``, ``RetrievalPipeline`` and fusion.

An id is a non-negative integer that fits int64 (``-1`` pads search results). Ids may come as one
int, a sequence of ints, a numpy integer array or a torch integer tensor, of any shape (flattened).

==========================================================  ================
bad id                                                      error
==========================================================  ================
a bool, float, string or anything not an integer            ``InvalidIds``
negative, or larger than ``2**63 - 1``                      ``InvalidIds``
more or fewer ids than vectors / documents                  ``InvalidIds``
repeated within one call, or (adding) already present       ``DuplicateIds``
(deleting) not in the index                                 ``UnknownIds``
==========================================================  ================
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np
import torch

from .errors import DuplicateIds, InvalidIds, UnknownIds

MAX_ID = int(np.iinfo(np.int64).max)
_SHOWN = 5  # offending ids quoted in a message


def as_ids(ids, what: str = "ids") -> np.ndarray:
    """``ids`` as int64 ``[n]``, or ``InvalidIds`` for anything but non-negative int64 integers."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    values = None  # the Python values, when the ids did not come as an array
    if not isinstance(ids, np.ndarray):
        values = list(ids) if isinstance(ids, (list, tuple, range)) else [ids]
        if any(isinstance(value, (bool, np.bool_)) for value in values):
            raise InvalidIds(f"{what} must be integers; got a bool")
    try:
        array = np.asarray(ids if values is None else values)
    except (ValueError, TypeError, OverflowError):
        raise InvalidIds(f"{what} must be a flat sequence of integers") from None
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.dtype.kind == "b":
        raise InvalidIds(f"{what} must be integers; got a bool")
    if array.dtype.kind not in "iu":
        if values is not None and all(isinstance(value, (int, np.integer)) for value in values):
            raise InvalidIds(f"{what} must fit int64, 0 to {MAX_ID}")  # numpy found no common int dtype
        raise InvalidIds(f"{what} must be integers; got {array.dtype}")
    if array.dtype.kind == "u" and array.max() > MAX_ID:
        raise InvalidIds(f"{what} must fit int64, 0 to {MAX_ID}; got {array[array > MAX_ID][:_SHOWN].tolist()}")
    array = array.astype(np.int64).reshape(-1)
    if array.min() < 0:
        raise InvalidIds(f"{what} must be non-negative (-1 pads search results); got {array[array < 0][:_SHOWN].tolist()}")
    return array


def repeated(ids: np.ndarray) -> np.ndarray:
    """The values that occur more than once in int64 ``ids [n]``, sorted."""
    values, counts = np.unique(ids, return_counts=True)
    return values[counts > 1]


def contained(ids: np.ndarray, present, present_sorted: bool = False) -> np.ndarray:
    """Bool ``[n]``: which of ``ids`` are in ``present`` (a dict, set, or numpy / torch array of ids;
    ``present_sorted``: the array is sorted ascending, so a binary search answers)."""
    if isinstance(present, torch.Tensor):
        present = present.cpu().numpy()
    if isinstance(present, np.ndarray) and present_sorted:
        if present.size == 0:
            return np.zeros(ids.size, dtype=bool)
        at = np.minimum(np.searchsorted(present, ids), present.size - 1)
        return present[at] == ids
    if isinstance(present, np.ndarray):
        return np.isin(ids, present)
    return np.fromiter((value in present for value in ids.tolist()), dtype=bool, count=ids.size)


def check_distinct_ids(ids, what: str = "ids") -> np.ndarray:
    """``as_ids``, then ``DuplicateIds`` if a value repeats."""
    array = as_ids(ids, what)
    twice = repeated(array)
    if twice.size:
        raise DuplicateIds(f"{what} {twice[:_SHOWN].tolist()} repeat within this call; ids must be unique")
    return array


def check_new_ids(ids, count: int, present: Container | np.ndarray | torch.Tensor, items: str = "items",
                  present_sorted: bool = False) -> np.ndarray:
    """Ids for ``count`` new ``items``: int64 ``[count]``.

    Raises ``InvalidIds`` (not ids, or not ``count`` of them) or ``DuplicateIds`` (repeated, or
    already in ``present``).
    """
    array = as_ids(ids)
    if array.size != count:
        raise InvalidIds(f"got {array.size} ids for {count} {items}; give one id per item")
    array = check_distinct_ids(array)
    already = array[contained(array, present, present_sorted)]
    if already.size:
        raise DuplicateIds(f"ids {already[:_SHOWN].tolist()} are already present; delete them first or use new ids")
    return array


def default_ids(next_id: int, count: int) -> np.ndarray:
    """``count`` consecutive ids from ``next_id``: int64 ``[count]``, or ``InvalidIds`` when they would
    pass ``2**63 - 1`` (an id that large was given; give ids explicitly from then on)."""
    if next_id + count - 1 > MAX_ID:
        raise InvalidIds(f"no {count} default ids left after {next_id - 1}: ids stop at {MAX_ID}; pass ids explicitly")
    return np.arange(next_id, next_id + count, dtype=np.int64)


def check_known_ids(ids, present: Container | np.ndarray | torch.Tensor, present_sorted: bool = False) -> np.ndarray:
    """Ids of present entries (to delete): int64 ``[n]``.

    Raises ``InvalidIds`` (not ids), ``DuplicateIds`` (repeated) or ``UnknownIds`` (not in
    ``present``: never added, or already deleted).
    """
    array = check_distinct_ids(ids)
    missing = array[~contained(array, present, present_sorted)]
    if missing.size:
        raise UnknownIds(f"ids {missing[:_SHOWN].tolist()} are not in the index (never added or already deleted)")
    return array
