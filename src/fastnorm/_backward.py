"""The backwards of ``fastnorm.functional``: the gradients of each forward with respect to its input,
weight and bias, from the forward's input and the statistics its ``return_stats`` gave.

Each runs the forward's steps: validate (``_validation``), plan the view (``_plan``), call the kernel,
finish (``_plan._finish``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional, SupportsIndex, Tuple, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels, _masked
from ._epilogue import _channel_axes, _Fold, _per_channel, _pre_activation, _row_axes, _through_activation
from ._options import ChannelBackward, RowsBackward
from ._over_axes import _batch_norm_backward_over_axes
from ._plan import (_by_columns, _channel_view, _contiguous, _finish, _group_norm_channels_last, _like_view, _repeat,
                    _rows_order, _transposed, _untransposed)
from ._threads import threads_for
from ._validation import (FloatArray, Grads, GradsWithAdd, Shape, Stats, _channel_vector, _check_channels,
                          _check_instance_axis, _check_ndim, _check_normalized_axes, _check_normalized_shape, _check_of,
                          _elementwise_vector, _grad_inputs, _group_norm_layout, _several_axes,
                          _shaped_like, _stat_vector)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11

_PARTS = {
    "grad_output": """grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.""",
    "channel_input": """input : array_like, shape (N, C, ...)
        The forward's input (float16, bfloat16, float32 or float64).""",
    "channel_weight": r"""weight : array_like of shape (C,), optional
        The forward's weight :math:`\gamma` (None: 1).""",
    "eps": """eps : float, keyword-only, optional
        The forward's eps: given, the input is checked against the statistics (see Raises).""",
    "mask": """mask : array_like of bool, keyword-only, optional
        The forward's ``mask`` (a ``numpy.ma`` input: its mask): the statistics depended on the values where
        it is True only, so the gradient through them reaches those values only.""",
    "channel_grads": r"""Returns
    -------
    grad_input : ndarray
        Of the input's shape and dtype.
    grad_weight, grad_bias : ndarray of float64, shape (C,)
        :math:`\sum \partial L / \partial y \cdot \hat x` and :math:`\sum \partial L / \partial y` over
        each channel's values""",
    "activation": """activation : str or None, keyword-only
        The forward's ``activation``: the gradient goes through it, at the pre-activation recomputed from
        the input, the statistics, the parameters (``bias`` included) and ``add``.
    add : array_like, keyword-only, optional
        The forward's ``add``: given, its gradient is returned fourth.
    bias : array_like of shape (C,), keyword-only, optional
        The forward's bias: needed (with ``activation``) to recompute the pre-activation.""",
    "grad_add": """
    grad_add : ndarray
        With ``add`` only: the gradient of ``add`` (the gradient at the pre-activation), of the input's
        shape and dtype.""",
    "rows_input": """input : array_like, shape ``(..., *normalized_shape)``
        The forward's input (float16, bfloat16, float32 or float64).
    normalized_shape : int or sequence of int, or None
        The forward's ``normalized_shape``.""",
    "rows_grads": r"""Returns
    -------
    grad_input : ndarray
        Of the input's shape and dtype.
    grad_weight : ndarray of float64 of shape normalized_shape, or None
        :math:`\sum \partial L / \partial y \cdot \hat x` over the rows; None without ``weight``.""",
    "xhat": r"""With :math:`\hat x = (x - \mu) \sigma^{-1}` and :math:`g = \gamma \, \partial L / \partial y`, the
    means taken over the""",
    "dx": r""".. math::

        \frac{\partial L}{\partial x} = \sigma^{-1} \left( g - \overline{g} - \hat x \,
        \overline{g \hat x} \right)""",
    "modified": """
        where ``input`` does not have the statistics given, beyond rounding: it was modified in place after
        the forward ("one of the variables needed for gradient computation has been modified by an inplace
        operation", as PyTorch), or they are another input's.""",
}
_Function = TypeVar("_Function", bound=Callable[..., Any])


def _documented(function: _Function) -> _Function:
    """The docstring's ``{part}`` placeholders filled with the text the backwards share (_PARTS)."""
    doc = function.__doc__ or ""
    for key, value in _PARTS.items():
        doc = doc.replace("{" + key + "}", value)
    function.__doc__ = doc
    return function


__all__ = ["batch_norm_backward", "layer_norm_backward", "rms_norm_backward", "group_norm_backward",
           "instance_norm_backward"]


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


@overload
def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: Optional[ArrayLike] = ..., training: bool = ..., *, add: None = ...,
                        **options: Unpack[ChannelBackward]) -> Grads: ...
@overload
def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: Optional[ArrayLike] = ..., training: bool = ..., *, add: ArrayLike,
                        **options: Unpack[ChannelBackward]) -> GradsWithAdd: ...
@_documented
def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                        weight: Optional[ArrayLike] = None, training: bool = True, *,
                        channel_axis: SupportsIndex = 1, eps: Optional[float] = None,
                        mask: Optional[ArrayLike] = None, activation: Optional[str] = None,
                        add: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None) -> Any:
    r"""Gradients of :func:`batch_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    {grad_output}
    {channel_input}
    mean, invstd : array_like of shape (C,)
        The statistics the forward normalized with (its ``return_stats``): the batch's in training
        mode; the running mean and ``1 / sqrt(running_var + eps)`` in evaluation mode.
    {channel_weight}
    training : bool
        Whether the statistics were the batch's (they then depend on the input, and their gradient
        terms are included).
    channel_axis : int or tuple of int, keyword-only
        The forward's ``channel_axis``; with a tuple, ``mean``, ``invstd``, ``weight`` and the returned
        gradients have the shape of those axes.
    {eps}
    {mask}
    {activation}

    {channel_grads} (0 for an empty input).{grad_add}

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point; ``channel_axis`` not an integer.
    ValueError
        Fewer than 2 dimensions; ``grad_output`` of another shape; ``mean``, ``invstd`` or ``weight`` not
        of shape (C,); ``channel_axis`` out of range.
    RuntimeError
        With ``training`` and ``eps``,{modified}

    Notes
    -----
    {xhat} M values of each channel:

    {dx} \text{ (training)}, \qquad
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
    >>> add = np.ones_like(x)
    >>> y = fastnorm.batch_norm(x, training=True, activation="relu", add=add)
    >>> dx, dw, db, dadd = fastnorm.batch_norm_backward(np.ones_like(y), x, mean, invstd, activation="relu", add=add)
    >>> bool(np.array_equal(dadd, (y > 0).astype(float)))  # the gradient reaches add where relu passed it
    True
    """
    if activation is not None or add is not None:
        return _through_activation(
            grad_output, input, activation, add,
            lambda x: _pre_activation(x, _channel_axes(x, channel_axis), _channel_axes(x, channel_axis), mean,
                                      invstd, weight, bias),
            lambda dz: batch_norm_backward(dz, input, mean, invstd, weight, training, channel_axis=channel_axis,
                                           eps=eps, mask=mask))
    if _masked.is_masked(input, mask):
        if _several_axes(channel_axis):
            raise ValueError("mask: not supported together with several channel axes")
        return _masked.batch_norm_backward(grad_output, input, mean, invstd, weight, training, channel_axis, eps, mask)
    x, g, dtype = _grad_inputs(grad_output, input, half=True)  # float16, bfloat16: the kernels read them
    if _several_axes(channel_axis):
        return _batch_norm_backward_over_axes(batch_norm_backward, x, g, dtype, mean, invstd, weight, training,
                                              channel_axis, eps)
    axis, C = _check_channels(x, channel_axis)
    mean_ = _stat_vector(mean, "mean", (C,))
    invstd_ = _stat_vector(invstd, "invstd", (C,))
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    buf, N, C, S, moved = _channel_view(x, axis)
    gbuf = _like_view(g, axis, moved)
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


def _rows_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape],
                   mean: Optional[ArrayLike], rstd: ArrayLike, weight: Optional[ArrayLike], bias: Optional[ArrayLike],
                   rms: bool, eps: Optional[float], axes: Optional[Shape] = None) -> Grads:
    """LayerNorm's or RMSNorm's (``rms``, without ``mean``) grad_input and per-element parameter sums."""
    x, g, dtype = _grad_inputs(grad_output, input, half=True)  # float16, bfloat16: the kernel reads them
    if axes is not None:  # the forward's rows view (see _over_axes._rows_norm_over_axes)
        axes_, shape_ = _check_normalized_axes(normalized_shape, axes, x)
        order, perm, shape2 = _rows_order(x, axes_)
        w2, b2 = (_shaped_like(v, name, shape_, axes_, perm) for v, name in ((weight, "weight"), (bias, "bias")))
        dx, dw, db = _rows_backward(_transposed(g, order, shape2), _transposed(x, order, shape2), shape2[-1], mean,
                                    rstd, w2, b2, rms, eps)
        back = np.argsort(perm)
        rows = tuple(shape_[i] for i in perm)
        return (_untransposed(dx, order, tuple(x.shape[a] for a in order)).astype(dtype, copy=False),
                np.transpose(dw.reshape(rows), back), np.transpose(db.reshape(rows), back))
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


def _rows_gradients(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape],
                    mean: Optional[ArrayLike], rstd: ArrayLike, weight: Optional[ArrayLike], bias: Optional[ArrayLike],
                    rms: bool, axes: Optional[Shape], eps: Optional[float], mask: Optional[ArrayLike],
                    activation: Optional[str]) -> Tuple[FloatArray, Optional[Stats], Optional[Stats]]:
    """What layer_norm_backward and rms_norm_backward (``rms``, without ``mean`` and ``bias``) return:
    through the activation, masked or not; a parameter's gradient None where the parameter is."""
    if activation is not None:
        dx, dw, db = _through_activation(
            grad_output, input, activation, None,
            lambda x: _pre_activation(x, *_row_axes(x, normalized_shape, axes), mean, rstd, weight, bias, True),
            lambda dz: _rows_gradients(dz, input, normalized_shape, mean, rstd, weight, bias, rms, axes, eps, mask,
                                       None))
        return dx, dw, db
    if _masked.is_masked(input, mask):
        if axes is not None:
            raise ValueError("mask: not supported together with axes")
        dx, dw, db = _masked.rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, rms, eps,
                                           mask)
    else:
        dx, dw, db = _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, rms, eps, axes)
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], mean: ArrayLike,
                        rstd: ArrayLike, weight: ArrayLike, bias: ArrayLike,
                        **options: Unpack[RowsBackward]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], mean: ArrayLike,
                        rstd: ArrayLike, weight: ArrayLike, bias: None = ...,
                        **options: Unpack[RowsBackward]) -> Tuple[FloatArray, Stats, None]: ...
@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], mean: ArrayLike,
                        rstd: ArrayLike, weight: None = ..., bias: None = ...,
                        **options: Unpack[RowsBackward]) -> Tuple[FloatArray, None, None]: ...
@overload
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
                        **options: Unpack[RowsBackward]) -> Tuple[FloatArray, Optional[Stats], Optional[Stats]]: ...
@_documented
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, *,
                        axes: Optional[Shape] = None, eps: Optional[float] = None, mask: Optional[ArrayLike] = None,
                        activation: Optional[str] = None) -> Tuple[FloatArray, Optional[Stats], Optional[Stats]]:
    r"""Gradients of :func:`layer_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    {grad_output}
    {rows_input}
    mean, rstd : array_like of the input's leading shape
        What ``layer_norm(..., return_stats=True)`` returned (with ``axes``: of the other axes' shape).
    weight : array_like of shape normalized_shape, optional
        The forward's weight :math:`\gamma` (None: 1, and no grad_weight).
    bias : array_like of shape normalized_shape, optional
        The forward's bias (None: no grad_bias).  Without ``activation`` any array of its shape will do:
        only whether there is one matters.
    axes : int or sequence of int, keyword-only, optional
        The forward's ``axes`` (then ``weight``, ``bias`` and the gradients have their shape).
    {eps}
    {mask}
    activation : str or None, keyword-only
        The forward's ``activation``: the gradient goes through it, at the pre-activation recomputed from
        the input, the statistics and the parameters.

    {rows_grads}
    grad_bias : ndarray of float64 of shape normalized_shape, or None
        :math:`\sum \partial L / \partial y` over the rows; None without ``bias``.

    Raises
    ------
    TypeError
        ``grad_output``, ``input``, ``weight`` or ``bias`` not floating point; ``normalized_shape`` not
        integers.
    ValueError
        ``grad_output`` of another shape; ``normalized_shape`` or ``axes`` as the forward refuses them;
        ``mean``, ``rstd``, ``weight`` or ``bias`` of the wrong shape.
    RuntimeError
        With ``eps``,{modified}

    Notes
    -----
    {xhat} D values of each row:

    {dx}

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
    >>> dx, dw, db = fastnorm.layer_norm_backward(np.ones_like(x), x, 3, mean, rstd, w, activation="relu")
    >>> bool(np.allclose(dw, np.maximum(y, 0).sum(axis=0)))  # sum(dy * relu'(y) * xhat) over the rows
    True
    """
    return _rows_gradients(grad_output, input, normalized_shape, mean, rstd, weight, bias, False, axes, eps, mask,
                           activation)


@overload
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], rstd: ArrayLike,
                      weight: ArrayLike, **options: Unpack[RowsBackward]) -> Tuple[FloatArray, Stats, None]: ...
@overload
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], rstd: ArrayLike,
                      weight: None = ..., **options: Unpack[RowsBackward]) -> Tuple[FloatArray, None, None]: ...
@overload
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], rstd: ArrayLike,
                      weight: Optional[ArrayLike] = ...,
                      **options: Unpack[RowsBackward]) -> Tuple[FloatArray, Optional[Stats], None]: ...
@_documented
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, normalized_shape: Optional[Shape], rstd: ArrayLike,
                      weight: Optional[ArrayLike] = None, *, axes: Optional[Shape] = None,
                      eps: Optional[float] = None, mask: Optional[ArrayLike] = None,
                      activation: Optional[str] = None) -> Tuple[FloatArray, Optional[Stats], None]:
    r"""Gradients of :func:`rms_norm` with respect to its input and weight.

    Parameters
    ----------
    {grad_output}
    {rows_input}
    rstd : array_like of the input's leading shape
        What ``rms_norm(..., return_stats=True)`` returned (with ``axes``: of the other axes' shape).
    weight : array_like of shape normalized_shape, optional
        The forward's weight :math:`\gamma` (None: 1, and no grad_weight).
    axes : int or sequence of int, keyword-only, optional
        The forward's ``axes`` (then ``weight`` and grad_weight have their shape).
    eps : float, keyword-only, optional
        The forward's eps (None there: the compute dtype's, as :func:`rms_norm`): given, the input is
        checked against the statistics (see Raises).
    {mask}
    activation : str or None, keyword-only
        The forward's ``activation``: the gradient goes through it, at the pre-activation recomputed from
        the input, ``rstd`` and ``weight``.

    {rows_grads}
    None
        In the place of grad_bias (RMSNorm has no bias), so that every backward returns three values.

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point; ``normalized_shape`` not integers.
    ValueError
        ``grad_output`` of another shape; ``normalized_shape`` or ``axes`` as the forward refuses them;
        ``rstd`` or ``weight`` of the wrong shape.
    RuntimeError
        With ``eps``,{modified}

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
    >>> dx, dw, _ = fastnorm.rms_norm_backward(x, x, 2, rstd, activation="tanh")
    >>> dx.shape
    (1, 2)
    """
    dx, dw, _ = _rows_gradients(grad_output, input, normalized_shape, None, rstd, weight, None, True, axes, eps, mask,
                                activation)
    return dx, dw, None


@overload
def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, num_groups: SupportsIndex, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = ..., *, add: None = ...,
                        **options: Unpack[ChannelBackward]) -> Grads: ...
@overload
def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, num_groups: SupportsIndex, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = ..., *, add: ArrayLike,
                        **options: Unpack[ChannelBackward]) -> GradsWithAdd: ...
@_documented
def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, num_groups: SupportsIndex, mean: ArrayLike,
                        rstd: ArrayLike, weight: Optional[ArrayLike] = None, *,
                        channel_axis: SupportsIndex = 1, eps: Optional[float] = None,
                        mask: Optional[ArrayLike] = None, activation: Optional[str] = None,
                        add: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None) -> Any:
    r"""Gradients of :func:`group_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    {grad_output}
    {channel_input}
    num_groups : int
        The forward's ``num_groups`` (G).
    mean, rstd : array_like of shape (N, G)
        What ``group_norm(..., return_stats=True)`` returned.
    {channel_weight}
    channel_axis : int, keyword-only
        The forward's ``channel_axis``: 1 or -1.
    {eps}
    {mask}
    {activation}

    {channel_grads}.{grad_add}

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point; ``num_groups`` or ``channel_axis``
        not an integer.
    ValueError
        ``grad_output`` of another shape; the forward's layout errors (see :func:`group_norm`); ``mean``,
        ``rstd`` or ``weight`` of the wrong shape.
    RuntimeError
        With ``eps``,{modified}

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
    >>> dx, dw, db, dadd = fastnorm.group_norm_backward(np.ones_like(x), x, 2, mean, rstd, activation="sigmoid",
    ...                                                 add=np.zeros_like(x))
    >>> bool(np.allclose(db, dadd.sum(axis=(0, 2))))  # the bias and add see the same gradient
    True
    """
    if activation is not None or add is not None:
        def pre_activation(x: FloatArray) -> _Fold:
            axis, _, _ = _group_norm_layout(x, num_groups, channel_axis)
            return _pre_activation(x, (0, axis), (axis,), _per_channel(mean, num_groups, x, axis),
                                   _per_channel(rstd, num_groups, x, axis), weight, bias)
        return _through_activation(
            grad_output, input, activation, add, pre_activation,
            lambda dz: group_norm_backward(dz, input, num_groups, mean, rstd, weight, channel_axis=channel_axis,
                                           eps=eps, mask=mask))
    if _masked.is_masked(input, mask):
        return _masked.group_norm_backward(grad_output, input, num_groups, mean, rstd, weight, channel_axis, eps, mask)
    x, g, dtype = _grad_inputs(grad_output, input, half=True)  # float16, bfloat16: the kernels read them
    axis, G, C = _group_norm_layout(x, num_groups, channel_axis)
    N = x.shape[0]
    mean_ = _stat_vector(mean, "mean", (N, G))
    rstd_ = _stat_vector(rstd, "rstd", (N, G))
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(x.shape, dtype), np.zeros(C), np.zeros(C)
    S = x.size // (N * C)
    buf, _, _, _, moved = _channel_view(x, axis)
    gbuf = _like_view(g, axis, moved)
    columns = _group_norm_channels_last(x, axis, moved)
    dx = _kernels.empty_like(buf)
    nthreads = threads_for(x.size, S)
    if columns:
        sum_dy, sum_dyx = _kernels.backward_columns(buf, gbuf, dx, N, S, C, G, mean_, rstd_, w, True, nthreads,
                                                    _check_of(eps))
    else:
        sum_dy, sum_dyx = _kernels.backward_rows(buf, gbuf, dx, 1, N * G, (C // G) * S, mean_, rstd_, w, True,
                                                 nthreads, sub=S, groups=G, check=_check_of(eps))
    return (_finish(dx, None, axis, moved, dtype), sum_dyx.reshape(N, C).sum(axis=0),
            sum_dy.reshape(N, C).sum(axis=0))


@overload
def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                           weight: Optional[ArrayLike] = ..., use_input_stats: bool = ..., *, add: None = ...,
                           **options: Unpack[ChannelBackward]) -> Grads: ...
@overload
def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                           weight: Optional[ArrayLike] = ..., use_input_stats: bool = ..., *, add: ArrayLike,
                           **options: Unpack[ChannelBackward]) -> GradsWithAdd: ...
@_documented
def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                           weight: Optional[ArrayLike] = None, use_input_stats: bool = True, *,
                           channel_axis: SupportsIndex = 1, eps: Optional[float] = None,
                           mask: Optional[ArrayLike] = None, activation: Optional[str] = None,
                           add: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None) -> Any:
    r"""Gradients of :func:`instance_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    {grad_output}
    {channel_input}
    mean, rstd : array_like
        What ``instance_norm(..., return_stats=True)`` returned: shape (N, C) with ``use_input_stats``,
        the running statistics' (C,) without.
    {channel_weight}
    use_input_stats : bool
        The forward's ``use_input_stats``: whether the statistics depend on the input.
    channel_axis : int, keyword-only
        The forward's ``channel_axis`` (any axis but 0; -1 for channels-last input).
    {eps}
    {mask}
    {activation}

    {channel_grads}.{grad_add}

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point.
    ValueError
        Fewer than 3 dimensions; ``channel_axis`` 0 or out of range; ``grad_output`` of another shape;
        ``mean``, ``rstd`` or ``weight`` of the wrong shape.
    RuntimeError
        With ``use_input_stats`` and ``eps``,{modified}

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
    >>> dx, dw, db = fastnorm.instance_norm_backward(np.ones_like(x), x, mean, rstd, activation="gelu")
    >>> dx.shape
    (2, 3, 5)
    """
    if activation is not None or add is not None:
        def pre_activation(x: FloatArray) -> _Fold:
            axis = _check_instance_axis(x, channel_axis)
            return _pre_activation(x, (0, axis) if use_input_stats else (axis,), (axis,), mean, rstd, weight, bias)
        return _through_activation(
            grad_output, input, activation, add, pre_activation,
            lambda dz: instance_norm_backward(dz, input, mean, rstd, weight, use_input_stats,
                                              channel_axis=channel_axis, eps=eps, mask=mask))
    if _masked.is_masked(input, mask):
        if not isinstance(channel_axis, int) or channel_axis != 1:
            raise ValueError(f"mask: supported with channel_axis=1 only, got channel_axis={channel_axis!r}")
        return _masked.instance_norm_backward(grad_output, input, mean, rstd, weight, use_input_stats, eps, mask)
    x, g, dtype = _grad_inputs(grad_output, input, half=True)  # float16, bfloat16: the kernels read them
    _check_ndim(x, 3, "(N, C, spatial...)")
    axis = _check_instance_axis(x, channel_axis)
    x, g = np.moveaxis(x, axis, 1), np.moveaxis(g, axis, 1)  # the forward's view
    N, C = x.shape[:2]
    shape = (N, C) if use_input_stats else (C,)
    mean_ = np.broadcast_to(_stat_vector(mean, "mean", shape).reshape(shape), (N, C)).reshape(-1)
    rstd_ = np.broadcast_to(_stat_vector(rstd, "rstd", shape).reshape(shape), (N, C)).reshape(-1)
    w = _channel_vector(weight, "weight", C, x.dtype)
    if x.size == 0:
        return np.zeros(np.moveaxis(x, 1, axis).shape, dtype), np.zeros(C), np.zeros(C)
    S = x.size // (N * C)
    buf, _, _, _, moved = _channel_view(x, 1)
    gbuf = _like_view(g, 1, moved)
    dx = _kernels.empty_like(buf)
    stats = np.ascontiguousarray(mean_), np.ascontiguousarray(rstd_)
    nthreads = threads_for(x.size, S)
    if moved:  # channels-last memory, as the forward
        sum_dy, sum_dyx = _kernels.backward_columns(buf, gbuf, dx, N, S, C, C, *stats, w, bool(use_input_stats),
                                                    nthreads, _check_of(eps))
    else:
        sum_dy, sum_dyx = _kernels.backward_rows(buf, gbuf, dx, 1, N * C, S, *stats, w, bool(use_input_stats),
                                                 nthreads, groups=C, check=_check_of(eps))
    return (np.moveaxis(_finish(dx, None, 1, moved, dtype), 1, axis), sum_dyx.reshape(N, C).sum(axis=0),
            sum_dy.reshape(N, C).sum(axis=0))
