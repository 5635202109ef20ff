"""Shared unit-test settings (the scratch folders for what a test run writes are set in
the root conftest.py, which also covers the notebooks)."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use small tensors: one thread is fastest and immune to a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def load_script():
    """Import a repository script that is not part of the package (benchmarks/harness.py,
    scripts/run_notebooks.py, setup.py) by its path from the checkout root, as a fresh
    module: ``load_script("benchmarks/harness.py")``. Nothing under ``__main__`` runs."""
    def load(relative_path: str):
        path = ROOT / relative_path
        spec = importlib.util.spec_from_file_location(f"script_under_test_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
