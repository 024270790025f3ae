"""The end-to-end demo behind ``llmds demo``: retrieval-augmented prompts that share a system prompt,
scheduled in batches and generated on the paged KV cache, with a report that makes the savings
visible. Needs no download: the corpus is the Python standard library's own docstrings, the
embedder a deterministic feature hasher (a locally installed sentence-embedding model is used when
one is importable), the decoder a seeded random Llama-style model over UTF-8 bytes.
"""

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from llmds_torch.errors import ConfigError
from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.engine import EngineConfig, GenerationEngine
from llmds_torch.models.llama import LlamaModel
from llmds_torch.models.sampling import SamplingParams
from llmds_torch.models.serving import ServingLoop, StepInfo
from llmds_torch.retrieval import RetrievalPipeline, default_embedder, stdlib_documents
from llmds_torch.sched import Request, Scheduler, SchedulerConfig

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
    """Sizes of the demo; the defaults finish in well under a minute on a 2-core CPU."""

    requests: int = 32
    seed: int = 0
    device: str = "cpu"
    documents: int = 1500
    distinct_questions: int = 12
    top_k: int = 3
    passage_chars: int = 200
    max_new_tokens: int = 16
    arrival_rate: float = 40.0  # requests per second (Poisson)
    page_size: int = 16
    num_pages: int = 640
    policy: str = "slo"
    ttft_slo: float = 10.0
    tpot_slo: float = 1.0
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


def encode(text: str) -> list[int]:
    """The demo's tokenizer: UTF-8 bytes (vocabulary of 256)."""
    return list(text.encode("utf-8"))


def decode(tokens: list[int]) -> str:
    return bytes(tokens).decode("utf-8", errors="replace")


def _progress(iterable=None, **kw):
    from tqdm import tqdm
    return tqdm(iterable, **kw)


def build_prompt(pipeline: RetrievalPipeline, question: str, config: DemoConfig) -> tuple[str, bool]:
    """System prompt, the top-k retrieved passages, the question. Returns (prompt, cache hit)."""
    result = pipeline.query(question, k=config.top_k)
    passages = [pipeline.text(int(i))[:config.passage_chars] for i in result.ids]
    context = "".join(f"[{n + 1}] {p}\n" for n, p in enumerate(passages))
    return f"{SYSTEM_PROMPT}Context:\n{context}\nQuestion: {question}\nAnswer:", result.from_cache


def run_demo(config: DemoConfig | None = None) -> tuple[dict, DemoParts]:
    """Run the demo; return the report (a JSON-ready dict) and the objects it used."""
    config = config or DemoConfig()
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()

    # 1. Retrieval: index the standard library's docstrings.
    t0 = time.perf_counter()
    docs = stdlib_documents(max_documents=config.documents)
    pipeline = RetrievalPipeline(embedder=default_embedder())
    chunk = 250
    bar = _progress(total=len(docs), desc="indexing", unit="doc", disable=not config.progress)
    for i in range(0, len(docs), chunk):
        pipeline.add([f"{title}: {text}" for title, text in docs[i:i + chunk]])
        bar.update(len(docs[i:i + chunk]))
    bar.close()
    index_seconds = time.perf_counter() - t0

    pipeline.query("warm-up: compile the search loops", k=config.top_k)  # compilation stays out of the timings
    pipeline.reset_timings()

    # 2. Questions about documented names, popular ones repeating (Zipf), and their prompts.
    names = [docs[int(i)][0] for i in rng.choice(len(docs), size=config.distinct_questions, replace=False)]
    questions = [QUESTION_FORMS[int(rng.integers(len(QUESTION_FORMS)))].format(n) for n in names]
    popularity = 1.0 / np.arange(1, len(questions) + 1)
    picks = rng.choice(len(questions), size=config.requests, p=popularity / popularity.sum())
    prompt_texts, retrieval_cache_hits = [], 0
    for q in picks:
        text, hit = build_prompt(pipeline, questions[int(q)], config)
        prompt_texts.append(text)
        retrieval_cache_hits += hit
    prompts = [encode(t) for t in prompt_texts]

    # 3. A seeded decoder over bytes, the paged cache, the scheduler.
    device = torch.device(config.device)
    model_config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                               num_kv_heads=2, max_position=8192)
    model = LlamaModel(model_config, seed=config.seed, device=device)
    cache = PagedKVCache(KVCacheConfig(model_config.num_layers, model_config.num_kv_heads, model_config.head_dim,
                                       page_size=config.page_size, num_pages=config.num_pages, dtype=torch.float32,
                                       device=device))
    scheduler = Scheduler(cache, SchedulerConfig(policy=config.policy, max_batch_size=32, max_batch_tokens=2048,
                                                 default_ttft_slo=config.ttft_slo, default_tpot_slo=config.tpot_slo))
    arrivals = np.cumsum(rng.exponential(1.0 / config.arrival_rate, size=config.requests)).tolist()
    requests = [Request(p, max_new_tokens=config.max_new_tokens) for p in prompts]
    token_bytes = cache.config.page_bytes // config.page_size  # KV bytes of one token, all layers

    timeline: list[dict] = []
    defrag_reports = []
    finished_count = [0]
    bar = _progress(total=config.requests, desc="generating", unit="req", disable=not config.progress)

    def on_step(info: StepInfo):
        stats = cache.stats()
        timeline.append(dict(time=info.time, paged_bytes=stats["pages_used"] * stats["page_bytes"],
                             dense_bytes=sum(info.active.values()) * token_bytes, batch_tokens=info.num_tokens))
        finished_count[0] += len(info.finished)
        bar.update(len(info.finished))
        if not defrag_reports and finished_count[0] >= config.requests // 2:
            defrag_reports.append(cache.defragment(order="sequence"))  # between steps, mid-run

    generation_started = time.perf_counter()
    served = ServingLoop(model, scheduler).run(requests, arrivals, on_step=on_step)
    bar.close()
    generation_seconds = time.perf_counter() - generation_started

    # 4. Parallel sampling on the same cache: forks share the prompt's pages, writes copy on write.
    engine = GenerationEngine(model, cache, EngineConfig(max_batch_seqs=16))
    sample_params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.8, top_p=0.95,
                                   n=config.parallel_samples, seed=config.seed)
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
        "corpus": {"documents": len(docs), "index_seconds": index_seconds},
        "retrieval": {
            "queries": retrieval_stats["queries"],  # the warm-up query included
            "timed_queries": config.requests,
            "hot_cache_hits": retrieval_stats["cache"]["hits"],
            "hot_cache_hit_rate": retrieval_stats["cache"]["hit_rate"],
            "stage_mean_ms": {k: v["mean_ms"] for k, v in retrieval_stats["stages"].items()},
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
            "seconds": generation_seconds,
            "tokens_per_second": output_tokens / generation_seconds if generation_seconds else 0.0,
        },
        "parallel_sampling": {"prompts": 2, "n": config.parallel_samples,
                              "generated_tokens": engine.stats()["generated_tokens"]},
        "slo": {
            "policy": config.policy,
            "attainment": sched_summary["slo_attainment"],
            "ttft_p50": sched_summary["ttft"]["p50"],
            "ttft_p99": sched_summary["ttft"]["p99"],
            "tpot_p50": sched_summary["tpot"]["p50"],
            "preemptions": sched_summary["preemptions"],
        },
        "total_seconds": time.perf_counter() - started,
        "device": str(device),
    }
    parts = DemoParts(pipeline, cache, scheduler, model, engine, prompts, served.outputs, timeline)
    return report, parts


def format_report(report: dict) -> str:
    """The report as a few aligned lines for a terminal."""
    r, kv, g, s = report["retrieval"], report["kv_cache"], report["generation"], report["slo"]
    mib = 1 / 2**20
    stages = ", ".join(f"{k} {v:.2f} ms" for k, v in r["stage_mean_ms"].items() if v)
    lines = [
        f"corpus           {report['corpus']['documents']} stdlib docstrings indexed in {report['corpus']['index_seconds']:.1f} s",
        f"retrieval        {r['timed_queries']} queries, hot-query cache hits {r['hot_cache_hits']} ({r['hot_cache_hit_rate']:.0%}); mean per stage: {stages}",
        f"prefix hit rate  {kv['prefix_hit_rate']:.1%} ({kv['prefix_hit_tokens']} of {kv['prefix_query_tokens']} prompt tokens reused)",
        f"KV memory        peak {kv['peak_paged_bytes'] * mib:.1f} MiB paged vs {kv['peak_dense_bytes'] * mib:.1f} MiB dense "
        f"(saved {kv['memory_saved']:.0%})",
        f"copy-on-write    {kv['cow_copies']} page copies (parallel sampling through fork)",
        f"compaction       {kv['defrag_pages_moved']} pages moved ({kv['defrag_bytes_moved'] * mib:.2f} MiB), "
        f"{kv['evictions']} evictions",
        f"generation       {g['finished']}/{g['requests']} requests, {g['output_tokens']} tokens in {g['seconds']:.1f} s "
        f"= {g['tokens_per_second']:.0f} tokens/s ({g['steps']} steps)",
        f"SLO ({s['policy']})       attainment {s['attainment']:.0%}, TTFT p50 {s['ttft_p50']:.2f} s / p99 "
        f"{s['ttft_p99']:.2f} s, TPOT p50 {s['tpot_p50'] * 1e3:.0f} ms, {s['preemptions']} preemptions",
        f"total            {report['total_seconds']:.1f} s on {report['device']}",
    ]
    return "\n".join(lines)


def plot_memory(timeline: list[dict], path: str) -> None:
    """A PNG of KV memory over time, paged against a dense per-request cache."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'llmds-torch[compare]'") from None
    t = [p["time"] for p in timeline]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [p["dense_bytes"] / 2**20 for p in timeline], label="dense (prompt + max_new per request)")
    ax.plot(t, [p["paged_bytes"] / 2**20 for p in timeline], label="paged (pages in use)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("KV memory (MiB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
