import importlib.util
from pathlib import Path

import pytest
import torch
from tinymodels import tiny_llama


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def llama64():
    return tiny_llama(torch.float64)


@pytest.fixture(scope="session")
def host_memory():
    """benchmarks/host_memory.py as a module: its peak-RSS measurements are the tests' too."""
    spec = importlib.util.spec_from_file_location(
        "host_memory", Path(__file__).resolve().parents[1] / "benchmarks" / "host_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
