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
"""
import math
import numbers
import warnings

import numpy as np


# ---------------------------------------------------------------------------------------------------------
# Checks (what the ops reject, written plainly) and shared steps
# ---------------------------------------------------------------------------------------------------------

def _require(condition, message):
    if not condition:
        raise ValueError(message)


def _input(x, name="input", min_ndim=0):
    """x as float64 (TypeError unless floating point), with its dtype."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    _require(a.ndim >= min_ndim, f"{name}: expected at least {min_ndim} dimensions, got shape {a.shape}")
    return a.astype(np.float64), a.dtype


def _grad_input(grad_output, input, min_ndim=0):
    x, _ = _input(input, min_ndim=min_ndim)
    dy, _ = _input(grad_output, "grad_output")
    _require(dy.shape == x.shape, f"grad_output: expected shape {x.shape}, got {dy.shape}")
    return dy, x


def _axis(axis, ndim, name="channel_axis"):
    _require(-ndim <= axis < ndim, f"{name}: axis {axis} out of range for {ndim} dimensions")
    return axis % ndim


def _vector(v, name, shape):
    """A parameter or statistic as a float64 copy of the given shape (None stays None)."""
    if v is None:
        return None
    a = np.array(v, dtype=np.float64)
    _require(a.shape == shape, f"{name}: expected shape {shape}, got {a.shape}")
    return a


def _running(running_mean, running_var, shape, needed):
    rm, rv = _vector(running_mean, "running_mean", shape), _vector(running_var, "running_var", shape)
    _require((rm is None) == (rv is None), "running_mean, running_var: expected both or neither")
    _require(rm is not None or not needed, "running_mean, running_var: required without batch statistics")
    return rm, rv


def _update(running_mean, running_var, rm, rv, mean, unbiased_var, factor, seen=True):
    """running = (1 - factor) * running + factor * batch, in place (the PyTorch convention), in the
    channels ``seen`` (those with masked-in values) only."""
    running_mean[...] = np.where(seen, (1 - factor) * rm + factor * mean, rm)
    running_var[...] = np.where(seen, (1 - factor) * rv + factor * unbiased_var, rv)


def _mask(mask, x):
    """``mask`` broadcast to x's shape (all True for None): TypeError unless boolean, ValueError unless it
    broadcasts."""
    if mask is None:
        return np.ones(x.shape, bool)
    m = np.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"mask: expected a boolean array, got dtype {m.dtype}")
    try:
        return np.broadcast_to(m, x.shape)
    except ValueError:
        raise ValueError(f"mask: shape {m.shape} does not broadcast to {x.shape}") from None


def _stats(x, m, axes, keepdims=False):
    """(count, mean, biased variance) of the values where ``m`` is True over ``axes``: NumPy's mean and var
    with ``where=`` (NaN where the count is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (m.sum(axis=axes, keepdims=keepdims), x.mean(axis=axes, keepdims=keepdims, where=m),
                x.var(axis=axes, keepdims=keepdims, where=m))


def _affine(xhat, weight, bias, shape):
    """xhat * weight + bias, the parameters reshaped to ``shape`` to broadcast."""
    y = xhat if weight is None else xhat * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _result(y, out, return_stats, *stats):
    if out is not None:
        out[...] = y
        y = out
    return (y, *stats) if return_stats else y


_ERF = np.vectorize(math.erf, otypes=[np.float64])
_K0, _K1 = math.sqrt(2 / math.pi), 0.044715  # gelu_tanh: tanh(_K0 * (z + _K1 * z**3))
# Each activation and its derivative, from the definitions (PyTorch's functions of the same names).
_ACTIVATIONS = {
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "relu6": (lambda z: np.clip(z, 0.0, 6.0), lambda z: ((z > 0) & (z < 6)).astype(np.float64)),
    "silu": (lambda z: z / (1 + np.exp(-z)),
             lambda z: 1 / (1 + np.exp(-z)) * (1 + z * (1 - 1 / (1 + np.exp(-z))))),
    "gelu": (lambda z: z / 2 * (1 + _ERF(z / math.sqrt(2))),
             lambda z: (1 + _ERF(z / math.sqrt(2))) / 2 + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (lambda z: z / 2 * (1 + np.tanh(_K0 * (z + _K1 * z ** 3))),
                  lambda z: (1 + np.tanh(_K0 * (z + _K1 * z ** 3))) / 2
                  + z / 2 * (1 - np.tanh(_K0 * (z + _K1 * z ** 3)) ** 2) * _K0 * (1 + 3 * _K1 * z * z)),
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
}


def _activation(activation):
    _require(activation is None or activation in _ACTIVATIONS, f"activation: expected one of {list(_ACTIVATIONS)}")
    return _ACTIVATIONS.get(activation)


def _add(add, x):
    """``add=`` as float64 of x's shape (broadcast)."""
    if add is None:
        return None
    a = np.asarray(add)
    if a.dtype.kind != "f":
        raise TypeError(f"add: expected a floating-point array, got dtype {a.dtype}")
    try:
        return np.broadcast_to(a.astype(np.float64), x.shape)
    except ValueError:
        raise ValueError(f"add: expected a shape that broadcasts to {x.shape}, got {a.shape}") from None


def _epilogue(y, x, activation, add):
    """y = act(y + add): the forward's ``activation`` and ``add``, in float64."""
    act, a = _activation(activation), _add(add, x)
    y = y if a is None else y + a
    return y if act is None else act[0](y)


def _through(backward, dy, x, z, activation, add):
    """A backward through ``act(z)``, z = norm(x) + add the pre-activation: ``backward(dz)`` with
    dz = dy * act'(z), and dz appended as the gradient of ``add`` when it is given."""
    act, a = _activation(activation), _add(add, x)
    if act is None and a is None:
        return backward(dy)
    if a is not None:
        z = z + a
    dz = dy if act is None else dy * act[1](z)
    return (*backward(dz), dz) if a is not None else backward(dz)


def _channel_shape(ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def _axes(x, axes, name):
    """Several distinct axes of x (at least one), sorted, and their sizes: the parameters' shape."""
    checked = sorted({_axis(a, x.ndim, name) for a in axes})
    _require(0 < len(checked) == len(list(axes)), f"{name}: expected distinct axes, got {axes}")
    return tuple(checked), tuple(x.shape[a] for a in checked)


def _channel_axes(x, channel_axis):
    """(axes, shape, broadcast shape, other axes) of the channels: one axis, or several (a tuple)."""
    if isinstance(channel_axis, numbers.Integral):
        axes = (_axis(channel_axis, x.ndim),)
        shape = (x.shape[axes[0]],)
    else:
        axes, shape = _axes(x, channel_axis, "channel_axis")
    spread = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
    return axes, shape, spread, tuple(a for a in range(x.ndim) if a not in axes)


def _trailing(x, normalized_shape, axes=None):
    """The axes and shape normalized over: ``axes`` (then ``normalized_shape`` None or their sizes), or
    ``normalized_shape``, which must be x's trailing dimensions (at least one)."""
    if axes is not None:
        axes, shape = _axes(x, (axes,) if isinstance(axes, numbers.Integral) else axes, "axes")
        given = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
        _require(given is None or tuple(given) == shape, f"normalized_shape: expected None or {shape}")
        return axes, shape
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
    _require(0 < len(shape) <= x.ndim and x.shape[x.ndim - len(shape):] == shape,
             f"normalized_shape: expected the input's trailing dimensions to be {shape}, got {x.shape}")
    return tuple(range(x.ndim - len(shape), x.ndim)), shape


def _kept(x, axes):
    """The shape of the axes not in ``axes`` (of the statistics), and the shape a parameter of ``axes``
    broadcasts in."""
    return (tuple(n for a, n in enumerate(x.shape) if a not in axes),
            tuple(n if a in axes else 1 for a, n in enumerate(x.shape)))


def _groups(x, num_groups, channel_axis):
    """x with channels moved to axis 1, seen as (N, G, C / G, S), and the channel axis."""
    axis = _axis(channel_axis, x.ndim)
    _require(axis in (1, x.ndim - 1), f"channel_axis: expected 1 or -1, got {channel_axis}")
    xc = np.moveaxis(x, axis, 1)
    N, C = xc.shape[:2]
    _require(num_groups >= 1 and C % num_groups == 0, f"num_groups: expected a divisor of {C}, got {num_groups}")
    return xc.reshape(N, num_groups, C // num_groups, math.prod(xc.shape[2:])), axis


def _backward(dy, x, mean, rstd, weight, axes, training, centered=True, eps=None, mask=None):
    """(dx, xhat) of y = (x - mean) * rstd * weight, the statistics over ``axes`` (module docstring).
    Given the forward's ``eps``, the input must have the statistics given (mean(xhat) = 0, var(xhat) =
    var * rstd**2 = 1 - eps * rstd**2, RMSNorm's uncentered): RuntimeError where it has not.

    With ``mask`` (m) the statistics are those of the n = sum(m) masked-in values, so d mean / d x_j =
    m_j / n and d var / d x_j = 2 m_j (x_j - mean) / n: the terms through them reach those values only,
    dx = rstd * (g - m * (sum(g) / n + xhat * sum(g * xhat) / n)), the sums over all the values."""
    xhat = (x - mean) * rstd
    g = dy if weight is None else dy * weight
    if not training:
        return rstd * g, xhat
    m = _mask(mask, x)
    if eps is not None:
        _, m1, q = _stats(xhat, m, axes, keepdims=True)
        if not centered:
            q, m1 = q + m1 * m1, 0.0
        with np.errstate(invalid="ignore"):
            if np.any((np.abs(m1) > 1e-3) | (np.abs(q - (1 - eps * rstd * rstd)) > 1e-3)):
                raise RuntimeError("input: one of the variables needed for gradient computation has been "
                                   "modified by an inplace operation")
    n = m.sum(axis=axes, keepdims=True)
    through_mean = g.sum(axis=axes, keepdims=True) / n if centered else 0.0
    return rstd * (g - m * (through_mean + xhat * (g * xhat).sum(axis=axes, keepdims=True) / n)), xhat


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


def _instance_axis(x, channel_axis):
    axis = _axis(channel_axis, x.ndim)
    _require(axis != 0, "channel_axis: expected an axis other than 0")
    return axis


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
# Backwards: (grad_input, grad_weight, grad_bias) from the forward's input and statistics
# ---------------------------------------------------------------------------------------------------------

def batch_norm_backward(grad_output, input, mean, invstd, weight=None, training=True, *, channel_axis=1, eps=None,
                        mask=None, activation=None, add=None, bias=None):
    """Gradients of :func:`batch_norm` (module docstring, the values of a channel): dx, and the (C,)
    sums dweight = sum(dy * xhat), dbias = sum(dy) (returned with or without ``weight``).
    ``training=False``: the statistics were the running ones, so dx = rstd * weight * dy.  ``activation``,
    ``add``, ``bias``: the backward through the forward's activation, then grad of ``add`` fourth."""
    _require(mask is None or isinstance(channel_axis, numbers.Integral),
             "mask: not supported together with several channel axes")
    dy, x = _grad_input(grad_output, input, min_ndim=2)
    _, params, shape, others = _channel_axes(x, channel_axis)
    mean, rstd = _vector(mean, "mean", params), _vector(invstd, "invstd", params)
    weight, bias = _vector(weight, "weight", params), _vector(bias, "bias", params)

    def backward(dy):
        dx, xhat = _backward(dy, x, mean.reshape(shape), rstd.reshape(shape),
                             None if weight is None else weight.reshape(shape), others, training, eps=eps, mask=mask)
        return dx, (dy * xhat).sum(axis=others), dy.sum(axis=others)
    z = _affine((x - mean.reshape(shape)) * rstd.reshape(shape), weight, bias, shape)
    return _through(backward, dy, x, z, activation, add)


def _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, centered, eps, mask, axes,
                   activation):
    _require(mask is None or axes is None, "mask: not supported together with axes")
    dy, x = _grad_input(grad_output, input)
    axes, shape = _trailing(x, normalized_shape, axes)
    bias = _vector(bias, "bias", shape)  # without activation, only says whether there is a bias
    lead, spread = _kept(x, axes)
    kept_spread = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    rstd = _vector(rstd, "rstd", lead).reshape(kept_spread)
    mean = _vector(mean, "mean", lead).reshape(kept_spread) if centered else 0.0
    weight = _vector(weight, "weight", shape)
    outer = tuple(a for a in range(x.ndim) if a not in axes)

    def backward(dy):
        dx, xhat = _backward(dy, x, mean, rstd, None if weight is None else weight.reshape(spread), axes, True,
                             centered, eps, mask)
        return dx, (dy * xhat).sum(axis=outer).reshape(shape), dy.sum(axis=outer).reshape(shape)
    return _through(backward, dy, x, _affine((x - mean) * rstd, weight, bias, spread), activation, None)


def layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight=None, bias=None, *, axes=None,
                        eps=None, mask=None, activation=None):
    """Gradients of :func:`layer_norm` (module docstring, the values of a row): dx, and dweight, dbias of
    ``normalized_shape`` summed over the rows (None without ``weight``, ``bias``)."""
    dx, dw, db = _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, True, eps, mask, axes,
                                activation)
    return dx, (None if weight is None else dw), (None if bias is None else db)


def rms_norm_backward(grad_output, input, normalized_shape, rstd, weight=None, *, axes=None, eps=None, mask=None,
                      activation=None):
    """Gradients of :func:`rms_norm`: dx = rstd * (g - xhat * mean(g * xhat)) per row, xhat = x * rstd;
    dweight = sum(dy * xhat) over the rows (None without ``weight``); no bias."""
    dx, dw, _ = _rows_backward(grad_output, input, normalized_shape, None, rstd, weight, None, False, eps, mask, axes,
                               activation)
    return dx, (None if weight is None else dw), None


def group_norm_backward(grad_output, input, num_groups, mean, rstd, weight=None, *, channel_axis=1, eps=None,
                        mask=None, activation=None, add=None, bias=None):
    """Gradients of :func:`group_norm` (module docstring, the values of a (sample, group)): dx, and the
    (C,) sums dweight = sum(dy * xhat), dbias = sum(dy) over samples and spatial values."""
    dy, x = _grad_input(grad_output, input, min_ndim=2)
    grouped, axis = _groups(x, num_groups, channel_axis)
    N, G, K, _ = grouped.shape
    mean, rstd = (_vector(v, name, (N, G)).reshape(N, G, 1, 1) for v, name in ((mean, "mean"), (rstd, "rstd")))
    weight, bias = _vector(weight, "weight", (G * K,)), _vector(bias, "bias", (G * K,))

    def backward(dy):
        dy_grouped, _ = _groups(dy, num_groups, channel_axis)
        dx, xhat = _backward(dy_grouped, grouped, mean, rstd, None if weight is None else weight.reshape(1, G, K, 1),
                             (2, 3), True, eps=eps, mask=_groups(_mask(mask, x), num_groups, channel_axis)[0])
        dx = np.moveaxis(dx.reshape(np.moveaxis(x, axis, 1).shape), 1, axis)
        return dx, (dy_grouped * xhat).sum(axis=(0, 3)).reshape(-1), dy_grouped.sum(axis=(0, 3)).reshape(-1)
    xhat = np.moveaxis(((grouped - mean) * rstd).reshape(np.moveaxis(x, axis, 1).shape), 1, axis)
    z = _affine(xhat, weight, bias, _channel_shape(x.ndim, axis))
    return _through(backward, dy, x, z, activation, add)


def instance_norm_backward(grad_output, input, mean, rstd, weight=None, use_input_stats=True, *, channel_axis=1,
                           eps=None, mask=None, activation=None, add=None, bias=None):
    """Gradients of :func:`instance_norm` (module docstring, the spatial values of a (sample, channel)):
    dx, and the (C,) sums dweight = sum(dy * xhat), dbias = sum(dy).  mean and rstd are (N, C) with
    ``use_input_stats``; without, the running (C,) ones, frozen: dx = rstd * weight * dy."""
    _require(mask is None or channel_axis == 1, "mask: supported with channel_axis=1 only")
    dy, x = _grad_input(grad_output, input, min_ndim=3)
    axis = _instance_axis(x, channel_axis)
    x0, dy0, x = x, dy, np.moveaxis(x, axis, 1)
    N, C = x.shape[:2]
    stats = (N, C) if use_input_stats else (C,)
    spread = (1,) * (x.ndim - 2)
    mean, rstd = (_vector(v, name, stats).reshape(stats + spread) for v, name in ((mean, "mean"), (rstd, "rstd")))
    weight, bias = _vector(weight, "weight", (C,)), _vector(bias, "bias", (C,))
    spatial = tuple(range(2, x.ndim))

    def backward(dy):
        dy = np.moveaxis(dy, axis, 1)
        dx, xhat = _backward(dy, x, mean, rstd, None if weight is None else weight.reshape((C,) + spread), spatial,
                             use_input_stats, eps=eps, mask=mask)
        return np.moveaxis(dx, 1, axis), (dy * xhat).sum(axis=(0,) + spatial), dy.sum(axis=(0,) + spatial)
    z = np.moveaxis(_affine((x - mean) * rstd, weight, bias, (C,) + spread), 1, axis)
    return _through(backward, dy0, x0, z, activation, add)


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
