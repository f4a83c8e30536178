"""Normalization over several axes: layer_norm / rms_norm ``axes=``, batch_norm over a tuple
``channel_axis``, instance_norm ``channel_axis=``, and their backwards.  Against PyTorch and Keras where
they express the same thing (Keras' LayerNormalization(axis=[...]); PyTorch on the input with the axes
moved), every float dtype; the memory layouts that are read through a view are read without a copy."""
import os
import tracemalloc

import numpy as np
import pytest

import fastnorm
from fastnorm._plan import _grouped

torch = pytest.importorskip("torch")

DTYPES = [np.float16, np.float32, np.float64]
TOL = {np.float16: 5e-3, np.float32: 2e-5, np.float64: 1e-10}


def _data(shape, dtype, seed=0, offset=0.0):
    return (np.random.default_rng(seed).normal(size=shape) + offset).astype(dtype)


def _t(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


def _close(ours, theirs, dtype, scale=1.0):
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs.detach().numpy() if hasattr(theirs, "detach")
                               else theirs, rtol=0, atol=TOL[dtype] * max(scale, 1.0))


LAYOUTS = {
    "c": lambda a: a,
    "fortran": np.asfortranarray,
    "channels_last_view": lambda a: np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1),
    "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
}


# ---------------------------------------------------------------------------------------------------------
# layer_norm and rms_norm over any axes
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axes", [(1, 3), (1, 2), (0,), (2,), (0, 3), (-1,), (0, 1, 2, 3)])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layer_norm_and_rms_norm_over_axes_match_pytorch(dtype, axes, layout):
    x = LAYOUTS[layout](_data((3, 4, 5, 6), dtype, offset=10.0))
    norm = sorted(a % 4 for a in axes)
    kept = [a for a in range(4) if a not in norm]
    pshape = tuple(x.shape[a] for a in norm)
    w, b = _data(pshape, dtype, 1), _data(pshape, dtype, 2)
    dy = _data(x.shape, dtype, 3)
    y, mean, rstd = fastnorm.layer_norm(x, None, w, b, 1e-5, axes=axes, return_stats=True)
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, None, mean, rstd, w, b, axes=axes, eps=1e-5)
    # PyTorch: the normalized axes moved last, then layer_norm over them
    xt, wt, bt = _t(x), _t(w), _t(b)
    perm = kept + norm
    yt = torch.nn.functional.layer_norm(xt.permute(perm), pshape, wt, bt, 1e-5).permute(list(np.argsort(perm)))
    yt.backward(torch.tensor(dy.astype(np.float64)))
    assert y.dtype == dtype and y.shape == x.shape and mean.shape == rstd.shape == tuple(x.shape[a] for a in kept)
    _close(y, yt, dtype, 10)
    _close(dx, xt.grad, dtype, 10)
    _close(dw, wt.grad, dtype, 100)
    _close(db, bt.grad, dtype, 100)
    y, rstd = fastnorm.rms_norm(x, pshape, w, 1e-6, axes=axes, return_stats=True)
    dx, dw, _ = fastnorm.rms_norm_backward(dy, x, pshape, rstd, w, axes=axes, eps=1e-6)
    xt, wt = _t(x), _t(w)
    yt = torch.nn.functional.rms_norm(xt.permute(perm), pshape, wt, 1e-6).permute(list(np.argsort(perm)))
    yt.backward(torch.tensor(dy.astype(np.float64)))
    _close(y, yt, dtype, 10)
    _close(dx, xt.grad, dtype, 10)
    _close(dw, wt.grad, dtype, 100)


def test_trailing_axes_are_normalized_shape():
    x = _data((2, 3, 4), np.float32)
    w = _data((3, 4), np.float32, 1)
    np.testing.assert_array_equal(fastnorm.layer_norm(x, None, w, axes=(1, 2)), fastnorm.layer_norm(x, (3, 4), w))
    np.testing.assert_array_equal(fastnorm.rms_norm(x, (3, 4), w, axes=(-2, -1)), fastnorm.rms_norm(x, (3, 4), w))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_axes_matches_keras(dtype):
    keras = _keras()
    x = _data((2, 3, 4, 5), dtype, offset=3.0)
    layer = keras.layers.LayerNormalization(axis=[1, 3], epsilon=1e-3)
    layer.build(x.shape)
    gamma, beta = _data((3, 5), np.float32, 1), _data((3, 5), np.float32, 2)
    layer.set_weights([gamma, beta])
    expected = keras.ops.convert_to_numpy(layer(x.astype(np.float32)))
    y = fastnorm.layer_norm(x, None, gamma.astype(dtype), beta.astype(dtype), 1e-3, axes=(1, 3))
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=0, atol=max(TOL[dtype] * 10, 1e-5))


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


# ---------------------------------------------------------------------------------------------------------
# batch_norm over several channel axes
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", [(1, 3), (1, 2), (2, 3), (-1, 1), (0, 1)])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_over_channel_axes_matches_pytorch(dtype, channel_axis, layout, training):
    x = LAYOUTS[layout](_data((5, 3, 4, 2), dtype, offset=10.0))
    axes = sorted(a % 4 for a in channel_axis)
    others = [a for a in range(4) if a not in axes]
    pshape = tuple(x.shape[a] for a in axes)
    w, b = _data(pshape, dtype, 1), _data(pshape, dtype, 2)
    rm, rv = _data(pshape, np.float32, 4), np.abs(_data(pshape, np.float32, 5)) + 0.5
    dy = _data(x.shape, dtype, 3)
    rm_t, rv_t = torch.tensor(rm.reshape(-1).astype(np.float64)), torch.tensor(rv.reshape(-1).astype(np.float64))
    y, mean, invstd = fastnorm.batch_norm(x, rm, rv, w, b, training, 0.3, channel_axis=channel_axis,
                                          return_stats=True)
    dx, dw, db = fastnorm.batch_norm_backward(dy, x, mean, invstd, w, training, channel_axis=channel_axis)
    # PyTorch: the channel axes moved together to axis 1 and merged
    xt, wt, bt = _t(x), _t(w), _t(b)
    perm = others[:1] + axes + others[1:]
    moved = xt.permute(perm)
    yt = torch.nn.functional.batch_norm(moved.reshape(moved.shape[0], -1, *moved.shape[1 + len(axes):]), rm_t, rv_t,
                                        wt.reshape(-1), bt.reshape(-1), training, 0.3)
    yt = yt.reshape(moved.shape).permute(list(np.argsort(perm)))
    yt.backward(torch.tensor(dy.astype(np.float64)))
    assert y.dtype == dtype and mean.shape == invstd.shape == pshape
    _close(y, yt, dtype, 10)
    _close(rm, rm_t.numpy().reshape(pshape), np.float32, 10)
    _close(rv, rv_t.numpy().reshape(pshape), np.float32, 10)
    _close(dx, xt.grad, dtype, 100)
    _close(dw, wt.grad, dtype, 100)
    _close(db, bt.grad, dtype, 100)


def test_batch_norm_channel_axes_updates_non_contiguous_running_statistics_in_place():
    x = _data((6, 3, 4), np.float64)
    rm, rv = np.zeros((4, 3)).T, np.ones((4, 3)).T  # (3, 4), Fortran order
    expected_m, expected_v = np.zeros((3, 4)), np.ones((3, 4))
    fastnorm.batch_norm(x, rm, rv, training=True, channel_axis=(1, 2))
    fastnorm.batch_norm(np.ascontiguousarray(x), expected_m, expected_v, training=True, channel_axis=(1, 2))
    np.testing.assert_array_equal(rm, expected_m)
    np.testing.assert_array_equal(rv, expected_v)
    assert np.abs(rm).max() > 0


def test_batch_norm_one_channel_axis_in_a_tuple_is_the_axis():
    x = _data((4, 3, 5), np.float32)
    np.testing.assert_array_equal(fastnorm.batch_norm(x, training=True, channel_axis=(1,)),
                                  fastnorm.batch_norm(x, training=True, channel_axis=1))


# ---------------------------------------------------------------------------------------------------------
# instance_norm on channels-last data
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nhwc", "nchw_view_of_nhwc", "nhwc_view_of_nchw"])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_channels_last_matches_pytorch(dtype, layout, use_input_stats):
    data = _data((3, 4, 5, 6), dtype, offset=50.0)  # N, H, W, C
    x, axis = {"nhwc": (data, -1), "nchw_view_of_nhwc": (np.moveaxis(data, -1, 1), 1),
               "nhwc_view_of_nchw": (np.moveaxis(np.ascontiguousarray(np.moveaxis(data, -1, 1)), 1, -1), -1)}[layout]
    C = 6
    w, b, dy = _data(C, dtype, 1), _data(C, dtype, 2), _data(x.shape, dtype, 3)
    rm, rv = np.zeros(C), np.full(C, 2.0)
    y, mean, rstd = fastnorm.instance_norm(x, rm, rv, w, b, use_input_stats, 0.5, channel_axis=axis,
                                           return_stats=True)
    dx, dw, db = fastnorm.instance_norm_backward(dy, x, mean, rstd, w, use_input_stats, channel_axis=axis)
    xt, wt, bt = _t(np.moveaxis(x, axis, 1)), _t(w), _t(b)
    rm_t, rv_t = torch.zeros(C, dtype=torch.float64), torch.full((C,), 2.0, dtype=torch.float64)
    yt = torch.nn.functional.instance_norm(xt, rm_t, rv_t, wt, bt, use_input_stats, 0.5)
    yt.backward(torch.tensor(np.moveaxis(dy, axis, 1).astype(np.float64)))
    assert y.dtype == dtype and y.shape == x.shape
    _close(y, np.moveaxis(yt.detach().numpy(), 1, axis), dtype, 10)
    _close(rm, rm_t.numpy(), dtype, 100)
    _close(rv, rv_t.numpy(), dtype, 100)
    _close(dx, np.moveaxis(xt.grad.numpy(), 1, axis), dtype, 10)
    _close(dw, wt.grad, dtype, 1000)
    _close(db, bt.grad, dtype, 1000)


def test_instance_norm_channels_last_equals_channels_first_bitwise():
    data = _data((2, 5, 7, 3), np.float32, offset=100.0)  # NHWC
    y = fastnorm.instance_norm(data, channel_axis=-1)
    np.testing.assert_array_equal(np.moveaxis(y, -1, 1), fastnorm.instance_norm(np.moveaxis(data, -1, 1)))


# ---------------------------------------------------------------------------------------------------------
# Errors, and which layouts are read without a copy
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, words", [
    (lambda x: fastnorm.layer_norm(x, None, axes=()), ValueError, "axes"),
    (lambda x: fastnorm.layer_norm(x, None, axes=(1, -2)), ValueError, "axes"),
    (lambda x: fastnorm.layer_norm(x, None, axes=(3,)), ValueError, "axes"),
    (lambda x: fastnorm.layer_norm(x, None, axes=(1.5,)), TypeError, "axes"),
    (lambda x: fastnorm.layer_norm(x, (4,), axes=(1,)), ValueError, "normalized_shape"),
    (lambda x: fastnorm.layer_norm(x, None, np.ones(4), axes=(1,)), ValueError, "weight"),
    (lambda x: fastnorm.rms_norm(x, None, np.ones((2, 3)), axes=(1, 2)), ValueError, "weight"),
    (lambda x: fastnorm.layer_norm(x, None), TypeError, "normalized_shape"),
    (lambda x: fastnorm.batch_norm(x, training=True, channel_axis=(1, 1)), ValueError, "channel_axis"),
    (lambda x: fastnorm.batch_norm(x, training=True, channel_axis=(1, "a")), TypeError, "channel_axis"),
    (lambda x: fastnorm.batch_norm(x, training=True, weight=np.ones(12), channel_axis=(1, 2)), ValueError, "weight"),
    (lambda x: fastnorm.batch_norm(x, [[0.0] * 4] * 3, np.ones((3, 4)), training=True, channel_axis=(1, 2)),
     TypeError, "running_mean"),
    (lambda x: fastnorm.batch_norm(x, channel_axis=(1, 2)), ValueError, "running_mean"),
    (lambda x: fastnorm.instance_norm(x, channel_axis=0), ValueError, "channel_axis"),
    (lambda x: fastnorm.instance_norm(x, weight=np.ones(3), channel_axis=-1), ValueError, "weight"),
    (lambda x: fastnorm.layer_norm(x, None, axes=(1,), mask=x > 0), ValueError, "mask"),
    (lambda x: fastnorm.rms_norm_backward(x, x, None, np.ones((2, 4)), axes=(1,), mask=x > 0), ValueError, "mask"),
    (lambda x: fastnorm.batch_norm(x, training=True, channel_axis=(1, 2), mask=x > 0), ValueError, "mask"),
    (lambda x: fastnorm.instance_norm(x, channel_axis=-1, mask=x > 0), ValueError, "mask"),
])
def test_errors_name_the_argument_and_change_nothing(call, error, words):
    x = _data((2, 3, 4), np.float32)
    before = x.copy()
    with pytest.raises(error, match=words):
        call(x)
    np.testing.assert_array_equal(x, before)


def _peak(call):
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


VIEWS = [  # (shape, layout, kept axes, trailing): x's memory holds the kept axes together
    ((8, 16, 32, 64), "c", (0, 1), True),          # layer_norm over (2, 3): today's rows
    ((8, 16, 32, 64), "channels_last_view", (0, 2, 3), True),  # layer_norm over the channels of NHWC memory
    ((8, 16, 32, 64), "c", (1, 2), False),         # batch_norm over (1, 2): [N, C1*C2, S]
    ((8, 16, 32, 64), "c", (2, 3), False),         # batch_norm over (2, 3): [N*C, K] columns
    ((8, 16, 32, 64), "fortran", (1,), False),     # batch_norm of Fortran memory: [W*H, C, N]
]
COPIES = [
    ((8, 16, 32, 64), "c", (0, 2), True),          # layer_norm over (1, 3): kept axes apart in memory
    ((8, 16, 32, 64), "c", (1, 3), False),         # batch_norm over (1, 3)
    ((8, 16, 32, 64), "c", (2, 3), True),          # layer_norm over (0, 1): normalized axes before kept
    ((8, 16, 32, 64), "fortran", (1, 2), False),   # channel axes together but in the other order
]


@pytest.mark.parametrize("shape, layout, kept, trailing", VIEWS + COPIES)
def test_views_where_memory_allows_copies_elsewhere(shape, layout, kept, trailing):
    x = LAYOUTS[layout](np.zeros(shape, np.float32))
    order, _, view = _grouped(x, kept, trailing)
    assert view == ((shape, layout, kept, trailing) in VIEWS)
    others = tuple(a for a in range(len(shape)) if a not in kept)
    out = np.empty_like(x)
    if trailing:
        peak = _peak(lambda: fastnorm.layer_norm(x, None, axes=others, out=out))
    else:
        peak = _peak(lambda: fastnorm.batch_norm(x, training=True, channel_axis=kept, out=out))
    assert (peak < x.nbytes // 4) == view, peak


# ---------------------------------------------------------------------------------------------------------
# The layers
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [fastnorm.LayerNorm, fastnorm.RMSNorm])
def test_rows_layers_over_axes_equal_the_functions_and_round_trip(cls, tmp_path):
    x, dy = _data((2, 3, 4, 5), np.float32, offset=5.0), _data((2, 3, 4, 5), np.float32, 1)
    layer = cls((3, 5), axes=(1, 3))
    layer.weight[...] = _data((3, 5), np.float32, 2)
    y, dx = layer(x), layer.backward(dy)
    if cls is fastnorm.LayerNorm:
        expected, mean, rstd = fastnorm.layer_norm(x, None, layer.weight, layer.bias, axes=(1, 3), return_stats=True)
        grads = fastnorm.layer_norm_backward(dy, x, None, mean, rstd, layer.weight, layer.bias, axes=(1, 3))
    else:
        expected, rstd = fastnorm.rms_norm(x, None, layer.weight, axes=(1, 3), return_stats=True)
        grads = fastnorm.rms_norm_backward(dy, x, None, rstd, layer.weight, axes=(1, 3))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(dx, grads[0])
    np.testing.assert_array_equal(layer.grad_weight, grads[1].astype(np.float32))
    assert "axes=[1, 3]" in repr(layer)
    fastnorm.save(str(tmp_path / "m.npz"), {"layer": layer})
    loaded = fastnorm.load(str(tmp_path / "m.npz"))["layer"]
    assert loaded.axes == (1, 3)
    np.testing.assert_array_equal(loaded(x), y)
    with pytest.raises(ValueError, match="normalized_shape"):
        layer(_data((2, 4, 3, 5), np.float32))
    with pytest.raises(ValueError, match="axes"):
        cls((3, 5), axes=(1,))
    with pytest.raises(TypeError, match="axes"):
        cls((3, 5), axes=(1, 3.0))


def test_instance_norm_layers_channels_last(tmp_path):
    x = _data((2, 5, 6, 3), np.float32, offset=20.0)  # NHWC
    dy = _data(x.shape, np.float32, 1)
    last = fastnorm.InstanceNorm2d(3, affine=True, track_running_stats=True, channel_axis=-1)
    first = fastnorm.InstanceNorm2d(3, affine=True, track_running_stats=True)
    np.testing.assert_array_equal(last(x), np.moveaxis(first(np.moveaxis(x, -1, 1)), 1, -1))
    np.testing.assert_array_equal(last.backward(dy), np.moveaxis(first.backward(np.moveaxis(dy, -1, 1)), 1, -1))
    np.testing.assert_array_equal(last.grad_weight, first.grad_weight)
    np.testing.assert_array_equal(last.running_var, first.running_var)
    np.testing.assert_array_equal(last(x[0]), np.moveaxis(first(np.moveaxis(x[0], -1, 0)), 0, -1))  # unbatched
    assert repr(last).endswith("channel_axis=-1)")
    fastnorm.save(str(tmp_path / "m.npz"), {"in": last})
    assert fastnorm.load(str(tmp_path / "m.npz"))["in"].channel_axis == -1
    lazy = fastnorm.LazyInstanceNorm2d(channel_axis=-1)
    lazy(x)
    assert lazy.num_features == 3 and type(lazy) is fastnorm.InstanceNorm2d
    with pytest.raises(ValueError, match="channels on axis -1"):
        last(np.moveaxis(x, -1, 1))
    with pytest.raises(ValueError, match="channel_axis"):
        fastnorm.InstanceNorm2d(3, channel_axis=2)
