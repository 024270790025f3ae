"""llmds_torch: the data structures an LLM inference stack needs, for people who write their own
PyTorch decoders.

Subpackages (import what you use; importing this package loads none of them):

- ``llmds_torch.kv``: the paged KV cache (``PagedKVCache``, ``KVCacheConfig``, ``BlockManager``)
- ``llmds_torch.sched``: the request scheduler, admission control and trace simulator
- ``llmds_torch.retrieval``: HNSW, BM25, fusion, count-min sketch, the retrieval pipeline
- ``llmds_torch.attention``: paged attention over the cache (``paged_attention``)
- ``llmds_torch.models``: a reference Llama-style decoder and generation
- ``llmds_torch.integrations``: Hugging Face decoders on the paged cache
- ``llmds_torch.distributed``: tensor parallelism over ``torch.distributed``
- ``llmds_torch.kernels``: Triton kernels and their torch references (triton is optional)
- ``llmds_torch.errors``: the named exceptions every part shares, bound here too; each package's
  own are in its ``errors`` module, and all derive from :class:`LLMDSError`

Importing the package points numba's cache at the user's cache directory (see ``jit_cache``).
"""

from llmds_torch.errors import (BudgetExceeded, ConfigError, ContextWindowExceeded, InvalidTokenIds, LLMDSError,
                                OutOfPages, RequestTooLarge, UnknownSequence)
from llmds_torch.jit_cache import configure_numba_cache

configure_numba_cache()

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "LLMDSError", "ConfigError", "OutOfPages", "UnknownSequence", "InvalidTokenIds", "ContextWindowExceeded",
    "BudgetExceeded", "RequestTooLarge",
]
