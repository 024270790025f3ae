"""Scheduler benchmarks, side by side in one run.

1. IndexedHeap against heapq with lazy deletion (and a plain-Python indexed heap for context) on an
   update-heavy workload: push N live keys, U random priority updates, drain. Goal: >= 3x heapq.
2. ``Scheduler.get_batch`` latency with 1k waiting and 256 running (decoding) requests on the
   real BlockManager. Goal: < 1 ms.
3. The simulator on the trace suite (``llmds_torch.sched.traces.trace_suite``: light load, heavy
   load with one SLO class, mixed interactive / batch classes, long prompts with a shared prefix,
   overload in bursts): SLO attainment over every request, goodput and p99 TTFT of ``fcfs``,
   ``srpt`` and ``slo`` (and ``slo`` shedding late requests) on each. Goal: ``slo`` >= the better
   of ``fcfs`` and ``srpt`` on every trace.

Run: ``python -m benchmarks.sched`` (full sizes) or ``python -m benchmarks.sched --quick``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import time

from benchmarks._common import print_table, write_results
from llmds_torch.kv import BlockManager
from llmds_torch.sched import IndexedHeap, Request, Scheduler, SchedulerConfig, StepResult
from llmds_torch.sched.simulator import StepCostModel, simulate
from llmds_torch.sched.traces import trace_suite


# ---------------------------------------------------------------------------------- 1. heaps
class LazyHeapq:
    """The usual baseline: heapq entries (-priority, seq, key); an update pushes a new entry and
    the stale one is skipped when popped."""

    def __init__(self):
        self.heap, self.live, self.counter = [], {}, itertools.count()

    def push(self, key, priority):
        seq = next(self.counter)
        self.live[key] = seq
        heapq.heappush(self.heap, (-priority, seq, key))

    update = push

    def pop(self):
        while True:
            neg, seq, key = heapq.heappop(self.heap)
            if self.live.get(key) == seq:
                del self.live[key]
                return key, -neg

    def __len__(self):
        return len(self.live)


class PyIndexedHeap:
    """A textbook indexed binary heap in plain Python (positions in a dict), for context."""

    def __init__(self):
        self.heap, self.pos, self.counter = [], {}, itertools.count()

    def _before(self, a, b):
        return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])

    def _up(self, i):
        heap, pos, entry = self.heap, self.pos, self.heap[i]
        while i > 0:
            parent = (i - 1) >> 1
            if not self._before(entry, heap[parent]):
                break
            heap[i] = heap[parent]
            pos[heap[i][2]] = i
            i = parent
        heap[i] = entry
        pos[entry[2]] = i

    def _down(self, i):
        heap, pos, entry, n = self.heap, self.pos, self.heap[i], len(self.heap)
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and self._before(heap[child + 1], heap[child]):
                child += 1
            if not self._before(heap[child], entry):
                break
            heap[i] = heap[child]
            pos[heap[i][2]] = i
            i = child
        heap[i] = entry
        pos[entry[2]] = i

    def push(self, key, priority):
        self.heap.append((priority, next(self.counter), key))
        self._up(len(self.heap) - 1)

    def update(self, key, priority):
        i = self.pos[key]
        self.heap[i] = (priority, next(self.counter), key)
        self._up(i)
        self._down(self.pos[key])

    def pop(self):
        top, last = self.heap[0], self.heap.pop()
        del self.pos[top[2]]
        if self.heap:
            self.heap[0] = last
            self._down(0)
        return top[2], top[0]

    def __len__(self):
        return len(self.heap)


def heap_workload(factory, initial, updates):
    heap = factory()
    for key, priority in enumerate(initial):
        heap.push(key, priority)
    for key, priority in updates:
        heap.update(key, priority)
    return [heap.pop() for _ in range(len(heap))]


def bench_heaps(num_keys, num_updates, repeat):
    rng = random.Random(0)
    initial = [rng.random() for _ in range(num_keys)]
    updates = [(rng.randrange(num_keys), rng.random()) for _ in range(num_updates)]
    heap_workload(IndexedHeap, initial, updates[:100])  # compile / warm
    structures = [("heapq lazy deletion (baseline)", LazyHeapq), ("IndexedHeap (numba)", IndexedHeap),
                  ("indexed heap, plain Python", PyIndexedHeap)]
    drained, times = {}, {name: [] for name, _ in structures}
    for _ in range(repeat):  # interleaved, so that load from other processes hits all alike
        for name, factory in structures:
            t0 = time.perf_counter()
            drained[name] = heap_workload(factory, initial, updates)
            times[name].append(time.perf_counter() - t0)
    rows = [{"structure": name, "seconds": sorted(times[name])[repeat // 2]} for name, _ in structures]
    reference = drained["heapq lazy deletion (baseline)"]
    assert all(d == reference for d in drained.values()), "structures disagree on the drain order"
    base = rows[0]["seconds"]
    for row in rows:
        row["speedup_vs_heapq"] = base / row["seconds"]
    return rows


# ---------------------------------------------------------------------------------- 2. get_batch
def bench_get_batch(num_running, num_waiting, iterations):
    rng = random.Random(1)
    page_size = 16
    manager = BlockManager(num_pages=num_running * 32, page_size=page_size)  # no preemption
    config = SchedulerConfig(policy="slo", max_batch_size=num_running, max_batch_tokens=8192)
    scheduler = Scheduler(manager, config)
    for _ in range(num_running):
        scheduler.submit(Request([rng.randrange(1, 30000) for _ in range(rng.randrange(16, 96))], 4096), now=0.0)
    now = 0.0

    def step(timed):
        nonlocal now
        t0 = time.perf_counter()
        batch = scheduler.get_batch(now)
        elapsed = time.perf_counter() - t0
        for item in batch:
            manager.mark_written(item.seq_id, item.num_tokens)
        now += 0.01
        scheduler.complete_batch([StepResult(i.request_id, 5) for i in batch if i.samples], now)
        return elapsed, batch

    while any(not s.prefill_done for s in scheduler._running.values()) or scheduler.num_running < num_running:
        step(False)
    for _ in range(num_waiting):
        scheduler.submit(Request([rng.randrange(1, 30000) for _ in range(rng.randrange(16, 512))], 64), now=now)
    times = []
    for _ in range(iterations):
        elapsed, batch = step(True)
        assert len(batch) == num_running and not batch.prefills
        times.append(elapsed)
    assert scheduler.num_waiting == num_waiting
    times.sort()
    return {"running": num_running, "waiting": num_waiting, "median_ms": 1e3 * times[len(times) // 2],
            "p90_ms": 1e3 * times[int(0.9 * (len(times) - 1))], "iterations": iterations}


# ---------------------------------------------------------------------------------- 3. simulator
SIM_POLICIES = (("fcfs", "fcfs", False), ("srpt", "srpt", False), ("slo", "slo", False),
                ("slo + shed_late", "slo", True))


def bench_trace_suite(scale, num_pages=1024, page_size=16, max_batch_size=128, max_batch_tokens=2048):
    cost = StepCostModel()
    rows = []
    for regime, trace in trace_suite(scale, seed=0).items():
        by_policy = {}
        for label, policy, shed in SIM_POLICIES:
            config = SchedulerConfig(policy=policy, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                                     step_seconds=cost.base_seconds,
                                     service_seconds_per_token=cost.seconds_per_batched_token, shed_late=shed)
            t0 = time.perf_counter()
            s = simulate(trace, config=config, num_pages=num_pages, page_size=page_size, cost=cost).summary
            by_policy[label] = s
            rows.append({"trace": regime, "requests": len(trace), "policy": label,
                         "slo_attainment": s["slo_attainment"], "goodput_per_s": s["goodput"],
                         "ttft_p99_s": s["ttft"]["p99"], "tpot_p50_s": s["tpot"]["p50"], "shed": s["shed"],
                         "preemptions": s["preemptions"], "prefix_hit_rate": s["prefix_hit_rate"],
                         "sim_seconds": s["sim_seconds"], "wall_seconds": time.perf_counter() - t0})
        best_baseline = max(by_policy["fcfs"]["slo_attainment"], by_policy["srpt"]["slo_attainment"])
        for row in rows[-len(SIM_POLICIES):]:
            row["minus_best_baseline"] = row["slo_attainment"] - best_baseline
    setup = {"scale": scale, "num_pages": num_pages, "page_size": page_size, "max_batch_size": max_batch_size,
             "max_batch_tokens": max_batch_tokens,
             "cost_model": {"a": cost.base_seconds, "b": cost.seconds_per_batched_token,
                            "c": cost.seconds_per_kv_token_read},
             "regimes": trace_suite.__doc__}
    return rows, setup


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        heap_sizes, batch_sizes, sim_scale = (1000, 20_000, 3), (64, 200, 20), 0.1
    else:
        heap_sizes, batch_sizes, sim_scale = (10_000, 200_000, 5), (256, 1000, 200), 1.0

    print(f"\n1. heap: {heap_sizes[0]} live keys, {heap_sizes[1]} updates, drain (median of {heap_sizes[2]})")
    heap_rows = bench_heaps(*heap_sizes)
    print_table(heap_rows)

    print(f"\n2. get_batch with {batch_sizes[1]} waiting, {batch_sizes[0]} running (policy slo)")
    batch_row = bench_get_batch(*batch_sizes)
    print_table([batch_row])

    print(f"\n3. simulator: trace suite at scale {sim_scale} (attainment over every request; goodput = met per s)")
    sim_rows, sim_setup = bench_trace_suite(sim_scale)
    print_table(sim_rows, ["trace", "requests", "policy", "slo_attainment", "minus_best_baseline", "goodput_per_s",
                           "ttft_p99_s", "tpot_p50_s", "shed", "preemptions", "wall_seconds"])
    slo_rows = [r for r in sim_rows if r["policy"] == "slo"]

    payload = {
        "quick": args.quick,
        "heap": {"num_keys": heap_sizes[0], "num_updates": heap_sizes[1], "rows": heap_rows,
                 "goal": "IndexedHeap >= 3x faster than heapq lazy deletion",
                 "goal_met": heap_rows[1]["speedup_vs_heapq"] >= 3.0},
        "get_batch": {**batch_row, "goal": "< 1 ms", "goal_met": batch_row["median_ms"] < 1.0},
        "simulator": {"setup": sim_setup, "rows": sim_rows,
                      "goal": "slo attainment >= max(fcfs, srpt) on every trace",
                      "goal_met": all(r["minus_best_baseline"] >= 0 for r in slo_rows)},
    }
    write_results("sched_quick" if args.quick else "sched", payload)
    return payload


if __name__ == "__main__":
    main()
