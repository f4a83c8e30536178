import numpy as np
import pytest

try:
    import torch
except ImportError:  # parity tests skip without PyTorch
    torch = None


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
