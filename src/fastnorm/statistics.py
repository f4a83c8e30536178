"""Mergeable per-channel statistics: the (count, mean, M2) partials that fastnorm's kernels compute,
merged exactly with Chan's formula, so that statistics can be taken where the data lives (several
processes, machines, chunks of an out-of-core array) and combined afterwards."""
from __future__ import annotations

from typing import Dict, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import functional as F
from ._validation import _array

__all__ = ["Moments"]


class Moments:
    """Per-channel ``count``, ``mean`` and ``m2`` (sum of squared deviations from the mean), float64
    arrays of one shape.

    ``Moments.of(x, axes)`` computes them with fastnorm's kernels (blocked shifted sums in double,
    merged with Chan's formula); ``a.merge(b)`` or ``a + b`` merges two partials exactly (up to
    rounding) and associatively: any split of a data set, merged in any order, gives the statistics of
    the whole.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(1000, 3))
    >>> whole = fastnorm.Moments.of(x, axes=0)
    >>> parts = fastnorm.Moments.of(x[:300], 0) + fastnorm.Moments.of(x[300:], 0)
    >>> bool(np.allclose(parts.mean, whole.mean, rtol=1e-12) and np.allclose(parts.var(), x.var(0)))
    True
    """

    __slots__ = ("count", "mean", "m2")

    def __init__(self, count: ArrayLike, mean: ArrayLike, m2: ArrayLike):
        mean = np.asarray(_array(mean, "mean"), dtype=np.float64)
        self.count = np.broadcast_to(np.asarray(_array(count, "count"), dtype=np.float64), mean.shape).copy()
        self.mean = mean.copy()
        self.m2 = np.broadcast_to(np.asarray(_array(m2, "m2"), dtype=np.float64), mean.shape).copy()
        if np.any(self.count < 0):
            raise ValueError("count: expected counts >= 0")

    @classmethod
    def of(cls, x: ArrayLike, axes: Union[int, Sequence[int]], keepdims: bool = False) -> "Moments":
        """The moments of ``x`` over ``axes`` (kept axes are the channels)."""
        x, _ = F._as_input(x, "x")
        count, mean, var = F.moments64(x, axes, keepdims)
        if count == 0:
            return cls.empty(mean.shape)
        return cls(count, mean, var * count)

    @classmethod
    def empty(cls, shape) -> "Moments":
        """No observation yet (mean NaN, as the mean of nothing): the identity of :meth:`merge`."""
        return cls(np.zeros(shape), np.full(shape, np.nan), np.zeros(shape))

    @property
    def shape(self):
        return self.mean.shape

    def merge(self, other: "Moments") -> "Moments":
        """The moments of both sets of observations (Chan, Golub and LeVeque's formula)."""
        if not isinstance(other, Moments):
            raise TypeError(f"other: expected Moments, got {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"other: expected moments of shape {self.shape}, got {other.shape}")
        na, nb = self.count, other.count
        n = na + nb
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(n > 0, nb / n, 0.0)
        with np.errstate(invalid="ignore"):
            delta = other.mean - self.mean
        mean = np.where(na == 0, other.mean, np.where(nb == 0, self.mean, self.mean + delta * w))
        m2 = np.where(na == 0, other.m2, np.where(nb == 0, self.m2, self.m2 + other.m2 + delta * delta * (na * w)))
        return Moments(n, mean, m2)

    __add__ = merge

    def var(self, unbiased: bool = False) -> NDArray:
        """Variance: ``m2 / count``, or ``m2 / (count - 1)`` with ``unbiased``; NaN where undefined."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > unbiased, self.m2 / (self.count - unbiased), np.nan)

    def to_arrays(self) -> Dict[str, NDArray]:
        """``{"count", "mean", "m2"}``: plain arrays to send, save or all-gather."""
        return {"count": self.count.copy(), "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_arrays(cls, arrays) -> "Moments":
        """Inverse of :meth:`to_arrays` (any mapping with those keys, e.g. an ``np.load`` result)."""
        return cls(arrays["count"], arrays["mean"], arrays["m2"])

    def __eq__(self, other):
        return (isinstance(other, Moments) and np.array_equal(self.count, other.count)
                and np.array_equal(self.mean, other.mean, equal_nan=True)
                and np.array_equal(self.m2, other.m2, equal_nan=True))

    def __repr__(self):
        return f"Moments(shape={self.shape}, count={self.count.max() if self.count.size else 0:g})"
