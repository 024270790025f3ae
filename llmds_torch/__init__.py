"""llmds_torch: the data structures an LLM inference stack needs, for people who write their own
PyTorch decoders. Subpackages: ``kv`` (paged KV cache), ``sched`` (scheduler), ``retrieval``
(HNSW, BM25, fusion, sketches), ``models`` (reference decoder and generation), ``kernels``
(Triton kernels and their torch references)."""

__version__ = "0.1.0"
