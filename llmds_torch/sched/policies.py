"""Scheduling policies as small pure score functions: a higher score runs sooner.

Every score is the policy's natural key plus a linear aging term plus the request's priority::

    score(now) = key(state) + aging_rate * (now - arrival_time) + request.priority

``aging_rate * now`` is the same for every request, so it never changes the order and is left
out: the stored score ``key(state) - aging_rate * arrival_time + priority`` is constant while a
request waits, which lets the waiting queue be an :class:`IndexedHeap` with no per-step re-keying.
A request that has waited ``w`` seconds longer than another gains ``aging_rate * w`` on it, so
with ``aging_rate > 0`` no request starves: any later arrival's score falls below it once
``aging_rate * w`` exceeds the largest key gap.

The same score picks the preemption victim (the running request with the lowest score) and
re-admits it (its score in the waiting queue).

Policies
--------
``fcfs``  key = 0 (aging alone: earlier arrival first; score units: seconds).
``srpt``  key = -(remaining prefill tokens + remaining output tokens) (units: tokens).
``slo``   key = -(deadline - estimated remaining service), i.e. least slack first (units:
          seconds). Before the first token the deadline is ``arrival + ttft_slo``; after it,
          the deadline of the next token, ``first_token_time + tpot_slo * len(output)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmds_torch.errors import ConfigError
from llmds_torch.sched.request import RequestState

POLICIES = ("fcfs", "srpt", "slo")

# Aging per second waited, in each policy's score units, used when the config leaves it None.
DEFAULT_AGING_RATE = {"fcfs": 1.0, "srpt": 100.0, "slo": 0.5}


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
        Estimated seconds to compute one prefill token, for the ``slo`` slack (0 = pure EDF).
    """

    aging_rate: float
    default_ttft_slo: float
    default_tpot_slo: float
    service_seconds_per_token: float = 0.0


def ttft_slo_of(state: RequestState, params: PolicyParams) -> float:
    slo = state.request.ttft_slo
    return params.default_ttft_slo if slo is None else slo


def tpot_slo_of(state: RequestState, params: PolicyParams) -> float:
    slo = state.request.tpot_slo
    return params.default_tpot_slo if slo is None else slo


def next_deadline(state: RequestState, params: PolicyParams) -> float:
    """When the request's next output token is due under its SLOs (seconds)."""
    if state.first_token_time is None:
        return state.arrival_time + ttft_slo_of(state, params)
    return state.first_token_time + tpot_slo_of(state, params) * len(state.output)


def fcfs_score(state: RequestState, params: PolicyParams) -> float:
    return -params.aging_rate * state.arrival_time + state.request.priority


def srpt_score(state: RequestState, params: PolicyParams) -> float:
    return -state.remaining_tokens - params.aging_rate * state.arrival_time + state.request.priority


def slo_score(state: RequestState, params: PolicyParams) -> float:
    slack_at_zero = next_deadline(state, params) - params.service_seconds_per_token * state.remaining_prefill
    return -slack_at_zero - params.aging_rate * state.arrival_time + state.request.priority


ScoreFn = Callable[[RequestState, PolicyParams], float]

_SCORES: dict[str, ScoreFn] = {"fcfs": fcfs_score, "srpt": srpt_score, "slo": slo_score}


def score_function(policy: str) -> ScoreFn:
    """The score function of ``policy`` (one of :data:`POLICIES`)."""
    try:
        return _SCORES[policy]
    except KeyError:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}") from None
