"""The request scheduler: continuous batching with chunked prefill over a paged KV cache.

One loop thread calls ``get_batch(now)`` -> runs the batch -> ``complete_batch(results, now)``;
any number of threads may call ``submit`` meanwhile. See :mod:`llmds_torch.sched.batch` for what
a batch asks an engine to compute.

One step (``get_batch``) in order:

1. New submissions move from the thread-safe inbox into the waiting queue (an
   :class:`IndexedHeap` keyed by request id, scored by the policy; see
   :mod:`llmds_torch.sched.policies`). Waiting requests whose score changed since the last
   step (``slo``: turned urgent or late) are re-keyed, or dropped when ``shed_late`` says so.
2. Running requests that decode get one token each, highest score first, within
   ``max_batch_size`` and ``max_batch_tokens``. The cache's ``can_append`` is asked first; when
   pages run out the running request with the lowest score is preempted (detached; it will
   recompute prompt + outputs), unless it already reached ``max_preemptions``.
3. Running requests in the middle of a chunked prefill get their next chunk from what is left
   of the token budget (their pages were reserved at attach).
4. Waiting requests are admitted highest score first while the budget and batch size allow:
   ``can_attach`` is asked first; if it fails, admission stops (the queue head is never skipped,
   so order is kept) -- unless ``displace_margin`` is finite: then running requests whose score
   is lower than the candidate's by more than the margin are preempted one at a time until it fits.
5. If running requests exist but nothing could be scheduled (every one needs a page and every
   one is protected by ``max_preemptions``), the lowest-score one is preempted anyway and
   counted as a *forced* preemption; without it the loop would deadlock.

Every cache reservation is made inside ``get_batch``; if the batch is returned, the engine can run
it without ever seeing ``OutOfPages``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from llmds_torch.errors import ConfigError
from llmds_torch.kv.budget import TokenBudget
from llmds_torch.sched.admission import AdmissionController
from llmds_torch.sched.batch import Batch, ScheduledSeq, StepResult
from llmds_torch.sched.cache_protocol import CacheProtocol
from llmds_torch.sched.errors import (
    InvalidStepResult,
    NonMonotonicTime,
    RequestRefused,
    RequestTooLarge,
    SchedulerStateError,
    UnknownRequest,
)
from llmds_torch.sched.indexed_heap import IndexedHeap
from llmds_torch.sched.metrics import RequestRecord, SchedulerMetrics
from llmds_torch.sched.policies import DEFAULT_AGING_RATE, POLICIES, Policy, PolicyParams, tpot_slo_of, ttft_slo_of
from llmds_torch.sched.request import Request, RequestState, RequestStatus

_INT32_MAX = 2**31 - 1


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0) or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Knobs of the scheduler.

    Parameters
    ----------
    policy : "fcfs" | "srpt" | "slo"
        Waiting-queue order and preemption victim order (see :mod:`~llmds_torch.sched.policies`).
    max_batch_size : int
        Most sequences per step.
    max_batch_tokens : int
        Most tokens computed per step (decodes count 1; prefill chunks their length). Long
        prompts are prefilled in chunks that fit what is left of it.
    max_wait : float
        Seconds a step may hold back when nothing runs and the waiting work fills neither cap,
        hoping for company (0: never wait).
    aging_rate : float | None
        Score gained per second waited, in the policy's units; ``None``: the policy's default
        (:data:`~llmds_torch.sched.policies.DEFAULT_AGING_RATE`).
    max_preemptions : int
        Times a request may be preempted; after that it is never chosen as a victim (except by
        the deadlock breaker, step 5 above).
    max_context_len : int | None
        Longest prompt + max_new_tokens accepted; ``None``: the cache's ``max_context_len`` if it
        has one, else unlimited.
    default_ttft_slo, default_tpot_slo : float
        Seconds assumed for requests without SLOs of their own (for ``slo`` and the metrics).
    service_seconds_per_token, step_seconds : float
        The ``slo`` policy's step-cost estimate: a step computing ``t`` tokens takes
        ``step_seconds + service_seconds_per_token * t``; it decides which requests can still
        meet their SLOs, and its size order. The defaults are the simulator's
        :class:`~llmds_torch.sched.simulator.StepCostModel`; measure your model's and set them
        (0, 0: only requests already past a deadline count as late).
    slack_weight, late_penalty, urgent_window : float
        The ``slo`` policy's ordering knobs (see :mod:`~llmds_torch.sched.policies`).
    shed_late : bool
        ``slo`` only: drop a waiting request that can no longer meet its SLOs before it produced
        a token, instead of running it late (it counts as missed; see ``metrics.shed``).
    displace_margin : float | None
        A waiting request whose attach does not fit preempts a running one only when its score
        beats the victim's by more than this (policy units; ``inf``: never). Preempting to admit
        costs the victim a recompute, so a margin keeps near-ties from thrashing. ``None``: the
        policy's default (:data:`DEFAULT_DISPLACE_MARGIN`).
    """

    policy: str = "fcfs"
    max_batch_size: int = 256
    max_batch_tokens: int = 2048
    max_wait: float = 0.0
    aging_rate: float | None = None
    max_preemptions: int = 3
    max_context_len: int | None = None
    default_ttft_slo: float = 2.0
    default_tpot_slo: float = 0.2
    service_seconds_per_token: float = 5e-5
    step_seconds: float = 0.005
    slack_weight: float = 10.0
    late_penalty: float = 100_000.0
    urgent_window: float = 1.0
    shed_late: bool = False
    displace_margin: float | None = None

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; choose one of {POLICIES}")
        _positive_int("max_batch_size", self.max_batch_size)
        _positive_int("max_batch_tokens", self.max_batch_tokens)
        _non_negative("max_wait", self.max_wait)
        if self.aging_rate is not None:
            _non_negative("aging_rate", self.aging_rate)
        if isinstance(self.max_preemptions, bool) or not isinstance(self.max_preemptions, int) or self.max_preemptions < 0:
            raise ConfigError(f"max_preemptions must be an integer >= 0, got {self.max_preemptions!r}")
        if self.max_context_len is not None:
            _positive_int("max_context_len", self.max_context_len)
        _non_negative("default_ttft_slo", self.default_ttft_slo)
        _non_negative("default_tpot_slo", self.default_tpot_slo)
        for name in ("service_seconds_per_token", "step_seconds", "slack_weight", "late_penalty", "urgent_window"):
            _non_negative(name, getattr(self, name))
        if self.shed_late and self.policy != "slo":
            raise ConfigError("shed_late needs policy='slo' (only it knows which requests are late)")
        if self.displace_margin is not None and (isinstance(self.displace_margin, bool) or not isinstance(
                self.displace_margin, (int, float)) or not (self.displace_margin >= 0)):
            raise ConfigError(f"displace_margin must be a number >= 0 (inf: never), got {self.displace_margin!r}")

    @property
    def effective_displace_margin(self) -> float:
        if self.displace_margin is not None:
            return float(self.displace_margin)
        return DEFAULT_DISPLACE_MARGIN[self.policy]

    def policy_params(self) -> PolicyParams:
        aging = DEFAULT_AGING_RATE[self.policy] if self.aging_rate is None else float(self.aging_rate)
        return PolicyParams(aging_rate=aging, default_ttft_slo=self.default_ttft_slo,
                            default_tpot_slo=self.default_tpot_slo,
                            service_seconds_per_token=self.service_seconds_per_token,
                            step_seconds=self.step_seconds, max_batch_tokens=self.max_batch_tokens,
                            slack_weight=self.slack_weight, late_penalty=self.late_penalty,
                            urgent_window=self.urgent_window)


# Off by default for every policy: in the simulator (benchmarks/sched.py), letting waiting requests
# displace running ones made `slo` thrash (a decoding request's next-token deadline lies far
# ahead, so every new arrival outranked it; attainment fell from 0.92 to 0.36 on the bursty
# trace). Set displace_margin to opt in.
DEFAULT_DISPLACE_MARGIN = {"fcfs": math.inf, "srpt": math.inf, "slo": math.inf}


def _cache_setting(cache, name: str):
    """``name`` from the cache, its ``config`` or its ``manager`` (PagedKVCache keeps limits in
    its config; BlockManager as attributes); None when none has it."""
    for holder in (cache, getattr(cache, "config", None), getattr(cache, "manager", None)):
        value = getattr(holder, name, None) if holder is not None else None
        if value is not None:
            return value
    return None


class _StepPlan:
    """The batch being built: items by request id, tokens left, preemptions so far."""

    __slots__ = ("items", "tokens_left", "preempted")

    def __init__(self, max_batch_tokens: int):
        self.items: dict[int, ScheduledSeq] = {}
        self.tokens_left = max_batch_tokens
        self.preempted: list[int] = []

    def add(self, item: ScheduledSeq) -> None:
        self.items[item.request_id] = item
        self.tokens_left -= item.end - item.start

    def drop(self, request_id: int) -> None:
        item = self.items.pop(request_id, None)
        if item is not None:
            self.tokens_left += item.end - item.start


class Scheduler:
    """Decides, step by step, which requests run on the cache and how many tokens each computes.

    Parameters
    ----------
    cache : CacheProtocol
        A ``BlockManager`` or ``PagedKVCache`` (or anything with the same predicates/actions).
        The scheduler attaches, appends to and detaches sequences; the engine writes their KV.
    config : SchedulerConfig
    admission : AdmissionController | None
        Rate limits and queue caps applied at ``submit``.
    clock : callable() -> float
        Used only to stamp ``submit`` calls that give neither ``now`` nor an ``arrival_time``.

    Thread safety: ``submit`` may be called from any number of threads; ``get_batch`` and
    ``complete_batch`` from one loop thread.
    """

    def __init__(self, cache: CacheProtocol, config: SchedulerConfig | None = None, *,
                 admission: AdmissionController | None = None, clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.config = config if config is not None else SchedulerConfig()
        if not isinstance(self.config, SchedulerConfig):
            raise ConfigError("config must be a SchedulerConfig")
        self.admission = admission
        self.clock = clock
        self._policy = Policy(self.config.policy, self.config.policy_params())
        self._params = self._policy.params
        self.metrics = SchedulerMetrics()
        self._page_size = int(cache.page_size)
        self._cache_pages = int(_cache_setting(cache, "max_num_pages") or cache.num_pages)
        self._max_context_len = self.config.max_context_len or _cache_setting(cache, "max_context_len")
        kv_tokens = self._cache_pages * self._page_size
        self._budget = TokenBudget(kv_tokens, self.config.max_batch_tokens, self._max_context_len or kv_tokens)
        self._lock = threading.Lock()  # guards _inbox, _next_id, admission, metrics.refused
        self._inbox: list[RequestState] = []
        self._next_id = 0
        self._states: dict[int, RequestState] = {}  # waiting + running, owned by the loop thread
        self._waiting = IndexedHeap()
        self._running: dict[int, RequestState] = {}
        self._outstanding: Batch | None = None
        self._last_now = -math.inf

    # ------------------------------------------------------------------ submission (any thread)
    def check_fits(self, request: Request) -> None:
        """Raise :class:`RequestTooLarge` if ``request`` could never run on this cache."""
        reason = self._budget.why_never_fits(request.prompt_len, request.max_new_tokens)
        if reason is not None:
            raise RequestTooLarge(reason)

    def submit(self, request: Request, now: float | None = None) -> int:
        """Queue ``request``; returns its request id.

        The arrival time is ``now``, else ``request.arrival_time``, else ``clock()``. Raises
        :class:`RequestTooLarge` for a request that can never fit, :class:`RequestRefused` (with
        ``reason`` and ``retry_after``) when admission control refuses; either way nothing is queued.
        """
        if not isinstance(request, Request):
            raise TypeError(f"submit takes a Request, got {type(request).__name__}")
        if now is not None and (isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now)):
            with self._lock:
                self.metrics.record_refusal("invalid_time")
            raise NonMonotonicTime(f"now must be a finite number of seconds, got {now!r}")
        try:
            self.check_fits(request)
        except RequestTooLarge:
            with self._lock:
                self.metrics.record_refusal("too_large")
            raise
        with self._lock:
            if now is not None:
                arrival = float(now)
            elif request.arrival_time is not None:
                arrival = float(request.arrival_time)
            else:
                arrival = float(self.clock())
                if not math.isfinite(arrival):
                    self.metrics.record_refusal("invalid_time")
                    raise NonMonotonicTime(f"the scheduler's clock returned {arrival!r}")
            request_id = self._next_id
            if self.admission is not None:
                try:
                    self.admission.admit(request_id, prompt_len=request.prompt_len,
                                         max_new_tokens=request.max_new_tokens, now=arrival, tenant=request.tenant)
                except RequestRefused as refusal:
                    self.metrics.record_refusal(refusal.reason)
                    raise
            self._next_id += 1
            self._inbox.append(RequestState(request_id, request, arrival, prefill_tokens=list(request.prompt)))
        return request_id

    # ------------------------------------------------------------------ introspection
    @property
    def num_waiting(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._inbox)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_work(self) -> bool:
        """True while any submitted request is not finished."""
        with self._lock:
            return bool(self._inbox or self._states)

    def state(self, request_id: int) -> RequestState:
        """The live record of a waiting or running request."""
        try:
            return self._states[request_id]
        except KeyError:
            raise UnknownRequest(f"request {request_id} is not waiting or running") from None

    def score(self, state: RequestState, now: float | None = None) -> float:
        """The policy's score of ``state`` at ``now`` (default: the latest step's time)."""
        return self._policy.score(state, self._last_now if now is None else now)

    # ------------------------------------------------------------------ the loop (one thread)
    def _check_now(self, now) -> float:
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise NonMonotonicTime(f"now must be a finite number of seconds, got {now!r}")
        now = float(now)
        if now < self._last_now:
            raise NonMonotonicTime(f"now={now} is earlier than a time already given ({self._last_now})")
        return now

    def _drain_inbox(self) -> None:
        with self._lock:
            arrived, self._inbox = self._inbox, []
        for state in arrived:
            self._states[state.request_id] = state
            self._queue(state)

    def _queue(self, state: RequestState) -> None:
        self._waiting.push(state.request_id, self.score(state))
        self._policy.watch(state, self._last_now)

    def _rekey_waiting(self) -> None:
        """Re-score the waiting requests whose policy score changed (``slo``: turned urgent or late),
        or shed them when the config says so."""
        now = self._last_now
        for request_id in self._policy.due(now):
            if request_id not in self._waiting:
                continue
            state = self._states[request_id]
            if self.config.shed_late and not state.output and self._policy.is_late(state, now):
                self._shed(state)
            else:
                self._waiting.update(request_id, self.score(state))

    def _shed(self, state: RequestState) -> None:
        self._waiting.remove(state.request_id)
        del self._states[state.request_id]
        state.status = RequestStatus.FINISHED
        state.finish_time = self._last_now
        self.metrics.record_shed(state.request_id)
        if self.admission is not None:
            with self._lock:
                self.admission.complete(state.request_id, generated_tokens=0, now=self._last_now)

    def get_batch(self, now: float) -> Batch:
        """Build the next step's batch at time ``now`` and make its cache reservations.

        Returns an empty batch when there is nothing to run (or ``max_wait`` holds a small one;
        then ``batch.wake_time`` says when to ask again). The batch must be completed with
        :meth:`complete_batch` before the next ``get_batch``.
        """
        now = self._check_now(now)
        if self._outstanding is not None:
            raise SchedulerStateError("the previous batch is not completed; call complete_batch first")
        self._last_now = now
        self._drain_inbox()
        self._rekey_waiting()
        wake = self._hold_for_company(now)
        if wake is not None:
            return Batch((), now, wake_time=wake)
        plan = _StepPlan(self.config.max_batch_tokens)
        while True:
            by_score = self._running_by_score()
            self._schedule_decodes(plan, by_score)
            self._schedule_prefill_chunks(plan, by_score)
            self._admit_waiting(plan, now)
            if plan.items or not self._running:
                break
            victim = self._pick_victim(honour_cap=False)  # deadlock breaker (step 5)
            self.metrics.forced_preemptions += 1
            self._preempt(victim, plan)
        items = tuple(plan.items.values())  # decodes were added first, prefill chunks after
        batch = Batch(items, now, preempted=tuple(plan.preempted))
        if items:
            self._outstanding = batch
        return batch

    def _hold_for_company(self, now: float) -> float | None:
        max_wait = self.config.max_wait
        if max_wait <= 0 or self._running or not self._waiting:
            return None
        waiting = [s for s in self._states.values() if s.status is RequestStatus.WAITING]
        tokens = sum(len(s.prefill_tokens) for s in waiting)
        if len(waiting) >= self.config.max_batch_size or tokens >= self.config.max_batch_tokens:
            return None
        wake = min(s.arrival_time for s in waiting) + max_wait
        return wake if now < wake else None

    def _running_by_score(self) -> list[RequestState]:
        return sorted(self._running.values(), key=self.score, reverse=True)

    def _decode_item(self, state: RequestState) -> ScheduledSeq:
        position = len(state.request.prompt) + len(state.output) - 1
        return ScheduledSeq(state.request_id, state.seq_id, "decode", position, position + 1,
                            (state.output[-1],), True)

    def _schedule_decodes(self, plan: _StepPlan, by_score: list[RequestState]) -> None:
        room = min(self.config.max_batch_size - len(plan.items), plan.tokens_left)
        if room <= 0:
            return
        chosen = [s for s in by_score if s.prefill_done][:room]
        if not chosen:
            return
        seq_ids = [s.seq_id for s in chosen]
        if self.cache.can_append(seq_ids, 1):
            last_tokens = [s.output[-1] for s in chosen]
            self.cache.append_batch(seq_ids, last_tokens)
            items = plan.items
            for s, seq_id, token in zip(chosen, seq_ids, last_tokens):
                position = len(s.request.prompt) + len(s.output) - 1
                items[s.request_id] = ScheduledSeq(s.request_id, seq_id, "decode", position, position + 1,
                                                   (token,), True)
            plan.tokens_left -= len(chosen)
            return
        for s in chosen:  # pages are short: one at a time, preempting the lowest score
            fits = False
            while s.status is RequestStatus.RUNNING:
                if self.cache.can_append(s.seq_id, 1):
                    fits = True
                    break
                victim = self._pick_victim()
                if victim is None:
                    break
                self._preempt(victim, plan)
            if fits:
                self.cache.append(s.seq_id, [s.output[-1]])
                plan.add(self._decode_item(s))

    def _schedule_prefill_chunks(self, plan: _StepPlan, by_score: list[RequestState]) -> None:
        for s in by_score:
            if plan.tokens_left <= 0 or len(plan.items) >= self.config.max_batch_size:
                return
            if s.status is not RequestStatus.RUNNING or s.prefill_done or s.request_id in plan.items:
                continue
            plan.add(self._prefill_item(s, plan.tokens_left))

    def _prefill_item(self, state: RequestState, budget: int) -> ScheduledSeq:
        start = state.num_computed
        end = min(len(state.prefill_tokens), start + budget)
        return ScheduledSeq(state.request_id, state.seq_id, "prefill", start, end,
                            tuple(state.prefill_tokens[start:end]), end == len(state.prefill_tokens))

    def _admit_waiting(self, plan: _StepPlan, now: float) -> None:
        waiting, cache = self._waiting, self.cache
        while waiting and plan.tokens_left > 0 and len(plan.items) < self.config.max_batch_size:
            request_id, score = waiting.peek()
            if request_id in plan.preempted:
                return  # do not re-admit a victim in the step that preempted it
            state = self._states[request_id]
            salt = state.request.salt
            if not cache.can_attach(state.prefill_tokens, salt=salt):
                victim = self._pick_victim(below=score - self.config.effective_displace_margin)
                if victim is None:
                    return
                self._preempt(victim, plan)
                continue
            waiting.pop()
            seq_id = cache.attach(state.prefill_tokens, salt=salt)
            cached = cache.num_cached_tokens(seq_id)
            if state.num_preemptions:
                wasted = max(0, state.computed_before_preemption - cached)
                state.wasted_recompute_tokens += wasted
                self.metrics.wasted_recompute_tokens += wasted
                state.computed_before_preemption = 0
            state.seq_id = seq_id
            state.status = RequestStatus.RUNNING
            state.num_computed = cached
            if state.first_scheduled_time is None:
                state.first_scheduled_time = now
            self._running[request_id] = state
            plan.add(self._prefill_item(state, plan.tokens_left))

    def _pick_victim(self, *, below: float | None = None, honour_cap: bool = True) -> RequestState | None:
        """The running request with the lowest score (strictly below ``below`` when given),
        skipping those preempted ``max_preemptions`` times unless ``honour_cap`` is False."""
        cap = self.config.max_preemptions
        victim, lowest = None, math.inf
        for s in self._running.values():
            if honour_cap and s.num_preemptions >= cap:
                continue
            score = self.score(s)
            if score < lowest or victim is None:
                victim, lowest = s, score
        if victim is None or (below is not None and not lowest < below):
            return None
        return victim

    def _preempt(self, state: RequestState, plan: _StepPlan) -> None:
        """Detach ``state``'s sequence and queue it to recompute prompt + outputs."""
        state.computed_before_preemption = max(state.computed_before_preemption, state.positions_computed)
        self.cache.detach(state.seq_id)
        plan.drop(state.request_id)
        del self._running[state.request_id]
        state.status = RequestStatus.WAITING
        state.seq_id = None
        state.num_computed = 0
        state.prefill_tokens = list(state.request.prompt) + state.output
        state.num_preemptions += 1
        self.metrics.preemptions += 1
        plan.preempted.append(state.request_id)
        self._queue(state)

    # ------------------------------------------------------------------ completion
    def _parse_results(self, results) -> dict[int, tuple[int, bool]]:
        parsed: dict[int, tuple[int, bool]] = {}
        if isinstance(results, Mapping):
            pairs = []
            for rid, value in results.items():
                if isinstance(value, tuple):
                    if len(value) != 2:
                        raise InvalidStepResult(f"result for request {rid} must be token or (token, finished)")
                    pairs.append((rid, value[0], value[1]))
                else:
                    pairs.append((rid, value, False))
        elif isinstance(results, Sequence):
            pairs = []
            for r in results:
                if not isinstance(r, StepResult):
                    raise InvalidStepResult(f"results must be StepResult objects, got {type(r).__name__}")
                pairs.append((r.request_id, r.token_id, r.finished))
        else:
            raise InvalidStepResult("results must be a sequence of StepResult or a mapping request_id -> token")
        for rid, token, finished in pairs:
            if rid in parsed:
                raise InvalidStepResult(f"two results for request {rid}")
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token <= _INT32_MAX:
                raise InvalidStepResult(f"token for request {rid} must be an int in [0, {_INT32_MAX}], got {token!r}")
            token = int(token)
            parsed[rid] = (token, bool(finished))
        return parsed

    def complete_batch(self, results, now: float) -> list[int]:
        """Record the outputs of the outstanding batch at time ``now``.

        Parameters
        ----------
        results : sequence of StepResult, or mapping request_id -> token | (token, finished)
            Exactly one entry per item of the batch with ``samples=True``.
        now : float
            When the step ended (its outputs' timestamps).

        Returns
        -------
        list[int]
            The request ids that finished in this step (their sequences are detached).

        Raises :class:`UnknownRequest` for a request id not in the batch,
        :class:`InvalidStepResult` for a missing/duplicate/malformed result; nothing changes then.
        """
        batch = self._outstanding
        if batch is None:
            raise SchedulerStateError("no batch is outstanding; call get_batch first")
        now = self._check_now(now)
        parsed = self._parse_results(results)
        sampling = {item.request_id for item in batch.items if item.samples}
        in_batch = {item.request_id for item in batch.items}
        for rid in parsed:
            if rid not in in_batch:
                raise UnknownRequest(f"request {rid!r} is not in the batch being completed")
            if rid not in sampling:
                raise InvalidStepResult(f"request {rid} computed a non-final prefill chunk; it samples no token")
        missing = sampling - parsed.keys()
        if missing:
            raise InvalidStepResult(f"no result for sampling requests {sorted(missing)}")
        self._last_now = now
        finished = []
        for item in batch.items:
            state = self._states[item.request_id]
            if item.kind == "prefill":
                state.num_computed = item.end
            if not item.samples:
                continue
            token, done = parsed[item.request_id]
            state.output.append(token)
            if state.first_token_time is None:
                state.first_token_time = now
            if done or len(state.output) >= state.request.max_new_tokens:
                self._finish(state, now)
                finished.append(item.request_id)
        self.metrics.steps += 1
        self.metrics.batched_tokens += batch.num_tokens
        self._outstanding = None
        return finished

    def _finish(self, state: RequestState, now: float) -> None:
        self.cache.detach(state.seq_id)
        del self._running[state.request_id]
        del self._states[state.request_id]
        state.status = RequestStatus.FINISHED
        state.seq_id = None
        state.finish_time = now
        self.metrics.record_finish(RequestRecord(
            request_id=state.request_id, arrival_time=state.arrival_time,
            first_scheduled_time=state.first_scheduled_time, first_token_time=state.first_token_time,
            finish_time=now, prompt_len=state.request.prompt_len, output_len=len(state.output),
            num_preemptions=state.num_preemptions, wasted_recompute_tokens=state.wasted_recompute_tokens,
            ttft_slo=ttft_slo_of(state, self._params), tpot_slo=tpot_slo_of(state, self._params)))
        if self.admission is not None:
            with self._lock:
                self.admission.complete(state.request_id, generated_tokens=len(state.output), now=now)
