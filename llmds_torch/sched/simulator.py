"""Replay a trace against the real :class:`Scheduler` and the real torch-free
:class:`~llmds_torch.kv.BlockManager`, with a step-cost model in place of a model.

Each step: the requests that arrived by ``now`` are submitted (at their arrival times), the
scheduler builds a batch (making the block manager's reservations), the step takes
``a + b * batched_tokens + c * kv_tokens_read`` simulated seconds, the block manager is told the
batch's KV is written (``mark_written``, which publishes full pages for prefix sharing), and every
sampling item gets a deterministic pseudo-token. A request generates exactly its trace
``output_len`` tokens (passed as ``max_new_tokens``, so ``srpt`` knows true lengths). Nothing
reads the wall clock: the same trace, config and seed give the same result.

Every request of the trace counts: SLO attainment is over all of them, a request refused at
submit or shed by the scheduler counting as missed, and goodput is the number that met their
SLOs per simulated second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmds_torch.errors import ConfigError
from llmds_torch.kv import BlockManager
from llmds_torch.sched.admission import AdmissionController
from llmds_torch.sched.batch import Batch, StepResult
from llmds_torch.sched.errors import RequestRefused, RequestTooLarge
from llmds_torch.sched.metrics import RequestRecord
from llmds_torch.sched.request import Request
from llmds_torch.sched.scheduler import Scheduler, SchedulerConfig
from llmds_torch.sched.traces import TraceRecord


@dataclass(frozen=True, slots=True)
class StepCostModel:
    """Simulated seconds of one step: ``a + b * batched_tokens + c * kv_tokens_read``.

    Parameters
    ----------
    base_seconds : float
        ``a``: fixed cost per step (launches, sampling, host work).
    seconds_per_batched_token : float
        ``b``: cost per token computed (prefill chunk tokens + one per decode).
    seconds_per_kv_token_read : float
        ``c``: cost per cached token attention reads; an item covering positions
        ``[start, end)`` reads ``end`` tokens of KV.
    """

    base_seconds: float = 0.005
    seconds_per_batched_token: float = 5e-5
    seconds_per_kv_token_read: float = 5e-8

    def __post_init__(self):
        for name in ("base_seconds", "seconds_per_batched_token", "seconds_per_kv_token_read"):
            value = getattr(self, name)
            if not (value >= 0) or math.isinf(value):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")

    def step_seconds(self, batched_tokens: int, kv_tokens_read: int) -> float:
        return (self.base_seconds + self.seconds_per_batched_token * batched_tokens
                + self.seconds_per_kv_token_read * kv_tokens_read)


@dataclass(slots=True)
class SimulationResult:
    """What a replay measured.

    Attributes
    ----------
    summary : dict
        ``SchedulerMetrics.summary()`` (its ``slo_attainment`` counts refused and shed requests
        as missed) plus ``sim_seconds``, ``requests`` (the trace's), ``submitted`` (admitted),
        ``refused_at_submit``, ``goodput`` (requests meeting their SLOs per simulated second),
        ``prefix_hit_rate`` (of the block manager) and ``max_batch_tokens_seen``.
    records : list[RequestRecord]
        One per finished request.
    batches : list[tuple[int, int]]
        ``(num_items, num_tokens)`` of every step (kept when ``keep_batches``).
    """

    summary: dict
    records: list[RequestRecord]
    batches: list[tuple[int, int]] = field(default_factory=list)


def prompt_tokens(record: TraceRecord, index: int, system_prompt: np.ndarray, vocab_size: int) -> list[int]:
    """Deterministic prompt ids: the shared system prompt (if any) then request-specific ids."""
    own = record.prompt_len - record.shared_prefix_len
    rng = np.random.default_rng(index + 1)
    return system_prompt[: record.shared_prefix_len].tolist() + rng.integers(0, vocab_size, size=own).tolist()


def simulate(trace: Sequence[TraceRecord], *, config: SchedulerConfig, num_pages: int, page_size: int = 16,
             cost: StepCostModel | None = None, admission: AdmissionController | None = None, seed: int = 0,
             vocab_size: int = 32000, max_steps: int = 10_000_000, keep_batches: bool = False,
             check_invariants_every: int = 0, progress: Callable[[int], None] | None = None) -> SimulationResult:
    """Replay ``trace`` and return the scheduler's metrics.

    Parameters
    ----------
    trace : sequence of TraceRecord
    config : SchedulerConfig
    num_pages, page_size : int
        The block manager's size.
    cost : StepCostModel | None
    admission : AdmissionController | None
        Optional admission control; refused requests are counted, not retried.
    seed : int
        Seeds the system prompt's token ids (request token ids derive from their index).
    vocab_size : int
    max_steps : int
        Safety stop on loop iterations, empty steps included; exceeding it raises RuntimeError
        (so does an empty step after which simulated time would not advance).
    keep_batches : bool
        Keep ``(num_items, num_tokens)`` of every step in the result.
    check_invariants_every : int
        When > 0, run ``BlockManager.check_invariants`` every that many steps (tests).
    progress : callable(int) | None
        Called with the number of trace requests settled (finished, refused or shed) each time
        it grows, e.g. to advance a progress bar.
    """
    cost = cost or StepCostModel()
    manager = BlockManager(num_pages=num_pages, page_size=page_size, salt=f"simulator-{seed}")
    scheduler = Scheduler(manager, config, admission=admission)
    order = sorted(range(len(trace)), key=lambda i: trace[i].arrival_time)
    longest_prefix = max((r.shared_prefix_len for r in trace), default=0)
    system_prompt = np.random.default_rng(seed).integers(0, vocab_size, size=longest_prefix)
    now, next_index, refused, submitted, steps, iterations, settled = 0.0, 0, 0, 0, 0, 0, 0
    batches: list[tuple[int, int]] = []
    max_tokens_seen = 0
    metrics = scheduler.metrics
    while next_index < len(order) or scheduler.has_work():
        iterations += 1
        if iterations > max_steps:
            raise RuntimeError(f"simulation exceeded max_steps={max_steps}")
        while next_index < len(order) and trace[order[next_index]].arrival_time <= now:
            index = order[next_index]
            record = trace[index]
            next_index += 1
            request = Request(prompt_tokens(record, index, system_prompt, vocab_size), record.output_len,
                              ttft_slo=record.ttft_slo, tpot_slo=record.tpot_slo)
            try:
                scheduler.submit(request, now=record.arrival_time)
                submitted += 1
            except (RequestRefused, RequestTooLarge):
                refused += 1
        batch = scheduler.get_batch(now)
        if progress is not None and refused + len(metrics.records) + len(metrics.shed) > settled:
            settled = refused + len(metrics.records) + len(metrics.shed)
            progress(settled)
        if not batch:
            if next_index >= len(order) and not scheduler.has_work():
                break  # the last arrivals were refused
            now = _next_event(now, batch, trace, order, next_index)
            continue
        steps += 1
        kv_read = sum(item.end for item in batch.items)
        now += cost.step_seconds(batch.num_tokens, kv_read)
        for item in batch.items:
            manager.mark_written(item.seq_id, item.num_tokens)
        scheduler.complete_batch(_pseudo_tokens(batch, vocab_size), now)
        max_tokens_seen = max(max_tokens_seen, batch.num_tokens)
        if keep_batches:
            batches.append((len(batch), batch.num_tokens))
        if check_invariants_every and steps % check_invariants_every == 0:
            manager.check_invariants()
    if progress is not None and refused + len(metrics.records) + len(metrics.shed) > settled:
        progress(refused + len(metrics.records) + len(metrics.shed))
    summary = metrics.summary()
    summary.update(sim_seconds=now, requests=len(trace), submitted=submitted, refused_at_submit=refused,
                   goodput=summary["slo_met"] / now if now > 0 else 0.0,
                   prefix_hit_rate=manager.stats()["prefix_hit_rate"], max_batch_tokens_seen=max_tokens_seen)
    return SimulationResult(summary, list(metrics.records), batches)


def _pseudo_tokens(batch: Batch, vocab_size: int) -> list[StepResult]:
    return [StepResult(item.request_id, (item.request_id * 1_000_003 + item.end) % vocab_size)
            for item in batch.items if item.samples]


def _next_event(now: float, batch: Batch, trace, order, next_index: int) -> float:
    """The time to jump to when a step had nothing to run; it must lie after ``now``."""
    candidates = []
    if next_index < len(order):
        candidates.append(trace[order[next_index]].arrival_time)
    if batch.wake_time is not None:
        candidates.append(batch.wake_time)
    if not candidates:
        raise RuntimeError("the scheduler has unfinished requests but scheduled nothing and nothing will arrive")
    later = min(candidates)
    if not later > now:  # also NaN: without this guard the loop would spin on empty steps
        raise RuntimeError(f"simulated time would not advance past {now} (next event at {later})")
    return later
