"""A small Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) that keeps its keys
and values in a :class:`~llmds_torch.kv.PagedKVCache`: the worked example of plugging the cache into
a custom decoder.

Two forward paths share the weights:

- :meth:`LlamaModel.forward` computes only the new tokens of a batch of cached sequences, writes
  their K/V into the cache and attends over the pages through the public attention API;
- :meth:`LlamaModel.forward_full` recomputes whole sequences densely with no cache at all. It is
  the oracle the paged path is tested against.
"""

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from llmds_torch.errors import ContextWindowExceeded, InvalidTokenIds
from llmds_torch.attention import paged_attention
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.layers import apply_rope, dense_causal_attention, rms_norm, rope_cos_sin, swiglu
from llmds_torch.models.step_inputs import StepInputs


class LlamaLayer(nn.Module):
    """One decoder layer's weights. Names follow Hugging Face's ``LlamaDecoderLayer`` without the
    ``self_attn.`` / ``mlp.`` prefixes."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.input_layernorm = nn.Parameter(torch.ones(h))
        self.q_proj = nn.Parameter(torch.empty(config.num_heads * d, h))
        self.k_proj = nn.Parameter(torch.empty(config.num_kv_heads * d, h))
        self.v_proj = nn.Parameter(torch.empty(config.num_kv_heads * d, h))
        self.o_proj = nn.Parameter(torch.empty(h, config.num_heads * d))
        self.post_attention_layernorm = nn.Parameter(torch.ones(h))
        self.gate_proj = nn.Parameter(torch.empty(config.intermediate_size, h))
        self.up_proj = nn.Parameter(torch.empty(config.intermediate_size, h))
        self.down_proj = nn.Parameter(torch.empty(h, config.intermediate_size))


class LlamaModel(nn.Module):
    """A Llama-style causal language model.

    Parameters
    ----------
    config : LlamaConfig
    seed : int or None
        Seed of the random weights; ``None`` leaves them uninitialized for a loader to fill
        (:func:`llmds_torch.models.hf_loader.load_hf_model`).
    dtype : torch.dtype
        Dtype of every weight.
    device : str or torch.device

    Notes
    -----
    The random weights are scaled so that activations keep unit size through the layers and
    logits are spread out (standard deviation about 1), which keeps greedy decoding away from
    near-ties in tests.
    """

    def __init__(self, config: LlamaConfig, *, seed: int | None = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(LlamaLayer(config) for _ in range(config.num_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size))
        self.lm_head = None if config.tie_word_embeddings else nn.Parameter(
            torch.empty(config.vocab_size, config.hidden_size))
        if seed is not None:
            self._init_random(seed)
        self.requires_grad_(False)
        self.to(device=device, dtype=dtype)

    def _init_random(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if param.dim() == 1:  # norm weights: near one, never exactly one
                param.data = 1.0 + 0.1 * torch.randn(param.shape, generator=gen)
            elif name == "embed_tokens":
                param.data = torch.randn(param.shape, generator=gen)
            else:  # projections [out, in]
                param.data = torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5

    @property
    def output_weight(self) -> torch.Tensor:
        """The output projection ``[vocab_size, hidden_size]`` (the embedding when tied)."""
        return self.embed_tokens if self.lm_head is None else self.lm_head

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def num_kv_heads(self) -> int:
        return self.config.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_context_len(self) -> int:
        """Positions the model was built for (``config.max_position``)."""
        return self.config.max_position

    # ------------------------------------------------------------------ checks

    def check_token_ids(self, token_ids) -> None:
        """Raise ``InvalidTokenIds`` unless every id lies in ``[0, vocab_size)``."""
        ids = torch.as_tensor(token_ids)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
            raise InvalidTokenIds(f"token ids must be integers, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise InvalidTokenIds(f"token ids span [{int(ids.min())}, {int(ids.max())}]; allowed: "
                                  f"0 <= id < vocab_size={self.config.vocab_size}")

    def check_length(self, num_tokens: int) -> None:
        """Raise ``ContextWindowExceeded`` when a sequence of ``num_tokens`` exceeds ``max_position``."""
        if num_tokens > self.config.max_position:
            raise ContextWindowExceeded(f"sequence of {num_tokens} tokens exceeds the model's "
                                        f"max_position={self.config.max_position}")

    # ------------------------------------------------------------------ shared pieces

    def _qkv(self, layer: LlamaLayer, x: torch.Tensor, positions: torch.Tensor):
        """Queries, keys and values of ``x`` ``[T, hidden]``, rotated by ``positions`` ``[T]``.

        Returns q ``[T, num_heads, head_dim]``, k and v ``[T, num_kv_heads, head_dim]``.
        """
        cfg = self.config
        t = x.shape[0]
        h = rms_norm(x, layer.input_layernorm, cfg.rms_norm_eps)
        q = F.linear(h, layer.q_proj).view(t, cfg.num_heads, cfg.head_dim)
        k = F.linear(h, layer.k_proj).view(t, cfg.num_kv_heads, cfg.head_dim)
        v = F.linear(h, layer.v_proj).view(t, cfg.num_kv_heads, cfg.head_dim)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, x.dtype, cfg.rope_scaling)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _finish_layer(self, layer: LlamaLayer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, and the SwiGLU block. ``attn``: ``[T, num_heads, head_dim]``."""
        x = x + F.linear(attn.reshape(x.shape[0], -1), layer.o_proj)
        h = rms_norm(x, layer.post_attention_layernorm, self.config.rms_norm_eps)
        return x + swiglu(h, layer.gate_proj, layer.up_proj, layer.down_proj)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and output projection: ``[T, hidden]`` -> ``[T, vocab_size]``."""
        return F.linear(rms_norm(x, self.norm, self.config.rms_norm_eps), self.output_weight)

    # ------------------------------------------------------------------ dense oracle

    @torch.no_grad()
    def forward_full(self, token_ids) -> torch.Tensor:
        """Recompute one whole sequence with no cache: the exactness oracle.

        Parameters
        ----------
        token_ids : sequence of int or Tensor int ``[num_tokens]``

        Returns
        -------
        Tensor ``[num_tokens, vocab_size]``: row ``i`` holds the logits of the token after
        ``token_ids[i]``.
        """
        ids = torch.as_tensor(token_ids, device=self.device)
        if ids.dim() != 1 or ids.numel() == 0:
            raise InvalidTokenIds(f"forward_full takes a non-empty 1-D sequence of token ids, "
                                  f"got shape {tuple(ids.shape)}")
        self.check_token_ids(ids)
        self.check_length(ids.numel())
        positions = torch.arange(ids.numel(), device=self.device)
        x = self.embed_tokens[ids.long()]  # [T, hidden]
        for layer in self.layers:
            q, k, v = self._qkv(layer, x, positions)
            x = self._finish_layer(layer, x, dense_causal_attention(q, k, v))
        return self._logits(x)

    # ------------------------------------------------------------------ paged path

    @torch.no_grad()
    def forward(self, cache, seq_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Compute the next reserved tokens of a batch of cached sequences and write their K/V.

        Sequence ``seq_ids[i]`` must already hold ``token_ids[i]`` as reserved, unwritten tokens
        right after its written ones (``cache.attach`` reserves a prompt, ``cache.append_batch``
        reserves decode tokens). A prompt may be computed in chunks: ``token_ids[i]`` can be the
        first part of what is pending. Each new token attends causally over the sequence's pages.

        Parameters
        ----------
        cache : PagedKVCache
            Its config must match this model's layers, KV heads and head dim.
        seq_ids : sequence of int ``[batch]``
        token_ids : sequence of int sequences, ``token_ids[i]`` non-empty

        Returns
        -------
        Tensor ``[batch, vocab_size]``: logits after the last new token of each sequence.
        """
        step = self._prepare_step(cache, seq_ids, token_ids)
        return self._logits(self._run_layers(cache, step)[step.last_rows])

    def _prepare_step(self, cache, seq_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> StepInputs:
        """Check a step's arguments against the cache and build its inputs (see ``StepInputs.build``)."""
        step = StepInputs.build(cache, seq_ids, token_ids, self.device)
        self.check_token_ids(step.token_ids)
        return step

    def _run_layers(self, cache, step: StepInputs) -> torch.Tensor:
        """Every layer over the step's new tokens, writing their K/V into ``cache`` (anything with
        ``write(layer, slot_mapping, k, v)`` and ``layer(index)``). Returns hidden states ``[N, hidden]``."""
        x = self.embed_tokens[step.token_ids]  # [N, hidden]
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, step.positions)  # q: [N, H, D], k, v: [N, Hkv, D]
            cache.write(index, step.slot_mapping, k, v)
            attn = paged_attention(q, cache.layer(index), step.metadata)  # [N, H, D]
            x = self._finish_layer(layer, x, attn)
        return x
