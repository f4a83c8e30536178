"""local_response_norm and LocalResponseNorm: PyTorch's values and autograd gradients over generated shapes,
window sizes and constants in every float dtype; finite differences in float64; the errors; the layer's
backward."""
import numpy as np
import pytest
from hypothesis import strategies as st

import fastnorm
from conftest import against_torch, assert_close_scaled, input_and_gradient, requires_torch, torch
from fastnorm import functional as F


@st.composite
def lrn_cases(draw):
    ndim = draw(st.integers(3, 5))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 40))) + tuple(
        draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2)))
    size = draw(st.integers(1, shape[1] + 20))  # up to windows longer than the channels (the running sums)
    return (shape, size, draw(st.sampled_from([1e-4, 0.1, 1.0, 3.0])), draw(st.sampled_from([0.75, 0.5, 1.0, 2.0])),
            draw(st.sampled_from([1.0, 2.0, 0.5])), draw(st.sampled_from([np.float16, np.float32, np.float64])),
            draw(st.integers(0, 2**32 - 1)))


def _torch_lrn(x, g, size, alpha, beta, k):
    """PyTorch's output and input gradient (computed in float64 for a float16 input: CPU float16 pooling
    rounds each partial sum)."""
    t = torch.tensor(x.astype(np.float64) if x.dtype == np.float16 else x, requires_grad=True)
    y = torch.nn.functional.local_response_norm(t, size, alpha, beta, k)
    y.backward(torch.tensor(g.astype(np.float64) if x.dtype == np.float16 else g))
    return y.detach().numpy(), t.grad.numpy()


@against_torch(lrn_cases(), max_examples=150)
def test_matches_pytorch_forward_and_autograd(case):
    shape, size, alpha, beta, k, dtype, seed = case
    x, g = input_and_gradient(seed, shape, dtype, 3.0)
    y_torch, dx_torch = _torch_lrn(x, g, size, alpha, beta, k)
    assert_close_scaled(F.local_response_norm(x, size, alpha, beta, k), y_torch, dtype)
    assert_close_scaled(F.local_response_norm_backward(g, x, size, alpha, beta, k), dx_torch, dtype)
    layer = fastnorm.LocalResponseNorm(size, alpha, beta, k)
    assert_close_scaled(layer(x), y_torch, dtype)
    assert_close_scaled(layer.backward(g), dx_torch, dtype)
    assert layer.grad_weight is None and layer.grad_bias is None


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 30])  # 30: longer than the 6 channels, running sums
def test_backward_matches_finite_differences(size, rng):
    x = rng.normal(0.0, 2.0, (2, 6, 3))
    g = rng.normal(size=x.shape)
    alpha, beta, k, h = 0.7, 0.8, 1.5, 1e-6
    numerical = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        numerical[i] = np.sum((F.local_response_norm(up, size, alpha, beta, k)
                               - F.local_response_norm(down, size, alpha, beta, k)) * g) / (2 * h)
    np.testing.assert_allclose(F.local_response_norm_backward(g, x, size, alpha, beta, k), numerical,
                               rtol=1e-6, atol=1e-8)


def test_window_is_pytorchs_for_an_even_size():
    """size 2: channel c's window is c - 1 and c (none after it), the padding counted in the mean."""
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    y = F.local_response_norm(x, 2, alpha=1.0, beta=1.0, k=0.0).ravel()
    np.testing.assert_allclose(y, [1 / 0.5, 2 / 2.5, 3 / 6.5])


def test_long_windows_keep_the_precision_of_small_channels():
    """The running sums of long windows are taken in float64: a float32 channel 1e-6 times the size of
    the others keeps float32 precision."""
    x = np.ones((1, 40, 1), np.float32)
    x[0, ::2] = 1e3
    x[0, 1::2] = 1e-3
    exact = F.local_response_norm(x.astype(np.float64), 25, 1.0, 0.75, 1.0)
    np.testing.assert_allclose(F.local_response_norm(x, 25, 1.0, 0.75, 1.0), exact, rtol=1e-7)


@pytest.mark.parametrize("size", [1, 4, 30])
def test_float64_up_to_1e308_does_not_overflow(size, rng):
    """With k = 0 the op is homogeneous: LRN(a x) = a**(1 - 2 beta) LRN(x), dx(a x) = a**(-2 beta) dx(x);
    at a = 2**600 the squares would overflow without the scaling, at 2**-600 underflow."""
    x = rng.normal(size=(2, 6, 3))
    g = rng.normal(size=x.shape)
    y, dx = F.local_response_norm(x, size, 0.5, 0.75, 0.0), F.local_response_norm_backward(g, x, size, 0.5, 0.75, 0.0)
    for e in (600, -600):
        a = 2.0 ** e
        np.testing.assert_allclose(F.local_response_norm(x * a, size, 0.5, 0.75, 0.0), y * 2.0 ** (e * -0.5),
                                   rtol=1e-13)
        np.testing.assert_allclose(F.local_response_norm_backward(g, x * a, size, 0.5, 0.75, 0.0),
                                   dx * 2.0 ** (e * -1.5), rtol=1e-12,
                                   atol=1e-12 * np.abs(dx * 2.0 ** (e * -1.5)).max())
    nan_and_inf = x.copy()
    nan_and_inf[0, 0, 0], nan_and_inf[1, 5, 2] = np.nan, np.inf
    theirs = _torch_lrn(nan_and_inf, g, 3, 0.5, 0.75, 1.0)[0] if torch is not None else None
    if theirs is not None:  # NaN and inf reach only the channels whose window holds them, as PyTorch's
        np.testing.assert_allclose(F.local_response_norm(nan_and_inf, 3, 0.5, 0.75, 1.0), theirs, rtol=1e-12)


def test_out_may_be_the_input_and_empty_inputs_pass(rng):
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    expected = F.local_response_norm(x, 3)
    assert F.local_response_norm(x, 3, out=x) is x
    np.testing.assert_array_equal(x, expected)
    assert F.local_response_norm(np.zeros((0, 5, 3)), 3).shape == (0, 5, 3)
    assert F.local_response_norm(np.zeros((2, 0, 3), np.float16), 3).dtype == np.float16


@pytest.mark.parametrize("call, error, name", [
    (lambda x: F.local_response_norm(x, 0), ValueError, "size"),
    (lambda x: F.local_response_norm(x, 2.0), TypeError, "size"),
    (lambda x: F.local_response_norm(x, True), TypeError, "size"),
    (lambda x: F.local_response_norm(x, 2, alpha="1"), TypeError, "alpha"),
    (lambda x: F.local_response_norm(x, 2, beta=float("nan")), ValueError, "beta"),
    (lambda x: F.local_response_norm(x, 2, k=float("inf")), ValueError, "k"),
    (lambda x: F.local_response_norm(x.astype(np.int32), 2), TypeError, "input"),
    (lambda x: F.local_response_norm(x[0], 2), ValueError, "input"),
    (lambda x: F.local_response_norm(x, 2, out=np.zeros((2, 3, 5))), ValueError, "out"),
    (lambda x: F.local_response_norm(x, 2, out=np.zeros(x.shape, np.float64)), TypeError, "out"),
    (lambda x: F.local_response_norm_backward(x[:1], x, 2), ValueError, "grad_output"),
    (lambda x: F.local_response_norm_backward(x, x, -1), ValueError, "size"),
    (lambda x: fastnorm.LocalResponseNorm(0), ValueError, "size"),
])
def test_errors_name_the_argument_and_write_nothing(call, error, name):
    x = np.arange(30, dtype=np.float32).reshape(2, 5, 3)
    before = x.copy()
    with pytest.raises(error, match=name):
        call(x)
    np.testing.assert_array_equal(x, before)


def test_layer_state_repr_and_round_trip(tmp_path):
    layer = fastnorm.LocalResponseNorm(5, alpha=2e-4, beta=0.5, k=2.0)
    assert repr(layer) == "LocalResponseNorm(5, alpha=0.0002, beta=0.5, k=2.0)"
    assert layer.state_dict() == {} and layer.weight is None
    fastnorm.save(tmp_path / "lrn.npz", {"lrn": layer})
    loaded = fastnorm.load(tmp_path / "lrn.npz")["lrn"]
    assert (loaded.size, loaded.alpha, loaded.beta, loaded.k) == (5, 2e-4, 0.5, 2.0)
    with fastnorm.no_grad():
        layer(np.ones((1, 5, 2)))
    with pytest.raises(RuntimeError, match="no forward"):
        layer.backward(np.ones((1, 5, 2)))


@requires_torch
def test_layer_repr_is_pytorchs():
    assert repr(fastnorm.LocalResponseNorm(3)) == repr(torch.nn.LocalResponseNorm(3))
