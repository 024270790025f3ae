"""One prepared GPU check (issue 8): correctness on CUDA and kernel speed against the copy limit.

Sections, in order (each records its own errors instead of stopping the run):

1. ``tests``     the ``gpu``-marked tests (``pytest -m gpu``) in a subprocess
2. ``copy``      device-to-device copy bandwidth (``dst.copy_(src)``, 1 GiB): the limit
3. ``reference`` every CUDA kernel's result against the CPU torch reference on the same inputs
4. ``kv``        page_copy / page_move / kv_write bandwidth against the copy and ``index_copy_``
5. ``decode``    paged decode against SDPA on contiguous KV and gather-then-SDPA (issue shapes)
6. ``prefill``   paged prefill over a cached prefix against the same two baselines
7. ``hnsw``      HOOK: HNSW batched search on CUDA vs CPU vs FAISS-CPU (see ``hnsw_section``)

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``$OUT`` (or benchmarks/results when OUT is
unset) and prints the markdown last. Sized to finish well under 6 minutes on one H100 / H200.
Without CUDA it says so and exits 0; ``--cpu-dry-run`` runs every section except the tests on CPU
at tiny sizes with the torch backend, to check the script itself.

    python -m benchmarks.gpu_check [--cpu-dry-run] [--skip-tests]

On a GPU machine that has torch and triton but cannot install from the network, make the package
importable first (``kernels/`` is mapped to ``llmds_torch.kernels`` by the install):

    python3 -m pip install --no-deps --no-build-isolation -e . && python3 -m benchmarks.gpu_check
"""

import argparse
import json
import os
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
from llmds_torch.kernels.reference import (kv_write_reference, page_copy_reference, paged_attention_decode_reference,
                                           paged_attention_prefill_reference)

REPO = Path(__file__).resolve().parent.parent
TEST_TIMEOUT_S = 180
REFERENCE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def output_dir() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR


# ------------------------------------------------------------------------------------------ sections
def tests_section() -> dict:
    """``pytest -m gpu`` over the CPU suite's folder (the interpreter tests need their own process)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests", "--ignore=tests/interpret",
           "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": TEST_TIMEOUT_S}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"status": "passed" if done.returncode == 0 else f"exit {done.returncode}",
            "summary": lines[-1] if lines else done.stderr[-500:], "failures": failures[:20],
            "seconds": time.perf_counter() - t0}


def copy_section(device: torch.device, num_bytes: int) -> dict:
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = kv_bench.device_time(lambda: dst.copy_(src), device, repeat=20)
    return {"bytes": num_bytes, "ms": seconds * 1e3, "GB/s (read+write)": 2 * num_bytes / seconds / 1e9}


def _compare(name: str, got: torch.Tensor, want: torch.Tensor, exact: bool) -> dict:
    got, want = got.cpu(), want.cpu()
    if exact:
        ok, error = torch.equal(got, want), float((got.float() - want.float()).abs().max()) if got.numel() else 0.0
    else:
        error = float((got.float() - want.float()).abs().max())
        ok = error <= REFERENCE_TOLERANCE[want.dtype]
    return {"check": name, "dtype": str(want.dtype).replace("torch.", ""), "max_abs_err": error,
            "tolerance": 0.0 if exact else REFERENCE_TOLERANCE[want.dtype], "ok": bool(ok)}


def reference_section(device: torch.device, backend: str) -> list[dict]:
    """Each kernel on ``device`` against its torch reference run on CPU copies of the inputs."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        pool = torch.randn(4, 112, 2, 16, 8, 128, generator=gen).to(dtype)
        slots = torch.randperm(112 * 16, generator=gen)[:700]
        slots[::37] = -1
        k = torch.randn(700, 8, 128, generator=gen).to(dtype)
        v = torch.randn(700, 8, 128, generator=gen).to(dtype)
        want = pool.clone()
        kv_write_reference(want[2], slots, k, v)
        got = pool.to(device)
        kv_write(got[2], slots.to(device), k.to(device), v.to(device), backend=backend)
        rows.append(_compare("kv_write", got, want, exact=True))

        src, dst = torch.arange(0, 40), torch.randperm(40, generator=gen) + 50
        page_copy_reference(want, src, dst)
        page_move(got, src.to(device), dst.to(device), backend=backend)
        rows.append(_compare("page_copy/page_move", got, want, exact=True))
        page_copy_reference(want, dst[:10], torch.arange(90, 100))
        page_copy(got, dst[:10].to(device), torch.arange(90, 100, device=device), backend=backend)
        rows.append(_compare("page_copy", got, want, exact=True))

        lens = [1, 17, 777, 1500]
        cache, table, seq_lens, _ = decode_bench.paged_layout(len(lens), lens, decode_bench.AttentionShape(
            32, 8, 128, 16, dtype), "cpu", seed=7)
        q = torch.randn(len(lens), 32, 128, generator=gen).to(dtype)
        want_out = paged_attention_decode_reference(q, cache, table, seq_lens, 128 ** -0.5)
        for num_splits in (None, 1, 5):
            got_out = paged_attention_decode(q.to(device), cache.to(device), table.to(device), seq_lens.to(device),
                                             backend=backend, num_splits=num_splits)
            rows.append(_compare(f"decode splits={num_splits}", got_out, want_out, exact=False))

        query_lens = [1, 17, 300, 0]
        starts = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), dtype=torch.int32)
        q = torch.randn(sum(query_lens), 32, 128, generator=gen).to(dtype)
        want_out = paged_attention_prefill_reference(q, cache, table, seq_lens, starts, 128 ** -0.5)
        got_out = paged_attention_prefill(q.to(device), cache.to(device), table.to(device), seq_lens.to(device),
                                          starts.to(device), backend=backend)
        rows.append(_compare("prefill", got_out, want_out, exact=False))
    return rows


def kv_section(device: torch.device, backend: str, quick: bool) -> dict:
    return kv_bench.run(kv_bench.QUICK if quick else kv_bench.KernelSizes(), device, backend, repeat=20)


def decode_section(device: torch.device, backend: str, quick: bool) -> list[dict]:
    shape = decode_bench.QUICK_SHAPE if quick else decode_bench.CUDA_SHAPE
    cases = [(2, 256), (4, 128)] if quick else [(64, 4096), (256, 1024), (1, 4096), (16, 1024), (256, 128)]
    return [decode_bench.bench_decode_case(b, c, shape, device, backend, 10, max(c for _, c in cases))
            for b, c in cases]


def prefill_section(device: torch.device, backend: str, quick: bool) -> list[dict]:
    shape = decode_bench.QUICK_SHAPE if quick else decode_bench.CUDA_SHAPE
    cases = [(2, 64, 32)] if quick else [(8, 3072, 1024), (4, 0, 2048)]
    return [decode_bench.bench_prefill_case(*case, shape, device, backend, 10) for case in cases]


def hnsw_section(device: torch.device, quick: bool) -> dict:
    """HOOK (issue 8, owned by the HNSW work; tune sizes and parameters there): batched HNSW search on
    CUDA tensors against the same index searched on CPU (numba) and against FAISS HNSW on the CPU,
    at equal ``ef``, with recall@10 against exact search. Skipped when ``llmds_torch.retrieval.hnsw``
    is missing. Goal: CUDA >= 20x FAISS-CPU queries/s at equal recall@10 on 100k x 128."""
    try:
        from llmds_torch.retrieval.hnsw import HNSW
    except ImportError as exc:
        return {"status": f"skipped: llmds_torch.retrieval.hnsw not importable ({exc})"}
    num_points, dim, num_queries, k = (4000, 32, 500, 10) if quick else (100_000, 128, 20_000, 10)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(num_points, dim, generator=gen)
    queries = torch.randn(num_queries, dim, generator=gen)
    data_on_device = data.to(device)
    exact = torch.cat([torch.cdist(chunk.to(device), data_on_device).topk(k, largest=False).indices.cpu()
                       for chunk in queries.split(2048)])              # exact top-k, 2048 queries at a time

    def recall(ids) -> float:
        ids = torch.as_tensor(ids).cpu()
        return float((ids[:, :, None] == exact[:, None, :]).any(-1).float().mean())

    def qps(fn) -> tuple[float, object]:
        fn()                                                           # warm-up / compile
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return num_queries / (time.perf_counter() - t0), out

    t0 = time.perf_counter()
    index = HNSW(dim, M=16, ef_construction=100, seed=0, device=device)
    index.add(data)
    rows, build_s = [], time.perf_counter() - t0
    try:
        import faiss
        faiss_index = faiss.IndexHNSWFlat(dim, 16)
        faiss_index.hnsw.efConstruction = 100
        faiss_index.add(data.numpy())
    except ImportError:
        faiss_index = None
    for ef in (32, 64, 128):
        rate, (ids, _) = qps(lambda: index.search(queries.to(device), k, ef, backend="torch"))
        rows.append({"engine": f"hnsw {device.type} (torch)", "ef": ef, "qps": rate, "recall@10": recall(ids)})
        rate, (ids, _) = qps(lambda: index.search(queries, k, ef, backend="numba"))
        rows.append({"engine": "hnsw cpu (numba)", "ef": ef, "qps": rate, "recall@10": recall(ids)})
        if faiss_index is not None:
            faiss_index.hnsw.efSearch = ef
            rate, (_, ids) = qps(lambda: faiss_index.search(queries.numpy(), k))
            rows.append({"engine": "faiss cpu HNSWFlat", "ef": ef, "qps": rate, "recall@10": recall(ids)})
    return {"status": "ran", "points": num_points, "dim": dim, "queries": num_queries, "build_s": build_s,
            "rows": rows}


# ------------------------------------------------------------------------------------------ report
def goals(results: dict) -> list[dict]:
    """Issue 8's goals against what was measured (missing numbers are reported as such)."""
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
            add(f"{case} paged / contiguous SDPA time", round(row["paged/sdpa"], 3), "<= 1.15", row["paged/sdpa"] <= 1.15)
            add(f"{case} gather+SDPA / paged time", round(row["gather/paged"], 3), ">= 2.5", row["gather/paged"] >= 2.5)
    hnsw = results.get("hnsw", {})
    if isinstance(hnsw, dict) and hnsw.get("rows"):
        by = {(r["engine"], r["ef"]): r for r in hnsw["rows"]}
        for ef in (32, 64, 128):
            cuda, faiss = by.get(("hnsw cuda (torch)", ef)), by.get(("faiss cpu HNSWFlat", ef))
            if cuda and faiss:
                add(f"hnsw ef={ef} cuda / faiss-cpu qps (recall {cuda['recall@10']:.3f} vs {faiss['recall@10']:.3f})",
                    round(cuda["qps"] / faiss["qps"], 2), ">= 20 at equal recall", cuda["qps"] >= 20 * faiss["qps"])
    refs = results.get("reference", [])
    if isinstance(refs, list) and refs:
        add("CUDA results equal CPU references", f"{sum(r['ok'] for r in refs)}/{len(refs)} ok", "all",
            all(r["ok"] for r in refs))
    tests = results.get("tests", {})
    if isinstance(tests, dict) and "status" in tests:
        add("pytest -m gpu", tests.get("summary", tests["status"]), "passed",
            None if tests["status"] == "skipped" else tests["status"] == "passed")
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
    for name in ("tests", "copy"):
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
    if isinstance(results.get("hnsw"), dict) and "status" in results["hnsw"]:
        parts.append(f"\nhnsw: {results['hnsw']['status']}\n")
    parts.append(f"\n## goals\n\n{markdown_table(results['goals'])}")
    return "".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on CPU, torch backend, no tests")
    parser.add_argument("--skip-tests", action="store_true", help="skip the pytest -m gpu section")
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="start no new section after this many seconds (the whole check must stay under 6 min)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu_check: no CUDA device here, nothing to check (use --cpu-dry-run to exercise the script)")
        return 0
    dry = args.cpu_dry_run
    if dry:
        torch.set_num_threads(1)                                       # steadier on a shared CPU
    device = torch.device("cpu" if dry else "cuda")
    backend = "torch" if dry else "triton"
    started = time.perf_counter()
    results = {"hardware": hardware(), "device": str(device), "backend": backend, "dry_run": dry, "timings_s": {}}
    sections = [
        ("tests", lambda: tests_section(), dry or args.skip_tests),
        ("copy", lambda: copy_section(device, 2**24 if dry else 2**30), False),
        ("reference", lambda: reference_section(device, backend), False),
        ("kv", lambda: kv_section(device, backend, dry), False),
        ("decode", lambda: decode_section(device, backend, dry), False),
        ("prefill", lambda: prefill_section(device, backend, dry), False),
        ("hnsw", lambda: hnsw_section(device, dry), args.skip_hnsw),
    ]
    for name, fn, skip in sections:
        if skip:
            results[name] = {"status": "skipped"}
            continue
        if time.perf_counter() - started > args.budget_s:
            results[name] = {"status": f"skipped: past the {args.budget_s:.0f} s budget"}
            continue
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            results[name] = fn()
        except Exception as exc:                                       # record and go on to the next section
            results[name] = {"status": "error", "error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        results["timings_s"][name] = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.empty_cache()
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
