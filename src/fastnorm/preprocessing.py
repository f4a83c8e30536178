"""scikit-learn's ``StandardScaler`` on fastnorm's kernels and exact :class:`~fastnorm.Moments`.

scikit-learn is optional.  Where it is installed, :class:`StandardScaler` is a scikit-learn estimator
(``BaseEstimator``, ``TransformerMixin``, ``OneToOneFeatureMixin``: ``clone``, pipelines, ``set_output``,
feature names, metadata routing) and its input checks are scikit-learn's; without it, small stand-ins give
the same methods on ndarrays.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import functional as F
from ._layer_docs import _fill, _filled
from ._validation import _is_half
from .statistics import Moments

__all__ = ["StandardScaler"]

Array = NDArray[Any]

_FLOATS = (np.float64, np.float32, np.float16)

try:
    from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
    from sklearn.utils import check_array
    from sklearn.utils.validation import check_is_fitted

    try:
        from sklearn.utils.validation import validate_data  # scikit-learn >= 1.6
        _FINITE = "ensure_all_finite"
    except ImportError:  # 1.3 to 1.5: a method, and the older name of the finiteness option
        def validate_data(estimator: Any, X: Any, **kwargs: Any) -> Any:
            return estimator._validate_data(X, **kwargs)
        _FINITE = "force_all_finite"

    def _check_input(estimator: Any, data: Any, reset: Optional[bool]) -> Array:
        """X as a 2-d float array (NaN allowed, infinities not); ``reset=None``: no feature checks."""
        options = {"dtype": _FLOATS, _FINITE: "allow-nan"}
        if reset is None:
            return np.asarray(check_array(data, **options))
        return np.asarray(validate_data(estimator, data, reset=reset, **options))

except ImportError:  # without scikit-learn: the few parts of it that a StandardScaler uses

    class NotFittedError(ValueError, AttributeError):
        """Raised when a method that needs a fitted estimator is called before ``fit``."""

    class BaseEstimator:  # type: ignore[no-redef]
        """Parameters are the constructor's arguments, stored as attributes of the same name."""

        @classmethod
        def _param_names(cls) -> List[str]:
            return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

        def get_params(self, deep: bool = True) -> Dict[str, Any]:
            return {name: getattr(self, name) for name in self._param_names()}

        def set_params(self, **params: Any) -> Any:
            for name, value in params.items():
                if name not in self._param_names():
                    raise ValueError(f"{name}: not a parameter of {type(self).__name__} "
                                     f"(expected one of {self._param_names()})")
                setattr(self, name, value)
            return self

        def __repr__(self) -> str:
            defaults = inspect.signature(type(self).__init__).parameters
            changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v is not defaults[k].default]
            return f"{type(self).__name__}({', '.join(changed)})"

    class TransformerMixin:  # type: ignore[no-redef]
        def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
            return self.fit(X, y, **fit_params).transform(X)  # type: ignore[attr-defined]

    class OneToOneFeatureMixin:  # type: ignore[no-redef]
        def get_feature_names_out(self, input_features: Any = None) -> Array:
            check_is_fitted(self, "n_features_in_")
            n = self.n_features_in_  # type: ignore[attr-defined]
            names = [f"x{i}" for i in range(n)] if input_features is None else list(input_features)
            if len(names) != n:
                raise ValueError(f"input_features: expected {n} names, got {len(names)}")
            return np.asarray(names, dtype=object)

    def check_is_fitted(estimator: Any, attributes: Any = None) -> None:
        if not hasattr(estimator, attributes or "n_samples_seen_"):
            raise NotFittedError(f"This {type(estimator).__name__} instance is not fitted yet: call 'fit' "
                                 "with appropriate arguments before using this estimator.")

    def _check_input(estimator: Any, data: Any, reset: Optional[bool]) -> Array:
        """X as a 2-d float array (NaN allowed, infinities not); ``reset=None``: no feature checks."""
        X = np.asarray(data)
        if X.ndim != 2:
            raise ValueError(f"X: expected a 2-d array (n_samples, n_features), got shape {X.shape}")
        if X.dtype.kind in "biu":
            X = X.astype(np.float64)
        elif X.dtype not in _FLOATS:
            raise TypeError(f"X: expected real numbers, got dtype {X.dtype}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X: expected at least one sample and one feature, got shape {X.shape}")
        if np.isinf(X).any():
            raise ValueError("X: contains infinity (NaN is allowed: it is left out of the statistics)")
        if reset:
            estimator.n_features_in_ = X.shape[1]
        elif reset is not None and X.shape[1] != estimator.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
                             f"{estimator.n_features_in_} features as input.")
        return X


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _check_sample_weight(sample_weight: Any, n: int) -> Array:
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "biuf" and not _is_half(w.dtype):  # bfloat16's kind is "V"
        raise TypeError(f"sample_weight: expected real numbers, got dtype {w.dtype}")
    w = np.broadcast_to(w.astype(np.float64), (n,)) if w.ndim == 0 else w.astype(np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight: expected shape ({n},) or a scalar, got shape {w.shape}")
    if not np.all(np.isfinite(w) & (w >= 0)):
        raise ValueError("sample_weight: expected finite weights >= 0")
    if not w.any():
        raise ValueError("sample_weight: all weights are zero (no sample to take statistics of)")
    return w


def _masked_moments(X: Array, w: Optional[Array]) -> Moments:
    """Weighted moments of the columns of X leaving NaN out: the path for sample weights and for columns
    that hold NaN, which the kernels' unweighted sums do not skip.  Float64, two passes, corrected (Chan,
    Golub and LeVeque): the sum of the deviations from the first mean refines that mean and corrects the
    sum of their squares.  Sums by ``einsum``, not BLAS, whose threads would change the bits."""
    X = X.astype(np.float64)  # a copy: the NaN are zeroed below
    nan = np.isnan(X)
    X[nan] = 0.0
    w = np.ones(len(X)) if w is None else w
    count = np.einsum("i,ij->j", w, (~nan).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("i,ij->j", w, X) / count
        d = X - mean
        d[nan] = 0.0
        s1 = np.einsum("i,ij->j", w, d)
        m2 = np.einsum("i,ij,ij->j", w, d, d) - s1 * s1 / count
        return Moments(count, mean + s1 / count, np.maximum(m2, 0.0))


def _moments(X: Array, w: Optional[Array]) -> Moments:
    """Moments of the columns of X, NaN left out."""
    if w is not None:
        return _masked_moments(X, w)
    m = Moments.of(X, 0)
    nan = np.isnan(m.mean)  # a column holding a NaN (X has no infinity: the input checks reject them)
    if nan.any():
        arrays, fix = m.to_arrays(), _masked_moments(X[:, nan], None).to_arrays()
        for key, values in arrays.items():
            values[nan] = fix[key]
        m = Moments.from_arrays(arrays)
    return m


def _scale(var: Array, mean: Array, count: Any) -> Array:
    """Standard deviation, 1 for a feature that scikit-learn deems constant: one whose variance is
    within the error bound of the two-pass algorithm (Chan, Golub and LeVeque), as its
    ``_is_constant_feature`` rule, so that both give the same ``scale_``."""
    eps = np.finfo(np.float64).eps
    constant = var <= count * eps * var + (count * mean * eps) ** 2
    return np.where(constant, 1.0, np.sqrt(var))


# What fit and partial_fit say alike after ``X``.
_FIT_REST = """y : None
            Ignored.
        sample_weight : array_like of shape (n_samples,) or scalar, optional
            Weight of each sample (finite, >= 0).

        Returns
        -------
        StandardScaler
            ``self``, fitted."""
# What transform and inverse_transform say alike after ``X``.
_TRANSFORM_REST = """copy : bool, optional
            Accepted for compatibility: the result is always a new array.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            float32 (float16) for float32 (float16) ``X``, float64 otherwise.

        Raises
        ------
        TypeError
            Sparse or non-numeric ``X``.
        ValueError
            ``X`` not 2-d, holding an infinity, or with {features} than ``fit`` saw.
        NotFittedError
            Before ``fit``."""


class StandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Standardize features by removing the mean and scaling to unit variance: scikit-learn's
    ``StandardScaler`` with fastnorm's statistics.

    ``z = (x - mean_) / scale_`` per feature (column), ``mean_`` and ``scale_`` the mean and biased
    standard deviation of the samples seen by ``fit`` / ``partial_fit``.  The statistics are fastnorm's
    :class:`~fastnorm.Moments`: one pass of blocked shifted sums in double (any thread count gives the
    same bits), and each ``partial_fit`` merged with Chan's formula, so that fitting in chunks gives the
    statistics of the whole to rounding.  The transform subtracts the mean in two parts (the mean rounded
    to the data's type, then the rest at the output's scale), so float32 data far from zero keeps its
    precision.  Attributes, defaults and results follow scikit-learn's ``StandardScaler``; the
    differences are listed in the Notes.

    Parameters
    ----------
    copy : bool, default=True
        Accepted for compatibility: results are always new arrays; the input is never written.
    with_mean : bool, default=True
        Center the data before scaling.
    with_std : bool, default=True
        Scale the data to unit variance (unit standard deviation).

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,), float64, or None
        Mean of each feature (None when neither ``with_mean`` nor ``with_std``); NaN for a feature that
        has seen no value.
    var_ : ndarray of shape (n_features,), float64, or None
        Biased variance of each feature (None without ``with_std``).
    scale_ : ndarray of shape (n_features,), float64, or None
        ``sqrt(var_)``, and 1 for a constant feature (None without ``with_std``).
    n_samples_seen_ : int or ndarray of shape (n_features,)
        Samples seen per feature (NaN left out), one int when every feature has seen the same count; the
        sum of the sample weights (float) where weights were given.
    n_features_in_ : int
        Number of features seen by ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Feature names, when ``X`` had string column names (a pandas DataFrame); set by scikit-learn's
        input checks.

    Notes
    -----
    - NaN is left out of the statistics (per feature) and kept by ``transform``, as in scikit-learn.
      Features that hold NaN, and fits with ``sample_weight``, take a float64 two-pass NumPy path (the
      kernels' sums do not skip NaN nor weigh samples); the others take the kernels.
    - Sparse input raises ``TypeError`` (scikit-learn supports it with ``with_mean=False``).
    - float32 (and float16) input gives output of the same type; other real input gives float64.
    - ``copy=False`` does not transform in place: fastnorm never writes to a caller's array.
    - Negative sample weights raise ``ValueError``.

    References
    ----------
    scikit-learn: https://scikit-learn.org/stable/modules/generated/sklearn.preprocessing.StandardScaler.html
    (the definitions of ``mean_``, ``var_``, ``scale_`` and the transform followed here)

    Chan, T. F., Golub, G. H. and LeVeque, R. J. (1983). Algorithms for computing the sample variance:
    analysis and recommendations. The American Statistician 37(3), 242-247 (the merge of ``partial_fit``
    and the constant-feature bound).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnorm.preprocessing import StandardScaler
    >>> X = np.array([[0., 0.], [0., 0.], [1., 1.], [1., 1.]])
    >>> scaler = StandardScaler().fit(X)
    >>> scaler.mean_.tolist(), scaler.scale_.tolist(), int(scaler.n_samples_seen_)
    ([0.5, 0.5], [0.5, 0.5], 4)
    >>> scaler.transform([[2., 2.]]).tolist()
    [[3.0, 3.0]]
    >>> chunked = StandardScaler().partial_fit(X[:1]).partial_fit(X[1:])
    >>> chunked.var_.tolist()
    [0.25, 0.25]
    """

    def __init__(self, *, copy: bool = True, with_mean: bool = True, with_std: bool = True):
        self.with_mean = with_mean
        self.with_std = with_std
        self.copy = copy

    @_filled(weights_and_returns=_FIT_REST)
    def fit(self, X: ArrayLike, y: Any = None, sample_weight: Optional[ArrayLike] = None) -> "StandardScaler":
        """Compute the mean and standard deviation of each feature, forgetting earlier fits.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            Real numbers; NaN is left out of the statistics.
        {weights_and_returns}

        Raises
        ------
        TypeError
            Sparse ``X``, non-numeric ``X`` or ``sample_weight``, or a parameter that is not a bool.
        ValueError
            ``X`` not 2-d, empty or holding an infinity; ``sample_weight`` of the wrong shape or negative.
            A call that raises leaves the scaler as it was.

        Examples
        --------
        >>> import numpy as np
        >>> from fastnorm.preprocessing import StandardScaler
        >>> scaler = StandardScaler().fit(np.array([[1., 10.], [3., 30.]]), sample_weight=[3., 1.])
        >>> scaler.mean_.tolist(), float(scaler.n_samples_seen_)
        ([1.5, 15.0], 4.0)
        """
        return self._fit(X, sample_weight, reset=True)

    @_filled(weights_and_returns=_FIT_REST)
    def partial_fit(self, X: ArrayLike, y: Any = None,
                    sample_weight: Optional[ArrayLike] = None) -> "StandardScaler":
        """Add the samples of ``X`` to the statistics (Chan's merge of the moments seen so far with the
        moments of ``X``): chunks fitted one after the other give the statistics of all of them.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            Real numbers, with the features of the first call; NaN is left out of the statistics.
        {weights_and_returns}

        Raises
        ------
        TypeError
            As :meth:`fit`.
        ValueError
            As :meth:`fit`, and ``X`` with other features than the first call's.  A call that raises
            leaves the scaler as it was.

        Examples
        --------
        >>> import numpy as np
        >>> from fastnorm.preprocessing import StandardScaler
        >>> X = np.random.default_rng(0).normal(1e4, 1.0, size=(1000, 3))
        >>> scaler = StandardScaler()
        >>> for chunk in np.array_split(X, 7):
        ...     scaler = scaler.partial_fit(chunk)
        >>> bool(np.allclose(scaler.var_, X.var(axis=0), rtol=1e-12)), int(scaler.n_samples_seen_)
        (True, 1000)
        """
        return self._fit(X, sample_weight, reset=not hasattr(self, "n_samples_seen_"))

    def _fit(self, X: Any, sample_weight: Any, reset: bool) -> "StandardScaler":
        saved = dict(self.__dict__)
        try:
            return self._update(X, sample_weight, reset)
        except BaseException:  # a call that fails changes nothing
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _update(self, X: Any, sample_weight: Any, reset: bool) -> "StandardScaler":
        with_mean = _check_flag(self.with_mean, "with_mean")
        with_std = _check_flag(self.with_std, "with_std")
        _check_flag(self.copy, "copy")
        X = _check_input(self, X, reset=reset)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X.shape[0])
        moments = _moments(X, w)
        if not reset:
            moments = self._moments_seen(X.shape[1]) + moments
        count = moments.count
        integral = w is None and np.array_equal(count, np.round(count))
        count = count.astype(np.int64) if integral else count
        self.n_samples_seen_ = count[0] if count.min() == count.max() else count
        var = moments.var()
        self.mean_ = moments.mean if with_mean or with_std else None
        self.var_ = var if with_std else None
        self.scale_ = _scale(var, moments.mean, self.n_samples_seen_) if with_std else None
        return self

    def _moments_seen(self, n_features: int) -> Moments:
        """The state of the fitted attributes as Moments (their float64 values: what was set is used)."""
        count = np.broadcast_to(np.asarray(self.n_samples_seen_, dtype=np.float64), (n_features,))
        mean = 0.0 if self.mean_ is None else self.mean_
        m2 = 0.0 if self.var_ is None else self.var_ * count
        return Moments(count, np.broadcast_to(mean, (n_features,)), m2)

    @_filled(copy_and_after=_fill(_TRANSFORM_REST, features="other features"))
    def transform(self, X: ArrayLike, copy: Optional[bool] = None) -> Array:
        """Standardize: ``(X - mean_) / scale_`` (without ``with_mean``, no centering; without
        ``with_std``, no scaling).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            Real numbers; NaN stays NaN.
        {copy_and_after}

        Examples
        --------
        >>> import numpy as np
        >>> from fastnorm.preprocessing import StandardScaler
        >>> X = np.array([[1., 10.], [3., 30.]], dtype=np.float32)
        >>> Z = StandardScaler(with_std=False).fit(X).transform(X)
        >>> Z.dtype, Z.tolist()
        (dtype('float32'), [[-1.0, -10.0], [1.0, 10.0]])
        """
        check_is_fitted(self)
        X = _check_input(self, X, reset=False)
        mean, scale = self._affine(X.shape[1])
        return F.batch_normalization(X, mean, 1.0, None, None if scale is None else 1.0 / scale, 0.0)

    @_filled(copy_and_after=_fill(_TRANSFORM_REST, features="another number of features"))
    def inverse_transform(self, X: ArrayLike, copy: Optional[bool] = None) -> Array:
        """Undo :meth:`transform`: ``X * scale_ + mean_``.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            Standardized values (feature names are not checked: this is a transform's output).
        {copy_and_after}

        Examples
        --------
        >>> import numpy as np
        >>> from fastnorm.preprocessing import StandardScaler
        >>> X = np.array([[1., 10.], [3., 30.]])
        >>> scaler = StandardScaler().fit(X)
        >>> scaler.inverse_transform(scaler.transform(X)).tolist()
        [[1.0, 10.0], [3.0, 30.0]]
        """
        check_is_fitted(self)
        X = _check_input(self, X, reset=None)  # no feature names: the input is a transform's output
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: expected {self.n_features_in_} features, got {X.shape[1]}")
        mean, scale = self._affine(X.shape[1])
        return F.batch_normalization(X, 0.0, 1.0, mean, scale, 0.0)

    def _affine(self, n_features: int) -> Tuple[Array, Optional[Array]]:
        """(mean to subtract, scale to divide by or None)."""
        mean = self.mean_ if self.with_mean and self.mean_ is not None else np.zeros(n_features)
        return mean, (self.scale_ if self.with_std else None)

    def _more_tags(self) -> Dict[str, Any]:  # scikit-learn < 1.6
        return {"allow_nan": True, "preserves_dtype": [np.float64, np.float32]}

    def __sklearn_tags__(self) -> Any:  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
