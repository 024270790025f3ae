"""The generation examples run end to end (tiny sizes) in their own processes."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,args,expect", [
    ("generate.py", ["--num-prompts", "4", "--system-len", "16", "--max-new-tokens", "4"], "prefix hit rate"),
    ("beam_search.py", ["--beam-width", "3", "--max-new-tokens", "4"], "beam 2:"),
    ("parallel_sampling.py", ["--n", "3", "--max-new-tokens", "4"], "sample 2:"),
    pytest.param("hf_generate.py", ["--model-type", "qwen2", "--max-new-tokens", "4"],
                 "equal transformers.generate token for token",
                 marks=pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                          reason="needs the hf extra")),
])
def test_example_runs(script, args, expect):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout
    if script == "generate.py":  # three of the four prompts reuse the system prompt's full pages
        assert float(re.search(r"prefix hit rate\s+([\d.]+)%", proc.stdout).group(1)) > 0
