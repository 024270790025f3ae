"""A step's plan: what rank 0 decided, sent to every rank in one collective.

Page ids are decided once, by the block manager on rank 0. The plan carries the pool operations it
ran since the last step (growth, copy-on-write copies, compaction rounds, shrink), in order, and the
step's inputs (tokens, positions, slot mapping, block table, lengths), all as numpy arrays; every
rank applies the operations to its slice of the pool with the same kernels, so page ids mean the
same thing everywhere.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from llmds_torch.kernels.page_copy import page_copy
from llmds_torch.kernels.page_move import page_move

RESIZE, COPY, MOVE = "resize", "copy", "move"


@dataclass(slots=True)
class StepPlan:
    """One step for every rank. ``stop`` ends the followers' loop.

    Attributes
    ----------
    pool_ops : list of (``"resize"``, n) | (``"copy"``, src, dst) | (``"move"``, src, dst), int64 arrays
    num_pages : int, the pool's size after the operations
    token_ids, positions, slot_mapping : int64 ``[N]``
    block_table : int32 ``[batch, max_pages]``; seq_lens : int32 ``[batch]``
    query_start_loc : int32 ``[batch + 1]`` or None (decode); max_query_len : int
    """

    pool_ops: list = field(default_factory=list)
    num_pages: int = 0
    token_ids: np.ndarray | None = None
    positions: np.ndarray | None = None
    slot_mapping: np.ndarray | None = None
    block_table: np.ndarray | None = None
    seq_lens: np.ndarray | None = None
    query_start_loc: np.ndarray | None = None
    max_query_len: int = 1
    stop: bool = False


def apply_pool_ops(pool: torch.Tensor, ops: list, num_pages: int, backend: str = "auto") -> torch.Tensor:
    """Run ``ops`` on ``pool`` ``[num_layers, pages, 2, page_size, heads, head_dim]`` in order; return
    the pool (a new tensor when resized), ``num_pages`` pages long."""
    for op in ops:
        if op[0] == RESIZE:
            pool = resized(pool, op[1])
        else:
            src, dst = (torch.from_numpy(x).to(pool.device) for x in op[1:])
            (page_copy if op[0] == COPY else page_move)(pool, src, dst, backend=backend, validate_indices=False)
    return pool if pool.shape[1] == num_pages else resized(pool, num_pages)


def resized(pool: torch.Tensor, num_pages: int) -> torch.Tensor:
    """A pool of ``num_pages`` pages holding the first pages of ``pool``."""
    new = torch.empty((pool.shape[0], num_pages) + tuple(pool.shape[2:]), dtype=pool.dtype, device=pool.device)
    keep = min(num_pages, pool.shape[1])
    new[:, :keep].copy_(pool[:, :keep])
    return new
