"""What PyTorch users expect, from PyTorch's own test cases: dtype-dependent defaults, bias=False, eps=0 in
training, degenerate normalized shapes, and clear errors (in PyTorch's form where PyTorch has one) for
out-of-range numbers, bad state dicts and bad calibration lists."""
import numpy as np
import pytest

import fastnorm
from conftest import requires_torch, torch

# --------------------------------------------------------------------------------------------------------
# RMSNorm eps=None: the machine epsilon of the compute dtype
# --------------------------------------------------------------------------------------------------------


def test_rms_norm_eps_none_on_float16_is_float32s():
    x = np.array([[0.01, 0.01]], np.float16)
    y = fastnorm.rms_norm(x, 2)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), 0.9995, atol=1e-4)  # float16's eps (9.8e-4) gave 0.305
    np.testing.assert_array_equal(fastnorm.RMSNorm(2)(x), y)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_rms_norm_eps_none_matches_pytorch(dtype):
    x = (np.random.default_rng(0).normal(size=(4, 8)) * np.array([1e-3, 1e-2, 1.0, 10.0])[:, None]).astype(dtype)
    expected = torch.nn.functional.rms_norm(torch.from_numpy(x), (8,)).numpy()
    tol = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(fastnorm.rms_norm(x, 8), expected, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------------------
# bias=False: a weight and no bias
# --------------------------------------------------------------------------------------------------------

BIASLESS = [
    (lambda: fastnorm.BatchNorm1d(3, bias=False), "BatchNorm1d", (3,), {}, (4, 3, 5)),
    (lambda: fastnorm.BatchNorm2d(3, bias=False), "BatchNorm2d", (3,), {}, (4, 3, 2, 2)),
    (lambda: fastnorm.BatchNorm3d(3, bias=False), "BatchNorm3d", (3,), {}, (2, 3, 2, 2, 2)),
    (lambda: fastnorm.GroupNorm(2, 4, bias=False), "GroupNorm", (2, 4), {}, (3, 4, 5)),
    (lambda: fastnorm.InstanceNorm1d(3, affine=True, bias=False), "InstanceNorm1d", (3,), {"affine": True},
     (2, 3, 6)),
    (lambda: fastnorm.InstanceNorm2d(3, affine=True, bias=False), "InstanceNorm2d", (3,), {"affine": True},
     (2, 3, 3, 3)),
    (lambda: fastnorm.InstanceNorm3d(3, affine=True, bias=False), "InstanceNorm3d", (3,), {"affine": True},
     (2, 3, 2, 2, 2)),
    (lambda: fastnorm.LayerNorm(4, bias=False), "LayerNorm", (4,), {}, (2, 5, 4)),
]
BIASLESS_IDS = [b[1] for b in BIASLESS]


@pytest.mark.parametrize("make, name, args, kwargs, shape", BIASLESS, ids=BIASLESS_IDS)
def test_bias_false_has_a_weight_and_no_bias(make, name, args, kwargs, shape):
    layer = make()
    assert layer.weight is not None and layer.bias is None
    assert "weight" in layer.state_dict() and "bias" not in layer.state_dict()
    assert "bias=False" in repr(layer)
    rng = np.random.default_rng(0)
    layer.weight[...] = rng.uniform(0.5, 2.0, layer.weight.shape)
    x = rng.normal(size=shape).astype(np.float32)
    y = layer(x)
    layer.backward(rng.normal(size=shape).astype(np.float32))
    assert layer.grad_weight is not None and layer.grad_bias is None
    twin = type(layer)(*args, **kwargs)  # the same layer with a zero bias
    twin.weight[...] = layer.weight
    np.testing.assert_array_equal(twin(x), y)


@requires_torch
@pytest.mark.parametrize("make, name, args, kwargs, shape", BIASLESS, ids=BIASLESS_IDS)
def test_bias_false_matches_pytorch(make, name, args, kwargs, shape):
    layer = make()
    reference = getattr(torch.nn, name)(*args, bias=False, **kwargs)
    assert list(layer.state_dict()) == list(reference.state_dict())
    rng = np.random.default_rng(1)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
    layer.load_state_dict(reference.state_dict())
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    reference(tx).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer(x), reference(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(layer.grad_weight, reference.weight.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_bias_false_saves_loads_folds_and_converts(tmp_path):
    bn = fastnorm.BatchNorm2d(3, bias=False)
    bn(np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32))
    fastnorm.save(tmp_path / "bn.npz", bn)
    loaded = fastnorm.load(tmp_path / "bn.npz")
    assert loaded.bias is None and list(loaded.state_dict()) == list(bn.state_dict())
    weight, bias = fastnorm.fold_batch_norm(np.ones((3, 1, 1, 1), np.float32), None, bn.eval())
    np.testing.assert_allclose(bias, -bn.running_mean / np.sqrt(bn.running_var + bn.eps), rtol=1e-6)
    assert fastnorm.SyncBatchNorm.convert(bn).bias is None


# --------------------------------------------------------------------------------------------------------
# eps = 0 in training, degenerate normalized shapes
# --------------------------------------------------------------------------------------------------------


def test_batch_norm_training_with_eps_0_raises_as_pytorch():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="eps must be positive during training"):
        fastnorm.batch_norm(x, rm, rv, training=True, eps=0.0)
    assert np.all(rm == 0) and np.all(rv == 1)
    bn = fastnorm.BatchNorm1d(3, eps=0)  # constructing is fine, as in PyTorch; eval mode too
    with pytest.raises(ValueError, match="eps: expected a positive number in training"):
        bn(x)
    assert bn.num_batches_tracked == 0
    bn.eval()(x)
    fastnorm.batch_norm(x, rm, rv, eps=0.0)
    fastnorm.layer_norm(x, 3, eps=0.0)  # PyTorch checks only batch_norm
    fastnorm.instance_norm(x[None], eps=0.0)


@requires_torch
def test_eps_0_in_training_raises_where_pytorch_raises():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="eps must be positive during training"):
        torch.nn.functional.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, eps=0.0)
    torch.nn.functional.layer_norm(x, (3,), eps=0.0)
    torch.nn.functional.instance_norm(x[None], eps=0.0)


@pytest.mark.parametrize("call", [
    lambda: fastnorm.LayerNorm(()), lambda: fastnorm.RMSNorm(()), lambda: fastnorm.layer_norm(np.ones(3), ()),
    lambda: fastnorm.rms_norm(np.ones(3), ()), lambda: fastnorm.LayerNorm([]),
    lambda: fastnorm.layer_norm_backward(np.ones(3), np.ones(3), (), np.zeros(()), np.ones(())),
])
def test_empty_normalized_shape_is_rejected(call):
    with pytest.raises(ValueError, match=r"normalized_shape: expected at least one dimension, got \(\)"):
        call()


@pytest.mark.parametrize("layer, shape", [(lambda: fastnorm.LayerNorm((0,)), (2, 0)),
                                          (lambda: fastnorm.RMSNorm((3, 0)), (2, 3, 0)),
                                          (lambda: fastnorm.LayerNorm(0, bias=False), (0,))])
def test_zero_size_normalized_shapes_are_accepted(layer, shape):
    layer = layer()
    x = np.ones(shape, np.float32)
    y = layer(x)
    assert y.shape == shape and layer.weight.size == 0
    assert layer.backward(np.ones(shape, np.float32)).shape == shape and layer.grad_weight.size == 0


@requires_torch
def test_degenerate_normalized_shapes_as_pytorch():
    with pytest.raises(RuntimeError, match="normalized_shape"):
        torch.nn.functional.layer_norm(torch.ones(3), ())
    assert torch.nn.LayerNorm((0,))(torch.ones(2, 0)).shape == (2, 0)
    assert torch.nn.RMSNorm((3, 0))(torch.ones(2, 3, 0)).shape == (2, 3, 0)


# --------------------------------------------------------------------------------------------------------
# Clear errors instead of OverflowError, ZeroDivisionError, KeyError, AttributeError
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: fastnorm.BatchNorm1d(3, eps=10**400), lambda: fastnorm.LayerNorm(3, eps=10**400),
    lambda: fastnorm.RMSNorm(3, eps=10**400), lambda: fastnorm.GroupNorm(1, 3, eps=10**400),
    lambda: fastnorm.InstanceNorm1d(3, eps=10**400),
    lambda: fastnorm.layer_norm(np.ones((2, 3)), 3, eps=10**400),
    lambda: fastnorm.batch_normalization(np.ones((2, 3)), 0.0, 1.0, None, None, 10**400),
], ids=["BatchNorm1d", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm1d", "layer_norm", "batch_normalization"])
def test_eps_too_large_for_a_float_is_a_value_error(call):
    with pytest.raises(ValueError, match="eps(ilon)?: expected a finite number >= 0, got an integer too large"):
        call()


def test_momentum_too_large_for_a_float_is_a_value_error():
    with pytest.raises(ValueError, match=r"momentum: expected a number in \[0, 1\] or None"):
        fastnorm.BatchNorm1d(3, momentum=10**400)


@pytest.mark.parametrize("value, error", [(-1, ValueError), (np.array(-5), ValueError), (float("nan"), ValueError),
                                          ("3", TypeError), (np.array([1, 2]), ValueError)])
def test_bad_num_batches_tracked_is_refused_at_load(value, error):
    bn = fastnorm.BatchNorm1d(3, momentum=None)
    state = dict(bn.state_dict(), num_batches_tracked=value)
    with pytest.raises(error, match=r"state_dict\['num_batches_tracked'\]"):
        bn.load_state_dict(state)
    assert bn.num_batches_tracked == 0
    bn(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))  # the layer still trains
    assert bn.num_batches_tracked == 1


def test_negative_num_batches_tracked_in_batch_norm_is_a_value_error():
    bn = fastnorm.BatchNorm1d(3, momentum=None)
    bn.num_batches_tracked = -1  # assigned directly, bypassing load_state_dict
    with pytest.raises(ValueError, match="num_batches_tracked: expected an integer >= 0"):
        bn(np.ones((4, 3), np.float32))


@requires_torch
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_torch_state_dict_of_any_float_dtype_loads(dtype):
    reference = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
        reference.running_mean.normal_()
    reference = reference.to(getattr(torch, dtype))
    bn = fastnorm.BatchNorm1d(3)
    bn.load_state_dict(reference.state_dict())
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(bn.state_dict()[key], value.double().numpy().astype(bn.state_dict()[key].dtype))


@requires_torch
def test_torch_parameters_with_grad_load():
    reference = torch.nn.BatchNorm1d(3)
    bn = fastnorm.BatchNorm1d(3)
    bn.load_state_dict(dict(reference.named_parameters(), **dict(reference.named_buffers())))  # requires_grad
    np.testing.assert_array_equal(bn.weight, reference.weight.detach().numpy())


STRICT_MISMATCHES = [
    lambda sd: {"weight": sd["weight"]},                                      # missing keys
    lambda sd: dict(sd, foo=sd["weight"], **{"bar.x": sd["bias"]}),            # unexpected keys
    lambda sd: dict({k: v for k, v in sd.items() if k != "bias"}, extra=sd["bias"]),  # both
]


@pytest.mark.parametrize("mismatch", STRICT_MISMATCHES, ids=["missing", "unexpected", "both"])
def test_strict_load_state_dict_mismatch_is_a_runtime_error(mismatch):
    bn = fastnorm.BatchNorm1d(3)
    with pytest.raises(RuntimeError, match="Error\\(s\\) in loading state_dict for BatchNorm1d:"):
        bn.load_state_dict(mismatch(bn.state_dict()))
    assert np.all(bn.weight == 1)


@requires_torch
@pytest.mark.parametrize("mismatch", STRICT_MISMATCHES, ids=["missing", "unexpected", "both"])
def test_strict_load_state_dict_mismatch_message_is_pytorchs(mismatch):
    reference = torch.nn.BatchNorm1d(3)
    with pytest.raises(RuntimeError) as expected:
        reference.load_state_dict(mismatch(reference.state_dict()))
    with pytest.raises(RuntimeError) as got:
        fastnorm.BatchNorm1d(3).load_state_dict(mismatch(fastnorm.BatchNorm1d(3).state_dict()))
    assert str(got.value) == str(expected.value)


def test_calibrate_batch_norms_refuses_a_layer_listed_twice():
    bn = fastnorm.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"layers\[2\]: the same layer is listed twice"):
        fastnorm.calibrate_batch_norms([bn, fastnorm.BatchNorm1d(3), bn], bn, [np.ones((4, 3), np.float32)])
    assert bn.training and bn.num_batches_tracked == 0 and bn._recorder is None


# --------------------------------------------------------------------------------------------------------
# repr: PyTorch's, then fastnorm's own arguments where they differ from the defaults
# --------------------------------------------------------------------------------------------------------

# (class name, positional arguments, keyword arguments PyTorch has too)
CONFIGURATIONS = [
    ("BatchNorm2d", (64,), {}),
    ("BatchNorm1d", (3,), {"eps": 1e-3, "momentum": None, "affine": False}),
    ("BatchNorm3d", (5,), {"track_running_stats": False, "bias": False}),
    ("SyncBatchNorm", (7,), {"momentum": 0.25}),
    ("LayerNorm", ((4, 5),), {"eps": 1e-6, "bias": False}),
    ("LayerNorm", (8,), {"elementwise_affine": False}),
    ("GroupNorm", (2, 4), {}),
    ("GroupNorm", (4, 8), {"affine": False, "eps": 0.5}),
    ("InstanceNorm1d", (3,), {}),
    ("InstanceNorm2d", (3,), {"affine": True, "track_running_stats": True, "bias": False}),
    ("InstanceNorm3d", (3,), {"momentum": 0.5}),
    ("RMSNorm", (8,), {}),
    ("RMSNorm", ((2, 3),), {"eps": 1e-6, "elementwise_affine": False}),
]


@requires_torch
@pytest.mark.skipif(torch is not None and "bias=" not in repr(torch.nn.BatchNorm1d(1)),
                    reason="this PyTorch's repr does not show bias (PyTorch 2.13's does)")
@pytest.mark.parametrize("name, args, kwargs", CONFIGURATIONS, ids=[c[0] for c in CONFIGURATIONS])
def test_repr_is_pytorchs(name, args, kwargs):
    assert repr(getattr(fastnorm, name)(*args, **kwargs)) == repr(getattr(torch.nn, name)(*args, **kwargs))


@pytest.mark.parametrize("layer, expected", [
    (fastnorm.BatchNorm2d(64),
     "BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"),
    (fastnorm.BatchNorm1d(3, momentum=None, channel_axis=-1, bessel=False, dtype=np.float64),
     "BatchNorm1d(3, eps=1e-05, momentum=None, affine=True, bias=True, track_running_stats=True, "
     "channel_axis=-1, bessel=False, dtype=float64)"),
    (fastnorm.BatchNorm2d(4, channel_axis=1, bessel=True, dtype=np.float32),  # the defaults, given: not shown
     "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"),
    (fastnorm.SyncBatchNorm(2, dtype="float64", comm=object()),
     "SyncBatchNorm(2, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True, dtype=float64)"),
    (fastnorm.GroupNorm(2, 4, channel_axis=-1, affine=False),
     "GroupNorm(2, 4, eps=1e-05, affine=False, bias=False, channel_axis=-1)"),
    (fastnorm.LayerNorm((4,), dtype=np.float64),
     "LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True, dtype=float64)"),
    (fastnorm.RMSNorm(3, eps=1e-3, dtype=np.float64),
     "RMSNorm((3,), eps=0.001, elementwise_affine=True, dtype=float64)"),
    (fastnorm.InstanceNorm1d(3, dtype=np.float64),
     "InstanceNorm1d(3, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=False, dtype=float64)"),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_repr_shows_fastnorms_own_arguments_that_differ_from_the_defaults(layer, expected):
    assert repr(layer) == expected


def test_a_bfloat16_numpy_state_dict_loads():
    """ml_dtypes' bfloat16 arrays (as JAX and Flax parameters arrive) load exactly, as a torch bfloat16 tensor."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    state = {"weight": np.array([0.5, 1.5, 2.0], ml_dtypes.bfloat16), "bias": np.array([0, -1, 3], ml_dtypes.bfloat16),
             "running_mean": np.array([1.0, 2.0, 3.0], ml_dtypes.bfloat16),
             "running_var": np.array([4.0, 0.25, 1.0], ml_dtypes.bfloat16)}
    bn = fastnorm.BatchNorm1d(3)
    bn.load_state_dict(state, strict=False)
    for key, value in state.items():
        np.testing.assert_array_equal(bn.state_dict()[key], value.astype(np.float32))
