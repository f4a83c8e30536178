r"""The steps of a batch normalization whose batch is split across processes, as PyTorch names them.

``torch.nn.SyncBatchNorm`` runs, per training step::

    forward:   mean, invstd = batch_norm_stats(x, eps)                        this process's slice
               (all-gather mean, invstd and the count of every process)
               mean, invstd = batch_norm_gather_stats_with_counts(...)         the whole batch's
               y = batch_norm_elemt(x, weight, bias, mean, invstd, eps)
    backward:  sum_dy, sum_dy_xmu, ... = batch_norm_backward_reduce(dy, x, mean, invstd, weight, ...)
               (all-reduce sum_dy and sum_dy_xmu)
               dx = batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts)

These are those five operations on ndarrays, with PyTorch's arguments and results (the statistics and
sums float64), a ``channel_axis`` as the other functions, and ``out=`` for the elementwise forward;
:class:`fastnorm.SyncBatchNorm` is built on them.  With :math:`\hat x = (x - \mu) \sigma^{-1}` over the
:math:`n` values of a channel in the whole batch::

    sum_dy = sum(dy)        sum_dy_xmu = sum(dy * (x - mean))        (summed over every process)
    dx = (dy - sum_dy / n - (x - mean) * invstd**2 * sum_dy_xmu / n) * weight * invstd

the training-mode gradient of :func:`fastnorm.batch_norm_backward`, its sums taken over every process.
"""
from __future__ import annotations

import functools
from typing import Optional, SupportsIndex, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels
from ._plan import (_add_buffer, _channel_view, _committing, _finish, _like_view, _nan_stats, _returned,
                    _update_running)
from ._threads import threads_for
from ._validation import (FloatArray, Stats, _as_input, _channel_params, _channel_vector, _check_channels,
                          _check_add, _check_eps, _check_momentum, _check_out, _grad_inputs, _running_roles,
                          _reals, _stat_vector)
from .statistics import Moments

__all__ = ["batch_norm_stats", "batch_norm_elemt", "batch_norm_gather_stats_with_counts",
           "batch_norm_backward_reduce", "batch_norm_backward_elemt"]


def _variance(invstd: Stats, eps: float) -> Stats:
    """The biased variance that ``invstd = 1 / sqrt(var + eps)`` was computed from (rounding below 0
    clipped)."""
    with np.errstate(divide="ignore"):
        return np.maximum(1.0 / (invstd * invstd) - eps, 0.0)


def batch_norm_stats(input: ArrayLike, eps: float, *, channel_axis: SupportsIndex = 1) -> Tuple[Stats, Stats]:
    r"""Per-channel mean and inverse standard deviation of a batch, as ``torch.batch_norm_stats``.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, bfloat16, float32 or float64 (the half types computed in float32); any memory order.
    eps : float
        Added to the variance before the square root (>= 0).
    channel_axis : int, keyword-only
        The axis of the channels: 1 (the default) or -1 for channels-last data.

    Returns
    -------
    mean, invstd : ndarray of float64, shape (C,)
        :math:`\mathrm{E}[x]` and :math:`1 / \sqrt{\mathrm{Var}[x] + \epsilon}` (biased variance) over
        every axis but the channels'; NaN for an empty input.

    Raises
    ------
    TypeError
        Input that is not floating point; ``channel_axis`` not an integer.
    ValueError
        Fewer than 2 dimensions; ``channel_axis`` out of range; a negative or non-finite ``eps``.

    Notes
    -----
    The statistics of :func:`batch_norm` in training, computed the same way (one pass, blocked shifted
    sums in double precision merged with Chan's formula).

    References
    ----------
    PyTorch: ``torch.batch_norm_stats``; ``torch.nn.SyncBatchNorm`` (torch/nn/modules/_functions.py)
    runs it on each process's slice.

    Examples
    --------
    >>> import numpy as np, fastnorm.functional as F
    >>> mean, invstd = F.batch_norm_stats(np.array([[1., 2.], [3., 6.]]), 0.0)
    >>> mean.tolist(), invstd.tolist()
    ([2.0, 4.0], [1.0, 0.5])
    """
    x, _ = _as_input(input, "input")
    axis, C = _check_channels(x, channel_axis)
    eps = _check_eps(eps)
    if x.size == 0:
        return _nan_stats(C)
    buf, N, C, S, _ = _channel_view(x, axis)
    mean, var = _kernels.moments(buf, N, C, S, threads_for(x.size))
    return mean, 1.0 / np.sqrt(var + eps)


def batch_norm_elemt(input: ArrayLike, weight: Optional[ArrayLike], bias: Optional[ArrayLike], mean: ArrayLike,
                     invstd: ArrayLike, eps: float, *, channel_axis: SupportsIndex = 1,
                     out: Optional[FloatArray] = None) -> FloatArray:
    r"""``(input - mean) * invstd * weight + bias`` per channel, as ``torch.batch_norm_elemt``.

    Parameters
    ----------
    input : array_like, shape (N, C, ...)
        float16, bfloat16, float32 or float64 (the half types computed in float32); any memory order.
    weight, bias : array_like of shape (C,) or None
        Per-channel affine (:math:`\gamma` and :math:`\beta`), floating point; None: none.
    mean, invstd : array_like of shape (C,)
        The statistics to normalize with (:func:`batch_norm_gather_stats_with_counts`' results).
    eps : float
        The eps ``invstd`` includes (>= 0; PyTorch passes it and ignores it).
    channel_axis : int, keyword-only
        The axis of the channels: 1 (the default) or -1 for channels-last data.
    out : ndarray, keyword-only, optional
        Where to write the result (the input's shape and dtype); may be the input itself.

    Returns
    -------
    ndarray
        The normalized slice, of the input's shape and dtype (``out`` when given).

    Raises
    ------
    TypeError
        Input, ``weight``, ``bias`` or ``out`` not floating point.
    ValueError
        Fewer than 2 dimensions; a parameter or statistic not of shape (C,); ``out`` of the wrong shape or
        read-only; a negative or non-finite ``eps``.

    Notes
    -----
    .. math:: y = (x - \mu_c) \, \sigma^{-1}_c \, \gamma_c + \beta_c

    computed by the kernel of :func:`batch_norm` in evaluation mode, with the variance
    :math:`\sigma^{-2} - \epsilon`.

    References
    ----------
    ``torch.batch_norm_elemt`` (PyTorch), which ``torch.nn.SyncBatchNorm`` applies to each slice once the
    statistics are gathered.

    Examples
    --------
    >>> import numpy as np, fastnorm.functional as F
    >>> x = np.array([[1., 2.], [3., 6.]])
    >>> F.batch_norm_elemt(x, None, np.array([10., 0.]), np.array([2., 4.]), np.array([1., 0.5]), 0.0)
    array([[ 9., -1.],
           [11.,  1.]])
    """
    return _batch_norm_elemt(input, weight, bias, mean, invstd, eps, channel_axis, out, None, None)


def _batch_norm_elemt(input: ArrayLike, weight: Optional[ArrayLike], bias: Optional[ArrayLike], mean: ArrayLike,
                      invstd: ArrayLike, eps: float, channel_axis: SupportsIndex, out: Optional[FloatArray],
                      commit: Optional[_kernels.Commit],
                      running: Optional[Tuple[FloatArray, FloatArray, float, float]], act: int = 0,
                      add: Optional[ArrayLike] = None) -> FloatArray:
    """:func:`batch_norm_elemt`, whose kernel call also applies a layer's ``commit`` and the update of its
    ``running`` statistics (see ``_plan._committing``), and a layer's activation (code ``act``) and ``add``."""
    x, dtype = _as_input(input, "input", half=True)  # half precision: the sweep reads it
    axis, C = _check_channels(x, channel_axis)
    _, _, w, b = _channel_params(x, C, None, None, weight, bias)
    mean_, invstd_ = _stat_vector(mean, "mean", (C,)), _stat_vector(invstd, "invstd", (C,))
    eps = _check_eps(eps)
    if out is not None:
        _check_out(out, x.shape, dtype)
    add_ = _check_add(add, x.shape)
    buf, N, C, S, moved = _channel_view(x, axis)
    var = _variance(invstd_, eps)
    result, commit = _committing(commit, out, buf, axis, moved, running)
    if x.size:
        _kernels.forward_with_stats(buf, result, N, C, S, mean_, var, w, b, eps,
                                    threads_for(x.size, S if S > 1 else 64), commit, act,
                                    _add_buffer(add_, x.shape, axis, moved, buf, result))
    elif commit is not None:
        commit.apply(result, mean_, var)
    return _returned(result, out, axis, moved, dtype)


def _rows(value: ArrayLike, name: str, shape: Optional[Tuple[int, ...]] = None) -> Stats:
    """A float64 array of real numbers: of ``shape``, or 2-D (processes, C) with at least one row."""
    a = _reals(value, name)
    if shape is None and (a.ndim != 2 or a.shape[0] < 1):
        raise ValueError(f"{name}: expected shape (processes, C) with at least one process, got {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    return a


def batch_norm_gather_stats_with_counts(input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                                        running_mean: Optional[FloatArray], running_var: Optional[FloatArray],
                                        momentum: float, eps: float, counts: ArrayLike) -> Tuple[Stats, Stats]:
    r"""The statistics of a whole batch from those of its slices, as
    ``torch.batch_norm_gather_stats_with_counts``; updates the running statistics.

    Parameters
    ----------
    input : array_like
        A slice of the batch, floating point: only its dtype is used (as PyTorch), that of the running
        statistics' check.
    mean, invstd : array_like of shape (P, C)
        :func:`batch_norm_stats` of each of the P slices, in rank order.
    running_mean, running_var : ndarray of shape (C,) or None
        Updated in place when given (writable ndarrays, both or neither) with the batch mean and the
        unbiased batch variance, as :func:`batch_norm` in training.
    momentum : float in [0, 1]
        The weight of the batch in the running statistics (PyTorch's convention).
    eps : float
        The eps ``invstd`` was computed with (>= 0).
    counts : array_like of shape (P,)
        The number of values per channel of each slice (>= 0; an empty slice's statistics are ignored).

    Returns
    -------
    mean, invstd : ndarray of float64, shape (C,)
        The mean and :math:`1 / \sqrt{\mathrm{Var}[x] + \epsilon}` of the whole batch (NaN when every
        slice is empty).

    Raises
    ------
    TypeError
        Input not floating point; statistics or counts not real numbers; a running statistic that is not
        an ndarray.
    ValueError
        ``mean`` not of shape (P, C) with P >= 1; ``invstd`` or ``counts`` of another shape; a negative
        count; running statistics not of shape (C,), only one of them, or read-only; a single value in
        the whole batch with running statistics (no unbiased variance); bad ``momentum`` or ``eps``.

    Notes
    -----
    Each slice's variance :math:`\sigma_p^{-2} - \epsilon` and mean are merged with Chan, Golub and
    LeVeque's formula, in rank order (the same bits on every process), in float64:

    .. math:: n = \sum_p n_p, \quad \mu = \sum_p \frac{n_p}{n} \mu_p, \quad
              \mathrm{Var} = \sum_p \frac{n_p}{n} \left( \sigma^2_p + (\mu_p - \mu)^2 \right)

    References
    ----------
    PyTorch: ``torch.batch_norm_gather_stats_with_counts``, the merge of ``torch.nn.SyncBatchNorm``.

    Examples
    --------
    >>> import numpy as np, fastnorm.functional as F
    >>> a, b = np.array([[1.], [2.]]), np.array([[3.], [6.]])       # two slices of one batch
    >>> stats = [F.batch_norm_stats(s, 0.0) for s in (a, b)]
    >>> mean, invstd = F.batch_norm_gather_stats_with_counts(
    ...     a, [m for m, _ in stats], [s for _, s in stats], None, None, 0.1, 0.0, [2, 2])
    >>> float(mean[0]), round(float(1 / invstd[0] ** 2), 12)       # of 1, 2, 3, 6
    (3.0, 3.5)
    """
    x, _ = _as_input(input, "input")
    means = _rows(mean, "mean")
    invstds = _rows(invstd, "invstd", means.shape)
    n_p = _rows(counts, "counts", means.shape[:1])
    if not np.all(n_p >= 0):
        raise ValueError(f"counts: expected numbers >= 0, got {n_p}")
    momentum = _check_momentum(momentum, allow_none=False)
    eps = _check_eps(eps)
    C = means.shape[1]
    rm, rv, _, _ = _channel_params(x, C, running_mean, running_var, None, None)
    buffers, _ = _running_roles(True, running_mean, running_var, rm, rv, "")
    total = functools.reduce(Moments.merge, (Moments.from_arrays({"count": n, "mean": m, "var": _variance(s, eps)})
                                             for n, m, s in zip(n_p, means, invstds)))
    n = float(n_p.sum())
    mean_, var = np.where(total.count > 0, total.mean, np.nan), total.var()
    invstd_ = 1.0 / np.sqrt(var + eps)  # before the update: the update is the last step
    if buffers is not None and n > 0:  # (and C > 0: Commit divides by the length of the statistics)
        if n <= 1:
            raise ValueError(f"counts: expected more than 1 value per channel in all to update the running "
                             f"statistics, got {n:g}")
        if C:
            _update_running(*buffers, mean_, var, momentum, n / (n - 1))
    return mean_, invstd_


def batch_norm_backward_reduce(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                               weight: Optional[ArrayLike], input_g: bool, weight_g: bool, bias_g: bool, *,
                               channel_axis: SupportsIndex = 1
                               ) -> Tuple[Optional[Stats], Optional[Stats], Optional[Stats], Optional[Stats]]:
    r"""The per-channel sums of a BatchNorm backward, as ``torch.batch_norm_backward_reduce``.

    Parameters
    ----------
    grad_output : array_like
        The gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like, shape (N, C, ...)
        The forward's input (float16, bfloat16, float32 or float64).
    mean, invstd : array_like of shape (C,)
        The statistics the forward normalized with.
    weight : array_like of shape (C,) or None
        The forward's weight (checked; the sums do not depend on it).
    input_g, weight_g, bias_g : bool
        Which results to return: ``sum_dy`` and ``sum_dy_xmu`` (what the input gradient needs),
        ``grad_weight``, ``grad_bias``; the others are None.
    channel_axis : int, keyword-only
        The axis of the channels: 1 (the default) or -1 for channels-last data.

    Returns
    -------
    sum_dy, sum_dy_xmu, grad_weight, grad_bias : ndarray of float64, shape (C,), or None
        :math:`\sum \partial L / \partial y`, :math:`\sum \partial L / \partial y \, (x - \mu)`,
        ``sum_dy_xmu * invstd`` and ``sum_dy`` over each channel's values (0 for an empty input).

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point.
    ValueError
        Fewer than 2 dimensions; ``grad_output`` of another shape; ``mean``, ``invstd`` or ``weight`` not
        of shape (C,).

    Notes
    -----
    ``grad_weight`` and ``grad_bias`` are those of :func:`batch_norm_backward` for this input alone;
    summed over the processes, ``sum_dy`` and ``sum_dy_xmu`` give :func:`batch_norm_backward_elemt` the
    whole batch's.

    References
    ----------
    ``torch.batch_norm_backward_reduce`` in PyTorch: what each process of ``torch.nn.SyncBatchNorm``'s
    backward computes before the all-reduce.

    Examples
    --------
    >>> import numpy as np, fastnorm.functional as F
    >>> x, dy = np.array([[1., 2.], [3., 6.]]), np.array([[1., 0.], [1., 2.]])
    >>> sum_dy, sum_dy_xmu, dw, db = F.batch_norm_backward_reduce(dy, x, [2., 4.], [1., .5], None, True, True, False)
    >>> sum_dy.tolist(), sum_dy_xmu.tolist(), dw.tolist(), db
    ([2.0, 2.0], [0.0, 4.0], [0.0, 2.0], None)
    """
    x, g, _ = _grad_inputs(grad_output, input)
    axis, C = _check_channels(x, channel_axis)
    mean_, invstd_ = _stat_vector(mean, "mean", (C,)), _stat_vector(invstd, "invstd", (C,))
    _channel_vector(weight, "weight", C, x.dtype)
    if x.size:
        buf, N, C, S, moved = _channel_view(x, axis)
        # The kernel's sum(dy * (x - mean) * rstd), with rstd 1
        sum_dy, sum_dy_xmu = _kernels.backward_reduce(buf, _like_view(g, axis, moved), N, C, S, mean_, np.ones(C),
                                                      threads_for(x.size))
    else:
        sum_dy, sum_dy_xmu = np.zeros(C), np.zeros(C)
    grad_weight = sum_dy_xmu * invstd_ if x.size else np.zeros(C)  # not 0 * NaN for an empty batch's invstd
    return (sum_dy if input_g else None, sum_dy_xmu if input_g else None, grad_weight if weight_g else None,
            sum_dy.copy() if bias_g else None)


def batch_norm_backward_elemt(grad_output: ArrayLike, input: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                              weight: Optional[ArrayLike], sum_dy: ArrayLike, sum_dy_xmu: ArrayLike,
                              count: ArrayLike, *, channel_axis: SupportsIndex = 1) -> FloatArray:
    r"""The input gradient of a BatchNorm in training from the sums of the whole batch, as
    ``torch.batch_norm_backward_elemt``.

    Parameters
    ----------
    grad_output : array_like
        This slice's gradient of the loss with respect to its output (the input's shape), floating point.
    input : array_like, shape (N, C, ...)
        The slice of the batch the forward normalized (float16, bfloat16, float32 or float64).
    mean, invstd : array_like of shape (C,)
        The whole batch's statistics, which the forward normalized with.
    weight : array_like of shape (C,) or None
        The forward's weight :math:`\gamma` (None: 1).
    sum_dy, sum_dy_xmu : array_like of shape (C,)
        :func:`batch_norm_backward_reduce`'s sums, added up over every slice of the batch.
    count : array_like of numbers
        The number of values per channel of each slice (PyTorch's per-process counts); their sum is the
        whole batch's :math:`n`.
    channel_axis : int, keyword-only
        The axis of the channels: 1 (the default) or -1 for channels-last data.

    Returns
    -------
    ndarray
        The gradient with respect to ``input``: its shape and dtype.

    Raises
    ------
    TypeError
        ``grad_output``, ``input`` or ``weight`` not floating point; ``count`` not real numbers.
    ValueError
        Fewer than 2 dimensions; ``grad_output`` of another shape; a statistic, sum or ``weight`` not of
        shape (C,); a negative count, or counts summing to 0 for a non-empty input.

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x} = \left( \frac{\partial L}{\partial y}
              - \frac{\mathrm{sum\_dy}}{n} - (x - \mu) \, \sigma^{-2} \frac{\mathrm{sum\_dy\_xmu}}{n}
              \right) \gamma \, \sigma^{-1}

    :func:`batch_norm_backward`'s training-mode formula with :math:`\sum g \hat x =
    \gamma \, \sigma^{-1} \, \mathrm{sum\_dy\_xmu}`, computed by its kernel.

    References
    ----------
    PyTorch: ``torch.batch_norm_backward_elemt``, the last step of ``torch.nn.SyncBatchNorm``'s backward.

    Examples
    --------
    >>> import numpy as np, fastnorm.functional as F
    >>> x = np.random.default_rng(0).normal(size=(8, 3))
    >>> y, mean, invstd = F.batch_norm(x, training=True, return_stats=True)
    >>> dy = np.random.default_rng(1).normal(size=x.shape)
    >>> sum_dy, sum_dy_xmu, _, _ = F.batch_norm_backward_reduce(dy, x, mean, invstd, None, True, False, False)
    >>> dx = F.batch_norm_backward_elemt(dy, x, mean, invstd, None, sum_dy, sum_dy_xmu, [8])
    >>> bool(np.allclose(dx, F.batch_norm_backward(dy, x, mean, invstd)[0]))
    True
    """
    x, g, dtype = _grad_inputs(grad_output, input)
    axis, C = _check_channels(x, channel_axis)
    mean_, invstd_ = _stat_vector(mean, "mean", (C,)), _stat_vector(invstd, "invstd", (C,))
    sums = _stat_vector(sum_dy, "sum_dy", (C,)), _stat_vector(sum_dy_xmu, "sum_dy_xmu", (C,))
    w = _channel_vector(weight, "weight", C, x.dtype)
    counts = _reals(count, "count")
    if not np.all(counts >= 0):
        raise ValueError(f"count: expected numbers >= 0, got {counts}")
    if x.size and not counts.sum() > 0:
        raise ValueError(f"count: expected a positive total (the batch holds this input's values), got {counts}")
    if x.size == 0:
        return np.zeros(x.shape, dtype)
    buf, N, C, S, moved = _channel_view(x, axis)
    dx = _kernels.empty_like(buf)
    # The kernel's sums are sum(dy) and sum(dy * xhat) = invstd * sum_dy_xmu
    _kernels.backward_elemt(buf, _like_view(g, axis, moved), dx, N, C, S, mean_, invstd_, w, sums[0],
                            sums[1] * invstd_, float(counts.sum()), threads_for(x.size))
    return _finish(dx, None, axis, moved, dtype)
