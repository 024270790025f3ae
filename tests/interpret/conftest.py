"""Kernel tests under Triton's CPU interpreter. TRITON_INTERPRET=1 must be set before triton is
imported, so `make test-interpret` runs this folder in a pytest process of its own."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    skip = pytest.mark.skip(reason="run with TRITON_INTERPRET=1 in its own process (make test-interpret)")
    for item in items:
        item.add_marker(skip)
