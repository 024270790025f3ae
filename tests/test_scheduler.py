"""Scheduler on the real BlockManager: batches an engine can run, budgets and pages respected,
chunked prefill, preemption by recompute, policies, aging, bad input."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds_torch.errors import ConfigError
from llmds_torch.kv import BlockManager
from llmds_torch.sched import (
    CacheProtocol,
    InvalidRequest,
    InvalidStepResult,
    NonMonotonicTime,
    Request,
    RequestTooLarge,
    Scheduler,
    SchedulerConfig,
    SchedulerStateError,
    StepResult,
    UnknownRequest,
)


def random_prompt(rng, n):
    return [rng.randrange(1, 30000) for _ in range(n)]


def check_batch_is_runnable(batch, manager, scheduler, config):
    """What an engine relies on: positions, tokens, pending slots, budgets."""
    assert len(batch) <= config.max_batch_size
    assert batch.num_tokens <= config.max_batch_tokens
    assert len(set(batch.request_ids)) == len(batch)
    assert len(set(batch.seq_ids)) == len(batch)
    for item in batch:
        state = scheduler.state(item.request_id)
        assert manager.num_written(item.seq_id) == item.start
        assert manager.num_tokens(item.seq_id) >= item.end
        assert len(item.token_ids) == item.end - item.start >= 1
        if item.kind == "decode":
            assert item.samples and item.end == item.start + 1
            assert item.token_ids == (state.output[-1],)
            assert manager.num_tokens(item.seq_id) == item.end  # exactly this token is pending
        else:
            assert list(item.token_ids) == state.prefill_tokens[item.start:item.end]
            assert item.samples == (item.end == len(state.prefill_tokens) and not state.output)
        full = manager.token_ids(item.seq_id)
        assert full[item.start:item.end] == list(item.token_ids)


def run(scheduler, manager, config, *, rng, dt=0.01, start=0.0, max_steps=20000, check=True, eos_prob=0.0):
    """Drive the loop to completion like an engine would; returns (outputs by request, steps)."""
    now, steps, outputs, finished = start, 0, {}, set()
    while scheduler.has_work():
        batch = scheduler.get_batch(now)
        steps += 1
        assert steps < max_steps, "no progress"
        if not batch:
            now += dt
            continue
        if check:
            check_batch_is_runnable(batch, manager, scheduler, config)
        assert not finished & set(batch.request_ids), "a finished request was scheduled again"
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
        now += dt
        results = [StepResult(i.request_id, rng.randrange(1, 30000), rng.random() < eos_prob)
                   for i in batch if i.samples]
        for r in results:
            outputs.setdefault(r.request_id, []).append(r.token_id)
        finished.update(scheduler.complete_batch(results, now))
        manager.check_invariants()
    return outputs, finished


def test_every_request_finishes_with_its_tokens_and_pages_return():
    rng = random.Random(0)
    manager = BlockManager(num_pages=64, page_size=8)
    config = SchedulerConfig(max_batch_size=4, max_batch_tokens=40)
    scheduler = Scheduler(manager, config)
    lengths = {}
    for _ in range(12):
        rid = scheduler.submit(Request(random_prompt(rng, rng.randrange(1, 70)), rng.randrange(1, 20)), now=0.0)
        lengths[rid] = scheduler._inbox[-1].request.max_new_tokens
    outputs, finished = run(scheduler, manager, config, rng=rng)
    assert finished == set(lengths)
    assert {rid: len(toks) for rid, toks in outputs.items()} == lengths
    assert manager.stats()["pages_used"] == 0
    summary = scheduler.metrics.summary()
    assert summary["finished"] == 12 and summary["output_tokens"] == sum(lengths.values())


def test_long_prompt_is_prefilled_in_chunks_under_the_token_budget():
    manager = BlockManager(num_pages=32, page_size=4)
    config = SchedulerConfig(max_batch_tokens=16)
    scheduler = Scheduler(manager, config)
    prompt = random_prompt(random.Random(1), 50)
    rid = scheduler.submit(Request(prompt, 3), now=0.0)
    chunks = []
    now = 0.0
    while True:
        batch = scheduler.get_batch(now)
        (item,) = batch.items
        assert item.kind == "prefill" and item.request_id == rid
        chunks.append((item.start, item.end, item.samples))
        manager.mark_written(item.seq_id, item.num_tokens)
        now += 1
        scheduler.complete_batch([StepResult(rid, 7)] if item.samples else [], now)
        if item.samples:
            break
    assert chunks == [(0, 16, False), (16, 32, False), (32, 48, False), (48, 50, True)]
    batch = scheduler.get_batch(now)
    assert [(i.kind, i.start, i.token_ids) for i in batch] == [("decode", 50, (7,))]


def test_prefix_hit_skips_cached_tokens():
    manager = BlockManager(num_pages=32, page_size=4)
    config = SchedulerConfig(max_batch_tokens=64)
    scheduler = Scheduler(manager, config)
    system = random_prompt(random.Random(2), 12)
    rng = random.Random(3)
    scheduler.submit(Request(system + [5, 6], 1), now=0.0)
    run(scheduler, manager, config, rng=rng)
    scheduler.submit(Request(system + [9], 1), now=1.0)
    batch = scheduler.get_batch(1.0)
    assert batch.items[0].start == 12  # three full pages of the shared system prompt were cached


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["fcfs", "srpt", "slo"]), st.integers(6, 40),
       st.integers(1, 6), st.integers(8, 64))
def test_batches_respect_budget_and_pages_under_pressure(seed, policy, num_pages, max_batch_size, max_batch_tokens):
    rng = random.Random(seed)
    page_size = 4
    manager = BlockManager(num_pages=num_pages, page_size=page_size)
    config = SchedulerConfig(policy=policy, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                             max_preemptions=2)
    scheduler = Scheduler(manager, config)
    expected = {}
    for i in range(rng.randrange(1, 14)):
        total = rng.randrange(2, num_pages * page_size + 1)
        prompt_len = rng.randrange(1, total)
        rid = scheduler.submit(Request(random_prompt(rng, prompt_len), total - prompt_len,
                                       ttft_slo=rng.choice([0.05, 1.0])), now=i * 0.01)
        expected[rid] = total - prompt_len
    outputs, finished = run(scheduler, manager, config, rng=rng, start=0.2)
    assert finished == set(expected)
    assert {rid: len(t) for rid, t in outputs.items()} == expected
    for record in scheduler.metrics.records:
        assert record.num_preemptions <= config.max_preemptions + scheduler.metrics.forced_preemptions
    assert manager.stats()["pages_used"] == 0


def test_preemption_recomputes_outputs_and_victim_is_lowest_score():
    manager = BlockManager(num_pages=6, page_size=4)  # 24 slots
    config = SchedulerConfig(policy="fcfs", max_batch_tokens=64)
    scheduler = Scheduler(manager, config)
    rng = random.Random(4)
    first = scheduler.submit(Request(random_prompt(rng, 8), 8), now=0.0)
    second = scheduler.submit(Request(random_prompt(rng, 8), 8), now=1.0)
    now, preempted = 2.0, []
    seen_recompute = False
    while scheduler.has_work():
        batch = scheduler.get_batch(now)
        preempted += batch.preempted
        for item in batch:
            if item.request_id == second and item.kind == "prefill" and item.end > 8:
                # recompute: prompt + every output so far, then samples the next token
                state = scheduler.state(second)
                assert list(item.token_ids) == (list(state.request.prompt) + state.output)[item.start:item.end]
                seen_recompute = True
            manager.mark_written(item.seq_id, item.num_tokens)
        now += 1
        scheduler.complete_batch([StepResult(i.request_id, 11) for i in batch if i.samples], now)
    assert preempted and set(preempted) == {second}  # the later arrival is the lower fcfs score
    assert seen_recompute
    records = {r.request_id: r for r in scheduler.metrics.records}
    assert records[first].num_preemptions == 0 and records[second].num_preemptions >= 1
    assert scheduler.metrics.wasted_recompute_tokens > 0
    assert records[second].output_len == 8


def test_preemption_cap_protects_a_request():
    manager = BlockManager(num_pages=6, page_size=4)
    config = SchedulerConfig(policy="fcfs", max_batch_tokens=64, max_preemptions=0)
    scheduler = Scheduler(manager, config)
    rng = random.Random(5)
    scheduler.submit(Request(random_prompt(rng, 8), 8), now=0.0)
    scheduler.submit(Request(random_prompt(rng, 8), 8), now=1.0)
    run(scheduler, manager, config, rng=rng, start=2.0)
    # Nobody may be preempted, so the deadlock breaker had to step in, and said so.
    assert scheduler.metrics.preemptions == scheduler.metrics.forced_preemptions >= 1


@pytest.mark.parametrize("policy, expected_first", [("fcfs", 0), ("srpt", 2), ("slo", 1)])
def test_policy_order(policy, expected_first):
    manager = BlockManager(num_pages=64, page_size=4)
    config = SchedulerConfig(policy=policy, max_batch_size=1, aging_rate=0.0)
    scheduler = Scheduler(manager, config)
    rng = random.Random(6)
    scheduler.submit(Request(random_prompt(rng, 20), 20, ttft_slo=10.0), now=0.0)
    scheduler.submit(Request(random_prompt(rng, 20), 20, ttft_slo=0.5), now=0.1)  # earliest deadline
    scheduler.submit(Request(random_prompt(rng, 5), 2, ttft_slo=10.0), now=0.2)   # shortest
    batch = scheduler.get_batch(0.3)
    assert batch.request_ids == [expected_first]


def adversarial_longest_wait(aging_rate, horizon=300):
    """One long request at t=0, then a short one arriving every step; one sequence per step.
    Returns when the long request was first scheduled (or None if never within the horizon)."""
    manager = BlockManager(num_pages=256, page_size=4)
    config = SchedulerConfig(policy="srpt", max_batch_size=1, max_batch_tokens=64, aging_rate=aging_rate)
    scheduler = Scheduler(manager, config)
    rng = random.Random(7)
    long_id = scheduler.submit(Request(random_prompt(rng, 40), 40), now=0.0)
    for step in range(horizon):
        now = float(step)
        scheduler.submit(Request(random_prompt(rng, 2), 1), now=now)
        batch = scheduler.get_batch(now)
        if long_id in batch.request_ids:
            return now
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
        scheduler.complete_batch([StepResult(i.request_id, 3) for i in batch if i.samples], now + 0.5)
    return None


def test_aging_bounds_the_longest_wait_on_an_adversarial_trace():
    assert adversarial_longest_wait(aging_rate=0.0) is None  # pure SRPT starves the long request
    aging = 2.0
    # Long: 80 remaining tokens, shorts: 3. The long one outranks every short that arrives more
    # than (80 - 3) / aging seconds after it; the shorts queued before then take one step each.
    bound = (80 - 3) / aging + (80 - 3) / aging + 2
    waited = adversarial_longest_wait(aging_rate=aging)
    assert waited is not None and waited <= bound


def test_bad_requests_are_refused_at_submit():
    manager = BlockManager(num_pages=4, page_size=4, max_context_len=12)
    scheduler = Scheduler(manager, SchedulerConfig())
    with pytest.raises(InvalidRequest):
        Request([1, 2], 0)
    with pytest.raises(InvalidRequest):
        Request([1, 2], -3)
    with pytest.raises(InvalidRequest):
        Request([], 3)
    with pytest.raises(InvalidRequest):
        Request([1, -2], 3)
    with pytest.raises(InvalidRequest):
        Request([1, 2], 3, priority=-1.0)
    with pytest.raises(InvalidRequest):
        Request([1, 2], 3, priority=float("nan"))
    with pytest.raises(InvalidRequest):
        Request([1, 2], 3, ttft_slo=float("nan"))
    with pytest.raises(InvalidRequest):
        Request([1, 2], 3, tpot_slo=-0.1)
    with pytest.raises(InvalidRequest):
        Request([1, 2], 3, arrival_time=float("nan"))
    with pytest.raises(RequestTooLarge, match="context window"):
        scheduler.submit(Request([1] * 10, 3), now=0.0)
    big = Scheduler(BlockManager(num_pages=4, page_size=4), SchedulerConfig())
    with pytest.raises(RequestTooLarge, match="whole cache"):
        big.submit(Request([1] * 10, 7), now=0.0)  # 17 tokens > 4 pages of 4
    assert not scheduler.has_work() and not big.has_work()
    assert scheduler.metrics.summary()["refused_by_reason"] == {"too_large": 1}
    with pytest.raises(ConfigError):
        SchedulerConfig(policy="lifo")
    with pytest.raises(ConfigError):
        SchedulerConfig(max_batch_tokens=0)
    with pytest.raises(ConfigError):
        SchedulerConfig(aging_rate=float("nan"))


def test_out_of_order_calls_and_bad_results_change_nothing():
    manager = BlockManager(num_pages=16, page_size=4)
    scheduler = Scheduler(manager, SchedulerConfig(max_batch_tokens=8))
    with pytest.raises(SchedulerStateError):
        scheduler.complete_batch([], 0.0)
    a = scheduler.submit(Request([1, 2, 3], 2), now=0.0)
    b = scheduler.submit(Request(list(range(1, 13)), 2), now=0.0)  # 12 tokens: 5 now, 7 next step
    batch = scheduler.get_batch(1.0)
    assert [(i.request_id, i.samples) for i in batch] == [(a, True), (b, False)]
    with pytest.raises(SchedulerStateError):
        scheduler.get_batch(1.0)
    with pytest.raises(UnknownRequest):
        scheduler.complete_batch([StepResult(a, 5), StepResult(99, 5)], 2.0)
    with pytest.raises(InvalidStepResult):
        scheduler.complete_batch([], 2.0)  # a's token is missing
    with pytest.raises(InvalidStepResult):
        scheduler.complete_batch([StepResult(a, 5), StepResult(b, 5)], 2.0)  # b samples nothing yet
    with pytest.raises(InvalidStepResult):
        scheduler.complete_batch([StepResult(a, -5)], 2.0)
    with pytest.raises(NonMonotonicTime):
        scheduler.complete_batch([StepResult(a, 5)], 0.5)
    assert scheduler.state(a).output == [] and scheduler.state(b).num_computed == 0
    for item in batch:
        manager.mark_written(item.seq_id, item.num_tokens)
    assert scheduler.complete_batch({a: 5}, 2.0) == []
    assert scheduler.state(a).output == [5] and scheduler.state(b).num_computed == 5
    with pytest.raises(NonMonotonicTime):
        scheduler.get_batch(1.5)


def test_engine_finished_flag_stops_early():
    manager = BlockManager(num_pages=16, page_size=4)
    config = SchedulerConfig()
    scheduler = Scheduler(manager, config)
    rid = scheduler.submit(Request([4, 5, 6], 10), now=0.0)
    batch = scheduler.get_batch(0.0)
    manager.mark_written(batch.items[0].seq_id)
    assert scheduler.complete_batch({rid: (9, True)}, 0.1) == [rid]
    assert not scheduler.has_work()
    assert scheduler.metrics.records[0].output_len == 1


def test_max_wait_holds_a_lone_small_batch():
    manager = BlockManager(num_pages=16, page_size=4)
    scheduler = Scheduler(manager, SchedulerConfig(max_batch_size=4, max_wait=0.5))
    scheduler.submit(Request([1, 2], 1), now=0.0)
    held = scheduler.get_batch(0.1)
    assert not held and held.wake_time == pytest.approx(0.5)
    scheduler.submit(Request([3, 4], 1), now=0.2)
    assert len(scheduler.get_batch(0.5)) == 2


def test_both_caches_satisfy_the_protocol():
    import torch

    from llmds_torch.kv import KVCacheConfig, PagedKVCache

    paged = PagedKVCache(KVCacheConfig(num_layers=1, num_kv_heads=1, head_dim=4, page_size=4, num_pages=8,
                                       dtype=torch.float32, device="cpu"))
    manager = BlockManager(num_pages=8, page_size=4)
    for cache in (paged, manager):
        assert isinstance(cache, CacheProtocol)
        scheduler = Scheduler(cache, SchedulerConfig())
        rid = scheduler.submit(Request([1, 2, 3, 4, 5], 2), now=0.0)
        batch = scheduler.get_batch(0.0)
        assert batch.items[0].seq_id in cache and batch.items[0].request_id == rid
        with pytest.raises(RequestTooLarge):
            scheduler.submit(Request([1] * 30, 3), now=0.0)


def test_metrics_definitions():
    manager = BlockManager(num_pages=16, page_size=4)
    scheduler = Scheduler(manager, SchedulerConfig(default_ttft_slo=1.5, default_tpot_slo=0.3))
    rid = scheduler.submit(Request([1, 2, 3], 3), now=1.0)
    now = 2.0
    for _ in range(3):
        batch = scheduler.get_batch(now)
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
        now += 0.25
        scheduler.complete_batch({rid: 8}, now)
    (record,) = scheduler.metrics.records
    assert record.queueing_delay == pytest.approx(1.0)
    assert record.ttft == pytest.approx(1.25)
    assert record.tpot == pytest.approx(0.25)
    assert record.slo_met
    assert math.isclose(scheduler.metrics.summary()["slo_attainment"], 1.0)
