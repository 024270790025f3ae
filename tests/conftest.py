import pytest
import torch


@pytest.fixture(scope="module")
def torch_one_thread():
    """Torch on one thread for a module of tiny-matrix tests: one thread is fastest there, and several
    stall on a busy machine. Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
