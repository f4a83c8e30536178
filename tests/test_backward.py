"""Gradients: finite differences in float64; the float64 twins (tests/reference.py) in float32 and float64;
PyTorch autograd where it is installed."""
import numpy as np
import pytest

import fastnorm
import reference
from conftest import requires_torch, torch

# (name, fastnorm factory, torch factory or None, input shape, channels-last)
LAYERS = [
    ("BatchNorm1d", lambda a, d: fastnorm.BatchNorm1d(3, affine=a, dtype=d), (5, 3), False),
    ("BatchNorm1d-3d", lambda a, d: fastnorm.BatchNorm1d(3, affine=a, dtype=d), (4, 3, 5), False),
    ("BatchNorm2d", lambda a, d: fastnorm.BatchNorm2d(3, affine=a, dtype=d), (3, 3, 2, 3), False),
    ("BatchNorm2d-nhwc", lambda a, d: fastnorm.BatchNorm2d(3, affine=a, dtype=d, channel_axis=-1), (3, 2, 3, 3), True),
    ("BatchNorm3d", lambda a, d: fastnorm.BatchNorm3d(2, affine=a, dtype=d), (2, 2, 2, 2, 3), False),
    ("LayerNorm", lambda a, d: fastnorm.LayerNorm(5, elementwise_affine=a, dtype=d), (3, 4, 5), False),
    ("LayerNorm-2d", lambda a, d: fastnorm.LayerNorm((4, 5), elementwise_affine=a, dtype=d), (3, 4, 5), False),
    ("RMSNorm", lambda a, d: fastnorm.RMSNorm(5, eps=1e-6, elementwise_affine=a, dtype=d), (3, 4, 5), False),
    ("GroupNorm", lambda a, d: fastnorm.GroupNorm(2, 4, affine=a, dtype=d), (3, 4, 3, 2), False),
    ("GroupNorm-nhwc", lambda a, d: fastnorm.GroupNorm(2, 4, affine=a, dtype=d, channel_axis=-1), (3, 3, 2, 4), True),
    ("GroupNorm-2d", lambda a, d: fastnorm.GroupNorm(2, 4, affine=a, dtype=d), (3, 4), False),
    ("InstanceNorm1d", lambda a, d: fastnorm.InstanceNorm1d(3, affine=a, dtype=d), (2, 3, 5), False),
    ("InstanceNorm2d", lambda a, d: fastnorm.InstanceNorm2d(3, affine=a, dtype=d), (2, 3, 3, 2), False),
    ("InstanceNorm1d-unbatched", lambda a, d: fastnorm.InstanceNorm1d(3, affine=a, dtype=d), (3, 6), False),
]
IDS = [layer[0] for layer in LAYERS]


def _every_layer_case(test):
    """``test`` over the layers, affine or not, float32 and float64, training and evaluation mode."""
    for mark in (pytest.mark.parametrize("mode", ["train", "eval"]),
                 pytest.mark.parametrize("dtype", [np.float32, np.float64]),
                 pytest.mark.parametrize("affine", [True, False]),
                 pytest.mark.parametrize("name, make, shape, channels_last", LAYERS, ids=IDS)):
        test = mark(test)
    return test


def _randomize(layer, rng):
    for key in ("weight", "bias"):
        value = getattr(layer, key, None)
        if value is not None:
            value[...] = rng.normal(size=value.shape)


def _randomize_in_mode(layer, rng, mode):
    """Random parameters and running statistics, and ``mode`` ("train" or "eval")."""
    _randomize(layer, rng)
    if getattr(layer, "running_mean", None) is not None:
        layer.running_mean[...] = rng.normal(size=layer.running_mean.shape)
        layer.running_var[...] = rng.uniform(0.5, 2.0, size=layer.running_var.shape)
    if mode == "eval":
        layer.eval()


def _numerical_gradients(layer, x, g, h=1e-6):
    """Central differences of sum(layer(x) * g) with respect to x and the layer's parameters."""
    def loss():
        with fastnorm.no_grad():
            return float(np.sum(layer(x) * g))

    grads = []
    for array in [x] + [getattr(layer, k) for k in ("weight", "bias") if getattr(layer, k, None) is not None]:
        grad = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            keep = array[i]
            array[i] = keep + h
            up = loss()
            array[i] = keep - h
            down = loss()
            array[i] = keep
            grad[i] = (up - down) / (2 * h)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("name, make, shape, channels_last", LAYERS, ids=IDS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_match_finite_differences(rng, name, make, shape, channels_last, affine, mode):
    layer = make(affine, np.float64)
    _randomize_in_mode(layer, rng, mode)
    x = rng.normal(size=shape) * 2 + 1
    g = rng.normal(size=shape)
    y = layer(x)
    dx = layer.backward(g)
    assert dx.shape == x.shape and dx.dtype == np.float64
    expected = _numerical_gradients(layer, x, g)
    np.testing.assert_allclose(dx, expected[0], rtol=1e-6, atol=1e-7 * max(1.0, np.abs(expected[0]).max()))
    if layer.weight is not None:
        np.testing.assert_allclose(layer.grad_weight, expected[1], rtol=1e-6, atol=1e-7)
    else:
        assert layer.grad_weight is None
    if getattr(layer, "bias", None) is not None:
        np.testing.assert_allclose(layer.grad_bias, expected[2], rtol=1e-6, atol=1e-7)
    else:
        assert layer.grad_bias is None
    assert y.shape == x.shape


def _twin_gradients(layer, x, g):
    """(y, dx, dweight, dbias) of the layer in its mode, by the float64 twins of its functional forward
    (with return_stats) and backward.  Call it before the layer, whose training updates its buffers."""
    w, b = getattr(layer, "weight", None), getattr(layer, "bias", None)
    if isinstance(layer, fastnorm.LayerNorm):
        y, mean, rstd = reference.layer_norm(x, layer.normalized_shape, w, b, layer.eps, return_stats=True)
        return (y, *reference.layer_norm_backward(g, x, layer.normalized_shape, mean, rstd, w, b))
    if isinstance(layer, fastnorm.RMSNorm):
        y, rstd = reference.rms_norm(x, layer.normalized_shape, w, layer.eps, return_stats=True)
        return (y, *reference.rms_norm_backward(g, x, layer.normalized_shape, rstd, w))
    if isinstance(layer, fastnorm.GroupNorm):
        axis = layer.channel_axis
        y, mean, rstd = reference.group_norm(x, layer.num_groups, w, b, layer.eps, channel_axis=axis, return_stats=True)
        return (y, *reference.group_norm_backward(g, x, layer.num_groups, mean, rstd, w, channel_axis=axis))
    rm, rv = (None, None) if layer.running_mean is None else (layer.running_mean.copy(), layer.running_var.copy())
    batch_stats = layer.training or rm is None
    if isinstance(layer, (fastnorm.BatchNorm1d, fastnorm.BatchNorm2d, fastnorm.BatchNorm3d)):
        axis = layer.channel_axis
        y, mean, rstd = reference.batch_norm(x, rm, rv, w, b, batch_stats, 0.1, layer.eps, channel_axis=axis,
                                             return_stats=True)
        return (y, *reference.batch_norm_backward(g, x, mean, rstd, w, batch_stats, channel_axis=axis))
    unbatched = x.ndim == 2  # InstanceNorm1d of (C, L)
    xb, gb = (x[None], g[None]) if unbatched else (x, g)
    y, mean, rstd = reference.instance_norm(xb, rm, rv, w, b, batch_stats, 0.1, layer.eps, return_stats=True)
    dx, dw, db = reference.instance_norm_backward(gb, xb, mean, rstd, w, batch_stats)
    return (y[0], dx[0], dw, db) if unbatched else (y, dx, dw, db)


@_every_layer_case
def test_gradients_match_the_twins(rng, name, make, shape, channels_last, affine, dtype, mode):
    layer = make(affine, dtype)
    _randomize_in_mode(layer, rng, mode)
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    y_ref, dx_ref, dw_ref, db_ref = _twin_gradients(layer, x, g)
    y = layer(x)
    dx = layer.backward(g)
    assert dx.shape == x.shape and dx.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    if affine:
        np.testing.assert_allclose(layer.grad_weight, dw_ref, **tol)
        if getattr(layer, "bias", None) is not None:
            np.testing.assert_allclose(layer.grad_bias, db_ref, **tol)
    else:
        assert layer.grad_weight is None and layer.grad_bias is None


def _torch_twin(name, affine, dtype):
    td = torch.float32 if dtype == np.float32 else torch.float64
    kind = name.split("-")[0]
    args = {"BatchNorm1d": (3,), "BatchNorm2d": (3,), "BatchNorm3d": (2,), "GroupNorm": (2, 4),
            "InstanceNorm1d": (3,), "InstanceNorm2d": (3,)}.get(kind)
    if kind == "LayerNorm":
        args = ((4, 5),) if name.endswith("2d") else (5,)
        return torch.nn.LayerNorm(*args, elementwise_affine=affine, dtype=td)
    if kind == "RMSNorm":
        return torch.nn.RMSNorm(5, eps=1e-6, elementwise_affine=affine, dtype=td)
    return getattr(torch.nn, kind)(*args, affine=affine, dtype=td)


@requires_torch
@_every_layer_case
def test_gradients_match_torch_autograd(rng, name, make, shape, channels_last, affine, dtype, mode):
    ours = make(affine, dtype)
    theirs = _torch_twin(name, affine, dtype)
    _randomize(ours, rng)
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=False)
    if mode == "eval":
        ours.eval()
        theirs.eval()
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    xt_data = np.moveaxis(x, -1, 1) if channels_last else x
    gt = np.moveaxis(g, -1, 1) if channels_last else g
    xt = torch.tensor(np.ascontiguousarray(xt_data), requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.from_numpy(np.ascontiguousarray(gt)))
    y = ours(x)
    dx = ours.backward(g)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    expected_dx = xt.grad.numpy()
    if channels_last:
        expected_dx = np.moveaxis(expected_dx, 1, -1)
        yt = yt.detach().permute(0, *range(2, yt.dim()), 1)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, expected_dx, **tol)
    if affine:
        np.testing.assert_allclose(ours.grad_weight, theirs.weight.grad.numpy(), **tol)
        if getattr(theirs, "bias", None) is not None:
            np.testing.assert_allclose(ours.grad_bias, theirs.bias.grad.numpy(), **tol)


@pytest.mark.parametrize("offset", [1e4])
def test_batch_norm_backward_at_large_offsets_matches_float64(rng, offset, isa_level):
    x = (offset + rng.normal(size=(8, 4, 6, 6))).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    layer = fastnorm.BatchNorm2d(4)
    layer(x)
    dx = layer.backward(g)
    _, mean, rstd = reference.batch_norm(x, training=True, return_stats=True)
    np.testing.assert_allclose(dx, reference.batch_norm_backward(g, x, mean, rstd)[0], atol=1e-5)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_row_norm_backward_matches_float64(rng, offset, rms, isa_level):
    D = 771  # not a multiple of the SIMD width
    x = (offset + rng.normal(size=(37, D))).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    w = rng.normal(size=D).astype(np.float32)

    def gradients(ops):  # fastnorm or its twins, from the statistics of their own forward
        if rms:
            _, rstd = ops.rms_norm(x, D, w, eps=1e-5, return_stats=True)
            return ops.rms_norm_backward(g, x, D, rstd, w)
        _, mean, rstd = ops.layer_norm(x, D, w, np.zeros(D, np.float32), return_stats=True)
        return ops.layer_norm_backward(g, x, D, mean, rstd, w, w)

    (dx, dw, db), (dx_ref, dw_ref, db_ref) = gradients(fastnorm), gradients(reference)
    scale = np.abs(dx_ref).max()
    assert np.abs(dx - dx_ref).max() <= 1e-5 * scale
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)
    if not rms:
        np.testing.assert_allclose(db, db_ref, rtol=1e-6, atol=1e-6)


def _bn_grads(x, g):
    _, mean, rstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    return fastnorm.batch_norm_backward(g, x, mean, rstd)


def _gn_grads(x, g):
    _, mean, rstd = fastnorm.group_norm(x, 4, return_stats=True)
    return fastnorm.group_norm_backward(g, x, 4, mean, rstd)


def _in_grads(x, g):
    _, mean, rstd = fastnorm.instance_norm(x, return_stats=True)
    return fastnorm.instance_norm_backward(g, x, mean, rstd)


def _ln_grads(x, g):
    D = x.shape[-1]
    w, b = np.ones(D, x.dtype), np.zeros(D, x.dtype)
    _, mean, rstd = fastnorm.layer_norm(x, D, w, b, return_stats=True)
    return fastnorm.layer_norm_backward(g, x, D, mean, rstd, w, b)


@pytest.mark.parametrize("grads", [_bn_grads, _gn_grads, _in_grads, _ln_grads])
def test_backward_is_bitwise_identical_for_any_thread_count(rng, grads, uncapped_threads):
    # rows in batches: (32, 8, 300) and (2000, 8, 6); BatchNorm by columns split among threads: (64, 64, 25)
    for shape in [(2, 8, 70000), (32, 8, 700), (32, 8, 300), (2000, 8, 6), (64, 64, 25)]:
        x = rng.normal(size=shape).astype(np.float32)
        g = rng.normal(size=shape).astype(np.float32)
        results = []
        for n in (1, 2, 3):
            with fastnorm.threads(n):
                results.append(grads(x, g))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert np.array_equal(a, b)


def test_backward_without_forward_is_an_error():
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        fastnorm.BatchNorm2d(3).backward(np.ones((2, 3, 4, 4), np.float32))
    layer = fastnorm.LayerNorm(4)
    with fastnorm.no_grad():
        layer(np.ones((2, 4), np.float32))
    with pytest.raises(RuntimeError, match="no forward"):
        layer.backward(np.ones((2, 4), np.float32))


@pytest.mark.parametrize("make", [lambda: fastnorm.BatchNorm1d(3, activation="gelu"),
                                  lambda: fastnorm.LayerNorm(3, activation="gelu")])
def test_a_forward_under_no_grad_leaves_what_an_earlier_forward_kept(make):
    rng = np.random.default_rng(3)
    x, dy = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    layer, twin = make(), make()
    layer(x), twin(x)
    with fastnorm.no_grad():
        layer(x + 1)
    np.testing.assert_array_equal(layer.backward(dy), twin.backward(dy))


@pytest.mark.parametrize("layer, shape", [(fastnorm.BatchNorm2d(3), (2, 3, 4, 4)), (fastnorm.LayerNorm(4), (2, 4)),
                                          (fastnorm.GroupNorm(1, 3), (2, 3, 4)), (fastnorm.RMSNorm(4), (3, 4)),
                                          (fastnorm.InstanceNorm1d(3), (2, 3, 4))])
def test_grad_output_of_the_wrong_shape_is_an_error(layer, shape):
    layer(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        layer.backward(np.ones((5,) + shape[1:], np.float32))


def test_in_place_forward_keeps_the_input_for_backward(rng):
    x = rng.normal(size=(6, 3))
    g = rng.normal(size=(6, 3))
    reference = fastnorm.BatchNorm1d(3, dtype=np.float64)
    reference(x.copy())
    expected = reference.backward(g)
    layer = fastnorm.BatchNorm1d(3, dtype=np.float64)
    x_in = x.copy()
    layer(x_in, out=x_in)
    np.testing.assert_allclose(layer.backward(g), expected, atol=1e-14)


def test_functional_backward_errors():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"mean: expected shape \(3,\)"):
        fastnorm.batch_norm_backward(x, x, np.zeros(4), np.ones(3))
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        fastnorm.layer_norm_backward(np.ones((4, 2)), x, 3, np.zeros(4), np.ones(4))
    with pytest.raises(TypeError, match="grad_output: expected a floating-point"):
        fastnorm.rms_norm_backward(np.ones((4, 3), int), x, 3, np.ones(4))


def test_float16_backward(rng):
    x = rng.normal(size=(8, 4)).astype(np.float16)
    y, mean, rstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    dx, dw, db = fastnorm.batch_norm_backward(np.ones_like(y), x, mean, rstd, np.ones(4, np.float32))
    assert dx.dtype == np.float16 and np.abs(dx.astype(np.float32)).max() < 1e-2
    np.testing.assert_allclose(db, 8.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, G, K, sub", [(2, 5, 32, 16), (1, 12, 1, 400), (3, 40, 4, 6)])
def test_row_kernels_give_the_same_bits_in_batches_rows_and_pieces(rng, dtype, N, G, K, sub):
    # The thread count picks the path: batches of rows (1 thread), one row at a time, or pieces of rows
    # summed in parallel (few rows for the threads); the kernels are called directly, since the Python
    # layer gives inputs this small one thread.
    from fastnorm import _kernels
    R, S = N * G, K * sub
    x = (5 + rng.normal(size=R * S)).astype(dtype)
    g = rng.normal(size=R * S).astype(dtype)
    w, b = rng.normal(size=G * K), rng.normal(size=G * K)
    results = []
    for nthreads in (1, 2, 3, 8):
        y = np.empty_like(x)
        mean, _, rstd = _kernels.forward_rows(x, y, 1, R, S, w, b, 1e-5, nthreads, sub=sub, groups=G)
        dx = np.empty_like(x)
        sums = _kernels.backward_rows(x, g, dx, 1, R, S, mean, rstd, w, True, nthreads, sub=sub, groups=G)
        results.append((y, dx, *sums))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert np.array_equal(a, c)


@pytest.mark.parametrize("shape", [(64, 2048), (16, 512, 1, 1)])
def test_group_norm_backward_with_one_value_per_channel(rng, shape, uncapped_threads):
    # GroupNorm on (N, C) or 1x1 maps: every channel's run is one value.  Without a weight, each group is
    # a LayerNorm row of C / G values; with one, the bits are the same for any thread count.
    x = (3 + rng.normal(size=shape)).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    N, C, G = shape[0], shape[1], 32
    _, mean, rstd = fastnorm.group_norm(x, G, return_stats=True)
    dx, dw, db = fastnorm.group_norm_backward(g, x, G, mean, rstd)
    rows_x, rows_g = x.reshape(N * G, C // G), g.reshape(N * G, C // G)
    _, row_mean, row_rstd = reference.layer_norm(rows_x, C // G, return_stats=True)
    expected = reference.layer_norm_backward(rows_g, rows_x, C // G, row_mean, row_rstd)[0]
    np.testing.assert_allclose(dx.reshape(N * G, -1), expected, atol=1e-5)
    np.testing.assert_allclose(db, g.reshape(N, C).astype(np.float64).sum(axis=0), rtol=1e-9, atol=1e-9)
    w = rng.normal(size=C).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        with fastnorm.threads(n):
            results.append(fastnorm.group_norm_backward(g, x, G, mean, rstd, w))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
