"""The lazy layers: num_features from the first call, then the non-lazy class, as torch.nn's."""
import io

import numpy as np
import pytest

import fastnorm
from conftest import requires_torch, torch

CASES = [  # (class name, input shape, constructor arguments)
    ("BatchNorm1d", (6, 3), {}), ("BatchNorm1d", (4, 3, 5), {}), ("BatchNorm2d", (4, 3, 2, 5), {}),
    ("BatchNorm3d", (2, 3, 2, 2, 3), {"affine": False}), ("BatchNorm2d", (4, 3, 2, 2), {"track_running_stats": False}),
    ("InstanceNorm1d", (2, 3, 6), {}), ("InstanceNorm2d", (2, 3, 4, 4), {"affine": False}),
    ("InstanceNorm3d", (2, 3, 2, 3, 3), {"affine": False, "track_running_stats": False}),
]
IDS = [f"{name}-{len(shape)}d-{'-'.join(kwargs)}" for name, shape, kwargs in CASES]


@requires_torch
@pytest.mark.filterwarnings("ignore:input's size at dim=1")  # PyTorch keeps num_features 0 without parameters
@pytest.mark.parametrize("name, shape, kwargs", CASES, ids=IDS)
def test_first_call_infers_num_features_and_becomes_the_layer_as_torch(rng, name, shape, kwargs):
    lazy = getattr(fastnorm, f"Lazy{name}")(**kwargs)
    twin = getattr(torch.nn, f"Lazy{name}")(**kwargs)
    assert repr(lazy) == repr(twin)  # num_features 0 before the first call, as PyTorch shows it
    assert not isinstance(lazy, getattr(fastnorm, name))
    assert set(lazy.state_dict()) <= set(twin.state_dict())
    assert list(lazy.state_dict()) == (["num_batches_tracked"] if lazy.track_running_stats else [])
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    y = lazy(x)
    expected = twin(torch.from_numpy(x))
    np.testing.assert_allclose(y, expected.detach().numpy(), atol=1e-5)
    assert type(lazy) is getattr(fastnorm, name) and isinstance(lazy, getattr(fastnorm, name))
    assert type(twin) is getattr(torch.nn, name)
    assert lazy.num_features == 3 and lazy.backward(np.ones_like(x)).shape == shape
    torch_state = twin.state_dict()
    assert list(lazy.state_dict()) == list(torch_state)
    for key, value in lazy.state_dict().items():
        np.testing.assert_allclose(value, torch_state[key].numpy(), rtol=1e-6, err_msg=key)


def test_unbatched_instance_norm_infers_its_channels_from_dimension_0(rng):
    # PyTorch 2.13 reads dimension 1 of an unbatched input (5 here) and then refuses its own input.
    inorm = fastnorm.LazyInstanceNorm1d()
    x = rng.normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_array_equal(inorm(x), fastnorm.InstanceNorm1d(3, affine=True, track_running_stats=True)(x))
    assert inorm.num_features == 3 and inorm.weight.shape == (3,)


def test_eval_mode_first_call_uses_the_fresh_running_statistics(rng):
    bn = fastnorm.LazyBatchNorm1d(dtype=np.float64).eval()
    x = rng.normal(size=(4, 2))
    np.testing.assert_allclose(bn(x), x / np.sqrt(1 + 1e-5), rtol=1e-12)
    assert type(bn) is fastnorm.BatchNorm1d and not bn.training and bn.num_batches_tracked == 0


def test_channels_last_batch_norm_reads_channel_axis(rng):
    bn = fastnorm.LazyBatchNorm2d(channel_axis=-1, bessel=False)
    bn(rng.normal(size=(2, 3, 3, 5)).astype(np.float32))
    assert bn.num_features == 5 and bn.running_mean.shape == (5,) and bn.bessel is False


@pytest.mark.parametrize("bad, error", [(np.ones((4, 3, 2)), "expected 4D input"),
                                        (np.ones((4, 0, 2, 2)), "at least one channel"),
                                        (np.ones((4, 3, 2, 2), int), "floating")])
def test_a_first_call_that_fails_leaves_the_layer_lazy(bad, error):
    bn = fastnorm.LazyBatchNorm2d()
    with pytest.raises((ValueError, TypeError), match=error):
        bn(bad)
    assert type(bn) is fastnorm.LazyBatchNorm2d and bn.has_uninitialized_params() and bn.weight is None
    bn(np.ones((2, 4, 1, 1), np.float32) * np.arange(2).reshape(2, 1, 1, 1))
    assert type(bn) is fastnorm.BatchNorm2d and bn.num_features == 4


@requires_torch
def test_loading_a_state_dict_materializes_as_torch(rng):
    source = torch.nn.BatchNorm2d(3)
    source.running_mean.uniform_()
    lazy, twin = fastnorm.LazyBatchNorm2d(), torch.nn.LazyBatchNorm2d()
    assert lazy.load_state_dict(source.state_dict()) == ([], [])
    twin.load_state_dict(source.state_dict())
    # Still lazy until the first call, as PyTorch, with the loaded values.
    assert type(lazy) is fastnorm.LazyBatchNorm2d and not lazy.has_uninitialized_params()
    assert type(twin) is torch.nn.LazyBatchNorm2d
    np.testing.assert_array_equal(lazy.running_mean, source.running_mean.numpy())
    with pytest.raises(ValueError, match="the 4 channels of the input, got shape \\(3,\\)"):
        lazy(np.ones((2, 4, 2, 2), np.float32))
    assert type(lazy) is fastnorm.LazyBatchNorm2d
    x = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(lazy(x), twin(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    assert type(lazy) is fastnorm.BatchNorm2d


def test_a_failed_load_leaves_the_layer_lazy():
    bn = fastnorm.LazyBatchNorm1d()
    with pytest.raises(RuntimeError, match="Missing key"):
        bn.load_state_dict({"weight": np.ones(3)})
    assert bn.has_uninitialized_params() and bn.weight is None
    with pytest.raises(RuntimeError, match="Unexpected key"):  # lengths that disagree: nothing to infer
        bn.load_state_dict({"weight": np.ones(3), "bias": np.ones(2)})
    assert bn.has_uninitialized_params()


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_save_and_load_before_and_after_the_first_call(rng, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    for layer in (fastnorm.LazyInstanceNorm2d(eps=1e-3, track_running_stats=True),
                  fastnorm.LazyBatchNorm1d(momentum=None, channel_axis=-1)):
        buffer = io.BytesIO()
        fastnorm.save(buffer, {"a": layer}, format=fmt)
        loaded = fastnorm.load(io.BytesIO(buffer.getvalue()), format=fmt)["a"]
        assert type(loaded) is type(layer) and repr(loaded) == repr(layer) and loaded.has_uninitialized_params()
        assert loaded._config() == layer._config()
    loaded_into = fastnorm.LazyBatchNorm1d()
    loaded_into.load_state_dict(fastnorm.BatchNorm1d(4).state_dict())  # materialized, still lazy
    buffer = io.BytesIO()
    fastnorm.save(buffer, {"a": loaded_into}, format=fmt)
    loaded = fastnorm.load(io.BytesIO(buffer.getvalue()), format=fmt)["a"]
    assert type(loaded) is fastnorm.LazyBatchNorm1d and loaded.num_features == 4
    layer = fastnorm.LazyBatchNorm1d()
    layer(rng.normal(size=(5, 2)).astype(np.float32))
    buffer = io.BytesIO()
    fastnorm.save(buffer, layer, format=fmt)
    loaded = fastnorm.load(io.BytesIO(buffer.getvalue()), format=fmt)
    assert type(loaded) is fastnorm.BatchNorm1d and loaded.num_features == 2
    np.testing.assert_array_equal(loaded.running_var, layer.running_var)


def test_reset_before_the_first_call_keeps_the_layer_lazy():
    bn = fastnorm.LazyBatchNorm3d()
    bn.reset_parameters()
    bn.reset_running_stats()
    assert bn.has_uninitialized_params() and bn.running_mean is None and bn.num_batches_tracked == 0
    # nothing to create: as PyTorch
    assert not fastnorm.LazyInstanceNorm1d(affine=False, track_running_stats=False).has_uninitialized_params()


def test_features_that_need_running_statistics_say_a_lazy_layer_has_none_before_its_first_call():
    da = pytest.importorskip("dask.array")
    import fastnorm.dask

    hint = "this Lazy layer has none until it is called or given a state dict"
    lazy = fastnorm.LazyBatchNorm2d(activation="relu").eval()
    with pytest.raises(ValueError, match=hint):
        fastnorm.fold_batch_norm(np.ones((3, 2, 1, 1), np.float32), None, lazy)
    with pytest.raises(ValueError, match=hint):
        fastnorm.dask.apply(lazy, da.ones((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=hint):
        fastnorm.calibrate_batch_norms([lazy], lazy, [np.ones((2, 3, 4, 4), np.float32)])
    with pytest.raises(ValueError, match="expected running statistics") as e:  # a sized layer: no hint
        fastnorm.fold_batch_norm(np.ones((3, 2, 1, 1), np.float32), None,
                                 fastnorm.BatchNorm2d(3, track_running_stats=False))
    assert "Lazy" not in str(e.value)
