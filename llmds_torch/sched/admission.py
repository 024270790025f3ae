"""Admission control at the door: rate limits, a token reservation, and caps on queued work.

Every check takes an explicit ``now`` (seconds on the caller's clock), so the logic has no hidden
wall clock and tests are deterministic. Times must be finite; they need not arrive in order:

- a time at most ``clock_tolerance`` earlier than the latest one a limiter has seen (threads that
  read the clock before taking a lock) counts as that latest time;
- a time earlier by more is taken as the clock's correction: that limiter's clock restarts there,
  and charges stamped later are re-stamped to it (``clock_resets`` counts these). So one absurd
  time (``1e12``) refills at most one bucket once and never holds later requests back.

Limits (each optional, globally and per tenant):

- requests per second: a token bucket with ``burst`` capacity refilled at ``requests_per_second``;
  over any interval of length ``T`` at most ``burst + requests_per_second * T`` requests pass.
- tokens per second: a sliding window of ``window_seconds``; the tokens charged by admissions
  inside any window of that length never exceed ``tokens_per_second * window_seconds``. A request
  is charged ``len(prompt) + max_new_tokens`` when admitted; on completion the unused part
  (``max_new_tokens - generated``) is refunded to the window it was charged in.
- queued requests / queued tokens: admitted and not yet completed requests, and their reserved
  tokens.

A refusal raises :class:`RequestRefused` with ``reason`` and ``retry_after`` (seconds; for the
queue caps, which free up only on completions, ``queue_retry_after`` is the hint). A refused
request changes no state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmds_torch.errors import ConfigError
from llmds_torch.sched.errors import NonMonotonicTime, RequestRefused, UnknownRequest


def _check_positive_or_none(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number > 0 or None, got {value!r}")


@dataclass(frozen=True, slots=True)
class RateLimits:
    """One set of limits; ``None`` switches a limit off.

    Parameters
    ----------
    requests_per_second : float | None
        Token-bucket refill rate.
    burst : float | None
        Bucket capacity (default: ``max(1, requests_per_second)``).
    tokens_per_second : float | None
        Sliding-window token rate; the window holds ``tokens_per_second * window_seconds``.
    window_seconds : float
        Sliding-window length.
    max_queued_requests : int | None
        Admitted-but-not-completed requests.
    max_queued_tokens : int | None
        Reserved tokens (prompt + max_new_tokens) of admitted-but-not-completed requests.
    """

    requests_per_second: float | None = None
    burst: float | None = None
    tokens_per_second: float | None = None
    window_seconds: float = 1.0
    max_queued_requests: int | None = None
    max_queued_tokens: int | None = None

    def __post_init__(self):
        _check_positive_or_none("requests_per_second", self.requests_per_second)
        _check_positive_or_none("tokens_per_second", self.tokens_per_second)
        _check_positive_or_none("window_seconds", self.window_seconds)
        _check_positive_or_none("max_queued_requests", self.max_queued_requests)
        _check_positive_or_none("max_queued_tokens", self.max_queued_tokens)
        if self.burst is not None:
            _check_positive_or_none("burst", self.burst)
            if self.burst < 1:
                raise ConfigError(f"burst must be >= 1 (one request must fit the bucket), got {self.burst}")
            if self.requests_per_second is None:
                raise ConfigError("burst needs requests_per_second")
        if self.window_seconds is None:
            raise ConfigError("window_seconds must be a finite number > 0")

    @property
    def bucket_capacity(self) -> float | None:
        if self.requests_per_second is None:
            return None
        return self.burst if self.burst is not None else max(1.0, float(self.requests_per_second))

    @property
    def window_capacity(self) -> float | None:
        if self.tokens_per_second is None:
            return None
        return self.tokens_per_second * self.window_seconds


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Global limits, per-tenant limits (tenant name -> :class:`RateLimits`), the retry hint
    given when a queue cap refuses, and how far back (seconds) a time may lie behind the latest
    one and still count as that latest time (``clock_tolerance``)."""

    limits: RateLimits = field(default_factory=RateLimits)
    tenant_limits: Mapping[str, RateLimits] = field(default_factory=dict)
    queue_retry_after: float = 1.0
    clock_tolerance: float = 1.0

    def __post_init__(self):
        if not isinstance(self.limits, RateLimits):
            raise ConfigError("limits must be a RateLimits")
        for name, lim in self.tenant_limits.items():
            if not isinstance(name, str) or not isinstance(lim, RateLimits):
                raise ConfigError("tenant_limits must map tenant names (str) to RateLimits")
        _check_positive_or_none("queue_retry_after", self.queue_retry_after)
        tol = self.clock_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
            raise ConfigError(f"clock_tolerance must be a finite number >= 0, got {tol!r}")
        object.__setattr__(self, "tenant_limits", dict(self.tenant_limits))


class _Limiter:
    """The live state of one :class:`RateLimits`: bucket level, window entries, queue totals."""

    __slots__ = ("limits", "time", "clock_resets", "bucket", "bucket_time", "window", "window_sum",
                 "queued_requests", "queued_tokens")

    def __init__(self, limits: RateLimits):
        self.limits = limits
        self.time = -math.inf  # the latest time seen (after restarts)
        self.clock_resets = 0
        self.bucket = limits.bucket_capacity
        self.bucket_time: float | None = None
        self.window: deque[list] = deque()  # entries [time, ticket, charged tokens]
        self.window_sum = 0.0
        self.queued_requests = 0
        self.queued_tokens = 0

    def sync(self, now: float, tolerance: float) -> float:
        """Move this limiter's clock to ``now`` and return the time to account ``now`` at
        (see the module docstring for times out of order)."""
        if now >= self.time:
            self.time = now
        elif now >= self.time - tolerance:
            return self.time
        else:
            for entry in self.window:
                entry[0] = min(entry[0], now)
            if self.bucket_time is not None:
                self.bucket_time = min(self.bucket_time, now)
            self.time = now
            self.clock_resets += 1
        return now

    def _bucket_level(self, now: float) -> float:
        lim = self.limits
        if self.bucket_time is None:
            return self.bucket
        return min(lim.bucket_capacity, self.bucket + (now - self.bucket_time) * lim.requests_per_second)

    def _expire(self, now: float) -> None:
        horizon = now - self.limits.window_seconds
        window = self.window
        while window and window[0][0] <= horizon:
            self.window_sum -= window.popleft()[2]

    def check(self, tokens: int, now: float, prefix: str, queue_retry_after: float) -> None:
        """Raise RequestRefused if one more request of ``tokens`` would break a limit."""
        lim = self.limits
        # Refusals that waiting cannot cure come first, so their retry_after is inf.
        if lim.max_queued_tokens is not None and tokens > lim.max_queued_tokens:
            raise RequestRefused(f"{prefix}request reserves {tokens} tokens, more than the queued-token cap "
                                 f"{lim.max_queued_tokens}", reason=f"{prefix}queued_tokens", retry_after=math.inf)
        capacity = lim.window_capacity
        if capacity is not None and tokens > capacity:
            raise RequestRefused(f"{prefix}request of {tokens} tokens exceeds the whole token window "
                                 f"({capacity:g} tokens per {lim.window_seconds:g} s)",
                                 reason=f"{prefix}token_rate", retry_after=math.inf)
        if lim.max_queued_requests is not None and self.queued_requests + 1 > lim.max_queued_requests:
            raise RequestRefused(f"{prefix}{self.queued_requests} requests queued, the cap is {lim.max_queued_requests}",
                                 reason=f"{prefix}queued_requests", retry_after=queue_retry_after)
        if lim.max_queued_tokens is not None:
            if self.queued_tokens + tokens > lim.max_queued_tokens:
                raise RequestRefused(f"{prefix}{self.queued_tokens} tokens queued + {tokens} would pass the cap "
                                     f"{lim.max_queued_tokens}", reason=f"{prefix}queued_tokens",
                                     retry_after=queue_retry_after)
        if lim.requests_per_second is not None:
            level = self._bucket_level(now)
            if level < 1.0:
                raise RequestRefused(f"{prefix}request rate above {lim.requests_per_second}/s",
                                     reason=f"{prefix}request_rate",
                                     retry_after=(1.0 - level) / lim.requests_per_second)
        if capacity is not None:
            self._expire(now)
            if self.window_sum + tokens > capacity:
                # Wait until enough of the oldest charges leave the window.
                excess = self.window_sum + tokens - capacity
                freed = 0.0
                retry = lim.window_seconds
                for t, _, charged in self.window:
                    freed += charged
                    if freed >= excess:
                        retry = t + lim.window_seconds - now
                        break
                raise RequestRefused(f"{prefix}token rate above {lim.tokens_per_second}/s over "
                                     f"{lim.window_seconds:g} s", reason=f"{prefix}token_rate",
                                     retry_after=max(retry, 0.0))

    def commit(self, ticket: int, tokens: int, now: float) -> list | None:
        lim = self.limits
        self.queued_requests += 1
        self.queued_tokens += tokens
        if lim.requests_per_second is not None:
            self.bucket = self._bucket_level(now) - 1.0
            self.bucket_time = now
        if lim.window_capacity is not None:
            entry = [now, ticket, float(tokens)]
            self.window.append(entry)
            self.window_sum += tokens
            return entry
        return None

    def release(self, entry: list | None, reserved: int, refund: int, now: float) -> None:
        self.queued_requests -= 1
        self.queued_tokens -= reserved
        if entry is not None and refund > 0:
            self._expire(now)
            if entry[0] > now - self.limits.window_seconds:  # still inside the window
                entry[2] -= refund
                self.window_sum -= refund


@dataclass(slots=True)
class _Ticket:
    tenant: str | None
    reserved: int
    max_new_tokens: int
    entries: list


class AdmissionController:
    """Decides at submit time whether a request may enter the queue.

    Parameters
    ----------
    config : AdmissionConfig
        Global and per-tenant limits. Tenants without an entry only face the global limits.

    Notes
    -----
    Not thread-safe by itself; :class:`Scheduler` calls it under its submit lock.
    """

    def __init__(self, config: AdmissionConfig | None = None):
        self.config = config or AdmissionConfig()
        self._global = _Limiter(self.config.limits)
        self._tenants = {name: _Limiter(lim) for name, lim in self.config.tenant_limits.items()}
        self._tickets: dict[int, _Ticket] = {}
        self.refusals: dict[str, int] = {}

    @staticmethod
    def _check_time(now) -> float:
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise NonMonotonicTime(f"now must be a finite number of seconds, got {now!r}")
        return float(now)

    @property
    def clock_resets(self) -> int:
        """Times a limiter's clock restarted because a time lay far behind the latest one."""
        return self._global.clock_resets + sum(t.clock_resets for t in self._tenants.values())

    def admit(self, ticket: int, *, prompt_len: int, max_new_tokens: int, now: float,
              tenant: str | None = None) -> None:
        """Admit request ``ticket`` or raise :class:`RequestRefused` (and change nothing).

        Reserves ``prompt_len + max_new_tokens`` tokens until :meth:`complete`.
        """
        now = self._check_time(now)
        if ticket in self._tickets:
            raise ValueError(f"ticket {ticket} is already admitted")
        tokens = int(prompt_len) + int(max_new_tokens)
        limiters = [(self._global, "")]
        if tenant is not None and tenant in self._tenants:
            limiters.append((self._tenants[tenant], "tenant_"))
        tolerance = self.config.clock_tolerance
        times = [limiter.sync(now, tolerance) for limiter, _ in limiters]
        try:
            for (limiter, prefix), t in zip(limiters, times):
                limiter.check(tokens, t, prefix, self.config.queue_retry_after)
        except RequestRefused as refusal:
            self.refusals[refusal.reason] = self.refusals.get(refusal.reason, 0) + 1
            raise
        entries = [limiter.commit(ticket, tokens, t) for (limiter, _), t in zip(limiters, times)]
        self._tickets[ticket] = _Ticket(tenant, tokens, int(max_new_tokens), entries)

    def complete(self, ticket: int, *, generated_tokens: int, now: float) -> None:
        """Release ``ticket``'s reservation; refund ``max_new_tokens - generated_tokens`` to the
        token window if its charge is still inside it."""
        now = self._check_time(now)
        info = self._tickets.get(ticket)
        if info is None:
            raise UnknownRequest(f"ticket {ticket} was never admitted or is already complete")
        if generated_tokens < 0:
            raise ValueError(f"generated_tokens must be >= 0, got {generated_tokens}")
        del self._tickets[ticket]
        refund = max(0, info.max_new_tokens - int(generated_tokens))
        limiters = [self._global]
        if info.tenant is not None and info.tenant in self._tenants:
            limiters.append(self._tenants[info.tenant])
        for limiter, entry in zip(limiters, info.entries):
            limiter.release(entry, info.reserved, refund, limiter.sync(now, self.config.clock_tolerance))

    @property
    def queued_requests(self) -> int:
        return self._global.queued_requests

    @property
    def queued_tokens(self) -> int:
        return self._global.queued_tokens

    def window_tokens(self, now: float, tenant: str | None = None) -> float:
        """Tokens charged inside the window ending at ``now`` (after refunds)."""
        limiter = self._global if tenant is None else self._tenants[tenant]
        horizon = now - limiter.limits.window_seconds
        return sum(e[2] for e in limiter.window if e[0] > horizon)
