import pytest
import torch

# One intra-op thread per test process: `pytest -n 2` runs two processes on the project's 2-core machines, and
# torch's default (one thread per core in each) oversubscribes them several times over. Results do not depend on it.
torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device this machine has: the CPU always, CUDA when present."""
    return torch.device(request.param)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# A script run in a subprocess under TRITON_INTERPRET=1 (see tests/ops/test_triton_interpreter.py), not a test module.
collect_ignore = ["ops/_triton_interp_checks.py"]
