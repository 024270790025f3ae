"""llmds_torch.attention on a real PagedKVCache: both call forms, decode and prefill over a
cached prefix, against dense attention over the K/V that was written."""

import pytest
import torch

from llmds_torch.attention import AttentionInputError, AttentionMetadata, paged_attention
from llmds_torch.errors import LLMDSError
from llmds_torch.kv import KVCacheConfig, PagedKVCache

NUM_LAYERS, NUM_KV_HEADS, NUM_Q_HEADS, HEAD_DIM, PAGE_SIZE = 2, 2, 4, 16, 4


def dense_attention(q, k, v, query_positions, scale=HEAD_DIM ** -0.5, window=None, softcap=None):
    """q ``[n, Hq, D]`` at ``query_positions`` over k, v ``[seq_len, Hkv, D]``, causal (the query at
    position i sees keys ``i - window < j <= i``), float64."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, 1)
    v = v.double().repeat_interleave(group, 1)
    out = torch.empty(q.shape, dtype=torch.float64)
    for row, position in enumerate(query_positions):
        first = 0 if window is None else max(0, position - window + 1)
        scores = torch.einsum("hd,nhd->hn", q[row].double(), k[first: position + 1]) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        out[row] = torch.einsum("hn,nhd->hd", torch.softmax(scores, -1), v[first: position + 1])
    return out


class Model:
    """Seeded random K/V per (layer, sequence, position), so the oracle knows what was written."""

    def __init__(self):
        self.cache = PagedKVCache(KVCacheConfig(num_layers=NUM_LAYERS, num_kv_heads=NUM_KV_HEADS,
                                                head_dim=HEAD_DIM, page_size=PAGE_SIZE, num_pages=64))
        self.gen = torch.Generator().manual_seed(0)
        self.kv = {}                                   # (layer, seq) -> (k, v) [num_tokens, Hkv, D]

    def write_pending(self, seq_ids):
        slots = self.cache.slot_mapping(seq_ids)
        for layer in range(NUM_LAYERS):
            ks, vs = [], []
            for seq in seq_ids:
                pending = self.cache.num_tokens(seq) - self.cache.num_written(seq)
                k = torch.randn(pending, NUM_KV_HEADS, HEAD_DIM, generator=self.gen)
                v = torch.randn(pending, NUM_KV_HEADS, HEAD_DIM, generator=self.gen)
                old_k, old_v = self.kv.get((layer, seq), (k[:0], v[:0]))
                self.kv[layer, seq] = (torch.cat([old_k, k]), torch.cat([old_v, v]))
                ks.append(k)
                vs.append(v)
            self.cache.write(layer, slots, torch.cat(ks), torch.cat(vs))


def test_prefill_over_a_shared_prefix_then_decode_both_call_forms():
    model = Model()
    cache = model.cache
    system = list(range(100, 109))                          # 2 full pages + 1 token
    first = cache.attach(system + [1, 2, 3])
    model.write_pending([first])
    second = cache.attach(system + [7, 8])                  # reuses the 2 full pages
    assert cache.num_cached_tokens(second) == 8
    model.kv[0, second] = tuple(t[:8] for t in model.kv[0, first])
    model.kv[1, second] = tuple(t[:8] for t in model.kv[1, first])
    model.write_pending([second])

    # prefill of the second prompt's 3 uncached tokens, over its shared prefix
    query_lens = [cache.num_tokens(second) - cache.num_cached_tokens(second)]
    metadata = AttentionMetadata.build(cache, [second], query_lens=query_lens)
    q = torch.randn(3, NUM_Q_HEADS, HEAD_DIM, generator=model.gen)
    positions = [8, 9, 10]
    for layer in range(NUM_LAYERS):
        expected = dense_attention(q, *model.kv[layer, second], positions)
        out = paged_attention(q, cache.layer(layer), metadata)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
        direct = paged_attention(q, cache, layer, [second], query_start_loc=metadata.query_start_loc)
        torch.testing.assert_close(direct, out)

    # one decode step for both sequences
    cache.append_batch([first, second], [5, 6])
    model.write_pending([first, second])
    metadata = AttentionMetadata.build(cache, [first, second])
    assert metadata.is_decode and metadata.num_query_tokens == 2
    q = torch.randn(2, NUM_Q_HEADS, HEAD_DIM, generator=model.gen)
    for layer in range(NUM_LAYERS):
        for row, seq in enumerate([first, second]):
            k, v = model.kv[layer, seq]
            expected = dense_attention(q[row: row + 1], k, v, [k.shape[0] - 1])
            out = paged_attention(q, cache.layer(layer), metadata)
            torch.testing.assert_close(out[row: row + 1].double(), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(paged_attention(q, cache, layer, [first, second]), out)


def test_bad_arguments_are_named_errors():
    model = Model()
    seq = model.cache.attach([1, 2, 3])
    model.write_pending([seq])
    with pytest.raises(AttentionInputError, match="query length must lie in \\[0, 3\\]"):
        AttentionMetadata.build(model.cache, [seq], query_lens=[4])
    with pytest.raises(AttentionInputError, match="1 entries for 2 sequences"):
        AttentionMetadata.build(model.cache, [seq, seq], query_lens=[1])
    metadata = AttentionMetadata.build(model.cache, [seq], query_lens=[3])
    with pytest.raises(AttentionInputError, match="q must be \\[3, num_q_heads, head_dim\\]"):
        paged_attention(torch.randn(2, NUM_Q_HEADS, HEAD_DIM), model.cache.layer(0), metadata)
    with pytest.raises(AttentionInputError, match="seq_ids is missing"):
        paged_attention(torch.randn(1, NUM_Q_HEADS, HEAD_DIM), model.cache, 0)
    with pytest.raises(LLMDSError):
        paged_attention(torch.randn(3, NUM_Q_HEADS, HEAD_DIM), model.cache.layer(0), metadata, [seq])
    with pytest.raises(ValueError, match="positive multiple of num_kv_heads"):
        paged_attention(torch.randn(1, 3, HEAD_DIM), model.cache, 0, [seq])


@pytest.mark.parametrize("window,softcap", [(3, None), (6, 2.0), (None, 2.0), (100, None)])
def test_window_softcap_and_scale_in_both_call_forms(window, softcap):
    model = Model()
    cache = model.cache
    system = list(range(100, 109))
    first = cache.attach(system + [1, 2, 3])
    model.write_pending([first])
    second = cache.attach(system + [7, 8, 9, 10])             # 8 cached tokens, 5 new
    for layer in range(NUM_LAYERS):
        model.kv[layer, second] = tuple(t[:8] for t in model.kv[layer, first])
    model.write_pending([second])
    options = dict(scale=0.7, sliding_window=window, softcap=softcap)

    metadata = AttentionMetadata.build(cache, [second], query_lens=[5])
    q = torch.randn(5, NUM_Q_HEADS, HEAD_DIM, generator=model.gen)
    for layer in range(NUM_LAYERS):
        expected = dense_attention(q, *model.kv[layer, second], range(8, 13), 0.7, window, softcap)
        out = paged_attention(q, cache.layer(layer), metadata, **options)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
        direct = paged_attention(q, cache, layer, [second], query_start_loc=metadata.query_start_loc, **options)
        torch.testing.assert_close(direct, out)

    cache.append_batch([first, second], [5, 6])
    model.write_pending([first, second])
    metadata = AttentionMetadata.build(cache, [first, second])
    q = torch.randn(2, NUM_Q_HEADS, HEAD_DIM, generator=model.gen)
    for layer in range(NUM_LAYERS):
        out = paged_attention(q, cache.layer(layer), metadata, **options)
        for row, seq in enumerate([first, second]):
            k, v = model.kv[layer, seq]
            expected = dense_attention(q[row: row + 1], k, v, [k.shape[0] - 1], 0.7, window, softcap)
            torch.testing.assert_close(out[row: row + 1].double(), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(paged_attention(q, cache, layer, [first, second], **options), out)
