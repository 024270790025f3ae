"""The serving stack side by side with a baseline checkout in one run.

1. Within-step prefix sharing: the simulator on a trace where every request starts with the same
   system prompt and arrivals come in dense bursts (40 requests/s on average) (so prompts sharing it are admitted together):
   prefix hit rate and prefill tokens computed, this tree against ``--baseline``.
2. ``Scheduler.get_batch`` latency (1k waiting, 256 decoding; the cache transaction included)
   and simulator wall time, this tree against ``--baseline``.

Run: ``python -m benchmarks.serving --baseline DIR`` where DIR holds an older checkout of the
package (e.g. ``git archive <commit> | tar -x -C DIR``). Each side runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from benchmarks.sched import bench_get_batch
from llmds_torch.sched import SchedulerConfig
from llmds_torch.sched.simulator import StepCostModel, simulate
quick = sys.argv[2] == "1"
out = {}
from llmds_torch.sched.traces import TraceRecord
burst = 16 if quick else 64
trace = [TraceRecord(arrival_time=0.0, prompt_len=1024 + 16 + i % 48, output_len=32, shared_prefix_len=1024)
         for i in range(burst)]
config = SchedulerConfig(policy="fcfs", max_batch_size=128, max_batch_tokens=8192)
t0 = time.perf_counter()
res = simulate(trace, config=config, num_pages=4096, page_size=16, cost=StepCostModel(), keep_batches=True)
out["sim_wall_seconds"] = time.perf_counter() - t0
out["prefix_hit_rate"] = res.summary["prefix_hit_rate"]
out["ttft_p50_s"] = res.summary["ttft"]["p50"]
out["ttft_p99_s"] = res.summary["ttft"]["p99"]
out["batched_tokens"] = sum(tokens for _, tokens in res.batches)
gb = bench_get_batch(256, 1000, 10 if quick else 40)
out["get_batch_median_ms"] = gb["median_ms"]
print(json.dumps(out))
"""


def measure(tree: Path, quick: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tree), "1" if quick else "0"], cwd=tree, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="folder with an older checkout")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    new, old = measure(ROOT, args.quick), measure(args.baseline.resolve(), args.quick)
    rows = []
    for key in new:
        rows.append({"metric": key, "this_tree": new[key], "baseline": old[key],
                     "ratio": new[key] / old[key] if old[key] else float("nan")})
    for row in rows:
        print(f"{row['metric']:24s} {row['this_tree']:12.4f} {row['baseline']:12.4f}  x{row['ratio']:.2f}")
    result = {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "rows": rows}
    out = ROOT / "benchmarks" / "results" / ("serving_quick.json" if args.quick else "serving.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
