"""Read a ``LlamaForCausalLM`` from a LOCAL Hugging Face-format folder: ``config.json`` plus one or
more ``*.safetensors`` files. Nothing is downloaded.

Needs the ``safetensors`` package (the ``hf`` extra); it is imported only when a
folder is actually read.
"""

import json
import re
from pathlib import Path

import torch

from llmds_torch.install_hint import install_hint
from llmds_torch.models.config import LlamaConfig
from llmds_torch.models.errors import CheckpointError, MissingOptionalDependency
from llmds_torch.models.llama import LlamaModel

# Hugging Face name -> this model's parameter name; ``{i}`` is the layer index.
_HF_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm",
    "self_attn.q_proj.weight": "q_proj",
    "self_attn.k_proj.weight": "k_proj",
    "self_attn.v_proj.weight": "v_proj",
    "self_attn.o_proj.weight": "o_proj",
    "post_attention_layernorm.weight": "post_attention_layernorm",
    "mlp.gate_proj.weight": "gate_proj",
    "mlp.up_proj.weight": "up_proj",
    "mlp.down_proj.weight": "down_proj",
}
_HF_TOP_NAMES = {
    "model.embed_tokens.weight": "embed_tokens",
    "model.norm.weight": "norm",
    "lm_head.weight": "lm_head",
}
_LAYER_PATTERN = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Buffers some older checkpoints carry; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_name_to_param(hf_name: str) -> str | None:
    """Map a ``LlamaForCausalLM`` weight name to this model's parameter name.

    Returns ``None`` for buffers that are recomputed (``rotary_emb.inv_freq``).

    Raises
    ------
    CheckpointError
        The name is not a Llama weight.
    """
    if hf_name.endswith(_IGNORED_SUFFIXES):
        return None
    if hf_name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[hf_name]
    match = _LAYER_PATTERN.fullmatch(hf_name)
    if match and match.group(2) in _HF_LAYER_NAMES:
        return f"layers.{match.group(1)}.{_HF_LAYER_NAMES[match.group(2)]}"
    raise CheckpointError(f"unexpected weight {hf_name!r}: not a LlamaForCausalLM weight")


def _import_safetensors():
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise MissingOptionalDependency(
            f"reading Hugging Face weights needs the safetensors package: {install_hint('hf')}") from exc
    return load_file


def load_hf_config(folder: str | Path) -> LlamaConfig:
    """Read ``folder/config.json`` into a :class:`LlamaConfig`.

    Raises
    ------
    CheckpointError
        No ``config.json`` in the folder, or it is not valid JSON.
    UnsupportedArchitecture
        The config is not a plain ``LlamaForCausalLM``.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; a Hugging Face folder needs config.json")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    return LlamaConfig.from_hf_config(hf)


def load_hf_model(folder: str | Path, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> LlamaModel:
    """Build a :class:`LlamaModel` from a local Hugging Face-format folder.

    Parameters
    ----------
    folder : path
        Holds ``config.json`` and ``*.safetensors`` (one file or several shards).
    dtype : torch.dtype
        Dtype the weights are cast to.
    device : str or torch.device

    Raises
    ------
    MissingOptionalDependency
        ``safetensors`` is not installed.
    CheckpointError
        No safetensors files, a weight missing, an unexpected weight, or a shape mismatch.
    UnsupportedArchitecture
        The config is not a plain ``LlamaForCausalLM``.
    """
    load_file = _import_safetensors()
    config = load_hf_config(folder)
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} holds no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))

    model = LlamaModel(config, seed=None, dtype=dtype, device="cpu")
    params = dict(model.named_parameters())
    loaded: dict[str, torch.Tensor] = {}
    for hf_name, tensor in tensors.items():
        name = hf_name_to_param(hf_name)
        if name is None or (name == "lm_head" and config.tie_word_embeddings):
            continue
        if name not in params:
            raise CheckpointError(f"weight {hf_name!r} does not fit a model with "
                                  f"num_layers={config.num_layers}")
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(f"weight {hf_name!r} has shape {tuple(tensor.shape)}; "
                                  f"config.json implies {tuple(params[name].shape)}")
        loaded[name] = tensor
    missing = sorted(set(params) - set(loaded))
    if missing:
        raise CheckpointError(f"{folder} lacks {len(missing)} weight(s), e.g. {missing[:3]}")
    for name, tensor in loaded.items():
        params[name].data.copy_(tensor.to(dtype))
    return model.to(device)
