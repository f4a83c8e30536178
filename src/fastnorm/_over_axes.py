"""batch_norm over several channel axes and LayerNorm/RMSNorm over any axes, with the backward of the
first: each checks its axes, sees the input as the view the one-axis function takes (``[N, K, S]``
with the K channels on axis 1; rows ``[kept..., D]``), calls that function (passed in, so that this
module does not import the ones that call it) and turns its results back into the input's axes.  The
views come from ``_plan._grouped``: no copy where the input's memory holds the axes together."""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels
from ._plan import _grouped, _rows_order, _transposed, _transposed_view, _untransposed
from ._validation import (FloatArray, Grads, Shape, Stats, _check_add, _check_axes, _check_buffer, _check_ndim,
                          _check_normalized_axes, _check_out, _shaped_like)

_BatchNormResult = Union[FloatArray, Tuple[FloatArray, Stats, Stats]]


def _channel_plan(x: FloatArray, channel_axis: Shape) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...],
                                                                 Tuple[int, ...], Tuple[int, int, int]]:
    """(axes, their sizes, order, transposed shape, ``[N, K, S]``) of channels over several axes."""
    _check_ndim(x, 2, "(N, C, ...)")
    axes, shape = _check_axes(channel_axis, x, "channel_axis")
    order, lead, _ = _grouped(x, axes, trailing=False)
    t_shape = tuple(x.shape[a] for a in order)
    return axes, shape, order, t_shape, (math.prod(t_shape[:lead]), math.prod(shape),
                                         math.prod(t_shape[lead + len(axes):]))


def _view_of_out(out: Optional[FloatArray], x: FloatArray, dtype: np.dtype[Any], order: Tuple[int, ...],
                 t_shape: Tuple[int, ...], shape: Tuple[int, ...]) -> Tuple[Optional[FloatArray], List[Any]]:
    """``(o, delivery)``: ``out`` (checked) as the array of ``shape`` that the kernel writes, its view in the
    transposed order where its memory allows, otherwise a new array and ``delivery``, the copy into
    ``out`` that the kernel call applies after its own writes (a ``(destination, source)`` pair)."""
    if out is None:
        return None, []
    _check_out(out, x.shape, dtype)
    view = None if out.dtype != x.dtype else _transposed_view(out, order, shape)
    if view is not None:
        return view, []
    o = _kernels.empty(shape, x.dtype)
    return o, [(np.transpose(out, order), np.reshape(o, t_shape))]


def _batch_norm_over_axes(batch_norm: Callable[..., _BatchNormResult], x: FloatArray, dtype: np.dtype[Any],
                          running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                          weight: Optional[ArrayLike], bias: Optional[ArrayLike], training: bool,
                          momentum: Optional[float], eps: float, channel_axis: Shape, out: Optional[FloatArray],
                          bessel: bool, num_batches_tracked: Optional[int], return_stats: bool,
                          commit: Optional[_kernels.Commit], act: int, add: Optional[ArrayLike]) -> _BatchNormResult:
    """``batch_norm`` (``_forward._batch_norm``) with channels over several axes, the parameters as
    vectors of K; the activation and ``add`` go to its kernel, ``add`` seen as the input is."""
    axes, shape, order, t_shape, shape3 = _channel_plan(x, channel_axis)
    rm, rv, w, b = (_shaped_like(v, name, shape, axes) for v, name in
                    ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")))
    copies = []
    if training:  # updated in place: the caller's arrays (checked as ndarrays here, as views by the callee)
        for v, name, flat in ((running_mean, "running_mean", rm), (running_var, "running_var", rv)):
            if v is not None:
                _check_buffer(v, name)
                if flat is not None and not np.shares_memory(v, flat):  # a flat copy, written back
                    copies.append((v, np.reshape(flat, shape)))
    add_ = _check_add(add, x.shape)
    out3, delivery = _view_of_out(out, x, dtype, order, t_shape, shape3)
    result = batch_norm(_transposed(x, order, shape3), rm, rv, w, b, training, momentum, eps, 1, out3, bessel,
                        num_batches_tracked, return_stats, commit, act,
                        None if add_ is None else _transposed(np.broadcast_to(add_, x.shape), order, shape3),
                        tuple(delivery + copies) or None)
    y3 = result[0] if isinstance(result, tuple) else result
    y = out if out is not None else _untransposed(y3, order, t_shape).astype(dtype, copy=False)
    if not isinstance(result, tuple):
        return y
    return y, np.reshape(result[1], shape), np.reshape(result[2], shape)


def _batch_norm_backward_over_axes(batch_norm_backward: Callable[..., Grads], x: FloatArray, g: FloatArray,
                                   dtype: np.dtype[Any], mean: ArrayLike, invstd: ArrayLike,
                                   weight: Optional[ArrayLike], training: bool, channel_axis: Shape,
                                   eps: Optional[float]) -> Grads:
    """``batch_norm_backward`` with channels over several axes, on the forward's ``[N, K, S]`` view."""
    axes, shape, order, t_shape, shape3 = _channel_plan(x, channel_axis)
    mean_, invstd_, w = (_shaped_like(v, name, shape, axes) for v, name in
                         ((mean, "mean"), (invstd, "invstd"), (weight, "weight")))
    dx, dw, db = batch_norm_backward(_transposed(g, order, shape3), _transposed(x, order, shape3), mean_, invstd_,
                                     w, training, channel_axis=1, eps=eps)
    return _untransposed(dx, order, t_shape).astype(dtype, copy=False), dw.reshape(shape), db.reshape(shape)


def _rows_norm_over_axes(rows_norm: Callable[..., Tuple[FloatArray, Optional[Tuple[Stats, Stats]]]], x: FloatArray,
                         dtype: np.dtype[Any], normalized_shape: Optional[Shape], axes: Shape,
                         weight: Optional[ArrayLike], bias: Optional[ArrayLike], eps: Optional[float],
                         out: Optional[FloatArray], rms: bool, return_stats: bool,
                         commit: Optional[_kernels.Commit], act: int,
                         copies: Optional[Tuple[Tuple[FloatArray, FloatArray], ...]]
                         ) -> Tuple[FloatArray, Optional[Tuple[Stats, Stats]]]:
    """``_rows_forward._rows_norm`` over any ``axes``: x seen as rows ``[kept..., D]``, the parameters in the
    order of the rows; the activation and ``copies`` go to its kernel call."""
    axes_, shape = _check_normalized_axes(normalized_shape, axes, x)
    order, perm, shape2 = _rows_order(x, axes_)
    t_shape = tuple(x.shape[a] for a in order)
    w = _shaped_like(weight, "weight", shape, axes_, perm)
    b = _shaped_like(bias, "bias", shape, axes_, perm)
    out2, delivery = _view_of_out(out, x, dtype, order, t_shape, shape2)
    y2, stats = rows_norm(_transposed(x, order, shape2), shape2[-1], w, b, eps, out2, rms, return_stats, commit,
                          act=act, copies=tuple(delivery) + (copies or ()) or None)
    return out if out is not None else _untransposed(y2, order, t_shape).astype(dtype, copy=False), stats
