"""The README quickstart loop (examples/custom_decoder.py) runs and agrees with dense attention."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_decoder.py"


def test_quickstart_loop_matches_dense_attention():
    spec = importlib.util.spec_from_file_location("custom_decoder", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.main(["--steps", "20"])  # crosses page boundaries (37-token prompt, pages of 16)
    assert len(generated) == 20
