"""What the scheduler's model runner needs from a model: the :class:`CausalLM` protocol.

The built-in :class:`~llmds_torch.models.llama.LlamaModel` implements it, and so can any decoder
that computes reserved tokens of cached sequences and writes their KV into a
:class:`~llmds_torch.kv.PagedKVCache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CausalLM(Protocol):
    """A causal language model that runs on a paged KV cache.

    Attributes
    ----------
    num_layers, num_kv_heads, head_dim : int
        What the KV cache must hold per token.
    vocab_size : int
        Token ids lie in ``[0, vocab_size)``; logits rows have ``vocab_size`` entries.
    max_context_len : int
        Positions lie in ``[0, max_context_len)``.
    device : torch.device
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context_len: int
    device: torch.device

    def check_token_ids(self, token_ids) -> None:
        """Raise :class:`~llmds_torch.errors.InvalidTokenIds` unless every id is in the vocabulary."""

    def check_length(self, num_tokens: int) -> None:
        """Raise :class:`~llmds_torch.errors.ContextWindowExceeded` when a sequence of
        ``num_tokens`` tokens does not fit the model's positions."""

    def forward(self, cache, seq_ids: Sequence[int], token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Compute the next reserved tokens of each sequence, write their KV into ``cache``, and
        return the logits after each sequence's last new token, ``[batch, vocab_size]``."""
