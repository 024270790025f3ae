"""`llmds demo` as a new user meets it: cold (empty numba cache) against warm, wall time and longest silence.

Wall time depends on what else the machine runs; CPU seconds (user + system of the process) much
less so. Each run is a fresh process of the installed command with its own cache folder
(``LLMDS_TORCH_CACHE_DIR``): the cold run starts from an empty one and compiles every search loop, the
warm runs reuse what it wrote. Stderr (the progress output) is read as it arrives; the longest
silence is the largest gap between two writes, counting from the start and to the exit. The load
average is recorded beside each run, since the machine may be shared.

    python -m benchmarks.first_run [--warm-runs 2] [demo options, e.g. --requests 32]
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._common import print_table, write_results


def timed_run(argv: list[str], cache_dir: Path) -> dict:
    """Run ``argv`` with ``cache_dir`` as the library's cache; wall seconds and longest stderr gap."""
    env = {**os.environ, "LLMDS_TORCH_CACHE_DIR": str(cache_dir)}
    env.pop("NUMBA_CACHE_DIR", None)
    load_before = os.getloadavg()[0]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    writes = [start]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def read_stderr():
        while proc.stderr.read1(65536):
            writes.append(time.perf_counter())

    reader = threading.Thread(target=read_stderr)
    reader.start()
    stdout = proc.stdout.read()
    proc.wait()
    reader.join()
    end = time.perf_counter()
    writes.append(end)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    gaps = [b - a for a, b in zip(writes, writes[1:])]
    return {"seconds": end - start, "cpu_seconds": cpu, "longest_silence_s": max(gaps), "returncode": proc.returncode,
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "report_tail": stdout.decode(errors="replace").strip().splitlines()[-1:]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-runs", type=int, default=2, help="warm runs after the cold one (default 2)")
    args, demo_args = parser.parse_known_args(argv)
    command = [str(Path(sys.executable).with_name("llmds")), "demo", *demo_args]
    cache_dir = Path(tempfile.mkdtemp(prefix="llmds-first-run-"))
    try:
        rows = [{"run": "cold", **timed_run(command, cache_dir)}]
        for i in range(args.warm_runs):
            rows.append({"run": f"warm {i + 1}", **timed_run(command, cache_dir)})
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    warm_best = min(r["seconds"] for r in rows[1:]) if len(rows) > 1 else float("nan")
    for row in rows:
        row["x_warm_best"] = row["seconds"] / warm_best
    print_table(rows, ["run", "seconds", "x_warm_best", "cpu_seconds", "longest_silence_s", "load_before", "load_after",
                       "returncode"])
    payload = {"command": command, "rows": rows}
    write_results("first_run", payload)
    return payload


if __name__ == "__main__":
    main()
