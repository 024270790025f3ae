"""Replay one request trace under each scheduling policy and print the latency percentiles side by side.

The trace is synthetic (bursty Gamma arrivals, long-tailed lengths, two SLO classes, an optional
shared system prompt) or read from an Azure LLM inference trace CSV (``--azure PATH``). Each
policy runs the real ``Scheduler`` on the real ``BlockManager``; time is simulated by the step-cost
model ``a + b * batched tokens + c * KV tokens read``, so the output is the same on every machine.

    python examples/serve_sim.py --requests 400 --rate 25
    python examples/serve_sim.py --azure AzureLLMInferenceTrace_conv.csv --limit 2000 --ttft-slo 1 --tpot-slo 0.2
"""

from __future__ import annotations

import argparse

from llmds_torch.sched import POLICIES, SchedulerConfig
from llmds_torch.sched.simulator import StepCostModel, simulate
from llmds_torch.sched.traces import read_azure_trace, synthetic_trace


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--azure", help="Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)")
    p.add_argument("--limit", type=int, default=None, help="read only this many Azure rows")
    p.add_argument("--ttft-slo", type=float, default=1.0, help="TTFT SLO (s) for Azure records")
    p.add_argument("--tpot-slo", type=float, default=0.2, help="TPOT SLO (s) for Azure records")
    p.add_argument("--requests", type=int, default=400, help="synthetic trace length")
    p.add_argument("--rate", type=float, default=25.0, help="synthetic mean arrivals per second")
    p.add_argument("--burstiness", type=float, default=4.0, help="squared CV of inter-arrival gaps")
    p.add_argument("--shared-prefix", type=int, default=128, help="system-prompt tokens shared by half the requests")
    p.add_argument("--pages", type=int, default=1024, help="KV pages in the block manager")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--max-batch-size", type=int, default=128)
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.azure:
        trace = read_azure_trace(args.azure, ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo, limit=args.limit)
        source = f"Azure trace {args.azure} ({len(trace)} requests)"
    else:
        trace = synthetic_trace(args.requests, rate=args.rate, burstiness=args.burstiness, seed=args.seed,
                                shared_prefix_len=args.shared_prefix, shared_prefix_fraction=0.5)
        source = f"synthetic trace: {len(trace)} requests, {args.rate}/s, burstiness {args.burstiness}"
    cost = StepCostModel()
    print(source)
    print(f"cache {args.pages} pages x {args.page_size} tokens; step cost {cost.base_seconds} + "
          f"{cost.seconds_per_batched_token} * tokens + {cost.seconds_per_kv_token_read} * KV tokens read (s)\n")
    summaries = {}
    for policy in args.policies:
        config = SchedulerConfig(policy=policy, max_batch_size=args.max_batch_size,
                                 max_batch_tokens=args.max_batch_tokens)
        summaries[policy] = simulate(trace, config=config, num_pages=args.pages, page_size=args.page_size,
                                     cost=cost, seed=args.seed).summary
    rows = [("SLO attainment", lambda s: f"{100 * s['slo_attainment']:.1f}%")]
    for metric, label in [("ttft", "TTFT"), ("tpot", "TPOT"), ("queueing_delay", "queue delay")]:
        for q in ("p50", "p90", "p99"):
            rows.append((f"{label} {q} (ms)", lambda s, m=metric, q=q: f"{1e3 * s[m][q]:.1f}"))
    rows += [("preemptions", lambda s: str(s["preemptions"])),
             ("wasted recompute tokens", lambda s: str(s["wasted_recompute_tokens"])),
             ("prefix hit rate", lambda s: f"{100 * s['prefix_hit_rate']:.1f}%"),
             ("finished / refused", lambda s: f"{s['finished']} / {s['refused_at_submit']}"),
             ("simulated seconds", lambda s: f"{s['sim_seconds']:.1f}")]
    width = max(len(name) for name, _ in rows)
    print(" " * width + "".join(f"{p:>12}" for p in args.policies))
    for name, fmt in rows:
        print(name.ljust(width) + "".join(f"{fmt(summaries[p]):>12}" for p in args.policies))
    return summaries


if __name__ == "__main__":
    main()
