"""The tiny random Llama, paged KV cache and engine that the fork examples (beam search, parallel
sampling) run on: seconds on a CPU. Imported by those scripts; not an example of its own."""

import torch

from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import GenerationEngine
from llmds_torch.models.llama import LlamaModel


def tiny_engine_and_prompt(page_size: int, prompt_len: int, seed: int) -> tuple[GenerationEngine, list[int]]:
    """A seeded 2-layer Llama (vocabulary 256) on a 256-page cache of ``page_size`` tokens a page, and
    a random prompt of ``prompt_len`` token ids from the same seed."""
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position=512)
    model = LlamaModel(cfg, seed=seed)
    cache = PagedKVCache(KVCacheConfig(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                                       head_dim=cfg.head_dim, page_size=page_size, num_pages=256))
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    return GenerationEngine(model, cache), prompt
