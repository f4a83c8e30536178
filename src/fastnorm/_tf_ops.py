"""``moments`` and ``batch_normalization``: TensorFlow's names, on the same kernels."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels, _masked
from ._plan import _moments_view, _varying_axis
from ._threads import threads_for
from ._validation import FloatArray, Shape, Stats, _as_input, _broadcast_params, _check_eps, _normalize_axes

__all__ = ["moments", "batch_normalization"]


# ---------------------------------------------------------------------------------------------------------
# moments and batch_normalization (TensorFlow's names)
# ---------------------------------------------------------------------------------------------------------

def moments(x: ArrayLike, axes: Shape, keepdims: bool = False, *,
            mask: Optional[ArrayLike] = None) -> Tuple[FloatArray, FloatArray]:
    r"""Mean and biased variance of ``x`` over ``axes``, as ``tf.nn.moments``.

    Parameters
    ----------
    x : array_like
        float16, bfloat16, float32 or float64.
    axes : int or sequence of int
        Axes to reduce (negative ones count from the end); the others are kept.
    keepdims : bool
        Keep the reduced axes with length 1.
    mask : array_like of bool, keyword-only, optional
        Broadcastable to ``x``: the statistics of the values where it is True only (NaN where there is
        none), as ``numpy.mean(x, axes, where=mask)``.  A ``numpy.ma`` input means
        ``mask=~numpy.ma.getmaskarray(x)`` (and'ed with ``mask``).

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
    >>> padded = np.array([[1., 2.], [3., 5.], [0., 0.]])  # the last row is padding
    >>> m, v = fastnorm.moments(padded, axes=0, mask=np.array([[True], [True], [False]]))
    >>> m.tolist(), v.tolist()
    ([2.0, 3.5], [1.0, 2.25])
    """
    if _masked.is_masked(x, mask):
        return _masked.moments(x, axes, keepdims, mask)
    x, dtype = _as_input(x, "x")
    _, mean, var = moments64(x, axes, keepdims)
    return mean.astype(dtype), var.astype(dtype)


def moments64(x: FloatArray, axes: Shape, keepdims: bool = False) -> Tuple[int, Stats, Stats]:
    """(count, mean, biased variance) of a float array over ``axes``: the count an int, the statistics
    float64 arrays of the kept shape (NaN where the count is 0)."""
    axes = _normalize_axes(axes, x.ndim)
    kept_shape = tuple(n for a, n in enumerate(x.shape) if a not in axes)
    out_shape = tuple(1 if a in axes else n for a, n in enumerate(x.shape)) if keepdims else kept_shape
    count = math.prod(x.shape[a] for a in axes)
    if count == 0 or math.prod(kept_shape) == 0:
        fill = np.nan if count == 0 else 0.0
        return count, np.full(out_shape, fill), np.full(out_shape, fill)
    if not axes:
        return count, x.astype(np.float64).reshape(out_shape), np.zeros(out_shape)
    buf, N, C, S = _moments_view(x, axes)
    mean, var = _kernels.moments(buf, N, C, S, threads_for(x.size))
    return count, mean.reshape(out_shape), var.reshape(out_shape)


def batch_normalization(x: ArrayLike, mean: ArrayLike, variance: ArrayLike, offset: Optional[ArrayLike],
                        scale: Optional[ArrayLike], variance_epsilon: float, name: Optional[str] = None) -> FloatArray:
    r"""``(x - mean) / sqrt(variance + variance_epsilon) * scale + offset``, as ``tf.nn.batch_normalization``.

    Parameters
    ----------
    x : array_like
        float16, bfloat16, float32 or float64.
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
    params, shape = _broadcast_params(x, mean=mean, variance=variance, offset=offset, scale=scale)
    fused, axis = _varying_axis(x, params) if shape == x.shape else (False, None)
    if fused:  # the per-channel kernel, [N, C, S] around the one axis the parameters vary along
        C = 1 if axis is None else x.shape[axis]
        vec = {k: np.ascontiguousarray(np.broadcast_to(a.reshape(-1), (C,))) for k, a in params.items()}
        buf = np.ascontiguousarray(x)
        N, S = (1, x.size) if axis is None else (math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:]))
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
