"""A follower rank's KV: its slice of the pool, written and read like the cache, with no bookkeeping
(page ids come from rank 0's plans)."""

import torch

from llmds_torch.kernels.kv_write import kv_write


class ShardPool:
    """``[num_layers, num_pages, 2, page_size, num_kv_heads / world, head_dim]`` and the two calls a
    decoder layer makes on a cache.

    Parameters
    ----------
    pool : Tensor, this rank's pool slice
    backend : kernel backend, as in ``KVCacheConfig``
    """

    def __init__(self, pool: torch.Tensor, backend: str = "auto"):
        self.pool = pool
        self.backend = backend

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v ``[N, num_kv_heads / world, head_dim]`` into ``slot_mapping`` ``[N]`` of ``layer``."""
        kv_write(self.pool[layer], slot_mapping, k, v, backend=self.backend, validate_indices=False)

    def layer(self, index: int) -> torch.Tensor:
        return self.pool[index]
