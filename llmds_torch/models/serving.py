"""A scheduler-driven serving loop: ``llmds_torch.sched.Scheduler`` decides every step, the model
computes it on the paged cache.

Each step: requests whose arrival time has come are submitted; ``get_batch(now)`` reserves the
step's cache slots and returns prefill chunks and decodes; ``model.forward`` computes exactly those
positions (writing their KV); the rows that sample produce the next tokens; ``complete_batch`` hands
them back. The scheduler owns admission, chunked prefill, preemption and metrics; this loop owns
the model and sampling. (``GenerationEngine`` is the self-contained alternative with its own
first-come-first-served admission, beam search and parallel sampling.)
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams, sample_tokens
from llmds_torch.sched import Request, RequestRefused, RequestTooLarge, Scheduler, StepResult


@dataclass(slots=True)
class StepInfo:
    """What one step did, for progress reporting and memory timelines."""

    time: float  # seconds since the loop started, at the end of the step
    num_items: int
    num_tokens: int
    active: dict[int, int]  # request id -> its reserved token budget (prompt + max_new_tokens)
    finished: list[int]


@dataclass(slots=True)
class ServeResult:
    """Outputs of ``ServingLoop.run``.

    ``outputs[i]`` are the tokens generated for ``requests[i]`` (empty when it was refused);
    ``request_ids[i]`` is the scheduler's id for it (None when refused).
    """

    outputs: list[list[int]]
    request_ids: list[int | None]
    refused: dict[int, str] = field(default_factory=dict)  # request index -> reason
    steps: int = 0
    seconds: float = 0.0


class ServingLoop:
    """Runs ``model`` over ``scheduler``'s batches.

    Parameters
    ----------
    model : LlamaModel
    scheduler : Scheduler
        Built on the ``PagedKVCache`` the model writes to.
    params : SamplingParams
        Temperature / top-k / top-p / stop tokens / seed shared by all requests (``n`` and
        ``beam_width`` must be 1: the scheduler runs one sequence per request).
    clock : callable() -> float
    """

    def __init__(self, model: LlamaModel, scheduler: Scheduler, params: SamplingParams | None = None, *,
                 clock: Callable[[], float] = time.perf_counter):
        self.model = model
        self.scheduler = scheduler
        self.cache = scheduler.cache
        self.params = params or SamplingParams()
        if self.params.n != 1 or self.params.beam_width != 1:
            raise ValueError("ServingLoop runs one sequence per request: use GenerationEngine for n > 1 or beams")
        self.clock = clock

    def run(self, requests: Sequence[Request], arrivals: Sequence[float] | None = None, *,
            on_step: Callable[[StepInfo], None] | None = None) -> ServeResult:
        """Serve ``requests``, each submitted once the loop's clock reaches ``arrivals[i]``
        (seconds from the start; default: all at once)."""
        arrivals = list(arrivals) if arrivals is not None else [0.0] * len(requests)
        if len(arrivals) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(arrivals)} arrival times")
        order = sorted(range(len(requests)), key=lambda i: arrivals[i])
        outputs: list[list[int]] = [[] for _ in requests]
        request_ids: list[int | None] = [None] * len(requests)
        index_of: dict[int, int] = {}
        budget: dict[int, int] = {}
        active: dict[int, int] = {}
        refused: dict[int, str] = {}
        generators: dict[int, torch.Generator] = {}
        stop = set(self.params.stop_token_ids)
        start = self.clock()
        steps, next_arrival = 0, 0
        scheduler = self.scheduler
        while next_arrival < len(order) or scheduler.has_work():
            now = self.clock() - start
            while next_arrival < len(order) and arrivals[order[next_arrival]] <= now:
                i = order[next_arrival]
                next_arrival += 1
                try:
                    rid = scheduler.submit(requests[i], now=now)
                except (RequestRefused, RequestTooLarge) as exc:
                    refused[i] = str(exc)
                    continue
                request_ids[i], index_of[rid] = rid, i
                budget[rid] = requests[i].max_total_tokens
                if not self.params.greedy:
                    seed = (self.params.seed or 0) * 1_000_003 + i
                    generators[rid] = torch.Generator().manual_seed(seed)
            batch = scheduler.get_batch(now)
            if not batch:
                wake = batch.wake_time if batch.wake_time is not None else now + 1e-3
                if next_arrival < len(order):
                    wake = min(wake, arrivals[order[next_arrival]])
                time.sleep(max(0.0, min(wake - (self.clock() - start), 0.05)))
                continue
            for item in batch.items:
                active[item.request_id] = budget[item.request_id]
            for rid in batch.preempted:
                active.pop(rid, None)
            logits = self.model.forward(self.cache, batch.seq_ids, [list(item.token_ids) for item in batch.items])
            results = []
            for row, item in enumerate(batch.items):
                if not item.samples:
                    continue
                token = int(sample_tokens(logits[row:row + 1], self.params, generators.get(item.request_id))[0])
                outputs[index_of[item.request_id]].append(token)
                results.append(StepResult(item.request_id, token, finished=token in stop))
            finished = scheduler.complete_batch(results, self.clock() - start)
            steps += 1
            if on_step is not None:
                on_step(StepInfo(self.clock() - start, len(batch), batch.num_tokens, dict(active), finished))
            for rid in finished:
                active.pop(rid, None)
        return ServeResult(outputs, request_ids, refused, steps, self.clock() - start)
