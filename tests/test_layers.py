import numpy as np
import pytest

import fastnorm
import reference
from conftest import requires_torch, torch


@pytest.mark.parametrize("cls, shape", [(fastnorm.BatchNorm1d, (16, 4)), (fastnorm.BatchNorm1d, (8, 4, 5)),
                                        (fastnorm.BatchNorm2d, (4, 4, 3, 5)),
                                        (fastnorm.BatchNorm3d, (2, 4, 3, 2, 5))])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_training_steps_then_eval_match_reference(rng, cls, shape, momentum):
    bn = cls(4, momentum=momentum, dtype=np.float64)
    bn.weight[:] = rng.normal(size=4)
    bn.bias[:] = rng.normal(size=4)
    rm, rv = np.zeros(4), np.ones(4)
    for step in range(4):
        x = rng.normal(size=shape) * (step + 1) + step
        factor = momentum if momentum is not None else 1.0 / (step + 1)
        y_ref = reference.batch_norm(x, rm, rv, bn.weight, bn.bias, True, factor)
        np.testing.assert_allclose(bn(x), y_ref, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-13)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-13)
    assert bn.num_batches_tracked == 4
    bn.eval()
    x = rng.normal(size=shape)
    np.testing.assert_allclose(bn(x), reference.batch_norm(x, rm, rv, bn.weight, bn.bias), atol=1e-12)


def test_wrong_ndim_is_an_error():
    with pytest.raises(ValueError, match="input: expected 4D input, got 3D"):
        fastnorm.BatchNorm2d(3)(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="input: expected 2D or 3D input"):
        fastnorm.BatchNorm1d(3)(np.ones((2, 3, 4, 5), np.float32))


def test_failed_call_leaves_state_untouched():
    bn = fastnorm.BatchNorm1d(3)
    bn(np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))
    before = bn.state_dict()
    for bad in (np.ones((8, 4), np.float32), np.ones((1, 3), np.float32), np.ones((8, 3), int)):
        with pytest.raises((ValueError, TypeError)):
            bn(bad)
    after = bn.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_eval_without_tracking_uses_batch_statistics(rng):
    bn = fastnorm.BatchNorm2d(3, track_running_stats=False).eval()
    assert bn.running_mean is None and bn.num_batches_tracked is None
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32) + 7
    np.testing.assert_allclose(bn(x), reference.batch_norm(x, training=True), atol=1e-5)
    assert "running_mean" not in bn.state_dict()


def test_channels_last_layer(rng):
    bn = fastnorm.BatchNorm2d(3, channel_axis=-1)
    x = rng.normal(size=(4, 5, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(bn(x), reference.batch_norm(x, training=True, channel_axis=-1), atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-5)
    bn.eval()
    expected = reference.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, channel_axis=-1)
    for _ in range(2):  # the first call folds the factors, the second reuses them
        np.testing.assert_allclose(bn(x), expected, atol=1e-5)


def test_modes_reset_and_repr():
    bn = fastnorm.BatchNorm2d(5, affine=False)
    assert bn.training and bn.eval() is bn and not bn.training and bn.train() is bn and bn.training
    assert bn.weight is None and bn.bias is None
    bn.running_mean[:] = 3
    bn.num_batches_tracked = 7
    bn.reset_running_stats()
    assert np.all(bn.running_mean == 0) and np.all(bn.running_var == 1) and bn.num_batches_tracked == 0
    assert repr(bn) == "BatchNorm2d(5, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=True)"


def test_state_dict_round_trip(rng):
    a = fastnorm.BatchNorm2d(4)
    for _ in range(3):
        a(rng.normal(size=(2, 4, 3, 3)).astype(np.float32))
    state = a.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"] == 3
    b = fastnorm.BatchNorm2d(4)
    b.load_state_dict(state)
    x = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    state["running_mean"][:] = 99  # a copy: the layer is not affected
    assert not np.any(a.running_mean == 99)


def test_load_state_dict_checks_before_assigning():
    bn = fastnorm.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"state_dict\['running_var'\]: expected shape \(3,\)"):
        bn.load_state_dict({"weight": np.full(3, 5.0), "bias": np.zeros(3), "running_mean": np.zeros(3),
                            "running_var": np.ones(4)})
    assert np.all(bn.weight == 1)
    with pytest.raises(RuntimeError, match="Missing key"):
        bn.load_state_dict({"weight": np.ones(3)})
    result = bn.load_state_dict({"weight": np.full(3, 2.0)}, strict=False)
    assert "bias" in result.missing_keys and np.all(bn.weight == 2)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_features"):
        fastnorm.BatchNorm1d(0)
    with pytest.raises(TypeError, match="dtype"):
        fastnorm.BatchNorm1d(3, dtype=np.int32)
    with pytest.raises(ValueError, match="momentum"):
        fastnorm.BatchNorm1d(3, momentum=-0.1)
    with pytest.raises(ValueError, match="eps"):
        fastnorm.BatchNorm1d(3, eps=-1)


# --------------------------------------------------------------------------------------------------------
# Parity with PyTorch
# --------------------------------------------------------------------------------------------------------

TORCH_CLASSES = {"BatchNorm1d": (2, 3), "BatchNorm2d": (4,), "BatchNorm3d": (5,)}


@requires_torch
@pytest.mark.parametrize("name, shape", [("BatchNorm1d", (16, 6)), ("BatchNorm1d", (8, 6, 7)),
                                         ("BatchNorm2d", (4, 6, 5, 5)), ("BatchNorm3d", (2, 6, 3, 4, 5))])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [True, False])
def test_parity_with_torch_modules(rng, name, shape, momentum, affine):
    ours = getattr(fastnorm, name)(6, momentum=momentum, affine=affine)
    theirs = getattr(torch.nn, name)(6, momentum=momentum, affine=affine)
    if affine:
        w, b = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
        ours.weight[:], ours.bias[:] = w, b
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(w))
            theirs.bias.copy_(torch.from_numpy(b))
    with torch.no_grad():
        for step in range(5):
            x = (rng.normal(size=shape) * 2 + step).astype(np.float32)
            np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), atol=1e-5)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-5, atol=1e-6)
        assert ours.num_batches_tracked == int(theirs.num_batches_tracked)
        ours.eval(), theirs.eval()
        x = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), atol=1e-5)


@requires_torch
def test_parity_with_torch_functional_channels_last(rng):
    x = (rng.normal(size=(4, 6, 5, 5)) + 3).astype(np.float32)
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    rm_t, rv_t = torch.zeros(6), torch.ones(6)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    expected = torch.nn.functional.batch_norm(xt, rm_t, rv_t, training=True).numpy()
    nhwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y = fastnorm.batch_norm(nhwc, rm, rv, training=True, channel_axis=-1)
    np.testing.assert_allclose(np.moveaxis(y, -1, 1), expected, atol=1e-5)
    np.testing.assert_allclose(rm, rm_t.numpy(), rtol=1e-5)
    np.testing.assert_allclose(rv, rv_t.numpy(), rtol=1e-5)


@requires_torch
def test_torch_state_dict_loads(rng):
    theirs = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        for _ in range(3):
            theirs(torch.randn(4, 5, 3, 3) * 3 + 1)
        theirs.weight.mul_(2)
    ours = fastnorm.BatchNorm2d(5)
    ours.load_state_dict(theirs.state_dict())
    assert ours.num_batches_tracked == 3
    theirs.eval(), ours.eval()
    x = rng.normal(size=(2, 5, 4, 4)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), atol=1e-5)
    state = ours.state_dict()
    again = torch.nn.BatchNorm2d(5)
    again.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    np.testing.assert_array_equal(again.running_var.numpy(), ours.running_var)


@requires_torch
@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_more_exact_than_torch_at_large_offsets(rng, offset):
    x = (offset + rng.normal(size=(8, 8, 16, 16))).astype(np.float32)
    y_ref = reference.batch_norm(x, training=True)
    ours = np.abs(fastnorm.batch_norm(x, training=True) - y_ref).max()
    theirs = np.abs(torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True).numpy()
                    - y_ref).max()
    assert ours <= 1e-5
    assert ours < theirs


def test_the_forward_of_each_layer_with_add_shows_its_signature_and_its_own_docstring():
    # The layers taking add= and mask= share one forward (_AddLayer); help() shows each its signature and
    # docstring, and a numpy.ma input is split from its mask before the class's own steps.
    import inspect

    classes = (fastnorm.BatchNorm2d, fastnorm.GroupNorm, fastnorm.InstanceNorm2d, fastnorm.LazyBatchNorm2d,
               fastnorm.SyncBatchNorm)
    docs = set()
    for cls in classes:
        parameters = inspect.signature(cls.forward).parameters
        assert list(parameters) == ["self", "x", "out", "add", "mask"]
        assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY and parameters[name].default is None
                   for name in ("out", "add", "mask"))
        assert "add : array_like" in cls.forward.__doc__ and "mask : array_like" in cls.forward.__doc__
        assert cls.forward.__module__ == cls.__module__
        docs.add(cls.forward.__doc__)
    assert len(docs) == len(classes)
    x = np.ma.masked_array(np.array([[1., 2.], [3., 6.], [9., 9.]], np.float32), [[0, 0], [0, 0], [1, 1]])
    y = fastnorm.BatchNorm1d(2)(x)
    assert type(y) is np.ndarray and np.array_equal(y, fastnorm.BatchNorm1d(2)(x.data, mask=~x.mask))
    np.testing.assert_allclose(y[:2], [[-1, -1], [1, 1]], atol=1e-4)
