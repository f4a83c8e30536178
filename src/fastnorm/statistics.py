"""Mergeable per-channel statistics: the (count, mean, M2) partials that fastnorm's kernels compute,
merged exactly with Chan's formula, so that statistics can be taken where the data lives (several
processes, machines, chunks of an out-of-core array) and combined afterwards."""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, SupportsIndex, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._tf_ops import moments64
from ._validation import _as_input, _reals

__all__ = ["Moments"]


class Moments:
    r"""Per-channel ``count``, ``mean`` and ``m2`` (sum of squared deviations from the mean), float64
    arrays of one shape.  They are held as the biased variance ``m2 / count``, which stays finite for
    float64 data up to 1e308 where ``m2`` may not.

    ``Moments.of(x, axes)`` computes them with fastnorm's kernels (blocked shifted sums in double,
    merged with Chan's formula); ``a.merge(b)`` or ``a + b`` merges two partials exactly (up to
    rounding) and associatively: any split of a data set, merged in any order, gives the statistics of
    the whole.

    Parameters
    ----------
    count : array_like
        Number of observations per channel (>= 0; a float, so that weighted counts fit); broadcast to the
        shape of ``mean``.
    mean : array_like
        Mean per channel (NaN where the count is 0); its shape is the shape of the moments.
    m2 : array_like
        Sum of squared deviations from the mean per channel, ``count * variance``; broadcast to the shape
        of ``mean``.

    Attributes
    ----------
    count, mean, m2 : ndarray of float64
        Copies of the arguments, of one shape (:attr:`shape`).

    Raises
    ------
    TypeError
        An argument that is a masked array or not numeric.
    ValueError
        A negative count, or ``count`` or ``m2`` that does not broadcast to the shape of ``mean``.

    Notes
    -----
    Two partials :math:`(n_a, \bar x_a, M_{2,a})` and :math:`(n_b, \bar x_b, M_{2,b})` merge as

    .. math::

        n = n_a + n_b, \quad \delta = \bar x_b - \bar x_a, \quad
        \bar x = \bar x_a + \delta \frac{n_b}{n}, \quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}

    (Chan, Golub and LeVeque), which keeps full accuracy for data far from zero, where
    :math:`E[x^2] - E[x]^2` loses every digit.  The variance is :math:`M_2 / n`, or
    :math:`M_2 / (n - 1)` unbiased.  It is computed divided by :math:`n`, as
    :math:`v = w_a v_a + w_b v_b + (\delta w_a)(\delta w_b)` with :math:`w_a = n_a / n`: no step
    overflows unless the variance does.

    References
    ----------
    Chan, T. F., Golub, G. H. and LeVeque, R. J. (1983). Algorithms for computing the sample variance:
    analysis and recommendations. The American Statistician 37(3), 242-247.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(1000, 3))
    >>> whole = fastnorm.Moments.of(x, axes=0)
    >>> parts = fastnorm.Moments.of(x[:300], 0) + fastnorm.Moments.of(x[300:], 0)
    >>> bool(np.allclose(parts.mean, whole.mean, rtol=1e-12) and np.allclose(parts.var(), x.var(0)))
    True
    >>> fastnorm.Moments([2.0], [1.5], [0.5]).var(unbiased=True).tolist()
    [0.5]
    """

    __slots__ = ("count", "mean", "_var")

    count: NDArray[np.float64]
    mean: NDArray[np.float64]
    _var: NDArray[np.float64]

    def __init__(self, count: ArrayLike, mean: ArrayLike, m2: ArrayLike) -> None:
        mean_ = _reals(mean, "mean")
        count_ = np.broadcast_to(_reals(count, "count"), mean_.shape)
        m2_ = np.broadcast_to(_reals(m2, "m2"), mean_.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._init(count_, mean_, np.where(count_ > 0, m2_ / count_, 0.0))

    def _init(self, count: ArrayLike, mean: ArrayLike, var: ArrayLike) -> None:
        self.count = np.array(count, dtype=np.float64)
        self.mean = np.array(mean, dtype=np.float64)
        self._var = np.array(var, dtype=np.float64)
        if np.any(self.count < 0):
            raise ValueError("count: expected counts >= 0")

    @classmethod
    def _of_variance(cls, count: ArrayLike, mean: ArrayLike, var: ArrayLike) -> Moments:
        # Held as the biased variance, not m2 = count * var: m2 overflows first (float64 data beyond
        # about 1e154: the two values +-1e154 have variance 1e308 and m2 2e308).
        moments = cls.__new__(cls)
        moments._init(count, mean, var)
        return moments

    @classmethod
    def of(cls, x: ArrayLike, axes: Union[SupportsIndex, Sequence[SupportsIndex]],
           keepdims: bool = False) -> Moments:
        """The moments of ``x`` over ``axes``; the kept axes are the channels.

        Parameters
        ----------
        x : array_like
            float16, bfloat16, float32 or float64 values.
        axes : int or sequence of int
            The axes to reduce (the observations); the others index the channels.
        keepdims : bool
            Keep the reduced axes with length 1 in the shape of the moments.

        Returns
        -------
        Moments
            Of the kept shape: the count of values reduced, their mean and ``m2``, from one pass of
            blocked shifted sums in double precision (see :func:`fastnorm.moments`).

        Raises
        ------
        TypeError
            ``x`` not floating point, or ``axes`` not integers.
        ValueError
            An axis out of range or repeated.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> m = fastnorm.Moments.of(np.array([[1., 2.], [3., 6.]]), axes=0)
        >>> m.count.tolist(), m.mean.tolist(), m.m2.tolist()
        ([2.0, 2.0], [2.0, 4.0], [2.0, 8.0])
        """
        a, _ = _as_input(x, "x")
        count, mean, var = moments64(a, axes, keepdims)
        if count == 0:
            return cls.empty(mean.shape)
        return cls._of_variance(np.broadcast_to(float(count), mean.shape), mean, var)

    @classmethod
    def empty(cls, shape: Union[SupportsIndex, Sequence[SupportsIndex]]) -> Moments:
        """No observation yet: count 0, mean NaN (the mean of nothing), m2 0; the identity of :meth:`merge`.

        Parameters
        ----------
        shape : int or tuple of int
            The shape of the moments (the channels).

        Returns
        -------
        Moments

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> m = fastnorm.Moments.of(np.array([[1., 2.], [3., 6.]]), axes=0)
        >>> fastnorm.Moments.empty(2) + m == m
        True
        """
        return cls(np.zeros(shape), np.full(shape, np.nan), np.zeros(shape))

    @property
    def shape(self) -> Tuple[int, ...]:
        """The shape of the moments (of ``count``, ``mean`` and ``m2``)."""
        return self.mean.shape

    @property
    def m2(self) -> NDArray[np.float64]:
        """The sums of squared deviations from the mean, ``count * var()`` (inf beyond the doubles)."""
        with np.errstate(over="ignore"):
            return self.count * self._var

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of observations (Chan, Golub and LeVeque's formula, see the Notes of
        :class:`Moments`, in terms of variances and with the squared difference of the means taken as
        ``(delta * wa) * (delta * wb)``, so that nothing overflows unless the variance does); ``a + b``
        is ``a.merge(b)``.

        Parameters
        ----------
        other : Moments
            Of the same shape.

        Returns
        -------
        Moments
            A new object; neither operand changes.

        Raises
        ------
        TypeError
            ``other`` is not a Moments.
        ValueError
            ``other`` has another shape.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> a = fastnorm.Moments.of(np.array([1., 2.]), 0)
        >>> b = fastnorm.Moments.of(np.array([3., 6.]), 0)
        >>> m = a.merge(b)
        >>> float(m.count), float(m.mean), float(m.var())
        (4.0, 3.0, 3.5)
        """
        if not isinstance(other, Moments):
            raise TypeError(f"other: expected Moments, got {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"other: expected moments of shape {self.shape}, got {other.shape}")
        na, nb = self.count, other.count
        n = na + nb
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            wa = np.where(n > 0, na / n, 0.0)
            wb = np.where(n > 0, nb / n, 0.0)
            delta = other.mean - self.mean
            var = self._var * wa + other._var * wb + (delta * wa) * (delta * wb)
            # as the kernels' fastnorm_chan_merge: exactly self.mean for equal means; weighted where delta overflows
            mean = np.where(np.isfinite(delta), self.mean + delta * wb, self.mean * wa + other.mean * wb)
        mean = np.where(na == 0, other.mean, np.where(nb == 0, self.mean, mean))
        var = np.where(na == 0, other._var, np.where(nb == 0, self._var, var))
        return Moments._of_variance(n, mean, var)

    __add__ = merge

    def var(self, unbiased: bool = False) -> NDArray[np.float64]:
        """Variance per channel: ``m2 / count``, or ``m2 / (count - 1)`` with ``unbiased``.

        Parameters
        ----------
        unbiased : bool
            Divide by ``count - 1`` (Bessel's correction) instead of ``count``.

        Returns
        -------
        ndarray of float64
            Of :attr:`shape`; NaN where the count is 0 (1 or less with ``unbiased``).

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> m = fastnorm.Moments.of(np.array([1., 2., 3., 6.]), 0)
        >>> float(m.var()), float(m.var(unbiased=True))
        (3.5, 4.666666666666667)
        """
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if not unbiased:
                return np.where(self.count > 0, self._var, np.nan)
            m2 = self.m2  # m2 / (count - 1), as the definition; the variance scaled where m2 overflows
            var = np.where(np.isfinite(m2), m2 / (self.count - 1), self._var * (self.count / (self.count - 1)))
            return np.where(self.count > 1, var, np.nan)

    def to_arrays(self) -> Dict[str, NDArray[np.float64]]:
        """The moments as plain arrays to send, save or all-gather.

        Returns
        -------
        dict of str to ndarray
            ``{"count": ..., "mean": ..., "var": ...}``, float64 copies, var the biased variance (m2
            itself may overflow where the variance does not).

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> m = fastnorm.Moments.of(np.array([1., 2., 3., 6.]), 0)
        >>> fastnorm.Moments.from_arrays(m.to_arrays()) == m
        True
        """
        return {"count": self.count.copy(), "mean": self.mean.copy(), "var": self._var.copy()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, ArrayLike]) -> Moments:
        """Inverse of :meth:`to_arrays`.

        Parameters
        ----------
        arrays : mapping
            Any mapping with the keys ``"count"``, ``"mean"`` and ``"var"`` (a dict, an ``np.load``
            result); ``"m2"`` in place of ``"var"``, as earlier versions wrote.

        Returns
        -------
        Moments

        Raises
        ------
        KeyError
            A key is missing.
        TypeError
            A value that is not real numbers.
        """
        if "var" not in arrays:
            return cls(arrays["count"], arrays["mean"], arrays["m2"])
        mean = _reals(arrays["mean"], "mean")
        count, var = (np.broadcast_to(_reals(arrays[key], key), mean.shape)
                      for key in ("count", "var"))
        return cls._of_variance(count, mean, var)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Moments) and np.array_equal(self.count, other.count)
                and np.array_equal(self.mean, other.mean, equal_nan=True)
                and np.array_equal(self._var, other._var, equal_nan=True))

    def __repr__(self) -> str:
        return f"Moments(shape={self.shape}, count={self.count.max() if self.count.size else 0:g})"
