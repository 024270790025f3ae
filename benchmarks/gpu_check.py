"""One prepared GPU check: the kernels' correctness on CUDA and their speed against the copy limit
and SDPA, sized to spend few device minutes.

Sections, in order; each runs under its own time limit (``SECTION_LIMITS_S``) and records its own
errors instead of stopping the run:

1. ``warmup``    ``kernels.warm_up`` for every pool layout the check uses (all compiles up front)
2. ``tests``     the ``gpu``-marked kernel tests (only the kernel test files) in a subprocess
3. ``copy``      device-to-device copy bandwidth (``dst.copy_(src)``, 1 GiB): the limit
4. ``reference`` every CUDA kernel's result against the CPU torch reference on the same inputs
                 (windows, soft-capping, padding rows and strided indices included)
5. ``kv``        page_copy / page_move (64 pages of 2 MiB) and a 32k-token kv_write against the copy
6. ``decode``    paged decode against SDPA on contiguous KV and gather-then-SDPA
7. ``prefill``   paged prefill over a cached prefix against the same two baselines
8. ``hnsw``      only with ``--hnsw DIR``: batched HNSW search on CUDA against CPU numbers measured
                 beforehand, on a machine without the GPU, by ``--prepare-hnsw DIR``

Every test input is generated on the device (device-side generators), then copied to the CPU
only where a CPU reference needs it. Timed calls that can be captured run from CUDA graphs, so
microsecond kernels are timed without the host's launch overhead; the SDPA baselines run on the
fastest backend that accepts the call (flash, memory-efficient, cuDNN or math), which each row
records. The number of compiled kernel variants is recorded after every section and checked
against ``MAX_COMPILED_VARIANTS``.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``$OUT`` (or benchmarks/results when OUT is
unset) and prints the markdown last. Without CUDA it says so and exits 0; ``--cpu-dry-run`` runs
every section except the tests on CPU at tiny sizes with the torch backend, to check the script.

    python -m benchmarks.gpu_check [--cpu-dry-run] [--skip-tests] [--hnsw DIR]
    python -m benchmarks.gpu_check --prepare-hnsw DIR     # on the CPU, before the GPU run

On a GPU machine that has torch and triton but cannot install from the network, make the package
importable first (``kernels/`` is mapped to ``llmds_torch.kernels`` by the install):

    python3 -m pip install --no-deps --no-build-isolation -e . && python3 -m benchmarks.gpu_check
"""

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import decode as decode_bench
from benchmarks import kv_kernels as kv_bench
from benchmarks._common import RESULTS_DIR, hardware, write_results
from llmds_torch.kernels.kv_write import kv_write
from llmds_torch.kernels.page_copy import page_copy
from llmds_torch.kernels.page_move import page_move
from llmds_torch.kernels.paged_attention import paged_attention_decode, paged_attention_prefill
from llmds_torch.kernels.warm_up import warm_up
from llmds_torch.kernels.reference import (kv_write_reference, page_copy_reference, paged_attention_decode_reference,
                                           paged_attention_prefill_reference)

REPO = Path(__file__).resolve().parent.parent
REFERENCE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SECTION_LIMITS_S = {"warmup": 120, "tests": 150, "copy": 20, "reference": 60, "kv": 45, "decode": 90,
                    "prefill": 45, "hnsw": 90}
KERNEL_TESTS = ["tests/test_kernels_paged_attention.py", "tests/test_kernels_kv_write.py",
                "tests/test_kernels_page_copy.py", "tests/test_kernels_attention_api.py"]
# variants this process may compile: per pool layout (dtype) the attention kernels' fixed set for
# each softcap switch plus kv_write and page_copy (see kernels/paged_attention.py), and a few the
# reference section's strided inputs add
MAX_COMPILED_VARIANTS = 40
KERNEL_MODULES = {"kv_write": ["_kv_write_kernel"], "page_copy": ["_page_copy_kernel"],
                  "paged_attention": ["_paged_decode_kernel", "_decode_reduce_kernel", "_paged_prefill_kernel"]}
HNSW_SIZES = {"points": 100_000, "dim": 128, "queries": 20_000, "k": 10, "efs": (32, 64, 128)}
HNSW_QUICK = {"points": 3000, "dim": 32, "queries": 300, "k": 10, "efs": (32, 64)}


def output_dir() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR


def compiled_variants() -> int:
    """Kernel variants Triton has compiled in this process, over all devices."""
    total = 0
    for module_name, names in KERNEL_MODULES.items():
        module = importlib.import_module(f"llmds_torch.kernels.{module_name}")
        for name in names:
            caches = getattr(getattr(module, name), "device_caches", {})
            total += sum(len(entry[0]) for entry in caches.values())
    return total


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise ``SectionTimeout`` in the main thread after ``seconds`` (checked between Python steps)."""
    def expire(signum, frame):
        raise SectionTimeout(f"past its {seconds} s limit")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def randn(*shape, dtype, device, seed):
    """Normal samples generated on ``device`` with its own generator (no host-side copy)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=gen, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------ sections
def warmup_section(device: torch.device, backend: str) -> dict:
    """Compile every variant the later sections launch in this process, before any timing."""
    t0 = time.perf_counter()
    launches = 0
    shape = decode_bench.CUDA_SHAPE
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        pool = torch.empty(2, 4, 2, shape.page_size, shape.num_kv_heads, shape.head_dim, dtype=dtype, device=device)
        launches += warm_up(pool, shape.num_q_heads, softcaps=(None, 30.0), backend=backend)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"launches": launches, "seconds": time.perf_counter() - t0, "compiled_variants": compiled_variants()}


def tests_section(limit_s: int) -> dict:
    """``pytest -m gpu`` over the kernel test files only (the interpreter tests need their own process)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", *KERNEL_TESTS, "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": limit_s}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"status": "passed" if done.returncode == 0 else f"exit {done.returncode}",
            "summary": lines[-1] if lines else done.stderr[-500:], "failures": failures[:20],
            "seconds": time.perf_counter() - t0}


def copy_section(device: torch.device, num_bytes: int) -> dict:
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = kv_bench.device_time(lambda: dst.copy_(src), device, repeat=20, graph=True)
    return {"bytes": num_bytes, "ms": seconds * 1e3, "GB/s (read+write)": 2 * num_bytes / seconds / 1e9}


def _compare(name: str, got: torch.Tensor, want: torch.Tensor, exact: bool) -> dict:
    got, want = got.cpu(), want.cpu()
    error = float((got.float() - want.float()).abs().max()) if got.numel() else 0.0
    ok = torch.equal(got, want) if exact else error <= REFERENCE_TOLERANCE[want.dtype]
    return {"check": name, "dtype": str(want.dtype).replace("torch.", ""), "max_abs_err": error,
            "tolerance": 0.0 if exact else REFERENCE_TOLERANCE[want.dtype], "ok": bool(ok)}


def reference_section(device: torch.device, backend: str, quick: bool) -> list[dict]:
    """Each kernel on ``device`` against its torch reference on CPU copies of the same inputs."""
    rows = []
    heads, kv_heads, head_dim = (4, 2, 32) if quick else (32, 8, 128)
    num_pages, num_tokens = (24, 100) if quick else (112, 700)
    for seed, dtype in enumerate((torch.float32, torch.float16, torch.bfloat16)):
        pool = randn(4, num_pages, 2, 16, kv_heads, head_dim, dtype=dtype, device=device, seed=seed)
        gen = torch.Generator().manual_seed(seed)                       # small index tensors: host side
        table_of_slots = torch.randperm(num_pages * 16, generator=gen)[:2 * num_tokens].view(num_tokens, 2)
        slots = table_of_slots[:, 0]                                    # a strided view
        slots[::37] = -1
        k = randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=device, seed=seed + 10)
        v = randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=device, seed=seed + 20)
        want = pool.to("cpu", copy=True)
        kv_write_reference(want[2], slots.contiguous(), k.cpu(), v.cpu())
        kv_write(pool[2], slots.to(device), k, v, backend=backend)
        rows.append(_compare("kv_write (strided slots)", pool, want, exact=True))

        pairs = torch.stack([torch.arange(0, 10), torch.randperm(10, generator=gen) + 12], dim=1)
        src, dst = pairs[:, 0], pairs[:, 1]                             # strided views
        page_copy_reference(want, src.contiguous(), dst.contiguous())
        page_move(pool, src.to(device), dst.to(device), backend=backend)
        rows.append(_compare("page_move (strided pairs)", pool, want, exact=True))
        page_copy_reference(want, dst[:5].contiguous(), torch.arange(2, 7))
        page_copy(pool, dst[:5].to(device), torch.arange(2, 7, device=device), backend=backend)
        rows.append(_compare("page_copy", pool, want, exact=True))

        lens = [1, 17, 777, 1500] if not quick else [1, 17, 100, 150]
        shape = decode_bench.AttentionShape(heads, kv_heads, head_dim, 16, dtype)
        cache, table, seq_lens, _ = decode_bench.paged_layout(len(lens), lens, shape, device, seed=seed + 7)
        q = randn(len(lens), heads, head_dim, dtype=dtype, device=device, seed=seed + 30)
        cpu = [t.cpu() for t in (q, cache, table, seq_lens)]
        for options in ({}, {"sliding_window": 100, "softcap": 30.0}, {"sliding_window": 1}):
            want_out = paged_attention_decode_reference(*cpu, head_dim ** -0.5, options.get("sliding_window"),
                                                        options.get("softcap"))
            for num_splits in (None, 1, 5):
                got_out = paged_attention_decode(q, cache, table, seq_lens, backend=backend, num_splits=num_splits,
                                                 **options)
                rows.append(_compare(f"decode splits={num_splits} {options or ''}", got_out, want_out, exact=False))
        padded = seq_lens.clone()
        padded[1] = 0                                                   # a padding row
        got_out = paged_attention_decode(q, cache, table, padded, backend=backend, num_splits=4)
        want_out = paged_attention_decode_reference(cpu[0], cpu[1], cpu[2], padded.cpu(), head_dim ** -0.5)
        rows.append(_compare("decode with a length-0 row, 4 splits", got_out, want_out, exact=False))

        query_lens = [1, 17, 100 if quick else 300, 0]
        starts = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), dtype=torch.int32)
        q = randn(sum(query_lens), heads, head_dim, dtype=dtype, device=device, seed=seed + 40)
        for options in ({}, {"sliding_window": 64, "softcap": 30.0}):
            want_out = paged_attention_prefill_reference(q.cpu(), cpu[1], cpu[2], cpu[3], starts, head_dim ** -0.5,
                                                         options.get("sliding_window"), options.get("softcap"))
            got_out = paged_attention_prefill(q, cache, table, seq_lens, starts.to(device), backend=backend, **options)
            rows.append(_compare(f"prefill {options or ''}", got_out, want_out, exact=False))
    return rows


def kv_section(device: torch.device, backend: str, quick: bool) -> dict:
    sizes = kv_bench.QUICK if quick else dataclasses.replace(kv_bench.KernelSizes(), prefill_tokens=32768)
    return kv_bench.run(sizes, device, backend, repeat=20, graph=True)


def decode_section(device: torch.device, backend: str, quick: bool) -> list[dict]:
    shape = decode_bench.QUICK_SHAPE if quick else decode_bench.CUDA_SHAPE
    cases = [(2, 256), (4, 128)] if quick else [(64, 4096), (256, 1024), (1, 4096), (16, 1024), (256, 128)]
    return [decode_bench.bench_decode_case(b, c, shape, device, backend, 10, max(c for _, c in cases), graph=True)
            for b, c in cases]


def prefill_section(device: torch.device, backend: str, quick: bool) -> list[dict]:
    shape = decode_bench.QUICK_SHAPE if quick else decode_bench.CUDA_SHAPE
    cases = [(2, 64, 32)] if quick else [(8, 3072, 1024), (4, 0, 2048)]
    return [decode_bench.bench_prefill_case(*case, shape, device, backend, 10, graph=True) for case in cases]


def _hnsw_data(sizes: dict):
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(sizes["points"], sizes["dim"], generator=gen)
    queries = torch.randn(sizes["queries"], sizes["dim"], generator=gen)
    return data, queries


def _recall(ids, exact) -> float:
    ids = torch.as_tensor(ids).cpu()
    return float((ids[:, :, None] == exact[:, None, :]).any(-1).float().mean())


def _qps(fn, num_queries: int, device: torch.device) -> tuple[float, object]:
    fn()                                                                # warm-up / compile
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return num_queries / (time.perf_counter() - t0), out


def prepare_hnsw(directory: Path, quick: bool) -> dict:
    """On the CPU, before the GPU run: build the index, save it, and measure its CPU peers (numba
    search, FAISS ``IndexHNSWFlat`` with one thread) and the exact neighbours, into ``directory``."""
    from llmds_torch.retrieval.hnsw import HNSW
    sizes = HNSW_QUICK if quick else HNSW_SIZES
    data, queries = _hnsw_data(sizes)
    exact = torch.cat([torch.cdist(chunk, data).topk(sizes["k"], largest=False).indices for chunk in queries.split(1024)])
    t0 = time.perf_counter()
    index = HNSW(sizes["dim"], M=16, ef_construction=100, seed=0)
    index.add(data)
    rows, build_s = [], time.perf_counter() - t0
    cpu = torch.device("cpu")
    try:
        import faiss
        faiss.omp_set_num_threads(1)
        faiss_index = faiss.IndexHNSWFlat(sizes["dim"], 16)
        faiss_index.hnsw.efConstruction = 100
        faiss_index.add(data.numpy())
    except ImportError:
        faiss_index = None
    for ef in sizes["efs"]:
        rate, (ids, _) = _qps(lambda: index.search(queries, sizes["k"], ef, backend="numba"), len(queries), cpu)
        rows.append({"engine": "hnsw cpu (numba)", "ef": ef, "qps": rate, "recall@10": _recall(ids, exact)})
        if faiss_index is not None:
            faiss_index.hnsw.efSearch = ef
            rate, (_, ids) = _qps(lambda: faiss_index.search(queries.numpy(), sizes["k"]), len(queries), cpu)
            rows.append({"engine": "faiss cpu HNSWFlat (1 thread)", "ef": ef, "qps": rate,
                         "recall@10": _recall(ids, exact)})
    directory.mkdir(parents=True, exist_ok=True)
    index.save(directory / "index.hnsw")
    torch.save(exact, directory / "exact.pt")
    peers = {"sizes": sizes, "build_s": build_s, "rows": rows, "hardware": hardware()}
    (directory / "peers.json").write_text(json.dumps(peers, indent=1, default=str))
    return peers


def hnsw_section(device: torch.device, directory: Path) -> dict:
    """Batched HNSW search on ``device`` with the index and CPU peers ``--prepare-hnsw`` saved."""
    from llmds_torch.retrieval.hnsw import HNSW
    peers = json.loads((directory / "peers.json").read_text())
    sizes = peers["sizes"]
    _, queries = _hnsw_data(sizes)
    exact = torch.load(directory / "exact.pt")
    index = HNSW.load(directory / "index.hnsw", device=device)
    rows = list(peers["rows"])
    on_device = queries.to(device)
    for ef in sizes["efs"]:
        rate, (ids, _) = _qps(lambda: index.search(on_device, sizes["k"], ef, backend="torch"), len(queries), device)
        rows.append({"engine": f"hnsw {device.type} (torch)", "ef": ef, "qps": rate, "recall@10": _recall(ids, exact)})
    return {"status": "ran", "points": sizes["points"], "dim": sizes["dim"], "queries": sizes["queries"],
            "cpu_peers_hardware": peers["hardware"], "rows": rows}


# ------------------------------------------------------------------------------------------ report
def goals(results: dict) -> list[dict]:
    """The acceptance goals against what was measured (missing numbers are reported as such)."""
    rows = []

    def add(goal, measured, target, met):
        rows.append({"goal": goal, "measured": measured, "target": target,
                     "met": "n/a" if met is None else ("yes" if met else "NO")})

    kv_rows = results.get("kv", {}).get("rows", []) if isinstance(results.get("kv"), dict) else []
    for op, target in (("page_copy", 0.9), ("page_move", 0.9), ("kv_write", 0.7)):
        for row in kv_rows:
            if row["op"].startswith(op) and row["variant"] == "no index checks":
                add(f"{row['op']} fraction of device-copy bandwidth", round(row["vs_copy"], 3), f">= {target}",
                    row["vs_copy"] >= target)
    for row in results.get("decode", []) if isinstance(results.get("decode"), list) else []:
        if (row["batch"], row["context"]) in ((64, 4096), (256, 1024)):
            case = f"decode {row['batch']}x{row['context']}"
            add(f"{case} paged / contiguous SDPA time ({row['sdpa_backend']})", round(row["paged/sdpa"], 3), "<= 1.15",
                row["paged/sdpa"] <= 1.15)
            add(f"{case} gather+SDPA / paged time", round(row["gather/paged"], 3), ">= 2.5", row["gather/paged"] >= 2.5)
    hnsw = results.get("hnsw", {})
    if isinstance(hnsw, dict) and hnsw.get("rows"):
        by = {(r["engine"], r["ef"]): r for r in hnsw["rows"]}
        for (engine, ef), gpu in by.items():
            faiss = by.get(("faiss cpu HNSWFlat (1 thread)", ef))
            if engine.endswith("(torch)") and faiss:
                add(f"hnsw ef={ef} {engine} / faiss-cpu qps (recall {gpu['recall@10']:.3f} vs "
                    f"{faiss['recall@10']:.3f})", round(gpu["qps"] / faiss["qps"], 2), ">= 20 at equal recall",
                    gpu["qps"] >= 20 * faiss["qps"])
    refs = results.get("reference", [])
    if isinstance(refs, list) and refs:
        add("CUDA results equal CPU references", f"{sum(r['ok'] for r in refs)}/{len(refs)} ok", "all",
            all(r["ok"] for r in refs))
    tests = results.get("tests", {})
    if isinstance(tests, dict) and "status" in tests:
        add("pytest -m gpu (kernel tests)", tests.get("summary", tests["status"]), "passed",
            None if tests["status"] == "skipped" else tests["status"] == "passed")
    compiles = results.get("compiled_variants", {})
    if compiles:
        most = max(compiles.values())
        add("kernel variants compiled in this process", most, f"<= {MAX_COMPILED_VARIANTS}",
            most <= MAX_COMPILED_VARIANTS)
    return rows


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(none)\n"
    columns = columns or list(rows[0])

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render(results: dict) -> str:
    parts = [f"# GPU check\n\nhardware: {json.dumps(results['hardware'])}\n"]
    for name in ("warmup", "tests", "copy", "compiled_variants", "section_seconds"):
        parts.append(f"\n## {name}\n\n```\n{json.dumps(results.get(name), indent=1, default=str)}\n```\n")
    tables = {
        "reference": (results.get("reference"), None),
        "kv": (results.get("kv", {}).get("rows") if isinstance(results.get("kv"), dict) else results.get("kv"),
               kv_bench.COLUMNS),
        "decode": (results.get("decode"), decode_bench.DECODE_COLUMNS),
        "prefill": (results.get("prefill"), decode_bench.PREFILL_COLUMNS),
        "hnsw": (results.get("hnsw", {}).get("rows") if isinstance(results.get("hnsw"), dict) else None, None),
    }
    for name, (rows, columns) in tables.items():
        body = markdown_table(rows, columns) if isinstance(rows, list) else f"```\n{results.get(name)}\n```\n"
        parts.append(f"\n## {name}\n\n{body}")
    parts.append(f"\n## goals\n\n{markdown_table(results['goals'])}")
    return "".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on CPU, torch backend, no tests")
    parser.add_argument("--skip-tests", action="store_true", help="skip the pytest -m gpu section")
    parser.add_argument("--hnsw", type=Path, default=None, metavar="DIR",
                        help="run the HNSW section with the index and CPU peers --prepare-hnsw wrote to DIR")
    parser.add_argument("--prepare-hnsw", type=Path, default=None, metavar="DIR",
                        help="on the CPU, without a GPU: build the HNSW index, measure its CPU peers, save to DIR")
    parser.add_argument("--quick-hnsw", action="store_true", help="tiny HNSW sizes (to check the script)")
    args = parser.parse_args(argv)
    if args.prepare_hnsw is not None:
        peers = prepare_hnsw(args.prepare_hnsw, args.quick_hnsw)
        print(markdown_table(peers["rows"]))
        return 0
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu_check: no CUDA device here, nothing to check (use --cpu-dry-run to exercise the script)")
        return 0
    dry = args.cpu_dry_run
    if dry:
        torch.set_num_threads(1)                                       # steadier on a shared CPU
    device = torch.device("cpu" if dry else "cuda")
    backend = "torch" if dry else "triton"
    started = time.perf_counter()
    results = {"hardware": hardware(), "device": str(device), "backend": backend, "dry_run": dry,
               "section_limits_s": SECTION_LIMITS_S, "section_seconds": {}, "compiled_variants": {}}
    sections = [
        ("warmup", lambda: warmup_section(device, backend), False),
        ("tests", lambda: tests_section(SECTION_LIMITS_S["tests"]), dry or args.skip_tests),
        ("copy", lambda: copy_section(device, 2**24 if dry else 2**30), False),
        ("reference", lambda: reference_section(device, backend, dry), False),
        ("kv", lambda: kv_section(device, backend, dry), False),
        ("decode", lambda: decode_section(device, backend, dry), False),
        ("prefill", lambda: prefill_section(device, backend, dry), False),
        ("hnsw", lambda: hnsw_section(device, args.hnsw), args.hnsw is None),
    ]
    for name, fn, skip in sections:
        if skip:
            results[name] = {"status": "skipped"}
            continue
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} (limit {SECTION_LIMITS_S[name]} s) ...", flush=True)
        try:
            with time_limit(SECTION_LIMITS_S[name] + (0 if name != "tests" else 10)):
                results[name] = fn()
        except Exception as exc:                                       # record and go on to the next section
            results[name] = {"status": "error", "error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        results["section_seconds"][name] = time.perf_counter() - t0
        results["compiled_variants"][name] = compiled_variants()
    results["goals"] = goals(results)
    if dry:                                                            # CPU numbers say nothing about the goals
        for row in results["goals"]:
            row["met"] = "n/a (dry run)"
    results["total_s"] = time.perf_counter() - started
    out = output_dir()
    write_results("gpu_check_dry_run" if dry else "gpu_check", results, out_dir=out)
    text = render(results)
    (out / ("gpu_check_dry_run.md" if dry else "gpu_check.md")).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
