"""examples/rag.py runs end to end on its small setting and reports cache hits."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rag_example_quick():
    done = subprocess.run([sys.executable, "-m", "examples.rag", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["documents"] == 400 and summary["queries"] == 21
    assert summary["cache"]["hits"] > 0
    assert summary["cache"]["hits"] + summary["cache"]["misses"] == 21


def test_rag_example_prints_results():
    done = subprocess.run([sys.executable, "-m", "examples.rag", "--quick", "--k", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Q: ") == 6 and "cache hits" in done.stdout and "fused score" in done.stdout
