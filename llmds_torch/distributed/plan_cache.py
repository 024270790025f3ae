"""The driver's cache: a ``PagedKVCache`` holding rank 0's share of the KV heads that also records
every pool operation it runs (growth, copy-on-write copies, compaction rounds, shrink), in order,
for the next step's plan."""

import numpy as np

from llmds_torch.distributed.errors import TensorParallelUnsupported
from llmds_torch.distributed.plan import COPY, MOVE, RESIZE
from llmds_torch.kv.cache import PagedKVCache
from llmds_torch.kv.config import KVCacheConfig


class PlanRecordingCache(PagedKVCache):
    """``PagedKVCache`` plus ``take_pool_ops()``: the operations since the last call.

    Parameters
    ----------
    config : KVCacheConfig
        ``num_kv_heads`` is this rank's share. The host tier is refused (``host_pages`` must be 0).
    """

    def __init__(self, config: KVCacheConfig):
        if config.host_pages:
            raise TensorParallelUnsupported("the host tier does not run under tensor parallelism yet; "
                                            "use host_pages=0")
        self.pool_ops: list = []
        super().__init__(config)
        manager = self.manager
        take_copies, plan_compaction = manager.take_pending_copies, manager.plan_compaction

        def recorded_copies():
            copies = take_copies()
            if copies:
                src, dst = (np.asarray(x, dtype=np.int64) for x in zip(*copies))
                self.pool_ops.append((COPY, src, dst))
            return copies

        def recorded_compaction(order="sequence"):
            rounds, old_to_new = plan_compaction(order)
            for moves in rounds:
                src, dst = (np.asarray(x, dtype=np.int64) for x in zip(*moves))
                self.pool_ops.append((MOVE, src, dst))
            return rounds, old_to_new

        manager.take_pending_copies = recorded_copies
        manager.plan_compaction = recorded_compaction

    def _resize_pool(self, num_pages: int) -> None:
        super()._resize_pool(num_pages)
        self.pool_ops.append((RESIZE, num_pages))

    def take_pool_ops(self) -> list:
        ops, self.pool_ops = self.pool_ops, []
        return ops
