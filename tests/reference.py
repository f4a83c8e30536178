"""The slow twin: plain float64 NumPy implementations, short enough to trust by reading."""
import numpy as np


def _channel_shape(ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, channel_axis=1, bessel=True):
    """Returns (y, new_running_mean, new_running_var), all float64."""
    x = np.asarray(x, dtype=np.float64)
    axis = channel_axis % x.ndim
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    shape = _channel_shape(x.ndim, axis)
    new_rm = new_rv = None
    if training:
        mean = x.mean(axis=reduce)
        var = x.var(axis=reduce)
        if running_mean is not None:
            n = x.size // x.shape[axis]
            unbiased = var * n / (n - 1) if bessel else var
            new_rm = (1 - momentum) * np.float64(running_mean) + momentum * mean
            new_rv = (1 - momentum) * np.float64(running_var) + momentum * unbiased
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y, new_rm, new_rv


def moments(x, axes):
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=axes), x.var(axis=axes)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def rms_norm(x, normalized_shape, weight=None, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    return y


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Channels first: x of shape (N, C, ...)."""
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape[:2]
    g = x.reshape(N, num_groups, -1)
    y = ((g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)).reshape(x.shape)
    shape = (1, C) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):
    """Returns (y, new_running_mean, new_running_var)."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    new_rm = new_rv = None
    if use_input_stats:
        mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        if running_mean is not None:
            S = x[0, 0].size
            new_rm = (1 - momentum) * np.float64(running_mean) + momentum * mean.reshape(x.shape[:2]).mean(0)
            unbiased = var.reshape(x.shape[:2]) * S / (S - 1)
            new_rv = (1 - momentum) * np.float64(running_var) + momentum * unbiased.mean(0)
    else:
        mean = np.asarray(running_mean, np.float64).reshape(shape)
        var = np.asarray(running_var, np.float64).reshape(shape)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y, new_rm, new_rv


def row_norm_backward(g, x, D, weight=None, rms=False, eps=1e-5):
    """Gradients of LayerNorm (or RMSNorm) over the last D values, in float64: (dx, dweight, dbias)."""
    x = x.astype(np.float64).reshape(-1, D)
    g = g.astype(np.float64).reshape(-1, D)
    w = np.ones(D) if weight is None else weight.astype(np.float64)
    centered = x if rms else x - x.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt((centered ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = centered * rstd
    gw = g * w
    inner = gw - (xhat * gw).mean(axis=1, keepdims=True) * xhat
    if not rms:
        inner -= gw.mean(axis=1, keepdims=True)
    return rstd * inner, (g * xhat).sum(axis=0), g.sum(axis=0)


def exact_standard_scaler(x):
    """Per-column mean and biased variance of a 2-d array in exact rational arithmetic, each rounded once
    to float64, and the standardized data ``(x - mean) / sqrt(var)`` computed from the exact mean (in two
    parts: ``x - hi`` is exact, ``lo`` the rest) to within a few float64 ulps."""
    from fractions import Fraction

    x = np.asarray(x, np.float64)
    mean, lo, var = [], [], []
    for col in x.T:
        values = [Fraction(v) for v in col.tolist()]  # exact: a float is a fraction with a power-of-2 denominator
        m = sum(values) / len(values)
        mean.append(float(m))
        lo.append(float(m - Fraction(mean[-1])))
        var.append(float(sum((v - m) ** 2 for v in values) / len(values)))
    mean, lo, var = np.array(mean), np.array(lo), np.array(var)
    return mean, var, ((x - mean) - lo) / np.sqrt(var)
