"""Hardening: random shapes, strides and arguments against the float64 reference; garbage arguments;
NaN and inf; leaks; thread stress; arrays of more than 2**31 elements."""
import gc
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnorm
import memory
import reference
from fastnorm import functional as F

# --------------------------------------------------------------------------------------------------------
# Every functional op over random shapes (size 0 and 1 axes, up to 5-D), dtypes, strides, out aliasing
# and thread counts, against the reference
# --------------------------------------------------------------------------------------------------------


def _divisor(C, pick):
    divisors = [g for g in range(1, C + 1) if C % g == 0] or [1]
    return divisors[pick % len(divisors)]


def _run(op, x, params, out=None):
    """The op on x; returns (result, reference) or raises what the op raises."""
    C = x.shape[1] if x.ndim > 1 else 0
    rm, rv, w, b, pick = params(C)
    if op == "batch_norm_train":
        y = fastnorm.batch_norm(x, None, None, w, b, training=True, out=out)
        return y, reference.batch_norm(x, None, None, w, b, training=True)
    if op == "batch_norm_eval":
        y = fastnorm.batch_norm(x, rm, rv, w, b, out=out)
        return y, reference.batch_norm(x, rm, rv, w, b)
    if op == "layer_norm":
        D = x.shape[-1]
        wd, bd = params(D)[2:4]
        return fastnorm.layer_norm(x, D, wd, bd, out=out), reference.layer_norm(x, (D,), wd, bd)
    if op == "rms_norm":
        D = x.shape[-1]
        wd = params(D)[2]
        return fastnorm.rms_norm(x, D, wd, 1e-6, out=out), reference.rms_norm(x, (D,), wd, 1e-6)
    if op == "group_norm":
        G = _divisor(C, pick)
        y = fastnorm.group_norm(x, G, w, b, out=out)
        return y, (reference.group_norm(x, G, w, b) if x.size else np.empty(x.shape))
    if op == "instance_norm":
        y = fastnorm.instance_norm(x, None, None, w, b, out=out)
        return y, reference.instance_norm(x, None, None, w, b)
    raise AssertionError(op)


def _expected_error(op, x):
    """The ValueError an op must raise on a valid-looking input it cannot normalize, or None."""
    if op == "instance_norm" and x.ndim < 3:
        return "input: expected at least 3 dimensions"
    if x.size == 0:
        return None
    C = x.shape[1] if x.ndim > 1 else 0
    if op == "batch_norm_train" and x.size // C <= 1:
        return "expected more than 1 value per channel when training"
    if op == "instance_norm" and x.size // (x.shape[0] * C) <= 1:
        return "input: expected more than 1 spatial element"
    return None


@st.composite
def arrays(draw):
    """(x, seed): float32/float64 arrays of every shape, memory order and stride, some of them in the other
    byte order or misaligned (with the same layout)."""
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 1, 2, 3, 5]), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    view = draw(st.sampled_from(["contiguous", "strided", "negative", "transposed", "fortran"]))
    kind = draw(st.sampled_from(["native", "native", "swapped", "misaligned"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    offset = draw(st.sampled_from([0.0, 1e3]))

    def stored(values):
        return memory.in_memory(values.astype(dtype), kind)

    if view == "strided":
        x = stored(rng.normal(size=(shape[0] * 2,) + shape[1:]) + offset)[::2]
    elif view == "negative":
        x = stored(rng.normal(size=shape) + offset)[::-1]
    elif view == "transposed":
        x = stored(rng.normal(size=shape[::-1]) + offset).T
    elif view == "fortran":
        x = memory.in_memory(np.asfortranarray((rng.normal(size=shape) + offset).astype(dtype)), kind)
    else:
        x = stored(rng.normal(size=shape) + offset)
    return x, seed


def _memory_kind(x):
    return "swapped" if not x.dtype.isnative else "misaligned" if not x.flags.aligned else "native"


OPS = ["batch_norm_train", "batch_norm_eval", "layer_norm", "rms_norm", "group_norm", "instance_norm"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=arrays(), op=st.sampled_from(OPS), nthreads=st.sampled_from([1, 2]), in_place=st.booleans())
def test_every_op_matches_the_reference(data, op, nthreads, in_place):
    x, seed = data
    rng = np.random.default_rng(seed + 1)

    def params(n):
        return (rng.normal(size=n).astype(x.dtype) * 0 + rng.normal(size=n).astype(x.dtype),
                rng.uniform(0.5, 2.0, n).astype(x.dtype), rng.normal(size=n).astype(x.dtype),
                rng.normal(size=n).astype(x.dtype), int(rng.integers(0, 10)))

    snapshot = x.copy()
    message = _expected_error(op, x)
    with fastnorm.threads(nthreads):
        if message is not None:
            with pytest.raises(ValueError, match=message):
                _run(op, x, params)
            np.testing.assert_array_equal(x, snapshot)
            return
        state = rng.bit_generator.state
        y, expected = _run(op, x, params)
        np.testing.assert_array_equal(x, snapshot)  # the input is never written
        assert y.shape == x.shape and y.dtype == x.dtype.newbyteorder("=")
        scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
        tol = (2e-4 if x.dtype.itemsize == 4 else 1e-9) * scale
        np.testing.assert_allclose(y, expected, rtol=0, atol=tol)
        if in_place:
            rng.bit_generator.state = state  # the same parameters again
            target = memory.in_memory(x.copy(order="K"), _memory_kind(x))
            result = _run(op, target, params, out=target)[0]
            assert result is target
            np.testing.assert_array_equal(target, y)


@settings(max_examples=60, deadline=None)
@given(data=arrays(), keepdims=st.booleans(), pick=st.integers(0, 2**10))
def test_moments_match_numpy(data, keepdims, pick):
    x, _ = data
    axes = tuple(a for a in range(x.ndim) if (pick >> a) & 1)
    mean, var = fastnorm.moments(x, axes, keepdims=keepdims)
    with np.errstate(all="ignore"):
        expected_mean = x.astype(np.float64).mean(axis=axes, keepdims=keepdims)
        expected_var = x.astype(np.float64).var(axis=axes, keepdims=keepdims)
    tol = 1e-4 if x.dtype.itemsize == 4 else 1e-10
    np.testing.assert_allclose(mean, expected_mean, rtol=tol, atol=tol * 1e3)
    np.testing.assert_allclose(var, expected_var, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------------------
# Garbage arguments: a clear TypeError or ValueError, and nothing written
# --------------------------------------------------------------------------------------------------------

BAD_VALUES = {
    "eps": [float("nan"), float("inf"), -1.0, "0.1", None, [1e-5], complex(1, 1)],
    "momentum": [1.5, -0.1, "0.1", float("nan"), [0.1]],
    "num_groups": [0, -2, 2.5, 5, "2", None],
    "weight": [np.ones(7), np.ones((4, 1)), np.ones(4, dtype=int), "w", np.ones(4, dtype=complex)],
    "channel_axis": [5, -6, 1.5, "1", None],
    "out": [np.empty((3, 4, 5), np.float16), np.empty((2, 4, 5), np.float32), [0.0],
            np.broadcast_to(np.empty(5, np.float32), (3, 4, 5))],
    "normalized_shape": [6, (4, 6), "5", (5.0,), None, -5],
}

GARBAGE_CALLS = {
    "eps": [lambda x, rm, rv, v: fastnorm.batch_norm(x, rm, rv, training=True, eps=v),
            lambda x, rm, rv, v: fastnorm.layer_norm(x, 5, eps=v),
            lambda x, rm, rv, v: fastnorm.group_norm(x, 2, eps=v),
            lambda x, rm, rv, v: fastnorm.instance_norm(x, rm, rv, eps=v),
            lambda x, rm, rv, v: fastnorm.rms_norm(x, 5, eps=v) if v is not None else fastnorm.rms_norm(x, 5, eps=-1),
            lambda x, rm, rv, v: F.batch_norm_stats(x, v),
            lambda x, rm, rv, v: F.batch_norm_elemt(x, None, None, rm, rv, v, out=x),
            lambda x, rm, rv, v: F.batch_norm_gather_stats_with_counts(x, [rm], [rv], rm, rv, 0.1, v, [9])],
    "momentum": [lambda x, rm, rv, v: fastnorm.batch_norm(x, rm, rv, training=True, momentum=v),
                 lambda x, rm, rv, v: fastnorm.instance_norm(x, rm, rv, momentum=v),
                 lambda x, rm, rv, v: F.batch_norm_gather_stats_with_counts(x, [rm], [rv], rm, rv, v, 1e-5, [9])],
    "num_groups": [lambda x, rm, rv, v: fastnorm.group_norm(x, v)],
    "weight": [lambda x, rm, rv, v: fastnorm.batch_norm(x, rm, rv, v, training=True),
               lambda x, rm, rv, v: fastnorm.group_norm(x, 2, v),
               lambda x, rm, rv, v: fastnorm.instance_norm(x, rm, rv, v),
               lambda x, rm, rv, v: fastnorm.layer_norm(x, 5, v),
               lambda x, rm, rv, v: F.batch_norm_elemt(x, v, None, rm, rv, 1e-5, out=x),
               lambda x, rm, rv, v: F.batch_norm_backward_elemt(x, x, rm, rv, v, rm, rm, [9])],
    "channel_axis": [lambda x, rm, rv, v: fastnorm.batch_norm(x, rm, rv, training=True, channel_axis=v),
                     lambda x, rm, rv, v: fastnorm.group_norm(x, 2, channel_axis=v),
                     lambda x, rm, rv, v: F.batch_norm_stats(x, 1e-5, channel_axis=v),
                     lambda x, rm, rv, v: F.batch_norm_backward_reduce(x, x, rm, rv, None, True, True, True,
                                                                       channel_axis=v)],
    "out": [lambda x, rm, rv, v: fastnorm.batch_norm(x, rm, rv, training=True, out=v),
            lambda x, rm, rv, v: fastnorm.layer_norm(x, 5, out=v),
            lambda x, rm, rv, v: fastnorm.group_norm(x, 2, out=v),
            lambda x, rm, rv, v: fastnorm.instance_norm(x, rm, rv, out=v),
            lambda x, rm, rv, v: fastnorm.rms_norm(x, 5, out=v),
            lambda x, rm, rv, v: F.batch_norm_elemt(x, None, None, rm, rv, 1e-5, out=v)],
    "normalized_shape": [lambda x, rm, rv, v: fastnorm.layer_norm(x, v),
                         lambda x, rm, rv, v: fastnorm.rms_norm(x, v)],
}


@settings(max_examples=200, deadline=None)
@given(argument=st.sampled_from(sorted(BAD_VALUES)), pick=st.integers(0, 100), which=st.integers(0, 100))
def test_garbage_arguments_raise_and_write_nothing(argument, pick, which):
    value = BAD_VALUES[argument][pick % len(BAD_VALUES[argument])]
    call = GARBAGE_CALLS[argument][which % len(GARBAGE_CALLS[argument])]
    rng = np.random.default_rng(pick)
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    rm, rv = rng.normal(size=4).astype(np.float32), rng.uniform(1, 2, 4).astype(np.float32)
    before = [a.copy() for a in (x, rm, rv)]
    if isinstance(value, np.ndarray):
        value_before = value.copy()
    with pytest.raises((TypeError, ValueError)) as info:
        call(x, rm, rv, value)
    assert str(info.value).split(":")[0].strip() != ""  # the message names what was wrong
    for a, b in zip((x, rm, rv), before):
        np.testing.assert_array_equal(a, b)
    if isinstance(value, np.ndarray) and value.flags.writeable:
        np.testing.assert_array_equal(value, value_before)


# --------------------------------------------------------------------------------------------------------
# NaN and inf
# --------------------------------------------------------------------------------------------------------

ROW_OPS = {
    # name: (call, the slice of the output that one bad value of x[0, 1, 2] may reach)
    "batch_norm": (lambda x: fastnorm.batch_norm(x, training=True), lambda y: y[:, 1]),
    "layer_norm": (lambda x: fastnorm.layer_norm(x, x.shape[-1]), lambda y: y[0, 1]),
    "rms_norm": (lambda x: fastnorm.rms_norm(x, x.shape[-1]), lambda y: y[0, 1]),
    "group_norm": (lambda x: fastnorm.group_norm(x, 2), lambda y: y[0, 0:2]),
    "instance_norm": (lambda x: fastnorm.instance_norm(x), lambda y: y[0, 1]),
    "batch_norm_channels_last": (lambda x: fastnorm.batch_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)),
                                                               training=True, channel_axis=-1),
                                 lambda y: y[..., 1]),
}


@pytest.mark.parametrize("name", list(ROW_OPS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_stay_in_their_group(rng, name, bad):
    call, group = ROW_OPS[name]
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    x[0, 1, 2] = bad
    y = call(x)
    reached = np.zeros(y.shape, bool)
    group(reached)[...] = True
    if name == "batch_norm_channels_last":
        reached = np.zeros(y.shape, bool)
        reached[..., 1] = True
    assert np.isfinite(y[~reached]).all()
    # An infinite value makes the mean infinite and the variance NaN: the whole group is NaN, as the
    # arithmetic of the definition gives.
    assert np.isnan(y[reached]).all()


def test_eval_mode_keeps_inf_where_the_math_does(rng):
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    x[0, 1, 2] = np.inf
    bn = fastnorm.BatchNorm1d(4).eval()
    y = bn(x)
    assert np.isposinf(y[0, 1, 2]) and np.isfinite(np.delete(y.reshape(-1), 1 * 6 + 2)).all()


# --------------------------------------------------------------------------------------------------------
# Leaks: many calls keep the resident memory flat
# --------------------------------------------------------------------------------------------------------

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's quarantine holds freed memory, so the resident size grows")
def test_100000_calls_of_each_op_keep_memory_flat(rng):
    x = rng.normal(size=(4, 8, 6)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    bn, bn_eval = fastnorm.BatchNorm1d(8), fastnorm.BatchNorm1d(8).eval()
    layers = [bn, bn_eval, fastnorm.LayerNorm(6), fastnorm.GroupNorm(2, 8), fastnorm.InstanceNorm1d(8),
              fastnorm.RMSNorm(6)]

    def round_of_calls():
        for layer in layers:
            layer(x)
            layer.backward(g)
        fastnorm.moments(x, (0, 2))
        fastnorm.batch_normalization(x, 0.5, 2.0, 0.1, 1.5, 1e-3)

    for _ in range(2000):
        round_of_calls()
    gc.collect()
    before = _rss_bytes()
    for _ in range(100_000 // 10):
        for _ in range(10):
            round_of_calls()
    gc.collect()
    assert _rss_bytes() - before < 5 * 2**20


# --------------------------------------------------------------------------------------------------------
# Thread stress: 8 Python threads x 1000 mixed calls while the kernel thread count changes underneath
# --------------------------------------------------------------------------------------------------------

def test_thread_stress_matches_a_serial_run(rng):
    inputs = [rng.normal(size=(4, 8, 40)).astype(np.float32) for _ in range(8)]
    shared_eval = fastnorm.BatchNorm1d(8).eval()
    shared_eval.running_mean[:] = rng.normal(size=8)

    def calls(k):
        x = inputs[k]
        train_layer = fastnorm.BatchNorm1d(8)  # training mutates its layer: one per thread
        out = []
        for i in range(1000):
            kind = (i + k) % 5
            if kind == 0:
                out.append(train_layer(x))
            elif kind == 1:
                out.append(shared_eval(x))
            elif kind == 2:
                out.append(fastnorm.layer_norm(x, 40))
            elif kind == 3:
                out.append(fastnorm.group_norm(x, 4))
            else:
                out.append(fastnorm.moments(x, (0, 2))[1])
        return out, train_layer.running_mean.copy()

    with fastnorm.no_grad():
        serial = [calls(k) for k in range(8)]
        results = [None] * 8
        stop = threading.Event()

        def flip():
            n = 0
            while not stop.is_set():
                fastnorm.set_num_threads(1 + n % 2)
                n += 1

        def work(k):
            results[k] = calls(k)

        flipper = threading.Thread(target=flip)
        pool = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        flipper.start()
        try:
            for t in pool:
                t.start()
            for t in pool:
                t.join(timeout=300)
            assert not any(t.is_alive() for t in pool), "deadlock"
        finally:
            stop.set()
            flipper.join()
            fastnorm.set_num_threads(None)
    for (out, rm), (expected, expected_rm) in zip(results, serial):
        np.testing.assert_array_equal(rm, expected_rm)
        for a, b in zip(out, expected):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------------
# More than 2**31 elements: 64-bit indices all the way through
# --------------------------------------------------------------------------------------------------------

def _available_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


HUGE = 2**30 + 7
needs_memory = pytest.mark.skipif(_available_memory() < 20 * 2**30, reason="needs about 20 GB of free memory")


def _alternating(shape, a, b):
    """float32 values a, b, a, b, ... along the last axis (exact statistics known in float64)."""
    x = np.empty(shape, np.float32)
    x[..., 0::2] = a
    x[..., 1::2] = b
    return x


def _alternating_stats(n, a, b):
    na, nb = (n + 1) // 2, n // 2
    mean = (na * np.float64(a) + nb * np.float64(b)) / n
    var = (na * (a - mean) ** 2 + nb * (b - mean) ** 2) / n
    return mean, var


@pytest.mark.slow
@needs_memory
def test_batch_norm_in_place_over_more_than_2_31_elements():
    a, b = np.float32(1000.25), np.float32(999.75)
    x = _alternating((1, 2, HUGE), a, b)
    x[0, 1] *= 2  # channel 1: 2000.5, 1999.5, ...
    rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    y = fastnorm.batch_norm(x, rm, rv, training=True, momentum=1.0, out=x)
    assert y is x
    for c, (ca, cb) in enumerate([(a, b), (2 * a, 2 * b)]):
        mean, var = _alternating_stats(HUGE, ca, cb)
        np.testing.assert_allclose(rm[c], mean, rtol=1e-7)
        np.testing.assert_allclose(rv[c], var * HUGE / (HUGE - 1), rtol=1e-6)
        for i in (0, 1, 2**31 // 2 - 1, HUGE - 2, HUGE - 1):  # a sample, across the 2**31 boundary
            value = ca if i % 2 == 0 else cb
            np.testing.assert_allclose(x[0, c, i], (value - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
    del x, y
    gc.collect()


@pytest.mark.slow
@needs_memory
def test_layer_norm_in_place_over_more_than_2_31_elements():
    a, b = np.float32(-3.5), np.float32(4.25)
    x = _alternating((2, HUGE), a, b)
    x[1] += 100
    fastnorm.layer_norm(x, HUGE, out=x)
    for r, shift in enumerate((0.0, 100.0)):
        mean, var = _alternating_stats(HUGE, a + np.float32(shift), b + np.float32(shift))
        for i in (0, 1, 2**30, HUGE - 1):
            value = (a if i % 2 == 0 else b) + np.float32(shift)
            np.testing.assert_allclose(x[r, i], (value - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
    del x
    gc.collect()


def test_eval_calls_never_read_factors_being_replaced(rng):
    # One thread keeps changing a running statistic (not thread-safe: each call may see the old or the
    # new value), the other calls the layer: every output is one of the two, never a mixture or garbage.
    bn = fastnorm.BatchNorm2d(4).eval()
    x = np.ones((64, 4, 16, 16), np.float32)
    stop = threading.Event()

    def change():
        k = 0
        while not stop.is_set():
            bn.running_mean[:] = k % 2
            bn(np.ones((1, 4, 1, 1), np.float32))
            k += 1

    changer = threading.Thread(target=change)
    changer.start()
    try:
        with fastnorm.threads(1), fastnorm.no_grad():
            for _ in range(200):
                values = np.unique(bn(x))
                assert len(values) == 1 and (values[0] == 0 or abs(values[0] - 1 / np.sqrt(1 + 1e-5)) < 1e-6)
    finally:
        stop.set()
        changer.join()


@pytest.mark.parametrize("call, error, message", [
    (lambda x: fastnorm.batch_norm(x, np.zeros(4), np.ones(4), training=True, momentum=None,
                                   num_batches_tracked=-1), ValueError, "num_batches_tracked"),
    (lambda x: fastnorm.BatchNorm1d(4, channel_axis=2**40).eval()(x), ValueError, "channel_axis"),
    (lambda x: fastnorm.layer_norm(x, (5.0,)), TypeError, "normalized_shape"),
    (lambda x: fastnorm.group_norm(x, True), TypeError, "num_groups"),
    (lambda x: fastnorm.batch_norm(x, training=True, channel_axis=True), TypeError, "channel_axis"),
], ids=["negative-count", "huge-axis", "float-shape", "bool-groups", "bool-axis"])
def test_more_bad_arguments_name_themselves(rng, call, error, message):
    with pytest.raises(error, match=message):
        call(rng.normal(size=(3, 4, 5)))


def test_empty_instance_norm(rng):
    y, mean, rstd = fastnorm.instance_norm(np.zeros((0, 3, 4), np.float32), return_stats=True)
    assert y.shape == (0, 3, 4) and mean.shape == (0, 3)
    layer = fastnorm.InstanceNorm1d(3)
    assert layer(np.zeros((0, 3, 4), np.float32)).shape == (0, 3, 4)
    out = np.empty((3, 5), np.float32)
    assert fastnorm.InstanceNorm1d(3)(rng.normal(size=(3, 5)).astype(np.float32), out=out) is out


@pytest.mark.parametrize("call", [
    lambda x, g: fastnorm.batch_norm(x, training=True),
    lambda x, g: fastnorm.batch_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), training=True, channel_axis=-1),
    lambda x, g: fastnorm.batch_norm(x, np.ones(8, np.float32), np.ones(8, np.float32)),
    lambda x, g: fastnorm.group_norm(x, 4),
    lambda x, g: fastnorm.layer_norm(x, x.shape[-1]),
    lambda x, g: fastnorm.layer_norm(x, x.shape[-1], g[0, 0], g[1, 0]),
    lambda x, g: fastnorm.layer_norm(x.astype(np.float64), x.shape[-1], g[0, 0].astype(np.float64)),
    lambda x, g: fastnorm.batch_norm_backward(g, x, *fastnorm.batch_norm(x, training=True, return_stats=True)[1:]),
    lambda x, g: fastnorm.layer_norm_backward(g, x, x.shape[-1], *fastnorm.layer_norm(
        x, x.shape[-1], return_stats=True)[1:], np.ones(x.shape[-1], np.float32)),
], ids=["bn-train", "bn-channels-last", "bn-eval", "group-norm", "layer-norm", "layer-norm-affine",
        "layer-norm-weight-f64", "bn-backward", "ln-backward"])
def test_streaming_stores_give_the_bits_of_cached_stores(rng, call):
    # Outputs of large calls are written with non-temporal stores; force that path on a small input
    # and compare with the cached one (runs of 333 values: unaligned ends, streamed one by one).
    from fastnorm import _kernels
    x = (1e3 + rng.normal(size=(4, 8, 333))).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    cached = call(x, g)
    previous = _kernels.set_stream_bytes(0)
    window = _kernels.set_alias_window(0)  # stream whatever the placement
    try:
        streamed = call(x, g)
    finally:
        _kernels.set_stream_bytes(previous)
        _kernels.set_alias_window(window)
    for a, b in zip(cached if isinstance(cached, tuple) else (cached,),
                    streamed if isinstance(streamed, tuple) else (streamed,)):
        if a is not None:
            assert np.array_equal(a, b)


@pytest.mark.parametrize("ahead", [16, 48, 200, 4080])
def test_outputs_just_ahead_of_their_inputs_get_the_same_bits(rng, ahead):
    # A large output a few bytes ahead of an input modulo 4 KiB is written with ordinary stores, one
    # further on is streamed; the values are the cached sweep's either way.
    from fastnorm import _kernels

    def at(values, offset):  # a copy of ``values`` starting ``offset`` bytes past a page boundary
        raw = np.empty(values.nbytes + 8192, np.uint8)
        start = (-raw.ctypes.data) % 4096 + offset
        view = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
        view[...] = values
        return view

    x = at((1e3 + rng.normal(size=(6, 8, 1500))).astype(np.float32), 0)
    g = at(rng.normal(size=x.shape).astype(np.float32), 0)
    w = at(rng.normal(size=1500).astype(np.float32), 0)
    rows = x.reshape(-1, 1500)
    _, mean, rstd = fastnorm.layer_norm(rows, 1500, return_stats=True)
    nhwc = (lambda out: fastnorm.batch_norm(x, np.ones(1500, np.float32), np.ones(1500, np.float32), out=out,
                                            channel_axis=-1))
    calls = [lambda out: fastnorm.instance_norm(x, out=out),
             lambda out: fastnorm.layer_norm(x, 1500, w, w, out=out),
             nhwc,
             lambda out: _kernels.backward_rows(rows.reshape(-1), g.reshape(-1), out.reshape(-1), 1, 48, 1500, mean,
                                           rstd, w, True, 1, per_element=True)]
    for call in calls:
        cached = np.full_like(x, np.nan)
        call(cached)
        streamed = at(np.full_like(x, np.nan), ahead)
        previous = _kernels.set_stream_bytes(0)
        try:
            call(streamed)
        finally:
            _kernels.set_stream_bytes(previous)
        assert np.array_equal(cached, streamed)


def _oom_cases(rng):
    """(name, make, call): ``make()`` gives a fresh (layer, a dict of running statistics, or None; x),
    ``call(layer, x)`` the call whose kernels allocate memory, at sizes and thread counts that reach each
    allocating path; the calls with ``out=x`` write into their own input."""
    def after_forward(make_layer, x):
        def make():
            layer = make_layer()
            layer(x)
            return layer, x.copy()
        return make

    layers = [("BatchNorm2d, few channels", lambda: fastnorm.BatchNorm2d(2), (4, 2, 128, 128)),
              ("BatchNorm2d, channels last", lambda: fastnorm.BatchNorm2d(16, channel_axis=-1), (8, 32, 32, 16)),
              ("BatchNorm1d, by columns", lambda: fastnorm.BatchNorm1d(16), (64, 16, 8)),
              ("GroupNorm, channels last", lambda: fastnorm.GroupNorm(4, 16, channel_axis=-1), (8, 32, 32, 16)),
              ("GroupNorm", lambda: fastnorm.GroupNorm(2, 4), (2, 4, 64, 64)),
              ("InstanceNorm2d, tracking", lambda: fastnorm.InstanceNorm2d(2, track_running_stats=True),
               (1, 2, 128, 128)),
              ("LayerNorm", lambda: fastnorm.LayerNorm(256), (512, 256)),
              ("RMSNorm", lambda: fastnorm.RMSNorm(256), (512, 256))]
    for name, make_layer, shape in layers:  # few channels: fewer than 4 per thread
        x = rng.normal(size=shape).astype(np.float32)
        fresh = lambda make_layer=make_layer, x=x: (make_layer(), x.copy())
        yield f"{name}, forward", fresh, lambda layer, x: layer(x)
        yield f"{name}, forward in place", fresh, lambda layer, x: layer(x, out=x)
        yield (f"{name}, backward", after_forward(make_layer, x),
               lambda layer, x: (layer.backward(np.ones_like(x)), layer.grad_weight, layer.grad_bias))

    x = rng.normal(size=(8, 32, 32, 16)).astype(np.float32)
    running_mean = rng.normal(size=16).astype(np.float32)

    def eval_layer():
        layer = fastnorm.BatchNorm2d(16, channel_axis=-1)
        layer.running_mean[:] = running_mean
        return layer.eval(), x.copy()

    def with_running(shape, C):
        data = rng.normal(size=shape).astype(np.float32)
        return lambda: ({"running_mean": running_mean[:C].copy(), "running_var": np.ones(C, np.float32)},
                        data.copy())

    short_runs = rng.normal(size=(64, 16, 3)).astype(np.float32)
    yield "BatchNorm2d eval", eval_layer, lambda layer, x: layer(x)
    yield "BatchNorm2d eval, in place", eval_layer, lambda layer, x: layer(x, out=x)
    yield "batch_norm eval", lambda: (None, x.copy()), lambda _, x: fastnorm.batch_norm(
        x, running_mean, np.ones(16, np.float32), channel_axis=-1)
    yield "batch_norm eval, short runs, in place", lambda: (None, short_runs.copy()), (
        lambda _, x: fastnorm.batch_norm(x, running_mean, np.ones(16, np.float32), out=x))
    for shape, C, axis in (((4, 2, 64, 64), 2, 1), ((64, 16, 8), 16, 1), ((8, 32, 16), 16, -1)):
        yield (f"batch_norm {shape} training, in place", with_running(shape, C),
               lambda r, x, axis=axis: fastnorm.batch_norm(x, r["running_mean"], r["running_var"], training=True,
                                                          out=x, channel_axis=axis))
    yield ("instance_norm training, in place", with_running((2, 2, 64, 64), 2),
           lambda r, x: fastnorm.instance_norm(x, r["running_mean"], r["running_var"], out=x))
    yield "group_norm channels last, in place", lambda: (None, x.copy()), (
        lambda _, x: fastnorm.group_norm(x, 4, channel_axis=-1, out=x, return_stats=True))
    yield "layer_norm", lambda: (None, x.copy()), lambda _, x: fastnorm.layer_norm(x, 16)
    yield "layer_norm, in place", lambda: (None, x.copy()), lambda _, x: fastnorm.layer_norm(x, 16, out=x)
    yield "moments", lambda: (None, x.copy()), lambda _, x: fastnorm.moments(x, (0, 1, 2))
    yield "moments channels last", lambda: (None, x.copy()), lambda _, x: fastnorm.moments(x, (0, 1, 2, 3))


OOM_CASES = [name for name, _, _ in _oom_cases(np.random.default_rng(0))]


def _state_of(layer):
    """The running statistics, parameters and gradients of a layer, or the arrays of a dict."""
    if layer is None:
        return {}
    if isinstance(layer, dict):
        return {key: np.array(v) for key, v in layer.items()}
    return dict({key: np.array(v) for key, v in layer.state_dict().items()},
                grads=(layer.grad_weight, layer.grad_bias), saved=layer._saved)


def _assert_state(state, expected, name):
    for key, value in expected.items():
        if key in ("grads", "saved"):  # the same objects
            assert all(a is b for a, b in zip(state[key] or (), value or ())), (name, key)
        else:
            assert np.array_equal(state[key], value), (name, key)


@pytest.mark.parametrize("case", range(len(OOM_CASES)), ids=OOM_CASES)
def test_out_of_memory_raises_and_leaves_the_state_alone(rng, case):
    """Each allocation of a call (scratch memory, results) fails in turn: the call raises MemoryError, the
    input (also when it is the call's out=) and the layer's state (running statistics, parameters,
    gradients, what backward keeps) are unchanged, and once memory is there the call gives the usual
    result."""
    from fastnorm import _kernels

    name, make, call = list(_oom_cases(rng))[case]
    with fastnorm.threads(2):
        layer, x = make()
        expected = _copied(call(layer, x))
        failures = 0
        for k in range(60):
            layer, x = make()
            x_before = x.copy()
            state_before = _state_of(layer)
            previous = _kernels.fail_allocations_after(k)
            try:
                result = call(layer, x)
            except MemoryError as error:
                failures += 1
                assert "out of memory" in str(error)
                assert np.array_equal(x, x_before), name
                _assert_state(_state_of(layer), state_before, name)
                _kernels.fail_allocations_after(-1)
                _assert_same_results(expected, call(layer, x))  # the same objects work once memory is there
                continue
            finally:
                _kernels.fail_allocations_after(previous)
            break
        assert failures > 0, f"{name}: no allocation to fail"
        _assert_same_results(expected, result)


def _copied(result):
    return tuple(None if a is None else np.copy(a) for a in result) if isinstance(result, tuple) else np.copy(result)


def _assert_same_results(expected, result):
    for a, b in zip(expected if isinstance(expected, tuple) else [expected],
                    result if isinstance(result, tuple) else [result]):
        np.testing.assert_array_equal(a, b)


def test_outputs_stream_from_three_quarters_of_the_last_level_cache():
    from fastnorm import _kernels

    llc = _kernels.last_level_cache_bytes()
    assert isinstance(llc, int) and llc >= 1 << 16
    threshold = _kernels.set_stream_bytes(0)
    _kernels.set_stream_bytes(threshold)
    assert threshold == 3 * llc // 4
