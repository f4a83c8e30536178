"""fastnorm against Flax's normalization layers (flax.linen), masks included: Flax's ``mask=`` takes the
statistics over the values where it is True and normalizes every value with them, as fastnorm's does.
Flax is channels last and its BatchNorm momentum is the weight of the old average with the biased batch
variance: fastnorm's ``channel_axis=-1``, ``momentum=1 - m`` and ``bessel=False``.  Skipped without Flax."""
import numpy as np
import pytest

import fastnorm

nn = pytest.importorskip("flax.linen")
jax = pytest.importorskip("jax")

ATOL = 2e-5


def _data(seed, shape, offset=3.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + offset).astype(np.float32)
    mask = rng.random(shape) < 0.7
    mask.reshape(-1, shape[-1])[:, 0] = True  # no statistic of no value
    return x, mask


def _params(seed, n):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2, n).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def _apply(module, x, params, **kwargs):
    variables = module.init(jax.random.PRNGKey(0), x, **kwargs)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    variables["params"].update(params)
    out = module.apply(variables, x, mutable=["batch_stats"], **kwargs)
    return out


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("ndim_normalized", [1, 2])
def test_layer_norm_and_rms_norm(masked, ndim_normalized):
    x, mask = _data(0, (4, 6, 8))
    m = mask if masked else None
    shape = x.shape[-ndim_normalized:]
    axes = tuple(range(-ndim_normalized, 0))
    w, b = (np.resize(p, shape).astype(np.float32) for p in _params(1, int(np.prod(shape))))
    ln = nn.LayerNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes, use_fast_variance=False)
    expected, _ = _apply(ln, x, {"scale": w, "bias": b}, mask=m)
    np.testing.assert_allclose(fastnorm.layer_norm(x, shape, w, b, 1e-5, mask=m), expected, atol=ATOL)
    rms = nn.RMSNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes)
    expected, _ = _apply(rms, x, {"scale": w}, mask=m)
    np.testing.assert_allclose(fastnorm.rms_norm(x, shape, w, 1e-5, mask=m), expected, atol=ATOL)


@pytest.mark.parametrize("masked", [False, True])
def test_group_norm_channels_last(masked):
    x, mask = _data(2, (2, 5, 5, 8))
    m = mask if masked else None
    w, b = _params(3, 8)
    expected, _ = _apply(nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False), x,
                         {"scale": w, "bias": b}, mask=m)
    got = fastnorm.group_norm(x, 4, w, b, 1e-5, channel_axis=-1, mask=m)
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("masked", [False, True])
def test_instance_norm_channels_last(masked):
    x, mask = _data(4, (2, 5, 5, 8))
    m = mask if masked else None
    w, b = _params(5, 8)
    expected, _ = _apply(nn.InstanceNorm(epsilon=1e-5, use_fast_variance=False), x, {"scale": w, "bias": b}, mask=m)
    # fastnorm's mask= goes with the channels on axis 1: the same values through a channels-first view.
    got = fastnorm.instance_norm(np.moveaxis(x, -1, 1), weight=w, bias=b, eps=1e-5,
                                 mask=None if m is None else np.moveaxis(m, -1, 1))
    np.testing.assert_allclose(np.moveaxis(got, 1, -1), expected, atol=ATOL)
    if m is None:
        got = fastnorm.instance_norm(x, weight=w, bias=b, eps=1e-5, channel_axis=-1)
        np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("masked", [False, True])
def test_batch_norm_training_and_running_statistics(masked):
    x, mask = _data(6, (16, 3, 8))
    m = mask if masked else None
    w, b = _params(7, 8)
    module = nn.BatchNorm(axis=-1, momentum=0.9, epsilon=1e-5, use_fast_variance=False)
    expected, state = _apply(module, x, {"scale": w, "bias": b}, use_running_average=False, mask=m)
    running_mean, running_var = np.zeros(8, np.float32), np.ones(8, np.float32)
    got = fastnorm.batch_norm(x, running_mean, running_var, w, b, training=True, momentum=0.1, eps=1e-5,
                              channel_axis=-1, bessel=False, mask=m)
    np.testing.assert_allclose(got, expected, atol=ATOL)
    np.testing.assert_allclose(running_mean, state["batch_stats"]["mean"], atol=ATOL)
    np.testing.assert_allclose(running_var, state["batch_stats"]["var"], atol=ATOL)
    # Evaluation with those running statistics, as Flax's use_running_average=True.
    frozen = module.apply({"params": {"scale": w, "bias": b}, "batch_stats": state["batch_stats"]}, x,
                          use_running_average=True)
    np.testing.assert_allclose(fastnorm.batch_norm(x, running_mean, running_var, w, b, eps=1e-5, channel_axis=-1),
                               frozen, atol=ATOL)
