"""Beam search on the paged KV cache: beams share their prompt's pages through ``fork`` and copy
a page only when they diverge inside it (copy-on-write).

    python examples/beam_search.py
    python examples/beam_search.py --beam-width 8 --max-new-tokens 32
"""

import argparse

import torch

from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--prompt-len", type=int, default=21)
    parser.add_argument("--page-size", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position=512)
    model = LlamaModel(cfg, seed=args.seed)
    cache = PagedKVCache(KVCacheConfig(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                                       head_dim=cfg.head_dim, page_size=args.page_size, num_pages=256))
    engine = GenerationEngine(model, cache)
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    (result,) = engine.generate([prompt], SamplingParams(beam_width=args.beam_width, max_new_tokens=args.max_new_tokens,
                                                         length_penalty=args.length_penalty))
    for rank, beam in enumerate(result.outputs):
        print(f"beam {rank}: score {beam.score:8.4f}  logprob {beam.cumulative_logprob:8.4f}  "
              f"{beam.finish_reason:6s} {beam.token_ids}")
    stats = engine.stats()
    print(f"copy-on-write copies {stats['cache_cow_copies']}, pages in use after: {stats['cache_pages_used']}")
    return {"beams": [b.token_ids for b in result.outputs], "cow_copies": stats["cache_cow_copies"]}


if __name__ == "__main__":
    main()
