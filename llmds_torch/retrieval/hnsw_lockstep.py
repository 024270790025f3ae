"""Lockstep batched HNSW search in plain torch tensor operations: the CUDA path and the reference.

All queries advance together, one expansion per step, over fixed-size buffers, so the same code
runs on CPU and CUDA tensors. Level >= 1: a batched greedy walk. Level 0: a beam of ``ef`` slots
per query (ids, distances, an "expanded" flag), kept sorted by ``topk``; each step expands every
active query's best unexpanded slot, scores its ``M0`` neighbours with one batched gather and
product, and merges them in. A query stops when its beam has no unexpanded slot, which is the
paper's stopping rule (its best candidate is no closer than its worst result).

There is no visited map: a neighbour already in the beam is skipped, and one that fell out of the
beam was no better than a full beam's worst distance, which only shrinks. The merge keeps the
beam's own entries ahead of new ones at equal distance (a stable sort), so a new entry must be
strictly better than the worst to get in, and a dropped node can never re-enter: every node is
expanded at most once and the search ends, also among many equal distances (exact copies).
Hence the beam evolves as with a visited set, at the cost of recomputing some distances.
"""

from __future__ import annotations

import torch


def _distances(queries: torch.Tensor, points: torch.Tensor, l2: bool) -> torch.Tensor:
    """queries ``[B, dim]``, points ``[B, m, dim]`` -> ``[B, m]`` (squared L2 or -inner product)."""
    if l2:
        return (points - queries[:, None, :]).square().sum(-1)
    return -torch.einsum("bmd,bd->bm", points, queries)


def greedy_descent(queries, entry: int, max_level: int, vectors, upper_links, upper_offset, l2: bool):
    """Batched greedy walk from ``entry`` down to level 1; returns (nodes ``[B]``, dists ``[B]``)."""
    batch = queries.shape[0]
    nodes = torch.full((batch,), entry, dtype=torch.int64, device=queries.device)
    dists = _distances(queries, vectors[nodes][:, None, :], l2)[:, 0]
    for level in range(max_level, 0, -1):
        active = torch.arange(batch, device=queries.device)
        while active.numel():
            rows = upper_offset[nodes[active]] + (level - 1)            # [A]
            nbrs = upper_links[rows].long()                               # [A, M]
            nd = _distances(queries[active], vectors[nbrs.clamp(min=0)], l2)
            nd = torch.where(nbrs >= 0, nd, torch.inf)                    # [A, M]
            best_d, best_j = nd.min(1)
            better = best_d < dists[active]
            active = active[better]
            nodes[active] = nbrs[better].gather(1, best_j[better, None])[:, 0]
            dists[active] = best_d[better]
    return nodes, dists


def lockstep_search(queries: torch.Tensor, k: int, ef: int, entry: int, max_level: int, vectors: torch.Tensor,
                    links0: torch.Tensor, upper_links: torch.Tensor, upper_offset: torch.Tensor, l2: bool,
                    allow: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search of an HNSW graph held in tensors (all on one device).

    Parameters
    ----------
    queries : float32 ``[B, dim]``.
    k, ef : results per query and beam width (``ef >= k``).
    entry, max_level : the graph's entry slot and top level.
    vectors : float32 ``[capacity, dim]``; links0 : int32 ``[capacity, M0]``;
    upper_links : int32 ``[rows, M]``; upper_offset : int64 ``[capacity]`` (see ``hnsw_numba``).
    l2 : squared L2 when True, negative inner product otherwise.
    allow : optional bool ``[capacity]``; only allowed slots are returned (the walk crosses all).

    Returns
    -------
    slots : int64 ``[B, k]`` (-1 where fewer than ``k`` allowed slots were reached).
    dists : float32 ``[B, k]`` ascending (inf with -1).
    """
    batch, device = queries.shape[0], queries.device
    nodes, dists = greedy_descent(queries, entry, max_level, vectors, upper_links, upper_offset, l2)

    beam_ids = torch.full((batch, ef), -1, dtype=torch.int64, device=device)       # [B, ef]
    beam_d = torch.full((batch, ef), torch.inf, dtype=torch.float32, device=device)
    expanded = torch.ones((batch, ef), dtype=torch.bool, device=device)
    beam_ids[:, 0], beam_d[:, 0], expanded[:, 0] = nodes, dists, False

    while True:
        open_d = torch.where(expanded, torch.inf, beam_d)
        best_d, pos = open_d.min(1)                                                 # [B]
        active = torch.nonzero(torch.isfinite(best_d))[:, 0]                        # [A]
        if active.numel() == 0:
            break
        pos = pos[active]
        expanded[active, pos] = True
        ids, d, exp = beam_ids[active], beam_d[active], expanded[active]            # [A, ef]
        nbrs = links0[ids.gather(1, pos[:, None])[:, 0]].long()                     # [A, M0]
        fresh = (nbrs >= 0) & ~(nbrs[:, :, None] == ids[:, None, :]).any(-1)        # [A, M0]
        nd = _distances(queries[active], vectors[nbrs.clamp(min=0)], l2)
        nd = torch.where(fresh, nd, torch.inf)
        all_d = torch.cat([d, nd], 1)                                               # [A, ef + M0]
        all_ids = torch.cat([ids, torch.where(fresh, nbrs, -1)], 1)
        all_exp = torch.cat([exp, ~fresh], 1)
        # Stable: on equal distances the beam's own entries (first in all_d) stay ahead of new ones.
        top_d, order = torch.sort(all_d, dim=1, stable=True)
        top_d, order = top_d[:, :ef], order[:, :ef]
        beam_d[active] = top_d
        beam_ids[active] = all_ids.gather(1, order)
        expanded[active] = all_exp.gather(1, order)

    if allow is not None:
        ok = (beam_ids >= 0) & allow[beam_ids.clamp(min=0)]
        beam_d = torch.where(ok, beam_d, torch.inf)
    out_d, order = torch.topk(beam_d, k, dim=1, largest=False, sorted=True)
    out_ids = torch.where(torch.isfinite(out_d), beam_ids.gather(1, order), -1)
    return out_ids, out_d
