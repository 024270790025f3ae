"""The generation engine: a convenience over :class:`~llmds_torch.sched.Scheduler` and
:class:`~llmds_torch.models.runner.ModelRunner` on one :class:`~llmds_torch.kv.PagedKVCache`.

``submit`` validates a request against the model and hands it to the scheduler as one sequence
group (its ``n`` samples or ``beam_width`` beams); ``step`` runs one scheduler step through the
runner; ``generate`` runs until the given prompts finish. Admission, page reservation,
preemption, chunked prefill and prefix sharing are the scheduler's; choosing tokens is the
runner's. The engine adds only periodic compaction and counters.
"""

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llmds_torch.errors import ConfigError, RequestTooLarge  # noqa: F401  (re-exported)
from llmds_torch.models.errors import EngineError
from llmds_torch.models.interface import CausalLM
from llmds_torch.models.runner import GeneratedSequence, GenerationResult, ModelRunner, StepOutput
from llmds_torch.models.sampling import SamplingParams
from llmds_torch.sched import POLICIES, Request, Scheduler, SchedulerConfig, UnknownRequest

__all__ = ["EngineConfig", "EngineError", "GenerationEngine", "GeneratedSequence", "GenerationResult",
           "StepOutput", "RequestTooLarge"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Knobs of :class:`GenerationEngine`.

    Parameters
    ----------
    max_batch_seqs : int
        Most cache sequences per step (a request with ``n`` samples or ``beam_width`` beams counts
        that many); the scheduler's ``max_batch_size``.
    max_prefill_tokens : int
        Prompt tokens computed per step next to a full batch of decodes (longer prompts are
        prefilled in chunks); the scheduler's ``max_batch_tokens`` is this plus ``max_batch_seqs``.
    policy : "fcfs" | "srpt" | "slo"
        The scheduler's policy.
    max_preemptions : int
        The scheduler's ``max_preemptions``.
    defrag_every : int or None
        Compact the cache (``cache.defragment``) after every this many steps; ``None``: never.
    defrag_order : str
        ``"sequence"`` or ``"lowest"``, passed to ``cache.defragment``.
    record_logits : bool
        Keep the logits row ``[vocab]`` behind every generated token in the results (tests).
    """

    max_batch_seqs: int = 64
    max_prefill_tokens: int = 512
    policy: str = "fcfs"
    max_preemptions: int = 3
    defrag_every: int | None = None
    defrag_order: str = "sequence"
    record_logits: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_seqs", "max_prefill_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.defrag_every is not None and (isinstance(self.defrag_every, bool)
                                              or not isinstance(self.defrag_every, int) or self.defrag_every < 1):
            raise ConfigError(f"defrag_every must be a positive int or None, got {self.defrag_every!r}")
        if self.defrag_order not in ("sequence", "lowest"):
            raise ConfigError(f"defrag_order must be 'sequence' or 'lowest', got {self.defrag_order!r}")
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; choose one of {POLICIES}")

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(policy=self.policy, max_batch_size=self.max_batch_seqs,
                               max_batch_tokens=self.max_prefill_tokens + self.max_batch_seqs,
                               max_preemptions=self.max_preemptions)


class GenerationEngine:
    """Continuous-batching generation over a paged KV cache.

    Parameters
    ----------
    model : CausalLM
        The built-in :class:`~llmds_torch.models.llama.LlamaModel` or any model with that interface.
    cache : PagedKVCache
        Its ``num_layers``, ``num_kv_heads``, ``head_dim`` must match the model.
    config : EngineConfig, optional

    Attributes
    ----------
    scheduler : Scheduler
    runner : ModelRunner
    """

    def __init__(self, model: CausalLM, cache, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        if not isinstance(self.config, EngineConfig):
            raise ConfigError(f"config must be an EngineConfig, got {type(self.config).__name__}")
        self.runner = ModelRunner(model, cache, record_logits=self.config.record_logits)
        self.model = model
        self.cache = cache
        self.scheduler = Scheduler(cache, self.config.scheduler_config())
        self.counters = dict(prompt_tokens=0, defragmentations=0)

    @property
    def capacity_pages(self) -> int:
        """Pages the cache can ever hold."""
        return self.cache.config.max_num_pages or self.cache.config.num_pages

    def submit(self, prompt: Sequence[int], params: SamplingParams | None = None, *,
               salt: bytes | str | None = None) -> int:
        """Queue a request; returns its id. Nothing is queued when it raises.

        Raises
        ------
        ConfigError
            ``params`` is not a SamplingParams.
        InvalidTokenIds
            Empty prompt, or ids outside ``[0, vocab_size)`` (stop tokens too).
        ContextWindowExceeded
            ``len(prompt) + max_new_tokens`` exceeds the model's ``max_context_len``.
        RequestTooLarge
            Its worst-case pages (every sample or beam a full private copy) exceed the cache.
        """
        params = SamplingParams() if params is None else params
        prompt = self.runner.check_request(prompt, params)
        request = Request(prompt, params.max_new_tokens, salt=salt, num_seqs=max(params.n, params.beam_width))
        request_id = self.scheduler.submit(request)
        self.runner.add_request(request_id, prompt, params)
        self.counters["prompt_tokens"] += len(prompt)
        return request_id

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> StepOutput:
        """Run one scheduler step through the model (and compact the cache every
        ``defrag_every`` steps)."""
        out = self.runner.step(self.scheduler)
        every = self.config.defrag_every
        if out.batch and every is not None and self.runner.counters["steps"] % every == 0:
            self.cache.defragment(order=self.config.defrag_order)
            self.counters["defragmentations"] += 1
        return out

    def generate(self, prompts: Iterable[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, salt=None, progress: bool = False) -> list[GenerationResult]:
        """Submit every prompt, run until all finish, return results in prompt order.

        Prompts submitted together that share full pages compute them once: the scheduler holds
        the later ones back until the first has written the shared pages, then they hit them.
        """
        prompts = list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        ids = [self.submit(p, sp, salt=salt) for p, sp in zip(prompts, params)]
        wanted = set(ids)
        results: dict[int, GenerationResult] = {}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc="generate", unit="req")
        while wanted - results.keys():
            for res in self.step().finished:
                if res.request_id in wanted:
                    results[res.request_id] = res
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [results[i] for i in ids]

    def preempt(self, request_id: int) -> None:
        """Release a running request's pages (every sample or beam) and queue it again; when it
        runs again its prompt and the tokens generated so far are recomputed (prefix hits still
        apply).

        Raises
        ------
        EngineError
            The request is not running.
        """
        try:
            self.scheduler.preempt(request_id)
        except UnknownRequest:
            raise EngineError(f"request {request_id!r} is not running; only running requests can be preempted") from None

    def stats(self) -> dict:
        """Engine counters, throughput and the cache's own statistics (``cache_*`` keys)."""
        out = dict(self.runner.counters)
        out.update(self.counters)
        busy = self.runner.busy_seconds
        out["preemptions"] = self.scheduler.metrics.preemptions
        out["busy_seconds"] = busy
        computed = out["generated_tokens"] + out["prefill_tokens_computed"]
        out["tokens_per_second"] = computed / busy if busy else 0.0
        out["generated_tokens_per_second"] = out["generated_tokens"] / busy if busy else 0.0
        out["running_requests"] = self.scheduler.num_running
        out["waiting_requests"] = self.scheduler.num_waiting
        for key, value in self.cache.stats().items():
            out[f"cache_{key}"] = value
        return out
