"""Planning page moves for compaction.

Moves are carried out in rounds; within one round no page is both read and written, so a round can
run as a single parallel kernel launch. A move waits until its destination is vacated; a cycle of
moves (page a wants b's id while b wants a's) is broken through a spare free page.
"""

import numpy as np


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
