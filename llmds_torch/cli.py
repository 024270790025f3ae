"""The ``llmds`` command: ``demo``, ``bench <name>``, ``simulate <trace.csv>``.

Bad input (an unknown device, a missing trace file, a malformed CSV) prints one line and exits 2.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from llmds_torch.errors import LLMDSError

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _demo(args) -> int:
    from llmds_torch.demo import DemoConfig, format_report, plot_memory, run_demo

    config = DemoConfig(requests=args.requests, seed=args.seed, device=args.device, documents=args.documents,
                        max_new_tokens=args.max_new_tokens, progress=not args.json)
    report, parts = run_demo(config)
    if args.plot:
        plot_memory(parts.timeline, args.plot)
        report["plot"] = args.plot
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _bench(args) -> int:
    names = sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if not p.stem.startswith("_"))
    if not names:
        raise LLMDSError("benchmarks/ is not here: `llmds bench` runs from a source checkout")
    if args.name not in names:
        raise LLMDSError(f"unknown benchmark {args.name!r}; available: {', '.join(names)}")
    cmd = [sys.executable, "-m", f"benchmarks.{args.name}", *args.extra]
    return subprocess.call(cmd, cwd=BENCHMARKS_DIR.parent)


def _simulate(args) -> int:
    from llmds_torch.sched import SchedulerConfig
    from llmds_torch.sched.simulator import simulate
    from llmds_torch.sched.traces import read_azure_trace

    trace = read_azure_trace(args.trace, limit=args.limit, ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo)
    rows = {}
    for policy in args.policy:
        result = simulate(trace, config=SchedulerConfig(policy=policy), num_pages=args.pages, page_size=args.page_size)
        rows[policy] = result.summary
    if args.json:
        print(json.dumps(rows, indent=2, default=float))
        return 0
    print(f"{len(trace)} requests from {args.trace}, {args.pages} pages x {args.page_size} tokens")
    print(f"{'policy':>8} {'SLO met':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'preempt':>8}")
    for policy, s in rows.items():
        print(f"{policy:>8} {s['slo_attainment']:>8.1%} {s['ttft']['p50']:>8.2f}s {s['ttft']['p99']:>8.2f}s "
              f"{s['tpot']['p50'] * 1e3:>7.1f}ms {s['preemptions']:>8}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmds", description="llmds_torch: paged KV cache, scheduler, retrieval")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="end-to-end RAG + scheduling + paged generation on an embedded corpus")
    demo.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    demo.add_argument("--requests", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--documents", type=int, default=1500, help="stdlib docstrings to index")
    demo.add_argument("--max-new-tokens", type=int, default=16)
    demo.add_argument("--json", action="store_true", help="print the report as one JSON object")
    demo.add_argument("--plot", metavar="PNG", help="write KV memory over time (paged vs dense) to this file")
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="run a benchmark from benchmarks/ (source checkout)")
    bench.add_argument("name")
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    bench.set_defaults(run=_bench)
    sim = sub.add_parser("simulate", help="replay an Azure LLM inference trace CSV through the scheduler")
    sim.add_argument("trace")
    sim.add_argument("--policy", nargs="+", default=["fcfs", "srpt", "slo"], choices=["fcfs", "srpt", "slo"])
    sim.add_argument("--pages", type=int, default=4096)
    sim.add_argument("--page-size", type=int, default=16)
    sim.add_argument("--limit", type=int, default=None, help="read only the first N rows")
    sim.add_argument("--ttft-slo", type=float, default=None)
    sim.add_argument("--tpot-slo", type=float, default=None)
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(run=_simulate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (LLMDSError, ValueError, OSError) as exc:
        print(f"llmds {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
