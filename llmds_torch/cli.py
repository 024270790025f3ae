"""The ``llmds`` command: ``demo``, ``warmup``, ``bench [name]``, ``simulate <trace.csv>``.

Bad input (an unknown device, a missing trace file, a malformed CSV, a missing optional package)
prints one line and exits 2, before any work starts where it can be checked up front.
"""

import argparse
import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from llmds_torch.errors import ConfigError, LLMDSError
from llmds_torch.install_hint import install_hint

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _check_plot_path(path: str) -> None:
    """Refuse ``--plot`` before the demo runs: matplotlib missing or a folder that is not there."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(f"--plot needs matplotlib: {install_hint('compare')}")
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise ConfigError(f"--plot {path}: folder {folder} does not exist")


def _demo(args) -> int:
    from llmds_torch.progress import phase

    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):  # the rest is checked once torch is loaded
        raise ConfigError(f"unknown device {args.device!r}; use 'cpu' or 'cuda'")
    if args.plot:
        _check_plot_path(args.plot)
    with phase("loading torch and llmds_torch", enabled=not args.quiet):
        from llmds_torch.demo import DemoConfig, format_report, plot_memory, run_demo

    config = DemoConfig(requests=args.requests, seed=args.seed, device=args.device, documents=args.documents,
                        max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    report, parts = run_demo(config)
    if args.plot:
        plot_memory(parts.timeline, args.plot)
        report["plot"] = args.plot
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _warmup(args) -> int:
    from llmds_torch.jit_cache import numba_cache_dir
    from llmds_torch.warmup import warmup

    seconds = warmup(progress=not args.quiet)
    for name, s in seconds.items():
        print(f"{name:<20} {s:6.2f} s")
    print(f"{'total':<20} {sum(seconds.values()):6.2f} s; compiled code cached in {numba_cache_dir()}")
    return 0


def benchmark_summaries() -> dict[str, str]:
    """Each benchmark in ``benchmarks/`` with the first line of its docstring (read, not imported)."""
    summaries = {}
    for path in sorted(BENCHMARKS_DIR.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        summaries[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return summaries


def _benchmark_listing() -> str:
    summaries = benchmark_summaries()
    if not summaries:
        return "benchmarks ship with the source checkout (its benchmarks/ folder); none are installed here"
    width = max(len(name) for name in summaries)
    return "\n".join(f"  {name:<{width}}  {line}" for name, line in summaries.items())


def _bench(args) -> int:
    summaries = benchmark_summaries()
    if args.name is None:
        print("benchmarks (llmds bench NAME [ARGS...]; NAME --help for its options):")
        print(_benchmark_listing())
        return 0
    if not summaries:
        raise LLMDSError("benchmarks/ is not here: `llmds bench` runs from a source checkout")
    if args.name not in summaries:
        raise LLMDSError(f"unknown benchmark {args.name!r}; available: {', '.join(summaries)}")
    cmd = [sys.executable, "-m", f"benchmarks.{args.name}", *args.extra]
    return subprocess.call(cmd, cwd=BENCHMARKS_DIR.parent)


def _simulate(args) -> int:
    from tqdm import tqdm

    from llmds_torch.sched import SchedulerConfig
    from llmds_torch.sched.simulator import StepCostModel, simulate
    from llmds_torch.sched.traces import read_azure_trace

    trace = read_azure_trace(args.trace, limit=args.limit, time_scale=args.time_scale)
    cost = StepCostModel(args.step_base, args.step_per_token, args.step_per_kv_token)
    rows = {}
    for policy in args.policy:
        config = SchedulerConfig(policy=policy, max_batch_size=args.max_batch_size,
                                 max_batch_tokens=args.max_batch_tokens, default_ttft_slo=args.ttft_slo,
                                 default_tpot_slo=args.tpot_slo, step_seconds=cost.base_seconds,
                                 service_seconds_per_token=cost.seconds_per_batched_token,
                                 shed_late=args.shed_late and policy == "slo")
        show = not args.no_progress and len(trace) >= 500
        with tqdm(total=len(trace), desc=policy, unit="req", file=sys.stderr, disable=not show, leave=False) as bar:
            result = simulate(trace, config=config, num_pages=args.pages, page_size=args.page_size, cost=cost,
                              progress=lambda done: bar.update(done - bar.n))
        rows[policy] = result.summary
    setup = {"trace": args.trace, "requests": len(trace), "time_scale": args.time_scale,
             "pages": args.pages, "page_size": args.page_size, "max_batch_size": args.max_batch_size,
             "max_batch_tokens": args.max_batch_tokens, "ttft_slo": args.ttft_slo, "tpot_slo": args.tpot_slo,
             "step_cost": {"base_seconds": cost.base_seconds,
                           "seconds_per_batched_token": cost.seconds_per_batched_token,
                           "seconds_per_kv_token_read": cost.seconds_per_kv_token_read},
             "shed_late": args.shed_late}
    if args.json:
        print(json.dumps({policy: {**summary, "setup": setup} for policy, summary in rows.items()},
                         indent=2, default=float))
        return 0
    print(f"{len(trace)} requests from {args.trace} (time scale {args.time_scale:g}), "
          f"{args.pages} pages x {args.page_size} tokens, batches <= {args.max_batch_size} seqs / "
          f"{args.max_batch_tokens} tokens")
    print(f"step cost: {cost.base_seconds:g} s + {cost.seconds_per_batched_token:g} s x tokens computed + "
          f"{cost.seconds_per_kv_token_read:g} s x KV tokens read")
    print(f"SLOs: TTFT <= {args.ttft_slo:g} s, TPOT <= {args.tpot_slo:g} s; "
          "attainment counts every request (refused or shed = missed)")
    print(f"{'policy':>8} {'SLO met':>8} {'goodput':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} "
          f"{'preempt':>8} {'shed':>6}  refused")
    for policy, s in rows.items():
        refused = ", ".join(f"{reason} {n}" for reason, n in sorted(s["refused_by_reason"].items())) or "0"
        print(f"{policy:>8} {s['slo_attainment']:>8.1%} {s['goodput']:>7.2f}/s {s['ttft']['p50']:>8.2f}s "
              f"{s['ttft']['p99']:>8.2f}s {s['tpot']['p50'] * 1e3:>7.1f}ms {s['preemptions']:>8} {s['shed']:>6}  "
              f"{refused}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from llmds_torch.sched.simulator import StepCostModel

    cost = StepCostModel()
    parser = argparse.ArgumentParser(prog="llmds", description="llmds_torch: paged KV cache, scheduler, retrieval")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="end-to-end RAG + scheduling + paged generation on an embedded corpus",
                          description="Index the standard library's docstrings, build retrieval-augmented prompts "
                                      "that share a system prompt, schedule and generate them on the paged KV cache, "
                                      "and report prefix hits, memory, copies, compaction and SLOs. The same seed "
                                      "gives the same report on every run, except the wall-clock timings. Progress "
                                      "goes to stderr.")
    demo.add_argument("--device", default="cpu", help="where the model and the KV cache live: cpu (default) or cuda")
    demo.add_argument("--requests", type=int, default=32, help="requests to generate (default 32)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of questions, arrivals, model weights and sampling (default 0)")
    demo.add_argument("--documents", type=int, default=1500, help="stdlib docstrings to index (default 1500)")
    demo.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per request (default 16)")
    demo.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    demo.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    demo.add_argument("--plot", metavar="PNG",
                      help=f"write KV memory over time (paged vs dense) to this file; needs matplotlib: "
                           f"{install_hint('compare')}")
    demo.set_defaults(run=_demo)
    warm = sub.add_parser("warmup", help="compile the numba search kernels ahead of the first real call",
                          description="Compile (or load from the on-disk cache) every numba loop of the library, so "
                                      "that the first index build or search runs at full speed. Needed once per "
                                      "install; `llmds demo` does it by itself.")
    warm.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    warm.set_defaults(run=_warmup)
    bench = sub.add_parser("bench", help="run a benchmark from benchmarks/ (source checkout); no name lists them",
                           description="Run one benchmark from the checkout's benchmarks/ folder; each prints a "
                                       "table and writes JSON to benchmarks/results/.",
                           epilog="available benchmarks:\n" + _benchmark_listing(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("name", nargs="?", help="the benchmark to run; omit it to list them")
    bench.add_argument("extra", nargs=argparse.REMAINDER,
                       help="arguments passed to the benchmark (see llmds bench NAME --help)")
    bench.set_defaults(run=_bench)
    sim = sub.add_parser("simulate", help="replay an Azure LLM inference trace CSV through the scheduler",
                         description="Replay an Azure LLM inference trace (CSV with TIMESTAMP, ContextTokens, "
                                     "GeneratedTokens) through the real scheduler and block manager, with a "
                                     "step-cost model for time. Deterministic.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sim.add_argument("trace", help="the trace CSV (UTF-8)")
    sim.add_argument("--policy", nargs="+", default=["fcfs", "srpt", "slo"], choices=["fcfs", "srpt", "slo"],
                     help="scheduling policies to compare")
    sim.add_argument("--pages", type=int, default=4096, help="KV pages in the block manager")
    sim.add_argument("--page-size", type=int, default=16, help="tokens per KV page")
    sim.add_argument("--max-batch-size", type=int, default=256, help="most sequences per step")
    sim.add_argument("--max-batch-tokens", type=int, default=2048, help="most tokens computed per step")
    sim.add_argument("--limit", type=int, default=None, help="read only the first N rows")
    sim.add_argument("--time-scale", type=float, default=1.0,
                     help="divide arrival times by this (2 replays the trace twice as fast)")
    sim.add_argument("--ttft-slo", type=float, default=2.0, help="time-to-first-token SLO (s) of every request")
    sim.add_argument("--tpot-slo", type=float, default=0.2, help="time-per-output-token SLO (s) of every request")
    sim.add_argument("--step-base", type=float, default=cost.base_seconds,
                     help="step-cost model: fixed seconds per step")
    sim.add_argument("--step-per-token", type=float, default=cost.seconds_per_batched_token,
                     help="step-cost model: seconds per token computed")
    sim.add_argument("--step-per-kv-token", type=float, default=cost.seconds_per_kv_token_read,
                     help="step-cost model: seconds per KV token attention reads")
    sim.add_argument("--shed-late", action="store_true",
                     help="slo: drop requests that can no longer meet their SLOs (counted as missed)")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sim.add_argument("--json", action="store_true", help="print setup and summaries as one JSON object")
    sim.set_defaults(run=_simulate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (LLMDSError, ValueError, OSError, ImportError) as exc:
        print(f"llmds {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
