"""The `llmds` console entry point."""

import sys


def main(argv=None) -> int:
    print("llmds: the demo is not built yet", file=sys.stderr)
    return 1
