"""Lp normalization along axes (``torch.nn.functional.normalize``), computed in NumPy in float64.

    n = ||x||_p over dim        y = x / max(n, eps)

and, with g the gradient of the output, d = max(n, eps) and the sum over dim::

    dx = (g - [n >= eps] * sum(g * y) * dn/dx) / d
    dn/dx = sign(x) * (|x| / n)**(p - 1)                      (0 where x = 0 or n = 0)
    dn/dx = sign(x) * [|x| = n] / #{|x| = n}                  p = inf: shared by the maxima, as PyTorch

The norm is taken of ``|x| / max|x|`` and scaled back, so that no power overflows or underflows to
zero where the norm itself is a double.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from ._layer_docs import _GRAD_RETURNS, _OUT_AND_RETURNS, _filled
from ._validation import (FloatArray, Stats, _check_axis, _check_eps, _deliver, _float64_grads, _float64_input,
                          _is_real_scalar, _real, _rounded)

__all__ = ["normalize", "normalize_backward"]

Dims = Union[int, Sequence[int]]


def _check_p(p: object) -> float:
    """p > 0, finite or inf."""
    if _is_real_scalar(p) and p == math.inf:
        return math.inf
    p = _real(p, "p", "a positive number or inf")
    if p <= 0.0:
        raise ValueError(f"p: expected a positive number or inf, got {p}")
    return p


def _check_dims(dim: object, ndim: int) -> Tuple[int, ...]:
    """``dim`` (an axis or a sequence of distinct axes, negative ones counted from the end) as axes.  A 0-D
    input has one axis here (0 or -1), as PyTorch's."""
    ndim = max(ndim, 1)
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    axes = tuple(_check_axis(d, ndim, "dim") for d in dims)
    if not axes or len(set(axes)) != len(axes):
        raise ValueError(f"dim: expected one axis or distinct axes, got {dim!r}")
    return axes


def _arguments(x: Stats, p: object, dim: object, eps: object) -> Tuple[Stats, float, Tuple[int, ...], float]:
    """(x with at least one axis, p, axes, eps), checked."""
    return x.reshape(x.shape or (1,)), _check_p(p), _check_dims(dim, x.ndim), _check_eps(eps)


def _norm(x: Stats, p: float, axes: Tuple[int, ...]) -> Stats:
    """||x||_p over ``axes`` (kept as size-1 axes), float64."""
    a = np.abs(x)
    top: Stats = np.max(a, axis=axes, keepdims=True, initial=0.0)
    if p == math.inf:
        return top
    scale = np.where(top > 0.0, top, 1.0)
    r = a / scale
    powers = r if p == 1.0 else r * r if p == 2.0 else r ** p
    norm: Stats = scale * np.sum(powers, axis=axes, keepdims=True) ** (1.0 / p)
    return norm


@_filled(out_and_returns=_OUT_AND_RETURNS)
def normalize(input: ArrayLike, p: float = 2.0, dim: Dims = 1, eps: float = 1e-12, *,
              out: Optional[FloatArray] = None) -> FloatArray:
    r"""Lp normalization along ``dim``, as ``torch.nn.functional.normalize``.

    Parameters
    ----------
    input : array_like
        float16, bfloat16, float32 or float64, any shape; computed in float64.
    p : float
        The exponent of the norm: any positive number, or ``math.inf`` (the largest magnitude).
    dim : int or sequence of int
        The axis (or distinct axes) to normalize over; negative ones count from the end.
    eps : float
        The smallest divisor, >= 0: ``x / max(norm, eps)``.
    {out_and_returns}

    Raises
    ------
    TypeError
        ``input`` not floating point, or a masked array; ``p``, ``dim`` or ``eps`` not numbers; ``out``
        of another dtype.
    ValueError
        ``p`` <= 0 or NaN; ``dim`` out of range or repeated; ``eps`` negative or not finite; ``out`` of
        another shape, or read-only.

    Notes
    -----
    .. math::

        y = \frac{x}{\max(\lVert x \rVert_p, \epsilon)}, \qquad
        \lVert x \rVert_p = \Big(\sum |x_i|^p\Big)^{1/p}

    over the values along ``dim``.  The norm is accumulated in float64 (of :math:`|x| / \max |x|`, so that
    no power overflows).  ONNX ``LpNormalization`` (p 1 or 2) is this with ``eps = 0``; Keras'
    ``UnitNormalization`` is ``p = 2``.

    References
    ----------
    https://pytorch.org/docs/stable/generated/torch.nn.functional.normalize.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.functional.normalize(np.array([[3., 4.], [0., 0.]]))          # rows to unit length
    array([[0.6, 0.8],
           [0. , 0. ]])
    >>> fastnorm.functional.normalize(np.array([[3., -4.]]), p=1.0, dim=-1)
    array([[ 0.42857143, -0.57142857]])
    """
    x, dtype = _float64_input(input, "input")
    x1, p, axes, eps = _arguments(x, p, dim, eps)
    with np.errstate(all="ignore"):  # NaN and inf as IEEE arithmetic (and PyTorch) give them, silently
        y = x1 / np.maximum(_norm(x1, p, axes), eps)
    return _deliver(y.reshape(x.shape), out, dtype)


@_filled(grad_returns=_GRAD_RETURNS)
def normalize_backward(grad_output: ArrayLike, input: ArrayLike, p: float = 2.0, dim: Dims = 1,
                       eps: float = 1e-12) -> FloatArray:
    r"""Gradient of :func:`normalize` with respect to its input.

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like
        The forward's input (float16, bfloat16, float32 or float64).
    p, dim, eps
        The forward's arguments.

    {grad_returns}

    Raises
    ------
    TypeError
        ``grad_output`` or ``input`` not floating point; ``p``, ``dim`` or ``eps`` as :func:`normalize`.
    ValueError
        ``grad_output`` of another shape; ``p``, ``dim`` or ``eps`` as :func:`normalize`.

    Notes
    -----
    With :math:`n = \lVert x \rVert_p`, :math:`d = \max(n, \epsilon)`, :math:`y = x / d` and :math:`g =
    \partial L / \partial y`, the sums over ``dim``:

    .. math::

        \frac{\partial L}{\partial x} = \frac{1}{d}\Big(g - [n \ge \epsilon]
            \Big(\sum g\, y\Big) \frac{\partial n}{\partial x}\Big), \qquad
        \frac{\partial n}{\partial x_i} = \operatorname{sign}(x_i) \Big(\frac{|x_i|}{n}\Big)^{p - 1}

    (for :math:`p = \infty` the gradient of the maximum is shared equally by the values that attain it,
    as PyTorch's; where :math:`n < \epsilon` the divisor is the constant :math:`\epsilon`).

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.array([[3., 4.]])
    >>> fastnorm.functional.normalize_backward(x, x)    # along x the length is all that changes: no gradient
    array([[0., 0.]])
    """
    g, x, dtype = _float64_grads(grad_output, input)
    x1, p, axes, eps = _arguments(x, p, dim, eps)
    g1 = g.reshape(x1.shape)
    with np.errstate(all="ignore"):
        return _rounded(_normalize_backward(g1, x1, p, axes, eps).reshape(x.shape), dtype)


def _normalize_backward(g1: Stats, x1: Stats, p: float, axes: Tuple[int, ...], eps: float) -> Stats:
    """dx of the module's formula, x with at least one axis."""
    n = _norm(x1, p, axes)
    d = np.maximum(n, eps)
    along = np.sum(g1 * (x1 / d), axis=axes, keepdims=True)
    sign, a = np.sign(x1), np.abs(x1)
    if p == math.inf:
        top = a == n
        dn = sign * top / np.sum(top, axis=axes, keepdims=True)
    elif p == 1.0:
        dn = sign
    else:
        dn = np.where((a > 0.0) & (n > 0.0), sign * (a / n) ** (p - 1.0), 0.0)
    dx: Stats = (g1 - np.where(n >= eps, along * dn, 0.0)) / d
    return dx
