"""The paged KV cache: a page pool on a device tensor, block tables, SHA-256 prefix sharing,
reference counts, copy-on-write and compaction."""

from llmds_torch.kv.block_manager import BlockManager
from llmds_torch.kv.budget import TokenBudget
from llmds_torch.kv.cache import BLOCK_TABLE_PAD, DefragReport, PagedKVCache
from llmds_torch.kv.config import KVCacheConfig
from llmds_torch.kv import errors
from llmds_torch.kv.errors import *  # noqa: F401,F403  (the package exports its errors)
from llmds_torch.kv.eviction import EvictionPolicy, FIFOPolicy, LRUPolicy

__all__ = [
    "KVCacheConfig", "PagedKVCache", "BlockManager", "TokenBudget", "DefragReport", "BLOCK_TABLE_PAD",
    "EvictionPolicy", "LRUPolicy", "FIFOPolicy",
] + errors.__all__
