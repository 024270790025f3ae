"""What the tensor-parallel plan costs per decode step at 256 sequences (CPU, gloo, 2 ranks).

Rank 0 runs the block manager (torch-free) through decode steps of 256 sequences with 1,024-token
prompts (page 16, so block tables of 65+ pages) and sends each step's plan, as ``StepPlan`` through
one ``broadcast_object_list`` (what ``TensorParallelLlama.forward`` does), and, for comparison, the
same arrays packed into one int64 tensor (a size broadcast then a data broadcast). The baseline in
the same run is the block manager's own decode-step bookkeeping (append, slot mapping, block table).

    .venv/bin/python -m benchmarks.tp_plan [--quick]
"""

import argparse
import socket
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks._common import print_table, write_results

BATCH, PROMPT, PAGE = 256, 1024, 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Arrays as one int64 tensor: [count, length..., data...]."""
    head = np.array([len(arrays)] + [a.size for a in arrays], dtype=np.int64)
    return torch.from_numpy(np.concatenate([head] + [a.ravel().astype(np.int64) for a in arrays]))


def _rank(rank: int, port: int, steps: int, out: str) -> None:
    from llmds_torch.distributed.group import TPGroup, broadcast_object
    from llmds_torch.distributed.plan import StepPlan
    from llmds_torch.kv.block_manager import BlockManager

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    group = TPGroup(rank, 2, torch.device("cpu"))
    rng = np.random.default_rng(0)
    if rank == 0:
        pages = BATCH * (PROMPT + steps + PAGE) // PAGE + 16
        manager = BlockManager(pages, PAGE, num_layers=32)
        seqs = [manager.attach(rng.integers(0, 32000, PROMPT).tolist()) for _ in range(BATCH)]
        for s in seqs:
            manager.mark_written(s)
        rows = []
        for _ in range(steps):
            t0 = time.perf_counter()
            manager.append_batch(seqs, rng.integers(0, 32000, BATCH))
            slots = manager.slot_mapping(seqs)
            table, lens = manager.block_table(seqs), manager.seq_lens(seqs)
            t1 = time.perf_counter()
            tokens = np.zeros(BATCH, np.int64)
            plan = StepPlan([], pages, tokens, lens.astype(np.int64), slots, table, lens, None, 1)
            broadcast_object(plan, group)
            t2 = time.perf_counter()
            packed = pack([tokens, lens, slots, table, lens])
            dist.broadcast(torch.tensor([packed.numel()]), src=0)
            dist.broadcast(packed, src=0)
            t3 = time.perf_counter()
            for s in seqs:
                manager.mark_written(s)
            rows.append((t1 - t0, t2 - t1, t3 - t2, len(pickle_size(plan))))
        torch.save(rows, out)
    else:
        for _ in range(steps):
            broadcast_object(None, group)
            size = torch.zeros(1, dtype=torch.int64)
            dist.broadcast(size, src=0)
            dist.broadcast(torch.empty(int(size), dtype=torch.int64), src=0)
    dist.destroy_process_group()


def pickle_size(obj) -> bytes:
    import pickle
    return pickle.dumps(obj)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 steps instead of 200")
    args = parser.parse_args(argv)
    steps = 20 if args.quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rows.pt"
        mp.spawn(_rank, args=(_free_port(), steps, out), nprocs=2, join=True)
        rows = np.array(torch.load(out))[steps // 10:]  # the first steps warm the connection up
    med = np.median(rows, axis=0)
    table = [dict(what="block manager decode step (append, slot mapping, block table)", us=med[0] * 1e6, vs_bookkeeping=1.0),
             dict(what="plan: StepPlan via broadcast_object_list (one collective)", us=med[1] * 1e6,
                  vs_bookkeeping=med[1] / med[0]),
             dict(what="plan: packed int64 tensor (size + data broadcast)", us=med[2] * 1e6,
                  vs_bookkeeping=med[2] / med[0])]
    print(f"{BATCH} sequences, {PROMPT}-token prompts, page {PAGE}, 2 ranks, gloo on CPU; plan {int(med[3])} bytes pickled; "
          f"median over {len(rows)} steps")
    print_table(table)
    write_results("tp_plan_quick" if args.quick else "tp_plan",
                  dict(batch=BATCH, prompt=PROMPT, page_size=PAGE, world_size=2, steps=steps, plan_bytes=int(med[3]),
                       rows=table))


if __name__ == "__main__":
    main()
