"""The decoder's pieces and its dense no-cache forward, checked against plain-loop formulas."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from llmds_torch.errors import ConfigError, ContextWindowExceeded, InvalidTokenIds, LLMDSError
from llmds_torch.models.config import LlamaConfig, UnsupportedArchitecture
from llmds_torch.models.layers import apply_rope, dense_causal_attention, rms_norm, rope_cos_sin
from llmds_torch.models.llama import LlamaModel

TINY = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position=128)


# ---------------------------------------------------------------------------- config

def test_config_derives_head_dim_and_round_trips_hf():
    assert TINY.head_dim == 16 and TINY.queries_per_kv_head == 2
    assert LlamaConfig.from_hf_config(TINY.to_hf_config()) == TINY


@pytest.mark.parametrize("kwargs", [
    dict(num_heads=4, num_kv_heads=3),
    dict(hidden_size=60, num_heads=8),
    dict(head_dim=15),
    dict(num_layers=0),
    dict(vocab_size=2.5),
    dict(rope_theta=0.0),
    dict(rms_norm_eps=-1.0),
])
def test_config_rejects_bad_sizes(kwargs):
    with pytest.raises(ConfigError):
        LlamaConfig(**kwargs)


@pytest.mark.parametrize("change", [
    {"architectures": ["MistralForCausalLM"], "model_type": "mistral"},
    {"architectures": []},
    {"attention_bias": True},
    {"mlp_bias": True},
    {"rope_scaling": {"rope_type": "yarn", "factor": 8.0}},  # llama3 scaling is implemented
    {"hidden_act": "gelu"},
])
def test_from_hf_config_names_unsupported_architecture(change):
    hf = {**TINY.to_hf_config(), **change}
    with pytest.raises(UnsupportedArchitecture) as info:
        LlamaConfig.from_hf_config(hf)
    assert isinstance(info.value, LLMDSError) and isinstance(info.value, ValueError)
    assert "supported" in str(info.value)


def test_from_hf_config_defaults_kv_heads_to_heads():
    hf = TINY.to_hf_config()
    del hf["num_key_value_heads"], hf["head_dim"]
    cfg = LlamaConfig.from_hf_config(hf)
    assert cfg.num_kv_heads == cfg.num_heads == 4 and cfg.head_dim == 16


def test_from_hf_config_names_missing_sizes():
    hf = TINY.to_hf_config()
    del hf["intermediate_size"]
    with pytest.raises(ConfigError, match="intermediate_size"):
        LlamaConfig.from_hf_config(hf)


# ---------------------------------------------------------------------------- layers

def test_rms_norm_matches_formula():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 64, generator=gen)
    w = torch.randn(64, generator=gen)
    expect = torch.empty_like(x)
    for idx in torch.cartesian_prod(torch.arange(5), torch.arange(3)):
        row = x[idx[0], idx[1]]
        expect[idx[0], idx[1]] = w * row / math.sqrt(float((row * row).mean()) + 1e-6)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), expect, rtol=1e-5, atol=1e-5)


def _rope_loop(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate pair (i, i + D/2) by angle pos * theta^(-2i/D), one scalar at a time."""
    t, h, d = x.shape
    out = torch.empty_like(x)
    for ti in range(t):
        for hi in range(h):
            for i in range(d // 2):
                angle = float(positions[ti]) * theta ** (-2 * i / d)
                a, b = float(x[ti, hi, i]), float(x[ti, hi, i + d // 2])
                out[ti, hi, i] = a * math.cos(angle) - b * math.sin(angle)
                out[ti, hi, i + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def test_rope_matches_pairwise_rotation():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 2, 8, generator=gen)
    positions = torch.tensor([0, 1, 5, 17, 100, 1023])
    cos, sin = rope_cos_sin(positions, 8, 10000.0, torch.float32)
    torch.testing.assert_close(apply_rope(x, cos, sin), _rope_loop(x, positions, 10000.0),
                               rtol=1e-4, atol=1e-4)


def test_rope_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 16, generator=gen), torch.randn(1, 1, 16, generator=gen)

    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([m]), 16, 500.0, torch.float32)
        ck, sk = rope_cos_sin(torch.tensor([n]), 16, 500.0, torch.float32)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score(7, 3) == pytest.approx(score(24, 20), rel=1e-4, abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


def test_dense_causal_attention_matches_sdpa():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(9, 4, 16, generator=gen)
    k, v = torch.randn(9, 2, 16, generator=gen), torch.randn(9, 2, 16, generator=gen)
    expect = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(2, 1).transpose(0, 1),
        v.repeat_interleave(2, 1).transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(dense_causal_attention(q, k, v), expect, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- model

def _naive_forward(model: LlamaModel, tokens: list[int]) -> torch.Tensor:
    """The decoder written out token by token and head by head, sharing nothing but the weights."""
    cfg = model.config
    d = cfg.head_dim
    group = cfg.num_heads // cfg.num_kv_heads

    def norm(x, w):
        return w * x / torch.sqrt((x * x).mean() + cfg.rms_norm_eps)

    xs = [model.embed_tokens[t].clone() for t in tokens]
    for layer in model.layers:
        keys, values, new_xs = [], [], []
        for pos, x in enumerate(xs):
            h = norm(x, layer.input_layernorm)
            q = (layer.q_proj @ h).view(cfg.num_heads, d)
            k = (layer.k_proj @ h).view(cfg.num_kv_heads, d)
            v = (layer.v_proj @ h).view(cfg.num_kv_heads, d)
            q = _rope_vec(q, pos, cfg.rope_theta)
            k = _rope_vec(k, pos, cfg.rope_theta)
            keys.append(k)
            values.append(v)
            heads = []
            for head in range(cfg.num_heads):
                kv = head // group
                scores = torch.stack([q[head] @ keys[j][kv] for j in range(pos + 1)]) / math.sqrt(d)
                probs = torch.softmax(scores, dim=0)
                heads.append(sum(probs[j] * values[j][kv] for j in range(pos + 1)))
            x = x + layer.o_proj @ torch.cat(heads)
            h = norm(x, layer.post_attention_layernorm)
            x = x + layer.down_proj @ (F.silu(layer.gate_proj @ h) * (layer.up_proj @ h))
            new_xs.append(x)
        xs = new_xs
    return torch.stack([model.output_weight @ norm(x, model.norm) for x in xs])


def _rope_vec(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    d = x.shape[-1]
    i = torch.arange(d // 2, dtype=torch.float64)
    angle = (pos * theta ** (-2 * i / d)).float()
    a, b = x[:, : d // 2], x[:, d // 2:]
    return torch.cat((a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()), dim=-1)


@pytest.mark.parametrize("tie", [False, True])
def test_forward_full_matches_token_by_token_loop(tie):
    cfg = dataclasses.replace(TINY, tie_word_embeddings=tie)
    model = LlamaModel(cfg, seed=5)
    tokens = torch.randint(0, 256, (11,), generator=torch.Generator().manual_seed(6)).tolist()
    torch.testing.assert_close(model.forward_full(tokens), _naive_forward(model, tokens),
                               rtol=1e-4, atol=1e-4)


def test_forward_full_is_causal_and_seeded():
    model = LlamaModel(TINY, seed=7)
    tokens = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(8)).tolist()
    full = model.forward_full(tokens)
    torch.testing.assert_close(model.forward_full(tokens[:9]), full[:9], rtol=1e-5, atol=1e-5)
    assert torch.equal(LlamaModel(TINY, seed=7).forward_full(tokens), full)
    assert not torch.allclose(LlamaModel(TINY, seed=8).forward_full(tokens), full)
    # random weights spread the logits out, so greedy decoding has no near-ties
    assert float(full.std()) > 0.3


def test_forward_full_rejects_bad_tokens_and_lengths():
    model = LlamaModel(TINY, seed=0)
    with pytest.raises(InvalidTokenIds):
        model.forward_full([1, 256])
    with pytest.raises(InvalidTokenIds):
        model.forward_full([-1])
    with pytest.raises(InvalidTokenIds):
        model.forward_full(torch.tensor([1.0, 2.0]))
    with pytest.raises(InvalidTokenIds):
        model.forward_full([])
    with pytest.raises(ContextWindowExceeded):
        model.forward_full([1] * 129)
