"""Tensor parallelism on CPU: two gloo ranks give the single-process logits (within 1e-5) and greedy
tokens through prefix hits, forks with copy-on-write and compactions mid-run; bad setups are refused
by name before any step."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from llmds_torch.distributed import (HeadsNotDivisible, TensorParallelUnsupported, TPGroup, check_divisible,
                                     start_tensor_parallel)
from llmds_torch.distributed.plan_cache import PlanRecordingCache
from llmds_torch.kv import KVCacheConfig
from llmds_torch.models.llama import LlamaModel
from tests import tp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path, scenario):
    mp.spawn(tp_worker.run_rank, args=(2, _free_port(), str(tmp_path), scenario), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_ranks_match_one_process(tmp_path):
    driver, follower = _spawn(tmp_path, "generate")
    expected, expected_stats = tp_worker.single_process()
    stats = driver["stats"]
    assert stats["prefix_hit_tokens"] > 0 and stats["cow_copies"] > 0 and stats["pages_moved"] > 0
    for key in ("prefix_hit_tokens", "cow_copies", "pages_moved", "compactions", "num_pages"):
        assert stats[key] == expected_stats[key]
    assert follower["steps"] > 0 and follower["pages"] == stats["num_pages"]
    assert len(driver["outputs"]) == len(expected)
    for got, want in zip(driver["outputs"], expected):
        assert [t for t, _ in got] == [t for t, _ in want]
        for (_, logits), (_, ref) in zip(got, want):
            torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)


def test_config_mismatch_refused_on_every_rank(tmp_path):
    results = _spawn(tmp_path, "mismatch")
    assert [r["error"] for r in results] == ["ConfigMismatch", "ConfigMismatch"]
    assert "ranks [1]" in results[0]["message"]


def test_a_dead_rank_is_a_named_error_not_a_hang(tmp_path):
    mp.spawn(tp_worker.run_rank, args=(2, _free_port(), str(tmp_path), "dies"), nprocs=2, join=True)
    result = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert result["error"] == "CollectiveFailed" and "rank 0" in result["message"]


def test_world_size_must_divide_heads():
    with pytest.raises(HeadsNotDivisible, match="num_heads divisible by 3"):
        check_divisible(tp_worker.CFG, 3)
    check_divisible(tp_worker.CFG, 2)


def test_refusals_before_any_collective():
    group = TPGroup(0, 3, torch.device("cpu"))
    kv = KVCacheConfig(**tp_worker.KV)
    with pytest.raises(HeadsNotDivisible):
        start_tensor_parallel(LlamaModel(tp_worker.CFG, seed=3), kv, group)  # no process group needed
    with pytest.raises(TensorParallelUnsupported, match="host tier"):
        PlanRecordingCache(KVCacheConfig(**tp_worker.KV, host_pages=4))


def test_hugging_face_models_refused():
    from llmds_torch.distributed import TensorParallelLlama

    class NotLlama(torch.nn.Module):
        pass

    with pytest.raises(TensorParallelUnsupported, match="Hugging Face"):
        TensorParallelLlama.from_model(NotLlama(), TPGroup(0, 2, torch.device("cpu")))


def test_torchrun_example_runs_on_cpu():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                           "127.0.0.1", "--master-port", str(_free_port()), "examples/tp_generate.py",
                           "--num-prompts", "4", "--max-new-tokens", "4"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tokens equal to one process: True" in proc.stdout
    assert "rank 1: followed" in proc.stdout
