"""Shared test settings: one thread for unit tests, scratch folders for everything a
test run writes, and the ``slow`` marker."""
import os
import tempfile
from pathlib import Path

import pytest
import torch


def pytest_configure(config):
    """Figures and cached results of notebooks run by the tests (nbval, papermill) go to a
    scratch folder: running the tests never changes a tracked file, and no cached weight
    from an earlier run can stand in for training with the current code."""
    scratch = Path(tempfile.mkdtemp(prefix="mresnet-tests-"))
    os.environ["MRESNET_FIGURES_DIR"] = str(scratch / "figures")
    os.environ["MRESNET_RESULTS_DIR"] = str(scratch / "results")


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use small tensors: one thread is fastest and immune to a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
