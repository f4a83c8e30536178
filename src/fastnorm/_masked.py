"""The masked forms of the functions (``mask=``, or a ``numpy.ma`` input): the statistics are taken over
the values where the mask is True only, and the output is defined everywhere, every value normalized
with them (Flax's ``mask`` semantics).

A function dispatches here when it is given a mask.  The arguments are checked by ``_validation`` as in
the unmasked call; the statistics are computed in float64 NumPy in two passes (the mean, then the squared
deviations from it), so data far from zero keeps its accuracy, and every value is normalized in float64
and rounded once to the result dtype (float16 and bfloat16: to float32 first, as the float32 call's).
Values masked out never reach a statistic, not even as a NaN or an infinity: padding does not leak.
A forward writes nothing: it returns its output and the running statistics' new values (a
:class:`Pending`), and its caller writes them after the activation and ``add``, in one C call.

Counts (the masked-in values of a statistic), documented in the functions:

* 0: the statistic is NaN (the statistics of no value, as an empty input's) and so is the output it
  normalizes; a running statistic is left as it is;
* 1 in training (``batch_norm``, ``instance_norm`` with input statistics): a ValueError, as the unmasked
  call with one value per channel (the unbiased variance of one value is undefined);
* otherwise the running statistics are updated with the masked count: the mean and the variance times
  ``count / (count - 1)``.

The gradients follow from the same definition: with ``m`` the mask, ``n = sum(m)`` and
``g = weight * dy`` over a statistic's values (all of them: every output depends on the statistics),

    dx = rstd * (g - m * (sum(g) / n + xhat * sum(g * xhat) / n))

since ``d mean / d x_j = m_j / n`` and ``d var / d x_j = 2 m_j (x_j - mean) / n`` (RMSNorm: no
``sum(g)`` term, ``xhat = x * rstd``).  With frozen statistics ``dx = rstd * g``, whatever the mask.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._validation import (FloatArray, Shape, Stats, _as_input, _batch_norm_args, _channel_vector, _check_channels,
                          _check_eps, _check_mask, _check_ndim, _check_normalized_shape, _compute_dtype,
                          _elementwise_vector, _group_norm_args, _group_norm_layout, _instance_norm_args,
                          _normalize_axes, _rms_eps, _rounded, _stat_vector)

Mask = NDArray[np.bool_]


class Pending(NamedTuple):
    """A masked forward computed with nothing written yet (its caller applies the epilogue, then writes
    ``out=`` and the running statistics in one C call, ``_epilogue._normalize_then_activate``)."""
    y: FloatArray      # a new C-contiguous array in the dtype the input is computed in (float32 for halves)
    dtype: np.dtype[Any]  # the result dtype
    mean: Stats
    rstd: Stats
    running: Tuple[Tuple[FloatArray, Stats], ...]  # (running statistic, its new values in float64)


def is_masked(input: object, mask: object) -> bool:
    """Whether a call takes the masked path: a ``mask`` given, or a ``numpy.ma`` input."""
    return mask is not None or isinstance(input, np.ma.MaskedArray)


def _masked_input(input: object, mask: object, name: str = "input") -> Tuple[Stats, np.dtype[Any], FloatArray, Mask]:
    """(x in float64, result dtype, x as computed, the mask broadcast to x's shape): a ``numpy.ma`` input
    is its data with ``mask = ~getmaskarray(input)``, and'ed with ``mask`` where both are given."""
    valid = None
    if isinstance(input, np.ma.MaskedArray):
        valid = ~np.ma.getmaskarray(input)
        input = np.ma.getdata(input)
    x, dtype = _as_input(input, name)
    m = np.ones(x.shape, bool) if mask is None else _check_mask(mask, x.shape)
    if valid is not None:
        m = m & valid
    return x.astype(np.float64), dtype, x, m


def _stats(x: Stats, m: Mask, axes: Tuple[int, ...], centered: bool = True) -> Tuple[Stats, Stats, Stats]:
    """(count, mean, biased variance) over ``axes`` of the values where ``m`` is True, keepdims, float64,
    in two passes; NaN where the count is 0.  Uncentered: the mean is 0 and the variance the mean square."""
    count = np.count_nonzero(m, axis=axes, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.where(m, x, 0.0).sum(axis=axes, keepdims=True) / count if centered
                else np.where(count > 0, 0.0, np.nan))
        deviation = np.where(m, x - mean, 0.0)
        var = (deviation * deviation).sum(axis=axes, keepdims=True) / count
    return count, mean, var


def _computed(y: Stats, dtype: np.dtype[Any]) -> FloatArray:
    """A float64 output or gradient as the unmasked call computes it before its result dtype ``dtype``: in
    the dtype the input is computed in (float32 for float16 and bfloat16), a new C-contiguous array."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(y, dtype=_compute_dtype(dtype))


def _as_unmasked(y: Stats, dtype: np.dtype[Any]) -> FloatArray:
    """A float64 gradient as the unmasked call gives it: :func:`_computed`, then rounded to ``dtype``; so a
    half result is the float32 call's rounded, bit for bit (a direct rounding of the float64 value differs
    from that on rare ties)."""
    return _rounded(_computed(y, dtype), dtype)


def _normalized(x: Stats, mean: Stats, rstd: Stats, weight: Optional[Stats], bias: Optional[Stats]) -> Stats:
    """``(x - mean) * rstd * weight + bias`` in float64, every argument broadcast against x."""
    with np.errstate(invalid="ignore"):
        y = (x - mean) * rstd
        if weight is not None:
            y = y * weight
        return y if bias is None else y + bias


def _rstd(var: Stats, eps: float) -> Stats:
    return 1.0 / np.sqrt(var + eps)


def _shaped(v: Optional[FloatArray], shape: Tuple[int, ...]) -> Optional[Stats]:
    return None if v is None else v.astype(np.float64).reshape(shape)


def _check_counts(count: Stats, what: str) -> None:
    """Training needs more than one masked-in value per statistic that has any (see the module)."""
    if np.any(count == 1):
        raise ValueError(f"mask: expected more than 1 value masked in per {what} when training (or none), got 1 "
                         f"in {int(np.count_nonzero(count == 1))} of them")


def _new_running(buffers: Optional[Tuple[FloatArray, FloatArray]], factor: float, mean: Stats, var: Stats,
                 count: Stats, bessel: bool) -> Tuple[Tuple[FloatArray, Stats], ...]:
    """(buffer, new values) of the running statistics (C,) updated with (K, C) statistics of counts
    ``count``: each channel with the mean over its K statistics that have values (the unbiased variances
    with ``bessel``); a channel with none keeps its running statistics.  Computed in float64, to be
    stored in the buffers' own dtype."""
    if buffers is None:
        return ()
    seen = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        unbiased = var * count / (count - 1) if bessel else var
        used = seen.sum(axis=0)
        batch = [np.where(seen, v, 0.0).sum(axis=0) / used for v in (mean, unbiased)]
    channels = used > 0
    old = [buffer.astype(np.float64) for buffer in buffers]  # both read before either is written
    return tuple((buffer, np.where(channels, (1.0 - factor) * v + factor * value, v))
                 for buffer, v, value in zip(buffers, old, batch))


def _flat(a: Stats) -> Stats:
    return np.ascontiguousarray(a.reshape(-1))


# ---------------------------------------------------------------------------------------------------------
# Forwards
# ---------------------------------------------------------------------------------------------------------

def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
               weight: Optional[ArrayLike], bias: Optional[ArrayLike], training: bool, momentum: Optional[float],
               eps: float, channel_axis: Any, bessel: bool, num_batches_tracked: Optional[int],
               mask: object) -> Pending:
    """:func:`fastnorm.batch_norm` with a mask (statistics: mean, invstd)."""
    x64, dtype, x, m = _masked_input(input, mask)
    training = bool(training)
    axis, C, eps, w, b, buffers, frozen, factor = _batch_norm_args(x, channel_axis, running_mean, running_var, weight,
                                                                   bias, training, momentum, eps, num_batches_tracked)
    shape = tuple(C if a == axis else 1 for a in range(x.ndim))
    running: Tuple[Tuple[FloatArray, Stats], ...] = ()
    if frozen is not None:
        mean, var = (v.astype(np.float64).reshape(shape) for v in frozen)
    else:
        count, mean, var = _stats(x64, m, tuple(a for a in range(x.ndim) if a != axis))
        _check_counts(count, "channel")
        running = _new_running(buffers, factor, mean.reshape(1, C), var.reshape(1, C), count.reshape(1, C), bessel)
    rstd = _rstd(var, eps)
    y = _normalized(x64, mean, rstd, _shaped(w, shape), _shaped(b, shape))
    return Pending(_computed(y, dtype), dtype, _flat(mean), _flat(rstd), running)


def rows_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike],
              bias: Optional[ArrayLike],
              eps: Optional[float], rms: bool, mask: object) -> Pending:
    """:func:`fastnorm.layer_norm` or :func:`fastnorm.rms_norm` (``rms``) with a mask, the statistics of the
    input's leading shape."""
    x64, dtype, x, m = _masked_input(input, mask)
    shape = _check_normalized_shape(normalized_shape, x)
    w = _elementwise_vector(weight, "weight", shape, x)
    b = _elementwise_vector(bias, "bias", shape, x)
    eps = _check_eps(_rms_eps(eps, x.dtype) if rms else eps)
    lead = x.shape[:x.ndim - len(shape)]
    _, mean, var = _stats(x64, m, tuple(range(len(lead), x.ndim)), centered=not rms)
    rstd = _rstd(var, eps)
    y = _normalized(x64, mean, rstd, _shaped(w, shape), _shaped(b, shape))
    return Pending(_computed(y, dtype), dtype, mean.reshape(lead), rstd.reshape(lead), ())


def _grouped(a: NDArray[Any], axis: int, G: int) -> NDArray[Any]:
    """An (N, C, ...) or (N, ..., C) array as (N, G, C / G, S)."""
    moved = np.moveaxis(a, axis, 1)
    N, C = moved.shape[:2]
    return moved.reshape(N, G, C // G, math.prod(moved.shape[2:]))


def _ungrouped(a: Stats, shape: Tuple[int, ...], axis: int) -> Stats:
    """The inverse of :func:`_grouped` for an array of x's ``shape``."""
    moved = list(shape)
    moved.insert(1, moved.pop(axis))
    return np.moveaxis(a.reshape(moved), 1, axis)


def group_norm(input: ArrayLike, num_groups: Any, weight: Optional[ArrayLike], bias: Optional[ArrayLike],
               eps: float, channel_axis: Any, mask: object) -> Pending:
    """:func:`fastnorm.group_norm` with a mask, the statistics of shape (N, G)."""
    x64, dtype, x, m = _masked_input(input, mask)
    axis, G, C, w, b, eps = _group_norm_args(x, num_groups, weight, bias, eps, channel_axis)
    grouped = _grouped(x64, axis, G)
    _, mean, var = _stats(grouped, _grouped(m, axis, G), (2, 3))
    rstd = _rstd(var, eps)
    params = (1, G, C // G, 1)
    y = _normalized(grouped, mean, rstd, _shaped(w, params), _shaped(b, params))
    N = x.shape[0]
    return Pending(_computed(_ungrouped(y, x.shape, axis), dtype), dtype, mean.reshape(N, G), rstd.reshape(N, G), ())


def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                  weight: Optional[ArrayLike], bias: Optional[ArrayLike], use_input_stats: bool, momentum: float,
                  eps: float, mask: object) -> Pending:
    """:func:`fastnorm.instance_norm` with a mask, the statistics (N, C) with input statistics, the
    running (C,) ones without."""
    x64, dtype, x, m = _masked_input(input, mask)
    use_input_stats = bool(use_input_stats)
    eps, w, b, buffers, frozen, factor = _instance_norm_args(x, running_mean, running_var, weight, bias,
                                                             use_input_stats, momentum, eps)
    N, C = x.shape[:2]
    spread = (1,) * (x.ndim - 2)
    running: Tuple[Tuple[FloatArray, Stats], ...] = ()
    if frozen is not None:
        mean, var = (v.astype(np.float64).reshape((C,) + spread) for v in frozen)
        stats_shape: Tuple[int, ...] = (C,)
    else:
        count, mean, var = _stats(x64, m, tuple(range(2, x.ndim)))
        _check_counts(count, "instance")
        running = _new_running(buffers, factor, mean.reshape(N, C), var.reshape(N, C), count.reshape(N, C), True)
        stats_shape = (N, C)
    rstd = _rstd(var, eps)
    y = _normalized(x64, mean, rstd, _shaped(w, (C,) + spread), _shaped(b, (C,) + spread))
    return Pending(_computed(y, dtype), dtype, mean.reshape(stats_shape), rstd.reshape(stats_shape), running)


def moments(x: ArrayLike, axes: Shape, keepdims: bool, mask: object) -> Tuple[FloatArray, FloatArray]:
    """:func:`fastnorm.moments` with a mask: the mean and biased variance of the masked-in values."""
    x64, dtype, a, m = _masked_input(x, mask, "x")
    reduced = _normalize_axes(axes, a.ndim)
    _, mean, var = _stats(x64, m, reduced)
    if not keepdims:
        mean, var = (v.reshape(tuple(n for i, n in enumerate(a.shape) if i not in reduced)) for v in (mean, var))
    return mean.astype(dtype), var.astype(dtype)


# ---------------------------------------------------------------------------------------------------------
# Backwards
# ---------------------------------------------------------------------------------------------------------

def _grad_inputs(grad_output: ArrayLike, input: ArrayLike, mask: object) -> Tuple[Stats, Stats, np.dtype[Any],
                                                                                   FloatArray, Mask]:
    """(dy, x in float64, result dtype, x as computed, mask) of a masked backward."""
    x64, dtype, x, m = _masked_input(input, mask)
    g, _ = _as_input(grad_output, "grad_output")
    if g.shape != x.shape:
        raise ValueError(f"grad_output: expected shape {x.shape} (the input's), got {g.shape}")
    return g.astype(np.float64), x64, dtype, x, m


def _grads(dy: Stats, x: Stats, m: Mask, mean: Stats, rstd: Stats, weight: Optional[Stats], axes: Tuple[int, ...],
           training: bool, centered: bool, eps: Optional[float]) -> Tuple[Stats, Stats]:
    """(dx, xhat) of ``y = (x - mean) * rstd * weight``, the statistics those of the values where ``m`` is
    True over ``axes`` (the module's formula); frozen ones without ``training``.  Given the forward's
    ``eps``, the input must have the statistics given (RuntimeError, as the unmasked backwards)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        xhat = (x - mean) * rstd
        g = dy if weight is None else dy * weight
        if not training:
            return rstd * g, xhat
        if eps is not None:
            _check_unmodified(xhat, m, axes, rstd, _check_eps(eps), centered)
        n = np.count_nonzero(m, axis=axes, keepdims=True)
        through = xhat * (g * xhat).sum(axis=axes, keepdims=True) / n
        if centered:
            through = through + g.sum(axis=axes, keepdims=True) / n
        return rstd * (g - np.where(m, through, 0.0)), xhat


def _check_unmodified(xhat: Stats, m: Mask, axes: Tuple[int, ...], rstd: Stats, eps: float, centered: bool) -> None:
    """The masked-in xhat of the input the statistics came from have mean 0 and variance
    ``1 - eps * rstd**2`` (uncentered: mean square); otherwise it was modified after the forward."""
    _, m1, q = _stats(xhat, m, axes, centered)
    bad = (np.abs(np.nan_to_num(m1)) > 1e-3) | (np.abs(q - (1 - eps * rstd * rstd)) > 1e-3)
    if np.any(bad & (np.count_nonzero(m, axis=axes, keepdims=True) > 0)):
        raise RuntimeError("input: one of the variables needed for gradient computation has been modified by an "
                           "inplace operation, or the statistics are another input's")


def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: Optional[ArrayLike], training: bool, channel_axis: Any, eps: Optional[float],
                        mask: object) -> Tuple[FloatArray, Stats, Stats]:
    """:func:`fastnorm.batch_norm_backward` with a mask."""
    dy, x64, dtype, x, m = _grad_inputs(grad_output, input, mask)
    axis, C = _check_channels(x, channel_axis)
    shape = tuple(C if a == axis else 1 for a in range(x.ndim))
    mean_, invstd_ = (_stat_vector(v, name, (C,)).reshape(shape) for v, name in ((mean, "mean"), (invstd, "invstd")))
    w = _shaped(_channel_vector(weight, "weight", C, x.dtype), shape)
    others = tuple(a for a in range(x.ndim) if a != axis)
    dx, xhat = _grads(dy, x64, m, mean_, invstd_, w, others, bool(training), True, eps)
    return _as_unmasked(dx, dtype), (dy * xhat).sum(axis=others), dy.sum(axis=others)


def rows_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape],
                  mean: Optional[ArrayLike],
                  rstd: ArrayLike, weight: Optional[ArrayLike], bias: Optional[ArrayLike], rms: bool,
                  eps: Optional[float], mask: object) -> Tuple[FloatArray, Stats, Stats]:
    """:func:`fastnorm.layer_norm_backward` or :func:`fastnorm.rms_norm_backward` (``rms``) with a mask."""
    dy, x64, dtype, x, m = _grad_inputs(grad_output, input, mask)
    shape = _check_normalized_shape(normalized_shape, x)
    lead = x.shape[:x.ndim - len(shape)]
    stats = lead + (1,) * len(shape)
    rstd_ = _stat_vector(rstd, "rstd", lead).reshape(stats)
    mean_ = np.zeros(stats) if rms else _stat_vector(mean, "mean", lead).reshape(stats)
    w = _shaped(_elementwise_vector(weight, "weight", shape, x), shape)
    _elementwise_vector(bias, "bias", shape, x)  # only its presence matters; checked as the forward's
    dx, xhat = _grads(dy, x64, m, mean_, rstd_, w, tuple(range(len(lead), x.ndim)), True, not rms, eps)
    outer = tuple(range(len(lead)))
    return _as_unmasked(dx, dtype), (dy * xhat).sum(axis=outer), dy.sum(axis=outer)


def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, num_groups: Any, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike], channel_axis: Any, eps: Optional[float],
                        mask: object) -> Tuple[FloatArray, Stats, Stats]:
    """:func:`fastnorm.group_norm_backward` with a mask."""
    dy, x64, dtype, x, m = _grad_inputs(grad_output, input, mask)
    axis, G, C = _group_norm_layout(x, num_groups, channel_axis)
    N = x.shape[0]
    mean_, rstd_ = (_stat_vector(v, name, (N, G)).reshape(N, G, 1, 1) for v, name in ((mean, "mean"), (rstd, "rstd")))
    w = _shaped(_channel_vector(weight, "weight", C, x.dtype), (1, G, C // G, 1))
    gy = _grouped(dy, axis, G)
    dx, xhat = _grads(gy, _grouped(x64, axis, G), _grouped(m, axis, G), mean_, rstd_, w, (2, 3), True, True, eps)
    return (_as_unmasked(_ungrouped(dx, x.shape, axis), dtype), (gy * xhat).sum(axis=(0, 3)).reshape(C),
            gy.sum(axis=(0, 3)).reshape(C))


def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                           weight: Optional[ArrayLike], use_input_stats: bool, eps: Optional[float],
                           mask: object) -> Tuple[FloatArray, Stats, Stats]:
    """:func:`fastnorm.instance_norm_backward` with a mask."""
    dy, x64, dtype, x, m = _grad_inputs(grad_output, input, mask)
    _check_ndim(x, 3, "(N, C, spatial...)")
    N, C = x.shape[:2]
    shape = (N, C) if use_input_stats else (C,)
    spread = (1,) * (x.ndim - 2)
    mean_, rstd_ = (_stat_vector(v, name, shape).reshape(shape + spread) for v, name in ((mean, "mean"),
                                                                                           (rstd, "rstd")))
    w = _shaped(_channel_vector(weight, "weight", C, x.dtype), (C,) + spread)
    spatial = tuple(range(2, x.ndim))
    dx, xhat = _grads(dy, x64, m, mean_, rstd_, w, spatial, bool(use_input_stats), True, eps)
    return _as_unmasked(dx, dtype), (dy * xhat).sum(axis=(0,) + spatial), dy.sum(axis=(0,) + spatial)
