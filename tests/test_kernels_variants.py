"""How many variants the Triton kernels compile over a sweep of batch sizes, context lengths and
windows, that ``warm_up`` compiles all of them, and that every launch runs in its tensors' device
context -- on a machine without a GPU.

Each launcher runs on CPU tensors with its kernels replaced by a recorder that computes the key
Triton's launcher looks a compiled variant up by (its binder, built for the CUDA backend: types,
integer and alignment specialisations, constants), as a launch on a GPU would.
"""

import contextlib
import importlib

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

# the package re-exports functions under the module names, so import the modules by path
attention = importlib.import_module("llmds_torch.kernels.paged_attention")
kv_write_module = importlib.import_module("llmds_torch.kernels.kv_write")
page_copy_module = importlib.import_module("llmds_torch.kernels.page_copy")
warm_up_module = importlib.import_module("llmds_torch.kernels.warm_up")

KERNELS = {kv_write_module: ["_kv_write_kernel"], page_copy_module: ["_page_copy_kernel"],
           attention: ["_paged_decode_kernel", "_decode_reduce_kernel", "_paged_prefill_kernel"]}
H100_PROCESSORS = 132


class Launches:
    """Every recorded launch: ``(kernel name, specialisation key, device context at launch)``."""

    def __init__(self):
        self.log, self.context = [], None

    def keys(self, name):
        return {key for kernel, key, _ in self.log if kernel == name}

    @contextlib.contextmanager
    def device(self, device):
        outer, self.context = self.context, torch.device(device)
        try:
            yield
        finally:
            self.context = outer


class KeyRecorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **constexprs)`` records the key."""

    def __init__(self, kernel, launches):
        self.name, self.launches = kernel.fn.__name__, launches
        self.binder = create_function_from_signature(kernel.signature, kernel.params,
                                                     make_backend(GPUTarget("cuda", 90, 32)))

    def __getitem__(self, grid):
        assert all(g > 0 for g in grid)

        def launch(*args, **kwargs):
            _, specialization, options = self.binder(*args, **kwargs)
            self.launches.log.append((self.name, str(specialization) + str(options), self.launches.context))
        return launch


@pytest.fixture
def launches(monkeypatch):
    recorded = Launches()
    for module, names in KERNELS.items():
        for name in names:
            monkeypatch.setattr(module, name, KeyRecorder(getattr(module, name), recorded))
        monkeypatch.setattr(module, "launch_device", recorded.device)
        monkeypatch.setattr(module, "resolve_backend", lambda backend, device: "triton")
    monkeypatch.setattr(warm_up_module, "resolve_backend", lambda backend, device: "triton")
    default_num_splits = attention.default_num_splits
    monkeypatch.setattr(attention, "default_num_splits", lambda batch, heads, context, device: default_num_splits(
        batch, heads, context, device, processors=H100_PROCESSORS))
    return recorded


MODELS = [  # dtype, num_q_heads, num_kv_heads, head_dim, page_size
    (torch.bfloat16, 32, 8, 128, 16),
    (torch.float16, 12, 12, 64, 1),
]


def sweep(pool, num_q_heads, softcap):
    """Decode at batch 1..256 and contexts 1..128k with and without windows; prefill of 1..1000 new
    tokens over prefixes up to 32k; as a serving loop calls them (fresh tables each step)."""
    gen = torch.Generator().manual_seed(0)
    layer_cache = pool[1]
    page_size, head_dim = layer_cache.shape[2], layer_cache.shape[4]
    for batch in (1, 2, 3, 7, 16, 33, 64, 100, 256):
        for context in (1, 15, 16, 17, 100, 1000, 4096, 16384, 131072):
            if batch * context > 2**22:
                continue
            table = torch.zeros(batch, -(-context // page_size), dtype=torch.int32)
            lens = torch.randint(1, context + 1, (batch,), generator=gen, dtype=torch.int32)
            q = torch.empty(batch, num_q_heads, head_dim, dtype=pool.dtype)
            for window in (None, 1, 16, 4096):
                attention.paged_attention_decode(q, layer_cache, table, lens, sliding_window=window, softcap=softcap,
                                                 validate_indices=False)
    for batch in (1, 4, 16):
        for query_len, context in ((1, 1), (5, 5), (64, 64), (1000, 1000), (7, 33), (512, 32768)):
            table = torch.zeros(batch, -(-context // page_size), dtype=torch.int32)
            lens = torch.full((batch,), context, dtype=torch.int32)
            starts = torch.arange(batch + 1, dtype=torch.int32) * query_len
            q = torch.empty(batch * query_len, num_q_heads, head_dim, dtype=pool.dtype)
            for window in (None, 1, 4096):
                attention.paged_attention_prefill(q, layer_cache, table, lens, starts, sliding_window=window,
                                                  softcap=softcap, max_query_len=query_len, validate_indices=False)


@pytest.mark.parametrize("dtype,num_q_heads,num_kv_heads,head_dim,page_size", MODELS)
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_attention_variants_are_few_and_warm_up_compiles_them(launches, dtype, num_q_heads, num_kv_heads, head_dim,
                                                              page_size, softcap):
    pool = torch.empty(3, 64, 2, page_size, num_kv_heads, head_dim, dtype=dtype)
    sweep(pool, num_q_heads, softcap)
    swept = {name: launches.keys(name) for name in attention.COMPILED_VARIANTS}
    assert {name: len(keys) for name, keys in swept.items()} == attention.COMPILED_VARIANTS

    launches.log.clear()
    warm_up_module.warm_up(pool, num_q_heads, softcaps=[softcap])
    for name, keys in swept.items():
        assert keys <= launches.keys(name), f"{name}: a variant the sweep launched was not warmed up"


def test_warm_up_covers_the_write_and_copy_kernels_and_both_softcap_switches(launches):
    pool = torch.empty(2, 8, 2, 16, 2, 64, dtype=torch.bfloat16)
    assert warm_up_module.warm_up(pool, 8, softcaps=[None, 50.0]) == 2 + 2 * 4
    assert len(launches.keys("_paged_decode_kernel")) == 4            # (splits or not) x (softcap on or off)
    assert len(launches.keys("_paged_prefill_kernel")) == 2
    layer_cache = pool[1]
    kv_write_module.kv_write(layer_cache, torch.tensor([5, -1, 40]), *torch.empty(2, 3, 2, 64, dtype=pool.dtype))
    page_copy_module.page_copy(pool, torch.tensor([1, 2]), torch.tensor([3, 4]))
    for name in ("_kv_write_kernel", "_page_copy_kernel"):
        assert len(launches.keys(name)) == 1


def test_warm_up_on_the_torch_backend_compiles_nothing():
    from llmds_torch.kernels.warm_up import warm_up
    assert warm_up(torch.empty(1, 4, 2, 4, 1, 16), 2, backend="torch") == 0


def test_every_launch_runs_in_its_tensors_device_context(launches):
    pool = torch.randn(2, 8, 2, 4, 2, 16)
    layer_cache = pool[1]
    table = torch.full((2, 40), -1, dtype=torch.int32)                 # room for 160 tokens: 2 splits
    table[0, :3], table[1, 0] = torch.tensor([0, 1, 2], dtype=torch.int32), 3
    lens = torch.tensor([9, 2], dtype=torch.int32)
    kv_write_module.kv_write(layer_cache, torch.tensor([3, 7]), *torch.randn(2, 2, 2, 16))
    page_copy_module.page_copy(pool, torch.tensor([0]), torch.tensor([5]))
    for num_splits in (1, 2):
        attention.paged_attention_decode(torch.randn(2, 4, 16), layer_cache, table, lens, num_splits=num_splits)
    attention.paged_attention_prefill(torch.randn(3, 4, 16), layer_cache, table, lens,
                                      torch.tensor([0, 2, 3], dtype=torch.int32))
    names = [name for name, _, _ in launches.log]
    assert sorted(set(names)) == sorted(name for group in KERNELS.values() for name in group)
    assert all(context == pool.device for _, _, context in launches.log), launches.log
