"""What an HNSW file must satisfy before :meth:`HNSW.load` uses it.

The compiled search follows links without bounds checks, so a crafted link, offset or level could
read outside the arrays. :func:`check_hnsw_contents` refuses (``CorruptIndexFile`` naming the
field) any file that breaks the index's invariants; ``n`` is the number of slots, ``r`` the
number of upper-level rows:

- metadata of the right JSON types and ranges: ``dim`` in ``[1, MAX_DIM]``, ``M`` in
  ``[2, MAX_M]``, ``ef_construction`` and ``ef_search`` in ``[1, MAX_EF]``, a known metric and
  vector storage (files without ``storage`` hold ``"float32"``), a restorable generator state;
  these limits keep a tiny file from describing a huge allocation;
- every saved array of :data:`~llmds_torch.retrieval.hnsw_storage.FIELDS` for that storage, of
  the exact dtype and shape: vectors float32 ``[n, dim]`` (finite), links0 int32 ``[n, 2M]``,
  upper_links int32 ``[r, M]``, upper_offset int64, upper_rows / levels int32, ids int64, live
  bool, each ``[n]``; with ``"sq8"`` also sq_low / sq_high float32 ``[dim]``, finite, low <= high,
  and every live vector inside ``[sq_low, sq_high]`` (the codes are recomputed from the vectors);
- ids of live slots unique and >= 0, of free slots -1; ``next_id`` above every live id;
- a live slot's level in ``[0, upper_rows]``, a free slot's -1; every slot's upper rows inside
  ``[0, r)`` and disjoint from every other slot's;
- every link in ``[-1, n)``, ``-1`` only as padding at the end of a list; the lists of live slots
  name only live slots whose level reaches the list's level, free slots' level-0 lists are empty;
- ``entry`` a live slot on ``max_level``, the highest live level; both -1 when nothing is live.
"""

from __future__ import annotations

import numpy as np

from .errors import CorruptIndexFile
from .hnsw_storage import STORAGES, fields_for
from .validation import array, meta_choice, meta_int, meta_type, require, unique, values_in

MAX_DIM = 2**20
MAX_M = 2**16
MAX_EF = 2**31 - 1
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def check_hnsw_contents(meta: dict, arrays: dict, metrics) -> dict:
    """Check a loaded HNSW file; return its metadata with every value checked.

    Parameters
    ----------
    meta : the file's metadata
    arrays : the file's arrays by name
    metrics : the metric names the index knows
    """
    checked = {
        "dim": meta_int(meta, "dim", 1, MAX_DIM), "M": meta_int(meta, "M", 2, MAX_M),
        "ef_construction": meta_int(meta, "ef_construction", 1, MAX_EF),
        "metric": meta_choice(meta, "metric", metrics), "seed": meta_int(meta, "seed", 0, 2**128),
        "ef_search": meta_int(meta, "ef_search", 1, MAX_EF), "entry": meta_int(meta, "entry", -1, _INT32_MAX),
        "max_level": meta_int(meta, "max_level", -1, _INT32_MAX), "next_id": meta_int(meta, "next_id", 0, _INT64_MAX),
        "rng_state": meta_type(meta, "rng_state", dict),
        "storage": meta_choice(meta, "storage", STORAGES) if "storage" in meta else "float32",
    }
    try:
        np.random.default_rng(0).bit_generator.state = checked["rng_state"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise CorruptIndexFile(f"field 'rng_state' is not a generator state: {exc}") from None
    dim, M = checked["dim"], checked["M"]
    sizes = {"dim": dim, "M": M, "M0": 2 * M, "slots": None, "upper": None}
    for field in fields_for(checked["storage"]):  # dtypes and shapes; then the row counts agree
        if field.saved:
            array(arrays, field.name, field.dtype, field.shape(sizes))
    vectors, upper_links, links0 = arrays["vectors"], arrays["upper_links"], arrays["links0"]
    n, r = vectors.shape[0], upper_links.shape[0]
    require(n <= _INT32_MAX, f"array 'vectors' has {n} rows; at most {_INT32_MAX} slots are allowed")
    sizes.update(slots=n, upper=r)
    for field in fields_for(checked["storage"]):
        if field.saved:
            array(arrays, field.name, field.dtype, field.shape(sizes))
    upper_offset, upper_rows, levels = arrays["upper_offset"], arrays["upper_rows"], arrays["levels"]
    ids, live = arrays["ids"], arrays["live"]

    require(bool(np.isfinite(vectors).all()), "array 'vectors' holds NaN or infinity")
    if checked["storage"] == "sq8":
        _check_quantiser_range(arrays["sq_low"], arrays["sq_high"], vectors[live])
    live_ids = ids[live]
    values_in(live_ids, "ids", 0, _INT64_MAX)
    unique(live_ids, "ids")
    require(bool((ids[~live] == -1).all()), "array 'ids' gives a free slot an id; free slots hold -1")
    require(live_ids.size == 0 or checked["next_id"] > int(live_ids.max()),
            f"field 'next_id' is {checked['next_id']}, not above the largest id")

    values_in(upper_rows, "upper_rows", 0, r)
    require(bool((levels[~live] == -1).all()), "array 'levels' gives a free slot a level; free slots hold -1")
    values_in(levels[live], "levels", 0, r)
    require(bool((levels[live] <= upper_rows[live]).all()), "array 'levels' exceeds the slot's upper_rows")
    _check_upper_rows(upper_offset, upper_rows, r)

    _check_link_lists(links0, "links0", n)
    _check_link_lists(upper_links, "upper_links", n)
    require(bool((links0[~live] == -1).all()), "array 'links0' gives a free slot neighbours")
    targets = links0[live]
    require(bool(live[targets[targets >= 0]].all()), "array 'links0' links to a free slot")
    _check_upper_targets(upper_links, upper_offset, levels, live)

    entry, max_level = checked["entry"], checked["max_level"]
    if not live.any():
        require(entry == -1 and max_level == -1, "fields 'entry' and 'max_level' must be -1 when no slot is live")
    else:
        require(0 <= entry < n and bool(live[entry]), f"field 'entry' is {entry}, not a live slot")
        top = int(levels[live].max())
        require(max_level == top, f"field 'max_level' is {max_level}; the highest live level is {top}")
        require(int(levels[entry]) == top, f"field 'entry' is slot {entry} on level {int(levels[entry])}, "
                                           f"not on max_level {top}")
    return checked


def _check_quantiser_range(low: np.ndarray, high: np.ndarray, live_vectors: np.ndarray) -> None:
    """Finite bounds, ``low <= high``, every live vector inside them."""
    require(bool(np.isfinite(low).all()), "array 'sq_low' holds NaN or infinity")
    require(bool(np.isfinite(high).all()), "array 'sq_high' holds NaN or infinity")
    require(bool((low <= high).all()), "array 'sq_high' is below 'sq_low' in some dimension")
    require(bool((live_vectors >= low).all()), "array 'sq_low' is above a live vector's value")
    require(bool((live_vectors <= high).all()), "array 'sq_high' is below a live vector's value")


def _check_upper_rows(upper_offset: np.ndarray, upper_rows: np.ndarray, r: int) -> None:
    """Each slot's rows ``[offset, offset + rows)`` lie in ``[0, r)`` and overlap no other slot's."""
    has_rows = upper_rows > 0
    offsets, rows = upper_offset[has_rows], upper_rows[has_rows].astype(np.int64)
    values_in(offsets, "upper_offset", 0, r)
    require(bool((offsets + rows <= r).all()), "array 'upper_offset' places a slot's rows past upper_links")
    order = np.argsort(offsets, kind="stable")
    starts, stops = offsets[order], (offsets + rows)[order]
    require(bool((stops[:-1] <= starts[1:]).all()), "array 'upper_offset' gives two slots overlapping rows")


def _check_link_lists(links: np.ndarray, name: str, n: int) -> None:
    """Links in ``[-1, n)``, with -1 only as padding after the last link of a list."""
    values_in(links, name, -1, n - 1)
    present = links >= 0
    require(not bool((present[:, 1:] & ~present[:, :-1]).any()), f"array {name!r} has a link after -1 padding")


def _check_upper_targets(upper_links, upper_offset, levels, live) -> None:
    """A live slot's list on level ``l >= 1`` names only live slots of level ``>= l``."""
    slots = np.flatnonzero(live & (levels > 0))
    counts = levels[slots].astype(np.int64)
    owner = np.repeat(slots, counts)
    level = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    rows = upper_links[upper_offset[owner] + level - 1]
    reach = np.where(rows >= 0, levels[np.maximum(rows, 0)], np.iinfo(np.int32).max)
    require(bool((reach >= level[:, None]).all()),
            "array 'upper_links' links to a free slot or to a slot whose level is below the list's level")
