"""examples/serve_sim.py runs end to end on tiny traces (synthetic and an Azure-format CSV)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "serve_sim.py"


def run(*args):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_synthetic_prints_each_policy_side_by_side():
    out = run("--requests", "30", "--rate", "50", "--pages", "128", "--page-size", "8")
    header = next(line for line in out.splitlines() if "fcfs" in line)
    assert header.split() == ["fcfs", "srpt", "slo"]
    for label in ("SLO attainment", "TTFT p99 (ms)", "TPOT p50 (ms)", "queue delay p90 (ms)", "preemptions"):
        row = next(line for line in out.splitlines() if line.startswith(label))
        assert len(row[len(label):].split()) == 3
    finished = next(line for line in out.splitlines() if line.startswith("finished / refused")).split()[-9:]
    cells = [finished[i:i + 3] for i in range(0, 9, 3)]
    assert all(c == cells[0] for c in cells)  # same trace, same refusals (too large for 128 pages)
    assert int(cells[0][0]) + int(cells[0][2]) == 30 and int(cells[0][0]) > 0


def test_azure_csv(tmp_path):
    csv = tmp_path / "trace.csv"
    rows = [f"2023-11-16 18:15:{46 + i // 4}.{i:07d},{20 + 3 * i},{1 + i % 5}" for i in range(12)]
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    out = run("--azure", str(csv), "--policies", "fcfs", "slo", "--pages", "64", "--page-size", "8")
    assert "12 requests" in out
    finished = next(line for line in out.splitlines() if line.startswith("finished / refused"))
    assert finished.split()[-6:] == ["12", "/", "0", "12", "/", "0"]
