"""The Triton kernels compile for real GPUs (sm_80 and sm_90, down to a cubin with ptxas) with the
exact arguments their launchers pass, on a machine without one.

The interpreter runs kernels as numpy and accepts code the compiler rejects; this catches those
errors here. Each launcher is called on CPU tensors with its kernel replaced by a recorder; the
recorded arguments go through Triton's own binder for the CUDA backend, so the compile sees the
signature, integer and alignment specialisations and options a launch on a GPU would.
"""

import importlib
import re
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

# the launchers' modules, whose kernels the tests replace with a recorder
kv_write_module = importlib.import_module("llmds_torch.kernels.kv_write")
page_copy_module = importlib.import_module("llmds_torch.kernels.page_copy")
attention_module = importlib.import_module("llmds_torch.kernels.paged_attention")

TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
              torch.int32: "i32", torch.int64: "i64"}
TARGETS = [GPUTarget("cuda", 90, 32), GPUTarget("cuda", 80, 32)]


class Recorder:
    """Stands in for a ``@triton.jit`` function: ``kernel[grid](*args, **constexprs)`` is recorded."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


def signature_of(kernel, args, constexprs):
    names = kernel.arg_names
    signature = {}
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + TYPE_NAMES[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(value).__name__}")
    for name in constexprs:
        if name in names:
            signature[name] = "constexpr"
    assert list(signature) == names, "launcher passed arguments the kernel does not declare"
    return signature


def record_launches(monkeypatch, module, kernel_names, launch):
    """Run ``launch()`` with ``module``'s kernels recorded and its backend forced to Triton."""
    recorders = {name: Recorder(getattr(module, name)) for name in kernel_names}
    for name, recorder in recorders.items():
        monkeypatch.setattr(module, name, recorder)
    monkeypatch.setattr(module, "resolve_backend", lambda backend, device: "triton")
    launch()
    return [(rec.kernel, call) for rec in recorders.values() for call in rec.calls]


def compile_launch(kernel, args, kwargs, target):
    """Compile one recorded launch as Triton's launcher would on a GPU of ``target``."""
    assert list(signature_of(kernel, args, {k: v for k, v in kwargs.items() if k in kernel.arg_names}))
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def compile_all(launches):
    assert launches, "the launcher launched nothing"
    for kernel, (grid, args, kwargs) in launches:
        assert all(g > 0 for g in grid)
        for target in TARGETS:
            compiled = compile_launch(kernel, args, kwargs, target)
            assert len(compiled.asm["cubin"]) > 0


@pytest.fixture(autouse=True)
def _needs_cuda_toolchain():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(GPUTarget("cuda", 90, 32).arch) if get_ptxas.__code__.co_argcount else get_ptxas()
    except Exception as exc:  # pragma: no cover - depends on the triton wheel
        pytest.skip(f"Triton's CUDA backend or ptxas is unavailable: {exc}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kv_write_kernel_compiles(monkeypatch, dtype):
    cache = torch.empty(4, 2, 16, 8, 128, dtype=dtype)
    k = torch.empty(3, 8, 128, dtype=dtype)
    launches = record_launches(monkeypatch, kv_write_module, ["_kv_write_kernel"], lambda: kv_write_module.kv_write(
        cache, torch.tensor([0, -1, 5]), k, k.clone()))
    compile_all(launches)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_page_copy_kernel_compiles(monkeypatch, dtype):
    pool = torch.empty(2, 4, 2, 16, 8, 128, dtype=dtype)
    launches = record_launches(monkeypatch, page_copy_module, ["_page_copy_kernel"], lambda: page_copy_module.page_copy(
        pool, torch.tensor([0, 1]), torch.tensor([2, 3])))
    compile_all(launches)


def attention_case(dtype, head_dim, num_q_heads, num_kv_heads):
    cache = torch.zeros(16, 2, 16, num_kv_heads, head_dim, dtype=dtype)
    table = torch.arange(16, dtype=torch.int32).reshape(2, 8)          # room for 128 tokens per row
    lens = torch.tensor([128, 40], dtype=torch.int32)
    return cache, table, lens, num_q_heads


@pytest.mark.parametrize("dtype,head_dim,num_q_heads,num_kv_heads", [
    (torch.bfloat16, 128, 32, 8), (torch.float16, 80, 4, 4), (torch.float32, 64, 8, 2)])
@pytest.mark.parametrize("num_splits", [1, 2])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_decode_kernels_compile(monkeypatch, dtype, head_dim, num_q_heads, num_kv_heads, num_splits, softcap):
    cache, table, lens, _ = attention_case(dtype, head_dim, num_q_heads, num_kv_heads)
    q = torch.zeros(2, num_q_heads, head_dim, dtype=dtype)
    launches = record_launches(
        monkeypatch, attention_module, ["_paged_decode_kernel", "_decode_reduce_kernel"],
        lambda: attention_module.paged_attention_decode(q, cache, table, lens, num_splits=num_splits,
                                                        sliding_window=100, softcap=softcap))
    assert len(launches) == (1 if num_splits == 1 else 2)
    compile_all(launches)


@pytest.mark.parametrize("dtype,head_dim,num_q_heads,num_kv_heads", [
    (torch.bfloat16, 128, 32, 8), (torch.float32, 80, 4, 2)])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_prefill_kernel_compiles(monkeypatch, dtype, head_dim, num_q_heads, num_kv_heads, softcap):
    cache, table, lens, _ = attention_case(dtype, head_dim, num_q_heads, num_kv_heads)
    q = torch.zeros(50, num_q_heads, head_dim, dtype=dtype)
    query_start_loc = torch.tensor([0, 40, 50], dtype=torch.int32)
    launches = record_launches(
        monkeypatch, attention_module, ["_paged_prefill_kernel"],
        lambda: attention_module.paged_attention_prefill(q, cache, table, lens, query_start_loc,
                                                         sliding_window=100, softcap=softcap))
    compile_all(launches)


def ptxas_report(compiled, target) -> str:
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(target.arch) if get_ptxas.__code__.co_argcount else get_ptxas()
    path = getattr(ptxas, "path", ptxas)
    done = subprocess.run([path, "-v", f"--gpu-name=sm_{target.arch}a", "-", "-o", "/dev/null"],
                          input=compiled.asm["ptx"], capture_output=True, text=True, check=True)
    return done.stderr


@pytest.mark.parametrize("head_dim", [128, 256])
def test_attention_kernels_do_not_spill_registers(monkeypatch, head_dim):
    """bf16, GQA 32 / 8 on sm_90, as launched: register spills would cost local-memory traffic in
    the innermost loop."""
    cache, table, lens, _ = attention_case(torch.bfloat16, head_dim, 32, 8)
    q = torch.zeros(50, 32, head_dim, dtype=torch.bfloat16)
    launches = record_launches(
        monkeypatch, attention_module, ["_paged_decode_kernel", "_decode_reduce_kernel", "_paged_prefill_kernel"],
        lambda: (attention_module.paged_attention_decode(q[:2], cache, table, lens, num_splits=2),
                 attention_module.paged_attention_prefill(q, cache, table, lens,
                                                          torch.tensor([0, 40, 50], dtype=torch.int32))))
    assert len(launches) == 3
    for kernel, (_, args, kwargs) in launches:
        report = ptxas_report(compile_launch(kernel, args, kwargs, TARGETS[0]), TARGETS[0])
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
        assert spills and max(spills) == 0, f"{kernel.fn.__name__}: {report}"
