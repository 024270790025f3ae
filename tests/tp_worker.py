"""What each rank of the tensor-parallel tests runs (spawned by tests/test_tensor_parallel.py), and
the single-process run it is compared with."""

import os

import torch

from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams

CFG = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position=128)
KV = dict(num_layers=CFG.num_layers, num_kv_heads=CFG.num_kv_heads, head_dim=CFG.head_dim, page_size=4,
          num_pages=16, max_num_pages=64, dtype=torch.float32)
ENGINE = EngineConfig(max_batch_seqs=4, record_logits=True, defrag_every=3, defrag_order="sequence")


def workload():
    """Rounds of requests: a shared system prompt (prefix hits), beam search (forks and copy-on-write),
    and enough steps for several compactions."""
    g = torch.Generator().manual_seed(5)
    system = torch.randint(0, CFG.vocab_size, (13,), generator=g).tolist()
    rounds = [[(system + torch.randint(0, CFG.vocab_size, (3,), generator=g).tolist(), SamplingParams(max_new_tokens=6))
               for _ in range(3)] for _ in range(2)]
    rounds.append([(system + [7, 8], SamplingParams(max_new_tokens=5, beam_width=2))])
    return rounds


def drive(model, cache) -> tuple[list, dict]:
    engine = GenerationEngine(model, cache, ENGINE)
    outputs = []
    for requests in workload():
        prompts, params = zip(*requests)
        for result in engine.generate(list(prompts), list(params)):
            outputs.append([(o.token_ids, o.logits) for o in result.outputs])
    return outputs, cache.stats()


def single_process() -> tuple[list, dict]:
    return drive(LlamaModel(CFG, seed=3), PagedKVCache(KVCacheConfig(**KV)))


def run_rank(rank: int, world_size: int, port: int, out_dir: str, scenario: str) -> None:
    from llmds_torch.distributed import init_tensor_parallel

    torch.set_num_threads(1)
    group = init_tensor_parallel(backend="gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                 world_size=world_size, timeout_s=10 if scenario == "dies" else 30)
    try:
        _run(group, rank, out_dir, scenario)
    finally:
        if scenario != "dies":
            torch.distributed.destroy_process_group()


def _run(group, rank: int, out_dir: str, scenario: str) -> None:
    from llmds_torch.distributed import TensorParallelError, start_tensor_parallel

    kv = dict(KV)
    if scenario == "mismatch" and rank == 1:
        kv["page_size"] = 8
    try:
        model, cache = start_tensor_parallel(LlamaModel(CFG, seed=3), KVCacheConfig(**kv), group)
    except TensorParallelError as exc:
        torch.save({"error": type(exc).__name__, "message": str(exc)}, f"{out_dir}/rank{rank}.pt")
        return
    if scenario == "dies":
        if not group.is_driver:
            os._exit(0)  # a rank gone without a word: rank 0 must not wait forever
        try:
            drive(model, cache)
        except TensorParallelError as exc:
            torch.save({"error": type(exc).__name__, "message": str(exc)}, f"{out_dir}/rank{rank}.pt")
        return
    if group.is_driver:
        outputs, stats = drive(model, cache)
        model.stop(cache)
        torch.save({"outputs": outputs, "stats": stats}, f"{out_dir}/rank{rank}.pt")
    else:
        torch.save({"steps": model.serve(cache), "pages": cache.pool.shape[1]}, f"{out_dir}/rank{rank}.pt")
