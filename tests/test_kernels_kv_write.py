"""kv_write: the launcher (torch backend on CPU, Triton on CUDA) against a plain loop, and its
input checks."""

import pytest
import torch

from llmds_torch.kernels import KernelInputError
from llmds_torch.kernels.kv_write import kv_write

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def kv_write_loop(layer_cache, slot_mapping, k, v):
    """Oracle: one token at a time."""
    page_size = layer_cache.shape[2]
    for token, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            layer_cache[slot // page_size, 0, slot % page_size] = k[token]
            layer_cache[slot // page_size, 1, slot % page_size] = v[token]


def random_case(num_pages, page_size, num_kv_heads, head_dim, num_tokens, dtype, device, seed=0,
                num_skipped=2):
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(num_pages, 2, page_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    slots = torch.randperm(num_pages * page_size, generator=gen)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen)[:num_skipped]] = -1
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    return cache.to(device), slots.to(device), k.to(device), v.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 4, 16])
@pytest.mark.parametrize("head_dim", [16, 80])
def test_kv_write_matches_loop(device, dtype, page_size, head_dim):
    cache, slots, k, v = random_case(9, page_size, 2, head_dim, min(9 * page_size, 11), dtype, device)
    expected = cache.cpu().clone()
    kv_write_loop(expected, slots.cpu(), k.cpu(), v.cpu())
    kv_write(cache, slots, k, v)
    assert torch.equal(cache.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_kv_write_into_strided_layer_view(device):
    # a pool laid out [num_pages, num_layers, ...]: one layer is a view with a gap between pages
    pool = torch.randn(6, 3, 2, 4, 2, 16).to(device)
    layer = pool[:, 1]
    assert not layer.is_contiguous()
    _, slots, k, v = random_case(6, 4, 2, 16, 10, torch.float32, device, seed=3)
    expected = pool.cpu().clone()
    kv_write_loop(expected[:, 1], slots.cpu(), k.cpu(), v.cpu())
    kv_write(layer, slots, k, v)
    assert torch.equal(pool.cpu(), expected)     # other layers untouched


@pytest.mark.parametrize("device", DEVICES)
def test_kv_write_skips_negative_slots_and_empty_batches(device):
    cache, _, k, v = random_case(4, 4, 2, 16, 3, torch.float32, device)
    before = cache.clone()
    kv_write(cache, torch.full((3,), -1, dtype=torch.int64, device=device), k, v)
    kv_write(cache, torch.empty(0, dtype=torch.int64, device=device), k[:0], v[:0])
    assert torch.equal(cache, before)


@pytest.mark.gpu
def test_kv_write_triton_matches_torch_on_cuda():
    for dtype in DTYPES:
        cache, slots, k, v = random_case(64, 16, 8, 128, 700, dtype, "cuda", num_skipped=30)
        expected = cache.clone()
        kv_write(expected, slots, k, v, backend="torch")
        kv_write(cache, slots, k, v, backend="triton")
        assert torch.equal(cache, expected)


def _bad_inputs():
    cache, slots, k, v = random_case(4, 4, 2, 16, 3, torch.float32, "cpu")
    meta_k = torch.empty_like(k, device="meta")
    return [
        ("slot_mapping has dtype", (cache, slots.int(), k, v)),
        ("k has dtype", (cache, slots, k.half(), v)),
        ("v must have shape", (cache, slots, k, v[:, :1])),
        ("k must have shape", (cache, slots[:2], k, v)),
        ("expected cpu", (cache, slots, meta_k, v)),
        ("layer_cache must be", (cache[:, :1], slots, k, v)),
        ("layer_cache has dtype", (cache.double(), slots, k.double(), v.double())),
        ("allowed: 0 <= value < 16", (cache, torch.tensor([0, 16, 2]), k, v)),
        ("distinct", (cache, torch.tensor([5, -1, 5]), k, v)),
        ("must be a torch.Tensor", (cache, [0, 1, 2], k, v)),
    ]


@pytest.mark.parametrize("message,args", _bad_inputs(), ids=[m for m, _ in _bad_inputs()])
def test_kv_write_rejects_bad_input_before_writing(message, args):
    cache = args[0]
    before = cache.clone()
    with pytest.raises(KernelInputError, match=message):
        kv_write(*args)
    assert torch.equal(cache, before)


def test_triton_backend_needs_cuda_or_interpreter():
    cache, slots, k, v = random_case(4, 4, 2, 16, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        kv_write(cache, slots, k, v, backend="triton")
