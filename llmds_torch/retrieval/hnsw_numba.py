"""Compiled CPU loops of the HNSW index: distances, beam search, neighbour selection, linking, repair.

Every function works on numpy arrays that are zero-copy views of the index's torch tensors:

- ``vectors``      float32 ``[capacity, dim]`` (cosine vectors are stored normalized)
- ``links0``       int32   ``[capacity, M0]``  level-0 neighbour slots, ``-1`` padded at the end
- ``upper_links``  int32   ``[upper_capacity, M]`` one row per (node, level >= 1), ``-1`` padded
- ``upper_offset`` int64   ``[capacity]`` row of the node's level-1 list; level ``l`` is ``offset + l - 1``

``metric`` is ``L2`` (squared Euclidean) or ``IP`` (negative inner product), so smaller is always
closer. Parallel loops split work into ``n_chunks`` strided chunks, each with its own scratch: a
visited bitset of ``ceil(capacity / 8)`` bytes, cleared at the start of each level's search (at
50k points 6 KiB, which stays in the L1 cache where one int32 tag per point, 200 KiB, did not);
every query or inserted point is computed from state that the loop does not modify, so results do
not depend on the thread count.

The beam search is bound by memory latency (a 128-d float32 vector is 8 cache lines, and each
expanded node sends the search to up to ``M0`` vectors scattered over the index), so it first
gathers a node's unvisited neighbours and asks the CPU to prefetch all their vectors, then
computes the distances while those loads overlap; it also prefetches the neighbour list of the
next candidate. Prefetches are hints only and change no result.
"""

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

L2 = 0
IP = 1

_JIT = dict(fastmath=True, cache=True, nogil=True)


# Input checks compile without fastmath, which would let LLVM assume that no NaN or inf exists.
@nb.njit(cache=True, nogil=True)
def first_nonfinite_row(x):
    """Index of the first row of ``x`` ``[n, dim]`` holding NaN or infinity; -1 when all are finite."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if not np.isfinite(x[i, j]):
                return i
    return -1


@nb.njit(cache=True, nogil=True)
def normalize_rows(x, out):
    """Write ``x / ||x||`` row by row into ``out`` (both float32 ``[n, dim]``), in float64 arithmetic.

    Returns the index of the first all-zero row (which has no direction), or -1; rows from there on
    are left unwritten.
    """
    for i in range(x.shape[0]):
        sum_sq = 0.0
        for j in range(x.shape[1]):
            sum_sq += np.float64(x[i, j]) * np.float64(x[i, j])
        if sum_sq == 0.0:
            return i
        inv_norm = 1.0 / np.sqrt(sum_sq)
        for j in range(x.shape[1]):
            out[i, j] = np.float32(x[i, j] * inv_norm)
    return -1


@intrinsic
def prefetch_row(typingctx, array, row):
    """Ask the CPU to start loading every cache line of ``array[row]`` (``array`` 2-D, C-contiguous).

    A hint only (``llvm.prefetch``): it neither blocks nor faults, so the loads of several rows
    overlap instead of each distance waiting for memory in turn.
    """
    item_bytes = array.dtype.bitwidth // 8

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        arr = context.make_array(array_type)(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        row_index = context.cast(builder, args[1], signature.args[1], types.intp)
        first = cgutils.get_item_pointer(context, builder, array_type, arr, [row_index, intp(0)])
        start = builder.ptrtoint(first, intp)
        stop = builder.add(start, builder.mul(builder.extract_value(arr.shape, 1), intp(item_bytes)))
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0")
        with cgutils.for_range_slice(builder, builder.and_(start, intp(-64)), stop, intp(64)) as (line, _):
            builder.call(prefetch, [builder.inttoptr(line, byte_ptr), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return types.none(array, row), codegen


@nb.njit(inline="always", **_JIT)
def distance(vectors, i, query, metric):
    """Distance from stored vector ``i`` to ``query`` ``[dim]`` (smaller is closer).

    ``vectors`` is float32, or uint8 codes with a query turned as :mod:`hnsw_sq8` describes.
    """
    acc = np.float32(0.0)
    if metric == L2:
        for j in range(query.shape[0]):
            diff = np.float32(vectors[i, j]) - query[j]
            acc += diff * diff
        return acc
    for j in range(query.shape[0]):
        acc += np.float32(vectors[i, j]) * query[j]
    return -acc


@nb.njit(inline="always", **_JIT)
def neighbour_row(links0, upper_links, upper_offset, node, level):
    """The neighbour list ``[M0]`` or ``[M]`` of ``node`` on ``level`` (a writable view)."""
    if level == 0:
        return links0[node]
    return upper_links[upper_offset[node] + level - 1]


@nb.njit(inline="always", **_JIT)
def heap_set(keys, vals, i, key, val):
    """Write entry ``i`` of a heap held in ``keys``, ``vals``."""
    keys[i] = key
    vals[i] = val


@nb.njit(inline="always", **_JIT)
def heap_push(keys, vals, size, key, val):
    """Push onto the binary min-heap held in ``keys[:size]``, ``vals[:size]``; returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        heap_set(keys, vals, i, keys[parent], vals[parent])
        i = parent
    heap_set(keys, vals, i, key, val)
    return size + 1


@nb.njit(inline="always", **_JIT)
def heap_pop(keys, vals, size):
    """Remove the smallest entry of the min-heap; returns the new size."""
    size -= 1
    key = keys[size]
    val = vals[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] >= key:
            break
        heap_set(keys, vals, i, keys[child], vals[child])
        i = child
    heap_set(keys, vals, i, key, val)
    return size


@nb.njit(**_JIT)
def greedy_descent(query, node, dist, top_level, stop_level, vectors, links0, upper_links, upper_offset, metric):
    """Greedy walk (ef = 1) on levels ``top_level`` down to ``stop_level + 1``; returns (node, dist)."""
    for level in range(top_level, stop_level, -1):
        changed = True
        while changed:
            changed = False
            row = neighbour_row(links0, upper_links, upper_offset, node, level)
            for j in range(row.shape[0]):
                nbr = row[j]
                if nbr < 0:
                    break
                d = distance(vectors, nbr, query, metric)
                if d < dist:
                    dist = d
                    node = nbr
                    changed = True
    return node, dist


@nb.njit(**_JIT)
def search_layer(query, entry, entry_dist, level, ef, vectors, links0, upper_links, upper_offset, metric,
                 allow, use_allow, visited, cand_keys, cand_vals, res_keys, res_vals):
    """Beam search of one level (the paper's SEARCH-LAYER); returns the result count.

    The results sit in a max-heap ``res_keys[:count]`` (keys are negated distances), at most ``ef``
    of them, only nodes with ``allow[node]`` when ``use_allow``. Candidates (all nodes, allowed or
    not, so the walk crosses filtered-out regions) sit in the min-heap ``cand_*``, which must hold
    ``capacity + 1`` entries. ``visited`` uint8 ``[ceil(capacity / 8)]`` is a bitset, cleared here.
    """
    visited[:] = 0
    visited[entry >> 3] |= np.uint8(1 << (entry & 7))
    n_cand = heap_push(cand_keys, cand_vals, 0, entry_dist, entry)
    n_res = 0
    if not use_allow or allow[entry]:
        n_res = heap_push(res_keys, res_vals, 0, -entry_dist, entry)
    fresh = np.empty(links0.shape[1], np.int32)  # unvisited neighbours of the expanded node
    while n_cand > 0:
        d = cand_keys[0]
        node = cand_vals[0]
        if n_res >= ef and d > -res_keys[0]:
            break
        n_cand = heap_pop(cand_keys, cand_vals, n_cand)
        row = neighbour_row(links0, upper_links, upper_offset, node, level)
        n_fresh = 0
        for j in range(row.shape[0]):
            nbr = row[j]
            if nbr < 0:
                break
            bit = np.uint8(1 << (nbr & 7))
            if visited[nbr >> 3] & bit == 0:
                visited[nbr >> 3] |= bit
                prefetch_row(vectors, nbr)
                fresh[n_fresh] = nbr
                n_fresh += 1
        for j in range(n_fresh):
            nbr = fresh[j]
            dn = distance(vectors, nbr, query, metric)
            if n_res < ef or dn < -res_keys[0]:
                if level == 0:
                    prefetch_row(links0, nbr)  # a new candidate: its list is likely read soon
                n_cand = heap_push(cand_keys, cand_vals, n_cand, dn, nbr)
                if not use_allow or allow[nbr]:
                    n_res = heap_push(res_keys, res_vals, n_res, -dn, nbr)
                    if n_res > ef:
                        n_res = heap_pop(res_keys, res_vals, n_res)
        if n_cand > 0 and level == 0:
            prefetch_row(links0, cand_vals[0])  # the likely next node to expand
    return n_res


@nb.njit(**_JIT)
def drain_sorted(res_keys, res_vals, n_res, out_ids, out_dists):
    """Empty the result max-heap into ``out_*`` best first; slots past ``n_res`` get -1 / inf."""
    width = out_ids.shape[0]
    for r in range(n_res, width):
        out_ids[r] = -1
        out_dists[r] = np.inf
    for r in range(n_res - 1, -1, -1):
        if r < width:
            out_ids[r] = res_vals[0]
            out_dists[r] = -res_keys[0]
        n_res = heap_pop(res_keys, res_vals, n_res)


@nb.njit(**_JIT)
def rerank_exact(query, vectors, metric, slots, dists, n):
    """Set ``dists[:n]`` to the exact distances of ``slots[:n]`` to ``query`` and sort both by them."""
    for r in range(n):
        prefetch_row(vectors, slots[r])
    for r in range(n):
        dists[r] = distance(vectors, slots[r], query, metric)
    order = np.argsort(dists[:n], kind="mergesort")
    slots[:n] = slots[:n][order]
    dists[:n] = dists[:n][order]


@nb.njit(**_JIT)
def write_reranked(query, vectors, metric, res_keys, res_vals, n_res, slot_ids, dist_offset, out_ids, out_dists):
    """Re-rank the walk's results ``res_vals[:n_res]`` (slots) by exact distance to ``query``.

    ``res_keys`` is scratch. Fills ``out_ids`` int64 ``[k]`` and ``out_dists`` ``[k]`` best first,
    as :func:`search_query`.
    """
    rerank_exact(query, vectors, metric, res_vals, res_keys, n_res)
    for r in range(out_ids.shape[0]):
        if r < n_res:
            out_ids[r] = slot_ids[res_vals[r]]
            out_dists[r] = res_keys[r] + dist_offset
        else:
            out_ids[r] = -1
            out_dists[r] = np.inf


@nb.njit(inline="always", **_JIT)
def turn_query(query, sq_low, sq_step, metric, out):
    """The query as the walk over 8-bit codes measures it (see :mod:`hnsw_sq8`), into ``out`` ``[dim]``."""
    if metric == L2:
        for j in range(query.shape[0]):
            out[j] = (query[j] - sq_low[j]) / sq_step[j]
    else:
        for j in range(query.shape[0]):
            out[j] = query[j] * sq_step[j]
    return out


@nb.njit(**_JIT)
def search_query(query, ef, entry, max_level, vectors, walk_vectors, sq_low, sq_step, links0, upper_links,
                 upper_offset, metric, allow, use_allow, visited, cand_keys, cand_vals, res_keys, res_vals,
                 walk_query, slot_ids, dist_offset, out_ids, out_dists):
    """One query ``[dim]``: greedy descent, level-0 beam of width ``ef``, results as ids.

    The walk measures against ``walk_vectors``: ``vectors`` themselves, or their 8-bit codes
    (uint8, with the quantiser's ``sq_low`` and ``sq_step`` ``[dim]``), when the query is first
    turned into ``walk_query`` (scratch ``[dim]``) and the beam's results are re-ranked by exact
    distance to ``vectors``. Fills ``out_ids`` int64 ``[k]`` with ``slot_ids[slot]`` (-1 past the
    results found) and ``out_dists`` ``[k]`` with the distance plus ``dist_offset`` (inf past the
    results).
    """
    quantised = walk_vectors.itemsize != vectors.itemsize
    if quantised:
        walk_query = turn_query(query, sq_low, sq_step, metric, walk_query)
    else:
        walk_query = query
    dist = distance(walk_vectors, entry, walk_query, metric)
    node, dist = greedy_descent(walk_query, entry, dist, max_level, 0, walk_vectors, links0, upper_links,
                                upper_offset, metric)
    n_res = search_layer(walk_query, node, dist, 0, ef, walk_vectors, links0, upper_links, upper_offset, metric,
                         allow, use_allow, visited, cand_keys, cand_vals, res_keys, res_vals)
    if quantised:
        write_reranked(query, vectors, metric, res_keys, res_vals, n_res, slot_ids, dist_offset, out_ids, out_dists)
        return
    drain_sorted(res_keys, res_vals, n_res, out_ids, out_dists)  # slots and internal distances, then:
    for r in range(min(n_res, out_ids.shape[0])):
        out_ids[r] = slot_ids[out_ids[r]]
        out_dists[r] += dist_offset


# The serial and the parallel search are two separate Python functions on purpose: numba's on-disk
# cache keys an entry by function, signature and bytecode but not by the ``parallel`` option, so
# one function compiled both ways would load whichever variant was cached first for both (the
# single-query path then started an OpenMP team per query, and stalled for milliseconds when the
# woken worker had to share a core).
@nb.njit(parallel=True, **_JIT)
def search_batch(queries, ef, entry, max_level, vectors, walk_vectors, sq_low, sq_step, links0, upper_links,
                 upper_offset, metric, allow, use_allow, visited_pool, cand_keys_pool, cand_vals_pool, slot_ids,
                 dist_offset, out_ids, out_dists):
    """Search every query ``[nq, dim]`` in parallel; fills ``out_ids`` int64 ``[nq, k]`` and ``out_dists``.

    The pools ``[n_chunks, ...]`` are per-chunk scratch (visited bitset, candidate heap of
    ``capacity + 1``). See :func:`search_query` for the outputs.
    """
    nq = queries.shape[0]
    n_chunks = min(visited_pool.shape[0], nq)
    for c in nb.prange(n_chunks):
        res_keys = np.empty(ef + 1, np.float32)
        res_vals = np.empty(ef + 1, np.int32)
        walk_query = np.empty(queries.shape[1], np.float32)
        for qi in range(c, nq, n_chunks):
            search_query(queries[qi], ef, entry, max_level, vectors, walk_vectors, sq_low, sq_step, links0,
                         upper_links, upper_offset, metric, allow, use_allow, visited_pool[c], cand_keys_pool[c], cand_vals_pool[c], res_keys, res_vals, walk_query, slot_ids,
                         dist_offset, out_ids[qi], out_dists[qi])


@nb.njit(**_JIT)
def search_one(query, ef, entry, max_level, vectors, walk_vectors, sq_low, sq_step, links0, upper_links,
               upper_offset, metric, allow, use_allow, visited_pool, cand_keys_pool, cand_vals_pool, slot_ids,
               dist_offset, out_ids, out_dists):
    """Search one query ``[dim]`` on the calling thread (never starts the parallel runtime).

    Uses row 0 of the scratch pools; fills ``out_ids`` int64 ``[k]`` and
    ``out_dists`` ``[k]`` as :func:`search_query` does.
    """
    res_keys = np.empty(ef + 1, np.float32)
    res_vals = np.empty(ef + 1, np.int32)
    search_query(query, ef, entry, max_level, vectors, walk_vectors, sq_low, sq_step, links0, upper_links,
                 upper_offset, metric, allow, use_allow, visited_pool[0], cand_keys_pool[0], cand_vals_pool[0],
                 res_keys, res_vals, np.empty(query.shape[0], np.float32), slot_ids, dist_offset, out_ids,
                 out_dists)


@nb.njit(inline="always", **_JIT)
def same_vector(vectors, a, b):
    """Whether stored vectors ``a`` and ``b`` are identical (exits at the first differing component)."""
    for j in range(vectors.shape[1]):
        if vectors[a, j] != vectors[b, j]:
            return False
    return True


@nb.njit(inline="always", **_JIT)
def copy_rank(base, other):
    """A fixed pseudo-random rank of ``other`` as seen from ``base`` (both slots), for choosing among copies."""
    h = (np.uint64(base) * np.uint64(0x9E3779B97F4A7C15)) ^ (np.uint64(other) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(29))


@nb.njit(**_JIT)
def select_heuristic(base, cand_ids, cand_dists, n_cand, vectors, metric, out):
    """The paper's neighbour-selection heuristic (Algorithm 4, without extend/keep-pruned), aware of copies.

    Candidates arrive sorted by distance to the base point ``base`` (a slot). One is kept when it is
    closer to the base point than to every neighbour kept so far, and is not a copy of one, until
    ``len(out)`` are kept. Exact copies of the base point are handled first: with nothing to tell
    them apart, all of them would pass that test (each is at distance 0 from the base and from each
    other) and fill the list, so that a group of identical points would link only among itself and
    cut the rest of the graph off. At most a quarter of the list goes to copies, chosen by
    :func:`copy_rank` rather than by search order (which is the same for every copy and would make
    all of them link to the same few), so the copies form a random, well-connected subgraph. Kept
    copies are skipped when testing later candidates: they stand where the base stands. Writes the
    kept slots into ``out`` and pads it with -1; returns how many were kept.
    """
    width = out.shape[0]
    max_copies = max(1, width // 4)
    n_out = 0
    for i in range(n_cand):
        e = cand_ids[i]
        if e == base or not same_vector(vectors, e, base):
            continue
        rank = copy_rank(base, e)
        if n_out < max_copies:
            pos = n_out
            n_out += 1
        elif rank < copy_rank(base, out[n_out - 1]):
            pos = n_out - 1
        else:
            continue
        while pos > 0 and copy_rank(base, out[pos - 1]) > rank:
            out[pos] = out[pos - 1]
            pos -= 1
        out[pos] = e
    n_copies = n_out
    for i in range(n_cand):
        if n_out >= width:
            break
        e = cand_ids[i]
        if e == base or same_vector(vectors, e, base):
            continue
        keep = True
        for j in range(n_copies, n_out):
            kept = out[j]
            if distance(vectors, kept, vectors[e], metric) < cand_dists[i] or same_vector(vectors, kept, e):
                keep = False
                break
        if keep:
            out[n_out] = e
            n_out += 1
    for j in range(n_out, width):
        out[j] = -1
    return n_out


def _insert_search(new_slots, new_levels, entry, max_level, ef_construction, vectors, walk_vectors, sq_low,
                   sq_step, links0, upper_links, upper_offset, metric, visited_pool, cand_keys_pool,
                   cand_vals_pool, out_links0, out_upper):
    """Forward links of a batch of new points, found on the graph as it was before the batch.

    For point ``b`` (slot ``new_slots[b]``, level ``new_levels[b]``): greedy descent to its level,
    then on each level ``l <= min(level, max_level)`` a beam search of width ``ef_construction``
    and the heuristic selection of ``M0`` (level 0) or ``M`` links, written to ``out_links0[b]``
    ``[M0]`` and ``out_upper[b, l - 1]`` ``[M]``. The graph is only read, so points are independent.
    The walk runs on ``walk_vectors`` as in :func:`search_query`; with 8-bit codes the beam is
    re-ranked by exact distance before the heuristic, which always measures float32 ``vectors``.
    """
    quantised = walk_vectors.itemsize != vectors.itemsize
    batch = new_slots.shape[0]
    n_chunks = min(visited_pool.shape[0], batch)
    dummy_allow = np.zeros(1, np.bool_)
    for c in nb.prange(n_chunks):
        visited = visited_pool[c]
        cand_keys = cand_keys_pool[c]
        cand_vals = cand_vals_pool[c]
        res_keys = np.empty(ef_construction + 1, np.float32)
        res_vals = np.empty(ef_construction + 1, np.int32)
        sorted_ids = np.empty(ef_construction, np.int32)
        sorted_dists = np.empty(ef_construction, np.float32)
        walk_query = np.empty(vectors.shape[1], np.float32)
        for b in range(c, batch, n_chunks):
            query = vectors[new_slots[b]]
            if quantised:
                walk_query = turn_query(query, sq_low, sq_step, metric, walk_query)
            else:
                walk_query = query
            level = new_levels[b]
            node = entry
            dist = distance(walk_vectors, entry, walk_query, metric)
            top = min(level, max_level)
            node, dist = greedy_descent(walk_query, node, dist, max_level, top, walk_vectors, links0, upper_links,
                                        upper_offset, metric)
            for lv in range(top, -1, -1):
                n_res = search_layer(walk_query, node, dist, lv, ef_construction, walk_vectors, links0, upper_links,
                                     upper_offset, metric, dummy_allow, False, visited, cand_keys, cand_vals,
                                     res_keys, res_vals)
                drain_sorted(res_keys, res_vals, n_res, sorted_ids, sorted_dists)
                if quantised:
                    rerank_exact(query, vectors, metric, sorted_ids, sorted_dists, n_res)
                out = out_links0[b] if lv == 0 else out_upper[b, lv - 1]
                select_heuristic(new_slots[b], sorted_ids, sorted_dists, n_res, vectors, metric, out)
                node = sorted_ids[0]
                dist = distance(walk_vectors, node, walk_query, metric) if quantised else sorted_dists[0]


insert_search = nb.njit(parallel=True, **_JIT)(_insert_search)


@nb.njit(**_JIT)
def _reselect(base, cand, n, vectors, metric, row):
    """Sort ``cand[:n]`` by distance to ``base`` and write the heuristic's choice into ``row``."""
    dists = np.empty(n, np.float32)
    for i in range(n):
        dists[i] = distance(vectors, cand[i], vectors[base], metric)
    order = np.argsort(dists, kind="mergesort")
    select_heuristic(base, cand[:n][order], dists[order], n, vectors, metric, row)


def _link_reverse(targets, target_levels, sources, group_starts, vectors, links0, upper_links, upper_offset,
                  metric):
    """Add reverse links ``target -> source`` on ``target_level``, grouped by (level, target).

    ``group_starts`` ``[n_groups + 1]`` delimits runs of equal (level, target) in the sorted link
    arrays. A list with room takes the sources in order; a full one is re-chosen by the heuristic
    from its old links plus the sources. Each group writes only its own target's list.
    """
    for g in nb.prange(group_starts.shape[0] - 1):
        start, stop = group_starts[g], group_starts[g + 1]
        target = targets[start]
        row = neighbour_row(links0, upper_links, upper_offset, target, target_levels[start])
        count = 0
        while count < row.shape[0] and row[count] >= 0:
            count += 1
        incoming = stop - start
        if count + incoming <= row.shape[0]:
            for i in range(incoming):
                row[count + i] = sources[start + i]
            continue
        cand = np.empty(count + incoming, np.int32)
        cand[:count] = row[:count]
        cand[count:] = sources[start:stop]
        _reselect(target, cand, count + incoming, vectors, metric, row)


link_reverse = nb.njit(parallel=True, **_JIT)(_link_reverse)


def _repair_deleted(deleted, live, levels, n_slots, vectors, links0, upper_links, upper_offset, metric):
    """Re-link every live node that points at a node in ``deleted`` (bool ``[capacity]``).

    On each level where a live node ``u`` lists a deleted neighbour, its new list is the heuristic's
    choice among its live neighbours and the live neighbours of its deleted neighbours (one hop
    through them, as in FreshDiskANN's delete consolidation). Only deleted nodes' lists are read
    across iterations and they do not change here, so the result does not depend on the order.
    """
    for u in nb.prange(n_slots):
        if not live[u]:
            continue
        for level in range(levels[u] + 1):
            row = neighbour_row(links0, upper_links, upper_offset, u, level)
            touched = False
            for j in range(row.shape[0]):
                if row[j] < 0:
                    break
                if deleted[row[j]]:
                    touched = True
                    break
            if not touched:
                continue
            width = row.shape[0]
            cand = np.empty(width + width * width, np.int32)
            n = 0
            for j in range(width):
                v = row[j]
                if v < 0:
                    break
                if not deleted[v]:
                    cand[n] = v
                    n += 1
                    continue
                hop = neighbour_row(links0, upper_links, upper_offset, v, level)
                for i in range(hop.shape[0]):
                    w = hop[i]
                    if w < 0:
                        break
                    if w != u and not deleted[w]:
                        cand[n] = w
                        n += 1
            cand_sorted = np.sort(cand[:n])
            m = 0
            for i in range(n):
                if i == 0 or cand_sorted[i] != cand_sorted[i - 1]:
                    cand_sorted[m] = cand_sorted[i]
                    m += 1
            _reselect(u, cand_sorted, m, vectors, metric, row)


repair_deleted = nb.njit(parallel=True, **_JIT)(_repair_deleted)


def _brute_force(queries, slots, k, vectors, metric, out_ids, out_dists):
    """Exact top-``k`` of each query ``[nq, dim]`` among ``slots`` ``[n]``; pads with -1 / inf."""
    n = slots.shape[0]
    for qi in nb.prange(queries.shape[0]):
        dists = np.empty(n, np.float32)
        for i in range(n):
            dists[i] = distance(vectors, slots[i], queries[qi], metric)
        order = np.argsort(dists, kind="mergesort")
        for r in range(k):
            if r < n:
                out_ids[qi, r] = slots[order[r]]
                out_dists[qi, r] = dists[order[r]]
            else:
                out_ids[qi, r] = -1
                out_dists[qi, r] = np.inf


brute_force = nb.njit(parallel=True, **_JIT)(_brute_force)


@nb.njit(cache=True, nogil=True)
def bfs_order(links0, live, entry, n_slots):
    """Slots ``[:n_slots]`` in breadth-first order of the level-0 graph, int64 ``[n_slots]``.

    Starts at ``entry`` (skipped when -1); a live slot not reached starts a further search (lowest
    first); free slots come last, ascending. Neighbours of one node end up next to each other.
    """
    order = np.empty(n_slots, np.int64)
    seen = np.zeros(n_slots, np.bool_)
    head = 0
    tail = 0
    if entry >= 0:
        order[0] = entry
        seen[entry] = True
        tail = 1
    seed = 0
    while True:
        while head < tail:
            u = order[head]
            head += 1
            for j in range(links0.shape[1]):
                v = links0[u, j]
                if v < 0:
                    break
                if not seen[v]:
                    seen[v] = True
                    order[tail] = v
                    tail += 1
        while seed < n_slots and (seen[seed] or not live[seed]):
            seed += 1
        if seed >= n_slots:
            break
        seen[seed] = True
        order[tail] = seed
        tail += 1
    for s in range(n_slots):
        if not seen[s]:
            order[tail] = s
            tail += 1
    return order
