"""HNSW approximate nearest-neighbour index whose vectors and graph are torch tensors.

Tuning knobs, in one place
--------------------------
``M`` (default 16)
    Links per node on levels >= 1. Level 0 keeps ``M0 = 2 * M``: every node lives on level 0, so
    it carries the whole search's recall and needs the denser graph; upper levels are sparse
    express lanes (the paper's recommendation Mmax0 = 2M, as hnswlib and FAISS do).
``ef_construction`` (default 200)
    Beam width while inserting.
``ef_search`` (attribute, default 64)
    Beam width of ``search`` when ``ef`` is not given; the beam is never narrower than ``k``.
``exact_filter_factor`` (attribute, default 1.0)
    Scales the threshold below which a filtered search runs exactly (see *Filtered search*).
``MAX_INSERT_BATCH`` (1024)
    Largest batch of points inserted against one frozen graph (see *Deterministic batched build*).
``storage`` (constructor, default ``"float32"``)
    What the CPU search walks (see *Vector storage*).
``reorder()``
    Renumbers slots breadth-first after a large build (see *Slot order*).

Levels are drawn as in the paper, ``floor(-ln(U) * mL)`` with ``mL = 1 / ln(M)``, from a numpy
generator seeded by ``seed`` whose state is saved with the index.

Deterministic batched build
---------------------------
``add`` inserts points in input order, in batches that grow with the index (prefix doubling: a
batch is at most half the points already live, and at most ``MAX_INSERT_BATCH``). For one batch:
(1) every point searches the graph as it was before the batch, in parallel, and picks its forward
links with the paper's heuristic; (2) the forward lists are written; (3) reverse links are grouped
by (level, target) in a stable sort and each target's list is extended, or re-chosen by the
heuristic when full, in parallel over targets. Each parallel step only reads state that no one
writes during it, so the graph depends on the seed and the input order, never on thread count or
timing. Points of one batch do not link to each other directly; they meet through old nodes.

Exact duplicates
----------------
Identical vectors are all at distance 0 from each other, so the selection heuristic cannot tell
them apart: left alone, a group of copies would fill each other's lists and link only among
themselves, and a search entering the group could not leave it. Copies of a point therefore take
at most a quarter of its list, chosen by a fixed pseudo-random rank (so the group forms a random,
connected subgraph instead of all copies linking to the same few); the rest of the list is chosen
as usual. An unfiltered search always returns ``k`` points when ``k <= len(index)``: a query whose
beam reaches fewer (a graph cut into pieces) is answered by exact search.

Distances (smaller is closer; results sorted best first)
--------------------------------------------------------
``"l2"``: squared Euclidean distance (what FAISS ``IndexFlatL2`` reports).
``"ip"``: the NEGATIVE inner product, ``-<q, x>`` (FAISS ``IndexFlatIP`` reports ``+<q, x>``).
``"cosine"``: ``1 - cos(q, x)``; vectors are stored normalized and searched by inner product.

Vector storage
--------------
Every tensor of the index is declared once in :data:`llmds_torch.retrieval.hnsw_storage.FIELDS`.
With ``storage="float32"`` the search walks the float32 vectors. With ``storage="sq8"`` it walks
8-bit scalar codes of them (:mod:`llmds_torch.retrieval.hnsw_sq8`: a per-dimension range covering
every live vector, a quarter of the bytes per distance), then re-ranks the beam's ``ef`` results
by exact float32 distance, so the reported distances are exact and only which points reach the
beam can differ. The float32 vectors stay (for re-ranking, building, deleting and exact search),
so memory grows by ``dim`` bytes per slot; the codes are not saved but recomputed on load.

Slot order
----------
Slots are numbered in insertion order; ``reorder()`` renumbers them in breadth-first order of the
level-0 graph from the entry point (ids, results and distances are unchanged), so that neighbours
sit in nearby rows.

Deletes
-------
``delete`` removes points at once: every live node that listed a deleted node is re-linked by the
heuristic among its live neighbours and the deleted node's live neighbours, the deleted lists are
cleared (so searches never reach them), the entry point is re-chosen if it was deleted (highest
level, then lowest slot), and the slots are reused by later adds, lowest first.

Filtered search
---------------
``search(..., allow=ids)`` returns only ids in the allow-list (ids not in the index are ignored).
A graph search with selectivity ``s = n_allowed / n_live`` expands about ``ef / s`` nodes of
``M0`` neighbours each, while exact search costs ``n_allowed`` distances, so exact search is used
when ``n_allowed ** 2 <= exact_filter_factor * M0 * ef * n_live`` (for 100k points, M=16, ef=64
and the default factor 1.0: below about 14k allowed). ``exact_filter_factor = 0`` forces the graph.

Backends
--------
On CPU, ``search`` runs the compiled numba loops (``backend="numba"``) on zero-copy numpy views of
the tensors. ``backend="torch"`` runs the lockstep batched beam search written in tensor
operations (:mod:`llmds_torch.retrieval.hnsw_lockstep`), the CUDA path; ``"auto"`` picks numba on
CPU, torch elsewhere. Building and deleting always run the numba loops on the CPU master tensors;
an index with ``device="cuda"`` mirrors them onto the GPU for searching. The numba loops reuse
per-thread scratch held by the index, so one index must not be used from several Python threads at
once (numba's own threads inside one call are fine).

Threads
-------
A search of one query runs on the calling thread and never enters numba's parallel (OpenMP)
runtime, so it costs no thread wake-up and cannot wait on a descheduled worker. Batched search,
``add`` and ``delete`` run in parallel over ``numba.get_num_threads()`` threads (set it with
``numba.set_num_threads``). After each parallel call the OpenMP workers keep spinning for a while
so that the next call starts fast (GNU libgomp's default; about 8 ms of CPU time per call on the
2-core development machine); where the cores are busy with other work, that spinning takes CPU
time from it. ``OMP_WAIT_POLICY=passive`` (libgomp also reads ``GOMP_SPINCOUNT``, Intel's runtime
``KMP_BLOCKTIME``), set in the environment before the first parallel call, makes the workers sleep
at once instead; the index leaves these process-wide settings to the application.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch

from llmds_torch.errors import ConfigError
from llmds_torch.retrieval import hnsw_numba, hnsw_sq8, hnsw_storage
from llmds_torch.retrieval.errors import (
    CorruptIndexFile,
    DimensionMismatch,
    DuplicateIds,
    EmptyIndex,
    InvalidIds,
    InvalidSearchParameter,
    NonFiniteVectors,
    UnknownIds,
)
from llmds_torch.retrieval.ids import as_ids, default_ids
from llmds_torch.retrieval.hnsw_file import check_hnsw_contents
from llmds_torch.retrieval.hnsw_lockstep import lockstep_search
from llmds_torch.retrieval import persist

METRICS = ("l2", "ip", "cosine")
MAX_INSERT_BATCH = 1024
FILE_KIND = "hnsw"
FILE_KIND_VERSION = 1
_NO_ALLOW = np.zeros(1, np.bool_)  # stands in for the allow mask when there is none (never written)


class HNSW:
    """Hierarchical navigable small-world graph index (Malkov & Yashunin, 2018).

    Parameters
    ----------
    dim : vector dimension.
    M : links per node on levels >= 1 (level 0 keeps ``2 * M``), at least 2.
    ef_construction : beam width while inserting, at least 1.
    metric : ``"l2"`` (squared L2), ``"ip"`` (negative inner product) or ``"cosine"`` (1 - cos).
    seed : seeds the level generator; same seed and same input order give the same graph.
    device : where ``search`` runs by default (``"cpu"`` or a CUDA device).
    storage : what the CPU search walks: ``"float32"`` (the vectors) or ``"sq8"`` (8-bit codes of
        them, a quarter of the memory to read, with the results re-ranked by exact float32
        distance; see *Vector storage*).
    """

    def __init__(self, dim: int, M: int = 16, ef_construction: int = 200, metric: str = "l2", seed: int = 0,
                 device: str | torch.device = "cpu", storage: str = "float32"):
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(M, int) or M < 2:
            raise ConfigError(f"M must be an int >= 2, got {M!r}")
        if not isinstance(ef_construction, int) or ef_construction < 1:
            raise ConfigError(f"ef_construction must be an int >= 1, got {ef_construction!r}")
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
        if storage not in hnsw_storage.STORAGES:
            raise ConfigError(f"storage must be one of {hnsw_storage.STORAGES}, got {storage!r}")
        self._dim = dim
        self.M = M
        self.M0 = 2 * M
        self.ef_construction = ef_construction
        self.metric = metric
        self.seed = seed
        self.storage = storage
        self._fields = hnsw_storage.fields_for(storage)
        self.device = torch.device(device)
        self.ef_search = 64
        self.exact_filter_factor = 1.0
        self._kernel_metric = hnsw_numba.L2 if metric == "l2" else hnsw_numba.IP
        self._dist_offset = np.float32(1.0 if metric == "cosine" else 0.0)  # kernel's distance -> reported
        self._rng = np.random.default_rng(seed)
        self._level_mult = 1.0 / math.log(M)
        self._allocate(capacity=0, upper_capacity=0)
        self._n_slots = 0          # high-water mark of used slots
        self._n_upper_rows = 0     # rows of upper_links in use
        self._entry = -1           # slot of the entry point, -1 when empty
        self._max_level = -1
        self._next_id = 0          # default ids continue from the largest id ever added
        self._slot_of: dict[int, int] = {}
        self._visited = np.zeros((0, 0), np.uint8)       # [n_threads, ceil(capacity / 8)] scratch, reused
        self._cand_keys = np.zeros((0, 0), np.float32)   # [n_threads, capacity + 1]
        self._cand_vals = np.zeros((0, 0), np.int32)
        self._device_mirror = None

    # ----------------------------------------------------------------------------------- storage
    def _allocate(self, capacity: int, upper_capacity: int) -> None:
        """Fresh tensors of every storage field (all slots unused), as attributes ``_<name>``."""
        sizes = {"slots": capacity, "upper": upper_capacity, "dim": self._dim, "M0": self.M0, "M": self.M}
        for name, tensor in hnsw_storage.allocate(self._fields, sizes).items():
            setattr(self, "_" + name, tensor)
        # Zero-copy numpy views of the tensors, as the kernels take them: made once per allocation,
        # since four .numpy() calls cost about 2 us, a few percent of a one-query search.
        self._kernel_views = (self._vectors.numpy(), self._links0.numpy(), self._upper_links.numpy(),
                              self._upper_offset.numpy())
        self._set_walk()
        self._ids_view = self._ids.numpy()

    def _tensors(self) -> dict[str, torch.Tensor]:
        """Every storage tensor by field name (whole allocations)."""
        return {f.name: getattr(self, "_" + f.name) for f in self._fields}

    def _grow(self, capacity: int, upper_capacity: int) -> None:
        """Double capacities until they reach the requested sizes, copying the used parts."""
        cap, ucap = self._vectors.shape[0], self._upper_links.shape[0]
        new_cap, new_ucap = max(cap, 16), max(ucap, 16)
        while new_cap < capacity:
            new_cap *= 2
        while new_ucap < upper_capacity:
            new_ucap *= 2
        if new_cap == cap and new_ucap == ucap:
            return
        old = self._tensors()
        self._allocate(new_cap, new_ucap)
        for name, dst in self._tensors().items():
            dst[: old[name].shape[0]] = old[name]
        self._set_walk()

    def _scratch(self, serial: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-thread scratch, kept between calls: visited bitsets uint8 ``[n_threads, ceil(capacity / 8)]``,
        candidate heap keys and values ``[n_threads, capacity + 1]``.

        ``serial`` callers use row 0 only, so any pool with at least one row of the right capacity
        serves them (no call into numba's thread settings).
        """
        cap = self._vectors.shape[0]
        if serial:
            fits = self._cand_keys.shape[0] >= 1 and self._cand_keys.shape[1] == cap + 1
            n_threads = 1
        else:
            n_threads = numba.get_num_threads()
            fits = self._cand_keys.shape == (n_threads, cap + 1)
        if not fits:
            self._visited = np.zeros((n_threads, (cap + 7) // 8), np.uint8)
            self._cand_keys = np.empty((n_threads, cap + 1), np.float32)
            self._cand_vals = np.empty((n_threads, cap + 1), np.int32)
        return self._visited, self._cand_keys, self._cand_vals

    # ---------------------------------------------------------------------------------- validate
    def _as_matrix(self, x, what: str) -> np.ndarray:
        """``x`` as a float32 numpy array ``[n, dim]`` (a single ``[dim]`` vector becomes ``[1, dim]``)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":  # floating, signed or unsigned integer
            raise DimensionMismatch(f"{what} must be numeric, got dtype {x.dtype}")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise DimensionMismatch(f"{what} must have shape [n, {self._dim}] or [{self._dim}], got {list(x.shape)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if hnsw_numba.first_nonfinite_row(x) >= 0:
            bad = ~np.isfinite(x).all(axis=1)
            raise NonFiniteVectors(f"{what} rows {np.flatnonzero(bad)[:5].tolist()} hold NaN or infinity; "
                                   f"only finite values are allowed")
        if self.metric == "cosine":
            unit = np.empty_like(x)
            if hnsw_numba.normalize_rows(x, unit) >= 0:
                zero = ~x.any(axis=1)
                raise NonFiniteVectors(f"{what} rows {np.flatnonzero(zero)[:5].tolist()} are zero "
                                       f"vectors, which have no cosine direction")
            x = unit
        return x

    @staticmethod
    def _as_ids(ids, what: str) -> np.ndarray:
        """``ids`` as a 1-D int64 array of non-negative integers."""
        return as_ids(ids, what)

    # --------------------------------------------------------------------------------------- add
    def add(self, vectors, ids=None) -> torch.Tensor:
        """Insert ``vectors`` ``[n, dim]`` (or one ``[dim]``); returns their ids, int64 ``[n]``.

        ``ids`` defaults to consecutive integers after the largest id ever added. Raises
        ``DimensionMismatch``, ``NonFiniteVectors``, ``InvalidIds`` or ``DuplicateIds`` (repeated
        within the call, or already present) before anything changes.
        """
        x = self._as_matrix(vectors, "vectors")
        n = x.shape[0]
        if ids is None:
            new_ids = default_ids(self._next_id, n)
        else:
            new_ids = self._as_ids(ids, "ids")
            if new_ids.shape[0] != n:
                raise InvalidIds(f"got {new_ids.shape[0]} ids for {n} vectors; give one id per vector")
            uniq, counts = np.unique(new_ids, return_counts=True)
            if (counts > 1).any():
                raise DuplicateIds(f"ids {uniq[counts > 1][:5].tolist()} repeat within this add; ids must be unique")
            present = [int(i) for i in new_ids if int(i) in self._slot_of]
            if present:
                raise DuplicateIds(f"ids {present[:5]} are already in the index; delete them first or use new ids")
        if n == 0:
            return torch.from_numpy(new_ids)

        free = np.flatnonzero(~self._live[: self._n_slots].numpy())
        slots = np.concatenate([free[:n], np.arange(self._n_slots, self._n_slots + max(0, n - free.size))])
        slots = slots.astype(np.int32)
        levels = np.floor(-np.log(1.0 - self._rng.random(n)) * self._level_mult).astype(np.int32)

        old_rows = self._upper_rows[: self._n_slots].numpy()
        need_rows = [int(lv) for s, lv in zip(slots, levels) if lv > 0 and (s >= self._n_slots or lv > old_rows[s])]
        self._grow(self._n_slots + max(0, n - free.size), self._n_upper_rows + sum(need_rows))
        self._n_slots = max(self._n_slots, int(slots.max()) + 1)
        offsets, rows = self._upper_offset.numpy(), self._upper_rows.numpy()
        for s, lv in zip(slots, levels):
            if lv > 0 and lv > rows[s]:
                offsets[s] = self._n_upper_rows
                rows[s] = lv
                self._n_upper_rows += int(lv)
        self._vectors[slots] = torch.from_numpy(x)
        if self.storage == "sq8":
            self._encode(slots, x)
        self._ids[slots] = torch.from_numpy(new_ids)
        self._levels[slots] = torch.from_numpy(levels)
        self._live[slots] = True
        self._links0[slots] = -1
        for s, lv in zip(slots, levels):
            if lv > 0:
                self._upper_links[int(offsets[s]): int(offsets[s]) + int(lv)] = -1
        self._slot_of.update(zip(new_ids.tolist(), slots.tolist()))
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        self._device_mirror = None

        start = 0
        if self._entry < 0:
            self._entry, self._max_level = int(slots[0]), int(levels[0])
            start = 1
        while start < n:
            live = len(self._slot_of) - (n - start)
            size = min(n - start, max(1, live // 2), MAX_INSERT_BATCH)
            self._insert_batch(slots[start:start + size], levels[start:start + size])
            start += size
        return torch.from_numpy(new_ids)

    def _encode(self, slots: np.ndarray, x: np.ndarray) -> None:
        """Codes of ``x`` ``[n, dim]``, just stored at ``slots`` (before they are marked live).

        The quantiser's range covers every live vector; when ``x`` widens it, every code is
        recomputed (see :mod:`llmds_torch.retrieval.hnsw_sq8`).
        """
        low, high = self._sq_low.numpy(), self._sq_high.numpy()
        new_low, new_high = x.min(axis=0), x.max(axis=0)
        if self._live.numpy()[: self._n_slots].any():
            if (new_low >= low).all() and (new_high <= high).all():
                self._codes.numpy()[slots] = hnsw_sq8.encode(x, low, self._walk[2])
                return
            new_low, new_high = np.minimum(low, new_low), np.maximum(high, new_high)
        low[:], high[:] = new_low, new_high
        self._set_walk()
        self._codes.numpy()[: self._n_slots] = hnsw_sq8.encode(self._vectors.numpy()[: self._n_slots], low,
                                                               self._walk[2])

    def _sq_step(self) -> np.ndarray:
        return hnsw_sq8.steps(self._sq_low.numpy(), self._sq_high.numpy(), self._kernel_metric == hnsw_numba.L2)

    def _set_walk(self) -> None:
        """What the search walks: (codes, sq_low, step) with ``"sq8"``, else (vectors, empty, empty).

        Kept here because computing the step costs several microseconds, a few percent of a query.
        """
        if self.storage == "sq8":
            self._walk = (self._codes.numpy(), self._sq_low.numpy(), self._sq_step())
        else:
            self._walk = (self._kernel_views[0], np.zeros(0, np.float32), np.zeros(0, np.float32))

    def _insert_batch(self, slots: np.ndarray, levels: np.ndarray) -> None:
        """Link one batch of already-stored points into the graph (see the module docstring)."""
        vectors, links0, upper_links, upper_offset = self._kernel_views
        batch = slots.shape[0]
        top = max(self._max_level, 0)
        out_links0 = np.full((batch, self.M0), -1, np.int32)
        out_upper = np.full((batch, max(top, 1), self.M), -1, np.int32)
        visited, cand_keys, cand_vals = self._scratch()
        hnsw_numba.insert_search(slots, levels, self._entry, self._max_level, self.ef_construction, vectors,
                                 *self._walk, links0, upper_links, upper_offset, self._kernel_metric, visited,
                                 cand_keys, cand_vals, out_links0, out_upper)
        links0[slots] = out_links0
        sources, targets, target_levels = [slots.repeat(self.M0)], [out_links0.reshape(-1)], [np.zeros(batch * self.M0, np.int32)]
        for b in range(batch):
            for lv in range(1, min(int(levels[b]), self._max_level) + 1):
                row = int(upper_offset[slots[b]]) + lv - 1
                upper_links[row] = out_upper[b, lv - 1]
                sources.append(np.full(self.M, slots[b], np.int32))
                targets.append(out_upper[b, lv - 1])
                target_levels.append(np.full(self.M, lv, np.int32))
        sources, targets, target_levels = (np.concatenate(a) for a in (sources, targets, target_levels))
        keep = targets >= 0
        sources, targets, target_levels = sources[keep], targets[keep], target_levels[keep]
        order = np.lexsort((targets, target_levels))  # stable: sources stay in batch order per group
        sources, targets, target_levels = sources[order], targets[order], target_levels[order]
        change = np.flatnonzero((np.diff(targets) != 0) | (np.diff(target_levels) != 0)) + 1
        group_starts = np.concatenate([[0], change, [targets.shape[0]]]).astype(np.int64)
        if targets.shape[0]:
            hnsw_numba.link_reverse(targets, target_levels, sources, group_starts, vectors, links0, upper_links,
                                 upper_offset, self._kernel_metric)
        best = int(np.argmax(levels))
        if levels[best] > self._max_level:
            self._entry, self._max_level = int(slots[best]), int(levels[best])

    # ------------------------------------------------------------------------------------ delete
    def delete(self, ids) -> None:
        """Remove ``ids`` from the index: never returned again, graph re-linked, slots reusable.

        Raises ``InvalidIds``, ``DuplicateIds`` (repeated in the call) or ``UnknownIds`` (not in
        the index) before anything changes.
        """
        ids = self._as_ids(ids, "ids")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise DuplicateIds(f"ids {uniq[counts > 1][:5].tolist()} repeat within this delete")
        missing = [int(i) for i in ids if int(i) not in self._slot_of]
        if missing:
            raise UnknownIds(f"ids {missing[:5]} are not in the index (never added or already deleted)")
        if ids.size == 0:
            return
        slots = np.array([self._slot_of.pop(int(i)) for i in ids], np.int64)
        deleted = np.zeros(self._vectors.shape[0], np.bool_)
        deleted[slots] = True
        self._live[slots] = False
        vectors, links0, upper_links, upper_offset = self._kernel_views
        hnsw_numba.repair_deleted(deleted, self._live.numpy(), self._levels.numpy(), self._n_slots, vectors, links0,
                               upper_links, upper_offset, self._kernel_metric)
        links0[slots] = -1
        rows = self._upper_rows.numpy()
        for s in slots:
            upper_links[int(upper_offset[s]): int(upper_offset[s]) + int(rows[s])] = -1
        self._levels[slots] = -1
        self._ids[slots] = -1
        self._device_mirror = None
        if deleted[self._entry]:
            live_levels = torch.where(self._live[: self._n_slots], self._levels[: self._n_slots], -1)
            if len(self._slot_of) == 0:
                self._entry, self._max_level = -1, -1
            else:
                self._max_level = int(live_levels.max())
                self._entry = int(torch.nonzero(live_levels == self._max_level)[0, 0])

    # ----------------------------------------------------------------------------------- reorder
    def reorder(self) -> None:
        """Renumber the slots in breadth-first order of the level-0 graph, from the entry point.

        Neighbours then sit in nearby rows, so a search touches fewer memory pages and cache lines
        (graph reordering, Coleman et al. 2021). Ids, results and distances are unchanged; free
        slots move to the end. Costs one pass over the storage; worth it after a large ``add``.
        """
        n = self._n_slots
        if n == 0:
            return
        order = hnsw_numba.bfs_order(self._links0.numpy(), self._live.numpy(), self._entry, n)
        hnsw_storage.renumber(self._fields, self._tensors(), order)
        new_of_old = np.empty(n, np.int64)
        new_of_old[order] = np.arange(n)
        if self._entry >= 0:
            self._entry = int(new_of_old[self._entry])
        live = self._live[:n].numpy()
        self._slot_of = dict(zip(self._ids[:n].numpy()[live].tolist(), np.flatnonzero(live).tolist()))
        self._device_mirror = None

    # ------------------------------------------------------------------------------------ search
    def search(self, queries, k: int, ef: int | None = None, *, allow=None, backend: str = "auto"):
        """The ``k`` nearest live points of each query.

        Parameters
        ----------
        queries : ``[nq, dim]`` or ``[dim]`` (float; torch tensor or numpy array).
        k : neighbours per query, ``1 <= k <= len(self)``; larger raises ``InvalidSearchParameter``.
        ef : beam width, ``>= k``; default ``max(self.ef_search, k)``. Any larger value is served
            (a beam wider than ``len(self)`` is narrowed to it, which changes no result).
        allow : optional allow-list of ids; only those are returned (unknown ids are ignored). When
            fewer than ``k`` are allowed the rows are padded with id -1 and distance inf. Otherwise
            every row holds ``k`` results: a query whose beam reaches fewer is answered exactly.
        backend : ``"auto"`` (numba on CPU, torch elsewhere), ``"numba"`` or ``"torch"``.

        Returns
        -------
        ids : int64 ``[nq, k]``, best first.
        distances : float32 ``[nq, k]``, ascending (see the module docstring for each metric).
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidSearchParameter(f"k must be a positive int, got {k!r}")
        if ef is not None and (not isinstance(ef, (int, np.integer)) or isinstance(ef, bool) or ef < k):
            raise InvalidSearchParameter(f"ef must be an int >= k = {k}, got {ef!r}")
        if backend not in ("auto", "numba", "torch"):
            raise ConfigError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
        q = self._as_matrix(queries, "queries")
        n_live = len(self._slot_of)
        if n_live == 0:
            raise EmptyIndex("the index holds no points; add vectors before searching")
        if k > n_live:
            raise InvalidSearchParameter(f"k = {k} is larger than the {n_live} points in the index")
        # A beam wider than the live points finds the same results as one exactly that wide.
        ef = min(int(max(self.ef_search, k) if ef is None else ef), n_live)
        if backend == "auto":
            backend = "numba" if self.device.type == "cpu" else "torch"

        allow_mask = None
        if allow is not None:
            allow_ids = self._as_ids(allow, "allow")
            allowed_slots = np.array(sorted({self._slot_of[i] for i in allow_ids.tolist() if i in self._slot_of}),
                                     np.int32)
            if allowed_slots.size == 0 or allowed_slots.size ** 2 <= self.exact_filter_factor * self.M0 * ef * n_live:
                return tuple(map(torch.from_numpy, self._exact(q, allowed_slots, k)))
            allow_mask = np.zeros(self._vectors.shape[0], np.bool_)
            allow_mask[allowed_slots] = True

        if backend == "torch":
            ids, dists = self._to_result(*self._search_torch(q, k, ef, allow_mask))
        else:
            ids, dists = self._search_numba(q, k, ef, allow_mask)
        last = ids[:, -1]  # -1 pads a row at its end only (checked on numpy: microseconds cheaper)
        if (last[0] < 0) if last.shape[0] == 1 else (last < 0).any():
            short = np.flatnonzero(last < 0)
            eligible = allowed_slots if allow_mask is not None else self._live_slots()
            if eligible.size >= k:  # the beam reached fewer than k eligible points although k exist
                ids[short], dists[short] = self._exact(q[short], eligible, k)
        return torch.from_numpy(ids), torch.from_numpy(dists)

    def _live_slots(self) -> np.ndarray:
        """Slots of the live points, ascending, int32."""
        return np.flatnonzero(self._live[: self._n_slots].numpy()).astype(np.int32)

    def _search_numba(self, q: np.ndarray, k: int, ef: int, allow_mask):
        """Compiled search of ``q`` ``[nq, dim]``; returns numpy (ids int64 ``[nq, k]``, distances ``[nq, k]``).

        One query runs serially on the calling thread; several run in parallel over numba's threads.
        The kernels write ids and reported distances directly (no slot -> id pass afterwards).
        """
        vectors, links0, upper_links, upper_offset = self._kernel_views
        nq = q.shape[0]
        out_ids = np.empty((nq, k), np.int64)
        out_dists = np.empty((nq, k), np.float32)
        use_allow = allow_mask is not None
        allow = allow_mask if use_allow else _NO_ALLOW
        walk, sq_low, sq_step = self._walk
        if nq == 1:
            visited, cand_keys, cand_vals = self._scratch(serial=True)
            hnsw_numba.search_one(q[0], ef, self._entry, self._max_level, vectors, walk, sq_low, sq_step, links0,
                                  upper_links, upper_offset, self._kernel_metric, allow, use_allow, visited, cand_keys,
                                  cand_vals, self._ids_view, self._dist_offset, out_ids[0], out_dists[0])
        else:
            visited, cand_keys, cand_vals = self._scratch()
            hnsw_numba.search_batch(q, ef, self._entry, self._max_level, vectors, walk, sq_low, sq_step, links0,
                                    upper_links, upper_offset, self._kernel_metric, allow, use_allow, visited,
                                    cand_keys, cand_vals, self._ids_view, self._dist_offset, out_ids,
                                    out_dists)
        return out_ids, out_dists

    def _search_torch(self, q: np.ndarray, k: int, ef: int, allow_mask):
        graph = self._mirror()
        dev = graph["vectors"].device
        allow = None if allow_mask is None else torch.from_numpy(allow_mask).to(dev)
        if allow is not None:  # widen the beam by the inverse selectivity so ~ef allowed nodes are seen
            ef = int(min(math.ceil(ef * len(self._slot_of) / int(allow.sum())), len(self._slot_of)))
        slots, dists = lockstep_search(torch.from_numpy(q).to(dev), k, ef, self._entry, self._max_level,
                                       graph["vectors"], graph["links0"], graph["upper_links"],
                                       graph["upper_offset"], self._kernel_metric == hnsw_numba.L2, allow)
        return slots.cpu().numpy(), dists.cpu().numpy()

    def _mirror(self) -> dict:
        """The search tensors on ``self.device`` (the CPU tensors themselves on CPU)."""
        if self._device_mirror is None:
            names = {"vectors": self._vectors, "links0": self._links0, "upper_links": self._upper_links,
                     "upper_offset": self._upper_offset}
            self._device_mirror = {name: t.to(self.device) for name, t in names.items()}
        return self._device_mirror

    def _exact(self, q: np.ndarray, slots: np.ndarray, k: int):
        """Exact search among ``slots`` (the fallback for very selective filters)."""
        out_slots = np.empty((q.shape[0], k), np.int32)
        out_dists = np.empty((q.shape[0], k), np.float32)
        hnsw_numba.brute_force(q, slots, k, self._vectors.numpy(), self._kernel_metric, out_slots, out_dists)
        return self._to_result(out_slots, out_dists)

    def _to_result(self, slots: np.ndarray, dists: np.ndarray):
        """Slots -> ids (-1 kept), internal distances -> the metric's reported distances (numpy)."""
        ids = np.where(slots >= 0, self._ids.numpy()[np.maximum(slots, 0)], -1)
        dists = dists.astype(np.float32, copy=True)
        if self.metric == "cosine":
            dists = np.where(slots >= 0, dists + np.float32(1.0), np.float32(np.inf)).astype(np.float32)
        return ids.astype(np.int64), dists

    # ------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike, *, key: bytes | None = None) -> None:
        """Write the index to ``path`` (versioned, pickle-free; SHA-256 checksummed, or HMAC-SHA256
        signed with ``key``, see :mod:`llmds_torch.retrieval.persist`)."""
        saved = [f for f in self._fields if f.saved]
        arrays = {name: t.numpy() for name, t in
                  hnsw_storage.used(saved, self._tensors(), self._n_slots, self._n_upper_rows).items()}
        meta = {"dim": self._dim, "M": self.M, "ef_construction": self.ef_construction, "metric": self.metric,
                "seed": self.seed, "ef_search": self.ef_search, "entry": self._entry, "max_level": self._max_level,
                "next_id": self._next_id, "rng_state": self._rng.bit_generator.state, "storage": self.storage}
        persist.save(path, FILE_KIND, FILE_KIND_VERSION, arrays, meta, key)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", *,
             key: bytes | None = None) -> "HNSW":
        """Read an index written by :meth:`save` (with the same ``key``, if any).

        Every field is checked before use (see :mod:`llmds_torch.retrieval.hnsw_file`); the tensors
        are allocated at exactly the sizes the file holds. Raises ``CorruptIndexFile`` naming what
        is wrong.
        """
        bundle = persist.load(path, FILE_KIND, key)
        if bundle.kind_version != FILE_KIND_VERSION:
            raise CorruptIndexFile(f"{path}: hnsw layout version {bundle.kind_version}; this library reads "
                                   f"version {FILE_KIND_VERSION}")
        meta, a = check_hnsw_contents(bundle.meta, bundle.arrays, METRICS), bundle.arrays
        index = cls(meta["dim"], meta["M"], meta["ef_construction"], meta["metric"], meta["seed"], device,
                    meta["storage"])
        n, r = a["vectors"].shape[0], a["upper_links"].shape[0]
        index._allocate(n, r)
        for field in index._fields:
            if field.saved:
                getattr(index, "_" + field.name).copy_(torch.from_numpy(a[field.name]))
        index._n_slots, index._n_upper_rows = n, r
        index._set_walk()
        if index.storage == "sq8":
            index._codes.numpy()[:] = hnsw_sq8.encode(a["vectors"], a["sq_low"], index._walk[2])
        index.ef_search, index._entry, index._max_level = meta["ef_search"], meta["entry"], meta["max_level"]
        index._next_id = meta["next_id"]
        index._rng.bit_generator.state = meta["rng_state"]
        live = a["live"]
        index._slot_of = dict(zip(a["ids"][live].tolist(), np.flatnonzero(live).tolist()))
        return index

    # ------------------------------------------------------------------------------------- info
    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def dim(self) -> int:
        return self._dim

    def stats(self) -> dict:
        """Counts and sizes: points, slots, capacity, levels, degrees, entry point, memory."""
        n = self._n_slots
        live = self._live[:n]
        levels = self._levels[:n][live]
        degree0 = (self._links0[:n][live] >= 0).sum(1).float()
        tensors = self._tensors().values()
        return {
            "n_live": len(self), "n_slots": n, "n_free_slots": n - len(self), "capacity": self._vectors.shape[0],
            "dim": self._dim, "metric": self.metric, "M": self.M, "M0": self.M0,
            "ef_construction": self.ef_construction, "ef_search": self.ef_search, "storage": self.storage,
            "max_level": self._max_level,
            "entry_id": int(self._ids[self._entry]) if self._entry >= 0 else None,
            "points_per_level": torch.bincount(levels.long()).tolist() if levels.numel() else [],
            "mean_degree_level0": float(degree0.mean()) if degree0.numel() else 0.0,
            "upper_rows_used": self._n_upper_rows,
            "memory_bytes": int(sum(t.numel() * t.element_size() for t in tensors)),
        }

    def graph_tensors(self) -> dict[str, torch.Tensor]:
        """The used parts of the graph's tensors (for inspection and reproducibility checks)."""
        return hnsw_storage.used(self._fields, self._tensors(), self._n_slots, self._n_upper_rows)


__all__ = ["HNSW", "METRICS", "MAX_INSERT_BATCH"]
