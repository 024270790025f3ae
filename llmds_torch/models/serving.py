"""A scheduler-driven serving loop over timed arrivals, on the same path as the engine: the
:class:`~llmds_torch.sched.Scheduler` decides every step, the
:class:`~llmds_torch.models.runner.ModelRunner` computes it with the model and samples.

Each step: requests whose arrival time has come are validated against the model (vocabulary,
context window) and submitted; the runner runs one scheduler step. A request the model or the
scheduler cannot take is refused at the door with the reason, before anything is reserved.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from llmds_torch.errors import ContextWindowExceeded, InvalidTokenIds
from llmds_torch.models.interface import CausalLM
from llmds_torch.models.runner import ModelRunner
from llmds_torch.models.sampling import SamplingParams
from llmds_torch.sched import Request, RequestRefused, RequestTooLarge, Scheduler


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
    model : CausalLM
    scheduler : Scheduler
        Built on the ``PagedKVCache`` the model writes to.
    params : SamplingParams
        Temperature / top-k / top-p / stop tokens / seed shared by all requests (``n`` and
        ``beam_width`` must be 1: outputs are one token list per request; use
        ``GenerationEngine`` for samples and beams).
    clock : callable() -> float
    """

    def __init__(self, model: CausalLM, scheduler: Scheduler, params: SamplingParams | None = None, *,
                 clock: Callable[[], float] = time.perf_counter):
        self.model = model
        self.scheduler = scheduler
        self.cache = scheduler.cache
        self.params = params or SamplingParams()
        if self.params.n != 1 or self.params.beam_width != 1:
            raise ValueError("ServingLoop returns one token list per request: use GenerationEngine for n > 1 or beams")
        self.runner = ModelRunner(model, self.cache)
        self.clock = clock

    def _generator(self, index: int) -> torch.Generator | None:
        if self.params.greedy:
            return None
        return torch.Generator().manual_seed((self.params.seed or 0) * 1_000_003 + index)

    def _submit(self, request: Request, now: float, index: int) -> int:
        """Validate ``request`` against the model, then hand it to the scheduler."""
        params = SamplingParams(**{**_params_fields(self.params), "max_new_tokens": request.max_new_tokens})
        self.runner.check_request(list(request.prompt), params)
        rid = self.scheduler.submit(request, now=now)
        self.runner.add_request(rid, request.prompt, params, self._generator(index))
        return rid

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
        start = self.clock()
        steps, next_arrival = 0, 0
        scheduler = self.scheduler
        while next_arrival < len(order) or scheduler.has_work():
            now = self.clock() - start
            while next_arrival < len(order) and arrivals[order[next_arrival]] <= now:
                i = order[next_arrival]
                next_arrival += 1
                try:
                    rid = self._submit(requests[i], now, i)
                except (RequestRefused, RequestTooLarge, InvalidTokenIds, ContextWindowExceeded) as exc:
                    refused[i] = str(exc)
                    continue
                request_ids[i], index_of[rid] = rid, i
                budget[rid] = requests[i].max_total_tokens
            step = self.runner.step(scheduler, lambda: max(now, self.clock() - start))
            batch = step.batch
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
            finished = []
            for res in step.finished:
                outputs[index_of[res.request_id]] = list(res.outputs[0].token_ids)
                finished.append(res.request_id)
            steps += 1
            if on_step is not None:
                on_step(StepInfo(self.clock() - start, len(batch), batch.num_tokens, dict(active), finished))
            for rid in finished:
                active.pop(rid, None)
        return ServeResult(outputs, request_ids, refused, steps, self.clock() - start)


def _params_fields(params: SamplingParams) -> dict:
    return {name: getattr(params, name) for name in SamplingParams.__dataclass_fields__}
