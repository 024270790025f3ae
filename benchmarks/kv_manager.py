"""CPU cost of the block manager on a chat workload, beside nano-vllm's block manager in the same run.

N requests (256 and 1,024) share a 1,024-token system prompt and add 256 tokens of their own; page
size 16. Phases, per request or per step:

- attach + prefill + publish: ``can_attach``, ``attach`` (prefix hit on the system prompt), the
  prompt's ``slot_mapping`` and one ``record_write`` per layer (32), which publishes its pages.
  nano-vllm: ``can_allocate``, ``allocate``, ``hash_blocks``.
- one decode step for all N: ``can_append``, ``append_batch`` (one token each, in every input form:
  ints, one-element lists, a numpy array, a torch tensor, a 2-D numpy array), ``slot_mapping``,
  ``block_table``, ``seq_lens``, one ``record_write`` per layer (32), publishing filled pages.
  nano-vllm: ``hash_blocks`` + ``append_token`` (its postprocess), ``can_append`` + ``may_append``
  (its schedule), ``prepare_decode`` on the host (slot mapping, context lengths, padded block table).
- detach, per request. nano-vllm: ``deallocate``.

Per request and per step the median counts (the mean is kept too: on a shared machine it carries
other jobs' preemptions); each manager runs ``--repeat`` times and the best of each figure counts.

Also prefix hashing throughput in tokens/s beside raw ``hashlib.sha256`` over the same bytes.

    python -m benchmarks.kv_manager [--quick] [--profile] [--repeat N]
"""

import argparse
import cProfile
import gc
import hashlib
import io
import pstats
import time

import numpy as np
import torch

from benchmarks import nanovllm_baseline as nano
from benchmarks._common import print_table, write_results
from llmds_torch.kv import BlockManager
from llmds_torch.kv.prefix_index import chain_prefix, page_keys

SYSTEM_LEN, USER_LEN, PAGE, LAYERS = 1024, 256, 16, 32
FORMS = {
    "ints": lambda t: t.tolist(),
    "lists": lambda t: [[x] for x in t.tolist()],
    "numpy": lambda t: t,
    "tensor": lambda t: torch.from_numpy(t),
    "numpy_2d": lambda t: t[:, None],
}


def workload(batch: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    system = rng.integers(0, 32000, SYSTEM_LEN).tolist()
    prompts = [system + rng.integers(0, 32000, USER_LEN).tolist() for _ in range(batch)]
    tokens = rng.integers(0, 32000, (steps, batch))
    warm = system + [1]
    return warm, prompts, tokens


def hashing(page_size: int, num_tokens: int, repeat: int) -> dict:
    """Our chained page keys against raw hashlib over exactly the same bytes, one digest per page."""
    rng = np.random.default_rng(0)
    token_bytes = rng.integers(0, 32000, num_tokens, dtype=np.int32).astype("<i4").tobytes()
    salt_block = chain_prefix(b"s" * 16, b"", b"")
    num_pages = num_tokens // page_size
    step = 4 * page_size
    chunks = [b"\x00" * 32 + salt_block + token_bytes[i * step:(i + 1) * step] for i in range(num_pages)]

    def ours():
        page_keys(token_bytes, page_size, num_pages, salt_block)

    def raw():
        for c in chunks:  # the same bytes per page, pre-assembled: the floor of any chained scheme
            hashlib.sha256(c).digest()

    best = {}
    for name, fn in (("ours", ours), ("raw_hashlib", raw)):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = num_tokens / float(np.median(times))
    return dict(page_size=page_size, tokens=num_tokens, ours_tokens_per_s=best["ours"],
                raw_tokens_per_s=best["raw_hashlib"], ratio=best["ours"] / best["raw_hashlib"])


def per_request(attach_times: list, step_times: list, detach_times: list) -> dict:
    """Median per request and per step (what a request typically costs; on a shared machine the
    mean also carries other jobs' preemptions), plus the means of attach and detach, in µs."""
    return dict(attach_prefill_publish_us=float(np.median(attach_times)) * 1e6,
                decode_step_us=float(np.median(step_times)) * 1e6, detach_us=float(np.median(detach_times)) * 1e6,
                attach_mean_us=float(np.mean(attach_times)) * 1e6, detach_mean_us=float(np.mean(detach_times)) * 1e6)


def run_ours(batch: int, steps: int, form: str, profile: bool = False) -> dict:
    warm, prompts, tokens = workload(batch, steps)
    num_pages = batch * ((SYSTEM_LEN + USER_LEN + steps) // PAGE + 2)
    manager = BlockManager(num_pages, PAGE, num_layers=LAYERS)
    w = manager.attach(warm)
    manager.mark_written(w)
    manager.detach(manager.attach([0]))  # loads the compiled release loop (numba) before timing
    seqs = []
    gc.collect()  # each timed phase starts from a collected heap, ours and nano-vllm's alike
    attach_times = []
    for prompt in prompts:
        t0 = time.perf_counter()
        assert manager.can_attach(prompt)
        s = manager.attach(prompt)
        slots = manager.slot_mapping([s])
        for layer in range(LAYERS):
            manager.record_write(layer, slots)
        attach_times.append(time.perf_counter() - t0)
        seqs.append(s)
    inputs = [FORMS[form](tokens[i]) for i in range(steps)]
    profiler = cProfile.Profile() if profile else None
    parts = {"append": [], "slots": [], "tables": [], "writes": []}
    step_times = []
    for i in range(steps):
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        assert manager.can_append(seqs, 1)
        manager.append_batch(seqs, inputs[i])
        t1 = time.perf_counter()
        slots = manager.slot_mapping(seqs)
        t2 = time.perf_counter()
        manager.block_table(seqs)
        manager.seq_lens(seqs)
        t3 = time.perf_counter()
        for layer in range(LAYERS):
            manager.record_write(layer, slots)
        t4 = time.perf_counter()
        if profiler:
            profiler.disable()
        step_times.append(t4 - t0)
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(dt)
    assert all(manager.num_written(s) == manager.num_tokens(s) for s in seqs[:4])
    assert manager.stats()["prefix_hit_tokens"] == batch * SYSTEM_LEN
    manager.check_invariants()
    gc.collect()
    detach_times = []
    for s in seqs:
        t0 = time.perf_counter()
        manager.detach(s)
        detach_times.append(time.perf_counter() - t0)
    row = dict(impl="llmds_torch", batch=batch, form=form, **per_request(attach_times, step_times, detach_times),
               **{f"step_{k}_us": float(np.median(v)) * 1e6 for k, v in parts.items()})
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        row["profile"] = out.getvalue()
    return row


def run_nano(batch: int, steps: int) -> dict:
    warm, prompts, tokens = workload(batch, steps)
    num_pages = batch * ((SYSTEM_LEN + USER_LEN + steps) // PAGE + 2)
    nano.Sequence.block_size = PAGE
    bm = nano.BlockManager(num_pages, PAGE)

    def prefill(seq):
        cached = bm.can_allocate(seq)
        assert cached != -1
        bm.allocate(seq, cached)
        seq.num_scheduled_tokens = len(seq) - seq.num_cached_tokens
        bm.hash_blocks(seq)
        seq.num_cached_tokens += seq.num_scheduled_tokens
        seq.num_scheduled_tokens = 0

    prefill(nano.Sequence(warm))
    seqs = []
    gc.collect()
    attach_times = []
    for prompt in prompts:
        t0 = time.perf_counter()
        seq = nano.Sequence(prompt)
        prefill(seq)
        attach_times.append(time.perf_counter() - t0)
        seqs.append(seq)
    step_times = []
    for i in range(steps):
        step_tokens = tokens[i].tolist()
        t0 = time.perf_counter()
        for seq, token in zip(seqs, step_tokens):  # postprocess of the previous step
            bm.hash_blocks(seq)
            seq.num_cached_tokens += seq.num_scheduled_tokens
            seq.num_scheduled_tokens = 0
            seq.append_token(token)
        for seq in seqs:  # schedule
            assert bm.can_append(seq)
            seq.num_scheduled_tokens = 1
            bm.may_append(seq)
        nano.prepare_decode(seqs, PAGE)
        step_times.append(time.perf_counter() - t0)
    gc.collect()
    detach_times = []
    for seq in seqs:
        t0 = time.perf_counter()
        bm.deallocate(seq)
        detach_times.append(time.perf_counter() - t0)
    return dict(impl="nano-vllm", batch=batch, form="ints", **per_request(attach_times, step_times, detach_times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="16 decode steps, 256 requests only")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of our decode steps")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each manager; the best of each metric counts")
    args = parser.parse_args(argv)
    steps = 16 if args.quick else 128
    rows, profiles = [], []
    metrics = ("attach_prefill_publish_us", "decode_step_us", "detach_us")
    for batch in ((256,) if args.quick else (256, 1024)):
        runs = [[run_nano(batch, steps)] + [run_ours(batch, steps, form) for form in FORMS] for _ in range(args.repeat)]
        best = [dict(r[0], **{k: min(run[i][k] for run in runs) for k in r[0] if k.endswith("_us")})
                for i, r in enumerate(zip(*runs))]  # best of the repeats, per metric, for both managers
        baseline = best[0]
        for row in best[1:]:
            for key in metrics:
                row[f"{key[:-3]}_vs_nano"] = row[key] / baseline[key]
        rows += best
        if args.profile:  # a separate run: the profiler slows what it watches
            profiles.append(dict(batch=batch, form="ints", profile=run_ours(batch, steps, "ints", profile=True)["profile"]))
    hash_rows = [hashing(ps, 32768 if args.quick else 262144, 3 if args.quick else 9) for ps in (16, 64)]
    print("prefix hashing: ours vs raw hashlib.sha256 over the same bytes")
    print_table(hash_rows)
    table = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print("block manager, chat workload: 1,024-token shared prefix + 256 own tokens, page 16, 32 layers")
    print_table(table)
    for r in profiles:
        print(f"\nprofile of {steps} decode steps, batch {r['batch']}, form {r['form']}:\n{r['profile']}")
    if not args.quick:
        small = {r["form"]: r for r in rows if r["impl"] == "llmds_torch" and r["batch"] == 256}
        large = {r["form"]: r for r in rows if r["impl"] == "llmds_torch" and r["batch"] == 1024}
        print("\n1,024 vs 256 sequences, decode step:",
              {f: round(large[f]["decode_step_us"] / small[f]["decode_step_us"], 2) for f in small})
    write_results("kv_manager_quick" if args.quick else "kv_manager",
                  dict(quick=args.quick, steps=steps, repeat=args.repeat, hashing=hash_rows, rows=rows,
                       profiles=profiles))


if __name__ == "__main__":
    main()
