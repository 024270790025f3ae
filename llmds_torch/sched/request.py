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
    num_seqs : int
        Most sequences the request runs at once: its parallel samples ``n`` or its beam width.
        They form one group that shares the prompt's pages through ``fork``; admission,
        budgets and preemption treat the group as one.
    """

    prompt: tuple[int, ...]
    max_new_tokens: int
    arrival_time: float | None = None
    ttft_slo: float | None = None
    tpot_slo: float | None = None
    priority: float = 0.0
    tenant: str | None = None
    salt: bytes | str | None = None
    num_seqs: int = 1

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
        w = self.num_seqs
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise InvalidRequest(f"num_seqs must be an integer >= 1, got {w!r}")
        object.__setattr__(self, "num_seqs", int(w))

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    @property
    def max_total_tokens(self) -> int:
        """``len(prompt) + max_new_tokens``: what admission reserves and the context must hold."""
        return len(self.prompt) + self.max_new_tokens


class RequestStatus(enum.Enum):
    """The one set of states a request (a sequence group) passes through."""

    WAITING = "waiting"     # in the queue, holds no pages (new, or preempted)
    RUNNING = "running"     # attached to the cache: prefilling in chunks, or decoding
    FINISHED = "finished"   # detached, metrics recorded


@dataclass(slots=True, eq=False)
class SequenceState:
    """One member of a request's sequence group: a sample or a beam.

    ``output`` is what this member generated; its last token is not in the cache yet (the next
    decode appends it). While the member is attached, ``num_computed`` counts the positions of
    its prefill tokens (the prompt, or prompt + ``output[:-1]`` when recomputing after a
    preemption) whose KV is computed, starting at the cache's prefix hit.
    """

    seq_id: int | None = None
    output: list[int] = field(default_factory=list)
    num_computed: int = 0

    def prefill_len(self, prompt_len: int) -> int:
        return prompt_len + max(0, len(self.output) - 1)


@dataclass(slots=True, eq=False)
class RequestState:
    """The scheduler's mutable record of one request: a group of ``request.num_seqs`` sequences
    at most, which starts as one sequence (the prompt) and branches through ``fork``.

    Every live member holds the same number of output tokens. A member whose prefill is done
    decodes: each step feeds ``output[-1]`` at position ``len(prompt) + len(output) - 1``. After a
    preemption every member recomputes prompt + ``output[:-1]`` and then decodes its last token,
    so the group samples again only when all members are back.
    """

    request_id: int
    request: Request
    arrival_time: float
    status: RequestStatus = RequestStatus.WAITING
    members: list[SequenceState] = field(default_factory=lambda: [SequenceState()])
    num_preemptions: int = 0
    computed_before_preemption: int = 0
    wasted_recompute_tokens: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def seq_id(self) -> int | None:
        """The first member's sequence id (the only one for a single-sequence request)."""
        return self.members[0].seq_id

    @property
    def seq_ids(self) -> list[int]:
        return [m.seq_id for m in self.members]

    @property
    def output(self) -> list[int]:
        """The first member's output tokens (every member holds as many)."""
        return self.members[0].output

    @property
    def num_output_tokens(self) -> int:
        return len(self.members[0].output)

    @property
    def prefill_tokens(self) -> list[int]:
        """What the first member's attach sends to the cache: the prompt, plus its outputs but
        the last when it recomputes after a preemption."""
        member = self.members[0]
        return list(self.request.prompt) + member.output[:-1]

    @property
    def num_computed(self) -> int:
        """Prefill positions computed, of the member furthest behind."""
        return min(m.num_computed for m in self.members)

    @property
    def prefill_done(self) -> bool:
        if self.status is not RequestStatus.RUNNING:
            return False
        prompt_len = len(self.request.prompt)
        for m in self.members:
            if m.num_computed < prompt_len + len(m.output) - (1 if m.output else 0):
                return False
        return True

    @property
    def remaining_prefill(self) -> int:
        """Prefill tokens still to compute, summed over the members."""
        prompt_len = len(self.request.prompt)
        total = 0
        for m in self.members:
            total += prompt_len + len(m.output) - (1 if m.output else 0) - m.num_computed
        return total

    @property
    def remaining_tokens(self) -> int:
        """Prefill tokens still to compute plus output tokens still allowed (SRPT's key)."""
        return self.remaining_prefill + self.request.max_new_tokens - self.num_output_tokens

    @property
    def positions_computed(self) -> int:
        """Positions whose KV the current attachment holds computed, summed over the members
        (0 while waiting)."""
        if self.status is not RequestStatus.RUNNING:
            return 0
        prompt_len = self.request.prompt_len
        total = 0
        for m in self.members:
            if m.num_computed < m.prefill_len(prompt_len):
                total += m.num_computed
            else:
                total += prompt_len + len(m.output) - 1
        return total
