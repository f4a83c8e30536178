"""LayerNorm, RMSNorm, GroupNorm and InstanceNorm against the float64 reference and PyTorch."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
import reference
from conftest import requires_torch, torch

DTYPES = [np.float32, np.float64]


def _atol(dtype, scale=1.0):
    return (2e-5 if dtype == np.float32 else 1e-11) * scale


# --------------------------------------------------------------------------------------------------------
# LayerNorm and RMSNorm
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, normalized", [((5, 1), (1,)), ((7, 3), (3,)), ((2, 4, 17), (17,)),
                                               ((3, 4099), (4099,)), ((1, 17), (17,)), ((2, 3, 4, 5), (4, 5)),
                                               ((6,), (6,)), ((2, 70000), (70000,))])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_reference(rng, shape, normalized, dtype, affine):
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    w = rng.normal(size=normalized).astype(dtype) if affine else None
    b = rng.normal(size=normalized).astype(dtype) if affine else None
    y = fastnorm.layer_norm(x, normalized, w, b)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, reference.layer_norm(x, normalized, w, b), atol=_atol(dtype, 10))


@pytest.mark.parametrize("shape, normalized", [((7, 3), (3,)), ((2, 4, 17), (17,)), ((3, 4099), (4099,)),
                                               ((2, 3, 4, 5), (4, 5)), ((5, 1), (1,))])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_matches_reference(rng, shape, normalized, dtype, affine):
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    w = rng.normal(size=normalized).astype(dtype) if affine else None
    y = fastnorm.rms_norm(x, normalized, w, eps=1e-6)
    np.testing.assert_allclose(y, reference.rms_norm(x, normalized, w, 1e-6), atol=_atol(dtype, 10))


def test_rms_norm_default_eps_is_the_dtype_epsilon(rng):
    x = np.zeros((2, 4), np.float32)
    x[0, 0] = 1e-4
    y = fastnorm.rms_norm(x, 4)
    expected = 1e-4 / np.sqrt(1e-8 / 4 + np.finfo(np.float32).eps)
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-5)


def test_layer_norm_bias_without_weight(rng):
    x = rng.normal(size=(3, 5))
    b = rng.normal(size=5)
    np.testing.assert_allclose(fastnorm.layer_norm(x, 5, bias=b), reference.layer_norm(x, (5,), None, b), atol=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4, 1e5])
def test_layer_norm_accuracy_bar(rng, offset, isa_level):
    x = (offset + rng.normal(size=(64, 768))).astype(np.float32)
    w, b = rng.normal(size=768).astype(np.float32), rng.normal(size=768).astype(np.float32)
    y = fastnorm.layer_norm(x, 768, w, b)
    assert np.abs(y - reference.layer_norm(x, (768,), w, b)).max() <= 1e-5 * max(1, np.abs(w).max())


def test_layer_norm_constant_row_is_exactly_zero(isa_level):
    assert np.all(fastnorm.layer_norm(np.full((3, 10), 1e4 + 0.5, np.float32), 10) == 0)


def test_layer_norm_nan_stays_in_its_row(rng):
    x = rng.normal(size=(4, 8))
    x[2, 3] = np.nan
    y = fastnorm.layer_norm(x, 8)
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()


# --------------------------------------------------------------------------------------------------------
# GroupNorm
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, groups", [((4, 6, 5, 5), 3), ((2, 8, 17), 2), ((1, 4, 3), 4), ((3, 6), 2),
                                           ((2, 4, 3, 2, 2), 1), ((2, 32, 8, 8), 32), ((1, 4, 300, 300), 2),
                                           ((64, 2048), 32), ((8, 512, 1, 1), 16)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_matches_reference(rng, shape, groups, dtype, affine, channels_last):
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    C = shape[1]
    w = rng.normal(size=C).astype(dtype) if affine else None
    b = rng.normal(size=C).astype(dtype) if affine else None
    expected = reference.group_norm(x, groups, w, b)
    if channels_last:
        nhwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = np.moveaxis(fastnorm.group_norm(nhwc, groups, w, b, channel_axis=-1), -1, 1)
    else:
        y = fastnorm.group_norm(x, groups, w, b)
    np.testing.assert_allclose(y, expected, atol=_atol(dtype, 10))


@pytest.mark.parametrize("offset", [1e4, 1e5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_accuracy_bar(rng, offset, channels_last):
    x = (offset + rng.normal(size=(4, 32, 16, 16))).astype(np.float32)
    expected = reference.group_norm(x, 8)
    if channels_last:
        y = np.moveaxis(fastnorm.group_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), 8, channel_axis=-1), -1, 1)
    else:
        y = fastnorm.group_norm(x, 8)
    assert np.abs(y - expected).max() <= 1e-5


def test_group_norm_groups_of_one_value_give_the_bias_exactly(rng):
    # PyTorch 2.13 is off by ~1e-4 here: its E[x^2] - E[x]^2 variance of one value is not 0.
    b = rng.normal(size=6).astype(np.float32)
    y = fastnorm.group_norm(rng.normal(size=(3, 6)).astype(np.float32), 6, np.ones(6, np.float32), b)
    assert np.array_equal(y, np.broadcast_to(b, (3, 6)))


def test_group_norm_channels_last_memory_seen_channels_first(rng):
    x = np.moveaxis(rng.normal(size=(2, 5, 5, 6)).astype(np.float32), -1, 1)
    np.testing.assert_allclose(fastnorm.group_norm(x, 3), reference.group_norm(x, 3), atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# InstanceNorm
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3, 10), (2, 5, 6, 7), (1, 3, 2, 3, 4), (2, 3, 300, 300)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_matches_reference(rng, shape, dtype, affine):
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    C = shape[1]
    w = rng.normal(size=C).astype(dtype) if affine else None
    b = rng.normal(size=C).astype(dtype) if affine else None
    rm, rv = rng.normal(size=C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    y_ref = reference.instance_norm(x, rm_ref, rv_ref, w, b, True, 0.1)
    y = fastnorm.instance_norm(x, rm, rv, w, b, True, 0.1)
    np.testing.assert_allclose(y, y_ref, atol=_atol(dtype, 10))
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-6)
    y_ref = reference.instance_norm(x, rm, rv, w, b, False)
    np.testing.assert_allclose(fastnorm.instance_norm(x, rm, rv, w, b, False), y_ref, atol=_atol(dtype, 10))


def test_instance_norm_layers_accept_unbatched_input(rng):
    x = rng.normal(size=(3, 10)).astype(np.float32)
    y = fastnorm.InstanceNorm1d(3)(x)
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y, reference.instance_norm(x[None])[0], atol=1e-5)
    assert fastnorm.InstanceNorm2d(3)(rng.normal(size=(3, 4, 4))).shape == (3, 4, 4)


def test_instance_norm_tracks_running_stats_and_uses_them_in_eval(rng):
    layer = fastnorm.InstanceNorm2d(3, track_running_stats=True, affine=True, dtype=np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    for _ in range(3):
        x = rng.normal(size=(4, 3, 5, 5)) * 2 + 1
        reference.instance_norm(x, rm, rv, None, None, True, 0.1)
        layer(x)
    np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, rv, rtol=1e-12)
    layer.eval()
    x = rng.normal(size=(2, 3, 5, 5))
    np.testing.assert_allclose(layer(x), reference.instance_norm(x, rm, rv, None, None, False), atol=1e-12)
    assert list(layer.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


# --------------------------------------------------------------------------------------------------------
# Shared behaviour
# --------------------------------------------------------------------------------------------------------

CALLS = {
    "layer_norm": lambda x, **kw: fastnorm.layer_norm(x, x.shape[-1], **kw),
    "rms_norm": lambda x, **kw: fastnorm.rms_norm(x, x.shape[-1], **kw),
    "group_norm": lambda x, **kw: fastnorm.group_norm(x, 2, **kw),
    "instance_norm": lambda x, **kw: fastnorm.instance_norm(x, **kw),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_out_aliasing_float16_and_non_contiguous(rng, name):
    call = CALLS[name]
    base = rng.normal(size=(4, 6, 10)).astype(np.float32)
    expected = call(base)
    x = base.copy()
    assert call(x, out=x) is x
    np.testing.assert_array_equal(x, expected)
    y16 = call(base.astype(np.float16))
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, expected, atol=5e-3)
    strided = np.asfortranarray(base)
    np.testing.assert_allclose(call(strided), expected, atol=1e-6)
    assert call(np.empty((0, 6, 10), np.float32)).shape == (0, 6, 10)


@pytest.mark.parametrize("name", list(CALLS))
def test_bitwise_identical_for_any_thread_count(rng, name, isa_level, uncapped_threads):
    call = CALLS[name]
    for shape in [(2, 4, 100000), (64, 8, 300), (2000, 8, 6)]:  # rows in batches: the last two
        x = (1e3 + rng.normal(size=shape)).astype(np.float32)
        results = []
        for n in (1, 2, 3):
            with fastnorm.threads(n):
                results.append(call(x))
        assert all(np.array_equal(results[0], r) for r in results[1:])


BAD = [
    (lambda: fastnorm.layer_norm(np.ones((2, 3)), 4), ValueError, "normalized_shape: expected the input's trailing"),
    (lambda: fastnorm.layer_norm(np.ones((2, 3)), (2, 3, 1)), ValueError, "normalized_shape"),
    (lambda: fastnorm.layer_norm(np.ones((2, 3)), "3"), TypeError, "normalized_shape"),
    (lambda: fastnorm.layer_norm(np.ones((2, 3)), 3, np.ones(4)), ValueError, r"weight: expected shape \(3,\)"),
    (lambda: fastnorm.layer_norm(np.ones((2, 3), int), 3), TypeError, "input: expected a floating-point"),
    (lambda: fastnorm.rms_norm(np.ones((2, 3)), 3, eps=-1.0), ValueError, "eps"),
    (lambda: fastnorm.group_norm(np.ones((2, 6, 3)), 4), ValueError, "num_groups: expected a divisor of the 6"),
    (lambda: fastnorm.group_norm(np.ones((2, 6, 3)), 0), ValueError, "num_groups: expected a positive"),
    (lambda: fastnorm.group_norm(np.ones(6), 3), ValueError, "input: expected at least 2 dimensions"),
    (lambda: fastnorm.group_norm(np.ones((2, 6, 3)), 3, np.ones(5)), ValueError, r"weight: expected shape \(6,\)"),
    (lambda: fastnorm.group_norm(np.ones((2, 6, 3, 3)), 3, channel_axis=2), ValueError, "channel_axis"),
    (lambda: fastnorm.instance_norm(np.ones((2, 3))), ValueError, "input: expected at least 3 dimensions"),
    (lambda: fastnorm.instance_norm(np.ones((2, 3, 1))), ValueError, "expected more than 1 spatial element"),
    (lambda: fastnorm.instance_norm(np.ones((2, 3, 4)), use_input_stats=False), ValueError, "running_mean"),
    (lambda: fastnorm.GroupNorm(4, 6), ValueError, "num_groups: expected a divisor of num_channels=6"),
    (lambda: fastnorm.GroupNorm(2, 6)(np.ones((2, 4, 3), np.float32)), ValueError, "input: expected 6 channels"),
    (lambda: fastnorm.InstanceNorm2d(3)(np.ones((2, 3, 4), np.float32)[None, None]), ValueError,
     "input: expected 3D or 4D"),
    (lambda: fastnorm.InstanceNorm1d(3, affine=True)(np.ones((2, 4, 5))), ValueError, "input: expected 3 channels"),
    (lambda: fastnorm.LayerNorm(-1), ValueError, "normalized_shape"),
    (lambda: fastnorm.RMSNorm(()), ValueError, "normalized_shape: expected at least one dimension"),
    (lambda: fastnorm.layer_norm(np.ones(3), ()), ValueError, "normalized_shape: expected at least one dimension"),
]


@pytest.mark.parametrize("call, error, message", BAD)
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_instance_norm_failure_leaves_running_stats_untouched():
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    with pytest.raises(ValueError):
        fastnorm.instance_norm(np.ones((2, 3, 1)), rm, rv)
    with pytest.raises(ValueError):
        fastnorm.instance_norm(np.ones((2, 3, 4)), rm, rv, momentum=2.0)
    assert np.all(rm == 0.5) and np.all(rv == 2.0)


def test_layer_state_dicts_and_repr():
    ln = fastnorm.LayerNorm((4, 5), bias=False)
    assert list(ln.state_dict()) == ["weight"] and ln.bias is None
    assert repr(ln) == "LayerNorm((4, 5), eps=1e-05, elementwise_affine=True, bias=False)"
    gn = fastnorm.GroupNorm(2, 4)
    gn.load_state_dict({"weight": np.full(4, 2.0), "bias": np.ones(4)})
    assert gn.weight.dtype == np.float32 and np.all(gn.weight == 2)
    assert repr(gn) == "GroupNorm(2, 4, eps=1e-05, affine=True, bias=True)"
    rms = fastnorm.RMSNorm(8)
    assert list(rms.state_dict()) == ["weight"]
    assert repr(fastnorm.InstanceNorm2d(3)) == \
        "InstanceNorm2d(3, eps=1e-05, momentum=0.1, affine=False, bias=False, track_running_stats=False)"


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 6), d=st.integers(1, 70), offset=st.sampled_from([0.0, 1e4]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_property_layer_norm(rows, d, offset, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (offset + rng.normal(size=(rows, d))).astype(dtype)
    w, b = rng.normal(size=d).astype(dtype), rng.normal(size=d).astype(dtype)
    expected = reference.layer_norm(x, (d,), w, b)
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(fastnorm.layer_norm(x, d, w, b), expected, atol=_atol(dtype, 10 * scale))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 4), groups=st.integers(1, 4), per_group=st.integers(1, 4), spatial=st.integers(1, 40),
       channels_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_property_group_norm(n, groups, per_group, spatial, channels_last, seed):
    rng = np.random.default_rng(seed)
    C = groups * per_group
    x = rng.normal(size=(n, C, spatial))
    w, b = rng.normal(size=C), rng.normal(size=C)
    expected = reference.group_norm(x, groups, w, b)
    scale = max(1.0, np.abs(expected).max())
    if channels_last:
        y = np.moveaxis(fastnorm.group_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), groups, w, b,
                                            channel_axis=-1), -1, 1)
    else:
        y = fastnorm.group_norm(x, groups, w, b)
    np.testing.assert_allclose(y, expected, atol=1e-9 * scale)


# --------------------------------------------------------------------------------------------------------
# Parity with PyTorch
# --------------------------------------------------------------------------------------------------------

def _torch_layer(name, *args, **kwargs):
    return getattr(torch.nn, name)(*args, **kwargs)


@requires_torch
@pytest.mark.parametrize("name, args, shape", [
    ("LayerNorm", ((17,),), (4, 3, 17)), ("LayerNorm", ((3, 17),), (4, 3, 17)),
    ("RMSNorm", ((17,),), (4, 3, 17)), ("GroupNorm", (2, 6), (4, 6, 5, 5)), ("GroupNorm", (3, 6), (3, 6)),
    ("InstanceNorm1d", (6,), (4, 6, 10)), ("InstanceNorm2d", (6,), (4, 6, 5, 5)),
    ("InstanceNorm3d", (6,), (2, 6, 3, 4, 5)), ("InstanceNorm1d", (6,), (6, 10)),
])
@pytest.mark.parametrize("affine", [True, False])
def test_parity_with_torch(rng, name, args, shape, affine):
    kwargs = {}
    if name in ("LayerNorm", "RMSNorm"):
        kwargs["elementwise_affine"] = affine
    else:
        kwargs["affine"] = affine
    ours = getattr(fastnorm, name)(*args, **kwargs)
    theirs = _torch_layer(name, *args, **kwargs)
    with torch.no_grad():
        if affine:
            for value in theirs.state_dict().values():
                value.copy_(torch.from_numpy(rng.normal(size=tuple(value.shape)).astype(np.float32)))
            ours.load_state_dict(theirs.state_dict())
        x = (rng.normal(size=shape) * 3 + 2).astype(np.float32)
        np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), atol=2e-5 * (1 + 2 * affine))


@requires_torch
def test_parity_with_torch_instance_norm_running_stats(rng):
    ours = fastnorm.InstanceNorm2d(4, track_running_stats=True, momentum=0.3)
    theirs = torch.nn.InstanceNorm2d(4, track_running_stats=True, momentum=0.3)
    with torch.no_grad():
        for _ in range(3):
            x = (rng.normal(size=(3, 4, 6, 6)) * 2 + 1).astype(np.float32)
            np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), atol=2e-5)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-5)
        ours.eval(), theirs.eval()
        x = rng.normal(size=(2, 4, 6, 6)).astype(np.float32)
        np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), atol=2e-5)


@requires_torch
@pytest.mark.parametrize("offset", [1e4])
def test_more_exact_than_torch(rng, offset):
    x = (offset + rng.normal(size=(64, 768))).astype(np.float32)
    expected = reference.layer_norm(x, (768,))
    ours = np.abs(fastnorm.layer_norm(x, 768) - expected).max()
    theirs = np.abs(torch.nn.functional.layer_norm(torch.from_numpy(x), (768,)).numpy() - expected).max()
    assert ours <= 1e-5 and ours < theirs
    x = (offset + rng.normal(size=(4, 32, 16, 16))).astype(np.float32)
    nhwc = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    expected = reference.group_norm(x, 8)
    theirs = np.abs(torch.nn.functional.group_norm(nhwc, 8).numpy() - expected).max()
    ours = np.abs(np.moveaxis(fastnorm.group_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), 8, channel_axis=-1),
                              -1, 1) - expected).max()
    assert ours <= 1e-5 and ours < theirs


@pytest.mark.parametrize("shape", [(3000, 1), (3000, 5), (700, 63), (64, 64), (701, 300), (50, 512)])
def test_short_rows_match_the_reference(rng, shape, isa_level):
    # Rows of up to 512 values go in batches (the batch's statistics, then its scales, then its sweeps);
    # the results are the reference's for every layer.
    x = (1e3 + rng.normal(size=shape)).astype(np.float32)
    D = shape[-1]
    w, b = rng.normal(size=D).astype(np.float32), rng.normal(size=D).astype(np.float32)
    tol = 1e-5 * max(1, np.abs(w).max())
    assert np.abs(fastnorm.layer_norm(x, D, w, b) - reference.layer_norm(x, (D,), w, b)).max() <= tol
    assert np.abs(fastnorm.rms_norm(x, D, w, eps=1e-6) - reference.rms_norm(x, (D,), w, eps=1e-6)).max() <= tol
    if D > 1:  # InstanceNorm needs more than one value per instance
        images = x.reshape(-1, 4, D) if shape[0] % 4 == 0 else x[None]
        np.testing.assert_allclose(fastnorm.instance_norm(images), reference.instance_norm(images), atol=2e-5)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 13), D=st.integers(513, 2048), dtype=st.sampled_from([np.float32, np.float64]),
       op=st.sampled_from(["layer_norm", "rms_norm", "instance_norm"]), affine=st.booleans(),
       nthreads=st.sampled_from([1, 2, 3]))
def test_long_rows_streamed_in_batches_give_the_bits_of_one_row_at_a_time(rows, D, dtype, op, affine, nthreads):
    # Rows of 513 to 2048 values go in batches (statistics two rows at a time) where the output is
    # streamed, one at a time where it is not: the same operations on each row either way.
    from fastnorm import _kernels
    rng = np.random.default_rng(D)
    x = (rng.normal(size=(rows, 2, D)) * 3 + 100).astype(dtype)
    w, b = (rng.normal(size=D).astype(dtype) for _ in range(2))
    if op == "instance_norm":
        w, b = w[:2], b[:2]

    def call():
        with fastnorm.threads(nthreads):
            if op == "instance_norm":
                return fastnorm.instance_norm(x, weight=w if affine else None, bias=b if affine else None,
                                              return_stats=True)
            if op == "rms_norm":
                return fastnorm.rms_norm(x, D, w if affine else None, return_stats=True)
            return fastnorm.layer_norm(x, D, w if affine else None, b if affine else None, return_stats=True)

    cached = call()
    previous, window = _kernels.set_stream_bytes(0), _kernels.set_alias_window(0)
    try:
        streamed = call()
    finally:
        _kernels.set_stream_bytes(previous)
        _kernels.set_alias_window(window)
    for a, c in zip(cached, streamed):
        assert a.dtype == c.dtype and np.array_equal(a, c)
