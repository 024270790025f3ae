"""Batch generation on the paged KV cache: prompts that share a system prompt, so their first pages
are computed once and reused. Prints the prefix hit rate, KV memory against a dense cache, copies
and tokens per second.

    python examples/generate.py                   # tiny random model, seconds on a CPU
    python examples/generate.py --num-prompts 64 --hidden-size 256 --device cuda
    python examples/generate.py --model /path/to/local/hf_llama_folder
"""

import argparse
import math

import torch

from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams


def build_model(args) -> LlamaModel:
    if args.model:
        from llmds_torch.models.hf_loader import load_hf_model
        return load_hf_model(args.model, dtype=torch.float32, device=args.device)
    cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                      num_layers=args.num_layers, num_heads=4, num_kv_heads=2, max_position=4096)
    return LlamaModel(cfg, seed=args.seed, device=args.device)


def build_cache(model: LlamaModel, args, max_tokens: int) -> PagedKVCache:
    cfg = model.config
    num_pages = args.num_pages or math.ceil(max_tokens / args.page_size) + 8
    return PagedKVCache(KVCacheConfig(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                                      head_dim=cfg.head_dim, page_size=args.page_size, num_pages=num_pages,
                                      dtype=model.dtype, device=args.device))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--system-len", type=int, default=48, help="tokens of the shared system prompt")
    parser.add_argument("--question-len", type=int, default=8, help="tokens of each prompt's own part")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--page-size", type=int, default=8)
    parser.add_argument("--num-pages", type=int, default=None, help="default: enough for every request at once")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--model", default=None, help="a local Hugging Face-format Llama folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = build_model(args)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    system = torch.randint(0, vocab, (args.system_len,), generator=gen).tolist()
    prompts = [system + torch.randint(0, vocab, (args.question_len,), generator=gen).tolist()
               for _ in range(args.num_prompts)]
    total_tokens = sum(len(p) + args.max_new_tokens for p in prompts)
    cache = build_cache(model, args, total_tokens)
    engine = GenerationEngine(model, cache, EngineConfig(max_prefill_tokens=4 * len(prompts[0])))

    # Submitted together: the scheduler lets the first prompt write the system prompt's pages and
    # holds the others until they are published, so the rest reuse them.
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    results = engine.generate(prompts, params, progress=True)

    stats = engine.stats()
    token_bytes = cache.config.page_bytes // cache.page_size
    dense_bytes = total_tokens * token_bytes  # one contiguous [len, ...] K/V buffer per request, no sharing
    dense_max_bytes = len(prompts) * model.config.max_position * token_bytes  # preallocated to max_position
    paged_bytes = stats["peak_pages_used"] * cache.config.page_bytes
    report = {
        "requests": len(results),
        "generated_tokens": stats["generated_tokens"],
        "prefix_hit_rate": stats["cache_prefix_hit_tokens"] / max(1, stats["cache_prefix_query_tokens"]),
        "prefix_hit_tokens": stats["cache_prefix_hit_tokens"],
        "prompt_tokens_computed": stats["prefill_tokens_computed"],
        "kv_bytes_paged": paged_bytes,
        "kv_bytes_dense": dense_bytes,
        "kv_bytes_dense_max_position": dense_max_bytes,
        "cow_copies": stats["cache_cow_copies"],
        "evictions": stats["cache_evictions"],
        "tokens_per_second": stats["tokens_per_second"],
    }
    print(f"requests             {report['requests']}")
    print(f"generated tokens     {report['generated_tokens']}")
    print(f"prefix hit rate      {report['prefix_hit_rate']:.1%} ({report['prefix_hit_tokens']} prompt tokens reused)")
    print(f"prompt tokens run    {report['prompt_tokens_computed']}")
    print(f"KV memory            {paged_bytes / 2**10:.1f} KiB at peak in pages vs {dense_bytes / 2**10:.1f} KiB "
          f"dense at exact lengths ({dense_bytes / max(1, paged_bytes):.2f}x), "
          f"{dense_max_bytes / 2**10:.1f} KiB dense at max_position")
    print(f"copy-on-write copies {report['cow_copies']}")
    print(f"tokens/s             {report['tokens_per_second']:.1f} (prompt + generated, model steps only)")
    print(f"first output         {results[0].outputs[0].token_ids}")
    return report


if __name__ == "__main__":
    main()
