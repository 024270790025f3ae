"""Tensor-parallel generation: the built-in decoder and its KV heads split over the ranks launched by
torchrun (gloo on CPU, NCCL on GPU). Rank 0 runs the engine and the block manager and sends each
step's plan; the other ranks follow. Rank 0 checks the tokens against a single-process run.

    torchrun --nproc-per-node 2 examples/tp_generate.py
    torchrun --nproc-per-node 2 examples/tp_generate.py --num-prompts 16 --max-new-tokens 32
"""

import argparse

import torch

from llmds_torch.distributed import init_tensor_parallel, start_tensor_parallel
from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a collective gives up")
    args = parser.parse_args()
    torch.set_num_threads(1)
    group = init_tensor_parallel(timeout_s=args.timeout)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position=512)
    kv_config = KVCacheConfig(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                              page_size=8, num_pages=64, max_num_pages=256)
    full_model = LlamaModel(cfg, seed=0)
    model, kv = start_tensor_parallel(full_model, kv_config, group)
    if not group.is_driver:
        steps = model.serve(kv)
        print(f"rank {group.rank}: followed {steps} steps, {kv.pool.shape[1]} pages of {kv.pool.shape[4]} KV heads")
        torch.distributed.destroy_process_group()
        return
    g = torch.Generator().manual_seed(0)
    system = torch.randint(0, cfg.vocab_size, (24,), generator=g).tolist()
    prompts = [system + torch.randint(0, cfg.vocab_size, (5,), generator=g).tolist() for _ in range(args.num_prompts)]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    engine = GenerationEngine(model, kv, EngineConfig(max_batch_seqs=4))
    results = engine.generate(prompts, params)
    model.stop(kv)
    single = GenerationEngine(full_model, PagedKVCache(kv_config), EngineConfig(max_batch_seqs=4)).generate(prompts, params)
    same = [r.outputs[0].token_ids for r in results] == [r.outputs[0].token_ids for r in single]
    stats = kv.stats()
    print(f"rank 0 of {group.world_size}: {len(results)} requests, prefix hit rate {stats['prefix_hit_rate']:.2f}, "
          f"{kv.config.num_kv_heads} of {cfg.num_kv_heads} KV heads per rank; tokens equal to one process: {same}")
    for r in results[:3]:
        print(f"  request {r.request_id}: {r.outputs[0].token_ids}")
    torch.distributed.destroy_process_group()
    if not same:
        raise SystemExit("tensor-parallel tokens differ from the single-process run")


if __name__ == "__main__":
    main()
