"""The README's quickstart, runnable: a toy one-file decoder (random projections, no MLP) plugs the
paged cache into its own loop, and every step is checked against dense attention over the same
K/V recomputed from scratch.

    python examples/custom_decoder.py [--steps 8] [--device cpu]
"""

import argparse

import torch

from llmds_torch.attention import AttentionMetadata, paged_attention
from llmds_torch.kv import KVCacheConfig, PagedKVCache

L, HQ, HKV, D, VOCAB = 2, 4, 2, 16, 64


class ToyDecoder:
    """Embedding, per-layer Q/K/V/O projections and a residual: enough to exercise the cache."""

    def __init__(self, seed=0, device="cpu"):
        g = torch.Generator().manual_seed(seed)
        width = HQ * D
        self.embedding = torch.randn(VOCAB, width, generator=g).to(device)
        self.wq = [torch.randn(width, HQ * D, generator=g).to(device) / width**0.5 for _ in range(L)]
        self.wk = [torch.randn(width, HKV * D, generator=g).to(device) / width**0.5 for _ in range(L)]
        self.wv = [torch.randn(width, HKV * D, generator=g).to(device) / width**0.5 for _ in range(L)]
        self.head = torch.randn(width, VOCAB, generator=g).to(device)

    def embed(self, tokens):
        return self.embedding[torch.as_tensor(tokens, device=self.embedding.device)]

    def qkv(self, l, x, positions):
        t = x.shape[0]
        return ((x @ self.wq[l]).view(t, HQ, D), (x @ self.wk[l]).view(t, HKV, D), (x @ self.wv[l]).view(t, HKV, D))

    def mix(self, x, attn):
        return x + attn.reshape(x.shape[0], -1)

    def sample(self, x_last):
        return int((x_last @ self.head).argmax())


def dense_forward(model, token_ids):
    """The same model with no cache: causal attention over the whole sequence each time."""
    x = model.embed(token_ids)
    n = x.shape[0]
    for l in range(L):
        q, k, v = model.qkv(l, x, None)
        k, v = (t.repeat_interleave(HQ // HKV, dim=1) for t in (k, v))
        attn = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                                                v.transpose(0, 1), is_causal=True)
        x = model.mix(x, attn.transpose(0, 1))
    return model.sample(x[n - 1])


def main(argv=None) -> list[int]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model = ToyDecoder(device=args.device)
    prompt_ids = list(range(3, 40))

    cache = PagedKVCache(KVCacheConfig(num_layers=L, num_kv_heads=HKV, head_dim=D, page_size=16, num_pages=64,
                                       device=args.device))
    seq = cache.attach(prompt_ids)
    tokens = prompt_ids[cache.num_cached_tokens(seq):]
    generated = []
    for _ in range(args.steps):
        slots = cache.slot_mapping([seq])
        positions = torch.arange(cache.num_written(seq), cache.num_tokens(seq))
        meta = AttentionMetadata.build(cache, [seq], None if len(tokens) == 1 else [len(tokens)])
        x = model.embed(tokens)
        for l in range(L):
            q, k, v = model.qkv(l, x, positions)
            cache.write(l, slots, k, v)
            x = model.mix(x, paged_attention(q, cache.layer(l), meta))
        tokens = [model.sample(x[-1])]
        expected = dense_forward(model, prompt_ids + generated)  # the token the dense model picks
        assert tokens[0] == expected, f"paged picked {tokens[0]}, dense {expected}"
        generated += tokens
        cache.append(seq, tokens)
    print(f"generated {generated}; every step equals dense attention; cache stats: "
          f"{cache.stats()['pages_used']} pages in use")
    return generated


if __name__ == "__main__":
    main()
