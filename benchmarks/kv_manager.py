"""CPU cost of the block manager on a synthetic chat workload.

Many requests share a long system prompt; then a batch of 256 sequences decodes. Reported:
microseconds per attach (with prefix hit), per decode-step ``append_batch`` of the whole batch, per
full decode-step bookkeeping (append + slot mapping + one write record per layer), per detach; and
prefix hashing throughput in tokens/s side by side with raw ``hashlib.sha256`` over the same bytes.

    python -m benchmarks.kv_manager [--quick]
"""

import argparse
import hashlib
import time

import numpy as np

from benchmarks._common import print_table, write_results
from llmds_torch.kv import BlockManager
from llmds_torch.kv.prefix_index import chain_prefix, page_keys


def per_call_us(fn, n):
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


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


def chat_workload(batch: int, system_len: int, user_len: int, steps: int, page_size: int, num_layers: int) -> dict:
    rng = np.random.default_rng(0)
    system = rng.integers(0, 32000, system_len).tolist()
    pages_needed = batch * ((system_len + user_len + steps) // page_size + 2)
    manager = BlockManager(pages_needed, page_size, num_layers=num_layers)
    warm = manager.attach(system + [1])
    manager.mark_written(warm)
    prompts = [system + rng.integers(0, 32000, user_len).tolist() for _ in range(batch)]
    seqs = []

    def attach(i):
        seqs.append(manager.attach(prompts[i]))

    attach_us = per_call_us(attach, batch)
    for s in seqs:
        manager.mark_written(s)
    hit_rate = manager.stats()["prefix_hit_rate"]
    tokens = rng.integers(0, 32000, (steps, batch)).tolist()

    # append alone (each step's tokens recorded as written afterwards, outside the timed region)
    t_append = []
    for i in range(steps // 2):
        t0 = time.perf_counter()
        manager.append_batch(seqs, tokens[i])
        t_append.append(time.perf_counter() - t0)
        for layer in range(num_layers):
            manager.record_write(layer, manager.slot_mapping(seqs))

    # the whole decode-step bookkeeping: append, slot mapping, one write record per layer
    t_step = []
    for i in range(steps // 2, steps):
        t0 = time.perf_counter()
        manager.append_batch(seqs, tokens[i])
        slots = manager.slot_mapping(seqs)
        for layer in range(num_layers):
            manager.record_write(layer, slots)
        t_step.append(time.perf_counter() - t0)
    manager.check_invariants()
    detach_us = per_call_us(lambda i: manager.detach(seqs[i]), batch)
    return dict(batch=batch, system_len=system_len, user_len=user_len, page_size=page_size,
                num_layers=num_layers, prefix_hit_rate=hit_rate, attach_us=attach_us,
                append_batch_us=float(np.median(t_append)) * 1e6,
                decode_step_bookkeeping_us=float(np.median(t_step)) * 1e6, detach_us=detach_us)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps = 10 if args.quick else 100
    hash_rows = [hashing(ps, 32768 if args.quick else 262144, 3 if args.quick else 9) for ps in (16, 64)]
    work_rows = [chat_workload(256, 2048 if not args.quick else 256, 64, steps, ps, 32) for ps in (16,)]
    print("prefix hashing: ours vs raw hashlib.sha256 over the same bytes")
    print_table(hash_rows)
    print("\nchat workload (block manager only, no tensors)")
    print_table(work_rows)
    write_results("kv_manager_quick" if args.quick else "kv_manager", dict(quick=args.quick, hashing=hash_rows, chat=work_rows))


if __name__ == "__main__":
    main()
