"""Every choice of view and path of the functions, in one place: which view of the input's memory the
kernels work on (``[N, C, S]`` channels first, ``[M, C]`` channels last, rows of ``[R, D]``), which kernel
path a shape takes, which array the kernel writes, and how its result becomes what a call returns.

A function of ``fastnorm.functional`` runs four steps: validate (``_validation``), plan the view (here),
call the kernel, finish (here).  Nothing here checks arguments: everything it is given is checked.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _kernels
from ._validation import FloatArray, Shape, Stats, _reshaped_view, _Vector


# ---------------------------------------------------------------------------------------------------------
# Views of the input
# ---------------------------------------------------------------------------------------------------------

def _contiguous(x: FloatArray) -> FloatArray:
    return x if _kernels.is_c_contiguous(x) else np.ascontiguousarray(x)


def _channel_view(x: FloatArray, axis: int) -> Tuple[FloatArray, int, int, int, bool]:
    """A C-contiguous buffer holding x, seen as ``[N, C, S]`` around ``axis`` (S == 1 is ``[M, C]``).

    Returns ``(buf, N, C, S, moved)``: when x is a channels-first view of channels-last memory (what
    ``np.moveaxis`` of an NHWC array gives), ``buf`` is that memory as ``[..., C]`` with no copy and
    ``moved`` is True; otherwise ``buf`` is x itself or a C-ordered copy of it.
    """
    shape = x.shape
    C = shape[axis]
    moved = _channels_last_memory(x, axis)
    if moved is not None:
        return moved, x.size // C, C, 1, True
    buf = _contiguous(x)
    N = math.prod(shape[:axis]) if axis != 1 else shape[0]
    S = x.size // (N * C) if x.size else math.prod(shape[axis + 1:])
    return buf, N, C, S, False


def _channels_last_memory(x: FloatArray, axis: int) -> Optional[FloatArray]:
    """x's memory seen as ``[..., C]`` where x is a channels-first view of channels-last memory, else None."""
    if axis == x.ndim - 1 or not x.size or _kernels.is_c_contiguous(x):
        return None
    moved = np.moveaxis(x, axis, -1)
    return moved if moved.flags.c_contiguous else None


def _grouped(x: FloatArray, kept: Tuple[int, ...], trailing: bool) -> Tuple[Tuple[int, ...], int, bool]:
    """``(order, lead, view)``: an order of x's axes in which the ``kept`` ones (in their order) are one
    run after ``lead`` others, so that ``np.transpose(x, order)`` is ``[N, K, S]`` (N the product of the
    ``lead`` axes, K of the kept ones, S of the rest).  ``view``: that transpose is C-contiguous memory,
    so that ``[N, K, S]`` is a view of x.  It is where x's memory holds the kept axes together, in their
    order, after merging adjacent axes (and, with ``trailing``, the others all after them: lead 0);
    otherwise the order is the axes' own with the kept ones moved together (a copy of x is needed)."""
    others = [a for a in range(x.ndim) if a not in kept]
    memory = sorted((a for a in range(x.ndim) if x.shape[a] != 1), key=lambda a: -x.strides[a])
    first = next((i for i, a in enumerate(memory) if a in kept), 0)
    before = [a for a in memory[:first] if a not in kept]
    after = [a for a in memory[first:] if a not in kept] + [a for a in others if x.shape[a] == 1]
    order = tuple(before + list(kept) + after)  # axes of size 1 go anywhere: after
    if not (trailing and before) and np.transpose(x, order).flags.c_contiguous:
        return order, len(before), True
    before = [] if trailing else [a for a in others if a < kept[0]]
    return tuple(before + list(kept) + [a for a in others if a not in before]), len(before), False


def _rows_order(x: FloatArray, axes: Tuple[int, ...]) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """``(order, perm, shape)`` of LayerNorm or RMSNorm over ``axes``: x transposed by ``order`` is
    rows of the normalized values after the kept axes (see :func:`_grouped`), seen as ``shape`` (the kept
    axes', then D); ``perm`` orders a parameter of the normalized axes as its rows do."""
    kept = tuple(a for a in range(x.ndim) if a not in axes)
    order, _, _ = _grouped(x, kept, trailing=True)
    perm = tuple(axes.index(a) for a in order[len(kept):])
    return order, perm, tuple(x.shape[a] for a in kept) + (math.prod(x.shape[a] for a in axes),)


def _transposed(a: FloatArray, order: Tuple[int, ...], shape: Tuple[int, ...]) -> FloatArray:
    """``a`` transposed by ``order`` and reshaped to ``shape``: a view where its memory allows, else a
    C-ordered copy."""
    view = _transposed_view(a, order, shape)
    return np.reshape(np.ascontiguousarray(np.transpose(a, order)), shape) if view is None else view


def _transposed_view(a: FloatArray, order: Tuple[int, ...], shape: Tuple[int, ...]) -> Optional[FloatArray]:
    """:func:`_transposed` where it is a view of ``a`` (an ``out=`` written in place), else None."""
    return _reshaped_view(np.transpose(a, order), shape)


def _untransposed(y: FloatArray, order: Tuple[int, ...], shape: Tuple[int, ...]) -> FloatArray:
    """The inverse of :func:`_transposed` (``shape``: the transposed shape): a view of ``y``."""
    return np.transpose(np.reshape(y, shape), np.argsort(order))


def _new_result(x: FloatArray, axis: int, dtype: np.dtype[Any]) -> FloatArray:
    """A new array of x's shape and ``dtype``, laid out as the kernels' view of x (channels last where x's
    memory is), so that a call given it as ``out=`` writes it directly: a result allocated ahead of its
    call (a collective step takes its memory before the exchange, so that little can fail after it)."""
    moved = _channels_last_memory(x, axis)
    if moved is None:
        return _kernels.empty(x.shape, dtype)
    return np.moveaxis(_kernels.empty(moved.shape, dtype), -1, axis)


def _like_view(a: FloatArray, axis: int, moved: bool) -> FloatArray:
    """A second array of the input's shape (a gradient) in the memory order of the input's view."""
    return np.ascontiguousarray(np.moveaxis(a, axis, -1) if moved else a)


def _by_columns(N: int, S: int) -> bool:
    """Whether channels-first training or backward of [N, C, S] goes by the columns of [N, C * S]."""
    return 1 < S < _kernels.get_short_run() and S <= N


def _repeat(v: _Vector, S: int) -> _Vector:
    """A per-channel vector as per-column values of [N, C * S] (None stays None)."""
    return None if v is None else np.repeat(v, S)


def _group_norm_channels_last(x: FloatArray, axis: int, moved: bool) -> bool:
    """Whether GroupNorm runs on channels-last memory ([N, S, C]).  With one value per channel (S == 1)
    the layouts coincide and the rows of [N * G, C / G] go faster (a column pass of one row per sample
    paid a merge per column)."""
    return (moved or axis == x.ndim - 1) and x.size != x.shape[0] * x.shape[axis]


def _moments_view(x: FloatArray, axes: Tuple[int, ...]) -> Tuple[FloatArray, int, int, int]:
    """``(buf, N, C, S)``: x as ``[N, C, S]`` with the reduced axes in N and S and the kept ones in C."""
    kept = [a for a in range(x.ndim) if a not in axes]
    if not kept or kept == list(range(kept[0], kept[-1] + 1)):
        # The kept axes are one run: x is [N, C, S] around it without moving anything.
        first = kept[0] if kept else 0
        last = kept[-1] if kept else -1
        return (np.ascontiguousarray(x), math.prod(x.shape[:first]), math.prod(x.shape[a] for a in kept),
                math.prod(x.shape[last + 1:]))
    return (np.ascontiguousarray(np.transpose(x, list(axes) + kept)), math.prod(x.shape[a] for a in axes),
            math.prod(x.shape[a] for a in kept), 1)


def _varying_axis(x: FloatArray, params: Dict[str, Stats]) -> Tuple[bool, Optional[int]]:
    """(fused, axis): whether parameters broadcast against x vary along at most one of its axes (then the
    fused per-channel kernel serves, ``axis`` that one or None), or the general NumPy path is needed."""
    if x.ndim < 1 or x.size == 0:
        return False, None
    padded = [(1,) * (x.ndim - a.ndim) + a.shape for a in params.values()]
    varying = {i for s in padded for i, n in enumerate(s) if n != 1}
    if len(varying) > 1:
        return False, None
    return True, varying.pop() if varying else None


# ---------------------------------------------------------------------------------------------------------
# The array the kernel writes, and what a call returns
# ---------------------------------------------------------------------------------------------------------

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


def _kernel_writes(target: FloatArray, buf: FloatArray) -> bool:
    """Whether the kernel may write its result straight into ``target`` (a checked ``out``, or its
    channels-last view) when reading ``buf``; otherwise it writes a new array, then copied."""
    return target.dtype == buf.dtype and target.flags.c_contiguous and target.flags.aligned


def _written_into(result: FloatArray, out: FloatArray, moved: bool) -> bool:
    return result is out or (moved and result.base is out)


def _copy_target(result: FloatArray, out: Optional[FloatArray], axis: int, moved: bool) -> Optional[FloatArray]:
    """Where the result must still be copied: ``out`` (in the kernel's layout) when the kernel wrote
    elsewhere, else None."""
    if out is None or _written_into(result, out, moved):
        return None
    return np.moveaxis(out, axis, -1) if moved else out


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
                stats: Optional[Tuple[Stats, Stats]] = None,
                copies: Optional[Tuple[Tuple[FloatArray, FloatArray], ...]] = None
                ) -> Tuple[FloatArray, Optional[_kernels.Commit]]:
    """(result, commit): the array the kernel writes, and the :class:`~fastnorm._kernels.Commit` that the
    kernel call applies once it is written (None where nothing is left to apply): the copy into ``out``
    where the kernel cannot write there directly, the update of the ``running`` statistics (see
    ``Commit.prepare``), and what the caller's ``commit`` holds (a layer's attributes).  So a call is
    applied whole by its kernel call, or not at all.  ``stats``: the statistics a layer keeps when
    they are known beforehand (frozen ones); ``copies``: ``(destination, source)`` pairs, copied after the
    running statistics' update (see ``Commit.prepare``)."""
    result = _result_buffer(out, buf, axis, moved)
    target = _copy_target(result, out, axis, moved)
    if commit is None:
        if target is None and running is None and copies is None:
            return result, None
        commit = _kernels.Commit()
    commit.prepare(target, running, stats_shape, rms, stats, copies)
    return result, commit


def _nan_stats(shape: Shape) -> Tuple[Stats, Stats]:
    """The (mean, rstd) of a call on an empty input: the statistics of no value."""
    return np.full(shape, np.nan), np.full(shape, np.nan)


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


def _frozen_stats(running_mean: FloatArray, running_var: FloatArray, eps: float) -> Tuple[Stats, Stats]:
    """The mean and inverse standard deviation that evaluation mode normalizes with, float64."""
    return running_mean.astype(np.float64), 1.0 / np.sqrt(running_var.astype(np.float64) + eps)


def _update_running(running_mean: FloatArray, running_var: FloatArray, mean: Stats, batch_var: Stats, factor: float,
                    var_scale: float = 1.0) -> None:
    """Exponential moving average of the running statistics with ``batch_var * var_scale``, computed in
    float64, in one C call (see ``_kernels.Commit``)."""
    commit = _kernels.Commit()
    commit.prepare(None, (running_mean, running_var, factor, var_scale))
    commit.apply(None, mean, batch_var)


def _add_buffer(add: Optional[FloatArray], shape: Tuple[int, ...], axis: int, moved: bool, buf: FloatArray,
                result: FloatArray) -> Optional[FloatArray]:
    """A checked ``add=`` as the kernel reads it: broadcast to the input's ``shape``, in the layout and dtype
    of the kernel's view ``buf`` (channels last where ``moved``), so that its value i goes with value i of
    ``result``.  The caller's array as it is when it already has that form (the fast path), a copy
    otherwise, and where it shares memory with ``result`` (the sweep writes a chunk of the output before
    it adds ``add`` to it)."""
    if add is None:
        return None
    a = np.broadcast_to(add, shape)
    if moved:
        a = np.moveaxis(a, axis, -1)
    if not (type(a) is np.ndarray and a.dtype == buf.dtype and a.flags.c_contiguous and a.flags.aligned):
        return np.array(a, dtype=buf.dtype, order="C")
    return a.copy() if np.may_share_memory(a, result) else a
