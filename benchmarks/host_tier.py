"""Host tier on a multi-tenant trace: prefix hit rate and recomputed prompt tokens with the tier off
and on, in the same run, on the same requests.

Tenants share nothing but each has its own system prompt; requests pick a tenant with Zipf
popularity (a few hot tenants, a long tail) and add their own question. The device pool holds a
quarter of the tenants' system prompts (plus room for the running batch), so without the tier the
tail's prefixes are evicted and recomputed; the host pool holds them all. A third run with a device
pool large enough for every prefix gives the bound (only first sightings miss). Every request runs
through the engine with the built-in Llama decoder (greedy, fp32, CPU), and the generated tokens of
both runs are compared (they must be identical).

    .venv/bin/python -m benchmarks.host_tier [--quick]
"""

import argparse
import time

import numpy as np
import torch

from benchmarks._common import print_table, write_results
from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams

MODEL = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                    num_kv_heads=2, max_position=512)
PAGE = 16


def trace(num_tenants: int, num_requests: int, system_len: int, question_len: int, seed: int = 0):
    """``num_requests`` prompts: a Zipf(0.8)-popular tenant's system prompt plus its own question."""
    rng = np.random.default_rng(seed)
    systems = [rng.integers(0, MODEL.vocab_size, system_len).tolist() for _ in range(num_tenants)]
    weights = 1.0 / np.arange(1, num_tenants + 1) ** 0.8
    tenants = rng.choice(num_tenants, size=num_requests, p=weights / weights.sum())
    return [systems[t] + rng.integers(0, MODEL.vocab_size, question_len).tolist() for t in tenants]


def run(model, prompts, device_pages: int, host_pages: int, batch: int, max_new: int) -> tuple[dict, list]:
    cache = PagedKVCache(KVCacheConfig(num_layers=MODEL.num_layers, num_kv_heads=MODEL.num_kv_heads,
                                       head_dim=MODEL.head_dim, page_size=PAGE, num_pages=device_pages,
                                       dtype=torch.float32, host_pages=host_pages))
    engine = GenerationEngine(model, cache, EngineConfig(max_batch_seqs=batch))
    t0 = time.perf_counter()
    results = engine.generate(prompts, SamplingParams(max_new_tokens=max_new))
    seconds = time.perf_counter() - t0
    s = engine.stats()
    row = dict(host_pages=host_pages, device_pages=device_pages,
               prefix_hit_rate=s["cache_prefix_hit_tokens"] / s["cache_prefix_query_tokens"],
               prompt_tokens=s["prompt_tokens"], recomputed_prompt_tokens=s["prefill_tokens_computed"],
               device_evictions=s["cache_evictions"], host_hit_tokens=s.get("cache_host_hit_tokens", 0),
               host_evictions=s.get("cache_host_evictions", 0), mb_to_host=s.get("cache_bytes_to_host", 0) / 2**20,
               mb_to_device=s.get("cache_bytes_to_device", 0) / 2**20, seconds=seconds)
    return row, [r.outputs[0].token_ids for r in sorted(results, key=lambda r: r.request_id)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="24 tenants, 144 requests")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    num_tenants, num_requests = (24, 144) if args.quick else (64, 512)
    system_len, question_len, batch, max_new = 128, 24, 8, 4
    prompts = trace(num_tenants, num_requests, system_len, question_len)
    system_pages = system_len // PAGE
    running = batch * -(-(system_len + question_len + max_new) // PAGE)
    device_pages = num_tenants * system_pages // 4 + running  # a quarter of the prefixes, plus the batch
    host_pages = num_tenants * system_pages
    model = LlamaModel(MODEL, seed=0)
    run(model, prompts[:batch], device_pages, 0, batch, max_new)  # warm-up
    off, tokens_off = run(model, prompts, device_pages, 0, batch, max_new)
    on, tokens_on = run(model, prompts, device_pages, host_pages, batch, max_new)
    # The bound: a device pool that never evicts a prefix (only first sightings miss).
    unbounded, tokens_unbounded = run(model, prompts, device_pages + host_pages, 0, batch, max_new)
    assert tokens_on == tokens_off == tokens_unbounded, "the host tier changed generated tokens"
    ratios = dict(hit_rate_on_over_off=on["prefix_hit_rate"] / off["prefix_hit_rate"],
                  recomputed_on_over_off=on["recomputed_prompt_tokens"] / off["recomputed_prompt_tokens"],
                  seconds_on_over_off=on["seconds"] / off["seconds"])
    print(f"{num_requests} requests over {num_tenants} tenants (Zipf 0.8), system prompt {system_len} tokens, "
          f"question {question_len}, {max_new} new tokens, page {PAGE}; device pool {device_pages} pages, "
          f"host pool {host_pages} pages; Llama {MODEL.num_layers} layers, hidden {MODEL.hidden_size}, fp32, CPU")
    off["run"], on["run"], unbounded["run"] = "tier off", "tier on", "device holds all"
    print_table([off, on, unbounded], ["run"] + [k for k in off if k != "run"])
    print({k: round(v, 3) for k, v in ratios.items()})
    write_results("host_tier_quick" if args.quick else "host_tier",
                  dict(quick=args.quick, num_tenants=num_tenants, num_requests=num_requests, system_len=system_len,
                       question_len=question_len, batch=batch, max_new_tokens=max_new, rows=[off, on, unbounded], ratios=ratios,
                       identical_tokens=True))


if __name__ == "__main__":
    main()
