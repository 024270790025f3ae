"""Random-initialised Hugging Face checkpoints of each supported architecture, saved with
``save_pretrained``: for tests, examples and benchmarks that need a real folder and no download.

Every weight is random: transformers initialises biases to zero and norm weights to one, which
would hide a path that ignores them, so those are redrawn too. Weights are drawn with a larger
spread than training initialisations use, so that logits are spread out and greedy decoding
stays clear of near-ties.
"""

from pathlib import Path

import torch

# Small shapes per model type; grouped-query attention (4 query heads, 2 KV heads) everywhere.
TINY_CONFIGS = {
    "llama": dict(tie_word_embeddings=True),
    "mistral": dict(sliding_window=8),  # every layer slides
    "qwen2": dict(),  # q/k/v biases
    "qwen3": dict(head_dim=32),  # q/k norms, head_dim != hidden / heads
    # alternating sliding / full layers, soft-capped attention and final logits, a custom scale
    "gemma2": dict(head_dim=16, sliding_window=8, attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
                   query_pre_attn_scalar=24),
    "gemma": dict(head_dim=16),
    "gemma3_text": dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=24),  # per-layer-type RoPE
    "olmo2": dict(),  # q/k norms over all heads
    "granite": dict(embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0),
    "starcoder2": dict(sliding_window=8),  # LayerNorm, biases everywhere
    "cohere": dict(),  # parallel attention and MLP
}
_SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0, rms_norm_eps=1e-5)


def random_causal_lm(model_type: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32,
                     **overrides):
    """A random ``*ForCausalLM`` of ``model_type`` with the tiny shape above (``overrides`` replace
    config fields, e.g. ``hidden_size=768``).

    Returns
    -------
    transformers ``PreTrainedModel`` in eval mode.
    """
    import transformers

    if model_type not in TINY_CONFIGS:
        raise ValueError(f"model_type must be one of {', '.join(TINY_CONFIGS)}, got {model_type!r}")
    config = transformers.AutoConfig.for_model(model_type, **{**_SHAPE, **TINY_CONFIGS[model_type], **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() == 1:  # norm weights and biases
                param.copy_((0.5 * noise + ("norm" in name)).to(dtype))
            elif "embed" in name:  # tied: small, or each token's own embedding wins every argmax
                param.copy_((noise * (0.1 if config.tie_word_embeddings else 1.0)).to(dtype))
            else:  # projections [out, in]
                param.copy_((2 * noise / param.shape[1] ** 0.5).to(dtype))
    return model.eval()


def save_random_causal_lm(folder: str | Path, model_type: str = "llama", *, seed: int = 0,
                          dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """Save :func:`random_causal_lm` to ``folder`` with ``save_pretrained`` (safetensors); returns the folder."""
    folder = Path(folder)
    random_causal_lm(model_type, seed=seed, dtype=dtype, **overrides).save_pretrained(folder)
    return folder


__all__ = ["TINY_CONFIGS", "random_causal_lm", "save_random_causal_lm"]
