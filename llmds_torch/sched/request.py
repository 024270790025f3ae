"""What a client submits (:class:`Request`) and what the scheduler tracks about it (:class:`RequestState`)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from llmds_torch.sched.errors import InvalidRequest

_INT32_MAX = 2**31 - 1


def _check_optional_seconds(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise InvalidRequest(f"{name} must be a non-negative number of seconds or None, got {value!r}")


def _as_token_tuple(prompt) -> tuple[int, ...]:
    arr = np.asarray(prompt)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidRequest(f"prompt must be a non-empty 1-D sequence of token ids, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InvalidRequest(f"prompt token ids must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > _INT32_MAX:
        raise InvalidRequest(f"prompt token ids must lie in [0, {_INT32_MAX}]")
    return tuple(arr.tolist())


@dataclass(frozen=True, slots=True)
class Request:
    """One generation request as a client submits it.

    Parameters
    ----------
    prompt : sequence of int
        Prompt token ids ``[prompt_len]``, each in ``[0, 2**31 - 1]``; stored as a tuple.
    max_new_tokens : int
        Most tokens to generate (>= 1). The scheduler reserves ``len(prompt) + max_new_tokens``.
    arrival_time : float | None
        Seconds on the caller's clock; ``None`` lets ``Scheduler.submit`` stamp it.
    ttft_slo : float | None
        Target seconds from arrival to the first output token (``None``: the scheduler default).
    tpot_slo : float | None
        Target mean seconds per output token after the first (``None``: the scheduler default).
    priority : float
        A non-negative boost added to the policy's score (its units: seconds for ``fcfs`` and
        ``slo``, tokens for ``srpt``). 0 for everyone means the policy alone decides.
    tenant : str | None
        Tenant name for per-tenant admission limits.
    salt : bytes | str | None
        Per-request prefix-cache salt (tenant isolation), passed to the cache's ``attach``.
    """

    prompt: tuple[int, ...]
    max_new_tokens: int
    arrival_time: float | None = None
    ttft_slo: float | None = None
    tpot_slo: float | None = None
    priority: float = 0.0
    tenant: str | None = None
    salt: bytes | str | None = None

    def __post_init__(self):
        object.__setattr__(self, "prompt", _as_token_tuple(self.prompt))
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InvalidRequest(f"max_new_tokens must be an integer >= 1, got {n!r}")
        object.__setattr__(self, "max_new_tokens", int(n))
        if self.arrival_time is not None:
            t = self.arrival_time
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise InvalidRequest(f"arrival_time must be a finite number of seconds or None, got {t!r}")
        _check_optional_seconds("ttft_slo", self.ttft_slo)
        _check_optional_seconds("tpot_slo", self.tpot_slo)
        p = self.priority
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p >= 0) or math.isinf(p):
            raise InvalidRequest(f"priority must be a finite number >= 0, got {p!r}")
        if self.tenant is not None and not isinstance(self.tenant, str):
            raise InvalidRequest(f"tenant must be a str or None, got {type(self.tenant).__name__}")
        if self.salt is not None and not isinstance(self.salt, (bytes, str)):
            raise InvalidRequest(f"salt must be bytes, str or None, got {type(self.salt).__name__}")

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    @property
    def max_total_tokens(self) -> int:
        """``len(prompt) + max_new_tokens``: what admission reserves and the context must hold."""
        return len(self.prompt) + self.max_new_tokens


class RequestStatus(enum.Enum):
    WAITING = "waiting"     # in the queue, holds no pages (new, or preempted)
    RUNNING = "running"     # attached to the cache: prefilling in chunks, or decoding
    FINISHED = "finished"   # detached, metrics recorded


@dataclass(slots=True, eq=False)
class RequestState:
    """The scheduler's mutable record of one request.

    ``prefill_tokens`` is what the next attach sends to the cache: the prompt, plus every output
    token so far when the request was preempted (recompute). ``num_computed`` counts the positions
    of ``prefill_tokens`` whose KV is computed in the current attachment (starts at the cache's
    prefix hit). Once ``num_computed == len(prefill_tokens)`` the request decodes: each step feeds
    ``output[-1]`` at position ``len(prompt) + len(output) - 1``.
    """

    request_id: int
    request: Request
    arrival_time: float
    status: RequestStatus = RequestStatus.WAITING
    seq_id: int | None = None
    prefill_tokens: list[int] = field(default_factory=list)
    num_computed: int = 0
    output: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    computed_before_preemption: int = 0
    wasted_recompute_tokens: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def prefill_done(self) -> bool:
        return self.status is RequestStatus.RUNNING and self.num_computed >= len(self.prefill_tokens)

    @property
    def remaining_prefill(self) -> int:
        return len(self.prefill_tokens) - self.num_computed

    @property
    def remaining_tokens(self) -> int:
        """Prefill tokens still to compute plus output tokens still allowed (SRPT's key)."""
        return self.remaining_prefill + self.request.max_new_tokens - len(self.output)

    @property
    def positions_computed(self) -> int:
        """Positions whose KV the current attachment holds computed (0 while waiting)."""
        if self.status is not RequestStatus.RUNNING:
            return 0
        if self.num_computed < len(self.prefill_tokens):
            return self.num_computed
        return len(self.request.prompt) + len(self.output) - 1
