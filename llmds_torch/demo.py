"""The end-to-end demo behind ``llmds demo``: retrieval-augmented prompts that share a system prompt,
scheduled in batches and generated on the paged KV cache, with a report that makes the savings
visible. Needs no download: the corpus is the Python standard library's own docstrings, the
embedder a deterministic feature hasher (a locally installed sentence-embedding model is used when
one is importable), the decoder a seeded random Llama-style model over UTF-8 bytes.

The run is reproducible: requests arrive on a simulated clock that advances by a modelled cost per
step (``StepCostModel``), never by the wall clock, so one seed gives the same batches, prefix hits,
copies, compaction and SLO figures on every run and machine. Only the entries under
``report["timings"]`` are measured wall-clock times.
"""

import time
from bisect import bisect_right
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from llmds_torch.errors import ConfigError
from llmds_torch.install_hint import install_hint
from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams
from llmds_torch.models.serving import ServingLoop, StepInfo
from llmds_torch.progress import bar, phase
from llmds_torch.retrieval import RetrievalPipeline, default_embedder, stdlib_documents
from llmds_torch.sched import Request, Scheduler, SchedulerConfig
from llmds_torch.sched.simulator import StepCostModel
from llmds_torch.warmup import DEMO_TARGETS, warmup

SYSTEM_PROMPT = (
    "You are a careful assistant for Python programmers. Answer the question using only the "
    "documentation excerpts given as context. Quote the names of modules, classes and functions "
    "exactly as they appear, say which excerpt supports each claim, and say plainly when the "
    "context does not contain the answer instead of guessing. Keep answers short: two or three "
    "sentences, then a minimal code example when one helps.\n\n"
)
QUESTION_FORMS = ("What does {} do?", "How do I use {}?", "When should I prefer {}?", "Explain {} briefly.")


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Sizes of the demo. Times (arrivals, SLOs) are in simulated seconds of ``StepCostModel()``."""

    requests: int = 32
    seed: int = 0
    device: str = "cpu"
    documents: int = 1500
    distinct_questions: int = 12
    top_k: int = 3
    passage_chars: int = 200
    max_new_tokens: int = 16
    arrival_rate: float = 200.0  # requests per simulated second (Poisson)
    page_size: int = 16
    num_pages: int = 640
    policy: str = "slo"
    ttft_slo: float = 0.5
    tpot_slo: float = 0.05
    parallel_samples: int = 4
    progress: bool = True

    def __post_init__(self):
        for name in ("requests", "documents", "distinct_questions", "top_k", "passage_chars", "max_new_tokens",
                     "page_size", "num_pages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"unknown device {self.device!r}; use 'cpu' or 'cuda'") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"unknown device {self.device!r}; use 'cpu' or 'cuda'")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} requested but CUDA is not available here")


@dataclass(slots=True)
class DemoParts:
    """The objects the demo used, so a caller (or a test) can check the report against them."""

    pipeline: RetrievalPipeline
    cache: PagedKVCache
    scheduler: Scheduler
    model: LlamaModel
    engine: GenerationEngine
    prompts: list[list[int]] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    timeline: list[dict] = field(default_factory=list)


class SimulatedClock:
    """A ``ServingLoop`` clock in simulated seconds.

    It advances only by ``advance`` (the modelled cost of each step) and, when read while the
    scheduler has nothing to run, jumps to the next arrival, so an idle loop never waits on the
    wall clock. The first reading is the loop's origin. Assumes ``SchedulerConfig.max_wait == 0``
    (a scheduler that holds work back would wait for time that never passes).
    """

    def __init__(self, arrivals: list[float], has_work):
        self.now = 0.0
        self._arrivals = sorted(arrivals)
        self._has_work = has_work
        self._origin: float | None = None

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        if self._origin is None:
            self._origin = self.now
        elif not self._has_work():
            upcoming = bisect_right(self._arrivals, self.now - self._origin)
            if upcoming < len(self._arrivals):
                self.now = self._origin + self._arrivals[upcoming]
        return self.now


class _CostedModel:
    """The model, with each forward charged to a ``SimulatedClock`` at ``StepCostModel``'s rate."""

    def __init__(self, model: LlamaModel, clock: SimulatedClock, cost: StepCostModel):
        self._model, self._clock, self._cost = model, clock, cost

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, cache, seq_ids, token_ids):
        logits = self._model.forward(cache, seq_ids, token_ids)
        batched = sum(len(t) for t in token_ids)
        kv_read = sum(cache.num_tokens(s) for s in seq_ids)
        self._clock.advance(self._cost.step_seconds(batched, kv_read))
        return logits


def encode(text: str) -> list[int]:
    """The demo's tokenizer: UTF-8 bytes (vocabulary of 256)."""
    return list(text.encode("utf-8"))


def decode(tokens: list[int]) -> str:
    return bytes(tokens).decode("utf-8", errors="replace")


def build_prompt(pipeline: RetrievalPipeline, question: str, config: DemoConfig) -> tuple[str, bool]:
    """System prompt, the top-k retrieved passages, the question. Returns (prompt, cache hit)."""
    result = pipeline.query(question, k=config.top_k)
    passages = [pipeline.text(int(i))[:config.passage_chars] for i in result.ids]
    context = "".join(f"[{n + 1}] {p}\n" for n, p in enumerate(passages))
    return f"{SYSTEM_PROMPT}Context:\n{context}\nQuestion: {question}\nAnswer:", result.from_cache


def run_demo(config: DemoConfig | None = None) -> tuple[dict, DemoParts]:
    """Run the demo; return the report (a JSON-ready dict) and the objects it used.

    Progress (when ``config.progress``) goes to stderr; the first run announces the one-time
    compilation of the search kernels.
    """
    config = config or DemoConfig()
    show = config.progress
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    warmup_seconds = sum(warmup(DEMO_TARGETS, progress=show).values())

    # 1. Retrieval: index the standard library's docstrings.
    t0 = time.perf_counter()
    with phase("reading the standard library's docstrings", enabled=show):
        docs = stdlib_documents(max_documents=config.documents)
    pipeline = RetrievalPipeline(embedder=default_embedder())
    chunk = 250
    progress = bar("indexing", total=len(docs), unit="doc", enabled=show)
    for i in range(0, len(docs), chunk):
        pipeline.add([f"{title}: {text}" for title, text in docs[i:i + chunk]])
        progress.update(len(docs[i:i + chunk]))
    progress.close()
    index_seconds = time.perf_counter() - t0

    # 2. Questions about documented names, popular ones repeating (Zipf), and their prompts.
    names = [docs[int(i)][0] for i in rng.choice(len(docs), size=config.distinct_questions, replace=False)]
    questions = [QUESTION_FORMS[int(rng.integers(len(QUESTION_FORMS)))].format(n) for n in names]
    popularity = 1.0 / np.arange(1, len(questions) + 1)
    picks = rng.choice(len(questions), size=config.requests, p=popularity / popularity.sum())
    prompt_texts, retrieval_cache_hits = [], 0
    progress = bar("retrieving", total=config.requests, unit="query", enabled=show)
    for q in picks:
        text, hit = build_prompt(pipeline, questions[int(q)], config)
        prompt_texts.append(text)
        retrieval_cache_hits += hit
        progress.update(1)
    progress.close()
    prompts = [encode(t) for t in prompt_texts]

    # 3. A seeded decoder over bytes, the paged cache, the scheduler, on a simulated clock.
    device = torch.device(config.device)
    model_config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                               num_kv_heads=2, max_position=8192)
    model = LlamaModel(model_config, seed=config.seed, device=device)
    cache = PagedKVCache(KVCacheConfig(model_config.num_layers, model_config.num_kv_heads, model_config.head_dim,
                                       page_size=config.page_size, num_pages=config.num_pages, dtype=torch.float32,
                                       device=device))
    scheduler = Scheduler(cache, SchedulerConfig(policy=config.policy, max_batch_size=32, max_batch_tokens=2048,
                                                 max_wait=0.0, default_ttft_slo=config.ttft_slo,
                                                 default_tpot_slo=config.tpot_slo))
    gaps = rng.exponential(1.0 / config.arrival_rate, size=config.requests)
    arrivals = (np.cumsum(gaps) - gaps[0]).tolist()  # the first request at time 0
    requests = [Request(p, max_new_tokens=config.max_new_tokens) for p in prompts]
    token_bytes = cache.config.page_bytes // config.page_size  # KV bytes of one token, all layers
    clock = SimulatedClock(arrivals, scheduler.has_work)
    step_cost = StepCostModel()

    timeline: list[dict] = []
    defrag_reports = []
    finished_count = [0]
    progress = bar("generating", total=config.requests, unit="req", enabled=show)

    def on_step(info: StepInfo):
        stats = cache.stats()
        timeline.append(dict(time=info.time, paged_bytes=stats["pages_used"] * stats["page_bytes"],
                             dense_bytes=sum(info.active.values()) * token_bytes, batch_tokens=info.num_tokens))
        finished_count[0] += len(info.finished)
        progress.update(len(info.finished))
        if not defrag_reports and finished_count[0] >= config.requests // 2:
            defrag_reports.append(cache.defragment(order="sequence"))  # between steps, mid-run

    generation_started = time.perf_counter()
    served = ServingLoop(_CostedModel(model, clock, step_cost), scheduler, clock=clock).run(
        requests, arrivals, on_step=on_step)
    progress.close()
    generation_seconds = time.perf_counter() - generation_started

    # 4. Parallel sampling on the same cache: forks share the prompt's pages, writes copy on write.
    engine = GenerationEngine(model, cache, EngineConfig(max_batch_seqs=16))
    sample_params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.8, top_p=0.95,
                                   n=config.parallel_samples, seed=config.seed)
    with phase(f"parallel sampling ({config.parallel_samples} samples of 2 prompts)", enabled=show):
        engine.generate(prompts[:2], sample_params)

    # 5. The report, read off the components' own stats.
    cache_stats = cache.stats()
    sched_summary = scheduler.metrics.summary()
    retrieval_stats = pipeline.stats()
    peak_paged = max((t["paged_bytes"] for t in timeline), default=0)
    peak_dense = max((t["dense_bytes"] for t in timeline), default=0)
    output_tokens = sum(len(o) for o in served.outputs)
    defrag = defrag_reports[0] if defrag_reports else None
    report = {
        "config": asdict(config),
        "corpus": {"documents": len(docs)},
        "retrieval": {
            "queries": retrieval_stats["queries"],
            "hot_cache_hits": retrieval_stats["cache"]["hits"],
            "hot_cache_hit_rate": retrieval_stats["cache"]["hit_rate"],
        },
        "kv_cache": {
            "prefix_hit_rate": cache_stats["prefix_hit_rate"],
            "prefix_hit_tokens": cache_stats["prefix_hit_tokens"],
            "prefix_query_tokens": cache_stats["prefix_query_tokens"],
            "peak_paged_bytes": peak_paged,
            "peak_dense_bytes": peak_dense,
            "memory_saved": 1.0 - peak_paged / peak_dense if peak_dense else 0.0,
            "cow_copies": cache_stats["cow_copies"],
            "evictions": cache_stats["evictions"],
            "defrag_pages_moved": defrag.pages_moved if defrag else 0,
            "defrag_bytes_moved": defrag.bytes_moved if defrag else 0,
            "pool_bytes": cache_stats["pool_bytes"],
        },
        "generation": {
            "requests": config.requests,
            "finished": sched_summary["finished"],
            "refused": len(served.refused),
            "output_tokens": output_tokens,
            "steps": served.steps,
            "simulated_seconds": clock.now,
        },
        "parallel_sampling": {"prompts": 2, "n": config.parallel_samples,
                              "generated_tokens": engine.stats()["generated_tokens"]},
        "slo": {
            "policy": config.policy,
            "clock": "simulated",
            "attainment": sched_summary["slo_attainment"],
            "ttft_p50": sched_summary["ttft"]["p50"],
            "ttft_p99": sched_summary["ttft"]["p99"],
            "tpot_p50": sched_summary["tpot"]["p50"],
            "preemptions": sched_summary["preemptions"],
        },
        "device": str(device),
        "timings": {  # wall clock: the only entries that differ between runs of one seed
            "warmup_seconds": warmup_seconds,
            "index_seconds": index_seconds,
            "retrieval_stage_mean_ms": {k: v["mean_ms"] for k, v in retrieval_stats["stages"].items()},
            "generation_seconds": generation_seconds,
            "tokens_per_second": output_tokens / generation_seconds if generation_seconds else 0.0,
            "total_seconds": time.perf_counter() - started,
        },
    }
    parts = DemoParts(pipeline, cache, scheduler, model, engine, prompts, served.outputs, timeline)
    return report, parts


def format_report(report: dict) -> str:
    """The report as aligned lines for a terminal: a label column, then the figures."""
    r, kv, g, s, t = (report[k] for k in ("retrieval", "kv_cache", "generation", "slo", "timings"))
    mib = 1 / 2**20
    stages = ", ".join(f"{k} {v:.2f} ms" for k, v in t["retrieval_stage_mean_ms"].items() if v)
    rows = [
        ("corpus", f"{report['corpus']['documents']} stdlib docstrings indexed in {t['index_seconds']:.1f} s"),
        ("retrieval", f"{r['queries']} queries, hot-query cache hits {r['hot_cache_hits']} "
                      f"({r['hot_cache_hit_rate']:.0%}); mean per stage: {stages}"),
        ("prefix hit rate", f"{kv['prefix_hit_rate']:.1%} ({kv['prefix_hit_tokens']} of {kv['prefix_query_tokens']} "
                            f"prompt tokens reused)"),
        ("KV memory", f"peak {kv['peak_paged_bytes'] * mib:.1f} MiB paged vs {kv['peak_dense_bytes'] * mib:.1f} MiB "
                      f"dense (saved {kv['memory_saved']:.0%})"),
        ("copy-on-write", f"{kv['cow_copies']} page copies (parallel sampling through fork)"),
        ("compaction", f"{kv['defrag_pages_moved']} pages moved ({kv['defrag_bytes_moved'] * mib:.2f} MiB), "
                       f"{kv['evictions']} evictions"),
        ("generation", f"{g['finished']}/{g['requests']} requests, {g['output_tokens']} tokens in "
                       f"{t['generation_seconds']:.1f} s = {t['tokens_per_second']:.0f} tokens/s ({g['steps']} steps)"),
        (f"SLO ({s['policy']})", f"attainment {s['attainment']:.0%}, TTFT p50 {s['ttft_p50']:.2f} s / p99 "
                                 f"{s['ttft_p99']:.2f} s, TPOT p50 {s['tpot_p50'] * 1e3:.0f} ms, "
                                 f"{s['preemptions']} preemptions ({s['clock']} time)"),
        ("total", f"{t['total_seconds']:.1f} s on {report['device']} "
                  f"(kernels ready in {t['warmup_seconds']:.1f} s)"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{text}" for label, text in rows)


def plot_memory(timeline: list[dict], path: str) -> None:
    """A PNG of KV memory over time, paged against a dense per-request cache."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(f"--plot needs matplotlib: {install_hint('compare')}") from None
    t = [p["time"] for p in timeline]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [p["dense_bytes"] / 2**20 for p in timeline], label="dense (prompt + max_new per request)")
    ax.plot(t, [p["paged_bytes"] / 2**20 for p in timeline], label="paged (pages in use)")
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("KV memory (MiB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
