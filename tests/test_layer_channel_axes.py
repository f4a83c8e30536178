"""BatchNorm layers over several channel axes (``channel_axis=(1, 3)``, Keras 2's
``BatchNormalization(axis=[1, 3])``): parameters and running statistics of those axes' sizes; training,
evaluation and backward against the float64 twin over generated shapes and axes; state dicts, save/load,
repr, calibration, renorm and ghost batches, Lazy layers, ``from_keras``; errors."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
import reference

TOL = dict(rtol=3e-5, atol=3e-5)
CLASSES = {3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d, 5: fastnorm.BatchNorm3d}


@st.composite
def layouts(draw):
    """(class, input shape, channel_axis): two or more non-batch axes, possibly negative, in any order."""
    ndim = draw(st.integers(3, 5))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    shape = (draw(st.integers(2, 4)),) + shape[1:]
    k = draw(st.integers(2, ndim - 1))
    axes = draw(st.sampled_from(list(itertools.combinations(range(1, ndim), k))))
    axes = tuple(a - ndim if draw(st.booleans()) else a for a in draw(st.permutations(axes)))
    return CLASSES[ndim], shape, axes


def _sizes(shape, axes):
    return tuple(shape[a] for a in sorted(a % len(shape) for a in axes))


@settings(max_examples=30, deadline=None)
@given(layout=layouts(), seed=st.integers(0, 2**16), momentum=st.sampled_from([0.1, None]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_several_channel_axes_agree_with_the_twin(layout, seed, momentum, dtype):
    cls, shape, axes = layout
    rng = np.random.default_rng(seed)
    sizes = _sizes(shape, axes)
    x = rng.normal(4.0, 2.0, shape).astype(dtype)
    bn = cls(sizes, momentum=momentum, channel_axis=axes, dtype=dtype)
    assert bn.weight.shape == bn.bias.shape == bn.running_mean.shape == bn.running_var.shape == sizes
    bn.weight[...] = rng.uniform(0.5, 1.5, sizes)
    bn.bias[...] = rng.uniform(-1, 1, sizes)
    if np.prod(shape) // np.prod(sizes) <= 1:  # one value per channel: refused in training, as with one axis
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            bn(x)
        return
    rm, rv = np.zeros(sizes), np.ones(sizes)
    y_ref, mean, invstd = reference.batch_norm(x, rm, rv, bn.weight, bn.bias, True, momentum, num_batches_tracked=0,
                                               channel_axis=axes, return_stats=True)
    np.testing.assert_allclose(bn(x), y_ref, **TOL)
    np.testing.assert_allclose(bn.running_mean, rm, **TOL)
    np.testing.assert_allclose(bn.running_var, rv, **TOL)
    assert bn.num_batches_tracked == 1
    dy = rng.normal(size=shape).astype(dtype)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy, x, mean, invstd, bn.weight, True, channel_axis=axes)
    np.testing.assert_allclose(bn.backward(dy), dx_ref, **TOL)
    np.testing.assert_allclose(bn.grad_weight, dw_ref, **TOL)
    np.testing.assert_allclose(bn.grad_bias, db_ref, **TOL)
    # Evaluation normalizes with the running statistics as the layer holds them, in its dtype: compared with
    # those (a channel of small variance amplifies their rounding past the tolerance).
    bn.eval()
    rm, rv = bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)
    y_eval = reference.batch_norm(x, rm, rv, bn.weight, bn.bias, False, channel_axis=axes)
    np.testing.assert_allclose(bn(x), y_eval, **TOL)
    eval_dx = reference.batch_norm_backward(dy, x, rm, 1 / np.sqrt(rv + bn.eps), bn.weight, False,
                                            channel_axis=axes)[0]
    np.testing.assert_allclose(bn.backward(dy), eval_dx, **TOL)


def _trained(rng):
    x = rng.normal(2.0, 3.0, (4, 3, 5, 6)).astype(np.float32)
    bn = fastnorm.BatchNorm2d((3, 6), channel_axis=(1, 3), activation="relu")
    bn(x)
    return bn, x


def test_state_dict_save_load_and_repr(rng, tmp_path):
    bn, x = _trained(rng)
    assert repr(bn) == ("BatchNorm2d((3, 6), eps=1e-05, momentum=0.1, affine=True, bias=True, "
                        "track_running_stats=True, channel_axis=[1, 3], activation='relu')")  # as LayerNorm's axes
    assert {k: v.shape for k, v in bn.state_dict().items()} == {
        "weight": (3, 6), "bias": (3, 6), "running_mean": (3, 6), "running_var": (3, 6), "num_batches_tracked": ()}
    copy = fastnorm.BatchNorm2d((3, 6), channel_axis=(1, 3), activation="relu")
    copy.load_state_dict(bn.state_dict())
    with pytest.raises(ValueError, match=r"expected shape \(3, 6\)"):
        copy.load_state_dict({**bn.state_dict(), "weight": np.ones(18)})
    for path in (tmp_path / "bn.npz", tmp_path / "bn.safetensors"):
        fastnorm.save(path, bn)
        loaded = fastnorm.load(path)
        assert loaded.channel_axis == (1, 3) and loaded.num_features == (3, 6)
        for layer in (copy, loaded):
            np.testing.assert_array_equal(layer.eval()(x), bn.eval()(x))


def test_a_one_axis_sequence_is_that_axis():
    bn = fastnorm.BatchNorm2d([3], channel_axis=[-1])
    assert bn.channel_axis == -1 and bn.num_features == 3
    assert repr(bn) == fastnorm.BatchNorm2d(3, channel_axis=-1).__repr__()


def test_calibrate_gives_the_population_statistics_of_each_channel(rng):
    bn, x = _trained(rng)
    batches = [x, x[:2] * 2.0]
    bn.calibrate(batches)
    values = np.concatenate(batches).astype(np.float64)
    np.testing.assert_allclose(bn.running_mean, values.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, values.var(axis=(0, 2), ddof=1), rtol=1e-5)


def test_ghost_batches_and_renorm_over_several_axes(rng):
    x = rng.normal(2.0, 3.0, (4, 3, 5, 6)).astype(np.float32)
    ghost = fastnorm.BatchNorm2d((3, 6), channel_axis=(1, 3), virtual_batch_size=2)
    y = ghost(x)
    for piece in (slice(0, 2), slice(2, 4)):
        np.testing.assert_allclose(y[piece], reference.batch_norm(x[piece], training=True, channel_axis=(1, 3)), **TOL)
    means = np.stack([x[:2].mean(axis=(0, 2)), x[2:].mean(axis=(0, 2))]).mean(axis=0)
    np.testing.assert_allclose(ghost.running_mean, 0.1 * means, **TOL)
    dy = rng.normal(size=x.shape).astype(np.float32)
    assert ghost.backward(dy).shape == x.shape and ghost.grad_weight.shape == (3, 6)
    renorm = fastnorm.BatchNorm2d((3, 6), channel_axis=(1, 3), renorm=True)
    # the first step: renorm_mean 0 and renorm_stddev 1 make r the batch's sigma and d its mean, so y = x
    np.testing.assert_allclose(renorm(x), x, rtol=1e-5, atol=1e-5)
    assert renorm.renorm_mean.shape == renorm.renorm_stddev.shape == (3, 6)


def test_a_lazy_layer_takes_the_sizes_of_its_axes(rng, tmp_path):
    x = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    lazy = fastnorm.LazyBatchNorm2d(channel_axis=(3, 1))
    loaded = fastnorm.LazyBatchNorm2d(channel_axis=(3, 1))
    fastnorm.save(tmp_path / "lazy.npz", lazy)
    assert fastnorm.load(tmp_path / "lazy.npz").has_uninitialized_params()
    y = lazy(x)
    assert type(lazy) is fastnorm.BatchNorm2d and lazy.num_features == (3, 6)
    np.testing.assert_array_equal(y, fastnorm.BatchNorm2d((3, 6), channel_axis=(1, 3))(x))
    loaded.load_state_dict(lazy.state_dict())
    assert loaded.num_features == (3, 6)


def test_from_keras_of_several_axes(rng):
    shape = (4, 3, 5, 6)
    weights = [rng.uniform(0.5, 1.5, (1, 3, 1, 6)) for _ in range(4)]  # tf.keras 2: the input's rank
    config = {"class_name": "BatchNormalization", "config": {"axis": [1, -1], "momentum": 0.9, "epsilon": 1e-3},
              "build_config": {"input_shape": [None, *shape[1:]]}}
    bn = fastnorm.from_keras(config, weights)
    assert type(bn) is fastnorm.BatchNorm2d and bn.channel_axis == (1, 3) and bn.num_features == (3, 6)
    assert bn.momentum == 0.1 and bn.bessel is False
    x = rng.normal(size=shape).astype(np.float32)
    gamma, beta, mean, var = (w.reshape(3, 6) for w in weights)
    np.testing.assert_allclose(bn.eval()(x), reference.batch_norm(x, mean, var, gamma, beta, False, eps=1e-3,
                                                                  channel_axis=(1, 3)), **TOL)
    flat = fastnorm.from_keras(config, [w.reshape(3, 6) for w in weights])  # or of the axes' sizes
    np.testing.assert_array_equal(flat.state_dict()["running_var"], bn.state_dict()["running_var"])
    bare = fastnorm.from_keras({**config, "config": {"axis": [1, 3], "center": False, "scale": False}}, weights[2:])
    assert bare.num_features == (3, 6) and bare.weight is None


@pytest.mark.parametrize("make, error, match", [
    (lambda: fastnorm.BatchNorm2d(3, channel_axis=(1, 3)), ValueError, r"a tuple of 2 sizes"),
    (lambda: fastnorm.BatchNorm2d((3, 4), channel_axis=1), ValueError, "expected an integer"),
    (lambda: fastnorm.BatchNorm2d((3, 4, 5), channel_axis=(1, 3)), ValueError, r"a tuple of 2 sizes"),
    (lambda: fastnorm.BatchNorm2d((3, 0), channel_axis=(1, 3)), ValueError, "num_features: expected a positive"),
    (lambda: fastnorm.BatchNorm2d((3, 4), channel_axis=(1, "3")), TypeError, "channel_axis"),
    (lambda: fastnorm.BatchNorm2d((), channel_axis=()), TypeError, "channel_axis"),
    (lambda: fastnorm.SyncBatchNorm((3, 4), channel_axis=(1, 3)), TypeError, "SyncBatchNorm has one channel axis"),
])
def test_bad_arguments_name_what_is_wrong(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_inputs_and_unsupported_uses_raise_and_change_nothing(rng):
    bn, x = _trained(rng)
    before = bn.state_dict()
    for bad in (x[:, :, :, :5], np.moveaxis(x, 1, 2)):
        with pytest.raises(ValueError):
            bn(bad)
    with pytest.raises(ValueError, match="mask: not supported together with several channel axes"):
        bn(x, mask=np.ones(x.shape, bool))
    with pytest.raises(ValueError, match="several channel axes"):
        fastnorm.fold_batch_norm(np.ones((3, 2, 1, 1), np.float32), None,
                                 fastnorm.BatchNorm2d((3, 6), channel_axis=(1, 3)).eval())
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_dask_apply_keeps_the_channel_axes_whole(rng):
    da = pytest.importorskip("dask.array")
    import fastnorm.dask as fdask
    bn, x = _trained(rng)
    bn.eval()
    y = fdask.apply(bn, da.from_array(x, chunks=(2, 1, 2, 2))).compute()
    np.testing.assert_array_equal(y, bn(x))


def test_several_axes_against_torch_batch_norm_of_the_flattened_channels(rng):
    """BatchNorm2d over axes (1, 3) of (N, C1, H, C3) is torch's BatchNorm1d over C1 * C3 channels of the
    input moved to (N * H, C1 * C3): outputs, running statistics over two steps, gradients."""
    torch = pytest.importorskip("torch")
    N, C1, H, C3 = 4, 3, 5, 2
    bn = fastnorm.BatchNorm2d((C1, C3), channel_axis=(1, 3), dtype=np.float64)
    ref = torch.nn.BatchNorm1d(C1 * C3, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, C1 * C3)))
        ref.bias.copy_(torch.from_numpy(rng.uniform(-1, 1, C1 * C3)))
    bn.load_state_dict({k: v.reshape(C1, C3) if v.ndim else v for k, v in ref.state_dict().items()})

    def flat(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(N * H, C1 * C3)))

    for step in range(2):
        x = rng.normal(step * 3.0, 2.0, (N, C1, H, C3))
        dy = rng.normal(size=x.shape)
        xt = flat(x).requires_grad_()
        yt = ref(xt)
        yt.backward(flat(dy))
        back = (N, H, C1, C3)
        np.testing.assert_allclose(bn(x), yt.detach().numpy().reshape(back).transpose(0, 2, 1, 3), rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(bn.backward(dy), xt.grad.numpy().reshape(back).transpose(0, 2, 1, 3),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.grad_weight, ref.weight.grad.numpy().reshape(C1, C3), rtol=1e-10)
        np.testing.assert_allclose(bn.running_var, ref.running_var.numpy().reshape(C1, C3), rtol=1e-12)
        ref.zero_grad()
    assert bn.num_batches_tracked == int(ref.num_batches_tracked)
