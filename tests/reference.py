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
