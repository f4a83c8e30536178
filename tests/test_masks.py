"""``mask=`` (and ``numpy.ma`` input) on batch_norm, layer_norm, rms_norm, group_norm, instance_norm and
moments: statistics over the masked-in values only, against the float64 twin over generated shapes and
broadcast masks; padding (even NaN or inf) never reaches a statistic; the counts 0 and 1; errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
import reference

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}


def _call(name, module, x, mask, dtype_stats=None, **kw):
    """(y, stats..., running...) of ``name`` in ``module`` (fastnorm or the twin), fresh running statistics."""
    C = x.shape[1] if x.ndim > 1 else 1
    running = []
    if name == "moments":
        return module.moments(x, kw.pop("axes"), mask=mask, **kw)
    if name in ("batch_norm", "instance_norm"):
        axis = kw.get("channel_axis", 1)
        C = x.shape[axis]
        running = [np.zeros(C, x.dtype), np.ones(C, x.dtype)]
        training = {"training": True} if name == "batch_norm" else {}
        result = getattr(module, name)(x, *running, np.linspace(0.5, 2, C), np.linspace(-1, 1, C), momentum=0.3,
                                       mask=mask, return_stats=True, **training, **kw)
    elif name == "group_norm":
        axis = kw.get("channel_axis", 1)
        result = module.group_norm(x, kw.pop("groups"), np.linspace(0.5, 2, x.shape[axis]), None, mask=mask,
                                   return_stats=True, **kw)
    elif name == "layer_norm":
        result = module.layer_norm(x, x.shape[-1], np.linspace(0.5, 2, x.shape[-1]), np.ones(x.shape[-1]),
                                   mask=mask, return_stats=True)
    else:
        result = module.rms_norm(x, x.shape[-1], np.linspace(0.5, 2, x.shape[-1]), 1e-5, mask=mask,
                                 return_stats=True)
    return (*result, *running)


def _assert_close(got, expected, dtype):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * 10)


@st.composite
def cases(draw):
    name = draw(st.sampled_from(["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "moments"]))
    ndim = draw(st.integers(3 if name == "instance_norm" else 2, 4))
    shape = [draw(st.integers(2, 4)) for _ in range(ndim)]
    kw = {}
    if name == "group_norm":
        kw["channel_axis"] = draw(st.sampled_from([1, -1]))
        groups = draw(st.sampled_from([1, 2]))
        shape[kw["channel_axis"]] = groups * draw(st.integers(1, 3))
        kw["groups"] = groups
    if name == "batch_norm":
        kw["channel_axis"] = draw(st.sampled_from([1, -1]))
    if name == "moments":
        kw["axes"] = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
        kw["keepdims"] = draw(st.booleans())
    # a mask broadcast along a drawn subset of the axes, with fewer dimensions sometimes
    mask_shape = [1 if draw(st.booleans()) else n for n in shape][draw(st.integers(0, ndim - 1)):]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return name, tuple(shape), tuple(mask_shape), dtype, draw(st.integers(0, 2**32 - 1)), kw


@settings(max_examples=150, deadline=None)
@given(cases())
def test_masked_functions_agree_with_the_twin(case):
    name, shape, mask_shape, dtype, seed, kw = case
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, shape).astype(dtype)
    mask = rng.random(mask_shape) < 0.7
    if name in ("batch_norm", "instance_norm"):
        # training needs no statistic of a single value: keep at least two values of each masked in
        flat = np.broadcast_to(mask, shape).copy()
        axis = kw.get("channel_axis", 1) % len(shape)
        last = max(a for a in range(len(shape)) if a != axis)
        for j in (0, 1):  # two values of every channel: indices 0 and 1 on the last other axis, 0 elsewhere
            index = [0] * len(shape)
            index[axis], index[last] = slice(None), j
            flat[tuple(index)] = True
        if name == "instance_norm":
            flat.reshape(shape[0], shape[1], -1)[:, :, :2] = True
        mask = flat
    expected = _call(name, reference, x, mask, **dict(kw))
    got = _call(name, fastnorm, x, mask, **dict(kw))
    _assert_close(got, expected, dtype)
    assert got[0].dtype == dtype and got[0].shape == np.broadcast_shapes(expected[0].shape)


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "moments"])
@pytest.mark.parametrize("padding", [np.nan, np.inf, 1e30, -5.0])
def test_padding_does_not_leak_into_the_statistics(name, padding):
    """Whatever the masked-out values hold, the statistics and the masked-in outputs are the same."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 4, 6))
    mask = np.ones(x.shape, bool)
    mask[2:, :, 3:] = False  # padded sequences of a batch
    padded = np.where(mask, x, padding)
    kw = {"groups": 2} if name == "group_norm" else {"axes": (0, 2)} if name == "moments" else {}
    clean = _call(name, fastnorm, np.where(mask, x, 0.0), mask, **dict(kw))
    got = _call(name, fastnorm, padded, mask, **dict(kw))
    with np.errstate(invalid="ignore"):
        if name != "moments":
            np.testing.assert_array_equal(got[0][mask], clean[0][mask])
        for g, c in zip(got[1:], clean[1:]):
            np.testing.assert_array_equal(g, c)


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "moments"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_all_true_mask_is_the_unmasked_call(name, dtype):
    x = np.random.default_rng(2).normal(1.0, 3.0, (5, 4, 3)).astype(dtype)
    kw = {"groups": 2} if name == "group_norm" else {"axes": (0, 2)} if name == "moments" else {}
    _assert_close(_call(name, fastnorm, x, np.ones((), bool), **dict(kw)),
                  _call(name, fastnorm, x, None, **dict(kw)), dtype)


def test_large_offsets_keep_their_accuracy():
    """float32 data at 1e4 +- 1, statistics in float64 in two passes: exact to float32's rounding."""
    rng = np.random.default_rng(3)
    x = (1e4 + rng.uniform(-1, 1, (4096, 2))).astype(np.float32)
    mask = rng.random((4096, 1)) < 0.5
    mean, var = fastnorm.moments(x, 0, mask=mask)
    x64 = x.astype(np.float64)[mask[:, 0]]
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-6)
    y, m, rstd = fastnorm.batch_norm(x, training=True, mask=mask, return_stats=True)
    np.testing.assert_allclose(1 / rstd**2 - 1e-5, x64.var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(y[mask[:, 0]].mean(axis=0), 0, atol=1e-5)


def test_the_mask_follows_flax():
    """Flax's ``mask``: mean and biased variance of the masked-in values (``jnp.mean(where=mask)``), every
    value normalized with them.  Flax itself is not a test dependency: its definition, with NumPy."""
    x = np.random.default_rng(4).normal(size=(6, 3))
    mask = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 1]], bool)
    mu, var = x.mean(axis=0, where=mask), x.var(axis=0, where=mask)
    y = fastnorm.batch_norm(x, training=True, eps=1e-6, mask=mask)
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-6), rtol=1e-12)


def test_running_statistics_use_the_masked_count():
    x = np.array([[1.0], [3.0], [100.0], [-100.0]])
    mask = np.array([[True], [True], [False], [False]])
    rm, rv = np.zeros(1), np.ones(1)
    fastnorm.batch_norm(x, rm, rv, training=True, momentum=1.0, mask=mask)
    assert rm.tolist() == [2.0] and rv.tolist() == [2.0]  # unbiased with count - 1 = 1
    fastnorm.batch_norm(x, rm, rv, training=True, momentum=1.0, bessel=False, mask=mask)
    assert rv.tolist() == [1.0]


def test_a_channel_with_no_value_has_nan_statistics_and_keeps_its_running_ones():
    x = np.random.default_rng(5).normal(size=(4, 2))
    mask = np.array([True, False])
    rm, rv = np.full(2, 0.5), np.full(2, 2.0)
    y, mean, invstd = fastnorm.batch_norm(x, rm, rv, training=True, mask=mask, return_stats=True)
    assert np.isnan(mean[1]) and np.isnan(invstd[1]) and np.isnan(y[:, 1]).all()
    assert rm[1] == 0.5 and rv[1] == 2.0 and rm[0] != 0.5
    # instance_norm: the running statistics average the instances that have values
    x3 = np.random.default_rng(6).normal(size=(2, 1, 4))
    mask3 = np.array([[[True] * 4], [[False] * 4]])
    rm1, rv1 = np.zeros(1), np.ones(1)
    fastnorm.instance_norm(x3, rm1, rv1, momentum=1.0, mask=mask3)
    np.testing.assert_allclose(rm1, x3[0].mean(), rtol=1e-14)
    np.testing.assert_allclose(rv1, x3[0].var(ddof=1), rtol=1e-14)


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm"])
def test_one_value_in_training_raises_and_changes_nothing(name):
    x = np.random.default_rng(7).normal(size=(3, 2, 3))
    mask = np.zeros(x.shape, bool)
    mask[0, :, 0] = True
    rm, rv, out = np.zeros(2), np.ones(2), np.full(x.shape, 7.0)
    call = getattr(fastnorm, name)
    with pytest.raises(ValueError, match="mask: expected more than 1 value"):
        call(x, rm, rv, *([None, None, True] if name == "batch_norm" else []), mask=mask, out=out)
    assert rm.tolist() == [0, 0] and rv.tolist() == [1, 1] and (out == 7).all()


@pytest.mark.parametrize("call", [
    lambda x, m: fastnorm.batch_norm(x, training=True, mask=m),
    lambda x, m: fastnorm.layer_norm(x, 3, mask=m),
    lambda x, m: fastnorm.rms_norm(x, 3, mask=m),
    lambda x, m: fastnorm.group_norm(x, 1, mask=m),
    lambda x, m: fastnorm.instance_norm(x, mask=m),
    lambda x, m: fastnorm.moments(x, 0, mask=m),
])
def test_bad_masks_name_the_argument(call):
    x = np.random.default_rng(8).normal(size=(2, 4, 3))
    with pytest.raises(TypeError, match="mask: expected a boolean array"):
        call(x, np.ones(x.shape))
    with pytest.raises(TypeError, match="mask: expected a boolean array"):
        call(x, [[1, 0, 1]])
    with pytest.raises(ValueError, match="mask: expected a shape that broadcasts"):
        call(x, np.ones((5,), bool))
    with pytest.raises(ValueError, match="mask: expected a shape that broadcasts"):
        call(x, np.ones((3, 2, 4, 3), bool))  # more dimensions than the input


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "moments"])
def test_numpy_ma_input_is_its_data_with_its_mask(name):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 4, 5))
    invalid = rng.random(x.shape) < 0.2
    invalid[:, :, :2] = False
    kw = {"groups": 2} if name == "group_norm" else {"axes": (0, 2)} if name == "moments" else {}
    got = _call(name, fastnorm, np.ma.masked_array(x, invalid), None, **dict(kw))
    expected = _call(name, fastnorm, x, ~invalid, **dict(kw))
    for g, e in zip(got, expected):
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, e)
    # a mask given too: both apply
    also = np.ones(x.shape[-1], bool)
    also[-1] = False
    got = _call(name, fastnorm, np.ma.masked_array(x, invalid), also, **dict(kw))
    for g, e in zip(got, _call(name, fastnorm, x, ~invalid & also, **dict(kw))):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("function", [fastnorm.layer_norm, fastnorm.rms_norm])
def test_numpy_ma_input_with_a_residual_gives_plain_arrays(function):
    """With ``residual``, h of a ``numpy.ma`` input is an ndarray as y is: ``data + residual``, as the call
    with ``mask=`` gives it."""
    rng = np.random.default_rng(11)
    x, r = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    invalid = rng.random(x.shape) < 0.2
    invalid[:, :2] = False
    got = function(np.ma.masked_array(x, invalid), 5, residual=r)
    expected = function(x, 5, residual=r, mask=~invalid)
    for g, e in zip(got, expected):
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, e)


def test_evaluation_ignores_the_mask_for_the_statistics():
    x = np.random.default_rng(10).normal(size=(4, 3))
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    y = fastnorm.batch_norm(x, rm, rv, training=False, mask=np.array([True, False, True]))
    np.testing.assert_allclose(y, fastnorm.batch_norm(x, rm, rv), rtol=1e-12)


# --------------------------------------------------------------------------------------------------------
# Backward: the statistics depend on the masked-in values only
# --------------------------------------------------------------------------------------------------------

def _forward_backward(name, x, mask, dy, training=True):
    """(y, (dx, dweight, dbias)) of ``name`` with a mask, weight and (where there is one) bias."""
    if name == "batch_norm":
        w, b = np.linspace(0.5, 2, x.shape[1]), np.linspace(-1, 1, x.shape[1])
        running = (np.zeros(x.shape[1]), np.ones(x.shape[1]))
        y, mean, rstd = fastnorm.batch_norm(x, *running, w, b, training=training, eps=1e-3, mask=mask,
                                            return_stats=True)
        return y, fastnorm.batch_norm_backward(dy, x, mean, rstd, w, training, eps=1e-3 if training else None,
                                               mask=mask)
    if name in ("layer_norm", "rms_norm"):
        w = np.linspace(0.5, 2, x.shape[-1])
        if name == "layer_norm":
            y, mean, rstd = fastnorm.layer_norm(x, x.shape[-1], w, w, 1e-3, mask=mask, return_stats=True)
            return y, fastnorm.layer_norm_backward(dy, x, x.shape[-1], mean, rstd, w, w, eps=1e-3, mask=mask)
        y, rstd = fastnorm.rms_norm(x, x.shape[-1], w, 1e-3, mask=mask, return_stats=True)
        return y, fastnorm.rms_norm_backward(dy, x, x.shape[-1], rstd, w, eps=1e-3, mask=mask)
    w, b = np.linspace(0.5, 2, x.shape[1]), np.linspace(-1, 1, x.shape[1])
    if name == "group_norm":
        y, mean, rstd = fastnorm.group_norm(x, 2, w, b, 1e-3, mask=mask, return_stats=True)
        return y, fastnorm.group_norm_backward(dy, x, 2, mean, rstd, w, eps=1e-3, mask=mask)
    y, mean, rstd = fastnorm.instance_norm(x, None, None, w, b, eps=1e-3, mask=mask, return_stats=True)
    return y, fastnorm.instance_norm_backward(dy, x, mean, rstd, w, eps=1e-3, mask=mask)


BACKWARD = ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm"]


@pytest.mark.parametrize("name", BACKWARD)
def test_masked_backward_against_finite_differences(name):
    """float64 central differences of sum(dy * y(x)), the statistics recomputed from x each time."""
    rng = np.random.default_rng(11)
    x = rng.normal(2.0, 1.5, (3, 4, 5))
    mask = rng.random((3, 1, 5)) < 0.7
    mask[:, :, :2] = True
    dy = rng.normal(size=x.shape)
    _, (dx, _, _) = _forward_backward(name, x, mask, dy)
    numeric = np.empty_like(x)
    h = 1e-6
    for i in range(x.size):
        step = np.zeros(x.size)
        step[i] = h
        up = _forward_backward(name, x + step.reshape(x.shape), mask, dy)[0]
        down = _forward_backward(name, x - step.reshape(x.shape), mask, dy)[0]
        numeric.flat[i] = ((up - down) * dy).sum() / (2 * h)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-7)
    # a loss that ignores the padding (dy 0 there): what the padding holds changes no gradient of the
    # masked-in values, and the padding's own gradient is 0
    inside = np.broadcast_to(mask, x.shape)
    dy_in = np.where(inside, dy, 0.0)
    _, (dx_clean, _, _) = _forward_backward(name, x, mask, dy_in)
    _, (dx_padded, _, _) = _forward_backward(name, np.where(inside, x, 1e3), mask, dy_in)
    np.testing.assert_allclose(dx_padded[inside], dx_clean[inside], rtol=1e-9, atol=1e-12)
    assert (dx_padded[~inside] == 0).all()


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(BACKWARD), seed=st.integers(0, 2**32 - 1), spatial=st.integers(2, 5),
       dtype=st.sampled_from([np.float32, np.float64]), broadcast=st.sampled_from([(1, 1), (0, 1), (1, 0), (0, 0)]))
def test_masked_backward_agrees_with_the_twin(name, seed, spatial, dtype, broadcast):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, (3, 4, spatial)).astype(dtype)
    mask_shape = (3 if broadcast[0] else 1, 4 if broadcast[1] else 1, spatial)
    mask = rng.random(mask_shape) < 0.6
    mask[..., :2] = True
    dy = rng.normal(size=x.shape).astype(dtype)
    _, got = _forward_backward(name, x, mask, dy)
    twin = getattr(reference, name + "_backward")
    x64 = x.astype(np.float64)
    if name == "batch_norm":
        w = np.linspace(0.5, 2, 4)
        _, mean, rstd = reference.batch_norm(x64, None, None, w, w, True, eps=1e-3, mask=mask, return_stats=True)
        expected = twin(dy, x64, mean, rstd, w, mask=mask)
    elif name == "layer_norm":
        w = np.linspace(0.5, 2, spatial)
        _, mean, rstd = reference.layer_norm(x64, spatial, w, w, 1e-3, mask=mask, return_stats=True)
        expected = twin(dy, x64, spatial, mean, rstd, w, w, mask=mask)
    elif name == "rms_norm":
        w = np.linspace(0.5, 2, spatial)
        _, rstd = reference.rms_norm(x64, spatial, w, 1e-3, mask=mask, return_stats=True)
        expected = twin(dy, x64, spatial, rstd, w, mask=mask)
    elif name == "group_norm":
        w = np.linspace(0.5, 2, 4)
        _, mean, rstd = reference.group_norm(x64, 2, w, w, 1e-3, mask=mask, return_stats=True)
        expected = twin(dy, x64, 2, mean, rstd, w, mask=mask)
    else:
        w = np.linspace(0.5, 2, 4)
        _, mean, rstd = reference.instance_norm(x64, None, None, w, w, eps=1e-3, mask=mask, return_stats=True)
        expected = twin(dy, x64, mean, rstd, w, mask=mask)
    assert got[0].dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for g, e in zip(got, expected):
        if e is not None:
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol)


def test_masked_backward_against_torch_autograd():
    """float32: PyTorch's autograd through the masked composition (mean and variance of the masked-in
    values, every value normalized), for batch_norm, layer_norm and rms_norm."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    x = rng.normal(1.0, 2.0, (6, 3, 5)).astype(np.float32)
    mask = rng.random((6, 1, 5)) < 0.7
    mask[:, :, :2] = True
    dy = rng.normal(size=x.shape).astype(np.float32)
    m = torch.from_numpy(np.broadcast_to(mask, x.shape).copy())
    for name, dims in (("batch_norm", (0, 2)), ("layer_norm", (2,)), ("rms_norm", (2,))):
        xt = torch.from_numpy(x.copy()).requires_grad_()
        n = m.sum(dim=dims, keepdim=True)
        mean = (xt * m).sum(dim=dims, keepdim=True) / n if name != "rms_norm" else torch.zeros(())
        var = (((xt - mean) * m) ** 2).sum(dim=dims, keepdim=True) / n
        wshape = (1, 3, 1) if name == "batch_norm" else (5,)
        w = torch.linspace(0.5, 2, wshape[1] if name == "batch_norm" else 5).reshape(wshape)
        y = (xt - mean) / torch.sqrt(var + 1e-3) * w + (w if name != "rms_norm" else 0)
        y.backward(torch.from_numpy(dy))
        _, (dx, _, _) = _forward_backward(name, x, mask, dy)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", BACKWARD)
def test_masked_backward_of_numpy_ma_input(name):
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 4, 5))
    invalid = np.zeros(x.shape, bool)
    invalid[1:, :, 3:] = True
    dy = rng.normal(size=x.shape)
    for a, b in zip(_forward_backward(name, np.ma.masked_array(x, invalid), None, dy)[1],
                    _forward_backward(name, x, ~invalid, dy)[1]):
        np.testing.assert_array_equal(a, b)


def test_masked_backward_detects_a_modified_input():
    x = np.random.default_rng(14).normal(size=(8, 3))
    mask = np.ones((8, 1), bool)
    mask[6:] = False
    y, mean, rstd = fastnorm.batch_norm(x, training=True, mask=mask, return_stats=True)
    fastnorm.batch_norm_backward(np.ones_like(x), x, mean, rstd, eps=1e-5, mask=mask)  # unmodified: fine
    x[6:] += 100.0  # under the mask: not an input of the statistics
    fastnorm.batch_norm_backward(np.ones_like(x), x, mean, rstd, eps=1e-5, mask=mask)
    x[0] += 1.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fastnorm.batch_norm_backward(np.ones_like(x), x, mean, rstd, eps=1e-5, mask=mask)


def test_frozen_statistics_give_the_direct_gradient_whatever_the_mask():
    x = np.random.default_rng(15).normal(size=(5, 4, 3))
    dy = np.ones_like(x)
    _, (dx, _, _) = _forward_backward("batch_norm", x, np.array([True, False, True]), dy, training=False)
    np.testing.assert_allclose(dx, np.linspace(0.5, 2, 4)[:, None] / np.sqrt(1 + 1e-3) * dy, rtol=1e-12)


@pytest.mark.parametrize("function", ["batch_norm", "instance_norm", "group_norm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_masked_call_applies_its_activation_to_the_sum_with_add(function, dtype):
    """``act(norm(x) + add)``: the masked normalization, then the epilogue, in the input's dtype."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 6)).astype(dtype)
    add = rng.normal(size=(1, 4, 6)).astype(dtype)
    mask = np.ones(x.shape, bool)
    mask[..., :2] = False
    call = {"batch_norm": lambda **kw: fastnorm.batch_norm(x, training=True, mask=mask, **kw),
            "instance_norm": lambda **kw: fastnorm.instance_norm(x, mask=mask, **kw),
            "group_norm": lambda **kw: fastnorm.group_norm(x, 2, mask=mask, **kw)}[function]
    expected = np.tanh(call() + add)
    np.testing.assert_allclose(call(activation="tanh", add=add), expected, rtol=0, atol=4 * np.finfo(dtype).eps)
