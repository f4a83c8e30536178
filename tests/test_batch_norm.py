import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
import reference

SHAPES = [(16, 5), (4, 3, 7), (3, 4, 5, 6), (2, 3, 2, 3, 4), (2, 2, 3000), (300, 40)]


def _params(rng, C, dtype=np.float32):
    return (rng.normal(size=C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype),
            rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype))


def _tol(dtype):
    return 1e-5 if dtype == np.float32 else 1e-12


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_matches_reference(rng, shape, dtype, training, affine, channel_axis):
    x = (rng.normal(size=shape) * 3 + 2).astype(dtype)
    C = shape[channel_axis]
    rm, rv, w, b = _params(rng, C, dtype)
    if not affine:
        w = b = None
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    y_ref = reference.batch_norm(x, rm_ref, rv_ref, w, b, training, 0.1, 1e-5, channel_axis=channel_axis)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, channel_axis=channel_axis)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=_tol(dtype) * 10)
    if training:
        np.testing.assert_allclose(rm, rm_ref, rtol=1e-6 if dtype == np.float32 else 1e-13)
        np.testing.assert_allclose(rv, rv_ref, rtol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("make", [
    lambda x: np.asfortranarray(x),
    lambda x: x[:, :, ::2],
    lambda x: x[::-1],
    lambda x: np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1),  # NHWC memory, NCHW view
], ids=["fortran", "strided", "negative-stride", "channels-last-memory"])
@pytest.mark.parametrize("training", [True, False])
def test_any_memory_layout(rng, make, training):
    base = rng.normal(size=(4, 3, 10, 5)).astype(np.float32)
    x = make(base)
    rm, rv, w, b = _params(rng, 3)
    y_ref = reference.batch_norm(x, rm.copy(), rv.copy(), w, b, training)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4, 1e5])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_accuracy_bar_with_large_offsets(rng, offset, channel_axis, isa_level):
    shape = (8, 16, 12, 12) if channel_axis == 1 else (8, 12, 12, 16)
    x = (offset + rng.normal(size=shape)).astype(np.float32)
    y = fastnorm.batch_norm(x, training=True, channel_axis=channel_axis)
    y_ref = reference.batch_norm(x, training=True, channel_axis=channel_axis)
    assert np.abs(y - y_ref).max() <= 1e-5


@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_accuracy_bar_in_eval_with_large_running_mean(rng, offset):
    x = (offset + rng.normal(size=(4, 8, 9, 9))).astype(np.float32)
    rm = (offset + rng.normal(size=8)).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    w, b = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training=False)
    y_ref = reference.batch_norm(x, rm, rv, w, b, training=False)
    assert np.abs(y - y_ref).max() <= 1e-5


def test_constant_channel_normalizes_to_exact_zero(isa_level):
    x = np.full((4, 3, 5, 5), 1e4 + 0.5, dtype=np.float32)
    for axis in (1, -1):
        y = fastnorm.batch_norm(x, training=True, channel_axis=axis)
        assert np.all(y == 0.0)


def test_huge_values_do_not_overflow_the_variance(rng, isa_level):
    x = (rng.normal(size=(4, 3, 50)) * 1e30).astype(np.float32)
    y = fastnorm.batch_norm(x, training=True)
    y_ref = reference.batch_norm(x, training=True)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, y_ref, atol=1e-5)


def test_nan_stays_in_its_channel(rng, isa_level):
    x = rng.normal(size=(4, 3, 8)).astype(np.float32)
    x[1, 1, 3] = np.nan
    for training in (True, False):
        y = fastnorm.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), training=training)
        assert np.isfinite(y[:, [0, 2]]).all()
        assert np.isnan(y[:, 1]).any()


@pytest.mark.parametrize("shape, axis", [((8, 64, 40, 40), 1), ((2, 3, 200, 200), 1), ((6000, 24), 1),
                                         ((8, 40, 40, 3), -1), ((64, 64, 5, 5), 1), ((2, 4, 4, 2048), -1)])
def test_bitwise_identical_for_any_thread_count(rng, shape, axis, isa_level, uncapped_threads):
    x = (1e3 + rng.normal(size=shape)).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        with fastnorm.threads(n):
            rm, rv = np.zeros(shape[axis], np.float32), np.ones(shape[axis], np.float32)
            y = fastnorm.batch_norm(x, rm, rv, training=True, channel_axis=axis)
            m, v = fastnorm.moments(x, tuple(a for a in range(x.ndim) if a != axis % x.ndim))
            results.append((y, rm, rv, m, v))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_moments_mean_within_one_ulp(rng, isa_level):
    x = (1e4 + rng.uniform(-1, 1, size=(1000, 37))).astype(np.float32)
    m, v = fastnorm.moments(x, axes=0)
    exact = x.astype(np.float64).mean(axis=0)
    assert np.all(np.abs(m.astype(np.float64) - exact) <= np.spacing(np.float32(1e4)))
    np.testing.assert_allclose(v, x.astype(np.float64).var(axis=0), rtol=1e-6)


@pytest.mark.parametrize("axes", [0, 1, 2, -1, (0, 2), (1, 2), (0, 1, 2), (0, 2, 3), ()])
@pytest.mark.parametrize("keepdims", [False, True])
def test_moments_any_axes(rng, axes, keepdims):
    x = rng.normal(size=(3, 4, 5, 6))
    m, v = fastnorm.moments(x, axes, keepdims=keepdims)
    np.testing.assert_allclose(m, x.mean(axis=axes, keepdims=keepdims), atol=1e-13)
    np.testing.assert_allclose(v, x.var(axis=axes, keepdims=keepdims), atol=1e-13)


def test_moments_errors():
    with pytest.raises(ValueError, match="axes"):
        fastnorm.moments(np.ones((2, 3)), axes=2)
    with pytest.raises(ValueError, match="repeated"):
        fastnorm.moments(np.ones((2, 3)), axes=(0, 0))
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        fastnorm.moments(np.ones((2, 3), dtype=int), axes=0)


@pytest.mark.parametrize("pshape", [(5,), (1, 5), (4, 1), (), (4, 5)])
def test_batch_normalization_broadcasts_like_tensorflow(rng, pshape):
    x = rng.normal(size=(4, 5)).astype(np.float32)
    mean, var = rng.normal(size=pshape), rng.uniform(0.5, 2, pshape)
    offset, scale = rng.normal(size=pshape), rng.normal(size=pshape)
    y = fastnorm.batch_normalization(x, mean, var, offset, scale, 1e-3)
    x64 = x.astype(np.float64)
    expected = (x64 - mean) / np.sqrt(var + 1e-3) * scale + offset
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, atol=1e-5)
    y = fastnorm.batch_normalization(x, mean, var, None, None, 1e-3)
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-3), atol=1e-5)


def test_batch_normalization_with_keepdims_moments(rng):
    x = (100 + rng.normal(size=(6, 4, 5, 3))).astype(np.float32)
    m, v = fastnorm.moments(x, (0, 2, 3), keepdims=True)
    y = fastnorm.batch_normalization(x, m, v, None, None, 1e-5)
    y_ref = reference.batch_norm(x, training=True)
    np.testing.assert_allclose(y, y_ref, atol=1e-4)


def test_batch_normalization_rejects_bad_shapes():
    with pytest.raises(ValueError, match="broadcast"):
        fastnorm.batch_normalization(np.ones((4, 5)), np.ones(3), np.ones(3), None, None, 1e-3)


def test_float16_is_computed_in_float32(rng):
    x = rng.normal(size=(8, 4, 6)).astype(np.float16)
    y = fastnorm.batch_norm(x, training=True)
    y_ref = reference.batch_norm(x, training=True)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), y_ref, atol=2e-3)


def test_out_may_alias_the_input(rng):
    x = rng.normal(size=(4, 3, 20)).astype(np.float32)
    expected = fastnorm.batch_norm(x, training=True)
    x_in = x.copy()
    result = fastnorm.batch_norm(x_in, training=True, out=x_in)
    assert result is x_in
    np.testing.assert_array_equal(x_in, expected)
    out = np.empty_like(x)
    assert fastnorm.batch_norm(x, training=True, out=out) is out
    np.testing.assert_array_equal(out, expected)


def test_out_partially_overlapping_the_input(rng):
    buf = rng.normal(size=(2 * 3 * 10 + 1,)).astype(np.float32)
    x = buf[1:].reshape(2, 3, 10)
    expected = fastnorm.batch_norm(x.copy(), training=True)
    out = buf[:-1].reshape(2, 3, 10)
    fastnorm.batch_norm(x, training=True, out=out)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_out_in_another_layout(rng):
    x = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    out = np.asfortranarray(np.empty_like(x))
    fastnorm.batch_norm(x, training=True, out=out)
    np.testing.assert_allclose(out, fastnorm.batch_norm(x, training=True), atol=1e-7)


def test_channels_last_memory_keeps_its_layout(rng):
    nhwc = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    x = np.moveaxis(nhwc, -1, 1)
    y = fastnorm.batch_norm(x, training=True)
    assert np.moveaxis(y, 1, -1).flags.c_contiguous
    np.testing.assert_allclose(y, reference.batch_norm(x, training=True), atol=1e-5)


def test_nothing_written_to_the_input(rng):
    x = rng.normal(size=(4, 3, 20)).astype(np.float32)
    x_copy = x.copy()
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    fastnorm.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32), w, b, training=True)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(w, 1)
    np.testing.assert_array_equal(b, 0)


def test_empty_batch_returns_empty_and_keeps_running_stats():
    rm, rv = np.full(3, 2.0, np.float32), np.full(3, 3.0, np.float32)
    y = fastnorm.batch_norm(np.ones((0, 3, 4), np.float32), rm, rv, training=True)
    assert y.shape == (0, 3, 4) and y.dtype == np.float32
    assert np.all(rm == 2.0) and np.all(rv == 3.0)
    bn = fastnorm.BatchNorm1d(3)
    assert bn(np.ones((0, 3), np.float32)).shape == (0, 3)
    assert bn.num_batches_tracked == 0


def test_momentum_none_requires_the_count_and_averages(rng):
    x1, x2 = rng.normal(size=(2, 10, 3))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        fastnorm.batch_norm(x1, rm, rv, training=True, momentum=None)
    fastnorm.batch_norm(x1, rm, rv, training=True, momentum=None, num_batches_tracked=0,
                        channel_axis=-1)
    fastnorm.batch_norm(x2, rm, rv, training=True, momentum=None, num_batches_tracked=1,
                        channel_axis=-1)
    np.testing.assert_allclose(rm, (x1.mean(0) + x2.mean(0)) / 2)
    np.testing.assert_allclose(rv, (x1.var(0, ddof=1) + x2.var(0, ddof=1)) / 2)


def test_bessel_false_uses_the_biased_variance(rng):
    x = rng.normal(size=(10, 4))
    rm, rv = np.zeros(4), np.ones(4)
    fastnorm.batch_norm(x, rm, rv, training=True, momentum=1.0, bessel=False)
    np.testing.assert_allclose(rv, x.var(0))
    fastnorm.batch_norm(x, rm, rv, training=True, momentum=1.0)
    np.testing.assert_allclose(rv, x.var(0, ddof=1))


BAD_CALLS = [
    (dict(input=np.ones((4, 3), dtype=np.int32)), TypeError, "input: expected a floating-point"),
    (dict(input=np.ones((4, 3), dtype=complex)), TypeError, "input: expected a floating-point"),
    (dict(input=np.array([[object()]])), TypeError, "input: expected a floating-point"),
    (dict(input=np.ones(4)), ValueError, "input: expected at least 2 dimensions"),
    (dict(running_mean=np.zeros(4)), ValueError, r"running_mean: expected shape \(3,\)"),
    (dict(running_var=np.ones(2)), ValueError, r"running_var: expected shape \(3,\)"),
    (dict(weight=np.ones(5)), ValueError, r"weight: expected shape \(3,\)"),
    (dict(bias=np.ones((3, 1))), ValueError, r"bias: expected shape \(3,\)"),
    (dict(weight=np.ones(3, dtype=int)), TypeError, "weight: expected a floating-point"),
    (dict(input=np.ones((1, 3), np.float32)), ValueError, "expected more than 1 value per channel when training"),
    (dict(out=np.empty((4, 4), np.float32)), ValueError, r"out: expected shape \(4, 3\)"),
    (dict(out=np.empty((4, 3), np.float64)), TypeError, "out: expected dtype float32"),
    (dict(out=np.broadcast_to(np.empty(3, np.float32), (4, 3))), ValueError, "out: the array is read-only"),
    (dict(out=[[0.0] * 3] * 4), TypeError, "out: expected an ndarray"),
    (dict(eps=-1.0), ValueError, "eps: expected a finite number >= 0"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps="0.1"), TypeError, "eps: expected a real number"),
    (dict(momentum=1.5), ValueError, r"momentum: expected a number in \[0, 1\]"),
    (dict(channel_axis=2), ValueError, "channel_axis: axis 2 is out of range"),
    (dict(channel_axis=1.0), TypeError, "channel_axis: expected an integer"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS)
def test_errors_name_the_argument_and_leave_running_stats_untouched(kwargs, error, message):
    rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    args = dict(input=np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), running_mean=rm,
                running_var=rv, training=True)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        fastnorm.batch_norm(**args)
    assert np.all(rm == 0.5) and np.all(rv == 2.0)


def test_one_value_per_channel_trains_with_the_biased_variance_only():
    # Its unbiased variance is 0 / 0 (PyTorch raises); its biased one is 0: y is the bias (ONNX, Keras).
    x, b = np.array([[1.0, 2.0, 3.0]]), np.array([5.0, 6.0, 7.0])
    rm, rv = np.zeros(3), np.ones(3)
    y = fastnorm.batch_norm(x, rm, rv, None, b, training=True, momentum=0.5, bessel=False)
    assert y.tolist() == [b.tolist()] and rm.tolist() == [0.5, 1.0, 1.5] and rv.tolist() == [0.5] * 3
    bn = fastnorm.BatchNorm1d(3, bessel=False)
    assert bn(x.astype(np.float32)).tolist() == [[0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        fastnorm.BatchNorm1d(3)(x.astype(np.float32))


def test_eval_without_running_stats_is_an_error():
    with pytest.raises(ValueError, match="running_mean, running_var: required when training=False"):
        fastnorm.batch_norm(np.ones((4, 3), np.float32))


def test_read_only_running_stats_cannot_be_updated():
    rm = np.zeros(3, np.float32)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean: the array is read-only"):
        fastnorm.batch_norm(np.ones((4, 3), np.float32), rm, np.ones(3, np.float32), training=True)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    channel_axis=st.sampled_from([1, -1]),
    dtype=st.sampled_from([np.float32, np.float64]),
    training=st.booleans(),
    offset=st.sampled_from([0.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_reference(shape, channel_axis, dtype, training, offset, seed):
    rng = np.random.default_rng(seed)
    x = (offset + rng.normal(size=shape)).astype(dtype)
    C = shape[channel_axis]
    if training and x.size // C <= 1:
        return
    rm = (offset + rng.normal(size=C)).astype(dtype)
    rv, w, b = rng.uniform(0.5, 2, C).astype(dtype), rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    y_ref = reference.batch_norm(x, rm_ref, rv_ref, w, b, training, 0.1, 1e-5, channel_axis=channel_axis)
    y = fastnorm.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, channel_axis=channel_axis)
    # A channel of identical values has variance 0 and normalizes by 1/sqrt(eps): scale the tolerance.
    np.testing.assert_allclose(y, y_ref, atol=(1e-4 if dtype == np.float32 else 1e-9) * max(1, np.abs(y_ref).max()))
    if training:
        np.testing.assert_allclose(rm, rm_ref, rtol=1e-6)
        np.testing.assert_allclose(rv, rv_ref, rtol=1e-5, atol=1e-6)


def test_threads_api():
    assert fastnorm.get_num_threads() >= 1
    with fastnorm.threads(1):
        assert fastnorm.get_num_threads() == 1
    fastnorm.set_num_threads(1)
    try:
        assert fastnorm.get_num_threads() == 1
    finally:
        fastnorm.set_num_threads(None)
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        fastnorm.set_num_threads(0)
    with pytest.raises(TypeError, match="n: expected a positive integer"):
        with fastnorm.threads(1.5):
            pass


def test_show_config_reports_openmp(capsys):
    config = fastnorm.show_config()
    assert isinstance(config["openmp"], bool)
    assert "openmp" in capsys.readouterr().out


def test_set_isa_gives_the_level_in_force():
    from fastnorm import _kernels

    top = _kernels.set_isa()
    try:
        assert 0 <= top <= 3 and _kernels.get_isa() == top
        for level in range(-1, 5):
            assert _kernels.set_isa(level) == _kernels.get_isa() == min(max(level, 0), top)
    finally:
        assert _kernels.set_isa() == top


def test_show_config_reports_the_isa_level(capsys, isa_level):
    from fastnorm import _kernels

    config = fastnorm.show_config()
    assert "simd" in capsys.readouterr().out
    assert _kernels.get_isa() == isa_level
    assert config["simd"].startswith(f"level {isa_level}: ")
    assert ("generic" in config["simd"]) == (isa_level == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "overlapping"])
def test_running_update_is_the_numpy_expression_to_the_bit(rng, dtype, layout):
    # The running statistics are updated in one kernel loop for plain buffers and through NumPy's copy
    # otherwise; both give the bits of (1 - m) * running + m * batch in float64, the unbiased variance
    # for the latter.
    from fastnorm._plan import _update_running

    C, factor, scale = 37, 0.3, 10 / 9
    mean, var = rng.normal(size=C), rng.uniform(0.5, 2.0, C)
    values = rng.uniform(0.5, 2, 2 * C + 5).astype(dtype)

    def buffers():
        if layout == "contiguous":
            return values[:C].copy(), values[C:2 * C].copy()
        if layout == "strided":
            strided = values.copy()
            return strided[:2 * C:2], strided[1:2 * C:2]
        shared = values[:C + 5].copy()  # running_var starts inside running_mean's memory
        return shared[:C], shared[5:]

    rm, rv = buffers()
    expected_mean = ((1 - factor) * rm.astype(np.float64) + factor * mean).astype(dtype)
    expected_var = ((1 - factor) * rv.astype(np.float64) + factor * (var * scale)).astype(dtype)
    _update_running(rm, rv, mean, var, factor, scale)
    if layout == "overlapping":  # written one after the other: the variance lands on part of the mean
        expected_mean[5:] = expected_var[:C - 5]
    assert np.array_equal(rm, expected_mean)
    assert np.array_equal(rv, expected_var)


@pytest.mark.parametrize("shape", [(64, 5, 3), (20, 7, 2, 2), (100, 3, 7, 7), (9, 4, 3, 3, 1)])
def test_short_runs_by_columns_match_the_reference_and_the_run_path(rng, shape, isa_level, uncapped_threads):
    # Channels-first data with short runs (S < 64, S <= N) goes by the columns of [N, C * S]; the
    # results are those of the reference and, within rounding, of the per-run path.
    from fastnorm import _kernels

    C = shape[1]
    x = (1e3 + rng.normal(size=shape)).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    w, b = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)

    def run():
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        y, mean, invstd = fastnorm.batch_norm(x, rm, rv, w, b, training=True, return_stats=True)
        grads = fastnorm.batch_norm_backward(g, x, mean, invstd, w)
        y_eval = fastnorm.batch_norm(x, rm, rv, w, b)
        return y, rm, rv, y_eval, *grads

    by_columns = run()
    rm_ref, rv_ref = np.zeros(C), np.ones(C)
    y_ref = reference.batch_norm(x, rm_ref, rv_ref, w, b, training=True)
    assert np.abs(by_columns[0] - y_ref).max() <= 1e-5 * max(1, np.abs(w).max())
    np.testing.assert_allclose(by_columns[1], rm_ref, rtol=1e-6)
    np.testing.assert_allclose(by_columns[2], rv_ref, rtol=1e-5)
    y_eval_ref = reference.batch_norm(x, by_columns[1], by_columns[2], w, b)
    assert np.abs(by_columns[3] - y_eval_ref).max() <= 1e-6 * np.abs(y_eval_ref).max()
    previous = _kernels.set_short_run(2)  # every run by itself
    try:
        by_runs = run()
    finally:
        _kernels.set_short_run(previous)
    for a, b_ in zip(by_columns, by_runs):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)
    results = []
    for n in (1, 2, 3):
        with fastnorm.threads(n):
            results.append(run())
    assert all(np.array_equal(a, b_) for other in results[1:] for a, b_ in zip(results[0], other))


def test_short_runs_backward_matches_the_twin(rng):
    x = rng.normal(size=(64, 6, 4)).astype(np.float64)
    g = rng.normal(size=x.shape)
    layer = fastnorm.BatchNorm1d(6, dtype=np.float64)
    layer.weight[:] = rng.normal(size=6)
    layer(x)
    dx = layer.backward(g)
    _, mean, rstd = reference.batch_norm(x, training=True, return_stats=True)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(g, x, mean, rstd, layer.weight)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grad_weight, dw_ref, rtol=1e-10)
    np.testing.assert_allclose(layer.grad_bias, db_ref, rtol=1e-10)


def test_running_update_of_no_channels_changes_nothing_and_returns():
    """A running-statistics update over zero channels (a zero-channel batch of the SyncBatchNorm steps)
    is a no-op, not an integer division by zero in the kernel."""
    from fastnorm import _plan
    rm, rv = np.zeros(0, np.float32), np.ones(0, np.float32)
    _plan._update_running(rm, rv, np.zeros(0), np.zeros(0), 0.1)
    assert rm.shape == rv.shape == (0,)
