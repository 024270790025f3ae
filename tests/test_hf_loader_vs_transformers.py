"""The built-in decoder loaded from folders that transformers itself saved (both config formats),
against transformers' own forward; and every config feature it does not implement refused by name."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from llmds_torch.integrations.hf_random import random_causal_lm  # noqa: E402
from llmds_torch.models.config import Llama3RopeScaling, LlamaConfig, UnsupportedArchitecture  # noqa: E402
from llmds_torch.models.hf_loader import load_hf_model  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
TOKENS = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(0)).tolist()


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _save(tmp_path, name, **overrides):
    model = random_causal_lm("llama", seed=len(name), **overrides)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def _to_v4_format(folder):
    """Rewrite config.json the way transformers 4 wrote it: top-level rope_theta and rope_scaling."""
    path = folder / "config.json"
    hf = json.loads(path.read_text())
    rope = dict(hf.pop("rope_parameters"))
    hf["rope_theta"] = rope.pop("rope_theta")
    hf["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    path.write_text(json.dumps(hf))


def _assert_same_logits(folder):
    ours = load_hf_model(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = theirs(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(ours.forward_full(TOKENS), expected, rtol=0, atol=1e-4)
    return ours


@pytest.mark.parametrize("fmt", ["v5", "v4"])
def test_rope_theta_is_read_in_both_formats(tmp_path, fmt):
    folder = _save(tmp_path, f"theta-{fmt}", rope_theta=500000.0, tie_word_embeddings=False)
    if fmt == "v4":
        _to_v4_format(folder)
    assert "rope_parameters" in json.loads((folder / "config.json").read_text()) or fmt == "v4"
    model = _assert_same_logits(folder)
    assert model.config.rope_theta == 500000.0


@pytest.mark.parametrize("fmt", ["v5", "v4"])
def test_llama3_rope_scaling_matches_transformers(tmp_path, fmt):
    folder = _save(tmp_path, f"llama3-{fmt}", rope_parameters=dict(LLAMA3))
    if fmt == "v4":
        _to_v4_format(folder)
    model = _assert_same_logits(folder)
    assert model.config.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 16)
    # the scaling really changes the model: without it the logits differ
    plain = load_hf_model(folder)
    object.__setattr__(plain.config, "rope_scaling", None)
    assert (plain.forward_full(TOKENS) - model.forward_full(TOKENS)).abs().max() > 1e-2


def test_tied_embeddings_match_transformers(tmp_path):
    model = _assert_same_logits(_save(tmp_path, "tied", tie_word_embeddings=True))
    assert model.lm_head is None


def test_old_rope_scaling_type_key_is_read():
    hf = LlamaConfig().to_hf_config()
    hf["rope_scaling"] = {"type": "llama3", **{k: v for k, v in LLAMA3.items() if k != "rope_type"}}
    assert LlamaConfig.from_hf_config(hf).rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 16)
    assert LlamaConfig.from_hf_config({**hf, "rope_scaling": None}).rope_scaling is None


@pytest.mark.parametrize("overrides,match", [
    (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}), "rope_type='dynamic'"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}), "rope_type='linear'"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0,
                           "original_max_position_embeddings": 64}), "rope_type='yarn'"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
])
def test_unimplemented_features_are_refused_by_name(tmp_path, overrides, match):
    folder = _save(tmp_path, "refused", **overrides)
    with pytest.raises(UnsupportedArchitecture, match=match):
        load_hf_model(folder)


def test_v4_format_with_unknown_rope_type_is_refused():
    hf = {**LlamaConfig().to_hf_config(), "rope_scaling": {"rope_type": "su", "factor": 2.0}}
    with pytest.raises(UnsupportedArchitecture, match="rope_type='su'"):
        LlamaConfig.from_hf_config(hf)
