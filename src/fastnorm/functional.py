"""Normalization functions on ndarrays, with the names and arguments of ``torch.nn.functional``.

This module validates arguments, finds the view of the buffer that the kernels work on (``[N, C, S]``
channels first or ``[M, C]`` channels last), handles dtypes and ``out=``, and updates running statistics.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from ._threads import check_count, threads_for
from ._validation import (_array, _as_input, _channel_vector, _check_axis, _check_buffer, _check_eps,
                          _check_momentum, _check_out, _elementwise_vector, _kernel_writes, _normalized_shape,
                          _stat_vector)

Shape = Union[int, Sequence[int]]
Grads = Tuple[NDArray, Optional[NDArray], Optional[NDArray]]

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "moments",
           "batch_normalization", "batch_norm_backward", "layer_norm_backward", "group_norm_backward",
           "instance_norm_backward", "rms_norm_backward"]


def _channel_params(x, C, running_mean, running_var, weight, bias):
    """The per-channel vectors of batch_norm and instance_norm, checked (see _channel_vector)."""
    rm = _channel_vector(running_mean, "running_mean", C, x.dtype)
    rv = _channel_vector(running_var, "running_var", C, x.dtype)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean, running_var: expected both or neither")
    return rm, rv, _channel_vector(weight, "weight", C, x.dtype), _channel_vector(bias, "bias", C, x.dtype)


def _check_normalized_shape(normalized_shape, x):
    """normalized_shape as a tuple that must equal the input's trailing dimensions."""
    if (type(normalized_shape) is tuple and 0 < len(normalized_shape) <= x.ndim
            and x.shape[x.ndim - len(normalized_shape):] == normalized_shape
            and (type(normalized_shape[0]) is int if len(normalized_shape) == 1
                 else all(type(d) is int for d in normalized_shape))):
        return normalized_shape
    shape = _normalized_shape(normalized_shape)
    if len(shape) > x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"normalized_shape: expected the input's trailing dimensions to be {shape}, "
                         f"got input of shape {x.shape}")
    return shape


# ---------------------------------------------------------------------------------------------------------
# Views and outputs
# ---------------------------------------------------------------------------------------------------------

def _channel_view(x, axis):
    """A C-contiguous buffer holding x, seen as ``[N, C, S]`` around ``axis`` (S == 1 is ``[M, C]``).

    Returns ``(buf, N, C, S, moved)``: when x is a channels-first view of channels-last memory (what
    ``np.moveaxis`` of an NHWC array gives), ``buf`` is that memory as ``[..., C]`` with no copy and
    ``moved`` is True; otherwise ``buf`` is x itself or a C-ordered copy of it.
    """
    shape = x.shape
    C = shape[axis]
    if _kernels.is_c_contiguous(x):
        buf = x
    else:
        if axis != x.ndim - 1 and x.size:
            moved = np.moveaxis(x, axis, -1)
            if moved.flags.c_contiguous:
                return moved, x.size // C, C, 1, True
        buf = np.ascontiguousarray(x)
    N = math.prod(shape[:axis]) if axis != 1 else shape[0]
    S = x.size // (N * C) if x.size else math.prod(shape[axis + 1:])
    return buf, N, C, S, False


def _result_buffer(out, buf, axis, moved):
    """The array the kernel writes: ``out`` itself where its memory has the kernel's layout and dtype and
    does not partly overlap the input; otherwise a new array (copied into ``out`` by ``_finish``)."""
    if out is not None:
        target = np.moveaxis(out, axis, -1) if moved else out
        if _kernel_writes(target, buf) and (
            not np.may_share_memory(target, buf)
            or target.__array_interface__["data"][0] == buf.__array_interface__["data"][0]
        ):
            return target
    return _kernels.empty_like(buf)


def _finish(result, out, axis, moved, dtype):
    """Return the kernel's result in the input's layout, in ``out`` when given, in the result dtype."""
    if moved:
        result = np.moveaxis(result, -1, axis)
    if out is not None:
        if result is not out and not (moved and result.base is out):
            np.copyto(out, result, casting="unsafe")
        return out
    if result.dtype != dtype:
        result = result.astype(dtype)
    return result


def _empty_result(x, out, dtype):
    if out is not None:
        return out
    return _kernels.empty(x.shape, dtype)


# ---------------------------------------------------------------------------------------------------------
# batch_norm
# ---------------------------------------------------------------------------------------------------------

def batch_norm(input: ArrayLike, running_mean: Optional[NDArray] = None, running_var: Optional[NDArray] = None,
               weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
               momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
               out: Optional[NDArray] = None, bessel: bool = True, num_batches_tracked: Optional[int] = None,
               return_stats: bool = False):
    """Batch normalization, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    input : ndarray, shape (N, C, ...)
        float16, float32 or float64.  Any memory order; an array whose memory is channels last (e.g.
        ``np.moveaxis`` of NHWC data) is used without a copy.
    running_mean, running_var : ndarray of shape (C,), optional
        Running statistics: used to normalize when ``training`` is False; updated in place when it is
        True.  Required when ``training`` is False.
    weight, bias : array_like of shape (C,), optional
        Per-channel affine (``gamma`` and ``beta``).
    training : bool
        Normalize with the batch's own statistics (biased variance) and update the running statistics
        with the batch mean and the unbiased batch variance.
    momentum : float in [0, 1] or None
        PyTorch's convention: the weight of the *new* batch,
        ``running = (1 - momentum) * running + momentum * batch``.  Keras' ``momentum`` is the weight of
        the *old* average, i.e. ``1 - momentum`` here.  None means a cumulative average and needs
        ``num_batches_tracked``.
    eps : float
        Added to the variance before the square root.
    channel_axis : int, keyword-only
        The axis of the channels: 1 for NCHW-style data (the default), -1 for channels-last data.
    out : ndarray, keyword-only, optional
        Where to write the result (the input's shape and dtype); may be the input itself.
    bessel : bool, keyword-only
        True (PyTorch): the running variance is updated with the unbiased batch variance.  False (ONNX
        BatchNormalization, Keras): with the biased one.
    num_batches_tracked : int, keyword-only, optional
        Batches already averaged into the running statistics; with ``momentum=None`` the factor is
        ``1 / (num_batches_tracked + 1)``.
    return_stats : bool, keyword-only
        Also return the per-channel mean and inverse standard deviation used (float64, shape (C,)):
        what :func:`batch_norm_backward` needs.

    Returns
    -------
    ndarray, or (ndarray, mean, invstd) with ``return_stats``
        The normalized input, of the input's shape and dtype (``out`` when given).

    Raises
    ------
    TypeError
        Input that is not floating point; parameters or ``out`` of the wrong type or dtype.
    ValueError
        Wrong number of dimensions, parameters whose length is not the channel count, training with a
        single value per channel, ``out`` of the wrong shape or read-only, bad ``eps`` or ``momentum``.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y = fastnorm.batch_norm(x, rm, rv, training=True)
    >>> y.shape, rm.astype(float).round(2).tolist()  # 0.1 * the batch means 3.5, 5.5, 7.5
    ((2, 3, 2), [0.35, 0.55, 0.75])
    """
    x, dtype = _as_input(input, "input")
    if x.ndim < 2:
        raise ValueError(f"input: expected at least 2 dimensions (N, C, ...), got {x.ndim}-D input of shape {x.shape}")
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    C = x.shape[axis]
    training = bool(training)
    eps = _check_eps(eps, training=training)
    rm, rv, w, b = _channel_params(x, C, running_mean, running_var, weight, bias)
    update = training and rm is not None
    if update:
        _check_buffer(running_mean, "running_mean")
        _check_buffer(running_var, "running_var")
        momentum = _check_momentum(momentum)
        if momentum is None:
            if num_batches_tracked is None:
                raise ValueError("num_batches_tracked: required with momentum=None (a cumulative average)")
            if isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, numbers.Integral) \
                    or num_batches_tracked < 0:
                raise ValueError(f"num_batches_tracked: expected an integer >= 0, got {num_batches_tracked!r}")
            momentum = 1.0 / (int(num_batches_tracked) + 1)
    elif not training and rm is None:
        raise ValueError("running_mean, running_var: required when training=False (evaluation normalizes "
                         "with the running statistics); pass training=True to use the batch statistics")
    if out is not None:
        _check_out(out, x.shape, dtype)
    if x.size == 0:
        return _row_stats(_empty_result(x, out, dtype), np.full(C, np.nan), np.full(C, np.nan), False, return_stats)
    count = x.size // C
    if training and count <= 1:
        raise ValueError(f"input: expected more than 1 value per channel when training, got input size {x.shape}")

    buf, N, C, S, moved = _channel_view(x, axis)
    result = _result_buffer(out, buf, axis, moved)
    nthreads = threads_for(x.size, S if S > 1 else 64)
    if training:
        if S == 1:
            mean, var, rstd = _kernels.train_mc(buf, result, N, C, w, b, eps, nthreads)
        elif _by_columns(N, S):  # short runs: by columns of [N, C * S], S columns a channel
            mean, var, rstd = _kernels.group_norm_mc(buf, result, 1, N, C * S, C, _repeat(w, S), _repeat(b, S),
                                                     eps, nthreads)
        else:
            mean, var, rstd = _kernels.train(buf, result, N, C, S, w, b, eps, nthreads)
        if update:
            _update_running(running_mean, running_var, mean, var, momentum, count / (count - 1) if bessel else 1.0)
    else:
        _kernels.normalize(buf, result, N, C, S, rm, rv, w, b, eps, nthreads)
    y = _finish(result, out, axis, moved, dtype)
    if not return_stats:
        return y
    if not training:
        mean, rstd = rm.astype(np.float64), 1.0 / np.sqrt(rv.astype(np.float64) + eps)
    return y, mean, rstd


def _by_columns(N, S):
    """Whether channels-first training or backward of [N, C, S] goes by the columns of [N, C * S]."""
    return 1 < S < _kernels.get_short_run() and S <= N


def _repeat(v, S):
    """A per-channel vector as per-column values of [N, C * S] (None stays None)."""
    return None if v is None else np.repeat(v, S)


def _update_running(running_mean, running_var, mean, batch_var, factor, var_scale=1.0):
    """Exponential moving average of the running statistics with ``batch_var * var_scale``, computed in
    float64 (in one kernel loop for the common buffers: the NumPy expression costs ~10 us per call)."""
    if _kernels.update_running(running_mean, running_var, mean, batch_var, factor, var_scale):
        return
    new_mean = (1.0 - factor) * running_mean.astype(np.float64) + factor * mean
    new_var = (1.0 - factor) * running_var.astype(np.float64) + factor * (batch_var * var_scale)
    running_mean[...] = new_mean
    running_var[...] = new_var


# ---------------------------------------------------------------------------------------------------------
# LayerNorm, RMSNorm, GroupNorm, InstanceNorm: statistics per row of a contiguous view
# ---------------------------------------------------------------------------------------------------------

def _contiguous(x):
    return x if _kernels.is_c_contiguous(x) else np.ascontiguousarray(x)


def _rows_norm(input, normalized_shape, weight, bias, eps, out, rms, return_stats):
    x, dtype = _as_input(input, "input")
    shape = _check_normalized_shape(normalized_shape, x)
    w = _elementwise_vector(weight, "weight", shape, x)
    b = _elementwise_vector(bias, "bias", shape, x)
    if rms and eps is None:  # the compute dtype's, as PyTorch (float32's for float16 input)
        eps = float(np.finfo(x.dtype).eps)
    eps = _check_eps(eps)
    if out is not None:
        _check_out(out, x.shape, dtype)
    lead = x.shape[:x.ndim - len(shape)]
    if x.size == 0:
        return _row_stats(_empty_result(x, out, dtype), np.full(lead, np.nan), np.full(lead, np.nan), rms,
                          return_stats)
    D = math.prod(shape)
    if w is None and b is not None:
        w = np.ones(D, x.dtype)
    buf = _contiguous(x)
    result = _result_buffer(out, buf, 0, False)
    stats = _kernels.train(buf, result, 1, x.size // D, D, w, b, eps, threads_for(x.size, D), per_element=True,
                           rms=rms, stats=return_stats)
    y = _finish(result, out, 0, False, dtype)
    if not return_stats:
        return y
    return _row_stats(y, stats[0].reshape(lead), stats[2].reshape(lead), rms, return_stats)


def _row_stats(y, mean, rstd, rms, return_stats):
    """y, or (y, mean, rstd) ((y, rstd) for RMSNorm)."""
    if not return_stats:
        return y
    return (y, rstd) if rms else (y, mean, rstd)


def layer_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, out: Optional[NDArray] = None,
               return_stats: bool = False):
    """Layer normalization over the trailing ``normalized_shape`` dimensions, as
    ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    input : ndarray, shape ``(..., *normalized_shape)``
        float16, float32 or float64.
    normalized_shape : int or tuple of int
        The trailing dimensions to normalize over.
    weight, bias : array_like of shape normalized_shape, optional
        Elementwise affine.
    eps : float
        Added to the variance before the square root.
    out : ndarray, keyword-only, optional
        Where to write the result; may be the input itself.
    return_stats : bool, keyword-only
        Also return the mean and inverse standard deviation of each row (float64, of the input's leading
        shape): what :func:`layer_norm_backward` needs.

    Returns
    -------
    ndarray, or (ndarray, mean, rstd) with ``return_stats``
        Of the input's shape and dtype.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.layer_norm(np.array([[1., 2., 3.]]), 3).round(4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    """
    return _rows_norm(input, normalized_shape, weight, bias, eps, out, False, return_stats)


def rms_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
             eps: Optional[float] = None, *, out: Optional[NDArray] = None, return_stats: bool = False):
    """Root-mean-square normalization, as ``torch.nn.functional.rms_norm``:
    ``x / sqrt(mean(x**2) + eps) * weight`` over the trailing ``normalized_shape`` dimensions.

    ``eps=None`` is the machine epsilon of the dtype the input is computed in (float32 for float16 input),
    as in PyTorch.  With ``return_stats``, returns ``(y, rstd)``, rstd the float64 inverse root mean square
    of each row.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.rms_norm(np.array([[3., 4.]]), 2, eps=0.0).round(4).tolist()
    [[0.8485, 1.1314]]
    """
    return _rows_norm(input, normalized_shape, weight, None, eps, out, True, return_stats)


def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, channel_axis: int = 1,
               out: Optional[NDArray] = None, return_stats: bool = False):
    """Group normalization, as ``torch.nn.functional.group_norm``: the channels are split into
    ``num_groups`` groups and each sample is normalized per group.

    Parameters
    ----------
    input : ndarray, shape (N, C, ...)
        float16, float32 or float64.  ``channel_axis=-1`` takes channels-last input (N, ..., C).
    num_groups : int
        Must divide C.
    weight, bias : array_like of shape (C,), optional
        Per-channel affine.
    eps : float
        Added to the variance before the square root.
    return_stats : bool, keyword-only
        Also return the mean and inverse standard deviation of each (sample, group), float64 (N, G).

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> y = fastnorm.group_norm(np.arange(16.).reshape(2, 4, 2), 2)
    >>> y[0, :2].round(4).tolist()
    [[-1.3416, -0.4472], [0.4472, 1.3416]]
    """
    x, dtype = _as_input(input, "input")
    axis, G, C = _group_norm_layout(x, num_groups, channel_axis)
    w = _channel_vector(weight, "weight", C, x.dtype)
    b = _channel_vector(bias, "bias", C, x.dtype)
    eps = _check_eps(eps)
    if out is not None:
        _check_out(out, x.shape, dtype)
    N = x.shape[0]
    if x.size == 0:
        return _row_stats(_empty_result(x, out, dtype), np.full((N, G), np.nan), np.full((N, G), np.nan), False,
                          return_stats)
    S = x.size // (N * C)
    buf, _, _, _, moved = _channel_view(x, axis)
    result = _result_buffer(out, buf, axis, moved)
    nthreads = threads_for(x.size, S)
    if _group_norm_channels_last(x, axis, moved):
        stats = _kernels.group_norm_mc(buf, result, N, S, C, G, w, b, eps, nthreads)
    else:
        stats = _kernels.train(buf, result, 1, N * G, (C // G) * S, w, b, eps, nthreads, sub=S, groups=G,
                               stats=return_stats)
    y = _finish(result, out, axis, moved, dtype)
    if not return_stats:
        return y
    return _row_stats(y, stats[0].reshape(N, G), stats[2].reshape(N, G), False, return_stats)


def _group_norm_layout(x, num_groups, channel_axis):
    """(channel axis, groups, channels) of a GroupNorm input, checked."""
    if x.ndim < 2:
        raise ValueError(f"input: expected at least 2 dimensions (N, C, ...), got {x.ndim}-D input of shape {x.shape}")
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    if axis not in (1, x.ndim - 1):
        raise ValueError(f"channel_axis: expected 1 (channels first) or -1 (channels last), got {channel_axis}")
    G = check_count(num_groups, "num_groups")
    C = x.shape[axis]
    if C % G:
        raise ValueError(f"num_groups: expected a divisor of the {C} channels of the input, got {G}")
    return axis, G, C


def _group_norm_channels_last(x, axis, moved):
    """Whether GroupNorm runs on channels-last memory ([N, S, C]).  With one value per channel (S == 1)
    the layouts coincide and the rows of [N * G, C / G] go faster (a column pass of one row per sample
    paid a merge per column: (64, 2048) took 870 us, as rows 70 us)."""
    return (moved or axis == x.ndim - 1) and x.size != x.shape[0] * x.shape[axis]


def instance_norm(input: ArrayLike, running_mean: Optional[NDArray] = None,
                  running_var: Optional[NDArray] = None, weight: Optional[ArrayLike] = None,
                  bias: Optional[ArrayLike] = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5, *, out: Optional[NDArray] = None, return_stats: bool = False):
    """Instance normalization, as ``torch.nn.functional.instance_norm``: each (sample, channel) is
    normalized over its spatial dimensions.

    Parameters
    ----------
    input : ndarray, shape (N, C, ...)
        At least one spatial dimension.
    running_mean, running_var : ndarray of shape (C,), optional
        With ``use_input_stats``, updated in place with the mean over the batch of the instance
        statistics (unbiased variances); without, used to normalize.
    weight, bias : array_like of shape (C,), optional
        Per-channel affine.
    use_input_stats : bool
        Normalize with each instance's own statistics (True) or with the running statistics.
    momentum : float
        Weight of the new batch in the running statistics (PyTorch's convention).
    return_stats : bool, keyword-only
        Also return the mean and inverse standard deviation used, float64: per (sample, channel), (N, C),
        with ``use_input_stats``; the running ones, (C,), without.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.instance_norm(np.array([[[1., 3.], [2., 2.]]])).round(4).tolist()
    [[[-1.0, 1.0], [0.0, 0.0]]]
    """
    x, dtype = _as_input(input, "input")
    if x.ndim < 3:
        raise ValueError(f"input: expected at least 3 dimensions (N, C, spatial...), got {x.ndim}-D input "
                         f"of shape {x.shape}")
    C = x.shape[1]
    eps = _check_eps(eps)
    rm, rv, w, b = _channel_params(x, C, running_mean, running_var, weight, bias)
    use_input_stats = bool(use_input_stats)
    update = use_input_stats and rm is not None
    if update:
        _check_buffer(running_mean, "running_mean")
        _check_buffer(running_var, "running_var")
        momentum = _check_momentum(momentum, allow_none=False)
    elif not use_input_stats and rm is None:
        raise ValueError("running_mean, running_var: required when use_input_stats=False")
    if out is not None:
        _check_out(out, x.shape, dtype)
    N = x.shape[0]
    S = x.size // (N * C) if x.size else 0
    if use_input_stats and x.size and S <= 1:
        raise ValueError(f"input: expected more than 1 spatial element when training, got input size {x.shape}")
    if x.size == 0:
        shape = (N, C) if use_input_stats else (C,)
        return _row_stats(_empty_result(x, out, dtype), np.full(shape, np.nan), np.full(shape, np.nan), False,
                          return_stats)
    buf = _contiguous(x)
    result = _result_buffer(out, buf, 1, False)
    nthreads = threads_for(x.size, S)
    if use_input_stats:
        stats = _kernels.train(buf, result, 1, N * C, S, w, b, eps, nthreads, groups=C,
                               stats=return_stats or update)
        if stats is not None:
            mean, var, rstd = (a.reshape(N, C) for a in stats)
        if update:
            _update_running(running_mean, running_var, mean.mean(axis=0), (var * (S / (S - 1))).mean(axis=0),
                            momentum)
    else:
        _kernels.normalize(buf, result, N, C, S, rm, rv, w, b, eps, nthreads)
    y = _finish(result, out, 1, False, dtype)
    if not return_stats:
        return y
    if not use_input_stats:
        mean, rstd = rm.astype(np.float64), 1.0 / np.sqrt(rv.astype(np.float64) + eps)
    return y, mean, rstd


# ---------------------------------------------------------------------------------------------------------
# Backward passes
# ---------------------------------------------------------------------------------------------------------
# Each takes the forward's input and the statistics its ``return_stats`` gave, and returns
# (grad_input, grad_weight, grad_bias): grad_input of the input's shape and dtype, the parameter gradients
# float64 sums of dy * xhat and dy over each parameter's values (None where the layer has no such
# parameter).  ``training=False`` (frozen statistics, eval mode) drops the terms through the statistics.

def _grad_inputs(grad_output, input):
    x, dtype = _as_input(input, "input")
    g, _ = _as_input(grad_output, "grad_output")
    if g.shape != x.shape:
        raise ValueError(f"grad_output: expected shape {x.shape} (the input's), got {g.shape}")
    if g.dtype != x.dtype:
        g = g.astype(x.dtype)
    return x, g, dtype


def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: Optional[ArrayLike] = None, training: bool = True, *,
                        channel_axis: int = 1) -> Grads:
    """Gradients of :func:`batch_norm`.

    Parameters
    ----------
    grad_output : ndarray
        Gradient of the loss with respect to the output; the input's shape.
    input : ndarray
        The forward's input.
    mean, invstd : array_like of shape (C,)
        The statistics the forward normalized with (its ``return_stats``): the batch's in training
        mode, the running mean and ``1 / sqrt(running_var + eps)`` in eval mode.
    weight : array_like of shape (C,), optional
    training : bool
        Whether the statistics were the batch's (they then depend on the input).
    channel_axis : int, keyword-only

    Returns
    -------
    grad_input, grad_weight, grad_bias : ndarray
        grad_weight and grad_bias are float64 of shape (C,).

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.random.default_rng(0).normal(size=(8, 3))
    >>> y, mean, invstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    >>> dx, dw, db = fastnorm.batch_norm_backward(np.ones_like(y), x, mean, invstd)
    >>> bool(np.abs(dx).max() < 1e-12), db.tolist()
    (True, [8.0, 8.0, 8.0])
    """
    x, g, dtype = _grad_inputs(grad_output, input)
    if x.ndim < 2:
        raise ValueError(f"input: expected at least 2 dimensions (N, C, ...), got {x.ndim}-D input of shape {x.shape}")
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    C = x.shape[axis]
    mean = _stat_vector(mean, "mean", (C,))
    invstd = _stat_vector(invstd, "invstd", (C,))
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    buf, N, C, S, moved = _channel_view(x, axis)
    gbuf = np.ascontiguousarray(np.moveaxis(g, axis, -1) if moved else g)
    dx = _kernels.empty_like(buf)
    nthreads = threads_for(x.size, S if S > 1 else 64)
    if S == 1:
        sum_dy, sum_dyx = _kernels.backward_mc(buf, gbuf, dx, 1, N, C, C, mean, invstd, w, bool(training), nthreads)
    elif _by_columns(N, S):  # short runs: by columns, as the forward
        sum_dy, sum_dyx = (a.reshape(C, S).sum(axis=1) for a in _kernels.backward_mc(
            buf, gbuf, dx, 1, N, C * S, C, mean, invstd, _repeat(w, S), bool(training), nthreads))
    else:
        sum_dy, sum_dyx = _kernels.backward(buf, gbuf, dx, N, C, S, mean, invstd, w, bool(training), nthreads)
    return _finish(dx, None, axis, moved, dtype), sum_dyx, sum_dy


def _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, rms):
    x, g, dtype = _grad_inputs(grad_output, input)
    shape = _check_normalized_shape(normalized_shape, x)
    lead = x.shape[:x.ndim - len(shape)]
    mean = np.zeros(math.prod(lead)) if rms else _stat_vector(mean, "mean", lead)
    rstd = _stat_vector(rstd, "rstd", lead)
    w = _elementwise_vector(weight, "weight", shape, x)
    _elementwise_vector(bias, "bias", shape, x)  # only its presence matters; checked as the forward's
    D = math.prod(shape)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(shape), np.zeros(shape)
    buf, gbuf = _contiguous(x), _contiguous(g)
    dx = _kernels.empty_like(buf)
    sum_dy, sum_dyx = _kernels.backward(buf, gbuf, dx, 1, x.size // D, D, mean, rstd, w, True,
                                        threads_for(x.size, D), per_element=True, rms=rms)
    return _finish(dx, None, 0, False, dtype), sum_dyx.reshape(shape), sum_dy.reshape(shape)


def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = None,
                        bias: Optional[ArrayLike] = None) -> Grads:
    """Gradients of :func:`layer_norm`.

    ``mean`` and ``rstd`` are what ``layer_norm(..., return_stats=True)`` returned (the input's leading
    shape).  Returns ``(grad_input, grad_weight, grad_bias)``; grad_weight is None without ``weight``,
    grad_bias None without ``bias`` (pass the forward's bias, or any array of its shape).
    """
    dx, dw, db = _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, False)
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, rstd: ArrayLike,
                      weight: Optional[ArrayLike] = None) -> Grads:
    """Gradients of :func:`rms_norm`: ``(grad_input, grad_weight, None)``; ``rstd`` is what
    ``rms_norm(..., return_stats=True)`` returned.  grad_weight is None without ``weight``."""
    dx, dw, _ = _rows_backward(grad_output, input, normalized_shape, None, rstd, weight, None, True)
    return dx, (dw if weight is not None else None), None


def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, num_groups: int, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = None, *, channel_axis: int = 1) -> Grads:
    """Gradients of :func:`group_norm`; ``mean``, ``rstd`` of shape (N, G) from its ``return_stats``.
    Returns ``(grad_input, grad_weight, grad_bias)`` with float64 (C,) parameter gradients."""
    x, g, dtype = _grad_inputs(grad_output, input)
    axis, G, C = _group_norm_layout(x, num_groups, channel_axis)
    N = x.shape[0]
    mean = _stat_vector(mean, "mean", (N, G))
    rstd = _stat_vector(rstd, "rstd", (N, G))
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    S = x.size // (N * C)
    buf, _, _, _, moved = _channel_view(x, axis)
    gbuf = np.ascontiguousarray(np.moveaxis(g, axis, -1) if moved else g)
    dx = _kernels.empty_like(buf)
    nthreads = threads_for(x.size, S)
    if _group_norm_channels_last(x, axis, moved):
        sum_dy, sum_dyx = _kernels.backward_mc(buf, gbuf, dx, N, S, C, G, mean, rstd, w, True, nthreads)
    else:
        sum_dy, sum_dyx = _kernels.backward(buf, gbuf, dx, 1, N * G, (C // G) * S, mean, rstd, w, True,
                                            nthreads, sub=S, groups=G)
    return (_finish(dx, None, axis, moved, dtype), sum_dyx.reshape(N, C).sum(axis=0),
            sum_dy.reshape(N, C).sum(axis=0))


def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                           weight: Optional[ArrayLike] = None, use_input_stats: bool = True) -> Grads:
    """Gradients of :func:`instance_norm`; ``mean``, ``rstd`` from its ``return_stats``: (N, C) with
    ``use_input_stats``, the running (C,) without.  Returns ``(grad_input, grad_weight, grad_bias)``."""
    x, g, dtype = _grad_inputs(grad_output, input)
    if x.ndim < 3:
        raise ValueError(f"input: expected at least 3 dimensions (N, C, spatial...), got {x.ndim}-D input "
                         f"of shape {x.shape}")
    N, C = x.shape[:2]
    shape = (N, C) if use_input_stats else (C,)
    mean = np.broadcast_to(_stat_vector(mean, "mean", shape).reshape(shape), (N, C)).reshape(-1)
    rstd = np.broadcast_to(_stat_vector(rstd, "rstd", shape).reshape(shape), (N, C)).reshape(-1)
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    buf, gbuf = _contiguous(x), _contiguous(g)
    dx = _kernels.empty_like(buf)
    sum_dy, sum_dyx = _kernels.backward(buf, gbuf, dx, 1, N * C, x.size // (N * C), np.ascontiguousarray(mean),
                                        np.ascontiguousarray(rstd), w, bool(use_input_stats),
                                        threads_for(x.size, x.size // (N * C)), groups=C)
    return (_finish(dx, None, 1, False, dtype), sum_dyx.reshape(N, C).sum(axis=0),
            sum_dy.reshape(N, C).sum(axis=0))


# ---------------------------------------------------------------------------------------------------------
# moments and batch_normalization (TensorFlow's names)
# ---------------------------------------------------------------------------------------------------------

def _normalize_axes(axes, ndim):
    if isinstance(axes, numbers.Integral):
        axes = (axes,)
    try:
        axes = tuple(_check_axis(a, ndim, "axes") for a in axes)
    except TypeError:
        raise TypeError(f"axes: expected an integer or a sequence of integers, got {axes!r}") from None
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes: repeated axis in {axes}")
    return tuple(sorted(axes))


def moments(x: ArrayLike, axes: Union[int, Sequence[int]], keepdims: bool = False) -> Tuple[NDArray, NDArray]:
    """Mean and biased variance of ``x`` over ``axes``, as ``tf.nn.moments``.

    Computed in one pass with blocked shifted sums in double precision merged with Chan's formula: the
    float32 mean of data at 1e4 +- 1 is within one float32 ulp of the exact value.

    Parameters
    ----------
    x : array_like
        float16, float32 or float64.
    axes : int or sequence of int
        Axes to reduce.
    keepdims : bool
        Keep the reduced axes with length 1.

    Returns
    -------
    mean, variance : ndarray
        Of x's dtype; NaN where the reduction is over no element.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> m, v = fastnorm.moments(np.array([[1., 2.], [3., 5.]]), axes=0)
    >>> m.tolist(), v.tolist()
    ([2.0, 3.5], [1.0, 2.25])
    """
    x, dtype = _as_input(x, "x")
    _, mean, var = moments64(x, axes, keepdims)
    return mean.astype(dtype), var.astype(dtype)


def moments64(x, axes, keepdims=False):
    """(count, mean, biased variance) of a float array over ``axes``: the count an int, the statistics
    float64 arrays of the kept shape (NaN where the count is 0)."""
    axes = _normalize_axes(axes, x.ndim)
    kept = [a for a in range(x.ndim) if a not in axes]
    kept_shape = tuple(x.shape[a] for a in kept)
    out_shape = tuple(1 if a in axes else n for a, n in enumerate(x.shape)) if keepdims else kept_shape
    count = math.prod(x.shape[a] for a in axes)
    C = math.prod(kept_shape)
    if count == 0 or C == 0:
        fill = np.nan if count == 0 else 0.0
        return count, np.full(out_shape, fill), np.full(out_shape, fill)
    if not axes:
        return count, x.astype(np.float64).reshape(out_shape), np.zeros(out_shape)
    if not kept or kept == list(range(kept[0], kept[-1] + 1)):
        # The kept axes are one run: x is [N, C, S] around it without moving anything.
        first = kept[0] if kept else 0
        last = kept[-1] if kept else -1
        buf = np.ascontiguousarray(x)
        N, S = math.prod(x.shape[:first]), math.prod(x.shape[last + 1:])
    else:
        buf = np.ascontiguousarray(np.transpose(x, list(axes) + kept))
        N, S = count, 1
    mean, var = _kernels.moments(buf, N, C, S, threads_for(x.size))
    return count, mean.reshape(out_shape), var.reshape(out_shape)


def batch_normalization(x: ArrayLike, mean: ArrayLike, variance: ArrayLike, offset: Optional[ArrayLike],
                        scale: Optional[ArrayLike], variance_epsilon: float, name: Optional[str] = None) -> NDArray:
    """``(x - mean) / sqrt(variance + variance_epsilon) * scale + offset``, as ``tf.nn.batch_normalization``.

    ``mean``, ``variance``, ``offset`` and ``scale`` broadcast against ``x`` (``offset`` and ``scale``
    may be None).  When they vary along at most one axis of ``x`` (the usual per-channel case, e.g. the
    ``keepdims`` output of :func:`moments`) the fused kernel runs; other broadcasts are computed in
    float64 with NumPy.

    Returns
    -------
    ndarray
        Of the broadcast shape and x's dtype.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.array([[1., 2.], [3., 6.]])
    >>> m, v = fastnorm.moments(x, axes=0)
    >>> fastnorm.batch_normalization(x, m, v, None, None, 0.0).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    """
    x, dtype = _as_input(x, "x")
    eps = _check_eps(variance_epsilon, "variance_epsilon")
    params = {}
    for pname, value in (("mean", mean), ("variance", variance), ("offset", offset), ("scale", scale)):
        if value is None:
            if pname in ("mean", "variance"):
                raise TypeError(f"{pname}: required, got None")
            continue
        a = _array(value, pname)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{pname}: expected real numbers, got dtype {a.dtype}")
        params[pname] = a.astype(np.float64)
    try:
        shape = np.broadcast_shapes(x.shape, *(a.shape for a in params.values()))
    except ValueError:
        shapes = ", ".join(f"{k} {a.shape}" for k, a in params.items())
        raise ValueError(f"x, {', '.join(params)}: shapes do not broadcast: x {x.shape}, {shapes}") from None
    if shape == x.shape and x.ndim >= 1 and x.size > 0:
        padded = {k: (1,) * (x.ndim - a.ndim) + a.shape for k, a in params.items()}
        varying = {i for s in padded.values() for i, n in enumerate(s) if n != 1}
        if len(varying) <= 1:
            axis = varying.pop() if varying else None
            C = 1 if axis is None else x.shape[axis]
            vec = {k: np.ascontiguousarray(np.broadcast_to(a.reshape(-1), (C,))) for k, a in params.items()}
            buf = np.ascontiguousarray(x)
            if C == 1:
                N, S = 1, x.size
            else:
                N, S = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
            result = _kernels.empty_like(buf)
            _kernels.normalize(buf, result, N, C, S, vec["mean"], vec["variance"], vec.get("scale"),
                               vec.get("offset"), eps, threads_for(x.size))
            return result.astype(dtype, copy=False)
    inv = 1.0 / np.sqrt(params["variance"] + eps)
    if "scale" in params:
        inv = inv * params["scale"]
    y = (x.astype(np.float64) - params["mean"]) * inv
    if "offset" in params:
        y = y + params["offset"]
    return np.broadcast_to(y, shape).astype(dtype)
