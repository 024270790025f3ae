"""The pure functions a Llama layer is made of: RMSNorm, rotary position embedding, SwiGLU, and a
dense causal attention used by the no-cache oracle. Each works on any leading batch shape."""

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


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
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

    Returns
    -------
    (cos, sin) : Tensors ``[num_tokens, head_dim]``
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64,
                                             device=positions.device).float() / head_dim))
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
