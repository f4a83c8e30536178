"""float64 data up to 1e308: every reduction scales before it squares, so a result that is a double
comes out right (the reference: the same math on the data scaled by an exact power of two)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnorm
import reference

K = 600  # the reference computes on x * 2**-K: about 1e-27 .. 1e127 for the data below


@st.composite
def huge(draw, shapes):
    """float64 data whose magnitudes reach 1e150..1e308 while its variance stays a double: a spread of
    2**500..2**509 around 0 (with small values among the huge ones) or around an offset up to 2**1020."""
    shape = draw(st.sampled_from(shapes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = 2.0 ** draw(st.integers(500, 509)) * rng.normal(size=shape)
    if draw(st.booleans()):
        x[..., ::3] = 1.0
    else:
        x += draw(st.sampled_from([1.0, -1.0])) * 2.0 ** draw(st.integers(500, 1020))
    return x


def _scaled(x):
    return np.ldexp(x, -K)


def _close(actual, expected, scale=0):
    """actual == expected * 2**scale to about 1e-10 of the largest value (inf where it overflows)."""
    expected = np.ldexp(np.asarray(expected, dtype=np.float64), scale)
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(actual), finite)
    assert np.array_equal(actual[~finite], expected[~finite], equal_nan=True)
    tol = 1e-10 * np.ldexp(1.0, scale) * max(1.0, float(np.abs(np.ldexp(expected[finite], -scale)).max(initial=0)))
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-10, atol=tol)


def test_the_issue_examples():
    for x, mean, var, y in (([1e154, -1e154], 0.0, 1e308, [1.0, -1.0]), ([1e308, 1e308], 1e308, 0.0, [0.0, 0.0]),
                            ([1.0, -1.0], 0.0, 1.0, [1.0, -1.0])):
        x = np.array(x)
        assert fastnorm.moments(x, 0) == (mean, var)
        np.testing.assert_allclose(fastnorm.layer_norm(x[None], 2), [y], rtol=1e-5)
        moments = fastnorm.Moments.of(x[:1], 0) + fastnorm.Moments.of(x[1:], 0)
        assert (moments.mean, moments.var()) == (mean, var)
    assert fastnorm.moments(np.array([1.7e308, -1.7e308]), 0)[1] == np.inf  # the variance is beyond the doubles


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=huge([(2,), (3, 5), (4096,), (5, 4100), (70, 3), (3000, 2)]), nthreads=st.sampled_from([1, 2]))
def test_moments_and_merges(x, nthreads):
    with fastnorm.threads(nthreads):
        for axes in {0, x.ndim - 1, tuple(range(x.ndim))}:
            mean, var = fastnorm.moments(x, axes)
            ref_mean, ref_var = reference.moments(_scaled(x), axes)
            _close(mean, ref_mean, K)
            _close(var, ref_var, 2 * K)
        parts = np.array_split(x, 3, axis=0)
        merged = fastnorm.Moments.of(parts[0], 0) + fastnorm.Moments.of(parts[1], 0) + fastnorm.Moments.of(parts[2], 0)
        _close(merged.mean, _scaled(x).mean(0), K)
        _close(merged.var(), _scaled(x).var(0), 2 * K)


def _ops():
    """(name, forward, backward or None) on float64 data: forward(x, eps) -> (y, *stats)."""
    yield ("layer_norm", lambda x, eps: fastnorm.layer_norm(x, x.shape[-1], eps=eps, return_stats=True),
           lambda g, x, s: fastnorm.layer_norm_backward(g, x, x.shape[-1], *s)[0])
    yield ("rms_norm", lambda x, eps: fastnorm.rms_norm(x, x.shape[-1], eps=eps, return_stats=True),
           lambda g, x, s: fastnorm.rms_norm_backward(g, x, x.shape[-1], *s)[0])
    yield ("batch_norm", lambda x, eps: fastnorm.batch_norm(x, training=True, eps=eps, return_stats=True),
           lambda g, x, s: fastnorm.batch_norm_backward(g, x, *s)[0])
    yield ("batch_norm channels last",
           lambda x, eps: fastnorm.batch_norm(x, training=True, eps=eps, channel_axis=-1, return_stats=True),
           lambda g, x, s: fastnorm.batch_norm_backward(g, x, *s, channel_axis=-1)[0])
    yield ("group_norm", lambda x, eps: fastnorm.group_norm(x, 2, eps=eps, return_stats=True),
           lambda g, x, s: fastnorm.group_norm_backward(g, x, 2, *s)[0])
    yield ("group_norm channels last",
           lambda x, eps: fastnorm.group_norm(x, 2, eps=eps, channel_axis=-1, return_stats=True),
           lambda g, x, s: fastnorm.group_norm_backward(g, x, 2, *s, channel_axis=-1)[0])
    yield ("instance_norm", lambda x, eps: fastnorm.instance_norm(x, eps=eps, return_stats=True),
           lambda g, x, s: fastnorm.instance_norm_backward(g, x, *s)[0])


OPS = list(_ops())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=huge([(4, 6, 4), (8, 4, 6), (2, 4, 700), (64, 4, 2)]), op=st.sampled_from(range(len(OPS))),
       nthreads=st.sampled_from([1, 2]))
def test_normalizations_and_their_gradients(x, op, nthreads):
    """Outputs and input gradients of huge data equal those of the data scaled to ordinary magnitudes,
    eps scaled with the data's square (the smallest double there)."""
    name, forward, backward = OPS[op]
    # Not default_rng(0): x may be drawn from that stream too, and a gradient proportional to x's own
    # normalized values has a backward of 0, all rounding (a seed no integer draw gives).
    g = np.random.default_rng([0, 1]).normal(size=x.shape)
    with fastnorm.threads(nthreads):
        y, *stats = forward(x, 2.0 ** (2 * K - 1074))
        y_ref, *stats_ref = forward(_scaled(x), 2.0 ** -1074)
        dx = backward(g, x, stats)
        dx_ref = backward(g, _scaled(x), stats_ref)
    _close(y, y_ref)
    _close(dx, dx_ref, -K)


def test_variance_beyond_the_doubles_normalizes_to_zero_not_nan():
    x = np.array([[1e300, -1e300, 0.0]])
    assert fastnorm.moments(x, 1)[1][0] == np.inf
    np.testing.assert_array_equal(fastnorm.layer_norm(x, 3), [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_gradients_with_eps_zero_at_both_ends_of_the_range(rng, scale):
    """rstd**2 enters the gradient: beyond 2**+-400 the backward runs on rescaled data."""
    x = rng.normal(size=(6, 40)) * scale
    g = rng.normal(size=x.shape)
    y, mean, rstd = fastnorm.layer_norm(x, 40, eps=0.0, return_stats=True)
    dx = fastnorm.layer_norm_backward(g, x, 40, mean, rstd)[0]
    scaled = x / scale
    expected = reference.layer_norm_backward(g, scaled, 40, *reference.layer_norm(scaled, 40, eps=0.0,
                                                                                return_stats=True)[1:])[0] / scale
    np.testing.assert_allclose(dx, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
