"""The shape of a Llama-style decoder: a frozen, validated dataclass, readable from a Hugging Face
``config.json`` dictionary as transformers 4 writes it (``rope_theta``, ``rope_scaling``) and as
transformers 5 writes it (``rope_parameters``)."""

from dataclasses import dataclass

from llmds_torch.errors import ConfigError
from llmds_torch.models.errors import UnsupportedArchitecture

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


@dataclass(frozen=True, slots=True)
class Llama3RopeScaling:
    """Llama 3.1's RoPE frequency scaling (``rope_type: "llama3"``): wavelengths longer than
    ``original_max_position / low_freq_factor`` are stretched by ``factor``, shorter than
    ``original_max_position / high_freq_factor`` kept, and those between interpolated smoothly."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position: int

    def __post_init__(self) -> None:
        if not (self.factor > 0 and 0 < self.low_freq_factor < self.high_freq_factor
                and self.original_max_position >= 1):
            raise ConfigError(f"llama3 rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                              f"original_max_position_embeddings >= 1, got {self}")

    def to_hf(self) -> dict:
        return {"rope_type": "llama3", "factor": self.factor, "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position}


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    """Sizes of a Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU).

    Parameters
    ----------
    vocab_size : int
        Number of token ids; the embedding is ``[vocab_size, hidden_size]``.
    hidden_size : int
        Width of the residual stream.
    intermediate_size : int
        Width of the SwiGLU feed-forward layer.
    num_layers : int
        Number of decoder layers.
    num_heads : int
        Query heads per layer.
    num_kv_heads : int
        Key/value heads per layer; must divide ``num_heads`` (grouped-query attention).
    head_dim : int
        Width of one head; even, because RoPE rotates pairs. ``None`` means
        ``hidden_size // num_heads``.
    rope_theta : float
        RoPE base frequency.
    rms_norm_eps : float
        Epsilon inside RMSNorm's square root.
    max_position : int
        Longest sequence (prompt plus generated tokens) the model accepts.
    tie_word_embeddings : bool
        When true the output projection reuses the input embedding.
    rope_scaling : Llama3RopeScaling or None
        Llama 3.1's frequency scaling; ``None`` for plain RoPE.
    """

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position: int = 2048
    tie_word_embeddings: bool = False
    rope_scaling: Llama3RopeScaling | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_position"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                                  f"({self.num_heads}) when head_dim is not given")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 2 \
                or self.head_dim % 2:
            raise ConfigError(f"head_dim must be an even int >= 2 (RoPE rotates pairs), got {self.head_dim!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                              f"({self.num_kv_heads}) for grouped-query attention")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, Llama3RopeScaling):
            raise ConfigError(f"rope_scaling must be a Llama3RopeScaling or None, got {self.rope_scaling!r}")

    @property
    def queries_per_kv_head(self) -> int:
        """How many query heads share one key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_config(cls, hf: dict) -> "LlamaConfig":
        """Read a Hugging Face ``config.json`` dictionary of a ``LlamaForCausalLM``, written by
        transformers 4 (``rope_theta``, ``rope_scaling``) or 5 (``rope_parameters``).

        Raises
        ------
        UnsupportedArchitecture
            The architecture is not Llama, or it uses a feature this decoder does not implement
            (attention or MLP biases, a RoPE type other than default and llama3, partial rotary
            dimensions, an activation other than SiLU).
        ConfigError
            A size is missing or invalid.
        """
        if not isinstance(hf, dict):
            raise ConfigError(f"from_hf_config needs a dict parsed from config.json, got {type(hf).__name__}")
        architectures = hf.get("architectures") or []
        if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
            model_type = hf.get("model_type")
            raise UnsupportedArchitecture(
                f"architectures={architectures!r} (model_type={model_type!r}) is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        rope = _rope_settings(hf)
        unsupported = []
        if hf.get("attention_bias", False):
            unsupported.append("attention_bias=true")
        if hf.get("mlp_bias", False):
            unsupported.append("mlp_bias=true")
        if rope["rope_type"] not in ("default", "llama3"):
            unsupported.append(f"rope_type={rope['rope_type']!r}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            unsupported.append(f"partial_rotary_factor={rope['partial_rotary_factor']!r}")
        if hf.get("hidden_act", "silu") != "silu":
            unsupported.append(f"hidden_act={hf['hidden_act']!r}")
        if hf.get("pretraining_tp", 1) != 1:
            unsupported.append(f"pretraining_tp={hf['pretraining_tp']!r}")
        if unsupported:
            raise UnsupportedArchitecture("this LlamaForCausalLM uses features the decoder does not "
                                          "implement: " + ", ".join(unsupported)
                                          + "; supported: no biases, rope_type 'default' or 'llama3', "
                                          "hidden_act='silu'")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ConfigError(f"config.json lacks {', '.join(missing)}")
        scaling = None
        if rope["rope_type"] == "llama3":
            try:
                scaling = Llama3RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]),
                                            float(rope["high_freq_factor"]),
                                            int(rope["original_max_position_embeddings"]))
            except KeyError as exc:
                raise ConfigError(f"llama3 rope scaling lacks {exc.args[0]}") from None
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_scaling=scaling,
        )

    def to_hf_config(self) -> dict:
        """The ``config.json`` dictionary of a ``LlamaForCausalLM`` with these sizes."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rope_scaling": None if self.rope_scaling is None else self.rope_scaling.to_hf(),
        }


def _rope_settings(hf: dict) -> dict:
    """One dictionary of RoPE settings (``rope_type``, ``rope_theta``, scaling fields) from either
    format: transformers 5's ``rope_parameters``, or transformers 4's top-level ``rope_theta`` and
    optional ``rope_scaling`` (whose type key was ``type`` in older files)."""
    params = hf.get("rope_parameters")
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
        if "rope_theta" in hf:
            params["rope_theta"] = hf["rope_theta"]
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise UnsupportedArchitecture(f"rope settings {params!r} are not one flat dictionary (per-layer-type "
                                      "RoPE is not supported)")
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.pop("type", "default"))
    return params


__all__ = ["Llama3RopeScaling", "LlamaConfig", "UnsupportedArchitecture", "SUPPORTED_ARCHITECTURES"]
