"""The forwards of ``fastnorm.functional`` by channels: batch_norm, group_norm, instance_norm.

Each runs the same four steps: validate (``_validation``), plan the view of the input's memory and the
array the kernel writes (``_plan``), call the kernel, finish (``_plan._returned``).  The private twin of
each public function (``_batch_norm``, ...) also takes a layer's ``commit``: what the kernel call applies
once the output is written (see ``_plan._committing``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional, SupportsIndex, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels, _masked
from ._options import BatchNormForward, ChannelForward
from ._over_axes import _batch_norm_over_axes
from ._epilogue import _normalize_then_activate
from ._plan import (_add_buffer, _by_columns, _channel_view, _committing, _empty_call, _frozen_stats,
                    _group_norm_channels_last, _repeat, _returned)
from ._layer_docs import _with_mask_doc
from ._threads import threads_for
from ._validation import (FloatArray, Stats, _as_input, _batch_norm_args, _check_activation, _check_add,
                          _check_instance_axis, _check_ndim, _check_out, _group_norm_args, _instance_norm_args,
                          _several_axes)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11

__all__ = ["batch_norm", "group_norm", "instance_norm"]

# layer_norm and rms_norm (statistics per row) are in _rows_forward.


# ---------------------------------------------------------------------------------------------------------
# batch_norm
# ---------------------------------------------------------------------------------------------------------

@overload
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, return_stats: Literal[False] = ...,
               **options: Unpack[BatchNormForward]) -> FloatArray: ...
@overload
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, return_stats: Literal[True],
               **options: Unpack[BatchNormForward]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, return_stats: bool,
               **options: Unpack[BatchNormForward]) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
@_with_mask_doc
def batch_norm(input: ArrayLike, running_mean: Optional[FloatArray] = None, running_var: Optional[FloatArray] = None,
               weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
               momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: SupportsIndex = 1,
               activation: Optional[str] = None, add: Optional[ArrayLike] = None,
               out: Optional[FloatArray] = None, bessel: bool = True, num_batches_tracked: Optional[int] = None,
               mask: Optional[ArrayLike] = None,
               return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    r"""Batch normalization, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, bfloat16, float32 or float64 (the half types computed in float32).  Any memory order; an array whose
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
    channel_axis : int or tuple of int, keyword-only
        The axis of the channels: 1 for NCHW-style data (the default), -1 for channels-last data.  A tuple
        of axes (Keras' ``BatchNormalization(axis=[1, 3])`` of tf.keras 2): each combination of their
        indices is a channel, and the parameters, running statistics and returned statistics have the
        shape of those axes, ``tuple(input.shape[a] for a in sorted(channel_axis))``.  The kernels read
        the input as ``[N, K, S]`` (K the channels), through a view where its memory holds the channel
        axes together in their order after merging adjacent axes (e.g. (1, 2) or (2, 3) of C-ordered
        data), and through a copy with them moved together otherwise (e.g. (1, 3) of C-ordered data).
    {activation}
    {add}
    {out}
    bessel : bool, keyword-only
        True (PyTorch): the running variance is updated with the unbiased batch variance.  False (ONNX
        BatchNormalization, Keras): with the biased one.
    num_batches_tracked : int, keyword-only, optional
        Batches already averaged into the running statistics; with ``momentum=None`` the factor is
        ``1 / (num_batches_tracked + 1)``.
    {mask}
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
        A ``mask`` that is not boolean.
        Input that is not floating point; parameters or ``out`` of the wrong type or dtype, or masked arrays;
        ``activation`` not a string, ``add`` not floating point.
    ValueError
        An unknown ``activation``; ``add`` of a shape that does not broadcast to the input.
        A ``mask`` that does not broadcast to the input, or that leaves one value to a statistic in training.
        Fewer than 2 dimensions, parameters whose length is not the channel count, training with a
        single value per channel (unless ``bessel=False``), evaluation without running statistics,
        ``out`` of the wrong shape or read-only, a read-only running statistic, bad ``eps``, ``momentum``
        or ``num_batches_tracked``.

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
    >>> valid = np.array([[[True, True]], [[True, False]]])  # the last value of sample 1 is padding
    >>> y, mean, invstd = fastnorm.batch_norm(x, training=True, mask=valid, return_stats=True)
    >>> mean.tolist()  # channel 0: (0 + 1 + 6) / 3
    [2.3333333333333335, 4.333333333333333, 6.333333333333333]
    >>> y, mean, invstd = fastnorm.batch_norm(x, training=True, channel_axis=(1, 2), return_stats=True)
    >>> mean.tolist()  # a channel per (row, column) of the last two axes: the means over the batch
    [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    >>> y = fastnorm.batch_norm(x, rm, rv, activation="relu", add=np.ones_like(x))  # relu(bn(x) + 1)
    >>> bool(y.min() >= 0)
    True
    """
    act = _check_activation(activation)
    if _masked.is_masked(input, mask):
        y, mean, rstd = _batch_norm_masked(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                           channel_axis, out, bessel, num_batches_tracked, mask, act, add)
        return (y, mean, rstd) if return_stats else y
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out,
                       bessel, num_batches_tracked, return_stats, None, act, add)


def _batch_norm_masked(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                       weight: Optional[ArrayLike], bias: Optional[ArrayLike], training: bool,
                       momentum: Optional[float], eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray],
                       bessel: bool, num_batches_tracked: Optional[int], mask: Optional[ArrayLike], act: int,
                       add: Optional[ArrayLike], commit: Optional[_kernels.Commit] = None) -> Tuple[FloatArray, Stats,
                                                                                                   Stats]:
    """:func:`batch_norm` given a mask (or a numpy.ma input): (y, mean, invstd); its last step also
    applies a layer's ``commit`` (see _normalize_then_activate)."""
    if _several_axes(channel_axis):
        raise ValueError("mask: not supported together with several channel axes")
    return _normalize_then_activate(
        lambda v: _masked.batch_norm(v, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                                     bessel, num_batches_tracked, mask), input, out, act, add, commit=commit)


def _batch_norm(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                weight: Optional[ArrayLike], bias: Optional[ArrayLike], training: bool, momentum: Optional[float],
                eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray], bessel: bool,
                num_batches_tracked: Optional[int], return_stats: bool,
                commit: Optional[_kernels.Commit], act: int = 0, add: Optional[ArrayLike] = None,
                copies: Optional[Tuple[Tuple[FloatArray, FloatArray], ...]] = None
                ) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    """:func:`batch_norm`, whose kernel call also applies a layer's ``commit`` (see _committing) and
    ``copies``; ``act``: the activation's code (see _check_activation)."""
    if _several_axes(channel_axis):
        return _batch_norm_over_axes(_batch_norm, *_as_input(input, "input", half=True), running_mean, running_var,
                                     weight, bias, training, momentum, eps, channel_axis, out, bessel,
                                     num_batches_tracked, return_stats, commit, act, add)
    x, dtype = _as_input(input, "input", half=True)  # half precision: the kernels read it, act and add included
    training = bool(training)
    axis, C, eps, w, b, buffers, frozen, factor = _batch_norm_args(x, channel_axis, running_mean, running_var, weight,
                                                                   bias, training, momentum, eps, num_batches_tracked)
    add_ = _check_add(add, x.shape)
    if out is not None:
        _check_out(out, x.shape, dtype)
    if x.size == 0:
        y, empty = _empty_call(x, out, dtype, C, False, commit)
        return (y, *empty) if return_stats else y
    count = x.size // C
    if training and bessel and count <= 1:  # the unbiased variance of one value is 0 / 0 (without: 0)
        raise ValueError(f"input: expected more than 1 value per channel when training, got input size {x.shape}")
    # The plan: the view, the array written, and what the kernel call applies once it is written (the
    # running statistics' update, a copy into out=, a layer's commit)
    buf, N, C, S, moved = _channel_view(x, axis)
    running = None if buffers is None else (*buffers, factor, count / (count - 1) if bessel else 1.0)
    kept = _frozen_stats(*frozen, eps) if frozen is not None and (return_stats or commit is not None) else None
    result, commit = _committing(commit, out, buf, axis, moved, running, (C,), False, kept, copies)
    a = _add_buffer(add_, x.shape, axis, moved, buf, result)
    nthreads = threads_for(x.size, S if S > 1 else 64)
    if frozen is None:  # the kernel: a path per layout
        if S == 1:
            mean, var, rstd = _kernels.forward_columns(buf, result, N, C, w, b, eps, nthreads, commit, act, a)
        elif _by_columns(N, S):  # short runs: by columns of [N, C * S], S columns a channel
            mean, var, rstd = _kernels.forward_column_groups(buf, result, 1, N, C * S, C, _repeat(w, S), _repeat(b, S),
                                                             eps, nthreads, commit, act, a)
        else:
            mean, var, rstd = _kernels.forward_rows(buf, result, N, C, S, w, b, eps, nthreads, commit=commit, act=act,
                                                    add=a)
    else:
        _kernels.forward_with_stats(buf, result, N, C, S, *frozen, w, b, eps, nthreads, commit, act, a)
    y = _returned(result, out, axis, moved, dtype)
    if not return_stats:
        return y
    if kept is not None:
        mean, rstd = kept
    return y, mean, rstd


@overload
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: Literal[False] = ...,
               **options: Unpack[ChannelForward]) -> FloatArray: ...
@overload
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: Literal[True],
               **options: Unpack[ChannelForward]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: bool,
               **options: Unpack[ChannelForward]) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
@_with_mask_doc
def group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, channel_axis: SupportsIndex = 1,
               activation: Optional[str] = None, add: Optional[ArrayLike] = None, out: Optional[FloatArray] = None,
               mask: Optional[ArrayLike] = None,
               return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    r"""Group normalization, as ``torch.nn.functional.group_norm``: the channels are split into
    ``num_groups`` groups of consecutive channels and each sample is normalized per group.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, bfloat16, float32 or float64 (the half types computed in float32).  ``channel_axis=-1`` takes
        channels-last input (N, ..., C).
    num_groups : int
        G, a positive divisor of C.
    weight, bias : array_like of shape (C,), optional
        Per-channel affine (:math:`\gamma` and :math:`\beta`), floating point.
    eps : float
        Added to the variance before the square root, in the input's units squared.
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1 (channels last).
    {epilogue}
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
        A ``mask`` that is not boolean.
        Input, ``weight``, ``bias``, ``add`` or ``out`` that is not floating point; ``num_groups`` or
        ``channel_axis`` not an integer; ``activation`` not a string.
    ValueError
        A ``mask`` that does not broadcast to the input; an unknown ``activation``; ``add`` of a shape that
        does not broadcast to the input.
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
    >>> fastnorm.group_norm(np.arange(16.).reshape(2, 4, 2), 2, activation="relu")[0, :2].round(4).tolist()
    [[0.0, 0.0], [0.4472, 1.3416]]
    """
    act = _check_activation(activation)
    if _masked.is_masked(input, mask):
        y, mean, rstd = _group_norm_masked(input, num_groups, weight, bias, eps, channel_axis, out, mask, act, add)
        return (y, mean, rstd) if return_stats else y
    return _group_norm(input, num_groups, weight, bias, eps, channel_axis, out, return_stats, None, act, add)


def _group_norm_masked(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike],
                       bias: Optional[ArrayLike], eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray],
                       mask: Optional[ArrayLike], act: int, add: Optional[ArrayLike],
                       commit: Optional[_kernels.Commit] = None) -> Tuple[FloatArray, Stats, Stats]:
    """:func:`group_norm` given a mask (or a numpy.ma input): (y, mean, rstd); its last step also applies a
    layer's ``commit`` (see _normalize_then_activate)."""
    return _normalize_then_activate(lambda v: _masked.group_norm(v, num_groups, weight, bias, eps, channel_axis, mask),
                                    input, out, act, add, commit=commit)


def _group_norm(input: ArrayLike, num_groups: SupportsIndex, weight: Optional[ArrayLike], bias: Optional[ArrayLike],
                eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray], return_stats: bool,
                commit: Optional[_kernels.Commit], act: int = 0,
                add: Optional[ArrayLike] = None) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    """:func:`group_norm`, whose kernel call also applies a layer's ``commit`` (see _committing); ``act``:
    the activation's code."""
    x, dtype = _as_input(input, "input", half=True)  # half precision: the kernels read it
    axis, G, C, w, b, eps = _group_norm_args(x, num_groups, weight, bias, eps, channel_axis)
    add_ = _check_add(add, x.shape)
    if out is not None:
        _check_out(out, x.shape, dtype)
    N = x.shape[0]
    if x.size == 0:
        y, empty = _empty_call(x, out, dtype, (N, G), False, commit)
        return (y, *empty) if return_stats else y
    S = x.size // (N * C)
    buf, _, _, _, moved = _channel_view(x, axis)
    columns = _group_norm_channels_last(x, axis, moved)
    result, commit = _committing(commit, out, buf, axis, moved, None, (N, G))
    a = _add_buffer(add_, x.shape, axis, moved, buf, result)
    nthreads = threads_for(x.size, S)
    if columns:
        stats: Optional[Tuple[Stats, Stats, Stats]] = _kernels.forward_column_groups(buf, result, N, S, C, G, w, b, eps,
                                                                                     nthreads, commit, act, a)
    else:
        stats = _kernels.forward_rows(buf, result, 1, N * G, (C // G) * S, w, b, eps, nthreads, sub=S, groups=G,
                                      stats=return_stats, commit=commit, act=act, add=a)
    y = _returned(result, out, axis, moved, dtype)
    if not return_stats or stats is None:
        return y
    return y, stats[0].reshape(N, G), stats[2].reshape(N, G)


@overload
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: float = ..., eps: float = ..., *, return_stats: Literal[False] = ...,
                  **options: Unpack[ChannelForward]) -> FloatArray: ...
@overload
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: float = ..., eps: float = ..., *, return_stats: Literal[True],
                  **options: Unpack[ChannelForward]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = ..., running_var: Optional[FloatArray] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: float = ..., eps: float = ..., *, return_stats: bool,
                  **options: Unpack[ChannelForward]) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
@_with_mask_doc
def instance_norm(input: ArrayLike, running_mean: Optional[FloatArray] = None,
                  running_var: Optional[FloatArray] = None, weight: Optional[ArrayLike] = None,
                  bias: Optional[ArrayLike] = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5, *, channel_axis: SupportsIndex = 1, activation: Optional[str] = None,
                  add: Optional[ArrayLike] = None, out: Optional[FloatArray] = None,
                  mask: Optional[ArrayLike] = None,
                  return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    r"""Instance normalization, as ``torch.nn.functional.instance_norm``: each (sample, channel) is
    normalized over its spatial dimensions.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, bfloat16, float32 or float64 (the half types computed in float32), with at least one spatial
        dimension; ``channel_axis=-1`` takes channels-last input (N, ..., C).
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
    channel_axis : int, keyword-only
        The axis of the channels: 1 (the default), -1 for channels-last data, any axis but 0.  Either
        way, channels-last memory (NHWC data, or an NCHW view of it) is read as ``[N, S, C]`` without a
        copy, and channels-first memory as ``[N, C, S]``; other layouts are copied.
    {epilogue}
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
        A ``mask`` that is not boolean.
        Input, parameters, ``add`` or ``out`` that are not floating point; a running statistic to update
        that is not an ndarray; ``activation`` not a string.
    ValueError
        An unknown ``activation``; ``add`` of a shape that does not broadcast to the input.
        Fewer than 3 dimensions; ``channel_axis`` 0 or out of range; a single spatial value with
        ``use_input_stats``; parameters whose length is not C; only one of the running statistics, or
        none without ``use_input_stats``; a read-only running statistic to update; ``out`` of the wrong
        shape or read-only; bad ``eps`` or ``momentum``.

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
    >>> fastnorm.instance_norm(np.array([[[1., 2.], [3., 2.]]]), channel_axis=-1).round(4).tolist()  # (N, S, C)
    [[[-1.0, 0.0], [1.0, 0.0]]]
    >>> fastnorm.instance_norm(np.array([[[1., 3.], [2., 2.]]]), activation="sigmoid").round(4).tolist()
    [[[0.2689, 0.7311], [0.5, 0.5]]]
    """
    act = _check_activation(activation)
    if _masked.is_masked(input, mask):
        y, mean, rstd = _instance_norm_masked(input, running_mean, running_var, weight, bias, use_input_stats,
                                              momentum, eps, channel_axis, out, mask, act, add)
        return (y, mean, rstd) if return_stats else y
    return _instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, out,
                          return_stats, None, channel_axis, act, add)


def _instance_norm_masked(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                          weight: Optional[ArrayLike], bias: Optional[ArrayLike], use_input_stats: bool,
                          momentum: float, eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray],
                          mask: Optional[ArrayLike], act: int, add: Optional[ArrayLike],
                          commit: Optional[_kernels.Commit] = None) -> Tuple[FloatArray, Stats, Stats]:
    """:func:`instance_norm` given a mask (or a numpy.ma input): (y, mean, rstd); its last step also
    applies a layer's ``commit`` (see _normalize_then_activate)."""
    if not isinstance(channel_axis, int) or channel_axis != 1:
        raise ValueError(f"mask: supported with channel_axis=1 only, got channel_axis={channel_axis!r}")
    return _normalize_then_activate(
        lambda v: _masked.instance_norm(v, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                                        mask), input, out, act, add, commit=commit)


def _instance_norm(input: ArrayLike, running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                   weight: Optional[ArrayLike], bias: Optional[ArrayLike], use_input_stats: bool, momentum: float,
                   eps: float, out: Optional[FloatArray], return_stats: bool,
                   commit: Optional[_kernels.Commit], channel_axis: SupportsIndex = 1, act: int = 0,
                   add: Optional[ArrayLike] = None) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]:
    """:func:`instance_norm`, whose kernel call also applies a layer's ``commit`` (see _committing).
    The channel axis is moved to 1 (a view), and the memory of channels-last data is ``[N, S, C]``."""
    x, dtype = _as_input(input, "input", half=True)  # half precision: the kernels read it
    _check_ndim(x, 3, "(N, C, spatial...)")
    axis = _check_instance_axis(x, channel_axis)
    add_ = _check_add(add, x.shape)
    if axis != 1:  # moveaxis costs microseconds even where it changes nothing
        add_ = None if add_ is None else np.moveaxis(np.broadcast_to(add_, x.shape), axis, 1)
        x = np.moveaxis(x, axis, 1)
    use_input_stats = bool(use_input_stats)
    eps, w, b, buffers, frozen, factor = _instance_norm_args(x, running_mean, running_var, weight, bias,
                                                             use_input_stats, momentum, eps)
    C = x.shape[1]
    if out is not None:
        _check_out(out, np.moveaxis(x, 1, axis).shape, dtype)
    out1 = out if out is None or axis == 1 else np.moveaxis(out, axis, 1)
    N = x.shape[0]
    S = x.size // (N * C) if x.size else 0
    if use_input_stats and x.size and S <= 1:
        raise ValueError(f"input: expected more than 1 spatial element when training, got input size {x.shape}")
    if x.size == 0:
        y, empty = _empty_call(x, out1, dtype, (N, C) if use_input_stats else (C,), False, commit)
        y = out if out is not None else np.moveaxis(y, 1, axis)
        return (y, *empty) if return_stats else y
    buf, _, _, _, moved = _channel_view(x, 1)
    # the running statistics take the mean over the samples of the instances' statistics
    running = None if buffers is None else (*buffers, factor, S / (S - 1))
    kept = _frozen_stats(*frozen, eps) if frozen is not None and (return_stats or commit is not None) else None
    result, commit = _committing(commit, out1, buf, 1, moved, running, (N, C), False, kept)
    a = _add_buffer(add_, x.shape, 1, moved, buf, result)
    nthreads = threads_for(x.size, S)
    if frozen is None:
        if moved:  # channels-last memory: GroupNorm's [N, S, C] path, a group per channel
            stats: Optional[Tuple[Stats, Stats, Stats]] = _kernels.forward_column_groups(
                buf, result, N, S, C, C, w, b, eps, nthreads, commit, act, a)
        else:
            stats = _kernels.forward_rows(buf, result, 1, N * C, S, w, b, eps, nthreads, groups=C,
                                          stats=return_stats, commit=commit, act=act, add=a)
        if stats is not None:
            mean, var, rstd = (v.reshape(N, C) for v in stats)
    else:
        _kernels.forward_with_stats(buf, result, N * S if moved else N, C, 1 if moved else S, *frozen, w, b, eps,
                                    nthreads, commit, act, a)
    y = out if out is not None else _returned(result, None, 1, moved, dtype)
    y = y if out is not None or axis == 1 else np.moveaxis(y, 1, axis)
    if not return_stats:
        return y
    if kept is not None:
        mean, rstd = kept
    return y, mean, rstd
