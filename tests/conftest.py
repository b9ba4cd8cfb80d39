import pytest
import torch
from tinymodels import tiny_llama


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def llama64():
    return tiny_llama(torch.float64)
