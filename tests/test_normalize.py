"""normalize: PyTorch's values and autograd gradients over generated shapes, exponents and axes in every float
dtype; finite differences in float64; no overflow where the norm is a double; the errors."""
import math

import numpy as np
import pytest
from hypothesis import strategies as st

from conftest import against_torch, assert_close_scaled, input_and_gradient, requires_torch, torch
from fastnorm import functional as F

EXPONENTS = [2.0, 1.0, 3.0, 0.5, 1.5, 4.0, math.inf]


@st.composite
def normalize_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=4)))
    ndim = max(len(shape), 1)
    dim = draw(st.one_of(st.integers(-ndim, ndim - 1),
                         st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)))
    return (shape, draw(st.sampled_from(EXPONENTS)), dim, draw(st.sampled_from([1e-12, 0.5])),
            draw(st.sampled_from([np.float16, np.float32, np.float64])), draw(st.integers(0, 2**32 - 1)),
            draw(st.booleans()))


def _assert_close(ours, theirs, dtype):
    with np.errstate(over="ignore"):
        theirs = theirs.astype(dtype)  # so that both overflow alike (float16 gradients of a norm below eps)
    assert_close_scaled(ours, theirs, dtype)


@against_torch(normalize_cases(), max_examples=200)
def test_matches_pytorch_forward_and_autograd(case):
    shape, p, dim, eps, dtype, seed, zeros = case
    x, g = input_and_gradient(seed, shape, dtype, 2.0)
    if zeros and x.ndim:
        x[(0,) * (x.ndim - 1)] = 0.0  # a line of zeros: a norm below eps
    t = torch.tensor(x.astype(np.float64), requires_grad=True)  # float64: PyTorch's float16 rounds its sums
    y = torch.nn.functional.normalize(t, p, dim, eps)
    y.backward(torch.tensor(g.astype(np.float64)))
    _assert_close(F.normalize(x, p, dim, eps), y.detach().numpy(), dtype)
    _assert_close(F.normalize_backward(g, x, p, dim, eps), t.grad.numpy(), dtype)


@requires_torch
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, math.inf])
def test_float32_matches_pytorchs_float32(p, rng):
    x = rng.normal(size=(16, 300)).astype(np.float32)
    expected = torch.nn.functional.normalize(torch.tensor(x), p, 1).numpy()
    np.testing.assert_allclose(F.normalize(x, p), expected, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("p", [2.0, 1.0, 0.7, 3.0, math.inf])
@pytest.mark.parametrize("dim", [1, -1, (0, 2)])
def test_backward_matches_finite_differences(p, dim, rng):
    x = rng.normal(size=(3, 4, 2))
    x[0, 0, 0] = x[0, 1, 0] * 1.7  # no ties for the maximum: the inf norm is differentiable here
    g = rng.normal(size=x.shape)
    h = 1e-6
    numerical = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        numerical[i] = np.sum((F.normalize(up, p, dim) - F.normalize(down, p, dim)) * g) / (2 * h)
    np.testing.assert_allclose(F.normalize_backward(g, x, p, dim), numerical, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 0.5, math.inf])
@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_no_overflow_or_underflow_where_the_norm_is_a_double(p, scale, rng):
    x = rng.normal(size=(4, 5))  # eps=0: the norms of 1e-300 are far below the default eps
    np.testing.assert_allclose(F.normalize(x * scale, p, eps=0.0), F.normalize(x, p), rtol=1e-14)
    g = rng.normal(size=x.shape)
    np.testing.assert_allclose(F.normalize_backward(g, x * scale, p, eps=0.0) * scale,
                               F.normalize_backward(g, x, p), rtol=1e-12, atol=1e-15)


def test_zero_dimensional_and_empty_inputs_and_out_aliasing(rng):
    assert F.normalize(np.float32(-3.0), dim=0) == np.float32(-1.0)
    assert F.normalize(np.zeros((0, 4)), dim=0).shape == (0, 4)
    x = rng.normal(size=(3, 4)).astype(np.float16)
    expected = F.normalize(x, dim=-1)
    assert F.normalize(x, dim=-1, out=x) is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("call, error, name", [
    (lambda x: F.normalize(x, p=0.0), ValueError, "p"),
    (lambda x: F.normalize(x, p=-math.inf), ValueError, "p"),
    (lambda x: F.normalize(x, p="2"), TypeError, "p"),
    (lambda x: F.normalize(x, dim=2), ValueError, "dim"),
    (lambda x: F.normalize(x, dim=(0, -2)), ValueError, "dim"),
    (lambda x: F.normalize(x, dim=()), ValueError, "dim"),
    (lambda x: F.normalize(x, dim=1.0), TypeError, "dim"),
    (lambda x: F.normalize(x, eps=-1.0), ValueError, "eps"),
    (lambda x: F.normalize(x.astype(np.int64)), TypeError, "input"),
    (lambda x: F.normalize(x, out=np.zeros((3, 3), np.float32)), ValueError, "out"),
    (lambda x: F.normalize_backward(x[:1], x), ValueError, "grad_output"),
    (lambda x: F.normalize_backward(x, x, p=float("nan")), ValueError, "p"),
])
def test_errors_name_the_argument_and_write_nothing(call, error, name):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    before = x.copy()
    with pytest.raises(error, match=name):
        call(x)
    np.testing.assert_array_equal(x, before)
