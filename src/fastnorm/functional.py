"""Normalization functions on ndarrays, with the names and arguments of ``torch.nn.functional``.

This module validates arguments, finds the view of the buffer that the kernels work on (``[N, C, S]``
channels first or ``[M, C]`` channels last), handles dtypes and ``out=``, and updates running statistics.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterable, Literal, Optional, Sequence, SupportsIndex, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels
from ._lp import normalize, normalize_backward
from ._lrn import local_response_norm, local_response_norm_backward
from ._threads import check_count, threads_for
from ._validation import (FloatArray, Stats, _array, _as_input, _channel_vector, _check_axis, _check_buffer,
                          _check_eps, _check_momentum, _check_out, _elementwise_vector, _kernel_writes,
                          _normalized_shape, _stat_vector)

Shape = Union[SupportsIndex, Sequence[SupportsIndex]]
"""A shape or a set of axes: one integer or a sequence of them."""
Grads = Tuple[FloatArray, Stats, Stats]
"""``(grad_input, grad_weight, grad_bias)``: grad_input of the input's shape and dtype, the parameter
gradients float64."""

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "moments",
           "batch_normalization", "batch_norm_backward", "layer_norm_backward", "group_norm_backward",
           "instance_norm_backward", "rms_norm_backward"]
__all__ += ["local_response_norm", "local_response_norm_backward"]
__all__ += ["normalize", "normalize_backward"]

_Vector = Optional[FloatArray]  # a checked parameter vector, or None


def _channel_params(x: FloatArray, C: int, running_mean: object, running_var: object, weight: object,
                    bias: object) -> Tuple[_Vector, _Vector, _Vector, _Vector]:
    """The per-channel vectors of batch_norm and instance_norm, checked (see _channel_vector)."""
    rm = _channel_vector(running_mean, "running_mean", C, x.dtype)
    rv = _channel_vector(running_var, "running_var", C, x.dtype)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean, running_var: expected both or neither")
    return rm, rv, _channel_vector(weight, "weight", C, x.dtype), _channel_vector(bias, "bias", C, x.dtype)


def _check_normalized_shape(normalized_shape: object, x: FloatArray) -> Tuple[int, ...]:
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

def _channel_view(x: FloatArray, axis: int) -> Tuple[FloatArray, int, int, int, bool]:
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


def _result_buffer(out: Optional[FloatArray], buf: FloatArray, axis: int, moved: bool) -> FloatArray:
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


def _written_into(result: FloatArray, out: FloatArray, moved: bool) -> bool:
    return result is out or (moved and result.base is out)


def _finish(result: FloatArray, out: Optional[FloatArray], axis: int, moved: bool,
            dtype: np.dtype[Any]) -> FloatArray:
    """Return the kernel's result in the input's layout, in ``out`` when given, in the result dtype."""
    if out is not None and not _written_into(result, out, moved):
        np.copyto(out, np.moveaxis(result, -1, axis) if moved else result, casting="unsafe")
    return _returned(result, out, axis, moved, dtype)


def _returned(result: FloatArray, out: Optional[FloatArray], axis: int, moved: bool,
              dtype: np.dtype[Any]) -> FloatArray:
    """What a call returns: ``out`` when given (filled by the kernel call, see _committing), otherwise the
    kernel's result in the input's layout and the result dtype."""
    if out is not None:
        return out
    if moved:
        result = np.moveaxis(result, -1, axis)
    if result.dtype != dtype:
        result = result.astype(dtype)
    return result


def _committing(commit: Optional[_kernels.Commit], out: Optional[FloatArray], buf: FloatArray, axis: int,
                moved: bool, running: Optional[Tuple[FloatArray, FloatArray, float, float]] = None,
                stats_shape: Optional[Tuple[int, ...]] = None, rms: bool = False,
                stats: Optional[Tuple[Stats, Stats]] = None) -> Tuple[FloatArray, Optional[_kernels.Commit]]:
    """(result, commit): the array the kernel writes, and the :class:`~fastnorm._kernels.Commit` that the
    kernel call applies once it is written (None where nothing is left to apply): the copy into ``out``
    where the kernel cannot write there directly, the update of the ``running`` statistics (see
    ``Commit.prepare``), and what the caller's ``commit`` holds (a layer's attributes).  So a call is
    applied whole by its kernel call, or not at all.  ``stats``: the statistics a layer keeps when
    they are known beforehand (frozen ones)."""
    result = _result_buffer(out, buf, axis, moved)
    target = None
    if out is not None and not _written_into(result, out, moved):
        target = np.moveaxis(out, axis, -1) if moved else out
    if commit is None:
        if target is None and running is None:
            return result, None
        commit = _kernels.Commit()
    commit.prepare(target, running, stats_shape, rms, stats)
    return result, commit


def _empty_call(x: FloatArray, out: Optional[FloatArray], dtype: np.dtype[Any], stats_shape: Shape, rms: bool,
                commit: Optional[_kernels.Commit]) -> Tuple[FloatArray, Tuple[Stats, Stats]]:
    """(y, (mean, rstd)) of a call on an empty input: nothing to normalize, the statistics of no value,
    nothing updated (a layer's ``commit`` keeps those statistics)."""
    y = out if out is not None else _kernels.empty(x.shape, dtype)
    stats = _nan_stats(stats_shape)
    if commit is not None:
        commit.prepare(None, None, None, False, stats[1:] if rms else stats)
        commit.apply()
    return y, stats


# ---------------------------------------------------------------------------------------------------------
# batch_norm
# ---------------------------------------------------------------------------------------------------------

@overload
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: SupportsIndex = ...,
               out: Optional[FloatArray] = ..., bessel: bool = ..., num_batches_tracked: Optional[int] = ...,
               return_stats: Literal[False] = ...) -> FloatArray: ...
@overload
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: SupportsIndex = ...,
               out: Optional[FloatArray] = ..., bessel: bool = ..., num_batches_tracked: Optional[int] = ...,
               return_stats: Literal[True]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: SupportsIndex = ...,
               out: Optional[FloatArray] = ..., bessel: bool = ..., num_batches_tracked: Optional[int] = ...,
               return_stats: bool) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = None, running_var: Optional[FloatArray] = None,
               weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
               momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: SupportsIndex = 1,
               out: Optional[FloatArray] = None, bessel: bool = True, num_batches_tracked: Optional[int] = None,
               return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    r"""Batch normalization, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, float32 or float64 (float16 is computed in float32).  Any memory order; an array whose
        memory is channels last (e.g. ``np.moveaxis`` of NHWC data) is used without a copy.
    running_mean, running_var : ndarray of shape (C,), optional
        Running statistics, floating point: used to normalize when ``training`` is False (then required);
        updated in place when it is True (then writable ndarrays, or both None).
    weight, bias : array_like of shape (C,), optional
        Per-channel affine (:math:`\gamma` and :math:`\beta`), floating point.
    training : bool
        Normalize with the batch's own statistics (biased variance) and update the running statistics
        with the batch mean and the unbiased batch variance.
    momentum : float in [0, 1] or None
        PyTorch's convention: the weight of the *new* batch,
        ``running = (1 - momentum) * running + momentum * batch``.  Keras' ``momentum`` is the weight of
        the *old* average, i.e. ``1 - momentum`` here.  None means a cumulative average and needs
        ``num_batches_tracked``.
    eps : float
        Added to the variance before the square root, in the input's units squared; > 0 in training.
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
        Also return the per-channel mean and inverse standard deviation used: what
        :func:`batch_norm_backward` needs.

    Returns
    -------
    y : ndarray
        The normalized input, of the input's shape and dtype (``out`` when given).
    mean, invstd : ndarray of float64, shape (C,)
        With ``return_stats`` only: the batch's mean and :math:`1 / \sqrt{\mathrm{Var}[x] + \epsilon}` in
        training, the running mean and :math:`1 / \sqrt{\mathrm{running\_var} + \epsilon}` in evaluation.

    Raises
    ------
    TypeError
        Input that is not floating point; parameters or ``out`` of the wrong type or dtype; a masked array.
    ValueError
        Fewer than 2 dimensions, parameters whose length is not the channel count, training with a
        single value per channel, evaluation without running statistics, ``out`` of the wrong shape or
        read-only, a read-only running statistic, bad ``eps``, ``momentum`` or ``num_batches_tracked``.

    Notes
    -----
    Per channel :math:`c`, over the batch and spatial axes:

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma_c + \beta_c,
        \qquad
        \mathrm{running} \leftarrow (1 - m)\,\mathrm{running} + m\,\mathrm{batch}

    as defined by Ioffe and Szegedy (2015) and implemented by PyTorch's ``batch_norm`` (ONNX
    BatchNormalization with ``bessel=False``).  The statistics are computed in one pass in double
    precision (blocked shifted sums merged with Chan's formula), so data far from zero keeps its accuracy.

    References
    ----------
    Ioffe, S. and Szegedy, C. (2015). Batch normalization: accelerating deep network training by reducing
    internal covariate shift. ICML. https://arxiv.org/abs/1502.03167

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.functional.batch_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y = fastnorm.batch_norm(x, rm, rv, training=True)
    >>> y.shape, rm.astype(float).round(2).tolist()  # 0.1 * the batch means 3.5, 5.5, 7.5
    ((2, 3, 2), [0.35, 0.55, 0.75])
    >>> y, mean, invstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    >>> mean.tolist()
    [3.5, 5.5, 7.5]
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out,
                       bessel, num_batches_tracked, return_stats, None)


def _batch_norm(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                weight: Optional[ArrayLike], bias: Optional[ArrayLike], training: bool, momentum: Optional[float],
                eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray], bessel: bool,
                num_batches_tracked: Optional[int], return_stats: bool,
                commit: Optional[_kernels.Commit]) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    """:func:`batch_norm`, whose kernel call also applies a layer's ``commit`` (see _committing)."""
    x, dtype = _as_input(input, "input")
    if x.ndim < 2:
        raise ValueError(f"input: expected at least 2 dimensions (N, C, ...), got {x.ndim}-D input of shape {x.shape}")
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    C = x.shape[axis]
    training = bool(training)
    eps = _check_eps(eps, training=training)
    rm, rv, w, b = _channel_params(x, C, running_mean, running_var, weight, bias)
    buffers, frozen = _running_roles(training, running_mean, running_var, rm, rv, "training=False (evaluation "
                                     "normalizes with the running statistics); pass training=True to use the "
                                     "batch statistics")
    factor = _momentum_factor(momentum, num_batches_tracked) if buffers is not None else 0.0
    if out is not None:
        _check_out(out, x.shape, dtype)
    if x.size == 0:
        y, empty = _empty_call(x, out, dtype, C, False, commit)
        return (y, *empty) if return_stats else y
    count = x.size // C
    if training and count <= 1:
        raise ValueError(f"input: expected more than 1 value per channel when training, got input size {x.shape}")

    buf, N, C, S, moved = _channel_view(x, axis)
    # The running statistics are updated by the kernel call that writes the output (see _committing)
    running = None if buffers is None else (*buffers, factor, count / (count - 1) if bessel else 1.0)
    kept = _frozen_stats(*frozen, eps) if frozen is not None and (return_stats or commit is not None) else None
    result, commit = _committing(commit, out, buf, axis, moved, running, (C,), False, kept)
    nthreads = threads_for(x.size, S if S > 1 else 64)
    if frozen is None:
        if S == 1:
            mean, var, rstd = _kernels.forward_columns(buf, result, N, C, w, b, eps, nthreads, commit)
        elif _by_columns(N, S):  # short runs: by columns of [N, C * S], S columns a channel
            mean, var, rstd = _kernels.forward_column_groups(buf, result, 1, N, C * S, C, _repeat(w, S), _repeat(b, S),
                                                     eps, nthreads, commit)
        else:
            mean, var, rstd = _kernels.forward_rows(buf, result, N, C, S, w, b, eps, nthreads, commit=commit)
    else:
        _kernels.forward_with_stats(buf, result, N, C, S, *frozen, w, b, eps, nthreads, commit)
    y = _returned(result, out, axis, moved, dtype)
    if not return_stats:
        return y
    if kept is not None:
        mean, rstd = kept
    return y, mean, rstd


def _momentum_factor(momentum: object, num_batches_tracked: object) -> float:
    """The weight of the new batch in the running statistics: ``momentum``, or the cumulative average's
    ``1 / (num_batches_tracked + 1)`` for ``momentum=None``."""
    momentum = _check_momentum(momentum)
    if momentum is not None:
        return momentum
    if num_batches_tracked is None:
        raise ValueError("num_batches_tracked: required with momentum=None (a cumulative average)")
    if isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, numbers.Integral) \
            or num_batches_tracked < 0:
        raise ValueError(f"num_batches_tracked: expected an integer >= 0, got {num_batches_tracked!r}")
    return 1.0 / (int(num_batches_tracked) + 1)


def _by_columns(N: int, S: int) -> bool:
    """Whether channels-first training or backward of [N, C, S] goes by the columns of [N, C * S]."""
    return 1 < S < _kernels.get_short_run() and S <= N


def _repeat(v: _Vector, S: int) -> _Vector:
    """A per-channel vector as per-column values of [N, C * S] (None stays None)."""
    return None if v is None else np.repeat(v, S)


def _update_running(running_mean: FloatArray, running_var: FloatArray, mean: Stats, batch_var: Stats, factor: float,
                    var_scale: float = 1.0) -> None:
    """Exponential moving average of the running statistics with ``batch_var * var_scale``, computed in
    float64, in one C call (see ``_kernels.Commit``; the NumPy expression costs ~10 us per call)."""
    commit = _kernels.Commit()
    commit.prepare(None, (running_mean, running_var, factor, var_scale))
    commit.apply(None, mean, batch_var)


# ---------------------------------------------------------------------------------------------------------
# LayerNorm, RMSNorm, GroupNorm, InstanceNorm: statistics per row of a contiguous view
# ---------------------------------------------------------------------------------------------------------

def _contiguous(x: FloatArray) -> FloatArray:
    return x if _kernels.is_c_contiguous(x) else np.ascontiguousarray(x)


def _rows_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike], bias: Optional[ArrayLike],
               eps: Optional[float], out: Optional[FloatArray], rms: bool, return_stats: bool,
               commit: Optional[_kernels.Commit] = None) -> Tuple[FloatArray, Optional[Tuple[Stats, Stats]]]:
    """LayerNorm or RMSNorm: ``(y, (mean, rstd))`` of the input's leading shape with ``return_stats``,
    else ``(y, None)``; the kernel call also applies a layer's ``commit`` (see _committing)."""
    x, dtype = _as_input(input, "input")
    shape = _check_normalized_shape(normalized_shape, x)
    w = _elementwise_vector(weight, "weight", shape, x)
    b = _elementwise_vector(bias, "bias", shape, x)
    if rms:
        eps = _rms_eps(eps, x.dtype)
    eps = _check_eps(eps)
    if out is not None:
        _check_out(out, x.shape, dtype)
    lead = x.shape[:x.ndim - len(shape)]
    if x.size == 0:
        y, empty = _empty_call(x, out, dtype, lead, rms, commit)
        return y, empty if return_stats else None
    D = math.prod(shape)
    if w is None and b is not None:
        w = np.ones(D, x.dtype)
    buf = _contiguous(x)
    result, commit = _committing(commit, out, buf, 0, False, None, lead, rms)
    stats = _kernels.forward_rows(buf, result, 1, x.size // D, D, w, b, eps, threads_for(x.size, D), per_element=True,
                           rms=rms, stats=return_stats, commit=commit)
    y = _returned(result, out, 0, False, dtype)
    return y, None if not return_stats or stats is None else (stats[0].reshape(lead), stats[2].reshape(lead))


def _rms_eps(eps: Optional[float], dtype: np.dtype[Any]) -> float:
    """RMSNorm's eps: None is the machine epsilon of the dtype the input is computed in, as PyTorch
    (float32's for float16 input); the backward's check needs the same value."""
    if eps is not None:
        return eps
    return float(np.finfo(np.float32 if dtype == np.float16 else dtype).eps)


def _nan_stats(shape: Shape) -> Tuple[Stats, Stats]:
    """The (mean, rstd) of a call on an empty input: the statistics of no value."""
    return np.full(shape, np.nan), np.full(shape, np.nan)


@overload
def layer_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, out: Optional[FloatArray] = ...,
               return_stats: Literal[False] = ...) -> FloatArray: ...
@overload
def layer_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, out: Optional[FloatArray] = ...,
               return_stats: Literal[True]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def layer_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, out: Optional[FloatArray] = ...,
               return_stats: bool) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
def layer_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, out: Optional[FloatArray] = None,
               return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    r"""Layer normalization over the trailing ``normalized_shape`` dimensions, as
    ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    input : array_like, shape ``(..., *normalized_shape)``
        float16, float32 or float64 (float16 is computed in float32).
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over (one "row" is their product of values).
    weight, bias : array_like of shape normalized_shape, optional
        Elementwise affine (:math:`\gamma` and :math:`\beta`), floating point.
    eps : float
        Added to the variance before the square root, in the input's units squared.
    out : ndarray, keyword-only, optional
        Where to write the result (the input's shape and dtype); may be the input itself.
    return_stats : bool, keyword-only
        Also return the statistics of each row: what :func:`layer_norm_backward` needs.

    Returns
    -------
    y : ndarray
        Of the input's shape and dtype (``out`` when given).
    mean, rstd : ndarray of float64, of the input's leading shape ``input.shape[:-len(normalized_shape)]``
        With ``return_stats`` only: each row's mean and :math:`1 / \sqrt{\mathrm{Var}[x] + \epsilon}`.

    Raises
    ------
    TypeError
        Input, ``weight``, ``bias`` or ``out`` that is not floating point; ``normalized_shape`` not integers.
    ValueError
        ``normalized_shape`` empty, negative or not the input's trailing dimensions; ``weight`` or ``bias``
        of another shape; ``out`` of the wrong shape or read-only; a negative or non-finite ``eps``.

    Notes
    -----
    Over each row of ``D = prod(normalized_shape)`` values, with the biased variance:

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma + \beta

    as defined by Ba, Kiros and Hinton (2016) and by PyTorch's ``layer_norm`` (ONNX LayerNormalization).

    References
    ----------
    Ba, J. L., Kiros, J. R. and Hinton, G. E. (2016). Layer normalization. https://arxiv.org/abs/1607.06450

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.functional.layer_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.layer_norm(np.array([[1., 2., 3.]]), 3).round(4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    >>> y, mean, rstd = fastnorm.layer_norm(np.array([[1., 2., 3.]]), 3, eps=0.0, return_stats=True)
    >>> mean.tolist(), (rstd ** -2).round(4).tolist()  # the mean and the variance 2/3 of the row
    ([2.0], [0.6667])
    """
    y, stats = _rows_norm(input, normalized_shape, weight, bias, eps, out, False, return_stats)
    return y if stats is None else (y, *stats)


@overload
def rms_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, out: Optional[FloatArray] = ...,
             return_stats: Literal[False] = ...) -> FloatArray: ...
@overload
def rms_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, out: Optional[FloatArray] = ...,
             return_stats: Literal[True]) -> Tuple[FloatArray, Stats]: ...
@overload
def rms_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, out: Optional[FloatArray] = ...,
             return_stats: bool) -> Union[FloatArray, Tuple[FloatArray, Stats]]: ...
def rms_norm(input: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
             eps: Optional[float] = None, *, out: Optional[FloatArray] = None,
             return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats]]:
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dimensions, as
    ``torch.nn.functional.rms_norm``.

    Parameters
    ----------
    input : array_like, shape ``(..., *normalized_shape)``
        float16, float32 or float64 (float16 is computed in float32).
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over.
    weight : array_like of shape normalized_shape, optional
        Elementwise scale :math:`\gamma`, floating point.
    eps : float or None
        Added to the mean square before the square root, in the input's units squared.  None (the
        default) is the machine epsilon of the dtype the input is computed in (float32's for float16
        input), as in PyTorch.
    out : ndarray, keyword-only, optional
        Where to write the result (the input's shape and dtype); may be the input itself.
    return_stats : bool, keyword-only
        Also return each row's inverse root mean square: what :func:`rms_norm_backward` needs.

    Returns
    -------
    y : ndarray
        Of the input's shape and dtype (``out`` when given).
    rstd : ndarray of float64, of the input's leading shape
        With ``return_stats`` only: :math:`1 / \sqrt{\mathrm{E}[x^2] + \epsilon}` per row.

    Raises
    ------
    TypeError
        Input, ``weight`` or ``out`` that is not floating point; ``normalized_shape`` not integers.
    ValueError
        ``normalized_shape`` empty, negative or not the input's trailing dimensions; ``weight`` of another
        shape; ``out`` of the wrong shape or read-only; a negative or non-finite ``eps``.

    Notes
    -----
    Over each row, without centering:

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \, \gamma

    as defined by Zhang and Sennrich (2019) and by PyTorch's ``rms_norm``.

    References
    ----------
    Zhang, B. and Sennrich, R. (2019). Root mean square layer normalization. NeurIPS.
    https://arxiv.org/abs/1910.07467

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.functional.rms_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.rms_norm(np.array([[3., 4.]]), 2, eps=0.0).round(4).tolist()
    [[0.8485, 1.1314]]
    >>> y, rstd = fastnorm.rms_norm(np.array([[3., 4.]]), 2, eps=0.0, return_stats=True)
    >>> (1 / rstd ** 2).tolist()  # the mean square (9 + 16) / 2
    [12.5]
    """
    y, stats = _rows_norm(input, normalized_shape, weight, None, eps, out, True, return_stats)
    return y if stats is None else (y, stats[1])


@overload
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, channel_axis: SupportsIndex = ...,
               out: Optional[FloatArray] = ..., return_stats: Literal[False] = ...) -> FloatArray: ...
@overload
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, channel_axis: SupportsIndex = ...,
               out: Optional[FloatArray] = ..., return_stats: Literal[True]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, channel_axis: SupportsIndex = ...,
               out: Optional[FloatArray] = ...,
               return_stats: bool) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, channel_axis: SupportsIndex = 1,
               out: Optional[FloatArray] = None,
               return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    r"""Group normalization, as ``torch.nn.functional.group_norm``: the channels are split into
    ``num_groups`` groups of consecutive channels and each sample is normalized per group.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, float32 or float64 (float16 is computed in float32).  ``channel_axis=-1`` takes
        channels-last input (N, ..., C).
    num_groups : int
        G, a positive divisor of C.
    weight, bias : array_like of shape (C,), optional
        Per-channel affine (:math:`\gamma` and :math:`\beta`), floating point.
    eps : float
        Added to the variance before the square root, in the input's units squared.
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1 (channels last).
    out : ndarray, keyword-only, optional
        Where to write the result (the input's shape and dtype); may be the input itself.
    return_stats : bool, keyword-only
        Also return the statistics of each (sample, group): what :func:`group_norm_backward` needs.

    Returns
    -------
    y : ndarray
        Of the input's shape and dtype (``out`` when given).
    mean, rstd : ndarray of float64, shape (N, G)
        With ``return_stats`` only: the mean and :math:`1 / \sqrt{\mathrm{Var}[x] + \epsilon}` of each
        sample's group.

    Raises
    ------
    TypeError
        Input, ``weight``, ``bias`` or ``out`` that is not floating point; ``num_groups`` or
        ``channel_axis`` not an integer.
    ValueError
        Fewer than 2 dimensions; ``channel_axis`` other than 1 or -1; ``num_groups`` below 1 or not a
        divisor of C; ``weight`` or ``bias`` not of shape (C,); ``out`` of the wrong shape or read-only; a
        negative or non-finite ``eps``.

    Notes
    -----
    Over the :math:`(C / G) \cdot S` values of group :math:`g` of a sample (S the spatial size), with the
    biased variance:

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma_c + \beta_c

    as defined by Wu and He (2018) and by PyTorch's ``group_norm``.

    References
    ----------
    Wu, Y. and He, K. (2018). Group normalization. ECCV. https://arxiv.org/abs/1803.08494

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.functional.group_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> y = fastnorm.group_norm(np.arange(16.).reshape(2, 4, 2), 2)
    >>> y[0, :2].round(4).tolist()
    [[-1.3416, -0.4472], [0.4472, 1.3416]]
    >>> y, mean, rstd = fastnorm.group_norm(np.arange(16.).reshape(2, 4, 2), 2, return_stats=True)
    >>> mean.tolist()
    [[1.5, 5.5], [9.5, 13.5]]
    """
    return _group_norm(input, num_groups, weight, bias, eps, channel_axis, out, return_stats, None)


def _group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike], bias: Optional[ArrayLike],
                eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray], return_stats: bool,
                commit: Optional[_kernels.Commit]) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    """:func:`group_norm`, whose kernel call also applies a layer's ``commit`` (see _committing)."""
    x, dtype = _as_input(input, "input")
    axis, G, C = _group_norm_layout(x, num_groups, channel_axis)
    w = _channel_vector(weight, "weight", C, x.dtype)
    b = _channel_vector(bias, "bias", C, x.dtype)
    eps = _check_eps(eps)
    if out is not None:
        _check_out(out, x.shape, dtype)
    N = x.shape[0]
    if x.size == 0:
        y, empty = _empty_call(x, out, dtype, (N, G), False, commit)
        return (y, *empty) if return_stats else y
    S = x.size // (N * C)
    buf, _, _, _, moved = _channel_view(x, axis)
    result, commit = _committing(commit, out, buf, axis, moved, None, (N, G))
    nthreads = threads_for(x.size, S)
    if _group_norm_channels_last(x, axis, moved):
        stats: Optional[Tuple[Stats, Stats, Stats]] = _kernels.forward_column_groups(buf, result, N, S, C, G, w, b, eps,
                                                                             nthreads, commit)
    else:
        stats = _kernels.forward_rows(buf, result, 1, N * G, (C // G) * S, w, b, eps, nthreads, sub=S, groups=G,
                               stats=return_stats, commit=commit)
    y = _returned(result, out, axis, moved, dtype)
    if not return_stats or stats is None:
        return y
    return y, stats[0].reshape(N, G), stats[2].reshape(N, G)


def _group_norm_layout(x: FloatArray, num_groups: SupportsIndex, channel_axis: SupportsIndex) -> Tuple[int, int, int]:
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


def _group_norm_channels_last(x: FloatArray, axis: int, moved: bool) -> bool:
    """Whether GroupNorm runs on channels-last memory ([N, S, C]).  With one value per channel (S == 1)
    the layouts coincide and the rows of [N * G, C / G] go faster (a column pass of one row per sample
    paid a merge per column: (64, 2048) took 870 us, as rows 70 us)."""
    return (moved or axis == x.ndim - 1) and x.size != x.shape[0] * x.shape[axis]


@overload
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ...,
                  running_var: Optional[FloatArray] = ..., weight: Optional[ArrayLike] = ...,
                  bias: Optional[ArrayLike] = ..., use_input_stats: bool = ..., momentum: float = ...,
                  eps: float = ..., *, out: Optional[FloatArray] = ...,
                  return_stats: Literal[False] = ...) -> FloatArray: ...
@overload
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ...,
                  running_var: Optional[FloatArray] = ..., weight: Optional[ArrayLike] = ...,
                  bias: Optional[ArrayLike] = ..., use_input_stats: bool = ..., momentum: float = ...,
                  eps: float = ..., *, out: Optional[FloatArray] = ...,
                  return_stats: Literal[True]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ...,
                  running_var: Optional[FloatArray] = ..., weight: Optional[ArrayLike] = ...,
                  bias: Optional[ArrayLike] = ..., use_input_stats: bool = ..., momentum: float = ...,
                  eps: float = ..., *, out: Optional[FloatArray] = ...,
                  return_stats: bool) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = None,
                  running_var: Optional[FloatArray] = None, weight: Optional[ArrayLike] = None,
                  bias: Optional[ArrayLike] = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5, *, out: Optional[FloatArray] = None,
                  return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    r"""Instance normalization, as ``torch.nn.functional.instance_norm``: each (sample, channel) is
    normalized over its spatial dimensions.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, float32 or float64 (float16 is computed in float32), with at least one spatial
        dimension.
    running_mean, running_var : ndarray of shape (C,), optional
        With ``use_input_stats``, updated in place (writable ndarrays) with the mean over the batch of the
        instance statistics (unbiased variances); without, used to normalize (then required).
    weight, bias : array_like of shape (C,), optional
        Per-channel affine (:math:`\gamma` and :math:`\beta`), floating point.
    use_input_stats : bool
        Normalize with each instance's own statistics (True) or with the running statistics.
    momentum : float in [0, 1]
        Weight of the new batch in the running statistics (PyTorch's convention).
    eps : float
        Added to the variance before the square root, in the input's units squared.
    out : ndarray, keyword-only, optional
        Where to write the result (the input's shape and dtype); may be the input itself.
    return_stats : bool, keyword-only
        Also return the statistics used: what :func:`instance_norm_backward` needs.

    Returns
    -------
    y : ndarray
        Of the input's shape and dtype (``out`` when given).
    mean, rstd : ndarray of float64
        With ``return_stats`` only: the mean and :math:`1 / \sqrt{\mathrm{Var}[x] + \epsilon}` per
        (sample, channel), shape (N, C), with ``use_input_stats``; the running ones, shape (C,), without.

    Raises
    ------
    TypeError
        Input, parameters or ``out`` that are not floating point; a running statistic to update that is
        not an ndarray.
    ValueError
        Fewer than 3 dimensions; a single spatial value with ``use_input_stats``; parameters whose length
        is not C; only one of the running statistics, or none without ``use_input_stats``; a read-only
        running statistic to update; ``out`` of the wrong shape or read-only; bad ``eps`` or ``momentum``.

    Notes
    -----
    Over the spatial values of each (sample, channel), with the biased variance:

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma_c + \beta_c

    as defined by Ulyanov, Vedaldi and Lempitsky (2016) and by PyTorch's ``instance_norm``.

    References
    ----------
    Ulyanov, D., Vedaldi, A. and Lempitsky, V. (2016). Instance normalization: the missing ingredient for
    fast stylization. https://arxiv.org/abs/1607.08022

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.functional.instance_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.instance_norm(np.array([[[1., 3.], [2., 2.]]])).round(4).tolist()
    [[[-1.0, 1.0], [0.0, 0.0]]]
    >>> rm, rv = np.zeros(2), np.ones(2)
    >>> y = fastnorm.instance_norm(np.array([[[1., 3.], [2., 2.]]]), rm, rv, momentum=1.0)
    >>> rm.tolist(), rv.tolist()  # the instance means, and the unbiased variances
    ([2.0, 2.0], [2.0, 0.0])
    """
    return _instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, out,
                          return_stats, None)


def _instance_norm(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                   weight: Optional[ArrayLike], bias: Optional[ArrayLike], use_input_stats: bool, momentum: float,
                   eps: float, out: Optional[FloatArray], return_stats: bool,
                   commit: Optional[_kernels.Commit]) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    """:func:`instance_norm`, whose kernel call also applies a layer's ``commit`` (see _committing)."""
    x, dtype = _as_input(input, "input")
    if x.ndim < 3:
        raise ValueError(f"input: expected at least 3 dimensions (N, C, spatial...), got {x.ndim}-D input "
                         f"of shape {x.shape}")
    C = x.shape[1]
    eps = _check_eps(eps)
    rm, rv, w, b = _channel_params(x, C, running_mean, running_var, weight, bias)
    use_input_stats = bool(use_input_stats)
    buffers, frozen = _running_roles(use_input_stats, running_mean, running_var, rm, rv, "use_input_stats=False")
    factor = _check_momentum(momentum, allow_none=False) if buffers is not None else 0.0
    if out is not None:
        _check_out(out, x.shape, dtype)
    N = x.shape[0]
    S = x.size // (N * C) if x.size else 0
    if use_input_stats and x.size and S <= 1:
        raise ValueError(f"input: expected more than 1 spatial element when training, got input size {x.shape}")
    if x.size == 0:
        y, empty = _empty_call(x, out, dtype, (N, C) if use_input_stats else (C,), False, commit)
        return (y, *empty) if return_stats else y
    buf = _contiguous(x)
    # the running statistics take the mean over the samples of the instances' statistics
    running = None if buffers is None else (*buffers, factor, S / (S - 1))
    kept = _frozen_stats(*frozen, eps) if frozen is not None and (return_stats or commit is not None) else None
    result, commit = _committing(commit, out, buf, 1, False, running, (N, C), False, kept)
    nthreads = threads_for(x.size, S)
    if frozen is None:
        stats = _kernels.forward_rows(buf, result, 1, N * C, S, w, b, eps, nthreads, groups=C, stats=return_stats,
                               commit=commit)
        if stats is not None:
            mean, var, rstd = (a.reshape(N, C) for a in stats)
    else:
        _kernels.forward_with_stats(buf, result, N, C, S, *frozen, w, b, eps, nthreads, commit)
    y = _returned(result, out, 1, False, dtype)
    if not return_stats:
        return y
    if kept is not None:
        mean, rstd = kept
    return y, mean, rstd





_Running = Optional[Tuple[FloatArray, FloatArray]]  # (running_mean, running_var), or None


def _running_roles(use_batch_stats: bool, running_mean: object, running_var: object, rm: _Vector, rv: _Vector,
                   required: str) -> Tuple[_Running, _Running]:
    """``(buffers, frozen)``: the running statistics that a call with batch statistics updates in place
    (None where there are none), or the checked ones (``rm``, ``rv``) that a call without normalizes
    with (required then: ``required`` says when)."""
    if use_batch_stats:
        if rm is None:
            return None, None
        return (_check_buffer(running_mean, "running_mean"), _check_buffer(running_var, "running_var")), None
    if rm is None or rv is None:
        raise ValueError(f"running_mean, running_var: required when {required}")
    return None, (rm, rv)


def _frozen_stats(running_mean: FloatArray, running_var: FloatArray, eps: float) -> Tuple[Stats, Stats]:
    """The mean and inverse standard deviation that evaluation mode normalizes with, float64."""
    return running_mean.astype(np.float64), 1.0 / np.sqrt(running_var.astype(np.float64) + eps)


# ---------------------------------------------------------------------------------------------------------
# Backward passes
# ---------------------------------------------------------------------------------------------------------
# Each takes the forward's input and the statistics its ``return_stats`` gave, and returns
# (grad_input, grad_weight, grad_bias): grad_input of the input's shape and dtype, the parameter gradients
# float64 sums of dy * xhat and dy over each parameter's values (None where the layer has no such
# parameter).  ``training=False`` (frozen statistics, eval mode) drops the terms through the statistics.
#
# A training-mode backward reads the input anyway: its per-group sums of xhat and xhat**2 can be checked
# against the statistics given at no extra memory traffic (see _kernels._first_modified), and a
# RuntimeError (PyTorch's words) says when the input cannot be the one they came from: modified in place
# after the forward (``x += y``), or statistics of another input.  The layers always check (they keep the
# input by reference, and its statistics).  The functions check when given the forward's ``eps``: their
# caller passes the input itself, and may pass statistics from elsewhere (another framework's, rounded to
# float32), which the check would refuse.  Frozen statistics are never checked (they are not the input's).


def _check_of(eps: Optional[float]) -> Optional[float]:
    """The kernels' ``check`` argument: the forward's eps, or None (no check)."""
    return None if eps is None else _check_eps(eps)

def _grad_inputs(grad_output: ArrayLike, input: ArrayLike) -> Tuple[FloatArray, FloatArray, np.dtype[Any]]:
    x, dtype = _as_input(input, "input")
    g, _ = _as_input(grad_output, "grad_output")
    if g.shape != x.shape:
        raise ValueError(f"grad_output: expected shape {x.shape} (the input's), got {g.shape}")
    if g.dtype != x.dtype:
        g = g.astype(x.dtype)
    return x, g, dtype


def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: Optional[ArrayLike] = None, training: bool = True, *,
                        channel_axis: SupportsIndex = 1, eps: Optional[float] = None) -> Grads:
    r"""Gradients of :func:`batch_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like, shape (N, C, ...)
        The forward's input (float16, float32 or float64).
    mean, invstd : array_like of shape (C,)
        The statistics the forward normalized with (its ``return_stats``): the batch's in training
        mode; the running mean and ``1 / sqrt(running_var + eps)`` in evaluation mode.
    weight : array_like of shape (C,), optional
        The forward's weight :math:`\gamma` (None: 1).
    training : bool
        Whether the statistics were the batch's (they then depend on the input, and their gradient
        terms are included).
    channel_axis : int, keyword-only
        The forward's ``channel_axis``.
    eps : float, keyword-only, optional
        The forward's eps: given, the input is checked against the statistics (see Raises).

    Returns
    -------
    grad_input : ndarray
        Of the input's shape and dtype.
    grad_weight, grad_bias : ndarray of float64, shape (C,)
        :math:`\sum \partial L / \partial y \cdot \hat x` and :math:`\sum \partial L / \partial y` over
        each channel's values (0 for an empty input).

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point; ``channel_axis`` not an integer.
    ValueError
        Fewer than 2 dimensions; ``grad_output`` of another shape; ``mean``, ``invstd`` or ``weight`` not
        of shape (C,); ``channel_axis`` out of range.
    RuntimeError
        With ``training`` and ``eps``, where ``input`` does not have the statistics given, beyond rounding: it was modified in place
        after the forward ("one of the variables needed for gradient computation has been modified by an
        inplace operation", as PyTorch), or they are another input's.

    Notes
    -----
    With :math:`\hat x = (x - \mu) \sigma^{-1}` and :math:`g = \gamma \, \partial L / \partial y`, the
    means taken over the M values of each channel:

    .. math::

        \frac{\partial L}{\partial x} = \sigma^{-1} \left( g - \overline{g} - \hat x \,
        \overline{g \hat x} \right) \text{ (training)}, \qquad
        \frac{\partial L}{\partial x} = \sigma^{-1} g \text{ (frozen statistics)}

    the derivative of Ioffe and Szegedy's (2015) transform, as PyTorch's ``batch_norm`` backward
    computes it.

    References
    ----------
    Ioffe, S. and Szegedy, C. (2015). Batch normalization: accelerating deep network training by reducing
    internal covariate shift. ICML. https://arxiv.org/abs/1502.03167

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.random.default_rng(0).normal(size=(8, 3))
    >>> y, mean, invstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    >>> dx, dw, db = fastnorm.batch_norm_backward(np.ones_like(y), x, mean, invstd)
    >>> bool(np.abs(dx).max() < 1e-12), db.tolist()  # a constant gradient does not move a normalized y
    (True, [8.0, 8.0, 8.0])
    """
    x, g, dtype = _grad_inputs(grad_output, input)
    if x.ndim < 2:
        raise ValueError(f"input: expected at least 2 dimensions (N, C, ...), got {x.ndim}-D input of shape {x.shape}")
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    C = x.shape[axis]
    mean_ = _stat_vector(mean, "mean", (C,))
    invstd_ = _stat_vector(invstd, "invstd", (C,))
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    buf, N, C, S, moved = _channel_view(x, axis)
    gbuf = np.ascontiguousarray(np.moveaxis(g, axis, -1) if moved else g)
    dx = _kernels.empty_like(buf)
    nthreads = threads_for(x.size, S if S > 1 else 64)
    check = _check_of(eps)
    if S == 1:
        sum_dy, sum_dyx = _kernels.backward_columns(buf, gbuf, dx, 1, N, C, C, mean_, invstd_, w, bool(training),
                                               nthreads, check)
    elif _by_columns(N, S):  # short runs: by columns, as the forward
        sum_dy, sum_dyx = (a.reshape(C, S).sum(axis=1) for a in _kernels.backward_columns(
            buf, gbuf, dx, 1, N, C * S, C, mean_, invstd_, _repeat(w, S), bool(training), nthreads, check))
    else:
        sum_dy, sum_dyx = _kernels.backward_rows(buf, gbuf, dx, N, C, S, mean_, invstd_, w, bool(training), nthreads,
                                            check=check)
    return _finish(dx, None, axis, moved, dtype), sum_dyx, sum_dy


def _rows_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, mean: Optional[ArrayLike],
                   rstd: ArrayLike, weight: Optional[ArrayLike], bias: Optional[ArrayLike],
                   rms: bool, eps: Optional[float]) -> Grads:
    """LayerNorm's or RMSNorm's (``rms``, without ``mean``) grad_input and per-element parameter sums."""
    x, g, dtype = _grad_inputs(grad_output, input)
    shape = _check_normalized_shape(normalized_shape, x)
    lead = x.shape[:x.ndim - len(shape)]
    mean_ = np.zeros(math.prod(lead)) if rms else _stat_vector(mean, "mean", lead)
    rstd_ = _stat_vector(rstd, "rstd", lead)
    w = _elementwise_vector(weight, "weight", shape, x)
    _elementwise_vector(bias, "bias", shape, x)  # only its presence matters; checked as the forward's
    D = math.prod(shape)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(shape), np.zeros(shape)
    buf, gbuf = _contiguous(x), _contiguous(g)
    dx = _kernels.empty_like(buf)
    sum_dy, sum_dyx = _kernels.backward_rows(buf, gbuf, dx, 1, x.size // D, D, mean_, rstd_, w, True,
                                        threads_for(x.size, D), per_element=True, rms=rms, check=_check_of(eps))
    return _finish(dx, None, 0, False, dtype), sum_dyx.reshape(shape), sum_dy.reshape(shape)


@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, mean: ArrayLike,
                        rstd: ArrayLike, weight: ArrayLike, bias: ArrayLike, *,
                        eps: Optional[float] = ...) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, mean: ArrayLike,
                        rstd: ArrayLike, weight: ArrayLike, bias: None = ..., *,
                        eps: Optional[float] = ...) -> Tuple[FloatArray, Stats, None]: ...
@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, mean: ArrayLike,
                        rstd: ArrayLike, weight: None = ..., bias: None = ..., *,
                        eps: Optional[float] = ...) -> Tuple[FloatArray, None, None]: ...
@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., *,
                        eps: Optional[float] = ...) -> Tuple[FloatArray, Optional[Stats], Optional[Stats]]: ...
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, *,
                        eps: Optional[float] = None) -> Tuple[FloatArray, Optional[Stats], Optional[Stats]]:
    r"""Gradients of :func:`layer_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like, shape ``(..., *normalized_shape)``
        The forward's input (float16, float32 or float64).
    normalized_shape : int or sequence of int
        The forward's ``normalized_shape``.
    mean, rstd : array_like of the input's leading shape
        What ``layer_norm(..., return_stats=True)`` returned.
    weight : array_like of shape normalized_shape, optional
        The forward's weight :math:`\gamma` (None: 1, and no grad_weight).
    bias : array_like of shape normalized_shape, optional
        The forward's bias, or any array of its shape: only whether there is one matters (None: no
        grad_bias).
    eps : float, keyword-only, optional
        The forward's eps: given, the input is checked against the statistics (see Raises).

    Returns
    -------
    grad_input : ndarray
        Of the input's shape and dtype.
    grad_weight : ndarray of float64 of shape normalized_shape, or None
        :math:`\sum \partial L / \partial y \cdot \hat x` over the rows; None without ``weight``.
    grad_bias : ndarray of float64 of shape normalized_shape, or None
        :math:`\sum \partial L / \partial y` over the rows; None without ``bias``.

    Raises
    ------
    TypeError
        ``grad_output``, ``input``, ``weight`` or ``bias`` not floating point; ``normalized_shape`` not
        integers.
    ValueError
        ``grad_output`` of another shape; ``normalized_shape`` not the input's trailing dimensions;
        ``mean``, ``rstd``, ``weight`` or ``bias`` of the wrong shape.
    RuntimeError
        With ``eps``, where ``input`` does not have the statistics given, beyond rounding: it was modified in place
        after the forward ("one of the variables needed for gradient computation has been modified by an
        inplace operation", as PyTorch), or they are another input's.

    Notes
    -----
    With :math:`\hat x = (x - \mu) \sigma^{-1}` and :math:`g = \gamma \, \partial L / \partial y`, the
    means taken over the D values of each row:

    .. math::

        \frac{\partial L}{\partial x} = \sigma^{-1} \left( g - \overline{g} - \hat x \,
        \overline{g \hat x} \right)

    the derivative of the transform of Ba, Kiros and Hinton (2016), as PyTorch's ``layer_norm`` backward
    computes it.

    References
    ----------
    Ba, J. L., Kiros, J. R. and Hinton, G. E. (2016). Layer normalization. https://arxiv.org/abs/1607.06450

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x, w = np.array([[1., 2., 4.], [0., 3., 3.]]), np.ones(3)
    >>> y, mean, rstd = fastnorm.layer_norm(x, 3, w, return_stats=True)
    >>> dx, dw, db = fastnorm.layer_norm_backward(np.ones_like(x), x, 3, mean, rstd, w)
    >>> bool(np.abs(dx).max() < 1e-12), db is None, bool(np.allclose(dw, y.sum(axis=0)))
    (True, True, True)
    """
    dx, dw, db = _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, False, eps)
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


@overload
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, rstd: ArrayLike,
                      weight: ArrayLike, *, eps: Optional[float] = ...) -> Tuple[FloatArray, Stats, None]: ...
@overload
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, rstd: ArrayLike,
                      weight: None = ..., *, eps: Optional[float] = ...) -> Tuple[FloatArray, None, None]: ...
@overload
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, rstd: ArrayLike,
                      weight: Optional[ArrayLike] = ..., *,
                      eps: Optional[float] = ...) -> Tuple[FloatArray, Optional[Stats], None]: ...
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Shape, rstd: ArrayLike,
                      weight: Optional[ArrayLike] = None, *,
                      eps: Optional[float] = None) -> Tuple[FloatArray, Optional[Stats], None]:
    r"""Gradients of :func:`rms_norm` with respect to its input and weight.

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like, shape ``(..., *normalized_shape)``
        The forward's input (float16, float32 or float64).
    normalized_shape : int or sequence of int
        The forward's ``normalized_shape``.
    rstd : array_like of the input's leading shape
        What ``rms_norm(..., return_stats=True)`` returned.
    weight : array_like of shape normalized_shape, optional
        The forward's weight :math:`\gamma` (None: 1, and no grad_weight).
    eps : float, keyword-only, optional
        The forward's eps (None there: the compute dtype's, as :func:`rms_norm`): given, the input is checked against the statistics (see Raises).

    Returns
    -------
    grad_input : ndarray
        Of the input's shape and dtype.
    grad_weight : ndarray of float64 of shape normalized_shape, or None
        :math:`\sum \partial L / \partial y \cdot \hat x` over the rows; None without ``weight``.
    None
        In the place of grad_bias (RMSNorm has no bias), so that every backward returns three values.

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point; ``normalized_shape`` not integers.
    ValueError
        ``grad_output`` of another shape; ``normalized_shape`` not the input's trailing dimensions;
        ``rstd`` or ``weight`` of the wrong shape.
    RuntimeError
        With ``eps``, where ``input`` does not have the statistics given, beyond rounding: it was modified in place
        after the forward ("one of the variables needed for gradient computation has been modified by an
        inplace operation", as PyTorch), or they are another input's.

    Notes
    -----
    With :math:`\hat x = x \, r` (:math:`r` the inverse root mean square) and
    :math:`g = \gamma \, \partial L / \partial y`, the mean taken over the D values of each row:

    .. math:: \frac{\partial L}{\partial x} = r \left( g - \hat x \, \overline{g \hat x} \right)

    the derivative of Zhang and Sennrich's (2019) transform.

    References
    ----------
    Zhang, B. and Sennrich, R. (2019). Root mean square layer normalization. NeurIPS.
    https://arxiv.org/abs/1910.07467

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.array([[3., 4.]])
    >>> y, rstd = fastnorm.rms_norm(x, 2, eps=0.0, return_stats=True)
    >>> dx, dw, _ = fastnorm.rms_norm_backward(x, x, 2, rstd)  # dy = x: along x, the scale cancels it
    >>> bool(np.abs(dx).max() < 1e-12), dw
    (True, None)
    """
    dx, dw, _ = _rows_backward(grad_output, input, normalized_shape, None, rstd, weight, None, True, eps)
    return dx, (dw if weight is not None else None), None


def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, num_groups: SupportsIndex, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = None, *,
                        channel_axis: SupportsIndex = 1, eps: Optional[float] = None) -> Grads:
    r"""Gradients of :func:`group_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like, shape (N, C, ...)
        The forward's input (float16, float32 or float64).
    num_groups : int
        The forward's ``num_groups`` (G).
    mean, rstd : array_like of shape (N, G)
        What ``group_norm(..., return_stats=True)`` returned.
    weight : array_like of shape (C,), optional
        The forward's weight :math:`\gamma` (None: 1).
    channel_axis : int, keyword-only
        The forward's ``channel_axis``: 1 or -1.
    eps : float, keyword-only, optional
        The forward's eps: given, the input is checked against the statistics (see Raises).

    Returns
    -------
    grad_input : ndarray
        Of the input's shape and dtype.
    grad_weight, grad_bias : ndarray of float64, shape (C,)
        :math:`\sum \partial L / \partial y \cdot \hat x` and :math:`\sum \partial L / \partial y` over
        each channel's values.

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point; ``num_groups`` or ``channel_axis``
        not an integer.
    ValueError
        ``grad_output`` of another shape; the forward's layout errors (see :func:`group_norm`); ``mean``,
        ``rstd`` or ``weight`` of the wrong shape.
    RuntimeError
        With ``eps``, where ``input`` does not have the statistics given, beyond rounding: it was modified in place
        after the forward ("one of the variables needed for gradient computation has been modified by an
        inplace operation", as PyTorch), or they are another input's.

    Notes
    -----
    The formula of :func:`layer_norm_backward`, the means taken over the :math:`(C / G) \cdot S` values of
    each (sample, group) and :math:`\gamma` indexed by channel; Wu and He's (2018) transform.

    References
    ----------
    Wu, Y. and He, K. (2018). Group normalization. ECCV. https://arxiv.org/abs/1803.08494

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 3))
    >>> y, mean, rstd = fastnorm.group_norm(x, 2, return_stats=True)
    >>> dx, dw, db = fastnorm.group_norm_backward(np.ones_like(x), x, 2, mean, rstd)
    >>> bool(np.abs(dx).max() < 1e-12), db.tolist()
    (True, [6.0, 6.0, 6.0, 6.0])
    """
    x, g, dtype = _grad_inputs(grad_output, input)
    axis, G, C = _group_norm_layout(x, num_groups, channel_axis)
    N = x.shape[0]
    mean_ = _stat_vector(mean, "mean", (N, G))
    rstd_ = _stat_vector(rstd, "rstd", (N, G))
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    S = x.size // (N * C)
    buf, _, _, _, moved = _channel_view(x, axis)
    gbuf = np.ascontiguousarray(np.moveaxis(g, axis, -1) if moved else g)
    dx = _kernels.empty_like(buf)
    nthreads = threads_for(x.size, S)
    if _group_norm_channels_last(x, axis, moved):
        sum_dy, sum_dyx = _kernels.backward_columns(buf, gbuf, dx, N, S, C, G, mean_, rstd_, w, True, nthreads,
                                               _check_of(eps))
    else:
        sum_dy, sum_dyx = _kernels.backward_rows(buf, gbuf, dx, 1, N * G, (C // G) * S, mean_, rstd_, w, True,
                                            nthreads, sub=S, groups=G, check=_check_of(eps))
    return (_finish(dx, None, axis, moved, dtype), sum_dyx.reshape(N, C).sum(axis=0),
            sum_dy.reshape(N, C).sum(axis=0))


def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                           weight: Optional[ArrayLike] = None, use_input_stats: bool = True, *,
                           eps: Optional[float] = None) -> Grads:
    r"""Gradients of :func:`instance_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like, shape (N, C, ...)
        The forward's input (float16, float32 or float64).
    mean, rstd : array_like
        What ``instance_norm(..., return_stats=True)`` returned: shape (N, C) with ``use_input_stats``,
        the running statistics' (C,) without.
    weight : array_like of shape (C,), optional
        The forward's weight :math:`\gamma` (None: 1).
    use_input_stats : bool
        The forward's ``use_input_stats``: whether the statistics depend on the input.
    eps : float, keyword-only, optional
        The forward's eps: given, the input is checked against the statistics (see Raises).

    Returns
    -------
    grad_input : ndarray
        Of the input's shape and dtype.
    grad_weight, grad_bias : ndarray of float64, shape (C,)
        :math:`\sum \partial L / \partial y \cdot \hat x` and :math:`\sum \partial L / \partial y` over
        each channel's values.

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point.
    ValueError
        Fewer than 3 dimensions; ``grad_output`` of another shape; ``mean``, ``rstd`` or ``weight`` of the
        wrong shape.
    RuntimeError
        With ``use_input_stats`` and ``eps``, where ``input`` does not have the statistics given, beyond rounding: it was modified in place
        after the forward ("one of the variables needed for gradient computation has been modified by an
        inplace operation", as PyTorch), or they are another input's.

    Notes
    -----
    The formulas of :func:`batch_norm_backward`, the means taken over the spatial values of each
    (sample, channel); Ulyanov, Vedaldi and Lempitsky's (2016) transform.

    References
    ----------
    Ulyanov, D., Vedaldi, A. and Lempitsky, V. (2016). Instance normalization: the missing ingredient for
    fast stylization. https://arxiv.org/abs/1607.08022

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 5))
    >>> y, mean, rstd = fastnorm.instance_norm(x, return_stats=True)
    >>> dx, dw, db = fastnorm.instance_norm_backward(np.ones_like(x), x, mean, rstd)
    >>> bool(np.abs(dx).max() < 1e-12), db.tolist()
    (True, [10.0, 10.0, 10.0])
    """
    x, g, dtype = _grad_inputs(grad_output, input)
    if x.ndim < 3:
        raise ValueError(f"input: expected at least 3 dimensions (N, C, spatial...), got {x.ndim}-D input "
                         f"of shape {x.shape}")
    N, C = x.shape[:2]
    shape = (N, C) if use_input_stats else (C,)
    mean_ = np.broadcast_to(_stat_vector(mean, "mean", shape).reshape(shape), (N, C)).reshape(-1)
    rstd_ = np.broadcast_to(_stat_vector(rstd, "rstd", shape).reshape(shape), (N, C)).reshape(-1)
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    buf, gbuf = _contiguous(x), _contiguous(g)
    dx = _kernels.empty_like(buf)
    sum_dy, sum_dyx = _kernels.backward_rows(buf, gbuf, dx, 1, N * C, x.size // (N * C), np.ascontiguousarray(mean_),
                                        np.ascontiguousarray(rstd_), w, bool(use_input_stats),
                                        threads_for(x.size, x.size // (N * C)), groups=C, check=_check_of(eps))
    return (_finish(dx, None, 1, False, dtype), sum_dyx.reshape(N, C).sum(axis=0),
            sum_dy.reshape(N, C).sum(axis=0))


# ---------------------------------------------------------------------------------------------------------
# moments and batch_normalization (TensorFlow's names)
# ---------------------------------------------------------------------------------------------------------

def _normalize_axes(axes: Shape, ndim: int) -> Tuple[int, ...]:
    items = axes if isinstance(axes, Iterable) and not isinstance(axes, numbers.Integral) else (axes,)
    try:
        checked = tuple(_check_axis(a, ndim, "axes") for a in items)
    except TypeError:
        raise TypeError(f"axes: expected an integer or a sequence of integers, got {axes!r}") from None
    if len(set(checked)) != len(checked):
        raise ValueError(f"axes: repeated axis in {checked}")
    return tuple(sorted(checked))


def moments(x: ArrayLike, axes: Shape, keepdims: bool = False) -> Tuple[FloatArray, FloatArray]:
    r"""Mean and biased variance of ``x`` over ``axes``, as ``tf.nn.moments``.

    Parameters
    ----------
    x : array_like
        float16, float32 or float64.
    axes : int or sequence of int
        Axes to reduce (negative ones count from the end); the others are kept.
    keepdims : bool
        Keep the reduced axes with length 1.

    Returns
    -------
    mean, variance : ndarray
        Of x's dtype and the kept shape; NaN where the reduction is over no element.  The variance is in
        x's units squared.

    Raises
    ------
    TypeError
        ``x`` not floating point (or a masked array); ``axes`` not integers.
    ValueError
        An axis out of range or repeated.

    Notes
    -----
    :math:`\mu = \frac{1}{n} \sum x`, :math:`\sigma^2 = \frac{1}{n} \sum (x - \mu)^2`, as TensorFlow's
    ``tf.nn.moments``.  Computed in one pass with blocked shifted sums in double precision merged with
    Chan, Golub and LeVeque's (1983) formula: the float32 mean of data at 1e4 +- 1 is within one float32
    ulp of the exact value, where :math:`E[x^2] - E[x]^2` loses every digit of the variance.  The
    merge order is fixed by the shape, so the bits do not depend on the thread count.

    References
    ----------
    Chan, T. F., Golub, G. H. and LeVeque, R. J. (1983). Algorithms for computing the sample variance:
    analysis and recommendations. The American Statistician 37(3), 242-247.

    TensorFlow: https://www.tensorflow.org/api_docs/python/tf/nn/moments

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> m, v = fastnorm.moments(np.array([[1., 2.], [3., 5.]]), axes=0)
    >>> m.tolist(), v.tolist()
    ([2.0, 3.5], [1.0, 2.25])
    >>> m, v = fastnorm.moments(np.array([[1., 2.], [3., 5.]]), axes=1, keepdims=True)
    >>> m.tolist(), v.tolist()
    ([[1.5], [4.0]], [[0.25], [1.0]])
    """
    x, dtype = _as_input(x, "x")
    _, mean, var = moments64(x, axes, keepdims)
    return mean.astype(dtype), var.astype(dtype)


def moments64(x: FloatArray, axes: Shape, keepdims: bool = False) -> Tuple[int, Stats, Stats]:
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
                        scale: Optional[ArrayLike], variance_epsilon: float, name: Optional[str] = None) -> FloatArray:
    r"""``(x - mean) / sqrt(variance + variance_epsilon) * scale + offset``, as ``tf.nn.batch_normalization``.

    Parameters
    ----------
    x : array_like
        float16, float32 or float64.
    mean, variance : array_like
        Real numbers that broadcast against ``x`` (the variance in x's units squared).
    offset, scale : array_like or None
        :math:`\beta` and :math:`\gamma`, real numbers that broadcast against ``x``; None: none.
    variance_epsilon : float
        Added to the variance before the square root (>= 0, finite).
    name : str, optional
        Accepted for TensorFlow's signature; unused.

    Returns
    -------
    ndarray
        Of the broadcast shape and x's dtype.

    Raises
    ------
    TypeError
        ``x`` not floating point; ``mean`` or ``variance`` None; a parameter that is not real numbers.
    ValueError
        Shapes that do not broadcast; a negative or non-finite ``variance_epsilon``.

    Notes
    -----
    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \, \gamma + \beta

    as TensorFlow's ``tf.nn.batch_normalization``.  When the parameters vary along at most one axis of
    ``x`` (the usual per-channel case, e.g. the ``keepdims`` output of :func:`moments`) the fused kernel
    runs; other broadcasts are computed in float64 with NumPy.

    References
    ----------
    TensorFlow: https://www.tensorflow.org/api_docs/python/tf/nn/batch_normalization

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.array([[1., 2.], [3., 6.]])
    >>> m, v = fastnorm.moments(x, axes=0)
    >>> fastnorm.batch_normalization(x, m, v, None, None, 0.0).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    >>> fastnorm.batch_normalization(x, 1.0, 4.0, 10.0, 2.0, 0.0).tolist()  # (x - 1) / 2 * 2 + 10
    [[10.0, 11.0], [12.0, 15.0]]
    """
    x, dtype = _as_input(x, "x")
    eps = _check_eps(variance_epsilon, "variance_epsilon")
    params: Dict[str, Stats] = {}
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
            if axis is None:
                N, S = 1, x.size
            else:
                N, S = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
            result = _kernels.empty_like(buf)
            _kernels.forward_with_stats(buf, result, N, C, S, vec["mean"], vec["variance"], vec.get("scale"),
                               vec.get("offset"), eps, threads_for(x.size))
            return result.astype(dtype, copy=False)
    inv = 1.0 / np.sqrt(params["variance"] + eps)
    if "scale" in params:
        inv = inv * params["scale"]
    y = (x.astype(np.float64) - params["mean"]) * inv
    if "offset" in params:
        y = y + params["offset"]
    return np.broadcast_to(y, shape).astype(dtype)
