"""Paged attention for a decoder that keeps its K/V in a ``PagedKVCache``.

Two ways to call it:

* ``paged_attention(q, cache, layer, seq_ids, *, query_start_loc=None)``: builds the block table
  and lengths from the cache on every call (simple; one host round trip per call).
* plan once per batch, run per layer::

      metadata = AttentionMetadata.build(cache, seq_ids, query_lens=None)   # None: decode
      for layer in range(num_layers):
          ...                                           # write this layer's new K/V first
          out = paged_attention(q, cache.layer(layer), metadata)

Metadata describes the cache as it was when built: build it again after ``append``,
``append_batch``, ``defragment`` or anything else that changes the tables.

Decode (one new token per sequence) uses ``kernels.paged_attention_decode``; prefill (new tokens,
causal over each sequence's cached prefix and themselves) uses ``kernels.paged_attention_prefill``.
Backend ``"auto"`` picks Triton on CUDA and the torch reference on CPU.
"""

from dataclasses import dataclass

import torch

from llmds_torch.errors import LLMDSError
from llmds_torch.kernels import KernelInputError
from llmds_torch.kernels.paged_attention import paged_attention_decode, paged_attention_prefill
from llmds_torch.kernels.validation import check_block_table


class AttentionInputError(LLMDSError, KernelInputError):
    """Arguments to ``paged_attention`` or ``AttentionMetadata.build`` that do not fit together."""


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """What every layer's attention call of one batch shares, built once.

    Attributes
    ----------
    block_table : int32 ``[batch, max_pages]`` on the pool's device, padded with -1
    seq_lens : int32 ``[batch]``, each sequence's tokens including the new ones
    query_start_loc : int32 ``[batch + 1]`` (cumulative new tokens), or None for decode
    max_query_len : most new tokens of one sequence (1 for decode)
    num_query_tokens : rows of ``q`` the batch has (``batch`` for decode)
    """

    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor | None
    max_query_len: int
    num_query_tokens: int

    @property
    def is_decode(self) -> bool:
        return self.query_start_loc is None

    @classmethod
    def build(cls, cache, seq_ids, query_lens=None, *, tables=None) -> "AttentionMetadata":
        """Tables for ``seq_ids`` from ``cache``, checked once here so that the per-layer calls skip
        the value checks (and their device syncs).

        Parameters
        ----------
        cache : ``PagedKVCache``
        seq_ids : sequence ids, in the order of q's rows
        query_lens : new tokens per sequence (each in ``[0, num_tokens(seq)]``), or None for decode
            (one new token each)
        tables : (block_table, seq_lens) of ``seq_ids`` already on the pool's device (as
            ``cache.step_inputs`` sends them), or None to fetch them here
        """
        seq_ids = list(seq_ids)
        if tables is None:
            tables = cache.block_table(seq_ids), cache.seq_lens(seq_ids)
        block_table, seq_lens = tables
        if seq_ids:
            check_block_table(block_table, seq_lens, cache.page_size, cache.num_pages)
        if query_lens is None:
            return cls(block_table, seq_lens, None, 1, len(seq_ids))
        query_lens = [int(n) for n in query_lens]
        if len(query_lens) != len(seq_ids):
            raise AttentionInputError(f"query_lens has {len(query_lens)} entries for {len(seq_ids)} sequences")
        for seq_id, n in zip(seq_ids, query_lens):
            if not 0 <= n <= cache.num_tokens(seq_id):
                raise AttentionInputError(f"sequence {seq_id} has {cache.num_tokens(seq_id)} tokens; "
                                          f"its query length must lie in [0, {cache.num_tokens(seq_id)}], got {n}")
        starts = torch.tensor([0] + query_lens, dtype=torch.int64).cumsum(0).to(torch.int32)
        return cls(block_table, seq_lens, starts.to(block_table.device), max(query_lens, default=0),
                   int(starts[-1]))


def paged_attention(q: torch.Tensor, cache_or_layer, layer_or_metadata, seq_ids=None, *,
                    query_start_loc: torch.Tensor | None = None, scale: float | None = None,
                    sliding_window: int | None = None, softcap: float | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """Attention of ``q`` over K/V in the cache's pages.

    Call forms
    ----------
    ``paged_attention(q, cache, layer, seq_ids, *, query_start_loc=None, scale=None, sliding_window=None,
    softcap=None, backend="auto")``
    ``paged_attention(q, layer_cache, metadata, *, scale=None, sliding_window=None, softcap=None,
    backend="auto")``

    Parameters
    ----------
    q : decode: ``[batch, num_q_heads, head_dim]``; prefill: ``[total_new_tokens, num_q_heads, head_dim]``
        with sequence b's rows at ``query_start_loc[b]:query_start_loc[b+1]`` (its last tokens)
    cache, layer, seq_ids : a ``PagedKVCache``, the layer index, and the sequences of q's rows
    query_start_loc : int32 ``[batch + 1]`` on the pool's device for prefill; None for decode
    layer_cache, metadata : ``cache.layer(layer)`` and an ``AttentionMetadata`` from ``build``
    scale : softmax scale (a finite number > 0), default ``head_dim ** -0.5``
    sliding_window : W >= 1, or None (full causal attention); a query at position i (its token's
        index in the sequence) sees keys at positions ``i - W < j <= i``
    softcap : c > 0, or None; scores become ``c * tanh(scale * q·k / c)``
    backend : ``"auto"``, ``"triton"`` or ``"torch"``

    Returns
    -------
    Same shape and dtype as ``q``.
    """
    if isinstance(layer_or_metadata, AttentionMetadata):
        if seq_ids is not None or query_start_loc is not None:
            raise AttentionInputError("with an AttentionMetadata, pass neither seq_ids nor query_start_loc "
                                      "(the metadata holds them)")
        return _run(q, cache_or_layer, layer_or_metadata, scale=scale, sliding_window=sliding_window,
                    softcap=softcap, backend=backend)
    if seq_ids is None:
        raise AttentionInputError("paged_attention(q, cache, layer, seq_ids): seq_ids is missing")
    cache, seq_ids = cache_or_layer, list(seq_ids)
    layer_cache = cache.layer(layer_or_metadata)
    block_table, seq_lens = cache.block_table(seq_ids), cache.seq_lens(seq_ids)
    options = dict(scale=scale, sliding_window=sliding_window, softcap=softcap, backend=backend)
    if query_start_loc is None:
        return paged_attention_decode(q, layer_cache, block_table, seq_lens, **options)
    return paged_attention_prefill(q, layer_cache, block_table, seq_lens, query_start_loc, **options)


def _run(q: torch.Tensor, layer_cache: torch.Tensor, metadata: AttentionMetadata, *, scale, sliding_window,
         softcap, backend) -> torch.Tensor:
    if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[0] != metadata.num_query_tokens:
        shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise AttentionInputError(f"q must be [{metadata.num_query_tokens}, num_q_heads, head_dim] for this "
                                  f"metadata, got {shape}")
    options = dict(scale=scale, sliding_window=sliding_window, softcap=softcap, backend=backend,
                   validate_indices=False)
    if metadata.is_decode:
        return paged_attention_decode(q, layer_cache, metadata.block_table, metadata.seq_lens, **options)
    return paged_attention_prefill(q, layer_cache, metadata.block_table, metadata.seq_lens,
                                   metadata.query_start_loc, max_query_len=metadata.max_query_len, **options)


__all__ = ["AttentionMetadata", "AttentionInputError", "paged_attention"]
