"""The built-in Llama decoder split over the ranks of a tensor-parallel group.

Rank r of R keeps query heads ``[r·H/R, (r+1)·H/R)``, KV heads ``[r·Hkv/R, (r+1)·Hkv/R)`` and MLP
columns ``[r·I/R, (r+1)·I/R)``: q/k/v and gate/up projections are column-parallel (their output rows
sliced), the output and down projections row-parallel (their input columns sliced), so each layer
needs one all-reduce after attention and one after the MLP. Embedding, norms and the output
projection are replicated. The model interface is the built-in decoder's, with this rank's KV heads.

Rank 0 (the driver) runs the engine: each ``forward`` sends the step's plan (see ``plan.py``) in one
broadcast, then computes its share; the other ranks run ``serve`` until ``stop``.
"""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from llmds_torch.attention import AttentionMetadata
from llmds_torch.distributed.errors import HeadsNotDivisible, TensorParallelUnsupported
from llmds_torch.distributed.follower import ShardPool
from llmds_torch.distributed.group import TPGroup, all_reduce_, broadcast_object
from llmds_torch.distributed.plan import StepPlan, apply_pool_ops
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.layers import rms_norm, swiglu
from llmds_torch.models.llama import LlamaModel, StepInputs


def check_divisible(config: LlamaConfig, world_size: int) -> None:
    """Raise ``HeadsNotDivisible`` unless ``world_size`` divides the query heads, KV heads and MLP width."""
    for name in ("num_heads", "num_kv_heads", "intermediate_size"):
        value = getattr(config, name)
        if value % world_size:
            raise HeadsNotDivisible(f"tensor parallelism over {world_size} ranks needs {name} divisible by "
                                    f"{world_size}; the model has {name}={value}")


def shard_config(config: LlamaConfig, world_size: int) -> LlamaConfig:
    """One rank's share of the model's shape (``head_dim`` kept)."""
    check_divisible(config, world_size)
    return dataclasses.replace(config, num_heads=config.num_heads // world_size,
                               num_kv_heads=config.num_kv_heads // world_size,
                               intermediate_size=config.intermediate_size // world_size, head_dim=config.head_dim)


class TensorParallelLlama(LlamaModel):
    """One rank's share of a ``LlamaModel``; build it with ``from_model``.

    Attributes
    ----------
    group : TPGroup
    full_config : LlamaConfig, the whole model's shape (``config`` is this rank's share)
    """

    @classmethod
    def from_model(cls, model, group: TPGroup) -> "TensorParallelLlama":
        """This rank's slices of ``model``'s weights (every rank passes the same model)."""
        if not isinstance(model, LlamaModel) or isinstance(model, TensorParallelLlama):
            raise TensorParallelUnsupported(
                f"tensor parallelism splits the built-in LlamaModel only; {type(model).__name__} (e.g. a Hugging "
                "Face PagedCausalLM) runs on one device — load the checkpoint with load_hf_model instead")
        full, r, world = model.config, group.rank, group.world_size
        local = shard_config(full, world)
        shard = cls(local, seed=None, dtype=model.dtype, device=group.device)
        shard.group, shard.full_config = group, full
        d = full.head_dim

        def rows(w, n):  # column-parallel: this rank's output rows
            return w[r * n:(r + 1) * n]

        def cols(w, n):  # row-parallel: this rank's input columns
            return w[:, r * n:(r + 1) * n]

        with torch.no_grad():
            shard.embed_tokens.copy_(model.embed_tokens)
            shard.norm.copy_(model.norm)
            if model.lm_head is not None:
                shard.lm_head.copy_(model.lm_head)
            for mine, whole in zip(shard.layers, model.layers):
                mine.input_layernorm.copy_(whole.input_layernorm)
                mine.post_attention_layernorm.copy_(whole.post_attention_layernorm)
                mine.q_proj.copy_(rows(whole.q_proj, local.num_heads * d))
                mine.k_proj.copy_(rows(whole.k_proj, local.num_kv_heads * d))
                mine.v_proj.copy_(rows(whole.v_proj, local.num_kv_heads * d))
                mine.o_proj.copy_(cols(whole.o_proj, local.num_heads * d))
                mine.gate_proj.copy_(rows(whole.gate_proj, local.intermediate_size))
                mine.up_proj.copy_(rows(whole.up_proj, local.intermediate_size))
                mine.down_proj.copy_(cols(whole.down_proj, local.intermediate_size))
        return shard

    def _finish_layer(self, layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Row-parallel output projection and MLP, each summed over the ranks (two all-reduces)."""
        x = x + all_reduce_(F.linear(attn.reshape(x.shape[0], -1), layer.o_proj), self.group)
        h = rms_norm(x, layer.post_attention_layernorm, self.config.rms_norm_eps)
        return x + all_reduce_(swiglu(h, layer.gate_proj, layer.up_proj, layer.down_proj), self.group)

    # ------------------------------------------------------------------ driver
    @torch.no_grad()
    def forward(self, cache, seq_ids, token_ids) -> torch.Tensor:
        """``LlamaModel.forward`` on rank 0 (``cache`` a ``PlanRecordingCache``): the step's plan goes
        to every rank in one broadcast, then every rank computes its heads."""
        step = self._prepare_step(cache, seq_ids, token_ids)
        m = step.metadata
        numpy = lambda t: t.cpu().numpy()  # noqa: E731
        plan = StepPlan(cache.take_pool_ops(), cache.num_pages, numpy(step.token_ids), numpy(step.positions),
                        numpy(step.slot_mapping), numpy(m.block_table), numpy(m.seq_lens),
                        None if m.query_start_loc is None else numpy(m.query_start_loc), m.max_query_len)
        broadcast_object(plan, self.group)
        return self._logits(self._run_layers(cache, step)[step.last_rows])

    def stop(self, cache=None) -> None:
        """Rank 0: end the other ranks' ``serve`` loops (after the pool operations still pending)."""
        ops = cache.take_pool_ops() if cache is not None else []
        broadcast_object(StepPlan(ops, cache.num_pages if cache is not None else 0, stop=True), self.group)

    # ------------------------------------------------------------------ followers
    @torch.no_grad()
    def serve(self, pool: ShardPool) -> int:
        """Ranks > 0: apply each plan to this rank's pool slice and compute this rank's heads, until
        rank 0 calls ``stop``. Returns the steps served."""
        steps = 0
        while True:
            plan = broadcast_object(None, self.group)
            if plan.pool_ops or (plan.num_pages and plan.num_pages != pool.pool.shape[1]):
                pool.pool = apply_pool_ops(pool.pool, plan.pool_ops, plan.num_pages or pool.pool.shape[1],
                                           backend=pool.backend)
            if plan.stop:
                return steps
            device = pool.pool.device
            tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
            qsl = None if plan.query_start_loc is None else tensor(plan.query_start_loc)
            metadata = AttentionMetadata(tensor(plan.block_table), tensor(plan.seq_lens), qsl, plan.max_query_len,
                                         len(plan.token_ids))
            step = StepInputs(tensor(plan.token_ids), tensor(plan.positions), tensor(plan.slot_mapping), metadata,
                              torch.empty(0, dtype=torch.int64))
            self._run_layers(pool, step)
            steps += 1
