"""backward after the forward's input was modified in place raises (PyTorch: "one of the variables
needed for gradient computation has been modified by an inplace operation"), and never on an input that
was not: the backward's sums of xhat and xhat**2 are checked against the forward's statistics."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnorm
import reference

MESSAGE = "modified by an inplace operation"


def _layers():
    """(name, make(dtype), input shape): every layer whose training backward uses the batch's statistics."""
    yield "BatchNorm1d", lambda dtype: fastnorm.BatchNorm1d(4, dtype=dtype), (6, 4, 5)
    yield "BatchNorm1d (N, C)", lambda dtype: fastnorm.BatchNorm1d(4, dtype=dtype), (9, 4)
    yield "BatchNorm1d by columns", lambda dtype: fastnorm.BatchNorm1d(4, dtype=dtype), (64, 4, 3)
    yield "BatchNorm2d channels last", lambda dtype: fastnorm.BatchNorm2d(4, channel_axis=-1, dtype=dtype), (3, 5, 5, 4)
    yield "BatchNorm2d few channels", lambda dtype: fastnorm.BatchNorm2d(2, dtype=dtype), (4, 2, 100, 90)
    yield "LayerNorm", lambda dtype: fastnorm.LayerNorm(12, dtype=dtype), (7, 12)
    yield "LayerNorm long rows", lambda dtype: fastnorm.LayerNorm(5000, dtype=dtype), (3, 5000)
    yield "RMSNorm", lambda dtype: fastnorm.RMSNorm(12, dtype=dtype), (7, 12)
    yield "GroupNorm", lambda dtype: fastnorm.GroupNorm(2, 4, dtype=dtype), (3, 4, 6)
    yield "GroupNorm one value per channel", lambda dtype: fastnorm.GroupNorm(2, 4, dtype=dtype), (3, 4)
    yield "GroupNorm channels last", lambda dtype: fastnorm.GroupNorm(2, 4, channel_axis=-1, dtype=dtype), (3, 6, 4)
    yield "InstanceNorm1d", lambda dtype: fastnorm.InstanceNorm1d(4, affine=True, dtype=dtype), (3, 4, 7)
    yield "InstanceNorm2d big", lambda dtype: fastnorm.InstanceNorm2d(2, dtype=dtype), (1, 2, 200, 200)


LAYERS = list(_layers())


@st.composite
def unmodified_cases(draw):
    layer = draw(st.sampled_from(range(len(LAYERS))))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = LAYERS[layer][2]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    big = 1e30 if dtype == np.float32 else 1e250
    offset = draw(st.sampled_from([0.0, 1.0, -3e3, 1e4, 1e6, 1e10, big]))
    scale = draw(st.sampled_from([1e-30, 1e-6, 1e-3, 1.0, 1e3, 1e20]))
    kind = draw(st.sampled_from(["normal", "constant", "nan", "inf", "two values", "zeros"]))
    x = offset + scale * rng.normal(size=shape)
    if kind == "constant":
        x[...] = offset + scale
    elif kind == "nan":
        x.flat[rng.integers(x.size)] = np.nan
    elif kind == "inf":
        x.flat[rng.integers(x.size)] = -np.inf
    elif kind == "two values":
        x = np.where(rng.random(shape) < 0.5, offset, offset + scale)
    elif kind == "zeros":
        x[..., ::2] = 0.0
    return layer, x.astype(dtype), draw(st.sampled_from([1e-5, 1e-30, 5e-324, 1.0])), draw(st.sampled_from([1, 2]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=unmodified_cases())
def test_never_raises_on_an_unmodified_input(case):
    """Any data: offsets far beyond the spread, tiny and huge scales, constant groups, NaN and inf, eps
    down to the smallest double, float32 and float64, one and two threads, the sums at the CPU's ISA level
    and at level 0; through the layers and through the functions given eps."""
    from fastnorm import _kernels

    index, x, eps, nthreads = case
    name, make, _ = LAYERS[index]
    g = np.random.default_rng(0).normal(size=x.shape).astype(x.dtype)
    try:
        for level in (3, 0):
            _kernels.set_isa(level)
            layer = make(x.dtype)
            layer.eps = eps
            with np.errstate(all="ignore"), fastnorm.threads(nthreads):
                layer(x)
                layer.backward(g)
                x_saved, stats = layer._saved[0], layer._saved[1].stats
                if isinstance(layer, fastnorm.LayerNorm):
                    fastnorm.layer_norm_backward(g, x_saved, layer.normalized_shape, *stats, eps=eps)
                elif isinstance(layer, fastnorm.GroupNorm):
                    fastnorm.group_norm_backward(g, x_saved, layer.num_groups, *stats,
                                                 channel_axis=layer.channel_axis, eps=eps)
    finally:
        _kernels.set_isa()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", range(len(LAYERS)), ids=[name for name, _, _ in LAYERS])
@pytest.mark.parametrize("modification", ["x += y", "x *= 0.5", "x *= 2", "x += 1", "one value"])
def test_raises_after_an_inplace_modification(index, dtype, modification):
    name, make, shape = LAYERS[index]
    layer = make(dtype)
    x = (np.random.default_rng(1).normal(size=shape) * 2 + 0.5).astype(dtype)
    y = layer(x)
    if modification == "x += y":
        x += y  # the issue's example: ln(x) has mean 0 in each row, so only the variance tells
    elif modification == "x *= 0.5":
        x *= 0.5
    elif modification == "x *= 2":
        x *= 2
    elif modification == "x += 1":
        x += 1
    else:
        x.flat[x.size // 2] += 50
    with pytest.raises(RuntimeError, match=MESSAGE):
        layer.backward(np.ones_like(x))


def test_the_issue_example_and_what_the_functions_do(rng):
    x = rng.normal(size=(8, 16)).astype(np.float32)
    ln = fastnorm.LayerNorm(16)
    x += ln(x)
    with pytest.raises(RuntimeError, match=MESSAGE):
        ln.backward(np.ones_like(x))
    # The functions check the input against the statistics they are given when given the forward's eps
    # (statistics of another input are a misuse too); without it, they take the statistics as they are.
    x = rng.normal(size=(8, 16))
    _, mean, rstd = fastnorm.layer_norm(x, 16, return_stats=True)
    for modified in (x * 2, (x - x.mean(1, keepdims=True)) * 0.5 + x.mean(1, keepdims=True), x + 1):
        with pytest.raises(RuntimeError, match=MESSAGE):
            fastnorm.layer_norm_backward(np.ones_like(x), modified, 16, mean, rstd, eps=1e-5)
        with pytest.raises(RuntimeError, match=MESSAGE):  # the twin, the specification, agrees
            reference.layer_norm_backward(np.ones_like(x), modified, 16, mean, rstd, eps=1e-5)
        fastnorm.layer_norm_backward(np.ones_like(x), modified, 16, mean, rstd)
    fastnorm.layer_norm_backward(np.ones_like(x), x.copy(), 16, mean, rstd, eps=1e-5)
    reference.layer_norm_backward(np.ones_like(x), x.copy(), 16, mean, rstd, eps=1e-5)


def test_frozen_statistics_are_not_checked(rng):
    """Evaluation mode normalizes with the running statistics: the input gradient does not depend on the
    input, and an input modified after the forward is no error."""
    bn = fastnorm.BatchNorm2d(3).eval()
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    bn(x)
    x *= 10
    np.testing.assert_allclose(bn.backward(np.ones_like(x)), np.full(x.shape, 1 / np.sqrt(1 + 1e-5)), rtol=1e-6)


def test_an_input_given_as_out_is_kept_as_it_was(rng):
    """A forward writing over its own input keeps a copy for backward: nothing to detect, the gradient
    is the one of the input as it was."""
    x = rng.normal(size=(6, 10))
    ln = fastnorm.LayerNorm(10, dtype=np.float64)
    expected = fastnorm.LayerNorm(10, dtype=np.float64)
    expected(x.copy())
    ln(x, out=x)
    np.testing.assert_array_equal(ln.backward(np.ones_like(x) + x), expected.backward(np.ones_like(x) + x))
