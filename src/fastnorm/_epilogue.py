"""What follows the normalization inside its sweep: ``y = act(norm(x) + add)`` (``activation=``, ``add=``).

The forwards pass the activation's code and the ``add`` array to the kernels, which apply them to each
chunk of output as it is written (``_simd_activation.h``).  Here: the same epilogue after the fact, for
the masked paths, which normalize first (the other paths pass them to their kernel), and the backward through
it: the pre-activation ``z = norm(x) + add`` recomputed from x and the forward's statistics as the
forward's sweep computed it and ``dz = dy * act'(z)``, in one kernel pass by chunks in cache (no saved
tensor), which the normalization's own backward takes as its ``dy``.
"""
from __future__ import annotations

import math

from typing import Any, Callable, NamedTuple, Optional, Set, SupportsIndex, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels, _masked
from ._threads import threads_for
from ._validation import (FloatArray, Shape, Stats, _array, _c_aligned, _check_activation, _check_add, _check_channels,
                          _check_normalized_shape, _check_out, _is_float, _is_half, _normalize_axes, _reals, _rounded,
                          _several_axes, check_count)


def _activate_after(y: FloatArray, act: int, add: Optional[NDArray[Any]]) -> FloatArray:
    """``y = act(y + add)`` in place, for a ``y`` already normalized (``add`` checked to broadcast to y)."""
    if act == 0 and add is None:
        return y
    plain = _kernels.is_plain(y) and _kernels.is_c_contiguous(y)
    target: FloatArray = y if plain else np.array(y, dtype=np.float64 if y.dtype == np.float64 else np.float32,
                                                  order="C")
    a = None if add is None else np.array(np.broadcast_to(add, y.shape), dtype=target.dtype, order="C")
    _kernels.activate(target, a, act, threads_for(y.size))
    if target is not y:
        np.copyto(y, target, casting="unsafe")
    return y


def _normalize_then_activate(normalize: Callable[[Any], _masked.Pending], input: Any, out: Optional[FloatArray],
                             act: int, add: Any, copies: Tuple[Tuple[FloatArray, FloatArray], ...] = (),
                             commit: Optional[_kernels.Commit] = None,
                             rms: bool = False) -> Tuple[FloatArray, Stats, Stats]:
    """``(y, mean, rstd)`` of a masked call: ``normalize(input)`` computes into new arrays (``add`` checked
    before), ``y = act(y + add)`` is applied to its output, and then one C call (``_kernels.Commit``, a
    layer's ``commit`` when given, keeping the statistics: ``(rstd,)`` with ``rms``) writes ``out``
    (checked), the running statistics and ``copies`` (``(destination, source)`` pairs, such as
    ``residual_out=``): a call that fails or is interrupted before it has changed nothing.  The
    epilogue runs in the dtype the input is computed in (float32 for float16 and bfloat16, ``add`` taken in
    the input's dtype), rounded once: the float32 call's result rounded, as the fused kernels'."""
    add_ = None if add is None else _check_add(add, np.shape(input))
    normalized = normalize(input)
    y, dtype = normalized.y, normalized.dtype
    if out is not None:
        _check_out(out, y.shape, dtype)
    _activate_after(y, act, add_ if add_ is None or not _is_half(dtype) else add_.astype(dtype))
    result = out if out is not None else _rounded(y, dtype)
    writes = normalized.running + copies
    if out is not None or writes or commit is not None:
        commit = commit if commit is not None else _kernels.Commit()
        kept = (normalized.rstd,) if rms else (normalized.mean, normalized.rstd)
        commit.prepare(out, stats=kept, copies=writes or None)
        with np.errstate(over="ignore"):  # a half out: beyond its range is inf, silently (as a kernel's)
            commit.apply(y)
    return result, normalized.mean, normalized.rstd


def _along(v: ArrayLike, name: str, x: FloatArray, axes: Tuple[int, ...]) -> Stats:
    """A statistic or parameter that varies along x's ``axes`` (sorted), as float64 broadcasting against x."""
    shape = tuple(n if i in axes else 1 for i, n in enumerate(x.shape))
    a = _reals(v, name)
    if a.size != math.prod(shape):
        raise ValueError(f"{name}: expected {math.prod(shape)} values, one per index of axes {axes} of the "
                         f"input, got shape {a.shape}")
    return a.reshape(shape)


class _Fold(NamedTuple):
    """The forward's pre-activation ``z = (x - mean_hi) * scale + shift``, then ``* w + b`` (per-element
    parameters, else None), as factors of the compute dtype broadcasting against x."""
    dtype: np.dtype[Any]
    mean_hi: FloatArray
    scale: FloatArray
    shift: FloatArray
    w: Optional[FloatArray]
    b: Optional[FloatArray]


def _pre_activation(x: FloatArray, stat_axes: Tuple[int, ...], param_axes: Tuple[int, ...],
                    center: Optional[ArrayLike], rstd: ArrayLike, weight: Optional[ArrayLike],
                    bias: Optional[ArrayLike], per_element: bool = False) -> _Fold:
    """``z = (x - center) * rstd * weight + bias`` as the forward's sweep computes it, in x's compute dtype:
    the statistics (varying along x's ``stat_axes``) and the parameters (along ``param_axes``) folded in
    float64 into ``(x - mean_hi) * scale + shift`` (``_sweeps.pxi``'s ``_fold``), or with ``per_element``
    parameters (LayerNorm, RMSNorm) the fold of the statistics alone, then ``* weight + bias`` (center
    None: 0, RMSNorm).  The forward's ``add`` is added by the kernel that recomputes z."""
    dtype = np.dtype(np.float64 if x.dtype == np.float64 else np.float32)
    c = np.zeros(1) if center is None else _along(center, "mean", x, stat_axes)
    r = _along(rstd, "rstd", x, stat_axes)
    w = None if weight is None else _along(weight, "weight", x, param_axes)
    b = None if bias is None else _along(bias, "bias", x, param_axes)
    mean_hi = c.astype(dtype)
    scale = r if per_element or w is None else r * w
    shift = -(c - mean_hi) * scale
    if b is not None and not per_element:
        shift = shift + b
    return _Fold(dtype, mean_hi, scale.astype(dtype), shift.astype(dtype),
                 w.astype(dtype) if per_element and w is not None else None,
                 b.astype(dtype) if per_element and b is not None else None)


def _rows_view(shape: Tuple[int, ...], fold: _Fold) -> Tuple[int, bool]:
    """How x (C-contiguous, of ``shape``) is swept as ``[P, S]``: ``(j, columns)``, S the product of
    ``shape[j:]``; the factors constant along each row (``columns`` False: the axes from j on are not
    theirs) or along the rows (True: the axes before j are not theirs); w and b always vary within a row.
    Rows of at least 64 values when the factors allow, columns otherwise."""
    nd = len(shape)

    def varying(a: Optional[FloatArray]) -> Set[int]:
        return set() if a is None else {nd - a.ndim + i for i, n in enumerate(a.shape) if n > 1}

    factors = varying(fold.mean_hi) | varying(fold.scale) | varying(fold.shift)
    elements = varying(fold.w) | varying(fold.b)
    run = max(factors) + 1 if factors else 0
    column = min(factors | elements, default=nd)
    if min(elements, default=nd) >= run and (math.prod(shape[run:]) >= 64 or column == 0):
        return run, False
    return column, True


def _activation_grad(fold: _Fold, x: FloatArray, g: FloatArray, add: Optional[NDArray[Any]], act: int) -> FloatArray:
    """``dz = g * act'(z)``, a new array, ``z = fold(x) + add`` recomputed by one kernel pass, chunk by chunk
    (the forward's operations, so its bits).  Float16 or bfloat16 x and g of one dtype are read as they are
    and dz written in it (computed in float32, rounded once); otherwise dz has the compute dtype.  ``add``
    is taken in x's dtype, as the forward took it."""
    dtype = fold.dtype
    native = x.dtype.newbyteorder("=")
    io = native if native != dtype and g.dtype == native else dtype
    if x.size == 0:
        return np.empty(x.shape, io)
    xc = _c_aligned(x, io)
    j, columns = _rows_view(x.shape, fold)
    # The values of a factor along a row (x.shape[j:]), or along the rows (x.shape[:j]) where it is
    # constant within each row: written by broadcasting into the kernel's contiguous arrays.
    along, index = (x.shape[j:], (0,) * j) if columns else (x.shape[:j], (...,) + (0,) * (x.ndim - j))

    def values(a: FloatArray, shape: Tuple[int, ...], index: Tuple[Any, ...], out: FloatArray) -> FloatArray:
        out.reshape(shape)[...] = a.reshape((1,) * (x.ndim - a.ndim) + a.shape)[index]
        return out

    factors = np.empty((3, math.prod(along)), dtype)
    for k, a in enumerate(fold[1:4]):
        values(a, along, index, factors[k])
    row, lead = x.shape[j:], (0,) * j
    w, b = (None if a is None else values(a, row, lead, np.empty(math.prod(row), dtype)) for a in (fold.w, fold.b))
    return _kernels.activation_grad(
        xc, _c_aligned(g, io),
        None if add is None else _c_aligned(np.broadcast_to(add, x.shape).astype(native, copy=False), io),
        act, factors, columns, w, b, math.prod(row), threads_for(x.size))


def _channel_axes(x: FloatArray, channel_axis: object) -> Tuple[int, ...]:
    """The axes of a batch_norm's channels (see its ``channel_axis``), checked."""
    if _several_axes(channel_axis):
        return _normalize_axes(channel_axis, x.ndim, "channel_axis")  # type: ignore[arg-type]
    return (_check_channels(x, channel_axis)[0],)  # type: ignore[arg-type]


def _per_channel(stat: ArrayLike, num_groups: SupportsIndex, x: FloatArray, axis: int) -> Stats:
    """A group_norm statistic of shape (N, G) repeated to (N, C): each group's value for its channels."""
    G = check_count(num_groups, "num_groups")
    a = _reals(stat, "mean, rstd")
    if a.shape != (x.shape[0], G) or x.shape[axis] % G:
        raise ValueError(f"mean, rstd: expected shape ({x.shape[0]}, {G}), got {a.shape}")
    return np.repeat(a, x.shape[axis] // G, axis=1)


def _row_axes(x: FloatArray, normalized_shape: Optional[Shape],
              axes: Optional[Shape]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(statistics' axes, parameters' axes) of a layer_norm or rms_norm input: the kept axes, the
    normalized ones."""
    if axes is not None:
        normalized = _normalize_axes(axes, x.ndim)
    else:
        normalized = tuple(range(x.ndim - len(_check_normalized_shape(normalized_shape, x)), x.ndim))
    return tuple(a for a in range(x.ndim) if a not in normalized), normalized


def _through_activation(grad_output: ArrayLike, input: ArrayLike, activation: Optional[str], add: Optional[ArrayLike],
                        pre_activation: Callable[[FloatArray], _Fold],
                        backward: Callable[[ArrayLike], Tuple[Any, ...]]) -> Tuple[Any, ...]:
    """A backward through ``act(norm(x) + add)``: ``backward(dz)`` of the normalization, with
    ``dz = grad_output * act'(z)``, ``z`` from ``pre_activation(x)`` and ``add``; and ``dz`` (the gradient of
    ``add``, of the input's shape and dtype) appended when ``add`` is given.  Without either: ``backward``
    of ``grad_output`` as it is."""
    act = _check_activation(activation)
    if act == 0 and add is None:
        return backward(grad_output)
    x = np.asarray(np.ma.getdata(input))
    g = _array(grad_output, "grad_output")
    a = _check_add(add, x.shape)
    if g.shape != x.shape or not _is_float(g.dtype) or not _is_float(x.dtype):
        return backward(grad_output)  # let the normalization's backward name the problem
    dz = _activation_grad(pre_activation(x), x, g, a, act) if act else g
    native = x.dtype.newbyteorder("=")
    dz_in = dz if act and dz.dtype == native else np.array(dz, dtype=native)  # a new array: the gradient of add
    grads = backward(dz_in)
    return (*grads, dz_in) if add is not None else grads
