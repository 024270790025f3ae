"""Tensor parallelism over ``torch.distributed`` (NCCL on GPU, gloo on CPU, launched by ``torchrun``):
KV heads split across ranks, page ids decided by the block manager on rank 0 and sent as one plan
per step."""

from llmds_torch.distributed import errors
from llmds_torch.distributed.errors import *  # noqa: F401,F403  (the package exports its errors)
from llmds_torch.distributed.follower import ShardPool
from llmds_torch.distributed.group import TPGroup, init_tensor_parallel
from llmds_torch.distributed.plan import StepPlan
from llmds_torch.distributed.plan_cache import PlanRecordingCache
from llmds_torch.distributed.start import start_tensor_parallel
from llmds_torch.distributed.tp_llama import TensorParallelLlama, check_divisible

__all__ = [
    "init_tensor_parallel", "start_tensor_parallel", "TPGroup", "TensorParallelLlama", "PlanRecordingCache",
    "ShardPool", "StepPlan", "check_divisible",
] + errors.__all__
