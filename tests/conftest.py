import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

HAVE_ESCNN = importlib.util.find_spec("escnn") is not None

# The suite's models are small: one thread per process is faster than two contending ones on the 2-core CI
# machine (and the DDP test runs two processes).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip escnn-marked tests where the optional extra is absent.

    CI runs them in a separate environment that has escnn (`pytest -m escnn`); there a missing escnn is an
    import error, not a skip.
    """
    if HAVE_ESCNN:
        return
    skip = pytest.mark.skip(reason="escnn extra not installed (CI runs these in the escnn environment)")
    for item in items:
        if "escnn" in item.keywords:
            item.add_marker(skip)
