"""``mask=`` as a call argument of the layers (Flax's ``mask``, Keras' BatchNormalization mask): the output,
the running statistics and the gradients against the float64 twin's masked functions, over generated
shapes and broadcast masks; together with ``add=``, ``residual=`` and ``activation=``; against Keras; errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
import reference
from conftest import keras_or_skip

TOL = dict(rtol=2e-5, atol=2e-5)


def _mask(rng, shape, broadcast_axes=()):
    """A random boolean mask, of size 1 on ``broadcast_axes``, with at least two values per statistic (the
    first two samples, and the first two values of each row of the last axis, kept)."""
    m = rng.random([1 if a in broadcast_axes else n for a, n in enumerate(shape)]) > 0.4
    m[:2] = True
    m[..., :2] = True
    return m


def _weights(layer, rng):
    for name in ("weight", "bias"):
        value = getattr(layer, name, None)
        if value is not None:
            value[...] = rng.uniform(0.5, 1.5, value.shape)
    return layer


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), channels_last=st.booleans(), ndim=st.integers(2, 4),
       momentum=st.sampled_from([0.1, None]), broadcast=st.booleans())
def test_batch_norm_layers_with_a_mask_agree_with_the_twin(seed, channels_last, ndim, momentum, broadcast):
    rng = np.random.default_rng(seed)
    cls = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d}[ndim]
    axis = -1 if channels_last else 1
    shape = [int(n) for n in rng.integers(2, 5, ndim)]
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)
    m = _mask(rng, shape, (axis % ndim,) if broadcast else ())
    bn = _weights(cls(shape[axis], momentum=momentum, channel_axis=axis), rng)
    bn.num_batches_tracked = 2
    rm, rv = np.zeros(shape[axis]), np.ones(shape[axis])
    y_ref, mean, invstd = reference.batch_norm(x, rm, rv, bn.weight, bn.bias, True, momentum, num_batches_tracked=2,
                                               channel_axis=axis, mask=m, return_stats=True)
    np.testing.assert_allclose(bn(x, mask=m), y_ref, **TOL)
    np.testing.assert_allclose(bn.running_mean, rm, **TOL)
    np.testing.assert_allclose(bn.running_var, rv, **TOL)
    assert bn.num_batches_tracked == 3
    dy = rng.normal(size=shape).astype(np.float32)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy, x, mean, invstd, bn.weight, True, channel_axis=axis,
                                                           mask=m)
    np.testing.assert_allclose(bn.backward(dy), dx_ref, **TOL)
    np.testing.assert_allclose(bn.grad_weight, dw_ref, **TOL)
    np.testing.assert_allclose(bn.grad_bias, db_ref, **TOL)


def test_batch_norm_in_evaluation_mode_ignores_the_mask_and_its_gradient_is_direct(rng):
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    m = _mask(rng, x.shape)
    bn = fastnorm.BatchNorm1d(3)
    bn.running_mean[:] = [1, 2, 3]
    bn.eval()
    np.testing.assert_allclose(bn(x, mask=m), bn(x), rtol=1e-6, atol=1e-6)
    dy = rng.normal(size=x.shape).astype(np.float32)
    bn(x, mask=m)
    np.testing.assert_allclose(bn.backward(dy), dy / np.sqrt(1 + bn.eps), rtol=1e-6)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_row_layers_with_a_mask_agree_with_the_twin(rng, rms, with_residual):
    x = rng.normal(2.0, 3.0, (3, 4, 6)).astype(np.float32)
    residual = rng.normal(size=x.shape).astype(np.float32) if with_residual else None
    m = _mask(rng, x.shape)
    layer = _weights(fastnorm.RMSNorm(6) if rms else fastnorm.LayerNorm(6), rng)
    h = x if residual is None else x + residual
    if rms:
        y_ref, rstd = reference.rms_norm(h, 6, layer.weight, mask=m, return_stats=True)
        stats = (rstd,)
    else:
        y_ref, mean, rstd = reference.layer_norm(h, 6, layer.weight, layer.bias, mask=m, return_stats=True)
        stats = (mean, rstd)
    result = layer(x, residual=residual, mask=m)
    y = result if residual is None else result[0]
    np.testing.assert_allclose(y, y_ref, **TOL)
    if residual is not None:
        np.testing.assert_allclose(result[1], h, **TOL)
    dy = rng.normal(size=x.shape).astype(np.float32)
    if rms:
        dx_ref, dw_ref = reference.rms_norm_backward(dy, h, 6, *stats, layer.weight, mask=m)[:2]
    else:
        dx_ref, dw_ref, db_ref = reference.layer_norm_backward(dy, h, 6, *stats, layer.weight, layer.bias, mask=m)
        np.testing.assert_allclose(layer.backward(dy), dx_ref, **TOL)
        np.testing.assert_allclose(layer.grad_bias, db_ref, **TOL)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, **TOL)
    np.testing.assert_allclose(layer.grad_weight, dw_ref, **TOL)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_group_norm_with_a_mask_add_and_activation_agrees_with_the_twin(rng, channel_axis):
    x = rng.normal(1.0, 2.0, (3, 4, 6)).astype(np.float32)
    add = rng.normal(size=x.shape).astype(np.float32)
    m = _mask(rng, x.shape)
    gn = _weights(fastnorm.GroupNorm(2, x.shape[channel_axis], channel_axis=channel_axis, activation="relu"), rng)
    y_ref, mean, rstd = reference.group_norm(x, 2, gn.weight, gn.bias, channel_axis=channel_axis, activation="relu",
                                             add=add, mask=m, return_stats=True)
    np.testing.assert_allclose(gn(x, add=add, mask=m), y_ref, **TOL)
    dy = rng.normal(size=x.shape).astype(np.float32)
    dx_ref, dw_ref, db_ref, da_ref = reference.group_norm_backward(
        dy, x, 2, mean, rstd, gn.weight, channel_axis=channel_axis, bias=gn.bias, activation="relu", add=add, mask=m)
    np.testing.assert_allclose(gn.backward(dy), dx_ref, **TOL)
    np.testing.assert_allclose(gn.grad_weight, dw_ref, **TOL)
    np.testing.assert_allclose(gn.grad_add, da_ref, **TOL)


@pytest.mark.parametrize("unbatched", [False, True])
def test_instance_norm_with_a_mask_agrees_with_the_twin_and_updates_the_running_statistics(rng, unbatched):
    x = rng.normal(1.0, 2.0, (3, 4, 6)).astype(np.float32)
    m = _mask(rng, x.shape)
    inn = _weights(fastnorm.InstanceNorm1d(4, affine=True, track_running_stats=True), rng)
    rm, rv = np.zeros(4), np.ones(4)
    y_ref, mean, rstd = reference.instance_norm(x, rm, rv, inn.weight, inn.bias, mask=m, return_stats=True)
    xs, ms = (x[0], m[0]) if unbatched else (x, m)
    if unbatched:
        rm, rv = np.zeros(4), np.ones(4)
        y_ref, mean, rstd = reference.instance_norm(x[:1], rm, rv, inn.weight, inn.bias, mask=m[:1],
                                                    return_stats=True)
        y_ref = y_ref[0]
    np.testing.assert_allclose(inn(xs, mask=ms), y_ref, **TOL)
    np.testing.assert_allclose(inn.running_mean, rm, **TOL)
    np.testing.assert_allclose(inn.running_var, rv, **TOL)
    dy = rng.normal(size=xs.shape).astype(np.float32)
    dx_ref = reference.instance_norm_backward(dy[None] if unbatched else dy, x[:1] if unbatched else x, mean, rstd,
                                              inn.weight, mask=m[:1] if unbatched else m)[0]
    np.testing.assert_allclose(inn.backward(dy), dx_ref[0] if unbatched else dx_ref, **TOL)


def test_a_lazy_layer_infers_its_channels_on_a_masked_call(rng):
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    m = _mask(rng, x.shape)
    lazy, bn = fastnorm.LazyBatchNorm1d(), fastnorm.BatchNorm1d(3)
    np.testing.assert_array_equal(lazy(x, mask=m), bn(x, mask=m))
    assert type(lazy) is fastnorm.BatchNorm1d and lazy.num_batches_tracked == 1
    np.testing.assert_array_equal(lazy.running_var, bn.running_var)
    dy = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(lazy.backward(dy), bn.backward(dy))


def test_the_mask_is_kept_for_backward_as_a_copy(rng):
    x = rng.normal(size=(4, 6)).astype(np.float32)
    m = _mask(rng, x.shape)
    ln = fastnorm.LayerNorm(6)
    ln(x, mask=m)
    dy = rng.normal(size=x.shape).astype(np.float32)
    expected = ln.backward(dy)
    ln(x, mask=m)
    m[:] = True  # the caller reuses its mask buffer
    np.testing.assert_array_equal(ln.backward(dy), expected)
    ln(x)  # an unmasked forward: backward without the mask
    np.testing.assert_array_equal(ln.backward(dy), fastnorm.layer_norm_backward(dy, x, 6, *fastnorm.layer_norm(
        x, 6, ln.weight, ln.bias, return_stats=True)[1:], ln.weight, ln.bias)[0])


@pytest.mark.parametrize("make, kwargs, match", [
    (lambda: fastnorm.BatchNorm1d(3, renorm=True), {}, "renorm"),
    (lambda: fastnorm.BatchNorm1d(3, virtual_batch_size=2), {}, "virtual_batch_size"),
    (lambda: fastnorm.LayerNorm((4,), axes=(1,)), {}, "axes"),
    (lambda: fastnorm.InstanceNorm1d(3, channel_axis=-1), {}, "channel_axis"),
    (lambda: fastnorm.BatchNorm1d(3), {"mask": np.ones((4, 3), np.int8)}, "boolean"),
    (lambda: fastnorm.BatchNorm1d(3), {"mask": np.ones((4, 2), bool)}, "broadcast"),
])
def test_unsupported_or_bad_masks_raise_and_change_nothing(rng, make, kwargs, match):
    layer = make()
    x = rng.normal(size=(4, 3, 3) if isinstance(layer, fastnorm.InstanceNorm1d) else (4, 3)).astype(np.float32)
    if isinstance(layer, fastnorm.LayerNorm):
        x = rng.normal(size=(3, 4)).astype(np.float32)
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=match):
        layer(x, mask=kwargs.get("mask", np.ones(x.shape, bool)))
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    assert layer._saved is None


def test_sync_batch_norm_refuses_a_mask_in_training_and_takes_it_in_evaluation(rng):
    pytest.importorskip("mpi4py")
    from mpi4py import MPI
    x = rng.normal(size=(4, 3)).astype(np.float32)
    m = _mask(rng, x.shape)
    sbn = fastnorm.SyncBatchNorm(3, comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="mask: not supported by SyncBatchNorm in training"):
        sbn(x, mask=m)
    np.testing.assert_allclose(sbn.eval()(x, mask=m), fastnorm.BatchNorm1d(3).eval()(x), rtol=1e-6, atol=1e-6)


def test_batch_norm_mask_against_keras(rng):
    keras = keras_or_skip()
    x = rng.normal(2.0, 3.0, (6, 5, 3)).astype(np.float32)
    m = rng.random((6, 5)) > 0.3
    m[:, :2] = True
    layer = keras.layers.BatchNormalization(momentum=0.9)
    expected = np.asarray(layer(x, training=True, mask=m).detach().cpu())
    moving = dict(zip([w.path.split("/")[-1] for w in layer.weights], layer.get_weights()))
    bn = fastnorm.BatchNorm1d(3, momentum=0.1, eps=1e-3, channel_axis=-1, bessel=False)
    np.testing.assert_allclose(bn(x, mask=m[..., None]), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(bn.running_mean, moving["moving_mean"], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, moving["moving_variance"], atol=1e-6, rtol=1e-5)


LAYERS = [lambda: fastnorm.BatchNorm1d(3), lambda: fastnorm.LayerNorm(5), lambda: fastnorm.RMSNorm(5),
          lambda: fastnorm.GroupNorm(1, 3), lambda: fastnorm.InstanceNorm1d(3), lambda: fastnorm.LazyBatchNorm1d()]


@pytest.mark.parametrize("make", LAYERS)
def test_a_numpy_ma_input_is_its_data_with_its_mask(rng, make):
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    m = _mask(rng, x.shape)
    extra = _mask(rng, (1, 1, 5))
    masked = np.ma.masked_array(x, mask=~m)
    a, b = make(), make()
    y = a(masked)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, b(x, mask=m))
    dy = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(a.backward(dy), b.backward(dy))
    np.testing.assert_array_equal(make()(masked, mask=extra), make()(x, mask=m & extra))  # and'ed with mask=
    with pytest.raises(TypeError, match="mask: expected a boolean array"):
        make()(masked, mask=np.ones(5, np.int8))


@pytest.mark.parametrize("make", LAYERS[:5])
@pytest.mark.parametrize("dtype, ulp", [(np.float16, 2.0**-10), ("bfloat16", 2.0**-7)])
def test_half_precision_input_with_a_mask_is_the_float32_call_rounded(rng, make, dtype, ulp):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    x = rng.normal(size=(4, 3, 5)).astype(dtype)
    m = _mask(rng, x.shape)
    half, single = make(), make()
    y = half(x, mask=m)
    assert y.dtype == x.dtype
    expected = single(x.astype(np.float32), mask=m)
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=ulp, atol=ulp)
    dy = rng.normal(size=x.shape).astype(dtype)
    dx = half.backward(dy)
    assert dx.dtype == x.dtype
    np.testing.assert_allclose(dx.astype(np.float32), single.backward(dy.astype(np.float32)), rtol=ulp, atol=4 * ulp)
