"""kv_write: scatter new tokens' K and V into their pages by slot mapping.

Slot ``s`` is offset ``s % page_size`` of page ``s // page_size``; a negative slot means "skip this
token" (padding). One program copies one token's K and V (``num_kv_heads * head_dim`` values each,
in chunks of ``BLOCK``).
"""

import torch

from ._triton import tl, triton
from .reference import kv_write_reference
from .validation import (check_distinct, check_index_range, check_kv_layer, check_tensor,
                         KernelInputError)
from . import launch_device, resolve_backend


@triton.jit
def _kv_write_kernel(
    cache_ptr, slot_mapping_ptr, k_ptr, v_ptr,
    stride_cache_page, stride_cache_kv, stride_cache_slot, stride_cache_head, stride_cache_dim,
    stride_k_token, stride_k_head, stride_k_dim,
    stride_v_token, stride_v_head, stride_v_dim,
    PAGE_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    page = tl.maximum(slot, 0) // PAGE_SIZE
    offset = tl.maximum(slot, 0) % PAGE_SIZE

    # element e of the token's [num_kv_heads, head_dim] block; a negative slot masks everything
    e = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = e < tl.where(slot >= 0, NUM_KV_HEADS * HEAD_DIM, 0)
    head = e // HEAD_DIM
    dim = e % HEAD_DIM

    k = tl.load(k_ptr + token * stride_k_token + head * stride_k_head + dim * stride_k_dim, mask=mask)
    v = tl.load(v_ptr + token * stride_v_token + head * stride_v_head + dim * stride_v_dim, mask=mask)
    dst = cache_ptr + page * stride_cache_page + offset * stride_cache_slot \
        + head * stride_cache_head + dim * stride_cache_dim
    tl.store(dst, k, mask=mask)
    tl.store(dst + stride_cache_kv, v, mask=mask)


def kv_write(layer_cache: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
             backend: str = "auto", validate_indices: bool = True) -> None:
    """Write ``k`` and ``v`` into ``layer_cache`` at ``slot_mapping``, in place.

    Parameters
    ----------
    layer_cache : ``[num_pages, 2, page_size, num_kv_heads, head_dim]``, fp16/bf16/fp32, any strides
        (for example one layer of a pool)
    slot_mapping : int64 ``[num_tokens]``, ``page * page_size + offset``; negative = skip the token;
        non-negative slots must be distinct and below ``num_pages * page_size``; any stride (a
        strided view is copied to contiguous memory before the launch)
    k, v : ``[num_tokens, num_kv_heads, head_dim]``, the cache's dtype and device
    backend : ``"auto"`` (Triton on CUDA or under the interpreter, else torch), ``"triton"`` or ``"torch"``
    validate_indices : check slot ranges and duplicates (this reads the slots on the host, a device
        sync); pass False only when the caller guarantees them

    Raises
    ------
    KernelInputError
        on a wrong shape, dtype, device or slot, before anything is written.
    """
    num_pages, page_size, num_kv_heads, head_dim = check_kv_layer("layer_cache", layer_cache)
    device = layer_cache.device
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int64,), device=device)
    num_tokens = slot_mapping.shape[0]
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, dtypes=(layer_cache.dtype,), device=device,
                     shape=(num_tokens, num_kv_heads, head_dim))
    if validate_indices:
        check_index_range("slot_mapping", slot_mapping, num_pages * page_size, allow_negative=True)
        check_distinct("slot_mapping", slot_mapping, ignore_negative=True)
    if num_tokens == 0:
        return
    if resolve_backend(backend, device) == "torch":
        kv_write_reference(layer_cache, slot_mapping, k, v)
        return

    block = min(triton.next_power_of_2(num_kv_heads * head_dim), 4096)
    grid = (num_tokens, triton.cdiv(num_kv_heads * head_dim, block))
    with launch_device(device):
        _kv_write_kernel[grid](
            layer_cache, slot_mapping.contiguous(), k, v,       # the kernel reads slot i at slot_mapping_ptr + i
            *layer_cache.stride(),
            *k.stride(), *v.stride(),
            PAGE_SIZE=page_size, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK=block,
        )


__all__ = ["kv_write", "KernelInputError"]
