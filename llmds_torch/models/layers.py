"""The pure functions a Llama layer is made of: RMSNorm, rotary position embedding, SwiGLU, and a
dense causal attention used by the no-cache oracle. Each works on any leading batch shape."""

import math

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Root-mean-square normalization, computed in fp32 and cast back.

    Parameters
    ----------
    x : Tensor ``[..., hidden]``
    weight : Tensor ``[hidden]``
    eps : float

    Returns
    -------
    Tensor ``[..., hidden]`` in ``x``'s dtype.
    """
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling=None, device=None) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, fp32 ``[head_dim / 2]``, optionally with Llama
    3.1's scaling (a :class:`~llmds_torch.models.config.Llama3RopeScaling`), computed as transformers does."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    if scaling is None:
        return inv_freq
    low_freq_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths are stretched by factor, short ones kept, the band between interpolated
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype, scaling=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotary embedding at the given positions (Hugging Face's
    "rotate half" layout: dimension ``i`` pairs with ``i + head_dim / 2``).

    Parameters
    ----------
    positions : Tensor int64 ``[num_tokens]``
    head_dim : int
        Even.
    theta : float
        Base frequency.
    dtype : torch.dtype
        Dtype of the returned tables (angles are computed in fp32).
    scaling : Llama3RopeScaling or None
        Frequency scaling (:func:`rope_inv_freq`).

    Returns
    -------
    (cos, sin) : Tensors ``[num_tokens, head_dim]``
    """
    inv_freq = rope_inv_freq(head_dim, theta, scaling, positions.device)
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    angles = torch.cat((angles, angles), dim=-1)  # [T, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query or key heads by their positions.

    Parameters
    ----------
    x : Tensor ``[num_tokens, num_heads, head_dim]``
    cos, sin : Tensors ``[num_tokens, head_dim]`` from :func:`rope_cos_sin`

    Returns
    -------
    Tensor ``[num_tokens, num_heads, head_dim]``
    """
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def swiglu(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor,
           down_weight: torch.Tensor) -> torch.Tensor:
    """The SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``.

    Parameters
    ----------
    x : Tensor ``[..., hidden]``
    gate_weight, up_weight : Tensors ``[intermediate, hidden]``
    down_weight : Tensor ``[hidden, intermediate]``
    """
    return F.linear(F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight), down_weight)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal attention over one whole sequence, the oracle for the paged path.

    Parameters
    ----------
    q : Tensor ``[num_tokens, num_heads, head_dim]``
    k, v : Tensors ``[num_tokens, num_kv_heads, head_dim]``; ``num_kv_heads`` divides ``num_heads``

    Returns
    -------
    Tensor ``[num_tokens, num_heads, head_dim]``, softmax computed in fp32.
    """
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [T, H, D]
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q.float(), k.float()) / head_dim ** 0.5  # [H, T, T]
    future = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("hts,shd->thd", probs, v.float()).to(q.dtype)
