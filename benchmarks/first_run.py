"""`llmds demo` as a new user meets it: cold (empty numba cache) against warm, wall time and longest silence.

Wall time depends on what else the machine runs; CPU seconds (user + system of the process) much
less so. Each run is a fresh process of the installed command with its own cache folder
(``LLMDS_TORCH_CACHE_DIR``): the cold run starts from an empty one and compiles every search loop, the
warm runs reuse what it wrote. Stdout and stderr (the progress) are read as they arrive; the longest
silence is the largest gap between two writes from the start to the last output; the time the
process then takes to exit is reported apart. The load
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
    """Run ``argv`` with ``cache_dir`` as the library's cache: wall and CPU seconds, the longest
    silence on stdout and stderr together until the last output, and how long the process took to
    exit after it (interpreter teardown, mostly torch's)."""
    env = {**os.environ, "LLMDS_TORCH_CACHE_DIR": str(cache_dir)}
    env.pop("NUMBA_CACHE_DIR", None)
    load_before = os.getloadavg()[0]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    writes = [start]
    stdout = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def read(stream, keep=None):
        while chunk := stream.read1(65536):
            writes.append(time.perf_counter())
            if keep is not None:
                keep.append(chunk)

    readers = [threading.Thread(target=read, args=(proc.stderr,)),
               threading.Thread(target=read, args=(proc.stdout, stdout))]
    for reader in readers:
        reader.start()
    proc.wait()
    end = time.perf_counter()
    for reader in readers:
        reader.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    writes.sort()
    gaps = [b - a for a, b in zip(writes, writes[1:])]
    return {"seconds": end - start, "cpu_seconds": cpu, "longest_silence_s": max(gaps),
            "exit_after_output_s": end - writes[-1], "returncode": proc.returncode,
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "report_tail": b"".join(stdout).decode(errors="replace").strip().splitlines()[-1:]}


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
    print_table(rows, ["run", "seconds", "x_warm_best", "cpu_seconds", "longest_silence_s", "exit_after_output_s",
                       "load_before", "load_after", "returncode"])
    payload = {"command": command, "rows": rows}
    write_results("first_run", payload)
    return payload


if __name__ == "__main__":
    main()
