"""Per-request latency records and their summary: TTFT, TPOT, queueing delay, SLO attainment,
preemptions and wasted recompute.

Definitions (seconds on the scheduler's clock):

- queueing delay = first time the request is scheduled - arrival
- TTFT (time to first token) = time of the step that produced the first output token - arrival
- TPOT (time per output token) = (finish - first token) / (output tokens - 1); absent for
  single-token outputs
- SLO met = TTFT <= ttft_slo and (TPOT <= tpot_slo or a single output token)
- SLO attainment = requests that met their SLOs / (finished + shed + refused at submit): a
  request refused or shed is a missed SLO
- wasted recompute tokens = positions computed, lost to preemption, and computed again
  (after subtracting the prefix-cache hit of the re-admission)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The measured life of one finished request."""

    request_id: int
    arrival_time: float
    first_scheduled_time: float
    first_token_time: float
    finish_time: float
    prompt_len: int
    output_len: int
    num_preemptions: int
    wasted_recompute_tokens: int
    ttft_slo: float
    tpot_slo: float

    @property
    def ttft(self) -> float:
        return self.first_token_time - self.arrival_time

    @property
    def queueing_delay(self) -> float:
        return self.first_scheduled_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        if self.output_len < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.output_len - 1)

    @property
    def latency(self) -> float:
        return self.finish_time - self.arrival_time

    @property
    def slo_met(self) -> bool:
        tpot = self.tpot
        return self.ttft <= self.ttft_slo and (tpot is None or tpot <= self.tpot_slo)


def percentiles(values, qs=(50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``values`` (NaN when empty)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(arr, qs))}


class SchedulerMetrics:
    """Collects :class:`RequestRecord` s and step counters; :meth:`summary` aggregates them."""

    def __init__(self):
        self.records: list[RequestRecord] = []
        self.preemptions = 0
        self.forced_preemptions = 0
        self.wasted_recompute_tokens = 0
        self.refused: dict[str, int] = {}
        self.shed: list[int] = []
        self.steps = 0
        self.batched_tokens = 0

    def record_finish(self, record: RequestRecord) -> None:
        self.records.append(record)

    def record_shed(self, request_id: int) -> None:
        self.shed.append(request_id)

    def record_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def summary(self) -> dict:
        """Percentiles of TTFT / TPOT / queueing delay / latency (seconds) over finished
        requests, SLO attainment (fraction in [0, 1]) over every settled request, counters."""
        recs = self.records
        tpots = [r.tpot for r in recs if r.tpot is not None]
        refused = sum(self.refused.values())
        met = sum(r.slo_met for r in recs)
        settled = len(recs) + len(self.shed) + refused
        return {
            "finished": len(recs),
            "refused": refused,
            "refused_by_reason": dict(self.refused),
            "shed": len(self.shed),
            "ttft": percentiles(r.ttft for r in recs),
            "tpot": percentiles(tpots),
            "queueing_delay": percentiles(r.queueing_delay for r in recs),
            "latency": percentiles(r.latency for r in recs),
            "slo_met": met,
            "slo_attainment": met / settled if settled else float("nan"),
            "preemptions": self.preemptions,
            "forced_preemptions": self.forced_preemptions,
            "wasted_recompute_tokens": self.wasted_recompute_tokens,
            "output_tokens": sum(r.output_len for r in recs),
            "steps": self.steps,
            "batched_tokens": self.batched_tokens,
        }
