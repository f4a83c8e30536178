"""fastnorm against Flax's normalization layers (flax.linen), masks included: Flax's ``mask=`` takes the
statistics over the values where it is True and normalizes every value with them, as fastnorm's does.
Flax is channels last and its BatchNorm momentum is the weight of the old average with the biased batch
variance: fastnorm's ``channel_axis=-1``, ``momentum=1 - m`` and ``bessel=False``.  Flax's results come from
a child process (tests/flax_cases.py says why); skipped without Flax."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastnorm
from flax_cases import SHAPES, data, params

pytestmark = pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="Flax is not installed")
ATOL = 2e-5
MASKED = [False, True]


@pytest.fixture(scope="module")
def flax(tmp_path_factory):
    path = tmp_path_factory.mktemp("flax") / "cases.npz"
    script = pathlib.Path(__file__).with_name("flax_cases.py")
    subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=600)
    with np.load(path) as cases:
        return dict(cases)


@pytest.mark.parametrize("masked", MASKED)
@pytest.mark.parametrize("k", [1, 2])
def test_layer_norm_and_rms_norm(flax, masked, k):
    x, mask = data(0, SHAPES["rows"])
    m = mask if masked else None
    shape = x.shape[-k:]
    w, b = params(1, shape)
    np.testing.assert_allclose(fastnorm.layer_norm(x, shape, w, b, 1e-5, mask=m), flax[f"layer_norm-{k}-{masked}"],
                               atol=ATOL)
    np.testing.assert_allclose(fastnorm.rms_norm(x, shape, w, 1e-5, mask=m), flax[f"rms_norm-{k}-{masked}"], atol=ATOL)


@pytest.mark.parametrize("masked", MASKED)
def test_group_norm_and_instance_norm_channels_last(flax, masked):
    x, mask = data(2, SHAPES["images"])
    m = mask if masked else None
    w, b = params(3, (8,))
    got = fastnorm.group_norm(x, 4, w, b, 1e-5, channel_axis=-1, mask=m)
    np.testing.assert_allclose(got, flax[f"group_norm-{masked}"], atol=ATOL)
    if m is None:
        got = fastnorm.instance_norm(x, weight=w, bias=b, eps=1e-5, channel_axis=-1)
    else:  # fastnorm's mask= goes with the channels on axis 1: the same values through a channels-first view
        got = np.moveaxis(fastnorm.instance_norm(np.moveaxis(x, -1, 1), weight=w, bias=b, eps=1e-5,
                                                 mask=np.moveaxis(m, -1, 1)), 1, -1)
    np.testing.assert_allclose(got, flax[f"instance_norm-{masked}"], atol=ATOL)


@pytest.mark.parametrize("masked", MASKED)
def test_batch_norm_training_running_statistics_and_eval(flax, masked):
    x, mask = data(6, SHAPES["batch"])
    m = mask if masked else None
    w, b = params(3, (8,))
    running_mean, running_var = np.zeros(8, np.float32), np.ones(8, np.float32)
    got = fastnorm.batch_norm(x, running_mean, running_var, w, b, training=True, momentum=0.1, eps=1e-5,
                              channel_axis=-1, bessel=False, mask=m)
    np.testing.assert_allclose(got, flax[f"batch_norm-{masked}"], atol=ATOL)
    np.testing.assert_allclose(running_mean, flax[f"batch_norm-mean-{masked}"], atol=ATOL)
    np.testing.assert_allclose(running_var, flax[f"batch_norm-var-{masked}"], atol=ATOL)
    got = fastnorm.batch_norm(x, running_mean, running_var, w, b, eps=1e-5, channel_axis=-1)
    np.testing.assert_allclose(got, flax[f"batch_norm-eval-{masked}"], atol=ATOL)
