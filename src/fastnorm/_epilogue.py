"""What follows the normalization inside its sweep: ``y = act(norm(x) + add)`` (``activation=``, ``add=``).

The forwards pass the activation's code and the ``add`` array to the kernels, which apply them to each
chunk of output as it is written (``_simd_activation.h``).  Here: the same epilogue after the fact, for
the paths that normalize first (masked inputs, several channel axes, ``axes=``), and the backward through
it: the pre-activation ``z = norm(x) + add`` recomputed in float64 from x and the forward's statistics,
then ``dz = dy * act'(z)`` (a C loop), which the normalization's own backward takes as its ``dy``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from ._threads import threads_for
from ._validation import FloatArray, Stats, _array, _check_activation, _check_add


def _activate_after(y: FloatArray, act: int, add: Optional[NDArray[Any]]) -> FloatArray:
    """``y = act(y + add)`` in place, for a ``y`` already normalized (``add`` checked to broadcast to y)."""
    if act == 0 and add is None:
        return y
    plain = _kernels.is_plain(y) and _kernels.is_c_contiguous(y)
    target = y if plain else np.array(y, dtype=np.float64 if y.dtype == np.float64 else np.float32, order="C")
    a = None if add is None else np.array(np.broadcast_to(add, y.shape), dtype=target.dtype, order="C")
    _kernels.activate(target, a, act, threads_for(y.size))
    if target is not y:
        np.copyto(y, target, casting="unsafe")
    return y


def _broadcast(v: Optional[ArrayLike], shape: Tuple[int, ...], default: float) -> Stats:
    """A parameter or statistic as float64 of a shape that broadcasts against the input."""
    return np.full(shape, default) if v is None else np.asarray(v, dtype=np.float64).reshape(shape)


def _pre_activation(x: FloatArray, center: ArrayLike, rstd: ArrayLike, weight: Optional[ArrayLike],
                    bias: Optional[ArrayLike], stats_shape: Tuple[int, ...], param_shape: Tuple[int, ...],
                    add: Optional[NDArray[Any]]) -> Stats:
    """``z = (x - center) * rstd * weight + bias + add`` in float64: the statistics reshaped to
    ``stats_shape``, the parameters to ``param_shape`` (both broadcasting against x)."""
    z = (x.astype(np.float64) - _broadcast(center, stats_shape, 0.0)) * _broadcast(rstd, stats_shape, 1.0)
    if weight is not None:
        z *= _broadcast(weight, param_shape, 1.0)
    if bias is not None:
        z += _broadcast(bias, param_shape, 0.0)
    if add is not None:
        z += add
    return z


def _through_activation(grad_output: ArrayLike, input: ArrayLike, activation: Optional[str], add: Optional[ArrayLike],
                        pre_activation: Callable[[FloatArray, Optional[NDArray[Any]]], Stats],
                        backward: Callable[[ArrayLike], Tuple[Any, ...]]) -> Tuple[Any, ...]:
    """A backward through ``act(norm(x) + add)``: ``backward(dz)`` of the normalization, with
    ``dz = grad_output * act'(z)``, ``z`` from ``pre_activation(x, add)``; and ``dz`` (the gradient of
    ``add``, of the input's shape and dtype) appended when ``add`` is given.  Without either: ``backward``
    of ``grad_output`` as it is."""
    act = _check_activation(activation)
    if act == 0 and add is None:
        return backward(grad_output)
    x = _array(input, "input")
    g = _array(grad_output, "grad_output")
    a = _check_add(add, x.shape)
    if g.shape != x.shape or g.dtype.kind != "f":
        return backward(grad_output)  # let the normalization's backward name the problem
    dz = np.asarray(g, dtype=np.float64)
    if act:
        z = np.ascontiguousarray(pre_activation(x, a), dtype=np.float64)
        dz = _kernels.activation_grad(z, np.ascontiguousarray(dz), act, threads_for(z.size))
    dtype = x.dtype.newbyteorder("=") if x.dtype.kind == "f" else np.dtype(np.float64)
    dz_in = dz.astype(dtype)
    grads = backward(dz_in)
    return (*grads, dz_in) if add is not None else grads
