"""The inputs of one model step over a paged cache, built once and shared by every layer.

A step computes, for each sequence ``seq_ids[i]``, the next ``len(token_ids[i])`` of its reserved,
not-yet-written tokens: a whole prompt, a prompt chunk, or one decode token. Every decoder that runs
on the cache (the built-in one, a Hugging Face model through the integration) needs the same four
things for that: the tokens packed into one row, their positions, the cache slots their K/V go to,
and the attention plan. Building them here keeps the checks in one place.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmds_torch.attention import AttentionMetadata
from llmds_torch.errors import InvalidTokenIds


@dataclass(frozen=True, slots=True)
class StepInputs:
    """One step's packed inputs (``N`` new tokens over ``B`` sequences).

    Attributes
    ----------
    token_ids : int64 ``[N]`` on the model's device, the new tokens of all sequences in batch order
    positions : int64 ``[N]`` on the model's device, each token's index in its sequence
    slot_mapping : int64 ``[N]`` on the pool's device, exactly the tensor the cache issued (so that
        ``cache.write`` recognises it in every layer without copying it back to the host)
    metadata : AttentionMetadata for ``paged_attention`` (decode form when every sequence computes
        its one pending token; prefill form otherwise, with key lengths cut at each chunk's end)
    last_rows : int64 ``[B]`` on the model's device, the row of each sequence's last new token
    """

    token_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    metadata: AttentionMetadata
    last_rows: torch.Tensor

    @classmethod
    def build(cls, cache, seq_ids: Sequence[int], token_ids: Sequence[Sequence[int]],
              device: torch.device) -> "StepInputs":
        """Check a step against what the cache reserved and build its inputs.

        Raises
        ------
        ValueError
            Not one non-empty token list per sequence, or more tokens than a sequence reserved.
        InvalidTokenIds
            ``token_ids[i]`` differ from the tokens the cache reserved for ``seq_ids[i]``.
        """
        batch = len(seq_ids)
        if batch != len(token_ids) or batch == 0:
            raise ValueError(f"a step needs one non-empty token list per sequence, got {batch} "
                             f"sequences and {len(token_ids)} token lists")
        seq_ids = list(seq_ids)
        query_lens = [len(t) for t in token_ids]
        starts = [cache.num_written(s) for s in seq_ids]
        pending = [cache.num_tokens(s) - w for s, w in zip(seq_ids, starts)]
        for s, n, p in zip(seq_ids, query_lens, pending):
            if not 1 <= n <= p:
                raise ValueError(f"sequence {s} has {p} reserved tokens to compute; asked for {n} "
                                 f"(allowed: 1 to {p})")
        for s, toks in zip(seq_ids, token_ids):
            # KV computed for other tokens than the reserved ones would be published under the
            # reserved tokens' prefix key, where no later token check could catch it.
            if list(toks) != cache.pending_token_ids(s)[:len(toks)]:
                raise InvalidTokenIds(f"token_ids for sequence {s} differ from the tokens the cache reserved "
                                      "for it (cache.pending_token_ids)")
        flat = torch.tensor([t for toks in token_ids for t in toks], dtype=torch.int64)  # [N]
        positions = torch.cat([torch.arange(w, w + n) for w, n in zip(starts, query_lens)])  # [N]
        is_decode = pending == query_lens and all(n == 1 for n in query_lens)
        if is_decode:  # slot mapping, block table and lengths reach the device in one transfer
            slot_mapping, *tables = cache.step_inputs(seq_ids)  # [N], [B, max_pages], [B]
            metadata = AttentionMetadata.build(cache, seq_ids, tables=tables)
        else:
            slot_mapping = cache.slot_mapping(seq_ids, num_tokens=query_lens)  # [N]
            metadata = AttentionMetadata.build(cache, seq_ids, query_lens)
        if pending != query_lens:  # a prompt chunk: attend over the written part plus the chunk only
            kv_lens = torch.tensor([w + n for w, n in zip(starts, query_lens)], dtype=torch.int32)
            metadata = dataclasses.replace(metadata, seq_lens=kv_lens.to(metadata.seq_lens.device))
        last_rows = torch.tensor(query_lens).cumsum(0) - 1  # [B]
        return cls(flat.to(device), positions.to(device), slot_mapping, metadata, last_rows.to(device))
