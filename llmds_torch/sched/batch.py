"""What one scheduler step asks an engine to run (:class:`Batch`), and what the engine reports back
(:class:`StepResult`).

How an engine runs a batch
--------------------------
``Scheduler.get_batch`` has already made every cache reservation the step needs (``attach`` for
new and re-admitted requests, ``append`` of the fed token for decodes), so the engine only
computes. For each :class:`ScheduledSeq` ``item`` in ``batch.items`` (batch order):

- ``item.seq_id`` is the sequence in the cache. Positions ``[item.start, item.end)`` are to be
  computed this step; their input tokens are ``item.token_ids`` (``[item.end - item.start]``).
  ``cache.num_written(item.seq_id) == item.start`` before the step, and those positions are
  exactly the first ``item.num_tokens`` pending slots of the sequence:
  ``cache.slot_mapping([item.seq_id])[:item.num_tokens]`` (for a decode, or the last prefill
  chunk, that is all of them).
- ``item.kind == "prefill"``: a chunk of the prompt (or, after a preemption, of prompt + the
  outputs so far but the last, recomputed; the last is then fed as a decode). Attention is causal over positions ``[0, item.end)``; positions
  ``[0, item.start)`` are already in the cache (a prefix hit or earlier chunks).
- ``item.kind == "decode"``: one token, ``item.token_ids[0]`` (the previous output) at position
  ``item.start``.
- ``item.samples``: whether the logits at position ``item.end - 1`` are to be sampled. True for
  every decode and for the last chunk of a fresh prompt. Non-final prefill chunks (and the
  recompute after a preemption) produce no result.

A request with several sequences (parallel samples, beams) is one group: its sampling items
(``item.member`` = 0, 1, ...) all sample in the same step, and the engine answers with one
:class:`StepResult` for the group, naming for each continuing member its parent and new token.

Then call ``Scheduler.complete_batch(results, now)`` with one ``StepResult`` per sampling
request, or ``Scheduler.abort_batch()`` when the step failed: the batch's reservations are
rolled back and the next ``get_batch`` schedules the same work again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple


class ScheduledSeq(NamedTuple):
    """One request's share of a step (an immutable named tuple: cheap to build 256 per step).

    Attributes
    ----------
    request_id : int
        The id ``submit`` returned.
    seq_id : int
        The request's sequence id in the cache for this attachment (a new one after preemption).
    kind : "prefill" | "decode"
    start, end : int
        Positions ``[start, end)`` computed this step; ``end - start == 1`` for a decode.
    token_ids : tuple[int, ...]
        Input tokens of those positions, ``[end - start]``.
    samples : bool
        True when this step yields the request's next output token.
    member : int
        The sequence's index in its request's group (0 for a single-sequence request).
    """

    request_id: int
    seq_id: int
    kind: Literal["prefill", "decode"]
    start: int
    end: int
    token_ids: tuple[int, ...]
    samples: bool
    member: int = 0

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Batch:
    """The work of one step.

    Attributes
    ----------
    items : tuple[ScheduledSeq, ...]
        Decodes first (highest score first), then prefill chunks; each sequence at most once,
        the members of a group next to each other in member order.
    now : float
        The ``now`` given to ``get_batch``.
    preempted : tuple[int, ...]
        Request ids preempted while this batch was built (their sequences are already detached).
    wake_time : float | None
        For an empty batch held back by ``max_wait``: when it is worth calling again.
    """

    items: tuple[ScheduledSeq, ...]
    now: float
    preempted: tuple[int, ...] = ()
    wake_time: float | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step (prefill chunk lengths + one per decode)."""
        return sum(item.end - item.start for item in self.items)

    @property
    def seq_ids(self) -> list[int]:
        return [item.seq_id for item in self.items]

    @property
    def request_ids(self) -> list[int]:
        return [item.request_id for item in self.items]

    @property
    def decodes(self) -> list[ScheduledSeq]:
        return [item for item in self.items if item.kind == "decode"]

    @property
    def prefills(self) -> list[ScheduledSeq]:
        return [item for item in self.items if item.kind == "prefill"]


@dataclass(frozen=True, slots=True)
class StepResult:
    """The engine's answer for one sampling request.

    Attributes
    ----------
    request_id : int
    token_id : int | None
        The sampled output token of a single-sequence request (shorthand for
        ``branches=((0, token_id),)``).
    finished : bool
        True when the engine saw a stop condition (e.g. EOS, or every beam ended). The scheduler
        also finishes a request on its own when it reaches ``max_new_tokens``.
    branches : tuple[tuple[int, int], ...] | None
        For a group: the members that go on, as ``(parent, token_id)`` pairs in the new member
        order. ``parent`` indexes the members that sampled this step; a parent named several
        times is forked, a parent named by none is released. At most ``request.num_seqs``
        pairs; none (or ``finished``) ends the request.
    """

    request_id: int
    token_id: int | None = None
    finished: bool = False
    branches: tuple[tuple[int, int], ...] | None = None

    def continuing(self) -> tuple[tuple[int, int], ...]:
        """The ``(parent, token_id)`` pairs, the shorthand expanded."""
        if self.branches is not None:
            return tuple(self.branches)
        return ((0, self.token_id),)
