import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

try:
    import torch
except ImportError:  # parity tests skip without PyTorch
    torch = None

try:
    import safetensors
    import safetensors.numpy
except ImportError:  # writing safetensors files needs the package; reading does not
    safetensors = None


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def fresh_python(code, *args):
    """The stdout of ``code`` (with ``args`` in sys.argv) run by a new Python that imports this fastnorm:
    its modules start from nothing, so what an import pulls in shows in ``sys.modules``."""
    import fastnorm

    package_root = os.path.dirname(os.path.dirname(fastnorm.__file__))
    proc = subprocess.run([sys.executable, "-c", code, *args], env=dict(os.environ, PYTHONPATH=package_root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
requires_safetensors = pytest.mark.skipif(safetensors is None, reason="safetensors is not installed")


def assert_sync_matches_whole(sync, whole):
    """A SyncBatchNorm has the running statistics and parameter gradients of the layer trained on the
    whole batch (float64: up to rounding)."""
    np.testing.assert_allclose(sync.running_mean, whole.running_mean, rtol=1e-12)
    np.testing.assert_allclose(sync.running_var, whole.running_var, rtol=1e-12)
    np.testing.assert_allclose(sync.grad_weight, whole.grad_weight, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sync.grad_bias, whole.grad_bias, rtol=1e-12, atol=1e-12)


@pytest.fixture(params=[3, 2, 1, 0])
def isa_level(request):
    """Runs a test at each ISA level of the C loops that the CPU has (src/fastnorm/_simd.h: 0 the baseline,
    1 AVX2+FMA+F16C, 2 AVX-512, 3 AVX-512 with BF16), the others skipped."""
    from fastnorm import _kernels

    try:
        if _kernels.set_isa(request.param) != request.param:
            pytest.skip(f"ISA level {request.param} is beyond this CPU or build")
        yield request.param
    finally:
        _kernels.set_isa()


@pytest.fixture
def uncapped_threads(monkeypatch):
    """Lets threads(n) reach 4 even on a machine with fewer CPUs (counts are bounded by the CPUs
    available), so that the tests of bitwise determinism see the work split for 3 and 4 threads too."""
    from fastnorm import _threads

    cpus = _threads.available_cpus()
    monkeypatch.setattr(_threads, "available_cpus", lambda: max(4, cpus))
    yield
    monkeypatch.undo()
    _threads.set_num_threads(None)  # the process's count and bound as they were


def keras_or_skip():
    """Keras 3 on its PyTorch backend (TensorFlow is not needed), imported on first use (it takes seconds);
    the calling test skips where it is not installed."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as error:
        pytest.skip(f"Keras is not installed or has no backend ({error})")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on {keras.backend.backend()}; these tests read its gradients through PyTorch")
    return keras


def keras_renorm_or_skip():
    """Keras, where its BatchNormalization has Batch Renormalization (older Keras 3 releases had not)."""
    import inspect

    keras = keras_or_skip()
    if "renorm" not in inspect.signature(keras.layers.BatchNormalization).parameters:
        pytest.skip(f"Keras {keras.__version__}'s BatchNormalization has no renorm")
    return keras


# Of a result against PyTorch's, relative to the largest magnitude of PyTorch's (see assert_close_scaled).
SCALED_TOLERANCE = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}


def assert_close_scaled(ours, theirs, dtype):
    """``ours`` is of ``dtype`` and ``theirs``' shape, and within SCALED_TOLERANCE[dtype] times the largest
    finite magnitude of ``theirs`` (at least 1) of it everywhere."""
    assert ours.dtype == dtype and ours.shape == theirs.shape
    finite = np.abs(theirs[np.isfinite(theirs)]).astype(np.float64)
    scale = max(1.0, float(finite.max(initial=0.0)))
    np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), rtol=0,
                               atol=SCALED_TOLERANCE[dtype] * scale)


def input_and_gradient(seed, shape, dtype, scale):
    """From ``seed``: an input of ``shape`` and ``dtype``, normal with standard deviation ``scale``, and an
    output gradient of standard normal values."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, scale, shape).astype(dtype), rng.normal(size=shape).astype(dtype)


def against_torch(cases, max_examples):
    """A property test comparing with PyTorch over the ``cases`` strategy: skipped without PyTorch, and
    without a deadline (PyTorch's first calls are slow)."""
    def decorate(test):
        return requires_torch(settings(max_examples=max_examples, deadline=None)(given(cases)(test)))
    return decorate
