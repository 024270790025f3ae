"""A Hugging Face decoder generating on the paged cache (``PagedCausalLM``) beside transformers'
own ``generate`` (dense ``DynamicCache``, the batch left-padded) and transformers' paged continuous
batching (``generate_batch``, when the installed version has it): same random model, same prompts
(sharing a system prompt), greedy, the same number of new tokens, one run.

Reported per method: generated tokens per second over the whole call (prefill included), KV memory,
and whether its tokens equal ours. KV memory: ours is the peak of pages in use times the page size
in bytes (``peak_kv_bytes``; ``pool_kv_bytes`` is what the pool had allocated); the dense cache holds
every sequence at the padded length (``batch * (longest prompt + new tokens)``); transformers' paged
cache is given room for every request at once with no sharing, and its allocation is reported.

Models: ``tiny`` (2 layers, hidden 64) and ``100m`` (a random Llama of about 100M parameters: 12
layers, hidden 768, 12 query / 4 KV heads, vocabulary 16k). Goal: at least the throughput of
transformers' paged continuous batching at equal outputs, with less KV memory than the dense cache.

    python -m benchmarks.hf [--quick] [--device cpu|cuda] [--threads N] [--num-prompts 16]
"""

import argparse
import copy
import math
import time

import torch

from benchmarks._common import print_table, write_results
from llmds_torch.integrations.hf_random import random_causal_lm
from llmds_torch.integrations.transformers import PagedCausalLM
from llmds_torch.models import EngineConfig, GenerationEngine, SamplingParams

MODELS = {
    "tiny": dict(),
    "100m": dict(vocab_size=16000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048),
}
PAGE_SIZE = 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _kv_bytes_per_token(model) -> int:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * model.dtype.itemsize


def _make_prompts(vocab: int, num_prompts: int, system_len: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    system = torch.randint(0, vocab, (system_len,), generator=gen).tolist()
    return [system + torch.randint(0, vocab, (16 + (7 * i) % 33,), generator=gen).tolist()
            for i in range(num_prompts)]


def _greedy_config(model, max_new: int):
    config = copy.deepcopy(model.generation_config)
    config.update(eos_token_id=[], do_sample=False, max_new_tokens=max_new, pad_token_id=0)
    return config


def run_ours(model, prompts, max_new, device):
    lm = PagedCausalLM(model, page_size=PAGE_SIZE, kv_cache_memory=256 << 20,
                       engine_config=EngineConfig(max_batch_seqs=len(prompts), max_prefill_tokens=2048))
    engine = GenerationEngine(lm, lm.cache, lm.engine_config)
    _sync(device)
    start = time.perf_counter()
    results = engine.generate(prompts, SamplingParams(max_new_tokens=max_new))
    _sync(device)
    seconds = time.perf_counter() - start
    peak = engine.stats()["peak_pages_used"] * lm.cache.config.page_bytes
    model.set_attn_implementation("sdpa")  # hand the model back to the dense baselines
    return ([r.outputs[0].token_ids for r in results], seconds,
            dict(peak_kv_bytes=peak, pool_kv_bytes=lm.cache.pool_bytes,
                 cached_prompt_tokens=sum(r.num_cached_prompt_tokens for r in results)))


def run_dense(model, prompts, max_new, device):
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):  # left padding
        ids[row, longest - len(p):] = torch.tensor(p)
        mask[row, longest - len(p):] = 1
    _sync(device)
    start = time.perf_counter()
    out = model.generate(ids.to(device), attention_mask=mask.to(device), generation_config=_greedy_config(model, max_new))
    _sync(device)
    seconds = time.perf_counter() - start
    held = len(prompts) * (longest + max_new) * _kv_bytes_per_token(model)
    return out[:, longest:].tolist(), seconds, dict(peak_kv_bytes=held)


def run_hf_paged(model, prompts, max_new, device):
    import transformers

    if not hasattr(model, "generate_batch"):
        return None
    blocks = sum(math.ceil((len(p) + max_new) / PAGE_SIZE) for p in prompts)
    cb = transformers.ContinuousBatchingConfig(page_size=PAGE_SIZE, num_blocks=blocks, max_batch_tokens=2048)
    _sync(device)
    start = time.perf_counter()
    out = model.generate_batch(prompts, generation_config=_greedy_config(model, max_new), continuous_batching_config=cb,
                               progress_bar=False, warmup=False)
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = [out[rid].generated_tokens for rid in sorted(out, key=lambda r: int(str(r).rsplit("_", 1)[-1]))]
    return tokens, seconds, dict(peak_kv_bytes=blocks * PAGE_SIZE * _kv_bytes_per_token(model))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, fewer prompts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--system-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sizes = ["tiny"] if args.quick else list(MODELS)
    num_prompts = 4 if args.quick else args.num_prompts
    rows = []
    for size in sizes:
        model = random_causal_lm("llama", seed=0, dtype=dtype, tie_word_embeddings=False, **MODELS[size]).to(device)
        params = sum(p.numel() for p in model.parameters())
        prompts = _make_prompts(model.config.vocab_size, num_prompts, args.system_len)
        run_ours(model, prompts[:2], 2, device)  # warm-up: kernels, allocator
        ours = run_ours(model, prompts, args.max_new_tokens, device)
        baselines = {"transformers generate (dense)": run_dense(model, prompts, args.max_new_tokens, device),
                     "transformers generate_batch (paged)": run_hf_paged(model, prompts, args.max_new_tokens, device)}
        generated = num_prompts * args.max_new_tokens
        ours_tps = generated / ours[1]
        rows.append(dict(model=size, params_m=params / 1e6, method="llmds PagedCausalLM", tokens_per_s=ours_tps,
                         ratio=1.0, kv_mib=ours[2]["peak_kv_bytes"] / 2**20, kv_ratio=1.0, same_tokens=1.0,
                         pool_mib=ours[2]["pool_kv_bytes"] / 2**20, cached_prompt_tokens=ours[2]["cached_prompt_tokens"]))
        for name, result in baselines.items():
            if result is None:
                continue
            tokens, seconds, mem = result
            same = sum(a == b for a, b in zip(tokens, ours[0])) / num_prompts
            rows.append(dict(model=size, params_m=params / 1e6, method=name, tokens_per_s=generated / seconds,
                             ratio=ours_tps / (generated / seconds), kv_mib=mem["peak_kv_bytes"] / 2**20,
                             kv_ratio=ours[2]["peak_kv_bytes"] / mem["peak_kv_bytes"], same_tokens=same))
        del model
    print(f"{num_prompts} prompts sharing a {args.system_len}-token system prompt, {args.max_new_tokens} new tokens "
          f"each, greedy, {args.dtype} on {device}. ratio = our tokens/s over the method's; kv_ratio = our peak "
          f"KV bytes over the method's; same_tokens = share of prompts whose tokens equal ours")
    print_table(rows, ["model", "params_m", "method", "tokens_per_s", "ratio", "kv_mib", "kv_ratio", "same_tokens"])
    name = "hf_quick" if args.quick else "hf"
    write_results(name, dict(args=vars(args), rows=rows))
    return dict(rows=rows)


if __name__ == "__main__":
    main()
