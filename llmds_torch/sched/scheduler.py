"""The request scheduler: continuous batching with chunked prefill over a paged KV cache.

It schedules sequence groups: a request with ``num_seqs > 1`` (parallel samples, beams) starts
as one sequence and branches through ``fork`` as the engine's results say; budgets, admission,
preemption and policies see the whole group (it decodes whole, is preempted whole, and counts
``num_seqs`` full copies against the cache when checked at submit).

One loop thread calls ``get_batch(now)`` -> runs the batch -> ``complete_batch(results, now)``
(or ``abort_batch()`` when running it failed); any number of threads may call ``submit``
meanwhile. See :mod:`llmds_torch.sched.batch` for what a batch asks an engine to compute, and
:mod:`llmds_torch.models.runner` for the runner that computes it with a model.

One step (``get_batch``) in order:

1. New submissions move from the thread-safe inbox into the waiting queue (an
   :class:`IndexedHeap` keyed by request id, scored by the policy; see
   :mod:`llmds_torch.sched.policies`). Waiting requests whose score changed since the last
   step (``slo``: turned urgent or late) are re-keyed, or dropped when ``shed_late`` says so.
2. Running groups that decode get one token per member, highest score first, within
   ``max_batch_size`` and ``max_batch_tokens``. The cache's ``can_append`` is asked first; when
   pages run out the running request with the lowest score is preempted (detached; every member
   will recompute prompt + its outputs), unless it already reached ``max_preemptions``.
3. Then, inside one ``cache.transaction()``: the decode tokens are appended; running members
   in the middle of a chunked prefill get their next chunk from what is left of the token budget
   (their pages were reserved at attach); waiting requests are admitted highest score first while
   the budget and batch size allow. ``can_attach`` is asked first; if it fails, admission stops
   (the queue head is never skipped, so order is kept) -- unless ``displace_margin`` is finite:
   then a running request whose score is lower than the candidate's by more than the margin is
   preempted and the step built again. A waiting prompt whose leading full pages another live
   sequence is still writing (``cache.pending_prefix_tokens``) is held back until they are
   published, so prompts admitted together compute a shared prefix once.
4. If running requests exist but nothing could be scheduled (every one needs a page and every
   one is protected by ``max_preemptions``), the lowest-score one is preempted anyway and
   counted as a *forced* preemption; without it the loop would deadlock.

The transaction stays open while the engine computes the batch. ``complete_batch`` forks the
members its results branch (still inside), commits, and then applies the results;
``abort_batch`` rolls every reservation back. If building the batch raises (pool growth failing,
say), the reservations are rolled back the same way and the queues are as before; only
preemptions made before the failure (each a completed step of its own) remain.
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
from llmds_torch.sched.request import Request, RequestState, RequestStatus, SequenceState

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


class _Preempt(Exception):
    """Raised inside a batch build that needs ``victim`` preempted first; the build is rolled back,
    the victim preempted outside the cache transaction, and the build tried again."""

    def __init__(self, victim: RequestState):
        super().__init__(victim.request_id)
        self.victim = victim


class _Rollback(Exception):
    """Handed to a cache transaction's ``__exit__`` to undo it."""


@dataclass(slots=True, eq=False)
class _Admission:
    """A waiting request attached in the batch being built: its members' sequences and hits."""

    state: RequestState
    seq_ids: list[int]
    cached: list[int]


class _StepPlan:
    """The batch being built: items by (request id, member), tokens left, sequences, admissions,
    and the waiting-queue entries popped on the way (pushed back if the batch is undone)."""

    __slots__ = ("items", "tokens_left", "admitted", "popped")

    def __init__(self, max_batch_tokens: int):
        self.items: dict[tuple[int, int], ScheduledSeq] = {}
        self.tokens_left = max_batch_tokens
        self.admitted: dict[int, _Admission] = {}
        self.popped: list[tuple[int, float]] = []

    def add(self, item: ScheduledSeq) -> None:
        self.items[item.request_id, item.member] = item
        self.tokens_left -= item.end - item.start


@dataclass(slots=True, eq=False)
class _Outstanding:
    """A returned batch whose cache reservations are still inside an open transaction."""

    batch: Batch
    plan: _StepPlan
    transaction: object


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
        pages = request.num_seqs * -(-request.max_total_tokens // self._page_size)
        if pages > self._cache_pages:
            raise RequestTooLarge(f"{request.num_seqs} sequences of up to {request.max_total_tokens} tokens need "
                                  f"up to {pages} pages; the cache holds {self._cache_pages}")

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
                    # Each of a group's sequences may generate max_new_tokens: charge them all.
                    self.admission.admit(request_id, prompt_len=request.prompt_len,
                                         max_new_tokens=request.max_new_tokens * request.num_seqs, now=arrival,
                                         tenant=request.tenant)
                except RequestRefused as refusal:
                    self.metrics.record_refusal(refusal.reason)
                    raise
            self._next_id += 1
            self._inbox.append(RequestState(request_id, request, arrival))
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

    @property
    def outstanding(self) -> Batch | None:
        """The batch returned by ``get_batch`` and not yet completed or aborted."""
        return self._outstanding.batch if self._outstanding is not None else None

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
        then ``batch.wake_time`` says when to ask again). A non-empty batch must be ended with
        :meth:`complete_batch` (or :meth:`abort_batch`) before the next ``get_batch``.

        The reservations are made inside one ``cache.transaction()`` that stays open until the
        batch is completed or aborted. If anything raises while the batch is built (pool growth,
        say), the transaction undoes every reservation and the queues are as before; requests
        preempted on the way (each a completed step of its own) stay queued to recompute.
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
        preempted: list[int] = []
        while True:
            by_score = self._running_by_score()
            decodes = self._choose_decodes(by_score, preempted)
            plan = _StepPlan(self.config.max_batch_tokens)
            transaction = self.cache.transaction()
            transaction.__enter__()
            try:
                self._build(plan, by_score, decodes, preempted)
            except _Preempt as need:
                self._undo(plan, transaction)
                self._preempt(need.victim)
                preempted.append(need.victim.request_id)
                continue
            except BaseException:
                self._undo(plan, transaction)
                raise
            if plan.items or plan.admitted or not self._running:
                break
            self._undo(plan, transaction)
            victim = self._pick_victim(honour_cap=False)  # deadlock breaker (step 5)
            self.metrics.forced_preemptions += 1
            self._preempt(victim)
            preempted.append(victim.request_id)
        items = tuple(plan.items.values())  # decodes were added first, prefill chunks after
        batch = Batch(items, now, preempted=tuple(preempted))
        if items:
            self._outstanding = _Outstanding(batch, plan, transaction)
        else:  # at most recomputed sequences found whole in the prefix cache: nothing to compute
            transaction.__exit__(None, None, None)
            self._apply_admissions(plan, now)
        return batch

    def _undo(self, plan: _StepPlan, transaction) -> None:
        """Roll the cache transaction back and return popped requests to the waiting queue."""
        try:
            transaction.__exit__(_Rollback, _Rollback(), None)
        finally:
            for request_id, score in plan.popped:
                self._waiting.push(request_id, score)
            plan.popped.clear()

    def _build(self, plan: _StepPlan, by_score: list[RequestState], decodes: list[RequestState],
               preempted: list[int]) -> None:
        """Inside the step's transaction: reserve the decodes, then prefill chunks, then admit."""
        if decodes:
            self.cache.append_batch([seq for s in decodes for seq in s.seq_ids],
                                    [m.output[-1] for s in decodes for m in s.members])
            for s in decodes:
                self._add_decodes(plan, s)
        self._schedule_prefill_chunks(plan, by_score)
        self._admit_waiting(plan, preempted)

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

    def _add_decodes(self, plan: _StepPlan, state: RequestState) -> None:
        position = state.request.prompt_len + state.num_output_tokens - 1
        for index, member in enumerate(state.members):
            plan.add(ScheduledSeq(state.request_id, member.seq_id, "decode", position, position + 1,
                                  (member.output[-1],), True, index))

    def _choose_decodes(self, by_score: list[RequestState], preempted: list[int]) -> list[RequestState]:
        """The decoding groups of this step, highest score first, whole groups within the batch
        caps. Before any reservation: when pages are short, the lowest-score running request is
        preempted (detached) until the next group's appends fit, or no victim is left."""
        room = min(self.config.max_batch_size, self.config.max_batch_tokens)
        chosen, seq_ids = [], []
        for s in by_score:
            if not s.prefill_done:
                continue
            if len(seq_ids) + len(s.members) > room:
                break  # a group decodes whole or not at all
            chosen.append(s)
            seq_ids.extend(s.seq_ids)
        if not chosen or self.cache.can_append(seq_ids, 1):
            return chosen
        fits, seq_ids = [], []
        for s in chosen:  # pages are short: one group at a time
            while s.status is RequestStatus.RUNNING and not self.cache.can_append(seq_ids + s.seq_ids, 1):
                victim = self._pick_victim()
                if victim is None:
                    break
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim in fits:
                    fits.remove(victim)
                    seq_ids = [seq for f in fits for seq in f.seq_ids]
            if s.status is RequestStatus.RUNNING and self.cache.can_append(seq_ids + s.seq_ids, 1):
                fits.append(s)
                seq_ids.extend(s.seq_ids)
        return fits

    def _schedule_prefill_chunks(self, plan: _StepPlan, by_score: list[RequestState]) -> None:
        for s in by_score:
            if s.status is not RequestStatus.RUNNING or s.prefill_done:
                continue
            for index, member in enumerate(s.members):
                if plan.tokens_left <= 0 or len(plan.items) >= self.config.max_batch_size:
                    return
                if member.num_computed < member.prefill_len(s.request.prompt_len):
                    plan.add(self._prefill_item(s, index, member.seq_id, member.num_computed, plan.tokens_left))

    def _prefill_item(self, state: RequestState, index: int, seq_id: int, start: int, budget: int) -> ScheduledSeq:
        member = state.members[index]
        tokens = list(state.request.prompt) + member.output[:-1]
        end = min(len(tokens), start + budget)
        samples = end == len(tokens) and not member.output
        return ScheduledSeq(state.request_id, seq_id, "prefill", start, end, tuple(tokens[start:end]), samples, index)

    def _admit_waiting(self, plan: _StepPlan, preempted: list[int]) -> None:
        waiting, cache = self._waiting, self.cache
        held: list[tuple[int, float]] = []
        try:
            while waiting and plan.tokens_left > 0 and len(plan.items) < self.config.max_batch_size:
                request_id, score = waiting.peek()
                if request_id in preempted:
                    return  # do not re-admit a victim in the step that preempted it
                state = self._states[request_id]
                width = len(state.members)
                if width > self.config.max_batch_size - len(plan.items) or width > plan.tokens_left:
                    return
                first = state.prefill_tokens
                salt = state.request.salt
                if cache.pending_prefix_tokens(first, salt=salt) > 0:
                    held.append(waiting.pop())  # another sequence is writing its prefix: wait for it
                    continue
                admission = self._attach_group(state)
                if admission is None:
                    victim = self._pick_victim(below=score - self.config.effective_displace_margin)
                    if victim is None:
                        return
                    raise _Preempt(victim)
                plan.popped.append(waiting.pop())
                plan.admitted[request_id] = admission
                for index, (seq_id, cached) in enumerate(zip(admission.seq_ids, admission.cached)):
                    if plan.tokens_left <= 0:
                        break
                    if cached < state.members[index].prefill_len(state.request.prompt_len):
                        plan.add(self._prefill_item(state, index, seq_id, cached, plan.tokens_left))
        finally:
            for request_id, score in held:
                waiting.push(request_id, score)

    def _attach_group(self, state: RequestState) -> _Admission | None:
        """Attach every member of ``state`` (all or none); None when the pages do not suffice."""
        cache, salt = self.cache, state.request.salt
        prompt = list(state.request.prompt)
        admission = _Admission(state, [], [])
        for member in state.members:
            tokens = prompt + member.output[:-1]
            if not cache.can_attach(tokens, salt=salt):
                for seq_id in admission.seq_ids:
                    cache.detach(seq_id)
                return None
            seq_id = cache.attach(tokens, salt=salt)
            admission.seq_ids.append(seq_id)
            admission.cached.append(cache.num_cached_tokens(seq_id))
        return admission

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

    def preempt(self, request_id: int) -> None:
        """Release a running request's pages between steps and queue it to recompute (every
        member of its group recomputes prompt + its outputs; prefix hits still apply).

        Raises :class:`SchedulerStateError` while a batch is outstanding and
        :class:`UnknownRequest` for a request that is not running; nothing changes then.
        """
        if self._outstanding is not None:
            raise SchedulerStateError("a batch is outstanding; preempt between steps")
        state = self._running.get(request_id)
        if state is None:
            raise UnknownRequest(f"request {request_id!r} is not running")
        self._preempt(state)

    def _preempt(self, state: RequestState) -> None:
        """Detach every sequence of ``state`` and queue it to recompute prompt + outputs."""
        state.computed_before_preemption = max(state.computed_before_preemption, state.positions_computed)
        for member in state.members:
            self.cache.detach(member.seq_id)
            member.seq_id = None
            member.num_computed = 0
        del self._running[state.request_id]
        state.status = RequestStatus.WAITING
        state.num_preemptions += 1
        self.metrics.preemptions += 1
        self._queue(state)

    # ------------------------------------------------------------------ completion
    def _parse_results(self, results) -> dict[int, StepResult]:
        if isinstance(results, Mapping):
            parsed_list = []
            for rid, value in results.items():
                if isinstance(value, tuple):
                    if len(value) != 2:
                        raise InvalidStepResult(f"result for request {rid} must be token or (token, finished)")
                    parsed_list.append(StepResult(rid, value[0], bool(value[1])))
                else:
                    parsed_list.append(StepResult(rid, value))
        elif isinstance(results, Sequence):
            parsed_list = list(results)
            for r in parsed_list:
                if not isinstance(r, StepResult):
                    raise InvalidStepResult(f"results must be StepResult objects, got {type(r).__name__}")
        else:
            raise InvalidStepResult("results must be a sequence of StepResult or a mapping request_id -> token")
        parsed: dict[int, StepResult] = {}
        for r in parsed_list:
            if r.request_id in parsed:
                raise InvalidStepResult(f"two results for request {r.request_id}")
            parsed[r.request_id] = r
        return parsed

    def _check_result(self, result: StepResult, num_sampled: int, width: int) -> list[tuple[int, int]]:
        rid = result.request_id
        if result.branches is None:
            if num_sampled != 1:
                raise InvalidStepResult(f"request {rid} sampled {num_sampled} sequences; give branches, not token_id")
            pairs = [(0, result.token_id)]
        else:
            if result.token_id is not None:
                raise InvalidStepResult(f"result for request {rid} gives both token_id and branches")
            try:
                pairs = [(p, t) for p, t in result.branches]
            except (TypeError, ValueError):
                raise InvalidStepResult(f"branches of request {rid} must be (parent, token_id) pairs") from None
            if len(pairs) > width:
                raise InvalidStepResult(f"request {rid} runs at most {width} sequences, got {len(pairs)} branches")
        for parent, token in pairs:
            if isinstance(parent, bool) or not isinstance(parent, (int, np.integer)) or not 0 <= parent < num_sampled:
                raise InvalidStepResult(f"parent of request {rid} must be a member index in [0, {num_sampled}), "
                                        f"got {parent!r}")
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token <= _INT32_MAX:
                raise InvalidStepResult(f"token for request {rid} must be an int in [0, {_INT32_MAX}], got {token!r}")
        return [(int(p), int(t)) for p, t in pairs]

    def complete_batch(self, results, now: float) -> list[int]:
        """Record the outputs of the outstanding batch at time ``now`` and commit its reservations.

        Parameters
        ----------
        results : sequence of StepResult, or mapping request_id -> token | (token, finished)
            Exactly one entry per request of the batch whose items sample.
        now : float
            When the step ended (its outputs' timestamps).

        Returns
        -------
        list[int]
            The request ids that finished in this step (their sequences are detached).

        Raises :class:`UnknownRequest` for a request id not in the batch,
        :class:`InvalidStepResult` for a missing/duplicate/malformed result; nothing changes then
        (the batch stays outstanding). If a ``fork`` raises, the whole step is rolled back as by
        :meth:`abort_batch` and the error propagates.
        """
        outstanding = self._outstanding
        if outstanding is None:
            raise SchedulerStateError("no batch is outstanding; call get_batch first")
        batch, plan = outstanding.batch, outstanding.plan
        now = self._check_now(now)
        parsed = self._parse_results(results)
        sampled: dict[int, int] = {}
        in_batch = set()
        for item in batch.items:
            in_batch.add(item.request_id)
            if item.samples:
                sampled[item.request_id] = sampled.get(item.request_id, 0) + 1
        for rid in parsed:
            if rid not in in_batch:
                raise UnknownRequest(f"request {rid!r} is not in the batch being completed")
            if rid not in sampled:
                raise InvalidStepResult(f"request {rid} computed a non-final prefill chunk; it samples no token")
        missing = sampled.keys() - parsed.keys()
        if missing:
            raise InvalidStepResult(f"no result for sampling requests {sorted(missing)}")
        branches = {rid: self._check_result(parsed[rid], sampled[rid], self._states[rid].request.num_seqs)
                    for rid in sampled}
        try:
            forked = self._fork_branches(plan, branches)
        except BaseException:
            self.abort_batch()
            raise
        outstanding.transaction.__exit__(None, None, None)
        self._outstanding = None
        self._last_now = now
        self._apply_admissions(plan, batch.now)
        for item in batch.items:
            if item.kind == "prefill":
                self._states[item.request_id].members[item.member].num_computed = item.end
        finished = []
        for rid, pairs in branches.items():
            state = self._states[rid]
            if self._apply_branches(state, pairs, forked[rid], parsed[rid].finished, now):
                finished.append(rid)
        self.metrics.steps += 1
        self.metrics.batched_tokens += batch.num_tokens
        return finished

    def _sequence_ids(self, plan: _StepPlan, state: RequestState) -> list[int]:
        admission = plan.admitted.get(state.request_id)
        return list(admission.seq_ids) if admission is not None else state.seq_ids

    def _fork_branches(self, plan: _StepPlan, branches: dict[int, list[tuple[int, int]]]) -> dict[int, list[int]]:
        """Inside the step's transaction: the sequence id of every new member (a parent's first
        child keeps the parent's sequence, later children fork it)."""
        out = {}
        for rid, pairs in branches.items():
            parents = self._sequence_ids(plan, self._states[rid])
            used, seq_ids = set(), []
            for parent, _ in pairs:
                if parent in used:
                    seq_ids.append(self.cache.fork(parents[parent]))
                else:
                    used.add(parent)
                    seq_ids.append(parents[parent])
            out[rid] = seq_ids
        return out

    def _apply_admissions(self, plan: _StepPlan, now: float) -> None:
        for request_id, admission in plan.admitted.items():
            state = admission.state
            if state.num_preemptions:
                wasted = max(0, state.computed_before_preemption - sum(admission.cached))
                state.wasted_recompute_tokens += wasted
                self.metrics.wasted_recompute_tokens += wasted
                state.computed_before_preemption = 0
            for member, seq_id, cached in zip(state.members, admission.seq_ids, admission.cached):
                member.seq_id = seq_id
                member.num_computed = cached
            state.status = RequestStatus.RUNNING
            if state.first_scheduled_time is None:
                state.first_scheduled_time = now
            self._running[request_id] = state

    def _apply_branches(self, state: RequestState, pairs: list[tuple[int, int]], seq_ids: list[int],
                        finished: bool, now: float) -> bool:
        """Replace ``state``'s members by the branches; True when the request finished."""
        old = state.members
        kept = set(seq_ids)
        for member in old:
            if member.seq_id not in kept:
                self.cache.detach(member.seq_id)
        num_output = len(old[0].output) + 1
        computed = state.request.prompt_len + num_output - 1  # all but the new token, not in the cache yet
        members, used = [], set()
        for (parent, token), seq_id in zip(pairs, seq_ids):
            source = old[parent]
            if parent in used:  # a fork: a copy of the parent's tokens (taken before it grows)
                member = SequenceState(seq_id, source.output[:num_output - 1] + [token], computed)
            else:  # the parent's first child goes on in place
                used.add(parent)
                member = source
                member.output.append(token)
                member.num_computed = computed
            members.append(member)
        state.members = members or [SequenceState(None, old[0].output, old[0].num_computed)]
        if state.first_token_time is None:
            state.first_token_time = now
        if finished or not state.members or num_output >= state.request.max_new_tokens:
            self._finish(state, now, num_output)
            return True
        return False

    def abort_batch(self) -> None:
        """Undo the outstanding batch (its step failed): every reservation it made is rolled back
        and the same work is scheduled again by the next ``get_batch``."""
        outstanding = self._outstanding
        if outstanding is None:
            raise SchedulerStateError("no batch is outstanding")
        self._outstanding = None
        self._undo(outstanding.plan, outstanding.transaction)

    def _finish(self, state: RequestState, now: float, output_len: int) -> None:
        for member in state.members:
            if member.seq_id is not None:
                self.cache.detach(member.seq_id)
                member.seq_id = None
        del self._running[state.request_id]
        del self._states[state.request_id]
        state.status = RequestStatus.FINISHED
        state.finish_time = now
        self.metrics.record_finish(RequestRecord(
            request_id=state.request_id, arrival_time=state.arrival_time,
            first_scheduled_time=state.first_scheduled_time, first_token_time=state.first_token_time,
            finish_time=now, prompt_len=state.request.prompt_len, output_len=output_len,
            num_preemptions=state.num_preemptions, wasted_recompute_tokens=state.wasted_recompute_tokens,
            ttft_slo=ttft_slo_of(state, self._params), tpot_slo=tpot_slo_of(state, self._params)))
        if self.admission is not None:
            with self._lock:
                self.admission.complete(state.request_id, generated_tokens=output_len * state.request.num_seqs,
                                        now=now)
