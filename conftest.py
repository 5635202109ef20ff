"""Root pytest configuration, loaded whichever paths a test run names (tests/, notebooks/,
or single notebooks): figures and cached results of everything a test run executes go to
a scratch folder, so running the tests never changes a tracked file and no cached weight
from an earlier run can stand in for training with the current code."""
import os
import tempfile
from pathlib import Path


def pytest_configure(config):
    scratch = Path(tempfile.mkdtemp(prefix="mresnet-tests-"))
    os.environ["MRESNET_FIGURES_DIR"] = str(scratch / "figures")
    os.environ["MRESNET_RESULTS_DIR"] = str(scratch / "results")
