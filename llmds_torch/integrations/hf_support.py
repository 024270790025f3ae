"""Which Hugging Face decoders run exactly on the paged cache, read from their config alone (before
any weight is loaded), and what each asks of the attention kernels.

A model runs when all of these hold; anything else is refused with :class:`UnsupportedArchitecture`
naming the feature:

- its ``model_type`` is one whose whole cross-token state lives in attention K/V and whose layers
  dispatch attention through transformers' ``AttentionInterface`` (:data:`SUPPORTED_MODEL_TYPES`;
  each is tested token for token against transformers);
- it is a decoder-only causal LM (not an encoder-decoder, not bidirectional);
- its RoPE depends on positions only (:data:`SUPPORTED_ROPE_TYPES`): ``dynamic`` and ``longrope``
  rescale by the longest sequence of a batch, which packing several sequences into one row would change;
- it is not quantized (the pool holds float16 / bfloat16 / float32);
- every attention feature it uses is implemented by the kernels: causal attention with a custom
  scale, grouped-query heads, per-layer sliding windows, attention-logit soft-capping. Layers pass
  these to the attention call themselves (``scaling``, ``sliding_window``, ``softcap``).
"""

from dataclasses import dataclass

import torch

from llmds_torch.errors import ConfigError
from llmds_torch.kv.config import KV_DTYPES
from llmds_torch.models.config import UnsupportedArchitecture

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "granite",
                         "starcoder2", "cohere")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True, slots=True)
class AttentionNeeds:
    """What a model's attention asks of the kernels.

    Attributes
    ----------
    num_layers, num_kv_heads, head_dim : the KV cache's shape
    vocab_size : token ids lie in ``[0, vocab_size)``
    max_context_len : the longest sequence the model's positions allow
    windows : per layer, its sliding window W (a query at i sees keys i - W < j <= i) or None
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context_len: int
    windows: tuple[int | None, ...]


def _rope_types(config) -> list[str]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if params and all(isinstance(v, dict) for v in params.values()):  # one entry per layer type
        return [p.get("rope_type", p.get("type", "default")) for p in params.values()]
    return [params.get("rope_type", params.get("type", "default"))]


def _layer_windows(config, num_layers: int) -> tuple[int | None, ...]:
    window = getattr(config, "sliding_window", None)
    if window is None:
        return (None,) * num_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:  # Mistral: every layer slides
        return (int(window),) * num_layers
    return tuple(int(window) if t == "sliding_attention" else None for t in layer_types)


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def check_dtype(dtype: torch.dtype) -> None:
    """Raise ``ConfigError`` unless the KV pool can hold ``dtype``."""
    if dtype not in KV_DTYPES:
        raise ConfigError(f"dtype {dtype} cannot be held by the KV pool; allowed: "
                          + ", ".join(str(d) for d in KV_DTYPES))


def check_supported(config, class_name: str | None = None) -> AttentionNeeds:
    """Check a transformers ``PretrainedConfig`` (and the model class name, when known).

    Returns
    -------
    AttentionNeeds

    Raises
    ------
    UnsupportedArchitecture
        Not a decoder-only causal LM, an unsupported ``model_type``, or a feature the kernels lack
        (the message names it and says what is supported).
    """
    model_type = getattr(config, "model_type", None)
    architectures = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitecture(f"model_type={model_type!r} is an encoder-decoder; only decoder-only "
                                      "causal LMs run on the paged cache")
    names = [class_name] if class_name else architectures
    if names and not any(name in _causal_lm_classes() for name in names):
        raise UnsupportedArchitecture(f"{', '.join(names)} is not a causal LM (a class AutoModelForCausalLM "
                                      "builds); only decoder-only causal LMs run on the paged cache")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(f"model_type={model_type!r} ({', '.join(names) or 'no architectures'}) "
                                      f"is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    problems = []
    if not getattr(config, "is_causal", True):
        problems.append("is_causal=False (bidirectional attention)")
    for rope_type in _rope_types(config):
        if rope_type not in SUPPORTED_ROPE_TYPES:
            problems.append(f"rope_type={rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    if getattr(config, "quantization_config", None) is not None:
        problems.append("quantization_config (quantized weights)")
    if problems:
        raise UnsupportedArchitecture(f"{model_type} model uses features the paged kernels do not implement: "
                                      + "; ".join(problems))
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    num_layers = config.num_hidden_layers
    return AttentionNeeds(num_layers=num_layers,
                          num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
                          head_dim=head_dim, vocab_size=config.vocab_size,
                          max_context_len=config.max_position_embeddings,
                          windows=_layer_windows(config, num_layers))
