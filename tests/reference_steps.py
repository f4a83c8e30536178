"""The checks (what the ops reject, written plainly) and the steps the float64 twins of
``tests/reference.py`` share: input and parameter checks, masks, moments, the affine, the activations
and their derivatives, the views of channels, rows and groups, and the one backward formula."""
import math
import numbers
import warnings

import numpy as np


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
    """(dx, xhat) of y = (x - mean) * rstd * weight, the statistics over ``axes`` (reference's docstring).
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


def _instance_axis(x, channel_axis):
    axis = _axis(channel_axis, x.ndim)
    _require(axis != 0, "channel_axis: expected an axis other than 0")
    return axis
