"""Scheduling policies as small pure score functions: a higher score runs sooner.

Every score is the policy's natural key plus a linear aging term plus the request's priority::

    score(now) = key(state, now) + aging_rate * (now - arrival_time) + request.priority

``aging_rate * now`` is the same for every request, so it never changes the order and is left
out: the stored score ``key - aging_rate * arrival_time + priority`` is constant while a request
waits -- for ``fcfs`` and ``srpt`` always, for ``slo`` between the few instants listed below --
which lets the waiting queue be an :class:`IndexedHeap` without re-keying every step. A request
that has waited ``w`` seconds longer than another gains ``aging_rate * w`` on it, so with
``aging_rate > 0`` no request starves: any later arrival's score falls below it once
``aging_rate * w`` exceeds the largest key gap.

The same score picks the preemption victim (the running request with the lowest score) and
re-admits it (its score in the waiting queue).

Policies
--------
``fcfs``  key = 0 (aging alone: earlier arrival first; score units: seconds).
``srpt``  key = -(remaining prefill tokens + remaining output tokens) (units: tokens).
``slo``   maximises the number of requests that meet their SLOs (units: tokens, like ``srpt``).

The ``slo`` policy
------------------
Ordering by deadline slack alone collapses under overload: once the queue is longer than the
slack, every request is served just too late (each one waits for all earlier-deadline ones,
which are themselves late). ``slo`` therefore splits requests in two:

- *feasible*: the request can still meet its SLOs if it runs from now on with nothing in its
  way. The least work it needs is estimated from the step-cost model (see :func:`min_seconds`):
  its remaining prefill (chunked under ``max_batch_tokens``), then one step per remaining output
  token. A request is feasible until :func:`late_at`, the latest time it can start::

      first token not yet out:  late_at = arrival + ttft_slo - min_seconds(prefill left)
      after the first token:    late_at = first_token + tpot_slo * (max_new_tokens - 1)
                                          - min_seconds(prefill left + output left)

  (a first token already later than ``ttft_slo``, or a ``tpot_slo`` below one step's cost,
  makes ``late_at = -inf``: the SLO is already lost). Feasible requests are ordered shortest
  remaining work first (``srpt``'s key), pulled forward by ``slack_weight`` tokens per second
  of how soon they turn late: ``key = -(remaining tokens + slack_weight * late_at)``. Serving
  short requests first finishes the most of them; the slack term lets an urgent request pass
  shorter ones that can afford to wait (an interactive request with a 0.5 s TTFT passes a batch
  one with 10 s unless the batch one is ~95 tokens per second of slack shorter, at 10).
- *late*: past ``late_at`` its SLO cannot be met any more, so letting it delay a feasible
  request only turns a second request late. Its key drops by ``late_penalty`` (``late_at`` is
  the arrival time when the SLO was lost from the start), so every feasible request runs
  first, while aging still lets a late one run once it has waited about
  ``late_penalty / (aging_rate + slack_weight)`` seconds longer (900 s by default: nothing
  starves). With ``shed_late`` the scheduler drops a waiting request that turns late before
  producing any token instead (counted as missed).

A waiting request's ``slo`` score changes only at ``late_at``; :class:`Policy` keeps those
instants in a timer heap so the scheduler re-keys exactly the requests whose turn came.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

from llmds_torch.errors import ConfigError
from llmds_torch.sched.request import RequestState

POLICIES = ("fcfs", "srpt", "slo")

# Aging per second waited, in each policy's score units, used when the config leaves it None.
DEFAULT_AGING_RATE = {"fcfs": 1.0, "srpt": 100.0, "slo": 100.0}


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """What a score function needs beyond the request's state.

    Parameters
    ----------
    aging_rate : float
        Score units gained per second waited (>= 0).
    default_ttft_slo, default_tpot_slo : float
        Seconds used for requests that set no SLO of their own.
    service_seconds_per_token : float
        Estimated seconds one more token adds to a step (the cost model's per-token term).
    step_seconds : float
        Estimated fixed seconds of one step (the cost model's per-step term).
    max_batch_tokens : int
        Tokens one step computes at most (prefill is chunked to it).
    slack_weight : float
        ``slo``: tokens of remaining work one second earlier :func:`late_at` is worth.
    late_penalty : float
        ``slo``: tokens subtracted from the score of a request that can no longer meet its SLOs
        (and added to one within ``urgent_window`` seconds of turning late).
    urgent_window : float
        ``slo``: seconds before :func:`late_at` from which a request runs ahead of every
        request that can still wait.
    """

    aging_rate: float
    default_ttft_slo: float
    default_tpot_slo: float
    service_seconds_per_token: float = 0.0
    step_seconds: float = 0.0
    max_batch_tokens: int = 2048
    slack_weight: float = 10.0
    late_penalty: float = 100_000.0
    urgent_window: float = 1.0


def ttft_slo_of(state: RequestState, params: PolicyParams) -> float:
    slo = state.request.ttft_slo
    return params.default_ttft_slo if slo is None else slo


def tpot_slo_of(state: RequestState, params: PolicyParams) -> float:
    slo = state.request.tpot_slo
    return params.default_tpot_slo if slo is None else slo


def min_seconds(prefill_tokens: int, decode_tokens: int, params: PolicyParams) -> float:
    """The least time ``prefill_tokens`` of prefill (chunked to ``max_batch_tokens`` per step)
    followed by ``decode_tokens`` single-token steps can take, alone on the device."""
    prefill_steps = -(-prefill_tokens // params.max_batch_tokens)
    return (params.step_seconds * (prefill_steps + decode_tokens)
            + params.service_seconds_per_token * (prefill_tokens + decode_tokens))


def late_at(state: RequestState, params: PolicyParams) -> float:
    """The latest time the request can (re)start and still meet its SLOs; ``-inf`` when they
    are already lost. See the module docstring for the formula (written out inline here: the
    scheduler sorts every running request by it each step)."""
    request = state.request
    step, per_token = params.step_seconds, params.service_seconds_per_token
    tpot_slo = params.default_tpot_slo if request.tpot_slo is None else request.tpot_slo
    max_new = request.max_new_tokens
    if max_new > 1 and tpot_slo < step + per_token:
        return -math.inf  # no step is that fast
    ttft_slo = params.default_ttft_slo if request.ttft_slo is None else request.ttft_slo
    prefill = len(state.prefill_tokens) - state.num_computed
    prefill_seconds = step * -(-prefill // params.max_batch_tokens) + per_token * prefill
    first_token_time = state.first_token_time
    if first_token_time is None:
        return state.arrival_time + ttft_slo - prefill_seconds
    if first_token_time - state.arrival_time > ttft_slo:
        return -math.inf
    decodes = max_new - len(state.output) - (1 if prefill > 0 else 0)
    finish_deadline = first_token_time + tpot_slo * (max_new - 1)
    return finish_deadline - prefill_seconds - (step + per_token) * max(decodes, 0)


def is_late(state: RequestState, params: PolicyParams, now: float) -> bool:
    """True when the request can no longer meet its SLOs (the ``slo`` feasibility rule)."""
    return now > late_at(state, params)


def fcfs_score(state: RequestState, params: PolicyParams, now: float) -> float:
    return -params.aging_rate * state.arrival_time + state.request.priority


def srpt_score(state: RequestState, params: PolicyParams, now: float) -> float:
    return -state.remaining_tokens - params.aging_rate * state.arrival_time + state.request.priority


def slo_score(state: RequestState, params: PolicyParams, now: float) -> float:
    deadline = late_at(state, params)
    remaining = len(state.prefill_tokens) - state.num_computed + state.request.max_new_tokens - len(state.output)
    key = -remaining - params.slack_weight * (deadline if deadline > -math.inf else state.arrival_time)
    if now > deadline:
        key -= params.late_penalty
    elif now > deadline - params.urgent_window:
        key += params.late_penalty
    return key - params.aging_rate * state.arrival_time + state.request.priority


ScoreFn = Callable[[RequestState, PolicyParams, float], float]

_SCORES: dict[str, ScoreFn] = {"fcfs": fcfs_score, "srpt": srpt_score, "slo": slo_score}


def score_function(policy: str) -> ScoreFn:
    """The score function of ``policy`` (one of :data:`POLICIES`)."""
    try:
        return _SCORES[policy]
    except KeyError:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}") from None


class Policy:
    """A score function, its parameters, and (for ``slo``) when waiting requests' scores change.

    The scheduler calls :meth:`score` to key a request, :meth:`watch` whenever it puts a
    request into the waiting queue, and :meth:`due` once per step for the requests whose
    waiting score has changed since (they may have left the queue meanwhile; the scheduler
    skips those).
    """

    def __init__(self, name: str, params: PolicyParams):
        self.name = name
        self.params = params
        self._score_fn = score_function(name)
        self._timers: list[tuple[float, int]] = []  # (late_at, request_id), a min-heap

    def score(self, state: RequestState, now: float) -> float:
        return self._score_fn(state, self.params, now)

    def is_late(self, state: RequestState, now: float) -> bool:
        return is_late(state, self.params, now)

    def watch(self, state: RequestState, now: float) -> None:
        if self.name != "slo":
            return
        when = late_at(state, self.params)
        for change in (when - self.params.urgent_window, when):
            if change >= now:  # a change already behind is in the score
                heapq.heappush(self._timers, (change, state.request_id))

    def due(self, now: float) -> list[int]:
        timers, ids = self._timers, []
        while timers and timers[0][0] < now:
            ids.append(heapq.heappop(timers)[1])
        return ids
