"""Tensor parallelism over ``torch.distributed`` (NCCL on GPU, gloo on CPU, launched by ``torchrun``):
KV heads split across ranks, page ids decided by the block manager on rank 0 and sent as one plan
per step."""

from llmds_torch.distributed.errors import (CollectiveFailed, ConfigMismatch, HeadsNotDivisible,
                                            TensorParallelError, TensorParallelUnsupported)
from llmds_torch.distributed.follower import ShardPool
from llmds_torch.distributed.group import TPGroup, check_same_config, init_tensor_parallel
from llmds_torch.distributed.plan import StepPlan, apply_pool_ops
from llmds_torch.distributed.plan_cache import PlanRecordingCache
from llmds_torch.distributed.start import start_tensor_parallel
from llmds_torch.distributed.tp_llama import TensorParallelLlama, check_divisible, shard_config

__all__ = [
    "init_tensor_parallel", "start_tensor_parallel", "TPGroup", "TensorParallelLlama", "PlanRecordingCache",
    "ShardPool", "StepPlan", "apply_pool_ops", "check_divisible", "shard_config", "check_same_config",
    "TensorParallelError", "HeadsNotDivisible", "ConfigMismatch", "CollectiveFailed", "TensorParallelUnsupported",
]
