"""Transformers attention that reads and writes a :class:`~llmds_torch.kv.PagedKVCache`.

A step packs every sequence's new tokens into ONE row (``input_ids [1, num_new_tokens]``) with
explicit ``position_ids``; the model runs its own embeddings, norms, RoPE and MLPs, and each
attention layer calls :func:`paged_attention_forward` (registered under :data:`ATTENTION_NAME` in
transformers' ``AttentionInterface``) with its post-RoPE queries, keys and values. That function
writes the keys and values into the layer's pages (``cache.write``) and attends over each
sequence's pages with :func:`llmds_torch.attention.paged_attention`. The step's state — cache,
slot mapping, attention metadata — is a :class:`PagedStep`, built once per step and handed to the
model call as the keyword argument ``paged_step``; transformers forwards it to every layer's
attention call. Masks are not needed (the metadata says which keys each query sees), so the
registered mask function returns ``None``.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmds_torch.attention import AttentionMetadata, paged_attention
from llmds_torch.integrations.errors import PagedAttentionUnavailable
from llmds_torch.models.step_inputs import StepInputs

ATTENTION_NAME = "llmds_paged"


@dataclass(frozen=True, slots=True)
class PagedStep:
    """What every layer's attention call of one step shares.

    Attributes
    ----------
    cache : PagedKVCache
    inputs : StepInputs of the step (packed tokens, positions, slot mapping, attention metadata)
    """

    cache: object
    inputs: StepInputs

    @property
    def slot_mapping(self) -> torch.Tensor:
        """int64 ``[num_new_tokens]``, the cache slots the new tokens' K/V go to, in row order."""
        return self.inputs.slot_mapping

    @property
    def metadata(self) -> AttentionMetadata:
        return self.inputs.metadata

    @property
    def input_ids(self) -> torch.Tensor:
        """int64 ``[1, num_new_tokens]``, the new tokens of all sequences packed into one row."""
        return self.inputs.token_ids[None]

    @property
    def position_ids(self) -> torch.Tensor:
        """int64 ``[1, num_new_tokens]``, each token's position in its sequence."""
        return self.inputs.positions[None]

    @property
    def last_rows(self) -> torch.Tensor:
        """int64 ``[batch]``, the row of each sequence's last new token."""
        return self.inputs.last_rows

    @classmethod
    def build(cls, cache, seq_ids: Sequence[int], token_ids: Sequence[Sequence[int]],
              device: torch.device) -> "PagedStep":
        """Plan one step (see :meth:`StepInputs.build`, whose errors it raises)."""
        return cls(cache, StepInputs.build(cache, seq_ids, token_ids, device))


def paged_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask=None, *, scaling: float | None = None, dropout: float = 0.0,
                            sliding_window: int | None = None, softcap: float | None = None,
                            paged_step: PagedStep | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """The attention function transformers calls in every layer (``AttentionInterface`` signature).

    Parameters
    ----------
    module : the calling attention module; ``module.layer_idx`` picks the cache layer
    query : ``[1, num_heads, num_new_tokens, head_dim]``, after RoPE
    key, value : ``[1, num_kv_heads, num_new_tokens, head_dim]``, after RoPE
    attention_mask : ignored (``None`` from the registered mask function)
    scaling : softmax scale (``head_dim ** -0.5`` for most models; Gemma 2 passes
        ``query_pre_attn_scalar ** -0.5``)
    sliding_window, softcap : the layer's window and logit soft-cap, or None
    paged_step : PagedStep of this step

    Returns
    -------
    (Tensor ``[1, num_new_tokens, num_heads, head_dim]``, None)
    """
    if paged_step is None:
        raise PagedAttentionUnavailable(
            f"attention implementation {ATTENTION_NAME!r} runs on a paged KV cache: call the model through "
            "llmds_torch.integrations.transformers.PagedCausalLM, or switch it back with "
            "model.set_attn_implementation('sdpa') to call it directly")
    cache = paged_step.cache
    q = query[0].transpose(0, 1).contiguous()  # [T, H, D]
    k = key[0].transpose(0, 1).contiguous()  # [T, Hkv, D]
    v = value[0].transpose(0, 1).contiguous()
    cache.write(module.layer_idx, paged_step.slot_mapping, k, v)
    out = paged_attention(q, cache.layer(module.layer_idx), paged_step.metadata, scale=scaling,
                          sliding_window=sliding_window, softcap=softcap)  # [T, H, D]
    return out[None], None


def no_mask(*args, **kwargs) -> None:
    """The mask function registered beside the paged attention: the step's metadata is the mask."""
    return None


def register_paged_attention() -> None:
    """Register :func:`paged_attention_forward` and :func:`no_mask` under :data:`ATTENTION_NAME`
    (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, no_mask)
