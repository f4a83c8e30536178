"""float16 and bfloat16 in and out of every op: computed in float32 (parameters and statistics float32 or
float64 as for float32 input), the result in the input's dtype.  A half call equals the float32 call on
the same values (upcast exactly) rounded once to the half dtype, bit for bit; the statistics and the
parameter gradients equal the float32 call's."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
from fastnorm import functional as F
from conftest import fresh_python

try:
    import ml_dtypes
    HALVES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
except ImportError:  # bfloat16 cases skip: ml_dtypes is optional
    ml_dtypes = None
    HALVES = [np.dtype(np.float16), pytest.param(None, marks=pytest.mark.skip(reason="ml_dtypes not installed"))]


def _bits(a):
    """The half array's bits, NaN made one value (a NaN's payload is not part of the promise)."""
    a = np.asarray(a)
    bits = a.view(np.uint16).copy()
    bits[np.isnan(a.astype(np.float32))] = 0x7FFF
    return bits


def _same(ours, theirs, half):
    """``ours`` (of a half call) against ``theirs`` (of the float32 call): arrays of the input's shape in
    the half dtype are the float32 ones rounded; everything else (statistics, parameter gradients) equal."""
    if isinstance(ours, tuple):
        assert isinstance(theirs, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _same(a, b, half)
        return
    if ours is None:
        assert theirs is None
        return
    ours = np.asarray(ours)
    if ours.dtype == half:
        expected = np.asarray(theirs).astype(half)
        assert ours.shape == expected.shape
        np.testing.assert_array_equal(_bits(ours), _bits(expected))
    else:
        assert ours.dtype == np.asarray(theirs).dtype
        np.testing.assert_array_equal(ours, theirs)


def _params(C, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32))


def _stats_of(forward, x, **kwargs):
    return forward(x.astype(np.float32), **kwargs, return_stats=True)[1:]


# Each case: (name, function of (x, dy) -> the op's result); x of shape (N, C, L), channels on axis 1 (or -1).
def _cases():
    w, b = _params(6)
    wl, bl = _params(7)
    rm, rv = np.linspace(-1, 1, 6).astype(np.float32), np.linspace(0.5, 2, 6).astype(np.float32)

    def bn_backward(x, dy, axis=1, training=True):
        mean, invstd = _stats_of(F.batch_norm, x, training=True, channel_axis=axis)
        return F.batch_norm_backward(dy, x, mean, invstd, w, training, channel_axis=axis)

    def gn_backward(x, dy, axis=1):
        mean, rstd = _stats_of(F.group_norm, x, num_groups=3, channel_axis=axis)
        return F.group_norm_backward(dy, x, 3, mean, rstd, w, channel_axis=axis)

    def in_backward(x, dy):
        mean, rstd = _stats_of(F.instance_norm, x)
        return F.instance_norm_backward(dy, x, mean, rstd, w)

    def ln_backward(x, dy):
        mean, rstd = _stats_of(F.layer_norm, x, normalized_shape=7)
        return F.layer_norm_backward(dy, x, 7, mean, rstd, wl, bl)

    def rms_backward(x, dy):
        rstd, = _stats_of(F.rms_norm, x, normalized_shape=7)
        return F.rms_norm_backward(dy, x, 7, rstd, wl)

    def bn_steps(x, dy):
        mean, invstd = F.batch_norm_stats(x, 1e-5)
        reduced = F.batch_norm_backward_reduce(dy, x, mean, invstd, w, True, True, True)
        count = np.full(1, x.size // 6, np.int64)
        return (mean, invstd, F.batch_norm_elemt(x, w, b, mean, invstd, 1e-5), reduced,
                F.batch_norm_backward_elemt(dy, x, mean, invstd, w, reduced[0], reduced[1], count))

    return {
        "batch_norm training": lambda x, dy: F.batch_norm(x, rm.copy(), rv.copy(), w, b, True, return_stats=True),
        "batch_norm training channels last": lambda x, dy: F.batch_norm(np.moveaxis(x, 1, -1), None, None, w, b,
                                                                        True, channel_axis=-1, return_stats=True),
        "batch_norm training [M, C]": lambda x, dy: F.batch_norm(x.reshape(-1, 6 * 7)[:, :6], None, None, w, b, True,
                                                                 return_stats=True),
        "batch_norm eval": lambda x, dy: F.batch_norm(x, rm, rv, w, b, False),
        "batch_norm eval channels last": lambda x, dy: F.batch_norm(np.moveaxis(x, 1, -1), rm, rv, w, b, False,
                                                                    channel_axis=-1),
        "group_norm": lambda x, dy: F.group_norm(x, 3, w, b, return_stats=True),
        "group_norm channels last": lambda x, dy: F.group_norm(np.moveaxis(x, 1, -1), 3, w, b, channel_axis=-1,
                                                               return_stats=True),
        "instance_norm": lambda x, dy: F.instance_norm(x, rm.copy(), rv.copy(), w, b, return_stats=True),
        "instance_norm eval": lambda x, dy: F.instance_norm(x, rm, rv, w, b, use_input_stats=False),
        "instance_norm channels last": lambda x, dy: F.instance_norm(np.moveaxis(x, 1, -1), None, None, w, b,
                                                                     channel_axis=-1, return_stats=True),
        "layer_norm": lambda x, dy: F.layer_norm(x, 7, wl, bl, return_stats=True),
        "layer_norm no affine": lambda x, dy: F.layer_norm(x, (6, 7), return_stats=True),
        "rms_norm": lambda x, dy: F.rms_norm(x, 7, wl, return_stats=True),
        "layer_norm axes": lambda x, dy: F.layer_norm(x, None, axes=(0, 2), return_stats=True),
        "layer_norm mask": lambda x, dy: F.layer_norm(x, 7, mask=x.astype(np.float32) > 0, return_stats=True),
        "batch_norm several axes": lambda x, dy: F.batch_norm(x, None, None, None, None, True, channel_axis=(1, 2),
                                                              return_stats=True),
        "batch_norm_backward": bn_backward,
        "batch_norm_backward channels last": lambda x, dy: bn_backward(np.moveaxis(x, 1, -1), np.moveaxis(dy, 1, -1),
                                                                       axis=-1),
        "batch_norm_backward eval": lambda x, dy: bn_backward(x, dy, training=False),
        "group_norm_backward": gn_backward,
        "group_norm_backward channels last": lambda x, dy: gn_backward(np.moveaxis(x, 1, -1),
                                                                       np.moveaxis(dy, 1, -1), axis=-1),
        "instance_norm_backward": in_backward,
        "layer_norm_backward": ln_backward,
        "rms_norm_backward": rms_backward,
        "batch_norm steps": bn_steps,
    }


# computed in float64 (their float16 input is upcast to float64): the twin is the float64 call
FLOAT64_CASES = {
    "normalize": lambda x, dy: F.normalize(x, dim=1),
    "normalize_backward": lambda x, dy: F.normalize_backward(dy, x, dim=1),
    "local_response_norm": lambda x, dy: F.local_response_norm(x, 3),
    "local_response_norm_backward": lambda x, dy: F.local_response_norm_backward(dy, x, 3),
    "moments": lambda x, dy: F.moments(x, (0, 2)),
    "batch_normalization": lambda x, dy: F.batch_normalization(x, 0.5, 2.0, 0.1, 3.0, 1e-3),
}

CASES = _cases()


def _data(half, shape=(5, 6, 7), seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return ((rng.normal(size=shape) * scale + 1).astype(half), rng.normal(size=shape).astype(half))


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_equals_the_float32_call_rounded(half, name, isa_level):
    x, dy = _data(half)
    _same(CASES[name](x, dy), CASES[name](x.astype(np.float32), dy.astype(np.float32)), half)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("name", sorted(FLOAT64_CASES))
def test_ops_computed_in_float64_equal_the_float64_call_rounded(half, name):
    x, dy = _data(half)
    ours = FLOAT64_CASES[name](x, dy)
    theirs = FLOAT64_CASES[name](x.astype(np.float64), dy.astype(np.float64))
    ours, theirs = (ours, theirs) if isinstance(ours, tuple) else ((ours,), (theirs,))
    for a, b in zip(ours, theirs):
        assert a.dtype == half
        np.testing.assert_array_equal(_bits(a), _bits(np.asarray(b).astype(half)))


# --------------------------------------------------------------------------------------------------------
# The native paths over generated shapes, memory layouts and thread counts
# --------------------------------------------------------------------------------------------------------

def _rows_ops(C):
    w, b = _params(C, 2)
    rm, rv = _params(C, 3)
    rv = np.abs(rv) + 0.5
    return {
        "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:], np.resize(w, x.shape[-1]), np.resize(b, x.shape[-1]),
                                             return_stats=True),
        "layer_norm no affine": lambda x: F.layer_norm(x, x.shape[-1:], return_stats=True),
        "rms_norm": lambda x: F.rms_norm(x, x.shape[-1:], np.resize(w, x.shape[-1]), return_stats=True),
        "group_norm": lambda x: F.group_norm(x, 1 if C % 2 else 2, w, b, return_stats=True),
        "instance_norm": lambda x: F.instance_norm(x, None, None, w, b, return_stats=True)
        if x.ndim > 2 and x.size // (x.shape[0] * C) > 1 else None,
        "group_norm channels last": lambda x: F.group_norm(np.moveaxis(x, 1, -1), 1 if C % 2 else 2, w, b,
                                                           channel_axis=-1, return_stats=True),
        "instance_norm channels last": lambda x: F.instance_norm(np.moveaxis(x, 1, -1), None, None, w, b,
                                                                 channel_axis=-1, return_stats=True)
        if x.ndim > 2 and x.size // (x.shape[0] * C) > 1 else None,
        "batch_norm training": lambda x: F.batch_norm(x, rm.copy(), rv.copy(), w, b, True, return_stats=True)
        if x.size > C else None,
        "batch_norm training channels last": lambda x: F.batch_norm(np.moveaxis(x, 1, -1), None, None, w, b, True,
                                                                    channel_axis=-1, return_stats=True)
        if x.size > C else None,
        "batch_norm eval": lambda x: F.batch_norm(x, rm, rv, w, b, False),
        "batch_norm eval channels last": lambda x: F.batch_norm(np.moveaxis(x, 1, -1), rm, rv, w, b, False,
                                                                channel_axis=-1),
        "instance_norm eval": lambda x: F.instance_norm(x, rm, rv, w, b, False) if x.ndim > 2 else None,
        "batch_norm_backward": lambda x: _channel_backward(x, w, "batch") if x.size > C else None,
        "group_norm_backward": lambda x: _channel_backward(x, w, "group"),
        "instance_norm_backward": lambda x: _channel_backward(x, w, "instance")
        if x.ndim > 2 and x.size // (x.shape[0] * C) > 1 else None,
        "batch_norm_backward channels last": lambda x: _channel_backward(np.moveaxis(x, 1, -1), w, "batch", -1)
        if x.size > C else None,
        "group_norm_backward channels last": lambda x: _channel_backward(np.moveaxis(x, 1, -1), w, "group", -1),
        "instance_norm_backward channels last": lambda x: _channel_backward(np.moveaxis(x, 1, -1), w, "instance", -1)
        if x.ndim > 2 and x.size // (x.shape[0] * C) > 1 else None,
        "layer_norm_backward": lambda x: _row_backward(x, np.resize(w, x.shape[-1]), False),
        "rms_norm_backward": lambda x: _row_backward(x, np.resize(w, x.shape[-1]), True),
    }


def _channel_backward(x, w, kind, axis=1):
    """The backward of batch_norm, group_norm or instance_norm (channels on ``axis``) with dy = x reversed
    along its first axis, the statistics of the float32 call."""
    dy = np.ascontiguousarray(x[::-1])
    x32 = x.astype(np.float32)
    if kind == "batch":
        _, mean, rstd = F.batch_norm(x32, training=True, channel_axis=axis, return_stats=True)
        return F.batch_norm_backward(dy, x, mean, rstd, w, channel_axis=axis, eps=1e-5)
    if kind == "group":
        groups = 1 if x.shape[axis] % 2 else 2
        _, mean, rstd = F.group_norm(x32, groups, channel_axis=axis, return_stats=True)
        return F.group_norm_backward(dy, x, groups, mean, rstd, w, channel_axis=axis, eps=1e-5)
    _, mean, rstd = F.instance_norm(x32, channel_axis=axis, return_stats=True)
    return F.instance_norm_backward(dy, x, mean, rstd, w, channel_axis=axis, eps=1e-5)


def _row_backward(x, w, rms):
    """layer_norm_backward (rms_norm_backward) of x with dy = x reversed, the statistics of the float32 call."""
    D = x.shape[-1]
    dy = np.ascontiguousarray(x[..., ::-1])
    if rms:
        _, rstd = F.rms_norm(x.astype(np.float32), D, w, return_stats=True)
        return F.rms_norm_backward(dy, x, D, rstd, w)
    _, mean, rstd = F.layer_norm(x.astype(np.float32), D, w, return_stats=True)
    return F.layer_norm_backward(dy, x, D, mean, rstd, w)


@settings(max_examples=60, deadline=None)
@given(half=st.sampled_from([h for h in HALVES if isinstance(h, np.dtype)]),
       shape=st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple),
       long=st.sampled_from([1, 1, 300, 5000]),
       layout=st.sampled_from(["c", "strided", "transposed"]), seed=st.integers(0, 2 ** 16))
def test_native_paths_equal_the_float32_call_rounded(half, shape, long, layout, seed):
    shape = shape[:-1] + (shape[-1] * long,)
    x = _data(half, shape, seed, scale=10.0)[0]
    if layout == "strided":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif layout == "transposed":
        x = np.ascontiguousarray(np.swapaxes(x, 0, -1)).swapaxes(0, -1)
    for op in _rows_ops(shape[1]).values():
        ours = op(x)
        if ours is not None:
            _same(ours, op(x.astype(np.float32)), half)


@pytest.mark.parametrize("half", HALVES)
def test_native_paths_give_the_same_bits_for_every_thread_count(half, uncapped_threads):
    shapes = [(4096, 96), (3, 70000), (6, 64, 300), (2, 64, 9, 9), (8, 2, 5000)]
    for shape in shapes:
        x = _data(half, shape)[0]
        for op in _rows_ops(shape[1]).values():
            with fastnorm.threads(1):
                one = op(x)
            for n in (2, 3, 4):
                with fastnorm.threads(n):
                    _same(op(x), one, half)


@pytest.mark.parametrize("half", HALVES)
def test_conversions_round_as_numpy(half, isa_level):
    """Every half value read and written back unchanged (batch_norm eval with the identity's factors), and
    float32 values (the weight) rounded as NumPy's astype: ties, subnormals, overflow to inf."""
    every = np.arange(2 ** 16, dtype=np.uint16).view(half)
    with np.errstate(invalid="ignore"):
        same = (every.astype(np.float32) + np.float32(0.0)).astype(half)  # every value, -0.0 as +0.0
    for shape in [(2 ** 16, 1), (1, 1, 2 ** 16), (2 ** 12, 1, 16)]:  # columns, one long run, short runs
        y = F.batch_norm(every.reshape(shape), np.zeros(1), np.ones(1), eps=0.0)
        np.testing.assert_array_equal(_bits(y.reshape(-1)), _bits(same))
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2 ** 32, size=4096, dtype=np.uint64).astype(np.uint32)
    finfo = np.finfo(np.float16) if half == np.float16 else None
    special = [1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 65519.0, 65520.0, 3.4e38,
               2.0 ** -25, 2.0 ** -24 * 1.5, 1e-40, -1e-40]
    w = np.concatenate([bits.view(np.float32), np.array(special, np.float32)])
    w = w[np.isfinite(w) & (w != 0)]  # 1 * w + 0 is w, but -0.0 + 0 is +0.0
    w = w[np.abs(w) < 1e30] if finfo is None else w[np.abs(w) < 1e6]
    columns = F.batch_norm(np.ones((1, w.size), half), np.zeros(w.size), np.ones(w.size), w, eps=0.0)[0]
    row = F.rms_norm(np.ones(w.size, half), w.size, w, eps=0.0)  # rms 1: ((1 - 0) * 1 + 0) * w
    with np.errstate(over="ignore"):
        for y in (columns, row):
            np.testing.assert_array_equal(_bits(y), _bits(w.astype(half)))


@pytest.mark.parametrize("half", HALVES)
def test_nan_and_inf_propagate_as_in_float32(half):
    x = _data(half, (6, 4, 50))[0]
    x[1, 2, 7] = np.nan
    x[3, 0, 0] = np.inf
    x[4, 1, 9] = -np.inf
    for op in _rows_ops(4).values():
        ours = op(x)
        if ours is not None:
            _same(ours, op(x.astype(np.float32)), half)
    y = F.layer_norm(x, (50,))
    assert np.isnan(y[1, 2].astype(np.float32)).all() and not np.isnan(y[0].astype(np.float32)).any()


@pytest.mark.parametrize("half", HALVES)
def test_out_of_the_half_dtype_is_written_and_another_refused(half):
    x = _data(half, (8, 4, 30))[0]
    for op in (lambda x, out: F.layer_norm(x, (30,), out=out), lambda x, out: F.group_norm(x, 2, out=out),
               lambda x, out: F.batch_norm(x, np.zeros(4), np.ones(4), out=out),
               lambda x, out: F.instance_norm(x, out=out), lambda x, out: F.rms_norm(x, (30,), out=out)):
        out = np.full(x.shape, 7, half)
        assert op(x, out) is out
        _same(out, op(x.astype(np.float32), None), half)
        for other in (np.float32, np.float16 if half != np.float16 else np.float64):
            wrong = np.zeros(x.shape, other)
            with pytest.raises(TypeError, match="out: expected dtype"):
                op(x, wrong)
            assert not wrong.any()


def _assert_allocates_only_its_output(calls, half):
    """Each ``op(arg)`` of ``calls``, called a second time, returns a ``half`` array and allocates (the peak
    tracemalloc sees) little more than it."""
    for op, arg in calls:
        op(arg)
        tracemalloc.start()
        try:
            y = op(arg)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert y.dtype == half and peak < y.nbytes + 256 * 1024, (peak, y.nbytes)


@pytest.mark.parametrize("half", HALVES)
def test_a_half_call_allocates_only_its_output(half):
    x = _data(half, (4096, 768))[0]
    w, b = _params(768)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    xc = _data(half, (8, 64, 28, 28))[0]
    stats = F.layer_norm(x, 768, w, return_stats=True)[1:]
    bn_stats = F.batch_norm(xc, training=True, return_stats=True)[1:]
    _assert_allocates_only_its_output([
        (lambda a: F.layer_norm(a, 768, w, b), x), (lambda a: F.rms_norm(a, 768, w), x),
        (lambda a: F.batch_norm(a, rm, rv), xc), (lambda a: F.batch_norm(a, training=True), xc),
        (lambda a: F.group_norm(a, 8), xc), (lambda a: F.layer_norm_backward(a, a, 768, *stats, w)[0], x),
        (lambda a: F.batch_norm_backward(a, a, *bn_stats, rm)[0], xc), (lambda a: F.instance_norm(a), xc)], half)


# --------------------------------------------------------------------------------------------------------
# Fused calls (activation=, add=): the epilogue on the float32 values before they are rounded
# --------------------------------------------------------------------------------------------------------

def _fused_ops(C, D):
    """op(x, add, act) on channels-first x of shape (N, C, ..., D): each layout and statistics path."""
    w, b = _params(C, 4)
    wl, bl = _params(D, 5)
    rm, rv = _params(C, 6)
    rv = np.abs(rv) + 0.5

    def last(op):  # the same op on channels-last data
        return lambda x, a, act: op(np.moveaxis(x, 1, -1), None if a is None else np.moveaxis(a, 1, -1), act, -1)

    def bn(training):
        def op(x, a, act, axis=1):
            if training and x.size // C < 2:
                return None
            return F.batch_norm(x, None if training else rm, None if training else rv, w, b, training,
                                channel_axis=axis, activation=act, add=a)
        return op

    def gn(x, a, act, axis=1):
        return F.group_norm(x, 1 if C % 2 else 2, w, b, channel_axis=axis, activation=act, add=a)

    def inorm(x, a, act, axis=1):
        if x.ndim < 3 or x.size // (x.shape[0] * C) < 2:
            return None
        return F.instance_norm(x, None, None, w, b, channel_axis=axis, activation=act, add=a)

    return {
        "batch_norm training": bn(True), "batch_norm training channels last": last(bn(True)),
        "batch_norm eval": bn(False), "batch_norm eval channels last": last(bn(False)),
        "group_norm": gn, "group_norm channels last": last(gn),
        "instance_norm": inorm, "instance_norm channels last": last(inorm),
        "layer_norm": lambda x, a, act: None if a is not None else F.layer_norm(x, D, wl, bl, activation=act),
        "rms_norm": lambda x, a, act: None if a is not None else F.rms_norm(x, D, wl, activation=act),
    }


@settings(max_examples=40, deadline=None)
@given(half=st.sampled_from([h for h in HALVES if isinstance(h, np.dtype)]),
       shape=st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple), long=st.sampled_from([1, 300, 5000]),
       act=st.sampled_from([None, *fastnorm._validation.ACTIVATIONS]), with_add=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_fused_half_calls_equal_the_float32_call_rounded(half, shape, long, act, with_add, seed):
    """The add is taken in the input's dtype; the float32 call gets those values."""
    shape = shape[:-1] + (shape[-1] * long,)
    if act is None and not with_add:
        return
    x, add = _data(half, shape, seed, scale=4.0)
    add = add if with_add else None
    for op in _fused_ops(shape[1], shape[-1]).values():
        ours = op(x, add, act)
        if ours is not None:
            _same(ours, op(x.astype(np.float32), None if add is None else add.astype(np.float32), act), half)


@pytest.mark.parametrize("half", HALVES)
def test_fused_half_calls_give_the_same_bits_for_every_thread_count(half, uncapped_threads):
    for shape in [(4096, 96), (6, 64, 300), (2, 64, 9, 9), (8, 2, 5000)]:
        x, add = _data(half, shape)
        for op in _fused_ops(shape[1], shape[-1]).values():
            with fastnorm.threads(1):
                one = op(x, None, "silu"), op(x, add, "relu")
            for n in (2, 3, 4):
                with fastnorm.threads(n):
                    _same((op(x, None, "silu"), op(x, add, "relu")), one, half)


@pytest.mark.parametrize("half", HALVES)
def test_a_fused_half_call_allocates_only_its_output(half):
    x, add = _data(half, (8, 64, 28, 28))
    rows = _data(half, (4096, 768))[0]
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    _assert_allocates_only_its_output([(lambda a: F.batch_norm(a, rm, rv, activation="relu", add=add), x),
                                       (lambda a: F.batch_norm(a, training=True, activation="silu", add=add), x),
                                       (lambda a: F.group_norm(a, 8, activation="gelu"), x),
                                       (lambda a: F.instance_norm(a, activation="sigmoid", add=add), x),
                                       (lambda a: F.layer_norm(a, 768, activation="gelu_tanh"), rows),
                                       (lambda a: F.rms_norm(a, 768, activation="tanh"), rows)], half)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_a_half_backward_through_an_activation_rounds_its_dz_once(half, act):
    """dz = dy * act'(z) is computed in float32 from the half values and rounded once to the half dtype (the
    gradient of ``add``), then the normalization's half backward takes it, as the half ops composed; the
    call's new arrays are that dz and dx."""
    x, dy = _data(half, (8, 64, 28, 28))
    add = _data(half, x.shape, seed=3)[0]
    w, b = _params(64)
    _, mean, invstd = F.batch_norm(x, None, None, w, b, True, activation=act, add=add, return_stats=True)
    dx, dw, db, dadd = F.batch_norm_backward(dy, x, mean, invstd, w, activation=act, add=add, bias=b)
    theirs = F.batch_norm_backward(dy.astype(np.float32), x.astype(np.float32), mean, invstd, w, activation=act,
                                   add=add.astype(np.float32), bias=b)
    _same(dadd, theirs[3], half)
    _same((dx, dw, db), F.batch_norm_backward(dadd, x, mean, invstd, w), half)
    tracemalloc.start()
    try:
        F.batch_norm_backward(dy, x, mean, invstd, w, activation=act, add=add, bias=b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * dx.nbytes + 256 * 1024, (peak, dx.nbytes)


@pytest.mark.parametrize("half", HALVES)
def test_layers_take_half_input(half):
    x = _data(half, (4, 6, 5, 5))[0]
    for make in (lambda: fastnorm.BatchNorm2d(6), lambda: fastnorm.GroupNorm(3, 6),
                 lambda: fastnorm.InstanceNorm2d(6, affine=True, track_running_stats=True),
                 lambda: fastnorm.LayerNorm(5), lambda: fastnorm.RMSNorm(5)):
        for training in (True, False):
            ours, theirs = make(), make()
            ours.train(training)
            theirs.train(training)
            y = ours(x)
            _same(y, theirs(x.astype(np.float32)), half)
            _same(ours.backward(np.ones_like(x)), theirs.backward(np.ones(x.shape, np.float32)), half)
            for name in ("running_mean", "running_var"):
                if getattr(ours, name, None) is not None:
                    _same(getattr(ours, name), getattr(theirs, name), half)


def test_fastnorm_does_not_import_ml_dtypes():
    code = "import sys, fastnorm, numpy as np; fastnorm.layer_norm(np.ones((2, 3), np.float16), 3); " \
           "print('ml_dtypes' in sys.modules)"
    assert fresh_python(code).strip() == "False"


@pytest.mark.parametrize("half", HALVES)
def test_a_half_backward_sees_its_input_modified_in_place(half):
    x = _data(half, (16, 40))[0]
    _, mean, rstd = F.layer_norm(x, 40, return_stats=True)
    x[3] = x[3] * 4
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        F.layer_norm_backward(np.ones_like(x), x, 40, mean, rstd, eps=1e-5)
