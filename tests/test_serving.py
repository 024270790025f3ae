"""The scheduler-driven serving loop against a no-cache recompute: whatever the scheduler does
(chunked prefill, prefix hits, preemption by recompute), greedy outputs equal a dense recompute."""

import pytest
import torch

from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams
from llmds_torch.models.serving import ServingLoop
from llmds_torch.sched import Request, Scheduler, SchedulerConfig

CFG = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position=256)


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CFG, seed=11)


def make_cache(num_pages, page_size=4):
    cache = PagedKVCache(KVCacheConfig(CFG.num_layers, CFG.num_kv_heads, CFG.head_dim, page_size=page_size,
                                       num_pages=num_pages, dtype=torch.float32))
    cache.pool.fill_(float("nan"))  # any read of an unwritten slot poisons the logits
    return cache


def greedy_no_cache(model, prompt, max_new):
    out = []
    for _ in range(max_new):
        out.append(int(model.forward_full(prompt + out)[-1].argmax()))
    return out


def prompts(n, shared=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(0, CFG.vocab_size, (shared,), generator=g).tolist()
    return [system + torch.randint(0, CFG.vocab_size, (3 + 2 * i,), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("policy", ["fcfs", "srpt", "slo"])
def test_scheduled_greedy_equals_recompute_with_chunks_hits_and_preemption(model, policy):
    cache = make_cache(num_pages=22)
    scheduler = Scheduler(cache, SchedulerConfig(policy=policy, max_batch_size=4, max_batch_tokens=16,
                                                 max_preemptions=2))
    ps = prompts(6)
    requests = [Request(p, max_new_tokens=10) for p in ps]
    result = ServingLoop(model, scheduler).run(requests, arrivals=[0.0, 0.0, 0.0, 0.001, 0.002, 0.002])
    assert not result.refused
    for p, out in zip(ps, result.outputs):
        assert out == greedy_no_cache(model, p, 10)
    summary = scheduler.metrics.summary()
    assert summary["finished"] == 6
    assert cache.stats()["prefix_hit_tokens"] > 0
    cache.check_invariants()
    assert cache.stats()["pages_used"] == 0


def test_preemption_happens_and_outputs_stay_exact(model):
    cache = make_cache(num_pages=14)
    scheduler = Scheduler(cache, SchedulerConfig(policy="fcfs", max_batch_size=8, max_batch_tokens=64))
    ps = prompts(4, shared=0, seed=3)
    result = ServingLoop(model, scheduler).run([Request(p, max_new_tokens=12) for p in ps])
    assert scheduler.metrics.summary()["preemptions"] > 0
    for p, out in zip(ps, result.outputs):
        assert out == greedy_no_cache(model, p, 12)


def test_seeded_sampling_is_reproducible_and_stop_tokens_end_requests(model):
    ps = prompts(3, seed=5)

    def run():
        scheduler = Scheduler(make_cache(64), SchedulerConfig(max_batch_tokens=64))
        params = SamplingParams(temperature=1.0, top_k=20, seed=7, stop_token_ids=(3,))
        return ServingLoop(model, scheduler, params).run([Request(p, max_new_tokens=20) for p in ps]).outputs

    first, second = run(), run()
    assert first == second
    for out in first:
        assert 3 not in out[:-1] and (len(out) == 20 or out[-1] == 3)


def test_request_too_large_is_refused_and_the_rest_are_served(model):
    scheduler = Scheduler(make_cache(16), SchedulerConfig(max_batch_tokens=64))
    ps = prompts(2)
    huge = Request(list(range(100)), max_new_tokens=10)
    result = ServingLoop(model, scheduler).run([Request(ps[0], 4), huge, Request(ps[1], 4)])
    assert list(result.refused) == [1] and result.request_ids[1] is None
    assert result.outputs[0] == greedy_no_cache(model, ps[0], 4)
    assert result.outputs[2] == greedy_no_cache(model, ps[1], 4)


def test_beams_and_parallel_samples_are_sent_to_the_engine(model):
    scheduler = Scheduler(make_cache(16))
    with pytest.raises(ValueError, match="GenerationEngine"):
        ServingLoop(model, scheduler, SamplingParams(n=2, temperature=1.0))


def test_forward_refuses_tokens_other_than_the_reserved_ones(model):
    """Computing KV for other tokens would publish it under the reserved tokens' prefix key."""
    from llmds_torch.errors import InvalidTokenIds
    cache = make_cache(32)
    seq = cache.attach(list(range(9)))
    with pytest.raises(InvalidTokenIds, match="reserved"):
        model.forward(cache, [seq], [[1] + list(range(1, 9))])
    assert cache.num_written(seq) == 0 and not cache.manager.slot_layers.any()
    model.forward(cache, [seq], [list(range(9))])
    assert cache.num_written(seq) == 9


def test_out_of_vocabulary_and_too_long_prompts_are_refused_at_the_door(model):
    """Checked against the model before anything is reserved; the others are served exactly."""
    scheduler = Scheduler(make_cache(128), SchedulerConfig(max_batch_tokens=64))
    ps = prompts(2)
    oov = Request([1, 2, CFG.vocab_size], max_new_tokens=3)
    too_long = Request(list(range(100)) * 3, max_new_tokens=4)  # 304 positions; the model has 256
    result = ServingLoop(model, scheduler).run([Request(ps[0], 4), oov, too_long, Request(ps[1], 4)])
    assert sorted(result.refused) == [1, 2]
    assert "vocab_size" in result.refused[1] and "max_position" in result.refused[2]
    assert result.outputs[0] == greedy_no_cache(model, ps[0], 4)
    assert result.outputs[3] == greedy_no_cache(model, ps[1], 4)
    assert not scheduler.has_work() and scheduler.cache.stats()["pages_used"] == 0


def test_tiny_temperature_serves_like_greedy(model):
    ps = prompts(2, seed=8)
    scheduler = Scheduler(make_cache(64), SchedulerConfig(max_batch_tokens=64))
    result = ServingLoop(model, scheduler, SamplingParams(temperature=1e-40, seed=3)).run(
        [Request(p, max_new_tokens=5) for p in ps])
    for p, out in zip(ps, result.outputs):
        assert out == greedy_no_cache(model, p, 5)
