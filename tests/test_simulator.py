"""The trace simulator: deterministic, respects budgets, and its clock is the cost model."""

import pytest

from llmds_torch.sched import SchedulerConfig
from llmds_torch.sched.simulator import StepCostModel, simulate
from llmds_torch.sched.traces import TraceRecord, synthetic_trace


def small_trace(seed=0, n=80, **kw):
    return synthetic_trace(n, rate=40.0, burstiness=4.0, prompt_median=40, max_prompt_len=300,
                           output_median=12, max_output_len=80, seed=seed, **kw)


def test_clock_follows_the_cost_model_exactly():
    cost = StepCostModel(base_seconds=0.01, seconds_per_batched_token=0.001, seconds_per_kv_token_read=0.0001)
    trace = [TraceRecord(0.5, prompt_len=10, output_len=3)]
    result = simulate(trace, config=SchedulerConfig(), num_pages=8, page_size=4, cost=cost)
    # prefill 10 tokens reading 10; decodes at positions 10 and 11 reading 11 and 12.
    steps = [0.01 + 10 * 0.001 + 10 * 0.0001, 0.01 + 0.001 + 11 * 0.0001, 0.01 + 0.001 + 12 * 0.0001]
    (record,) = result.records
    assert record.ttft == pytest.approx(steps[0])
    assert result.summary["sim_seconds"] == pytest.approx(0.5 + sum(steps))
    assert record.tpot == pytest.approx((steps[1] + steps[2]) / 2)


@pytest.mark.parametrize("policy", ["fcfs", "srpt", "slo"])
def test_deterministic_and_within_budgets(policy):
    trace = small_trace(seed=5)
    config = SchedulerConfig(policy=policy, max_batch_size=6, max_batch_tokens=96)
    first = simulate(trace, config=config, num_pages=48, page_size=8, keep_batches=True, check_invariants_every=7)
    second = simulate(trace, config=config, num_pages=48, page_size=8, keep_batches=True)
    assert first.summary == second.summary
    assert first.batches == second.batches
    assert first.summary["finished"] == len(trace)
    assert all(n <= 6 and tokens <= 96 for n, tokens in first.batches)
    assert first.summary["preemptions"] > 0  # 48 pages of 8 is tight for this load
    assert sum(r.output_len for r in first.records) == sum(r.output_len for r in trace)


def test_shared_prefix_shows_up_as_prefix_hits():
    config = SchedulerConfig(max_batch_tokens=256)
    plain = simulate(small_trace(seed=2), config=config, num_pages=256, page_size=8)
    shared = simulate(small_trace(seed=2, shared_prefix_len=64, shared_prefix_fraction=1.0), config=config,
                      num_pages=256, page_size=8)
    assert plain.summary["prefix_hit_rate"] < 0.01
    assert shared.summary["prefix_hit_rate"] > 0.3


def test_oversized_requests_are_counted_as_refused():
    trace = [TraceRecord(0.0, 10, 2), TraceRecord(0.1, 500, 2), TraceRecord(0.2, 5, 5)]
    result = simulate(trace, config=SchedulerConfig(), num_pages=8, page_size=8)
    assert result.summary["refused_at_submit"] == 1 and result.summary["finished"] == 2
