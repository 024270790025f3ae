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
  outputs so far, recomputed). Attention is causal over positions ``[0, item.end)``; positions
  ``[0, item.start)`` are already in the cache (a prefix hit or earlier chunks).
- ``item.kind == "decode"``: one token, ``item.token_ids[0]`` (the previous output) at position
  ``item.start``.
- ``item.samples``: whether the logits at position ``item.end - 1`` are to be sampled. True for
  every decode and for the last chunk of a prefill; then the engine must report the sampled
  token in a :class:`StepResult`. Non-final prefill chunks produce no result.

Then call ``Scheduler.complete_batch(results, now)`` with one ``StepResult`` per sampling item.
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
    """

    request_id: int
    seq_id: int
    kind: Literal["prefill", "decode"]
    start: int
    end: int
    token_ids: tuple[int, ...]
    samples: bool

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Batch:
    """The work of one step.

    Attributes
    ----------
    items : tuple[ScheduledSeq, ...]
        Decodes first (highest score first), then prefill chunks; each request at most once.
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
    """The engine's answer for one sampling item.

    Attributes
    ----------
    request_id : int
    token_id : int
        The sampled output token.
    finished : bool
        True when the engine saw a stop condition (e.g. EOS). The scheduler also finishes a
        request on its own when it reaches ``max_new_tokens``.
    """

    request_id: int
    token_id: int
    finished: bool = False
