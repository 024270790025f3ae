"""Starting a tensor-parallel run: checks, sharding, and each rank's KV."""

import dataclasses

import torch

from llmds_torch.distributed.follower import ShardPool
from llmds_torch.distributed.group import TPGroup, check_same_config, fingerprint
from llmds_torch.distributed.plan_cache import PlanRecordingCache
from llmds_torch.distributed.tp_llama import TensorParallelLlama, check_divisible
from llmds_torch.kv.config import KVCacheConfig


def start_tensor_parallel(model, kv_config: KVCacheConfig, group: TPGroup):
    """Split ``model`` and its KV over the group.

    Every rank passes the same model (same weights) and cache config; ``kv_config.num_kv_heads`` is
    the whole model's. Raises, on every rank and before any step, ``HeadsNotDivisible`` when the world
    size does not divide the heads, ``ConfigMismatch`` when the ranks' model shapes, weights or cache
    configs differ, ``TensorParallelUnsupported`` for a model other than ``LlamaModel`` or the host tier.

    Returns
    -------
    (TensorParallelLlama, PlanRecordingCache) on rank 0, to drive a ``GenerationEngine`` with (then
    ``model.stop(cache)``); (TensorParallelLlama, ShardPool) on the others, to ``model.serve(pool)``.
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_kv_heads"):
        check_divisible(config, group.world_size)
    checksum = float(sum(p.double().sum() for p in model.parameters())) if hasattr(model, "parameters") else None
    check_same_config(fingerprint(getattr(model, "config", type(model).__name__), kv_config, group.world_size,
                                  checksum), group)
    shard = TensorParallelLlama.from_model(model, group)
    local = dataclasses.replace(kv_config, num_kv_heads=shard.config.num_kv_heads, device=group.device)
    if group.is_driver:
        return shard, PlanRecordingCache(local)
    pool = torch.empty((local.num_layers, local.num_pages, 2, local.page_size, local.num_kv_heads, local.head_dim),
                       dtype=local.dtype, device=group.device)
    return shard, ShardPool(pool, local.backend)
