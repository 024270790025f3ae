"""What the tensor-parallel plan costs per decode step at 256 sequences (CPU, gloo, 2 ranks).

Rank 0 runs the block manager (torch-free) through decode steps of 256 sequences with 1,024-token
prompts (page 16, so block tables of 65+ pages) and sends each step's ``StepPlan`` pickled through
one ``broadcast_object_list`` (what ``TensorParallelLlama`` sends) and, for comparison, the same
arrays packed into one int64 tensor (a length broadcast, then the data). The baseline in the same run is
the block manager's own decode-step bookkeeping (append, slot mapping, block table). Each send is
timed on rank 0 from a barrier until the follower, having decoded the plan, joins a second barrier;
the same two barriers with nothing between them are timed too.

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


def pack(plan) -> torch.Tensor:
    """The plan's step arrays as one int64 tensor ``[count, lengths..., data...]`` (the alternative)."""
    arrays = [plan.token_ids, plan.positions, plan.slot_mapping, plan.block_table, plan.seq_lens]
    head = np.array([len(arrays)] + [a.size for a in arrays], dtype=np.int64)
    return torch.from_numpy(np.concatenate([head] + [a.ravel().astype(np.int64) for a in arrays]))


def send_packed(plan, group) -> None:
    if group.rank == 0:
        packed = pack(plan)
        dist.broadcast(torch.tensor([packed.numel()]), src=0)
        dist.broadcast(packed, src=0)
        return
    size = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(size, src=0)
    packed = torch.empty(int(size), dtype=torch.int64)
    dist.broadcast(packed, src=0)
    data, n = packed.numpy(), int(packed[0])
    lengths, at = data[1:1 + n], 1 + n
    for length in lengths.tolist():  # decode as the follower would
        data[at:at + length].astype(np.int32)
        at += length


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
            times = []
            for send in (broadcast_object, send_packed, None):  # each from a barrier to the follower's barrier
                dist.barrier()
                start = time.perf_counter()
                if send is not None:
                    send(plan, group)
                dist.barrier()
                times.append(time.perf_counter() - start)
            for s in seqs:
                manager.mark_written(s)
            rows.append((t1 - t0, *times, len(pickle_size(plan)), pack(plan).numel() * 8))
        torch.save(rows, out)
    else:
        for _ in range(steps):
            for receive in (broadcast_object, send_packed, None):
                dist.barrier()
                if receive is not None:
                    receive(None, group)
                dist.barrier()
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
    what = ["block manager decode step (append, slot mapping, block table)",
            "StepPlan pickled through broadcast_object_list (what TP sends), barrier to barrier",
            "the same arrays packed into one int64 tensor (size + data broadcast), barrier to barrier",
            "two barriers with nothing between (the round trip both include)"]
    table = [dict(what=w, us=med[i] * 1e6, vs_bookkeeping=med[i] / med[0]) for i, w in enumerate(what)]
    print(f"{BATCH} sequences, {PROMPT}-token prompts, page {PAGE}, 2 ranks, gloo on CPU; plan {int(med[5])} bytes packed, {int(med[4])} pickled; "
          f"median over {len(rows)} steps")
    print_table(table)
    write_results("tp_plan_quick" if args.quick else "tp_plan",
                  dict(batch=BATCH, prompt=PROMPT, page_size=PAGE, world_size=2, steps=steps, plan_bytes_packed=int(med[5]), plan_bytes_pickled=int(med[4]),
                       rows=table))


if __name__ == "__main__":
    main()
