"""Local response normalization across channels (``torch.nn.functional.local_response_norm``), computed in
NumPy in float64.

With the window of channel ``i`` being channels ``i - size // 2`` to ``i + (size - 1) // 2`` (zero
padding outside, counted in the average)::

    d_i = k + alpha / size * sum(x_j**2 over the window of i)          y_i = x_i * d_i**-beta

and, with g the gradient of the output (channel i's window holds j exactly when j's reversed window,
``j - (size - 1) // 2`` to ``j + size // 2``, holds i)::

    dx_j = g_j * d_j**-beta - 2 * alpha * beta / size * x_j * sum(g_i * x_i * d_i**(-beta - 1) over i)

Both are computed on ``x / m`` and ``d / m**2``, m the largest magnitude over the channels (at least 1),
so that no square of float64 data overflows.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels
from ._layer_docs import _GRAD_RETURNS, _OUT_AND_RETURNS, _filled
from ._validation import FloatArray, Stats, _deliver, _float64_grads, _float64_input, _real, _rounded

__all__ = ["local_response_norm", "local_response_norm_backward"]

_SHIFTED_SUMS = 16  # windows up to this many channels are summed shift by shift (no cancellation)


def _check_params(size: object, alpha: object, beta: object, k: object) -> Tuple[int, float, float, float]:
    """The arguments of local_response_norm: an integer size >= 1 and finite alpha, beta and k."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"size: expected an integer >= 1, got {size!r}")
    size = operator.index(size)
    if size < 1:
        raise ValueError(f"size: expected an integer >= 1 (the number of channels in a window), got {size}")
    return (size, _real(alpha, "alpha", "a finite number"), _real(beta, "beta", "a finite number"),
            _real(k, "k", "a finite number"))


def _channels(x: Stats) -> Stats:
    """x of shape (N, C, *) seen as (N, C, S); ValueError with fewer than 3 dimensions, as PyTorch."""
    if x.ndim < 3:
        raise ValueError(f"input: expected 3 or more dimensions (N, C, *), got shape {x.shape}")
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _window_sum(a: Stats, before: int, after: int) -> Stats:
    """``s[:, i] = sum(a[:, j] for i - before <= j <= i + after)`` over the channels of a (N, C, S) array,
    zero outside them."""
    C = a.shape[1]
    before, after = min(before, C - 1), min(after, C - 1)  # shifts beyond the channels add only zeros
    if before + after + 1 <= _SHIFTED_SUMS:
        s = np.zeros_like(a)
        for shift in range(-before, after + 1):  # s[:, i] += a[:, i + shift]
            s[:, max(-shift, 0):C - max(shift, 0)] += a[:, max(shift, 0):C + min(shift, 0)]
        return s
    # Long windows: differences of a running sum, one pass whatever the window (float64 keeps the
    # cancellation of the prefix sums far below the result's precision for float32 data).
    prefix = np.zeros((a.shape[0], C + 1, a.shape[2]))
    np.cumsum(a, axis=1, out=prefix[:, 1:])
    i = np.arange(C)
    return prefix[:, np.minimum(i + after + 1, C)] - prefix[:, np.maximum(i - before, 0)]


def _scaled(x: Stats, size: int, alpha: float, k: float) -> Tuple[Stats, Stats, Stats]:
    """``(m, x / m, d / m**2)`` for x of shape (N, C, S): m the power of two just above the largest finite
    magnitude over the channels of each (n, s), so that the squares of float64 data up to 1e308 neither
    overflow nor (with k = 0, where they are all of d) underflow.  With k != 0, m is at least 1: data
    below 1 is computed as written."""
    a = np.abs(x)
    top = np.max(a, axis=1, keepdims=True, initial=0.0 if k == 0.0 else 1.0, where=np.isfinite(a))
    m = np.ldexp(1.0, np.frexp(np.where(top > 0.0, top, 1.0))[1])  # a power of two: x / m is exact
    xs = x / m
    return m, xs, k / m / m + alpha / size * _window_sum(xs * xs, size // 2, (size - 1) // 2)


def _local_response_norm(input: ArrayLike, size: int, alpha: float, beta: float, k: float,
                         out: Optional[FloatArray], commit: Optional[_kernels.Commit] = None) -> FloatArray:
    """local_response_norm with checked parameters; a layer's ``commit`` is applied with the result."""
    x, dtype = _float64_input(input, "input")
    x3 = _channels(x)
    with np.errstate(all="ignore"):  # NaN and inf as IEEE arithmetic (and PyTorch) give them, silently
        m, xs, ds = _scaled(x3, size, alpha, k)
        y = xs * m ** (1.0 - 2.0 * beta) * ds ** -beta  # x * d**-beta
    return _deliver(y.reshape(x.shape), out, dtype, commit)


@_filled(out_and_returns=_OUT_AND_RETURNS)
def local_response_norm(input: ArrayLike, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
                        out: Optional[FloatArray] = None) -> FloatArray:
    r"""Local response normalization across channels, as ``torch.nn.functional.local_response_norm``.

    Parameters
    ----------
    input : array_like, shape (N, C, \*)
        float16, bfloat16, float32 or float64, 3 or more dimensions, channels on axis 1; computed in float64.
    size : int
        The number of channels in a window, >= 1: ``size // 2`` before a channel and ``(size - 1) // 2``
        after it.
    alpha, beta, k : float
        The scale, the exponent and the additive constant (see Notes).
    {out_and_returns}

    Raises
    ------
    TypeError
        ``input`` not floating point, or a masked array; ``size`` not an integer; ``alpha``, ``beta`` or
        ``k`` not a number; ``out`` of another dtype.
    ValueError
        ``input`` with fewer than 3 dimensions; ``size`` < 1; ``alpha``, ``beta`` or ``k`` not finite;
        ``out`` of another shape, or read-only.

    Notes
    -----
    .. math::

        y_c = x_c \Big/ \Big(k + \frac{\alpha}{n} \sum_{c' = c - \lfloor n/2 \rfloor}
              ^{c + \lfloor (n - 1)/2 \rfloor} x_{c'}^2\Big)^{\beta}

    with :math:`n` = ``size`` and :math:`x_{c'} = 0` outside the channels: the zero padding counts in
    the average, as PyTorch's.  ONNX's ``LRN`` is the same formula with the window placed
    :math:`\lfloor (n-1)/2 \rfloor` before and :math:`\lceil (n-1)/2 \rceil` after, which differs from
    PyTorch's for an even ``size`` (:mod:`fastnorm.onnx` handles both).

    References
    ----------
    Krizhevsky, A., Sutskever, I. and Hinton, G. E. (2012). ImageNet classification with deep
    convolutional neural networks. NeurIPS, section 3.3.
    https://pytorch.org/docs/stable/generated/torch.nn.functional.local_response_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.array([[[1.], [2.], [3.]]])              # (N, C, L) = (1, 3, 1)
    >>> fastnorm.local_response_norm(x, 2, alpha=1.0, beta=1.0, k=0.0).ravel()   # x_c / mean(x_{c-1}^2, x_c^2)
    array([2.        , 0.8       , 0.46153846])
    """
    size, alpha, beta, k = _check_params(size, alpha, beta, k)
    return _local_response_norm(input, size, alpha, beta, k, out)


@_filled(grad_returns=_GRAD_RETURNS)
def local_response_norm_backward(grad_output: ArrayLike, input: ArrayLike, size: int, alpha: float = 1e-4,
                                 beta: float = 0.75, k: float = 1.0) -> FloatArray:
    r"""Gradient of :func:`local_response_norm` with respect to its input.

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss with respect to the output: the input's shape, floating point.
    input : array_like, shape (N, C, \*)
        The forward's input (float16, bfloat16, float32 or float64).
    size : int
        The forward's ``size``.
    alpha, beta, k : float
        The forward's ``alpha``, ``beta`` and ``k``.

    {grad_returns}

    Raises
    ------
    TypeError
        ``grad_output`` or ``input`` not floating point; ``size``, ``alpha``, ``beta`` or ``k`` as
        :func:`local_response_norm`.
    ValueError
        ``grad_output`` of another shape; ``input`` with fewer than 3 dimensions; ``size`` < 1.

    Notes
    -----
    With :math:`d_c = k + \frac{\alpha}{n} \sum_{c' \in W(c)} x_{c'}^2` and :math:`g = \partial L /
    \partial y`,

    .. math::

        \frac{\partial L}{\partial x_j} = g_j\, d_j^{-\beta} - \frac{2 \alpha \beta}{n}\, x_j
            \sum_{c:\, j \in W(c)} g_c\, x_c\, d_c^{-\beta - 1}

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.array([[[1.], [2.], [3.]]])
    >>> dx = fastnorm.functional.local_response_norm_backward(np.ones_like(x), x, 3, beta=0.0)
    >>> dx.ravel()                                      # beta = 0: y = x
    array([1., 1., 1.])
    """
    size, alpha, beta, k = _check_params(size, alpha, beta, k)
    g, x, dtype = _float64_grads(grad_output, input)
    g3, x3 = _channels(g), _channels(x)
    with np.errstate(all="ignore"):
        m, xs, ds = _scaled(x3, size, alpha, k)  # m is one value along the channels: it leaves the window
        scale = ds ** -beta
        back = _window_sum(g3 * xs * scale / ds, (size - 1) // 2, size // 2)
        dx = m ** (-2.0 * beta) * (g3 * scale - (2.0 * alpha * beta / size) * xs * back)
    return _rounded(dx.reshape(x.shape), dtype)
