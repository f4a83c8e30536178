"""The slow twin of ``fastnorm.functional``: for every public function, a plain float64 NumPy function of
the same name and parameters, written from the definitions and short enough to trust by reading.

Forwards return float64 results (``out`` when given, filled in its dtype) and update running statistics
in place, as the ops do; backwards return float64 gradients.  Shapes the ops reject raise ValueError here
too, and non-floating input TypeError, so a test can check that both raise or neither.

The definitions, over the n values a statistic is taken of (a channel of the batch, a row, a group)::

    mean = sum(x) / n        var = sum((x - mean)**2) / n   (biased)        rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd                                 y = xhat * weight + bias

and, with dy the gradient of the output, g = weight * dy and the means over the same n values::

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))        statistics of the input (training)
    dx = rstd * g                                            frozen statistics (evaluation)
    dweight = sum(dy * xhat)      dbias = sum(dy)            over every value the parameter scales

The first dx follows from d(xhat_j)/d(x_i) = rstd * (delta_ij - 1/n - xhat_i * xhat_j / n), eps
included (Ioffe & Szegedy 2015, "Batch Normalization", section 3).  RMSNorm has no mean: xhat = x * rstd,
rstd = 1 / sqrt(mean(x**2) + eps), dx = rstd * (g - xhat * mean(g * xhat)).

The checks and the steps the twins share are in ``reference_steps``, the backwards of the normalizations
in ``reference_backward``; every twin is found here by name.
"""
import math
import numbers
import warnings

import numpy as np

from reference_steps import (_affine, _axis, _channel_axes, _channel_shape, _epilogue, _grad_input, _groups, _input,
                             _instance_axis, _kept, _mask, _require, _result, _running, _stats, _trailing, _update,
                             _vector)
# The backwards' twins, here by name with the others (tests/test_twins.py finds every twin in this module).
from reference_backward import (batch_norm_backward, group_norm_backward, instance_norm_backward,  # noqa: F401
                                layer_norm_backward, rms_norm_backward)


# ---------------------------------------------------------------------------------------------------------
# Forwards
# ---------------------------------------------------------------------------------------------------------

def batch_norm(input, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, activation=None, add=None, out=None, bessel=True,
               num_batches_tracked=None, mask=None, return_stats=False):
    """Batch normalization: Ioffe & Szegedy 2015, Algorithm 1; torch.nn.functional.batch_norm.

    Each channel (an index of the channel axis, or of the channel axes when ``channel_axis`` is a tuple:
    the parameters then of their sizes) is normalized over all the other axes (n values): with the
    batch's mean and biased variance when ``training``, with the running ones otherwise.  Training
    updates the running statistics (when given and the batch is not empty) with the batch mean and the
    unbiased variance var * n / (n - 1) (the biased one with ``bessel=False``, which allows n = 1);
    ``momentum=None`` is the cumulative average, factor 1 / (num_batches_tracked + 1).  ``return_stats``
    adds the mean and rstd used, of the parameters' shape.  ``activation``, ``add``: y = activation(y + add).
  ``mask``: the batch statistics of the values where it is True only (n their count per channel; a
    channel with none has NaN statistics and keeps its running ones; one value raises in training), every
    value normalized; with several channel axes, refused.
    """
    _require(mask is None or isinstance(channel_axis, numbers.Integral),
             "mask: not supported together with several channel axes")
    x, _ = _input(input, min_ndim=2)
    _, params, shape, others = _channel_axes(x, channel_axis)
    rm, rv = _running(running_mean, running_var, params, needed=not training)
    weight, bias = _vector(weight, "weight", params), _vector(bias, "bias", params)
    m = _mask(mask, x)
    if training:
        n, mean, var = _stats(x, m, others)
        one_value = np.any(n == 1) or (mask is None and x.size and not np.all(n > 1))
        _require(not one_value or (not bessel and mask is None),
                 f"input: expected more than 1 value per channel, got shape {x.shape}")
        if rm is not None:
            factor = 1 / (num_batches_tracked + 1) if momentum is None else momentum
            with np.errstate(invalid="ignore", divide="ignore"):
                unbiased = var * n / (n - 1) if bessel else var
            _update(running_mean, running_var, rm, rv, mean, unbiased, factor, n > 0)
    else:
        mean, var = rm, rv
    rstd = 1 / np.sqrt(var + eps)
    y = _affine((x - mean.reshape(shape)) * rstd.reshape(shape), weight, bias, shape)
    return _result(_epilogue(y, x, activation, add), out, return_stats, mean, rstd)


def _with_residual(op, input, residual, residual_out, args, kwargs):
    """``op`` on h = input + residual (the sum in the input's dtype, written to ``residual_out``), h
    returned second."""
    _require(residual is not None, "residual_out: given without residual")
    x, r = np.asarray(input), np.asarray(residual)
    if r.dtype != x.dtype:
        raise TypeError(f"residual: expected the input's dtype {x.dtype}, got {r.dtype}")
    _require(np.broadcast_shapes(r.shape, x.shape) == x.shape, f"residual: {r.shape} does not broadcast to {x.shape}")
    h = np.add(x, r, dtype=x.dtype)
    result = op(h, *args, **kwargs)
    if residual_out is not None:
        residual_out[...] = h
        h = residual_out
    return (result[0], h, *result[1:]) if isinstance(result, tuple) else (result, h)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, axes=None, activation=None, out=None,
               mask=None, residual=None, residual_out=None, return_stats=False):
    """Layer normalization: Ba, Kiros & Hinton 2016; torch.nn.functional.layer_norm.

    Each row of the trailing ``normalized_shape`` values is normalized with its mean and biased variance;
    weight and bias are elementwise (of ``normalized_shape``).  ``return_stats`` adds mean and rstd of
    the leading shape.  ``mask``: each row's statistics of the values where it is True only.
    ``residual``: h = input + residual normalized instead, and returned after y.
    """
    if residual is not None or residual_out is not None:
        return _with_residual(layer_norm, input, residual, residual_out, (normalized_shape, weight, bias, eps),
                              dict(axes=axes, activation=activation, out=out, mask=mask, return_stats=return_stats))
    _require(mask is None or axes is None, "mask: not supported together with axes")
    x, _ = _input(input)
    axes, shape = _trailing(x, normalized_shape, axes)
    weight, bias = _vector(weight, "weight", shape), _vector(bias, "bias", shape)
    _, mean, var = _stats(x, _mask(mask, x), axes, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    lead, spread = _kept(x, axes)
    return _result(_epilogue(_affine((x - mean) * rstd, weight, bias, spread), x, activation, None), out,
                   return_stats, mean.reshape(lead), rstd.reshape(lead))


def rms_norm(input, normalized_shape, weight=None, eps=None, *, axes=None, activation=None, out=None, mask=None,
             residual=None, residual_out=None, return_stats=False):
    """Root-mean-square normalization: Zhang & Sennrich 2019; torch.nn.functional.rms_norm.

    y = x / sqrt(mean(x**2) + eps) * weight over the trailing ``normalized_shape`` values; ``eps=None``
    is the machine epsilon of the dtype the input is computed in (float32 for float16 input, as PyTorch).
    ``return_stats`` adds rstd = 1 / sqrt(mean(x**2) + eps).  ``mask``: the mean of x**2 over the values
    where it is True only.  ``residual``: as layer_norm's.
    """
    if residual is not None or residual_out is not None:
        return _with_residual(rms_norm, input, residual, residual_out, (normalized_shape, weight, eps),
                              dict(axes=axes, activation=activation, out=out, mask=mask, return_stats=return_stats))
    _require(mask is None or axes is None, "mask: not supported together with axes")
    x, dtype = _input(input)
    axes, shape = _trailing(x, normalized_shape, axes)
    weight = _vector(weight, "weight", shape)
    if eps is None:
        eps = float(np.finfo(np.float32 if dtype == np.float16 else dtype).eps)
    _, square, _ = _stats(x * x, _mask(mask, x), axes, keepdims=True)
    rstd = 1 / np.sqrt(square + eps)
    lead, spread = _kept(x, axes)
    return _result(_epilogue(_affine(x * rstd, weight, None, spread), x, activation, None), out, return_stats,
                   rstd.reshape(lead))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, activation=None, add=None,
               out=None, mask=None, return_stats=False):
    """Group normalization: Wu & He 2018; torch.nn.functional.group_norm.

    The C channels (axis 1, or the last axis with ``channel_axis=-1``) form ``num_groups`` groups of
    C / G; each (sample, group) is normalized over its channels' values with its mean and biased variance.
    Weight and bias are per channel.  ``return_stats`` adds mean and rstd of shape (N, G).  ``mask``: each
    group's statistics of the values where it is True only.
    """
    x, _ = _input(input, min_ndim=2)
    grouped, axis = _groups(x, num_groups, channel_axis)
    C = x.shape[axis]
    weight, bias = _vector(weight, "weight", (C,)), _vector(bias, "bias", (C,))
    _, mean, var = _stats(grouped, _groups(_mask(mask, x), num_groups, channel_axis)[0], (2, 3), keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xhat = np.moveaxis(((grouped - mean) * rstd).reshape(np.moveaxis(x, axis, 1).shape), 1, axis)
    y = _epilogue(_affine(xhat, weight, bias, _channel_shape(x.ndim, axis)), x, activation, add)
    return _result(y, out, return_stats, mean.reshape(mean.shape[:2]), rstd.reshape(rstd.shape[:2]))


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, activation=None, add=None, out=None, mask=None,
                  return_stats=False):
    """Instance normalization: Ulyanov, Vedaldi & Lempitsky 2016; torch.nn.functional.instance_norm.

    Each (sample, channel) of (N, C, spatial...) is normalized over its S spatial values with its mean and
    biased variance (``use_input_stats``), or every sample with the running statistics.  With input
    statistics the running ones (when given and the batch is not empty) are updated with the batch means
    of the instance means and of the unbiased instance variances var * S / (S - 1).  ``return_stats``
    adds the mean and rstd used: (N, C) with input statistics, (C,) without.  ``mask``: each instance's
    statistics of the values where it is True only (S their count); the running statistics the mean over
    the instances that have values (a channel with none keeps its running ones); one value raises.  ``channel_axis``:
    where the channels are (any axis but 0), as if moved to axis 1 (with ``mask``, 1 only).
    """
    _require(mask is None or channel_axis == 1, "mask: supported with channel_axis=1 only")
    x, _ = _input(input, min_ndim=3)
    axis = _instance_axis(x, channel_axis)
    y = _instance_norm(np.moveaxis(x, axis, 1), running_mean, running_var, weight, bias, use_input_stats,
                       momentum, eps, mask)
    return _result(_epilogue(np.moveaxis(y[0], 1, axis), x, activation, add), out, return_stats, *y[1:])


def _instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, mask):
    """(y, mean, rstd) of instance_norm with the channels on axis 1."""
    C, S = x.shape[1], math.prod(x.shape[2:])
    rm, rv = _running(running_mean, running_var, (C,), needed=not use_input_stats)
    weight, bias = _vector(weight, "weight", (C,)), _vector(bias, "bias", (C,))
    if use_input_stats:
        S, mean, var = _stats(x, _mask(mask, x), tuple(range(2, x.ndim)))  # (N, C)
        _require(np.all(S != 1) and (mask is not None or x.size == 0 or np.all(S > 1)),
                 f"input: expected more than 1 spatial value, got shape {x.shape}")
        if rm is not None:
            seen = S > 0
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                batch_mean = mean.mean(axis=0, where=seen)
                batch_var = (var * S / (S - 1)).mean(axis=0, where=seen)
            _update(running_mean, running_var, rm, rv, batch_mean, batch_var, momentum, seen.any(axis=0))
    else:
        mean, var = rm, rv  # (C,)
    rstd = 1 / np.sqrt(var + eps)
    spread = (1,) * (x.ndim - 2)  # (N, C) or (C,) broadcast against (N, C, spatial...)
    xhat = (x - mean.reshape(mean.shape + spread)) * rstd.reshape(rstd.shape + spread)
    return _affine(xhat, weight, bias, (C,) + spread), mean, rstd


def moments(x, axes, keepdims=False, *, mask=None):
    """Mean and biased variance over ``axes``, as tf.nn.moments: sum(x) / n, sum((x - mean)**2) / n, over
    the values where ``mask`` is True only (n their count; NaN where it is 0)."""
    x, _ = _input(x, "x")
    axes = (axes,) if isinstance(axes, numbers.Integral) else tuple(axes)
    _, mean, var = _stats(x, _mask(mask, x), axes, keepdims)
    return mean, var


def batch_normalization(x, mean, variance, offset, scale, variance_epsilon, name=None):
    """tf.nn.batch_normalization: (x - mean) / sqrt(variance + variance_epsilon) * scale + offset, every
    argument broadcast against x; offset and scale may be None."""
    x, _ = _input(x, "x")
    y = (x - np.asarray(mean, np.float64)) / np.sqrt(np.asarray(variance, np.float64) + variance_epsilon)
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    if offset is not None:
        y = y + np.asarray(offset, np.float64)
    return y


# ---------------------------------------------------------------------------------------------------------
# Local response normalization: window of channels c - size // 2 ... c + (size - 1) // 2, zero padded
# ---------------------------------------------------------------------------------------------------------

def _lrn_input(input, size):
    _require(size >= 1, f"size: expected an integer >= 1, got {size}")
    x, dtype = _input(input, min_ndim=3)
    return x


def _lrn_denominator(x, size, alpha, k):
    """k + alpha * (the mean of x**2 over each channel's window, the padding counted)."""
    C = x.shape[1]
    padded = np.pad(x * x, [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2))
    return k + alpha * sum(padded[:, m:m + C] for m in range(size)) / size


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0, *, out=None):
    x = _lrn_input(input, size)
    return _result(x / _lrn_denominator(x, size, alpha, k) ** beta, out, False)


def local_response_norm_backward(grad_output, input, size, alpha=1e-4, beta=0.75, k=1.0):
    """dy_c/dx_j = [j == c] d_c**-beta - beta d_c**(-beta - 1) * alpha / size * 2 x_j for j in c's window."""
    _lrn_input(input, size)
    dy, x = _grad_input(grad_output, input, min_ndim=3)
    d = _lrn_denominator(x, size, alpha, k)
    through_d = dy * x * -beta * d ** (-beta - 1)       # dL/dd_c
    dx = dy * d ** -beta
    C = x.shape[1]
    for c in range(C):
        for j in range(max(c - size // 2, 0), min(c + (size - 1) // 2 + 1, C)):
            dx[:, j] += through_d[:, c] * alpha / size * 2 * x[:, j]
    return dx


# ---------------------------------------------------------------------------------------------------------
# Lp normalization: y = x / max(||x||_p, eps) along dim
# ---------------------------------------------------------------------------------------------------------

def _lp(input, p, dim, eps):
    """(x with at least one axis, its axes dim, ||x||_p over them): a 0-D input has one axis."""
    x, _ = _input(input)
    _require(p > 0, f"p: expected a positive number or inf, got {p}")
    _require(0 <= eps < math.inf, f"eps: expected a finite number >= 0, got {eps}")
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    axes = tuple(_axis(d, max(x.ndim, 1), "dim") for d in dims)
    _require(axes and len(set(axes)) == len(axes), f"dim: expected one axis or distinct axes, got {dim}")
    x = x.reshape(x.shape or (1,))
    if p == math.inf:
        return x, axes, np.max(np.abs(x), axis=axes, keepdims=True, initial=0.0)
    return x, axes, np.sum(np.abs(x) ** p, axis=axes, keepdims=True) ** (1 / p)


def normalize(input, p=2.0, dim=1, eps=1e-12, *, out=None):
    x, axes, norm = _lp(input, p, dim, eps)
    return _result((x / np.maximum(norm, eps)).reshape(np.shape(input)), out, False)


def normalize_backward(grad_output, input, p=2.0, dim=1, eps=1e-12):
    """dx = dy / d - sum(dy * x) / d**2 * dn/dx, d = max(n, eps) (dn/dx = 0 where n < eps: d is eps);
    dn/dx = sign(x) |x|**(p - 1) / n**(p - 1), or for p = inf the maxima's sign shared among them."""
    x, axes, n = _lp(input, p, dim, eps)
    dy, _ = _grad_input(grad_output, input)
    dy = dy.reshape(x.shape)
    d = np.maximum(n, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        if p == math.inf:
            top = np.abs(x) == n
            dn = np.sign(x) * top / top.sum(axis=axes, keepdims=True)
        else:
            dn = np.where((x != 0) & (n > 0), np.sign(x) * np.abs(x) ** (p - 1) / n ** (p - 1), 0.0)
    dx = dy / d - np.sum(dy * x, axis=axes, keepdims=True) / d ** 2 * np.where(n >= eps, dn, 0.0)
    return dx.reshape(np.shape(input))


# ---------------------------------------------------------------------------------------------------------
# The steps of a batch split across processes (PyTorch's SyncBatchNorm): over the values of a channel
# ---------------------------------------------------------------------------------------------------------

def _channels(x, channel_axis):
    """The channel axis, the channel count, the other axes and the shape that broadcasts a (C,) vector."""
    axis = _axis(channel_axis, x.ndim)
    return axis, x.shape[axis], tuple(a for a in range(x.ndim) if a != axis), _channel_shape(x.ndim, axis)


def batch_norm_stats(input, eps, *, channel_axis=1):
    """torch.batch_norm_stats: the (C,) mean and 1 / sqrt(biased variance + eps) of each channel."""
    x, _ = _input(input, min_ndim=2)
    _, _, others, _ = _channels(x, channel_axis)
    return x.mean(axis=others), 1 / np.sqrt(x.var(axis=others) + eps)


def batch_norm_elemt(input, weight, bias, mean, invstd, eps, *, channel_axis=1, out=None):
    """torch.batch_norm_elemt: (x - mean) * invstd * weight + bias per channel (eps unused)."""
    x, _ = _input(input, min_ndim=2)
    _, C, _, shape = _channels(x, channel_axis)
    weight, bias = _vector(weight, "weight", (C,)), _vector(bias, "bias", (C,))
    mean, invstd = _vector(mean, "mean", (C,)), _vector(invstd, "invstd", (C,))
    return _result(_affine((x - mean.reshape(shape)) * invstd.reshape(shape), weight, bias, shape), out, False)


def batch_norm_gather_stats_with_counts(input, mean, invstd, running_mean, running_var, momentum, eps, counts):
    """torch.batch_norm_gather_stats_with_counts: the mean and invstd of the union of P slices given
    their (P, C) means, invstds (variance 1 / invstd**2 - eps) and (P,) counts, by the definition
    n = sum(n_p), mean = sum(n_p * mean_p) / n, var = sum(n_p * (var_p + (mean_p - mean)**2)) / n; the
    running statistics updated as batch_norm's with the unbiased var * n / (n - 1)."""
    _input(input)
    means = np.array(mean, dtype=np.float64)
    _require(means.ndim == 2 and len(means) >= 1, f"mean: expected shape (P, C), got {means.shape}")
    P, C = means.shape
    invstds, n_p = _vector(invstd, "invstd", (P, C)), _vector(counts, "counts", (P,)).reshape(P, 1)
    _require(np.all(n_p >= 0), "counts: expected numbers >= 0")
    rm, rv = _running(running_mean, running_var, (C,), needed=False)
    var_p = np.maximum(1 / invstds**2 - eps, 0.0)
    n = n_p.sum()
    mean = (n_p * means).sum(axis=0) / n
    var = (n_p * (var_p + (means - mean) ** 2)).sum(axis=0) / n
    if rm is not None and n > 0:
        _require(n > 1, "counts: expected more than 1 value in all")
        _update(running_mean, running_var, rm, rv, mean, var * n / (n - 1), momentum)
    return mean, 1 / np.sqrt(var + eps)


def batch_norm_backward_reduce(grad_output, input, mean, invstd, weight, input_g, weight_g, bias_g, *, channel_axis=1):
    """torch.batch_norm_backward_reduce: (sum(dy), sum(dy * (x - mean)), grad_weight = sum(dy * xhat),
    grad_bias = sum(dy)) per channel, each None where its flag is False."""
    dy, x = _grad_input(grad_output, input, min_ndim=2)
    _, C, others, shape = _channels(x, channel_axis)
    mean, invstd = _vector(mean, "mean", (C,)), _vector(invstd, "invstd", (C,))
    _vector(weight, "weight", (C,))
    xmu = x - mean.reshape(shape)
    sum_dy, sum_dy_xmu = dy.sum(axis=others), (dy * xmu).sum(axis=others)
    return (sum_dy if input_g else None, sum_dy_xmu if input_g else None,
            (dy * xmu * invstd.reshape(shape)).sum(axis=others) if weight_g else None, sum_dy if bias_g else None)


def batch_norm_backward_elemt(grad_output, input, mean, invstd, weight, sum_dy, sum_dy_xmu, count, *,
                              channel_axis=1):
    """torch.batch_norm_backward_elemt: dx = (dy - sum_dy / n - (x - mean) * invstd**2 * sum_dy_xmu / n)
    * weight * invstd, n the sum of ``count``: the module docstring's training dx, its means taken over
    the n values of the channel in every slice."""
    dy, x = _grad_input(grad_output, input, min_ndim=2)
    _, C, _, shape = _channels(x, channel_axis)
    mean, invstd, sum_dy, sum_dy_xmu = (_vector(v, name, (C,)).reshape(shape) for v, name in (
        (mean, "mean"), (invstd, "invstd"), (sum_dy, "sum_dy"), (sum_dy_xmu, "sum_dy_xmu")))
    weight = _vector(weight, "weight", (C,))
    counts = np.asarray(count, dtype=np.float64)
    _require(np.all(counts >= 0), "count: expected numbers >= 0")
    n = counts.sum()
    g = (dy - sum_dy / n - (x - mean) * invstd**2 * sum_dy_xmu / n) * invstd
    return g if weight is None else g * weight.reshape(shape)
