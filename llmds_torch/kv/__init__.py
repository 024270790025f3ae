"""The paged KV cache: a page pool on a device tensor, block tables, SHA-256 prefix sharing,
reference counts, copy-on-write and compaction."""

from llmds_torch.errors import ContextWindowExceeded, InvalidTokenIds, OutOfPages, UnknownSequence
from llmds_torch.kv.block_manager import BlockManager, InvariantViolation
from llmds_torch.kv.budget import TokenBudget
from llmds_torch.kv.cache import BLOCK_TABLE_PAD, DefragReport, PagedKVCache
from llmds_torch.kv.config import KVCacheConfig
from llmds_torch.kv.eviction import EvictionPolicy, FIFOPolicy, LRUPolicy
from llmds_torch.kv.transaction import TransactionError

__all__ = [
    "KVCacheConfig", "PagedKVCache", "BlockManager", "TokenBudget", "DefragReport", "BLOCK_TABLE_PAD",
    "EvictionPolicy", "LRUPolicy", "FIFOPolicy", "InvariantViolation", "TransactionError",
    "OutOfPages", "UnknownSequence", "InvalidTokenIds", "ContextWindowExceeded",
]
