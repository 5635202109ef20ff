"""Shared unit-test settings (the scratch folders for what a test run writes are set in
the root conftest.py, which also covers the notebooks)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use small tensors: one thread is fastest and immune to a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
