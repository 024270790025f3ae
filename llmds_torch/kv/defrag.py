"""Planning compaction: which id each live page should get, and the page moves that get it there.

Moves are carried out in rounds; within one round no page is both read and written, so a round can
run as a single parallel kernel launch. A move waits until its destination is vacated; a cycle of
moves (page a wants b's id while b wants a's) is broken through a spare free page.
"""

import numpy as np

from llmds_torch.kv.allocator import CACHED, FREE


def plan_moves(old_to_new: np.ndarray, occupied: np.ndarray) -> list[list[tuple[int, int]]]:
    """Rounds of ``(src, dst)`` moves that take every page ``p`` with ``old_to_new[p] >= 0`` to
    ``old_to_new[p]``.

    Parameters
    ----------
    old_to_new : np.ndarray
        int64 ``[num_pages]``: the final id of each occupied page, -1 for free pages. Final ids are
        distinct.
    occupied : np.ndarray
        bool ``[num_pages]``: which ids hold a page now.

    Returns
    -------
    list of rounds, each a list of (src, dst) pairs.
    """
    occupied = occupied.copy()
    pending = {int(p): int(old_to_new[p]) for p in np.flatnonzero(old_to_new >= 0) if old_to_new[p] != p}
    wanted_by = {dst: src for src, dst in pending.items()}  # dst id -> the page that wants it
    targets = set(wanted_by)
    spare = [int(p) for p in np.flatnonzero(~occupied)[::-1] if int(p) not in targets]
    ready = [src for src, dst in pending.items() if not occupied[dst]]
    rounds: list[list[tuple[int, int]]] = []
    while pending:
        if not ready:
            if not spare:
                raise RuntimeError("compaction needs one free page outside the target ids to break a cycle")
            # Break a cycle: park one page on a spare id, to move on to its target later.
            src = next(iter(pending))
            dst = pending.pop(src)
            park = spare.pop()
            rounds.append([(src, park)])
            occupied[src], occupied[park] = False, True
            pending[park] = dst
            wanted_by[dst] = park
            ready = [wanted_by[src]] if src in wanted_by else []
            continue
        moves = [(src, pending.pop(src)) for src in ready]
        rounds.append(moves)
        next_ready = []
        for src, dst in moves:
            occupied[src], occupied[dst] = False, True
            del wanted_by[dst]
            if src in wanted_by:
                next_ready.append(wanted_by[src])
            elif src not in targets:
                spare.append(src)
        ready = next_ready
    return rounds



def fragmentation(state: np.ndarray) -> float:
    """Share of page ids below the highest non-free page that are free: the room a compaction
    followed by a shrink would give back (0 = perfectly compact). ``state``: int8 ``[num_pages]``."""
    live = np.flatnonzero(state != FREE)
    if live.size == 0:
        return 0.0
    return 1.0 - live.size / (int(live[-1]) + 1)


def compaction_order(state: np.ndarray, sequence_pages: list[list[int]], order: str) -> list[int]:
    """Non-free pages in the order they should occupy ids 0, 1, 2, ...: ``"lowest"`` keeps id
    order; ``"sequence"`` puts each sequence's pages together (``sequence_pages`` in sequence-id
    order), then the cached pages no sequence holds."""
    if order == "lowest":
        return np.flatnonzero(state != FREE).tolist()
    if order != "sequence":
        raise ValueError(f"order must be 'sequence' or 'lowest', got {order!r}")
    seen = np.zeros(state.size, dtype=bool)
    result = []
    for pages in sequence_pages:
        for page in pages:
            if not seen[page]:
                seen[page] = True
                result.append(page)
    cached = [p for p in np.flatnonzero(state == CACHED).tolist() if not seen[p]]
    return result + cached


def plan_compaction(state: np.ndarray, sequence_pages: list[list[int]],
                    order: str = "sequence") -> tuple[list[list[tuple[int, int]]], np.ndarray]:
    """Plan moves that pack the non-free pages into ids ``[0, live)``.

    Returns
    -------
    rounds : list of list of (src, dst)
        Each round's moves read only pages no move of the same round writes.
    old_to_new : np.ndarray
        int64 ``[num_pages]``, each non-free page's final id, -1 for free pages.
    """
    if order == "sequence" and not (state == FREE).any():
        order = "lowest"  # a full pool is already compact, and has no spare page to reorder through
    target_order = compaction_order(state, sequence_pages, order)
    old_to_new = np.full(state.size, -1, dtype=np.int64)
    old_to_new[target_order] = np.arange(len(target_order))
    if order == "lowest":
        # Keep pages already low where they are; move the high ones into the low holes.
        live = np.asarray(target_order, dtype=np.int64)
        n_live = live.size
        stay = live[live < n_live]
        movers = live[live >= n_live]
        holes = np.setdiff1d(np.arange(n_live), stay)
        old_to_new[:] = -1
        old_to_new[stay] = stay
        old_to_new[movers] = holes
    return plan_moves(old_to_new, state != FREE), old_to_new
