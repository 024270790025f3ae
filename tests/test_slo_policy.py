"""The slo policy: its feasibility rule, what it does with requests that can no longer meet their
SLOs, and that it meets at least as many SLOs as fcfs and srpt on small traces of every regime."""

import math

import pytest

from llmds_torch.kv import BlockManager
from llmds_torch.sched import Request, RequestState, Scheduler, SchedulerConfig, StepResult
from llmds_torch.sched.admission import AdmissionController
from llmds_torch.sched.policies import PolicyParams, is_late, late_at, min_seconds, slo_score
from llmds_torch.sched.simulator import simulate
from llmds_torch.sched.traces import SUITE_REGIMES, trace_suite

PARAMS = PolicyParams(aging_rate=0.0, default_ttft_slo=2.0, default_tpot_slo=0.2, service_seconds_per_token=0.001,
                      step_seconds=0.01, max_batch_tokens=64, slack_weight=10.0, late_penalty=1e5)


def state(prompt_len=100, max_new=11, arrival=1.0, ttft=0.5, tpot=0.05, **fields):
    request = Request(list(range(1, prompt_len + 1)), max_new, ttft_slo=ttft, tpot_slo=tpot)
    s = RequestState(0, request, arrival)
    member = s.members[0]
    for name, value in fields.items():
        setattr(member if name in ("output", "num_computed") else s, name, value)
    return s


def test_min_seconds_chunks_prefill_and_steps_each_decode():
    assert min_seconds(100, 0, PARAMS) == pytest.approx(2 * 0.01 + 100 * 0.001)  # 64 + 36 tokens
    assert min_seconds(0, 8, PARAMS) == pytest.approx(8 * (0.01 + 0.001))
    assert min_seconds(0, 0, PARAMS) == 0.0


def test_feasibility_before_the_first_token():
    s = state()
    assert late_at(s, PARAMS) == pytest.approx(1.5 - 0.12)
    assert not is_late(s, PARAMS, 1.38 - 1e-9) and not is_late(s, PARAMS, late_at(s, PARAMS))
    assert is_late(s, PARAMS, 1.381)
    s.members[0].num_computed = 64  # one chunk done: one step and 36 tokens left
    assert late_at(s, PARAMS) == pytest.approx(1.5 - (0.01 + 0.036))


def test_feasibility_after_the_first_token():
    s = state(first_token_time=1.2, output=[5, 6, 7], num_computed=102)  # decoding: prompt + 2 fed back
    # finish by 1.2 + 0.05 * 10 = 1.7; 8 tokens left, one step each
    assert late_at(s, PARAMS) == pytest.approx(1.7 - 8 * 0.011)
    late_first = state(first_token_time=1.6, output=[5], num_computed=100)  # TTFT 0.6 > 0.5
    assert late_at(late_first, PARAMS) == -math.inf and is_late(late_first, PARAMS, 0.0)
    too_fast = state(tpot=0.005)  # below one step's cost
    assert late_at(too_fast, PARAMS) == -math.inf
    assert late_at(state(max_new=1, tpot=0.005), PARAMS) > 0  # one token: TPOT does not apply


def test_late_requests_rank_below_every_feasible_one_and_shorter_urgent_first():
    feasible_long = state(prompt_len=60, max_new=40, arrival=0.0, ttft=10.0)
    feasible_urgent = state(prompt_len=60, max_new=40, arrival=0.0, ttft=0.5)
    late_short = state(prompt_len=3, max_new=1, arrival=0.0, ttft=0.1)
    now = 0.2
    assert is_late(late_short, PARAMS, now) and not is_late(feasible_long, PARAMS, now)
    scores = [slo_score(s, PARAMS, now) for s in (feasible_urgent, feasible_long, late_short)]
    assert scores == sorted(scores, reverse=True)


def drive(scheduler, manager, now, step=0.05, limit=10_000):
    order = []
    for _ in range(limit):
        if not scheduler.has_work():
            break
        batch = scheduler.get_batch(now)
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
            if item.request_id not in order:
                order.append(item.request_id)
        now += step
        scheduler.complete_batch([StepResult(i.request_id, 7) for i in batch if i.samples], now)
    return order, now


def run_behind_a_busy_request(short_ttft, **config_fields):
    """One slot, held by a 30-token decode from t=0; then a short request with TTFT ``short_ttft``
    and a longer one with TTFT 5 s queue behind it. Returns the scheduler, the order requests
    were first scheduled in, and the ids."""
    manager = BlockManager(num_pages=64, page_size=4)
    config = SchedulerConfig(policy="slo", max_batch_size=1, max_batch_tokens=64, aging_rate=0.0, **config_fields)
    scheduler = Scheduler(manager, config, admission=AdmissionController())
    busy = scheduler.submit(Request(list(range(1, 9)), 30), now=0.0)
    (item,) = scheduler.get_batch(0.0).items  # busy takes the one slot and keeps it
    manager.mark_written(item.seq_id, item.num_tokens)
    scheduler.complete_batch([StepResult(busy, 7)], 0.05)
    short = scheduler.submit(Request([1, 2, 3], 2, ttft_slo=short_ttft), now=0.05)
    longer = scheduler.submit(Request(list(range(1, 41)), 10, ttft_slo=5.0), now=0.05)
    order, _ = drive(scheduler, manager, 0.05)
    return scheduler, [busy] + [rid for rid in order if rid != busy], (busy, short, longer)


def test_a_request_turning_late_in_the_queue_moves_behind_feasible_ones_yet_finishes():
    scheduler, order, (busy, short, longer) = run_behind_a_busy_request(short_ttft=5.0)
    assert order == [busy, short, longer]  # feasible all along, same SLO: the shorter one first
    scheduler, order, (busy, short, longer) = run_behind_a_busy_request(short_ttft=0.3)
    assert order == [busy, longer, short]  # late after 0.3 s of waiting: re-keyed behind
    assert {r.request_id for r in scheduler.metrics.records} == {busy, short, longer}  # yet it ran
    assert scheduler.metrics.shed == []


def test_shed_late_drops_the_late_request_and_counts_it_missed():
    scheduler, order, (busy, short, longer) = run_behind_a_busy_request(short_ttft=0.3, shed_late=True)
    assert order == [busy, longer] and scheduler.metrics.shed == [short]
    summary = scheduler.metrics.summary()
    assert summary["finished"] == 2 and summary["shed"] == 1
    assert summary["slo_attainment"] == pytest.approx(summary["slo_met"] / 3)
    assert scheduler.admission.queued_requests == 0 and not scheduler.has_work()
    with pytest.raises(Exception, match="slo"):
        SchedulerConfig(policy="srpt", shed_late=True)


@pytest.mark.parametrize("regime", SUITE_REGIMES)
def test_slo_meets_at_least_as_many_slos_as_fcfs_and_srpt(regime):
    trace = trace_suite(scale=0.08, seed=3)[regime]
    attained = {}
    for policy in ("fcfs", "srpt", "slo"):
        config = SchedulerConfig(policy=policy, max_batch_size=128, max_batch_tokens=2048)
        attained[policy] = simulate(trace, config=config, num_pages=1024, page_size=16).summary["slo_attainment"]
    assert attained["slo"] >= max(attained["fcfs"], attained["srpt"]), attained
