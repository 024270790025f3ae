"""AdmissionController: limits hold over every window, refusals say why and when, refunds work."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds_torch.errors import ConfigError
from llmds_torch.sched import AdmissionConfig, AdmissionController, NonMonotonicTime, RateLimits, RequestRefused
from llmds_torch.sched.errors import UnknownRequest

arrivals = st.lists(st.tuples(st.floats(0.0, 0.3), st.integers(1, 60), st.integers(1, 60), st.booleans(),
                              st.integers(0, 60)), min_size=1, max_size=150)


def replay(controller, events):
    """Feed (gap, prompt, max_new, complete_now, generated) events; returns admissions
    [(time, charged_tokens_after_refund)] and the refusals seen."""
    now, admitted, refusals, open_tickets = 0.0, [], [], []
    for i, (gap, prompt, max_new, complete_now, generated) in enumerate(events):
        now += gap
        try:
            controller.admit(i, prompt_len=prompt, max_new_tokens=max_new, now=now)
        except RequestRefused as refusal:
            refusals.append(refusal)
            assert refusal.retry_after >= 0
            continue
        admitted.append([now, prompt + max_new])
        open_tickets.append((i, len(admitted) - 1, max_new))
        if complete_now and open_tickets:
            ticket, idx, mx = open_tickets.pop(0)
            used = min(generated, mx)
            controller.complete(ticket, generated_tokens=used, now=now)
            if admitted[idx][0] > now - controller.config.limits.window_seconds:
                admitted[idx][1] -= mx - used
    return admitted, refusals


@settings(max_examples=120, deadline=None)
@given(arrivals, st.floats(1.0, 20.0), st.floats(1.0, 5.0))
def test_token_bucket_bounds_requests_over_every_interval(events, rate, burst):
    controller = AdmissionController(AdmissionConfig(RateLimits(requests_per_second=rate, burst=burst)))
    admitted, _ = replay(controller, events)
    times = [t for t, _ in admitted]
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-9


@settings(max_examples=120, deadline=None)
@given(arrivals, st.floats(100.0, 1000.0), st.floats(0.2, 2.0))
def test_sliding_window_bounds_tokens_over_every_window(events, tokens_per_second, window):
    limits = RateLimits(tokens_per_second=tokens_per_second, window_seconds=window)
    controller = AdmissionController(AdmissionConfig(limits))
    admitted, refusals = replay(controller, events)
    capacity = tokens_per_second * window
    for start, _ in admitted:  # every window (start - window, start] that ends at an admission
        inside = sum(c for t, c in admitted if start - window < t <= start)
        assert inside <= capacity + 1e-6
    for refusal in refusals:
        assert refusal.reason == "token_rate"


def test_refusal_reason_and_retry_after_token_bucket():
    controller = AdmissionController(AdmissionConfig(RateLimits(requests_per_second=2.0, burst=1.0)))
    controller.admit(0, prompt_len=5, max_new_tokens=5, now=10.0)
    with pytest.raises(RequestRefused) as info:
        controller.admit(1, prompt_len=5, max_new_tokens=5, now=10.1)
    assert info.value.reason == "request_rate"
    assert info.value.retry_after == pytest.approx(0.4)
    controller.admit(1, prompt_len=5, max_new_tokens=5, now=10.1 + info.value.retry_after)


def test_window_retry_after_points_at_when_room_frees_and_refund_makes_room():
    limits = RateLimits(tokens_per_second=100.0, window_seconds=1.0)  # 100 tokens per window
    controller = AdmissionController(AdmissionConfig(limits))
    controller.admit(0, prompt_len=10, max_new_tokens=50, now=0.0)   # 60
    controller.admit(1, prompt_len=10, max_new_tokens=20, now=0.5)   # 90
    with pytest.raises(RequestRefused) as info:
        controller.admit(2, prompt_len=20, max_new_tokens=20, now=0.6)  # 130 > 100
    assert info.value.reason == "token_rate"
    assert info.value.retry_after == pytest.approx(0.4)  # ticket 0 leaves the window at t=1.0
    controller.complete(0, generated_tokens=10, now=0.6)   # refunds 40 unused tokens -> 50 charged
    assert controller.window_tokens(0.6) == pytest.approx(50.0)
    controller.admit(2, prompt_len=20, max_new_tokens=20, now=0.6)  # 90 <= 100


def test_queue_caps_and_release():
    limits = RateLimits(max_queued_requests=2, max_queued_tokens=100)
    controller = AdmissionController(AdmissionConfig(limits, queue_retry_after=0.25))
    controller.admit(0, prompt_len=30, max_new_tokens=10, now=0.0)
    with pytest.raises(RequestRefused) as info:
        controller.admit(1, prompt_len=50, max_new_tokens=20, now=0.0)  # 40 + 70 > 100
    assert (info.value.reason, info.value.retry_after) == ("queued_tokens", 0.25)
    controller.admit(1, prompt_len=30, max_new_tokens=10, now=0.0)
    with pytest.raises(RequestRefused) as info:
        controller.admit(2, prompt_len=1, max_new_tokens=1, now=0.0)
    assert info.value.reason == "queued_requests"
    assert (controller.queued_requests, controller.queued_tokens) == (2, 80)
    controller.complete(0, generated_tokens=3, now=1.0)
    assert (controller.queued_requests, controller.queued_tokens) == (1, 40)
    controller.admit(2, prompt_len=1, max_new_tokens=1, now=1.0)
    with pytest.raises(RequestRefused) as info:
        controller.admit(3, prompt_len=100, max_new_tokens=1, now=1.0)
    assert info.value.retry_after == math.inf  # can never fit the token cap


def test_per_tenant_limits_apply_on_top_of_global():
    config = AdmissionConfig(RateLimits(requests_per_second=100.0, burst=100.0),
                             tenant_limits={"small": RateLimits(requests_per_second=1.0, burst=1.0)})
    controller = AdmissionController(config)
    controller.admit(0, prompt_len=1, max_new_tokens=1, now=0.0, tenant="small")
    with pytest.raises(RequestRefused) as info:
        controller.admit(1, prompt_len=1, max_new_tokens=1, now=0.0, tenant="small")
    assert info.value.reason == "tenant_request_rate"
    for i in range(2, 12):  # other tenants only face the global limit
        controller.admit(i, prompt_len=1, max_new_tokens=1, now=0.0, tenant="big")
    controller.admit(99, prompt_len=1, max_new_tokens=1, now=1.0, tenant="small")


def test_refusal_changes_no_state():
    limits = RateLimits(requests_per_second=1.0, burst=1.0, max_queued_requests=5)
    controller = AdmissionController(AdmissionConfig(limits))
    controller.admit(0, prompt_len=1, max_new_tokens=1, now=0.0)
    for _ in range(3):
        with pytest.raises(RequestRefused):
            controller.admit(1, prompt_len=1, max_new_tokens=1, now=0.5)
    assert controller.queued_requests == 1
    controller.admit(1, prompt_len=1, max_new_tokens=1, now=1.0)  # the refusals drained nothing


def test_bad_input():
    with pytest.raises(ConfigError):
        RateLimits(requests_per_second=-1.0)
    with pytest.raises(ConfigError):
        RateLimits(tokens_per_second=float("nan"))
    with pytest.raises(ConfigError):
        RateLimits(burst=2.0)  # burst without a rate
    with pytest.raises(ConfigError):
        AdmissionConfig(clock_tolerance=-1.0)
    controller = AdmissionController()
    controller.admit(0, prompt_len=1, max_new_tokens=1, now=5.0)
    for bad in (float("nan"), float("inf"), -float("inf"), None, True):
        with pytest.raises(NonMonotonicTime):
            controller.admit(1, prompt_len=1, max_new_tokens=1, now=bad)
        with pytest.raises(NonMonotonicTime):
            controller.complete(0, generated_tokens=1, now=bad)
    assert controller.queued_requests == 1  # the refused calls changed nothing
    with pytest.raises(UnknownRequest):
        controller.complete(42, generated_tokens=1, now=6.0)


def test_small_clock_skew_counts_as_the_latest_time():
    limits = RateLimits(requests_per_second=1.0, burst=2.0, tokens_per_second=10.0, window_seconds=1.0)
    controller = AdmissionController(AdmissionConfig(limits, clock_tolerance=0.01))
    controller.admit(0, prompt_len=1, max_new_tokens=1, now=10.0)
    controller.admit(1, prompt_len=1, max_new_tokens=1, now=9.995)  # a thread that read the clock earlier
    assert controller.clock_resets == 0
    with pytest.raises(RequestRefused) as info:  # the bucket did not refill for the skewed time
        controller.admit(2, prompt_len=1, max_new_tokens=1, now=10.001)
    assert info.value.reason == "request_rate"
    # Both charges sit at t=10.0 (in order), so both leave the window at 11.0.
    assert controller.window_tokens(10.999) == pytest.approx(4.0)
    assert controller.window_tokens(11.0) == 0.0


@pytest.mark.parametrize("absurd", [1e12, -1e12])
def test_one_absurd_time_does_not_wedge_other_tenants(absurd):
    limits = RateLimits(requests_per_second=10.0, burst=2.0, tokens_per_second=100.0, window_seconds=1.0)
    config = AdmissionConfig(limits, tenant_limits={"a": RateLimits(requests_per_second=10.0),
                                                    "b": RateLimits(requests_per_second=10.0)})
    controller = AdmissionController(config)
    controller.admit(0, prompt_len=5, max_new_tokens=5, now=100.0, tenant="a")
    controller.admit(1, prompt_len=5, max_new_tokens=5, now=absurd, tenant="a")
    admitted, now = [], 100.0
    for ticket in range(2, 60):  # tenant b, then a again, at an honest clock: 5 per second
        now += 0.2
        controller.admit(ticket, prompt_len=5, max_new_tokens=5, now=now, tenant="b" if ticket % 2 else "a")
        admitted.append(ticket)
        controller.complete(ticket, generated_tokens=5, now=now)
    assert len(admitted) == 58
    assert controller.clock_resets >= 1
    # The limits still hold on the honest clock: a burst at one instant is cut at the bucket.
    refused = 0
    for ticket in range(100, 110):
        try:
            controller.admit(ticket, prompt_len=1, max_new_tokens=1, now=now + 1.0, tenant="b")
        except RequestRefused:
            refused += 1
    assert refused >= 7


def test_scheduler_refuses_non_finite_times_and_an_absurd_arrival_wedges_nobody():
    from llmds_torch.kv import BlockManager
    from llmds_torch.sched import Request, Scheduler, SchedulerConfig, StepResult

    manager = BlockManager(num_pages=32, page_size=4)
    admission = AdmissionController(AdmissionConfig(RateLimits(requests_per_second=100.0, burst=5.0)))
    scheduler = Scheduler(manager, SchedulerConfig(), admission=admission)
    scheduler.submit(Request([1, 2, 3], 2), now=1.0)
    for bad in (math.inf, math.nan):
        with pytest.raises(NonMonotonicTime):
            scheduler.get_batch(bad)
        with pytest.raises(NonMonotonicTime):
            scheduler.submit(Request([1, 2, 3], 2), now=bad)
    assert scheduler.metrics.refused == {"invalid_time": 2}
    scheduler.submit(Request([4, 5, 6], 2, arrival_time=1e12, tenant="x"))  # one absurd stamp
    now = 1.0
    for i in range(20):  # everyone else keeps being admitted on the honest clock
        now += 0.05
        scheduler.submit(Request([7, 8, i], 1, tenant="y"), now=now)
        batch = scheduler.get_batch(now)
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
        scheduler.complete_batch([StepResult(item.request_id, 9) for item in batch if item.samples], now)
    assert admission.refusals == {}
    while scheduler.has_work():
        now += 0.05
        batch = scheduler.get_batch(now)
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
        scheduler.complete_batch([StepResult(item.request_id, 9) for item in batch if item.samples], now)
    assert len(scheduler.metrics.records) == 22 and admission.queued_requests == 0


def test_a_sequence_group_is_charged_for_every_member():
    from llmds_torch.kv import BlockManager
    from llmds_torch.sched import Request, RequestRefused, Scheduler, SchedulerConfig

    manager = BlockManager(num_pages=64, page_size=4)
    admission = AdmissionController(AdmissionConfig(RateLimits(max_queued_tokens=3 + 2 * 8)))
    scheduler = Scheduler(manager, SchedulerConfig(), admission=admission)
    with pytest.raises(RequestRefused):  # three samples of 8 tokens: 3 + 24 > 19
        scheduler.submit(Request([1, 2, 3], 8, num_seqs=3), now=1.0)
    assert admission.queued_tokens == 0
    scheduler.submit(Request([1, 2, 3], 8, num_seqs=2), now=1.0)  # 3 + 16 fits exactly
    assert admission.queued_tokens == 19
