"""Every public function of fastnorm.functional against its float64 twin of the same name in
tests/reference.py.  A public function without a twin, or with other parameters than its twin, fails
here.  Over generated arguments (float16/32/64 and integer input; shapes with size-0 and size-1 axes; C,
Fortran, strided, reversed and channels-last memory; each optional argument given or not, sometimes of a
wrong shape) both raise the same kind of error or neither does; otherwise the results and the updated
running statistics agree within the dtype's tolerance and the op writes nothing else."""
import inspect
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnorm
import reference
from fastnorm import functional

NAMES = sorted(functional.__all__)
TOLERANCE = {np.dtype(np.float16): 4e-3, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
WRITABLE = ("running_mean", "running_var", "out")  # what a call may write


def _twins():
    return {name for name, f in vars(reference).items() if inspect.isfunction(f) and not name.startswith("_")}


def _parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_every_public_function_has_a_twin_with_its_parameters():
    exported = {name for name in fastnorm.__all__ if inspect.isfunction(getattr(fastnorm, name))
                and getattr(functional, name, None) is getattr(fastnorm, name)}
    assert exported <= set(NAMES), "exported from fastnorm.functional but missing from its __all__"
    missing = sorted(set(NAMES) - _twins())
    assert not missing, f"tests/reference.py has no twin of fastnorm.functional's {', '.join(missing)}"
    assert _twins() == set(NAMES), f"twins of no public function: {', '.join(sorted(_twins() - set(NAMES)))}"
    for name in NAMES:
        assert _parameters(getattr(reference, name)) == _parameters(getattr(functional, name)), name


# --------------------------------------------------------------------------------------------------------
# Generated arguments: a strategy per public function draws a recipe; each call builds fresh arrays from it
# --------------------------------------------------------------------------------------------------------

class _Array:
    """An argument array: values from the case's seed (data on a grid of quarters, exact in float16, so
    that the op and the twin see the same numbers), then laid out in memory as drawn."""

    def __init__(self, shape, dtype=np.float64, kind="data", layout="c", offset=0.0):
        self.shape, self.dtype, self.kind, self.layout, self.offset = tuple(shape), dtype, kind, layout, offset

    def make(self, rng):
        if self.kind == "data":
            a = rng.integers(-16, 17, size=self.shape) / 4 + self.offset
        elif self.kind == "positive":
            a = rng.uniform(0.5, 2.0, size=self.shape)
        elif self.kind == "sentinel":
            a = np.full(self.shape, -7.0)
        else:
            a = rng.normal(size=self.shape)
        return _lay_out(np.asarray(a).astype(self.dtype), self.layout)

    def __repr__(self):
        return f"_Array({self.shape}, {np.dtype(self.dtype).name}, {self.kind!r}, {self.layout!r}, {self.offset})"


def _lay_out(a, layout):
    if a.ndim == 0 or layout == "c":
        return a
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1])[::-1]
    if layout == "channels_last" and a.ndim >= 3:  # channels-first view of channels-last memory
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)
    return a


class Case:
    def __init__(self, seed, args, finish=None):
        self.seed, self.args, self.finish = seed, args, finish

    def build(self):
        rng = np.random.default_rng(self.seed)
        kwargs = {k: v.make(rng) if isinstance(v, _Array) else v for k, v in self.args.items()}
        if self.finish is not None:
            self.finish(kwargs)
        return kwargs

    @property
    def dtype(self):
        x = self.args.get("input", self.args.get("x"))
        return np.dtype(x.dtype) if np.dtype(x.dtype).kind == "f" else np.dtype(np.float64)

    def __repr__(self):
        return f"Case(seed={self.seed}, {self.args})"


def _sometimes(draw, good, bad):
    """``good``, or now and then ``bad`` (a wrong shape or value the op must reject)."""
    return draw(st.sampled_from([good] * 19 + [bad]))


@st.composite
def _input(draw, min_ndim, max_ndim=4):
    ndim = _sometimes(draw, draw(st.integers(min_ndim, max_ndim)), max(min_ndim - 1, 0))
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 2, 3, 3, 4, 5, 7]), min_size=ndim, max_size=ndim)))
    dtype = _sometimes(draw, draw(st.sampled_from([np.float16, np.float32, np.float64])), np.int32)
    layout = draw(st.sampled_from(["c", "fortran", "strided", "reversed", "channels_last"]))
    return _Array(shape, dtype, "data", layout, draw(st.sampled_from([0.0, 100.0])))


def _vector(draw, shape, kind="normal", optional=True):
    """A parameter or statistic of ``shape`` (now and then one longer), or None when optional."""
    if optional and draw(st.booleans()):
        return None
    wrong = tuple(shape[:-1]) + (shape[-1] + 1,) if shape else (2,)
    return _Array(_sometimes(draw, tuple(shape), wrong), draw(st.sampled_from([np.float32, np.float64])), kind)


def _out(draw, x):
    if draw(st.booleans()):
        return None
    return _Array(x.shape, x.dtype, "sentinel", draw(st.sampled_from(["c", "fortran"])))


def _channel_axis(draw, x, choices=None):
    ndim = len(x.shape)
    axis = draw(st.sampled_from(choices or list(range(-ndim, ndim)) or [0]))
    return _sometimes(draw, axis, ndim), (x.shape[axis] if -ndim <= axis < ndim else 1)


def _several_axes(draw, x, name_shape=None):
    """A tuple of axes of x (now and then repeated, out of range or empty) and their sizes in sorted order."""
    ndim = len(x.shape)
    axes = tuple(draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=max(ndim, 1)))) if ndim else ()
    checked = sorted({a % ndim for a in axes}) if ndim else []
    return axes, tuple(x.shape[a] for a in checked) or (1,)


def _channels(draw, x):
    """A channel_axis (one axis, or now and then a tuple of them) and the parameters' shape."""
    if len(x.shape) >= 2 and draw(st.integers(0, 3)) == 0:
        return _several_axes(draw, x)
    axis, C = _channel_axis(draw, x)
    return axis, (C,)


def _forward_stats(names, forward):
    """A finish that replaces the statistics drawn at random by those the twin's forward gives for the
    same input, where it accepts the input and the drawn ones have the right shape."""
    def finish(kwargs):
        try:
            stats = forward(kwargs)[1:]
        except (TypeError, ValueError):
            return
        for name, value in zip(names, stats):
            if kwargs[name].shape == value.shape:
                kwargs[name] = value
    return finish


SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def batch_norm(draw):
    x = draw(_input(2))
    axis, params = _channels(draw, x)
    momentum = draw(st.sampled_from([0.1, 1.0, 0.0, None]))
    training = draw(st.booleans())
    running = draw(st.booleans()) if training else _sometimes(draw, True, False)  # evaluation needs them
    return Case(draw(SEEDS), dict(
        input=x, running_mean=_vector(draw, params, optional=False) if running else None,
        running_var=_vector(draw, params, "positive", optional=False) if running else None,
        weight=_vector(draw, params), bias=_vector(draw, params), training=training, momentum=momentum,
        eps=draw(st.sampled_from([1e-5, 0.1])), channel_axis=axis, out=_out(draw, x), bessel=draw(st.booleans()),
        num_batches_tracked=draw(st.integers(0, 5)) if momentum is None else None,
        return_stats=draw(st.booleans())))


def _instance_axis(draw, x):
    """A channel_axis of InstanceNorm (1 mostly, -1 or another, now and then 0) and C."""
    ndim = len(x.shape)
    axis = draw(st.sampled_from([1, 1, -1] + list(range(-ndim, ndim)))) if ndim else 1
    return axis, x.shape[axis] if -ndim <= axis < ndim else 1


@st.composite
def instance_norm(draw):
    x = draw(_input(3))
    axis, C = _instance_axis(draw, x)
    use_input_stats = draw(st.booleans())
    running = draw(st.booleans()) if use_input_stats else _sometimes(draw, True, False)
    return Case(draw(SEEDS), dict(
        input=x, running_mean=_vector(draw, (C,), optional=False) if running else None,
        running_var=_vector(draw, (C,), "positive", optional=False) if running else None,
        weight=_vector(draw, (C,)), bias=_vector(draw, (C,)), use_input_stats=use_input_stats,
        momentum=draw(st.sampled_from([0.1, 1.0])), eps=draw(st.sampled_from([1e-5, 0.1])), channel_axis=axis,
        out=_out(draw, x), return_stats=draw(st.booleans())))


def _normalized_shape(draw, x):
    """The trailing dimensions (now and then not x's), as an int or a tuple."""
    k = draw(st.integers(min(1, len(x.shape)), len(x.shape)))
    shape = x.shape[len(x.shape) - k:]
    shape = _sometimes(draw, shape, shape[:-1] + (shape[-1] + 1,) if shape else (1,))
    return shape[0] if len(shape) == 1 and draw(st.booleans()) else shape


def _rows(draw, x):
    """(normalized_shape, axes, the parameters' shape): trailing dimensions, or now and then any axes
    (normalized_shape None, or their sizes, or not)."""
    if len(x.shape) and draw(st.integers(0, 2)) == 0:
        axes, full = _several_axes(draw, x)
        return draw(st.sampled_from([None, None, full, full + (1,)])), axes, full
    shape = _normalized_shape(draw, x)
    return shape, None, (shape,) if isinstance(shape, int) else shape


@st.composite
def layer_norm(draw):
    x = draw(_input(1))
    shape, axes, full = _rows(draw, x)
    return Case(draw(SEEDS), dict(
        input=x, normalized_shape=shape, weight=_vector(draw, full), bias=_vector(draw, full),
        eps=draw(st.sampled_from([1e-5, 0.1])), axes=axes, out=_out(draw, x), return_stats=draw(st.booleans())))


@st.composite
def rms_norm(draw):
    x = draw(_input(1))
    shape, axes, full = _rows(draw, x)
    return Case(draw(SEEDS), dict(
        input=x, normalized_shape=shape, weight=_vector(draw, full), eps=draw(st.sampled_from([None, 1e-6, 0.1])),
        axes=axes, out=_out(draw, x), return_stats=draw(st.booleans())))


def _num_groups(draw, C):
    divisors = [g for g in range(1, max(C, 3) + 1) if C % g == 0]
    return _sometimes(draw, draw(st.sampled_from(divisors)), C + 1)


@st.composite
def group_norm(draw):
    x = draw(_input(2))
    axis, C = _channel_axis(draw, x, [1, -1])
    return Case(draw(SEEDS), dict(
        input=x, num_groups=_num_groups(draw, C), weight=_vector(draw, (C,)), bias=_vector(draw, (C,)),
        eps=draw(st.sampled_from([1e-5, 0.1])), channel_axis=axis, out=_out(draw, x),
        return_stats=draw(st.booleans())))


@st.composite
def moments(draw):
    x = draw(_input(1))
    ndim = len(x.shape)
    axes = tuple(draw(st.lists(st.integers(-ndim, ndim - 1), unique=True, max_size=ndim))) if ndim else ()
    axes = _sometimes(draw, axes, axes + (axes[0] if axes else ndim,))  # repeated or out of range
    if len(axes) == 1 and draw(st.booleans()):
        axes = axes[0]
    return Case(draw(SEEDS), dict(x=x, axes=axes, keepdims=draw(st.booleans())))


def _broadcastable(draw, x, kind, optional):
    """A batch_normalization argument: None, a scalar, one varying axis (keepdims shape), x's shape, a
    shape wider than x's, or one that does not broadcast."""
    if optional and draw(st.booleans()):
        return None
    shape = x.shape
    form = draw(st.sampled_from(["scalar", "axis", "axis", "axis", "full", "wider", "vector", "wrong"]))
    if form == "axis" and shape:
        axis = draw(st.integers(0, len(shape) - 1))
        shape = tuple(n if a == axis else 1 for a, n in enumerate(shape))
    elif form == "scalar" or not shape:
        shape = ()
    elif form == "wider":
        shape = (2,) + shape
    elif form == "vector":
        shape = shape[-1:]
    elif form == "wrong":
        shape = shape[:-1] + (shape[-1] + 2,)
    return _Array(shape, draw(st.sampled_from([np.float32, np.float64])), kind)


@st.composite
def batch_normalization(draw):
    x = draw(_input(1))
    return Case(draw(SEEDS), dict(
        x=x, mean=_broadcastable(draw, x, "normal", False), variance=_broadcastable(draw, x, "positive", False),
        offset=_broadcastable(draw, x, "normal", True), scale=_broadcastable(draw, x, "normal", True),
        variance_epsilon=draw(st.sampled_from([1e-3, 0.0]))))


def _grad_output(draw, x):
    shape = _sometimes(draw, x.shape, (x.shape[0] + 1,) + x.shape[1:] if x.shape else (1,))
    layout = draw(st.sampled_from(["c", "fortran", "reversed", "channels_last"]))
    return _Array(shape, x.dtype, "normal", layout)


@st.composite
def batch_norm_backward(draw):
    x = draw(_input(2))
    axis, params = _channels(draw, x)
    training = draw(st.booleans())
    return Case(draw(SEEDS), dict(
        grad_output=_grad_output(draw, x), input=x, mean=_vector(draw, params, optional=False),
        invstd=_vector(draw, params, "positive", optional=False), weight=_vector(draw, params), training=training,
        channel_axis=axis),
        _forward_stats(["mean", "invstd"], lambda kw: reference.batch_norm(
            kw["input"], training=True, channel_axis=axis, return_stats=True)) if training else None)


def _leading(x, shape, axes):
    """The shape of the statistics: the axes not normalized over."""
    if axes is not None:
        ndim = len(x.shape)
        normalized = {a % ndim for a in axes} if ndim else set()
        return tuple(n for a, n in enumerate(x.shape) if a not in normalized)
    full = (shape,) if isinstance(shape, int) else shape
    return x.shape[:max(len(x.shape) - len(full), 0)]


def _rows_backward(draw, rms):
    """A case of layer_norm_backward, or of rms_norm_backward (``rms``: no mean, no bias)."""
    x = draw(_input(1))
    shape, axes, full = _rows(draw, x)
    lead = _leading(x, shape, axes)
    seed = draw(SEEDS)
    kwargs = dict(grad_output=_grad_output(draw, x), input=x, normalized_shape=shape)
    stats = ["rstd"] if rms else ["mean", "rstd"]
    for name in stats:
        kwargs[name] = _vector(draw, lead, "positive" if name == "rstd" else "normal", optional=False)
    kwargs["weight"] = _vector(draw, full)
    if not rms:
        kwargs["bias"] = _vector(draw, full)
    forward = reference.rms_norm if rms else reference.layer_norm
    return Case(seed, dict(kwargs, axes=axes),
                _forward_stats(stats, lambda kw: forward(kw["input"], shape, axes=axes, return_stats=True)))


@st.composite
def layer_norm_backward(draw):
    return _rows_backward(draw, rms=False)


@st.composite
def rms_norm_backward(draw):
    return _rows_backward(draw, rms=True)


@st.composite
def group_norm_backward(draw):
    x = draw(_input(2))
    axis, C = _channel_axis(draw, x, [1, -1])
    G = _num_groups(draw, C)
    stats = (x.shape[0] if x.shape else 1, G)
    return Case(draw(SEEDS), dict(
        grad_output=_grad_output(draw, x), input=x, num_groups=G, mean=_vector(draw, stats, optional=False),
        rstd=_vector(draw, stats, "positive", optional=False), weight=_vector(draw, (C,)), channel_axis=axis),
        _forward_stats(["mean", "rstd"], lambda kw: reference.group_norm(
            kw["input"], G, channel_axis=axis, return_stats=True)))


@st.composite
def instance_norm_backward(draw):
    x = draw(_input(3))
    axis, C = _instance_axis(draw, x)
    N = x.shape[0] if x.shape else 1
    use_input_stats = draw(st.booleans())
    stats = (N, C) if use_input_stats else (C,)
    return Case(draw(SEEDS), dict(
        grad_output=_grad_output(draw, x), input=x, mean=_vector(draw, stats, optional=False),
        rstd=_vector(draw, stats, "positive", optional=False), weight=_vector(draw, (C,)),
        use_input_stats=use_input_stats, channel_axis=axis),
        _forward_stats(["mean", "rstd"], lambda kw: reference.instance_norm(
            kw["input"], channel_axis=axis, return_stats=True)) if use_input_stats else None)


def _lrn_size(draw, x):
    C = x.shape[1] if len(x.shape) > 1 else 1
    return _sometimes(draw, draw(st.integers(1, C + 3)), 0)


@st.composite
def local_response_norm(draw):
    x = draw(_input(3))
    return Case(draw(SEEDS), dict(
        input=x, size=_lrn_size(draw, x), alpha=draw(st.sampled_from([1e-4, 0.5, 2.0])),
        beta=draw(st.sampled_from([0.75, 0.5, 1.0])), k=draw(st.sampled_from([1.0, 2.0])), out=_out(draw, x)))


@st.composite
def local_response_norm_backward(draw):
    x = draw(_input(3))
    return Case(draw(SEEDS), dict(
        grad_output=_grad_output(draw, x), input=x, size=_lrn_size(draw, x),
        alpha=draw(st.sampled_from([1e-4, 0.5])), beta=draw(st.sampled_from([0.75, 1.0])),
        k=draw(st.sampled_from([1.0, 2.0]))))


def _lp_arguments(draw, x):
    ndim = max(len(x.shape), 1)
    dim = draw(st.sampled_from(list(range(-ndim, ndim)) + [(0, -1)] if ndim > 1 else list(range(-ndim, ndim))))
    return dict(p=_sometimes(draw, draw(st.sampled_from([2.0, 1.0, 3.0, 0.5, math.inf])), 0.0),
                dim=_sometimes(draw, dim, ndim), eps=draw(st.sampled_from([1e-12, 0.1, 0.0])))


@st.composite
def normalize(draw):
    x = draw(_input(0))
    return Case(draw(SEEDS), dict(input=x, **_lp_arguments(draw, x), out=_out(draw, x)))


@st.composite
def normalize_backward(draw):
    x = draw(_input(0))
    return Case(draw(SEEDS), dict(grad_output=_grad_output(draw, x), input=x, **_lp_arguments(draw, x)))


@st.composite
def batch_norm_stats(draw):
    x = draw(_input(2))
    axis, _ = _channel_axis(draw, x)
    return Case(draw(SEEDS), dict(input=x, eps=draw(st.sampled_from([1e-5, 0.1])), channel_axis=axis))


@st.composite
def batch_norm_elemt(draw):
    x = draw(_input(2))
    axis, C = _channel_axis(draw, x)
    return Case(draw(SEEDS), dict(
        input=x, weight=_vector(draw, (C,)), bias=_vector(draw, (C,)), mean=_vector(draw, (C,), optional=False),
        invstd=_vector(draw, (C,), "positive", optional=False), eps=draw(st.sampled_from([1e-5, 0.1])),
        channel_axis=axis, out=_out(draw, x)))


@st.composite
def batch_norm_gather_stats_with_counts(draw):
    x = draw(_input(2))
    P, C = draw(st.integers(1, 4)), draw(st.integers(0, 5))
    counts = np.array(draw(st.lists(st.integers(0, 9), min_size=P, max_size=P)))
    running = draw(st.booleans())
    return Case(draw(SEEDS), dict(
        input=x, mean=_vector(draw, (P, C), optional=False), invstd=_vector(draw, (P, C), "positive", optional=False),
        running_mean=_vector(draw, (C,), optional=False) if running else None,
        running_var=_vector(draw, (C,), "positive", optional=False) if running else None,
        momentum=draw(st.sampled_from([0.1, 1.0, 0.0])), eps=draw(st.sampled_from([1e-5, 0.1])),
        counts=_sometimes(draw, counts, np.append(counts, 1))))


@st.composite
def batch_norm_backward_reduce(draw):
    x = draw(_input(2))
    axis, C = _channel_axis(draw, x)
    flags = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    return Case(draw(SEEDS), dict(
        grad_output=_grad_output(draw, x), input=x, mean=_vector(draw, (C,), optional=False),
        invstd=_vector(draw, (C,), "positive", optional=False), weight=_vector(draw, (C,)), input_g=flags[0],
        weight_g=flags[1], bias_g=flags[2], channel_axis=axis))


@st.composite
def batch_norm_backward_elemt(draw):
    x = draw(_input(2))
    axis, C = _channel_axis(draw, x)
    count = np.array(draw(st.lists(st.integers(0, 20), min_size=1, max_size=3))) + 1  # the whole batch's n > 0
    return Case(draw(SEEDS), dict(
        grad_output=_grad_output(draw, x), input=x, mean=_vector(draw, (C,), optional=False),
        invstd=_vector(draw, (C,), "positive", optional=False), weight=_vector(draw, (C,)),
        sum_dy=_vector(draw, (C,), optional=False), sum_dy_xmu=_vector(draw, (C,), optional=False), count=count,
        channel_axis=axis))


CASES = {f.__name__: f() for f in (batch_norm, layer_norm, rms_norm, group_norm, instance_norm, moments,
                                   batch_normalization, batch_norm_backward, layer_norm_backward,
                                   rms_norm_backward, group_norm_backward, instance_norm_backward,
                                   local_response_norm, local_response_norm_backward, normalize,
                                   normalize_backward, batch_norm_stats, batch_norm_elemt,
                                   batch_norm_gather_stats_with_counts, batch_norm_backward_reduce,
                                   batch_norm_backward_elemt)}


# --------------------------------------------------------------------------------------------------------
# The parity test
# --------------------------------------------------------------------------------------------------------

def _call(function, case):
    kwargs = case.build()
    try:
        return function(**kwargs), kwargs
    except (TypeError, ValueError) as error:
        return error, kwargs


def _largest(a):
    finite = np.abs(np.asarray(a, np.float64))
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else 0.0


def _close(ours, theirs, dtype, what, scale=1.0):
    """Within the tolerance of ``dtype`` times the largest of ``scale``, 1 and the values; the twin's
    values first rounded to a float16 result's dtype (so that both overflow alike)."""
    assert np.shape(ours) == np.shape(theirs), what
    if np.asarray(ours).dtype == np.float16:
        theirs = np.asarray(theirs).astype(np.float16)
    theirs = np.asarray(theirs, np.float64)
    scale = max(scale, 1.0, _largest(theirs))
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=0, atol=TOLERANCE[dtype] * scale,
                               err_msg=what)


def _empty_evaluation(name, kwargs):
    """Where the ops' statistics differ from the definition: with an empty input and the running
    statistics, batch_norm and instance_norm return NaN statistics instead of the running ones."""
    return (name in ("batch_norm", "instance_norm") and kwargs["input"].size == 0
            and not kwargs.get("training", kwargs.get("use_input_stats")))


def _terms(name, kwargs):
    """The size of the terms of a backward's dx, rstd * weight * dy: where they cancel (a group of equal
    values, rstd = 1 / sqrt(eps)) the rounding error is relative to them, not to dx."""
    if not name.endswith("_backward"):
        return 1.0
    rstd = kwargs.get("rstd", kwargs.get("invstd"))
    weight = kwargs.get("weight")
    return _largest(rstd) * _largest(kwargs["grad_output"]) * max(1.0, 0.0 if weight is None else _largest(weight))


def check_parity(name, case):
    ours, our_args = _call(getattr(functional, name), case)
    theirs, their_args = _call(getattr(reference, name), case)
    if isinstance(ours, Exception) or isinstance(theirs, Exception):
        assert isinstance(ours, Exception) and isinstance(theirs, Exception), \
            f"{name}: only one raised: {ours!r} / {theirs!r}"
        assert isinstance(ours, ValueError) == isinstance(theirs, ValueError), f"{name}: {ours!r} / {theirs!r}"
        return
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs), name
    if _empty_evaluation(name, our_args):
        ours, theirs = ours[:1], theirs[:1]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert (a is None) == (b is None), f"{name}: result {i}: {a!r} / {b!r}"
        if a is not None:
            _close(a, b, case.dtype, f"{name}: result {i}", _terms(name, our_args) if i == 0 else 1.0)
    if our_args.get("out") is not None:
        assert ours[0] is our_args["out"], f"{name}: does not return out"
    fresh = case.build()
    for key, value in our_args.items():
        if key in WRITABLE and value is not None:
            _close(value, their_args[key], max(case.dtype, value.dtype, key=lambda d: TOLERANCE[d]), f"{name}: {key}")
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, fresh[key], err_msg=f"{name} wrote to {key}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the twin's means over no values are NaN
@pytest.mark.parametrize("name", NAMES)
def test_matches_its_twin(name):
    assert name in CASES, f"no generated arguments for fastnorm.functional.{name}: add a strategy to CASES"

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(CASES[name])
    def check(case):
        check_parity(name, case)

    check()
