"""Batch Renormalization (renorm=) and Ghost BatchNorm (virtual_batch_size=) on the BatchNorm layers: against
a float64 twin written from the papers, PyTorch autograd of the same formula, and Keras 3 where installed."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
from conftest import keras_renorm_or_skip, requires_torch, torch

CLIP = {"rmax": 1.5, "rmin": 0.75, "dmax": 0.5}


def twin(x, weight, bias, running_mean, running_var, renorm_mean, renorm_stddev, *, eps, momentum, renorm_momentum,
         size, clip, renorm, bessel=True):
    """One training step in float64, written from Ioffe (2017) and Hoffer et al. (2017): the output, and the
    new running and renorm statistics.  Channels on axis 1; sub-batches of ``size`` consecutive samples."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    ys, means, variances, stddevs = [], [], [], []
    for start in range(0, x.shape[0], size):
        piece = x[start:start + size].astype(np.float64)
        mean, var = piece.mean(axis=axes), piece.var(axis=axes)
        stddev = np.sqrt(var + eps)
        r, d = np.ones_like(mean), np.zeros_like(mean)
        if renorm:
            sigma = np.maximum(renorm_stddev, np.sqrt(eps))
            r = np.clip(stddev / sigma, clip.get("rmin"), clip.get("rmax"))
            d = np.clip((mean - renorm_mean) / sigma, -clip.get("dmax", np.inf), clip.get("dmax", np.inf))
        xhat = (piece - mean.reshape(shape)) / stddev.reshape(shape)
        ys.append((xhat * r.reshape(shape) + d.reshape(shape)) * weight.reshape(shape) + bias.reshape(shape))
        n = piece.size // piece.shape[1]
        means.append(mean)
        variances.append(var * n / (n - 1) if bessel else var)
        stddevs.append(stddev)
    new_rm = (1 - momentum) * running_mean + momentum * np.mean(means, axis=0)
    new_rv = (1 - momentum) * running_var + momentum * np.mean(variances, axis=0)
    new_renorm_mean = (1 - renorm_momentum) * renorm_mean + renorm_momentum * np.mean(means, axis=0)
    new_renorm_stddev = (1 - renorm_momentum) * renorm_stddev + renorm_momentum * np.mean(stddevs, axis=0)
    return np.concatenate(ys), new_rm, new_rv, new_renorm_mean, new_renorm_stddev


CASES = [  # (class, input shape, virtual_batch_size, renorm)
    (fastnorm.BatchNorm1d, (12, 3), None, True), (fastnorm.BatchNorm1d, (12, 3, 5), 4, True),
    (fastnorm.BatchNorm2d, (6, 3, 4, 2), 2, False), (fastnorm.BatchNorm3d, (4, 3, 2, 3, 2), 1, True),
    (fastnorm.BatchNorm2d, (8, 3, 3, 3), 8, False),
]


@pytest.mark.parametrize("cls, shape, size, renorm", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_steps_match_the_twin(rng, cls, shape, size, renorm, dtype):
    bn = cls(3, dtype=np.float64, momentum=0.3, renorm=renorm, renorm_clipping=CLIP, renorm_momentum=0.2,
             virtual_batch_size=size)
    bn.weight[:] = rng.normal(size=3)
    bn.bias[:] = rng.normal(size=3)
    state = [bn.running_mean.copy(), bn.running_var.copy(), np.zeros(3), np.ones(3)]
    for step in range(4):
        x = (rng.normal(size=shape) * (1 + step) + step).astype(dtype)
        y_twin, *state = twin(x, bn.weight, bn.bias, *state, eps=bn.eps, momentum=0.3, renorm_momentum=0.2,
                              size=size or shape[0], clip=CLIP, renorm=renorm)
        y = bn(x)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, y_twin, atol=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(bn.running_mean, state[0], rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, state[1], rtol=1e-12)
        if renorm:
            np.testing.assert_allclose(bn.renorm_mean, state[2], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(bn.renorm_stddev, state[3], rtol=1e-12)
    assert bn.num_batches_tracked == 4
    bn.eval()  # evaluation mode: the running statistics, neither renorm nor sub-batches
    x = rng.normal(size=shape)
    plain = cls(3, dtype=np.float64).eval()
    plain.load_state_dict({k: v for k, v in bn.state_dict().items() if not k.startswith("renorm")})
    np.testing.assert_array_equal(bn(x), plain(x))


@requires_torch
@pytest.mark.parametrize("cls, shape, size, renorm", CASES)
def test_backward_treats_r_and_d_as_constants_as_the_paper(rng, cls, shape, size, renorm):
    bn = cls(3, dtype=np.float64, renorm=renorm, renorm_clipping={"rmax": 1.2, "dmax": 0.3}, virtual_batch_size=size)
    bn.weight[:] = rng.normal(size=3)
    bn.bias[:] = rng.normal(size=3)
    if renorm:
        bn.renorm_stddev[:] = [0.5, 2.0, 1.0]
        bn.renorm_mean[:] = [0.3, -0.2, 0.0]
    x = rng.normal(1.0, 2.0, size=shape)
    dy = rng.normal(size=shape)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, bn.weight, bn.bias))
    axes = (0,) + tuple(range(2, x.ndim))
    shape_c = (1, -1) + (1,) * (x.ndim - 2)
    ys = []
    for piece in torch.split(tx, size or shape[0]):
        mean, var = piece.mean(dim=axes), piece.var(dim=axes, unbiased=False)
        stddev = torch.sqrt(var + bn.eps)
        r, d = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        if renorm:
            sigma = torch.tensor(bn.renorm_stddev)
            r = torch.clamp(stddev / sigma, max=1.2).detach()
            d = torch.clamp((mean - torch.tensor(bn.renorm_mean)) / sigma, -0.3, 0.3).detach()
        xhat = (piece - mean.reshape(shape_c)) / stddev.reshape(shape_c)
        ys.append((xhat * r.reshape(shape_c) + d.reshape(shape_c)) * tw.reshape(shape_c) + tb.reshape(shape_c))
    y = torch.cat(ys)
    (y * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(bn(x), y.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(bn.backward(dy), tx.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(bn.grad_weight, tw.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(bn.grad_bias, tb.grad.numpy(), atol=1e-10)


def test_ghost_batches_are_consecutive_samples_and_keras_2_interleaves_them(rng):
    # tf.keras 2 reshaped (N, ...) to (virtual_batch_size, N / virtual_batch_size, ...) and reduced axis 0:
    # its sub-batch k holds samples k, k + G, k + 2G... (G = N / virtual_batch_size).  The same batch reordered
    # so that those samples are consecutive gives fastnorm the same sub-batches.
    x = rng.normal(size=(12, 3)).astype(np.float64)
    size, groups = 4, 3
    bn = fastnorm.BatchNorm1d(3, virtual_batch_size=size, dtype=np.float64)
    keras2 = np.empty_like(x)  # the twin of tf.keras 2's grouping
    view = x.reshape(size, groups, 3)
    keras2.reshape(size, groups, 3)[...] = (view - view.mean(axis=0)) / np.sqrt(view.var(axis=0) + bn.eps)
    order = np.arange(12).reshape(size, groups).T.reshape(-1)  # sub-batch k: samples k, k + G, ...
    np.testing.assert_allclose(bn(x[order]), keras2[order], atol=1e-12)
    assert not np.allclose(fastnorm.BatchNorm1d(3, virtual_batch_size=size, dtype=np.float64)(x), keras2)


def test_ghost_batches_channels_last_and_float16(rng):
    x = rng.normal(3.0, 2.0, size=(6, 2, 2, 4))
    bn = fastnorm.BatchNorm2d(4, channel_axis=-1, virtual_batch_size=3, bessel=False)
    y = bn(x.astype(np.float16))
    expected = np.concatenate([fastnorm.batch_norm(x[i:i + 3], training=True, channel_axis=-1) for i in (0, 3)])
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, expected, atol=2e-3)
    biased = [x[i:i + 3].var(axis=(0, 1, 2)) for i in (0, 3)]
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * np.mean(biased, axis=0), rtol=1e-3)


def test_out_and_no_grad(rng):
    x = rng.normal(size=(8, 3)).astype(np.float32)
    a = fastnorm.BatchNorm1d(3, renorm=True, virtual_batch_size=4)
    b = fastnorm.BatchNorm1d(3, renorm=True, virtual_batch_size=4)
    out = np.full_like(x, np.nan)
    assert a(x, out=out) is out
    with fastnorm.no_grad():
        np.testing.assert_array_equal(b(x), out)
    with pytest.raises(RuntimeError, match="no forward"):
        b.backward(x)
    np.testing.assert_array_equal(a.renorm_stddev, b.renorm_stddev)
    same = x.copy()
    np.testing.assert_array_equal(a(same, out=same), b(x))  # in place: backward still has the input
    assert a.backward(np.ones_like(x)).shape == x.shape


def test_bitwise_identical_for_any_thread_count(rng, uncapped_threads):
    x = rng.normal(5.0, 2.0, size=(8, 3, 33, 17)).astype(np.float32)
    results = []
    for n in (1, 2, 3, 4):
        bn = fastnorm.BatchNorm2d(3, renorm=True, renorm_clipping=CLIP, virtual_batch_size=4)
        with fastnorm.threads(n):
            results.append((bn(x), bn.backward(x), bn.grad_weight, bn.renorm_stddev, bn.running_var))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"renorm": True, "track_running_stats": False}, ValueError, "renorm: expected track_running_stats=True"),
    ({"renorm_clipping": {"rmax": 1.0, "other": 2.0}}, ValueError, "renorm_clipping: expected None or a dict"),
    ({"renorm_clipping": {"rmax": 1.0, "rmin": 2.0}}, ValueError, "rmin <= rmax"),
    ({"renorm_clipping": {"dmax": -1.0}}, ValueError, "dmax >= 0"),
    ({"renorm_clipping": {"dmax": "5"}}, TypeError, r"renorm_clipping\['dmax'\]"),
    ({"renorm_clipping": {"rmax": float("inf")}}, ValueError, r"renorm_clipping\['rmax'\]"),
    ({"renorm_momentum": 1.5}, ValueError, "renorm_momentum: expected a number in"),
    ({"renorm_momentum": None}, TypeError, "renorm_momentum"),
    ({"virtual_batch_size": 0}, ValueError, "virtual_batch_size: expected a positive integer"),
    ({"virtual_batch_size": 2.0}, TypeError, "virtual_batch_size"),
    ({"renorm": True, "activation": "relu"}, ValueError, "activation: not supported together with renorm"),
    ({"virtual_batch_size": 2, "activation": "gelu"}, ValueError, "activation: not supported together"),
])
def test_constructor_errors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        fastnorm.BatchNorm1d(3, **kwargs)


def test_call_errors_name_the_argument_and_change_nothing(rng):
    bn = fastnorm.BatchNorm2d(3, renorm=True, virtual_batch_size=4)
    before = bn.state_dict()
    for bad, match in [(np.ones((6, 3, 2, 2), np.float32), "virtual_batch_size: expected a divisor of the batch "
                                                           "size, got 4 for a batch of 6"),
                       (np.ones((4, 3, 1, 1), np.float32) * np.arange(4)[:, None, None, None] + 0.0,
                        "in each virtual batch"),
                       (np.ones((8, 2, 2, 2), np.float32), "expected 3 channels"),
                       (np.ones((8, 3, 2, 2), int), "floating")]:
        if bad.shape == (4, 3, 1, 1):
            bn.virtual_batch_size = 1
        with pytest.raises((ValueError, TypeError), match=match):
            bn(bad)
        bn.virtual_batch_size = 4
    with pytest.raises(ValueError, match="out"):
        bn(np.ones((8, 3, 2, 2), np.float32), out=np.empty((8, 3, 2, 1), np.float32))
    with pytest.raises(ValueError, match="virtual_batch_size: splits axis 0"):
        fastnorm.BatchNorm1d(8, channel_axis=0, virtual_batch_size=2)(np.ones((8, 3), np.float32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    bn(rng.normal(size=(8, 3, 2, 2)).astype(np.float32))
    with pytest.raises(ValueError, match="grad_output: expected"):
        bn.backward(np.ones((8, 3, 2, 1), np.float32))


@pytest.mark.parametrize("kwargs", [{"renorm": True}, {"virtual_batch_size": 2}])
def test_an_activation_set_after_construction_is_refused_in_training_not_ignored(rng, kwargs):
    bn = fastnorm.BatchNorm1d(3, **kwargs)
    bn.activation = "relu"
    before = bn.state_dict()
    with pytest.raises(ValueError, match="activation: not supported together with renorm or virtual_batch_size"):
        bn(rng.normal(size=(4, 3)).astype(np.float32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    y = bn.eval()(rng.normal(size=(4, 3)).astype(np.float32))  # evaluation mode has neither: the activation applies
    assert (y >= 0).all()


def test_save_load_pickle_and_repr_keep_the_arguments_and_renorm_statistics(rng):
    bn = fastnorm.BatchNorm1d(3, renorm=True, renorm_clipping={"rmax": 3, "dmax": 5}, renorm_momentum=0.05,
                              virtual_batch_size=2)
    bn(rng.normal(size=(6, 3)).astype(np.float32))
    assert repr(bn) == ("BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True, "
                        "renorm=True, renorm_clipping={'rmax': 3.0, 'dmax': 5.0}, renorm_momentum=0.05, "
                        "virtual_batch_size=2)")
    assert list(bn.state_dict())[-2:] == ["renorm_mean", "renorm_stddev"]
    for fmt in ("npz", "safetensors"):
        if fmt == "safetensors":
            pytest.importorskip("safetensors")
        buffer = io.BytesIO()
        fastnorm.save(buffer, bn, format=fmt)
        loaded = fastnorm.load(io.BytesIO(buffer.getvalue()), format=fmt)
        assert repr(loaded) == repr(bn) and loaded._config() == bn._config()
        for key, value in bn.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[key], value)
    with pytest.raises(RuntimeError, match="Missing key.*renorm_mean"):
        bn.load_state_dict(fastnorm.BatchNorm1d(3).state_dict())
    lazy = fastnorm.LazyBatchNorm1d(renorm=True)
    lazy(rng.normal(size=(4, 5)).astype(np.float32))
    assert lazy.renorm_stddev.shape == (5,)


def test_sync_batch_norm_refuses_renorm_and_ghost_batches():
    for kwargs in ({"renorm": True}, {"virtual_batch_size": 2}):
        with pytest.raises(ValueError, match="SyncBatchNorm supports neither renorm nor ghost batches"):
            fastnorm.SyncBatchNorm.convert(fastnorm.BatchNorm2d(3, **kwargs))
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            fastnorm.SyncBatchNorm(3, **kwargs)
    sync = fastnorm.SyncBatchNorm.convert(fastnorm.BatchNorm2d(3, renorm_momentum=0.5))  # unused without renorm
    assert "renorm" not in sync._config() and "renorm" not in repr(sync)


@pytest.mark.parametrize("axis, shape", [(-1, (8, 3)), (1, (8, 3, 4)), (-1, (4, 2, 2, 3))])
def test_renorm_matches_keras_over_training_steps(rng, axis, shape):
    keras = keras_renorm_or_skip()
    layer = keras.layers.BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3, renorm=True,
                                            renorm_clipping={"rmax": 1.5, "rmin": 0.7, "dmax": 0.4},
                                            renorm_momentum=0.8)
    layer.build(shape)
    weights = [rng.uniform(0.5, 1.5, 3).astype(np.float32) for _ in layer.get_weights()]
    layer.set_weights(weights)
    # Keras' momenta are the weights of the old values: fastnorm's are 1 - them.
    cls = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d}[len(shape)]
    bn = cls(3, eps=1e-3, momentum=0.1, renorm=True, renorm_clipping={"rmax": 1.5, "rmin": 0.7, "dmax": 0.4},
             renorm_momentum=0.2, channel_axis=axis, bessel=False)
    gamma, beta, moving_mean, moving_variance, _, renorm_mean, renorm_stddev = weights
    bn.load_state_dict({"weight": gamma, "bias": beta, "running_mean": moving_mean, "running_var": moving_variance,
                        "renorm_mean": renorm_mean, "renorm_stddev": renorm_stddev})
    for step in range(3):
        x = rng.normal(0.5 * step, 1.0 + step, size=shape).astype(np.float32)
        tx = torch.tensor(x, requires_grad=True)
        for variable in layer.trainable_weights:
            variable.value.grad = None
        y = layer(tx, training=True)
        dy = rng.normal(size=shape).astype(np.float32)
        (y * torch.tensor(dy)).sum().backward()
        np.testing.assert_allclose(bn(x), y.detach().numpy(), atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(bn.backward(dy), tx.grad.numpy(), atol=2e-4, rtol=1e-4)
        _, _, k_mean, _, _, k_renorm_mean, k_renorm_stddev = layer.get_weights()
        np.testing.assert_allclose(bn.running_mean, k_mean, atol=1e-5)
        np.testing.assert_allclose(bn.renorm_mean, k_renorm_mean, atol=1e-5)
        np.testing.assert_allclose(bn.renorm_stddev, k_renorm_stddev, atol=1e-5)
        grads = {v.path.split("/")[-1]: v.value.grad.numpy() for v in layer.trainable_weights}
        np.testing.assert_allclose(bn.grad_weight, grads["gamma"], atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(bn.grad_bias, grads["beta"], atol=1e-4, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 4), size=st.integers(1, 5), channels=st.integers(1, 4), spatial=st.sampled_from(
    [(), (1,), (3,), (2, 3)]), last=st.booleans(), renorm=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]),
       strided=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_any_shape_layout_and_memory_order_matches_the_twin(groups, size, channels, spatial, last, renorm, dtype,
                                                            strided, seed):
    rng = np.random.default_rng(seed)
    shape = (groups * size, channels) + spatial
    if size * int(np.prod(spatial)) <= 1:
        return  # one value per channel in a sub-batch: refused (test_call_errors_name_the_argument...)
    cls = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d}[len(shape)]
    x = rng.normal(3.0, 2.0, size=shape)
    bn = cls(channels, dtype=np.float64, renorm=renorm, renorm_clipping=CLIP, virtual_batch_size=size,
             channel_axis=-1 if last else 1)
    if renorm:
        bn.renorm_stddev[:] = rng.uniform(0.5, 2.0, channels)
    given_x = np.moveaxis(x, 1, -1) if last else x
    if strided:  # a view with gaps, in Fortran order
        given_x = np.asfortranarray(np.repeat(given_x, 2, axis=-1))[..., ::2]
    y_twin = twin(x, np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels),
                  np.zeros(channels), bn.renorm_stddev if renorm else np.ones(channels), eps=bn.eps,
                  momentum=0.1, renorm_momentum=0.01, size=size, clip=CLIP, renorm=renorm)
    y = bn(given_x.astype(dtype))
    np.testing.assert_allclose(np.moveaxis(y, -1, 1) if last else y, y_twin[0],
                               atol=2e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(bn.running_var, y_twin[2], rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_backward_detects_an_input_modified_in_place(rng):
    bn = fastnorm.BatchNorm1d(3, renorm=True, virtual_batch_size=4)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    bn(x)
    x[5] += 10.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        bn.backward(np.ones_like(x))
