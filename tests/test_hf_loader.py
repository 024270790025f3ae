"""Reading a LlamaForCausalLM from a local Hugging Face-format folder written here with safetensors."""

import builtins
import re
import dataclasses
import json

import pytest
import torch

from llmds_torch.models.config import LlamaConfig, UnsupportedArchitecture
from llmds_torch.models.hf_loader import (CheckpointError, MissingOptionalDependency, hf_name_to_param,
                                          load_hf_config, load_hf_model)
from llmds_torch.models.llama import LlamaModel

safetensors_torch = pytest.importorskip("safetensors.torch")

CFG = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position=64, rope_theta=500.0, rms_norm_eps=1e-5)


def _hf_weights(cfg: LlamaConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under the names Hugging Face's LlamaForCausalLM uses (written out by hand)."""
    gen = torch.Generator().manual_seed(seed)
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size

    def rand(*shape):
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    w = {"model.embed_tokens.weight": torch.randn(cfg.vocab_size, h, generator=gen),
         "model.norm.weight": 1 + 0.1 * torch.randn(h, generator=gen)}
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = rand(cfg.vocab_size, h)
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
        w[p + "self_attn.q_proj.weight"] = rand(cfg.num_heads * d, h)
        w[p + "self_attn.k_proj.weight"] = rand(cfg.num_kv_heads * d, h)
        w[p + "self_attn.v_proj.weight"] = rand(cfg.num_kv_heads * d, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, cfg.num_heads * d)
        w[p + "mlp.gate_proj.weight"] = rand(i, h)
        w[p + "mlp.up_proj.weight"] = rand(i, h)
        w[p + "mlp.down_proj.weight"] = rand(h, i)
    return w


def _write_folder(path, cfg, weights, shards=1):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_hf_config()))
    names = sorted(weights)
    for s in range(shards):
        part = {n: weights[n].contiguous() for n in names[s::shards]}
        safetensors_torch.save_file(part, str(path / f"model-{s:05d}-of-{shards:05d}.safetensors"))
    return path


def _model_with(cfg, weights) -> LlamaModel:
    """The same weights put into the model directly, parameter by parameter."""
    model = LlamaModel(cfg, seed=123)
    model.embed_tokens.data.copy_(weights["model.embed_tokens.weight"])
    model.norm.data.copy_(weights["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        model.lm_head.data.copy_(weights["lm_head.weight"])
    for idx, layer in enumerate(model.layers):
        p = f"model.layers.{idx}."
        layer.input_layernorm.data.copy_(weights[p + "input_layernorm.weight"])
        layer.post_attention_layernorm.data.copy_(weights[p + "post_attention_layernorm.weight"])
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(layer, name).data.copy_(weights[p + f"self_attn.{name}.weight"])
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer, name).data.copy_(weights[p + f"mlp.{name}.weight"])
    return model


@pytest.mark.parametrize("tie,shards", [(False, 1), (True, 1), (False, 3)])
def test_loaded_model_matches_weights_put_in_directly(tmp_path, tie, shards):
    cfg = dataclasses.replace(CFG, tie_word_embeddings=tie)
    weights = _hf_weights(cfg, seed=1)
    folder = _write_folder(tmp_path / "llama", cfg, weights, shards=shards)
    loaded = load_hf_model(folder)
    assert loaded.config == cfg
    direct = _model_with(cfg, weights)
    tokens = torch.randint(0, 256, (13,), generator=torch.Generator().manual_seed(2)).tolist()
    torch.testing.assert_close(loaded.forward_full(tokens), direct.forward_full(tokens), rtol=0, atol=0)
    # and the weights really came from the folder, not from a seed
    assert not torch.allclose(LlamaModel(cfg, seed=0).forward_full(tokens), direct.forward_full(tokens))


def test_bf16_checkpoint_is_cast_to_requested_dtype(tmp_path):
    weights = {k: v.to(torch.bfloat16) for k, v in _hf_weights(CFG, seed=3).items()}
    folder = _write_folder(tmp_path / "bf16", CFG, weights)
    model = load_hf_model(folder, dtype=torch.float32)
    assert model.dtype == torch.float32
    assert torch.equal(model.embed_tokens, weights["model.embed_tokens.weight"].float())


def test_old_rotary_buffers_are_ignored(tmp_path):
    weights = _hf_weights(CFG, seed=4)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(8) + 0.1
    load_hf_model(_write_folder(tmp_path / "old", CFG, weights))


def test_unsupported_architecture_is_named(tmp_path):
    folder = _write_folder(tmp_path / "gpt2", CFG, _hf_weights(CFG, seed=5))
    (folder / "config.json").write_text(json.dumps({**CFG.to_hf_config(), "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedArchitecture, match="GPT2LMHeadModel"):
        load_hf_model(folder)


def test_missing_weight_unexpected_weight_and_bad_shape(tmp_path):
    weights = _hf_weights(CFG, seed=6)
    missing = dict(weights)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match="lacks 1 weight"):
        load_hf_model(_write_folder(tmp_path / "missing", CFG, missing))
    extra = {**weights, "model.layers.0.self_attn.q_norm.weight": torch.rand(16) + 0.5}
    with pytest.raises(CheckpointError, match="q_norm"):
        load_hf_model(_write_folder(tmp_path / "extra", CFG, extra))
    deep = {**weights, "model.layers.7.mlp.up_proj.weight": weights["model.layers.1.mlp.up_proj.weight"].clone()}
    with pytest.raises(CheckpointError, match="num_layers=2"):
        load_hf_model(_write_folder(tmp_path / "deep", CFG, deep))
    bad = {**weights, "model.norm.weight": torch.rand(63) + 0.5}
    with pytest.raises(CheckpointError, match="shape"):
        load_hf_model(_write_folder(tmp_path / "shape", CFG, bad))


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_hf_config()))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_hf_model(tmp_path)


def test_name_mapping():
    assert hf_name_to_param("model.layers.3.self_attn.k_proj.weight") == "layers.3.k_proj"
    assert hf_name_to_param("lm_head.weight") == "lm_head"
    assert hf_name_to_param("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    with pytest.raises(CheckpointError):
        hf_name_to_param("transformer.h.0.attn.c_attn.weight")


def test_missing_safetensors_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError("No module named 'safetensors'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    from llmds_torch.install_hint import install_hint

    assert "[hf]" in install_hint("hf")
    with pytest.raises(MissingOptionalDependency, match=re.escape(install_hint("hf"))):
        load_hf_model(tmp_path)
