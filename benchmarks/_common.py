"""What every benchmark shares: the hardware it ran on, a printed table, a JSON file of results.

Benchmarks never run as part of the tests. Each compares against a baseline in the same run and
reports ratios; results land in ``benchmarks/results/<name>.json``.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def hardware() -> dict:
    """A description of the machine: CPU model and count, GPU name when one is used, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    """Print ``rows`` as an aligned text table (floats to 4 significant digits)."""
    if not rows:
        print("(no rows)")
        return
    columns = columns or list(rows[0])

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_results(name: str, payload: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``payload`` plus the hardware description to ``<out_dir>/<name>.json``."""
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    doc = {"benchmark": name, "hardware": hardware(), "unix_time": time.time(), **payload}
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {path}")
    return path


def median_time(fn, *, repeat: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds (synchronizing CUDA around each call)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def kernel_parser(doc: str, repeat: int) -> argparse.ArgumentParser:
    """The options the kernel benchmarks share: --quick, --device, --backend, --threads, --repeat."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "torch"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 gives steadier numbers on a shared machine")
    parser.add_argument("--repeat", type=int, default=repeat)
    return parser
