"""fastnorm.preprocessing.StandardScaler: scikit-learn's estimator checks, equality with scikit-learn's
StandardScaler, chunked fits, accuracy against exact arithmetic, NaN, dtypes, errors, and the class
without scikit-learn installed."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnorm
from conftest import fresh_python
from fastnorm.preprocessing import StandardScaler

try:
    import sklearn.preprocessing as skp
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.estimator_checks import parametrize_with_checks
except ImportError:  # the tests that compare with scikit-learn skip; the class works without it
    skp = None

requires_sklearn = pytest.mark.skipif(skp is None, reason="scikit-learn is not installed")
FLAGS = [{}, {"with_mean": False}, {"with_std": False}, {"with_mean": False, "with_std": False}]
ATTRIBUTES = ("mean_", "var_", "scale_", "n_samples_seen_")


def _fitted_state(scaler):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(scaler).items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=True) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


# --------------------------------------------------------------------------------------------------------
# scikit-learn's own checks, and equality with its StandardScaler
# --------------------------------------------------------------------------------------------------------

if skp is not None:
    @parametrize_with_checks([StandardScaler(), StandardScaler(with_mean=False), StandardScaler(with_std=False)])
    def test_sklearn_estimator_checks(estimator, check):
        check(estimator)
else:
    def test_sklearn_estimator_checks():
        pytest.skip("scikit-learn is not installed")


def _data(seed, n, c, dtype, nan_fraction):
    rng = np.random.default_rng(seed)
    X = rng.normal(rng.uniform(-10, 10, c), rng.uniform(0.1, 10, c), size=(n, c))
    X[:, 0] = 3.0  # a constant feature
    X[rng.random(X.shape) < nan_fraction] = np.nan
    return X.astype(dtype), rng.uniform(0, 2, n).astype(np.float32)  # scikit-learn rounds weights to X's dtype


@requires_sklearn
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), c=st.integers(1, 6),
       dtype=st.sampled_from([np.float32, np.float64]), nan_fraction=st.sampled_from([0.0, 0.2]),
       flags=st.sampled_from(FLAGS), weighted=st.booleans())
def test_matches_sklearn(seed, n, c, dtype, nan_fraction, flags, weighted):
    X, w = _data(seed, n, c, dtype, nan_fraction)
    w = w if weighted else None
    ours, theirs = StandardScaler(**flags).fit(X, sample_weight=w), skp.StandardScaler(**flags).fit(X, sample_weight=w)
    # scikit-learn counts samples, not weights, when it neither centers nor scales (its documentation
    # says weights): fastnorm sums the weights there too
    for name in ATTRIBUTES[:3] if weighted and flags == FLAGS[3] else ATTRIBUTES:
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True), name
    y = ours.transform(X)
    assert y.dtype == theirs.transform(X).dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-10
    # scikit-learn's float32 transform subtracts the mean in float32 (2.6e-5 off for two values 0.04 apart
    # near -10): its transform of the same values in float64 is the reference
    assert np.allclose(y, theirs.transform(X.astype(np.float64)), rtol=tol, atol=tol, equal_nan=True)
    back = ours.inverse_transform(y)
    assert np.allclose(back, theirs.inverse_transform(y), rtol=tol, atol=tol * 10, equal_nan=True)
    assert np.allclose(back, X, rtol=tol, atol=tol * 10, equal_nan=True)


# --------------------------------------------------------------------------------------------------------
# Chunks and accuracy
# --------------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 2999), max_size=6, unique=True),
       dtype=st.sampled_from([np.float32, np.float64]), nan=st.booleans(), weighted=st.booleans())
def test_partial_fit_in_chunks_equals_fit(seed, cuts, dtype, nan, weighted):
    rng = np.random.default_rng(seed)
    X = (1e4 + rng.uniform(-1, 1, size=(3000, 5))).astype(dtype)
    if nan:
        X[rng.random(X.shape) < 0.05] = np.nan
    w = rng.uniform(0, 2, len(X)) if weighted else None
    whole = StandardScaler().fit(X, sample_weight=w)
    chunked = StandardScaler()
    for rows in np.split(np.arange(len(X)), sorted(cuts)):
        chunked.partial_fit(X[rows], sample_weight=None if w is None else w[rows])
    assert np.array_equal(whole.n_samples_seen_, chunked.n_samples_seen_) if not weighted else \
        np.allclose(whole.n_samples_seen_, chunked.n_samples_seen_, rtol=1e-13)
    assert np.allclose(chunked.mean_, whole.mean_, rtol=1e-15, atol=0)  # within a few ulps of 1e4
    assert np.allclose(chunked.var_, whole.var_, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["kernels", "nan", "weighted"])
def test_accuracy_at_1e4_against_exact_arithmetic(rng, dtype, path, isa_level):
    # Data at 1e4 +- 1: the statistics' relative condition is (1e4)**2; each path (the kernels, the NaN
    # columns' and the weighted NumPy pass) must still give the mean to a few ulps and the variance to
    # 1e-12, and the float32 output to about one float32 ulp of the exact standardized value.
    X = (1e4 + rng.uniform(-1, 1, size=(4000, 3))).astype(dtype)
    clean = X
    if path == "nan":
        X = np.vstack([X, np.full((50, 3), np.nan, dtype)])
    scaler = StandardScaler().fit(X, sample_weight=np.ones(len(X)) if path == "weighted" else None)
    mean, var, exact = exact_standard_scaler(clean)
    assert np.all(np.abs(scaler.mean_ - mean) <= 4 * np.spacing(1e4))
    assert np.allclose(scaler.var_, var, rtol=1e-12, atol=0)
    y = scaler.transform(clean)
    assert np.max(np.abs(y - exact)) <= (3e-7 if dtype == np.float32 else 2e-11)


def test_bitwise_identical_for_any_thread_count(rng):
    X = (1e3 + rng.normal(size=(5000, 40))).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        with fastnorm.threads(n):
            scaler = StandardScaler().fit(X)
            results.append((scaler.mean_, scaler.var_, scaler.transform(X), scaler.inverse_transform(X)))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


# --------------------------------------------------------------------------------------------------------
# Semantics: NaN, constant features, dtypes, sparse input
# --------------------------------------------------------------------------------------------------------

def test_nan_is_left_out_of_fit_and_kept_by_transform(rng):
    X = rng.normal(5, 2, size=(200, 3))
    X[::7, 0] = np.nan
    X[:, 2] = np.nan
    scaler = StandardScaler().fit(X)
    kept = X[~np.isnan(X[:, 0]), 0]
    assert np.allclose(scaler.mean_[0], kept.mean(), rtol=1e-14) and np.allclose(scaler.var_[0], kept.var(), rtol=1e-12)
    assert np.allclose(scaler.mean_[1], X[:, 1].mean(), rtol=1e-14)
    assert scaler.n_samples_seen_.tolist() == [len(kept), 200, 0] and scaler.n_samples_seen_.dtype == np.int64
    assert np.isnan(scaler.mean_[2]) and np.isnan(scaler.var_[2])
    y = scaler.transform(X)
    assert np.array_equal(np.isnan(y), np.isnan(X))
    scaler.partial_fit(X[:10, :])  # NaN stays out of merged statistics too
    assert scaler.n_samples_seen_.tolist() == [len(kept) + 8, 210, 0]


def test_constant_features_get_scale_one(rng):
    X = np.column_stack([np.full(100, 1e4), np.zeros(100), rng.normal(size=100)]).astype(np.float32)
    scaler = StandardScaler().fit(X)
    assert scaler.var_[:2].tolist() == [0.0, 0.0] and scaler.scale_[:2].tolist() == [1.0, 1.0]
    assert np.array_equal(scaler.transform(X)[:, :2], np.zeros((100, 2), np.float32))


@pytest.mark.parametrize("dtype, result", [(np.float32, np.float32), (np.float64, np.float64),
                                           (np.float16, np.float16), (np.int64, np.float64),
                                           (np.int8, np.float64)])
def test_result_dtype(rng, dtype, result):
    X = (rng.normal(size=(50, 4)) * 10).astype(dtype)
    scaler = StandardScaler().fit(X)
    assert scaler.transform(X).dtype == result and scaler.inverse_transform(X).dtype == result
    assert all(getattr(scaler, a).dtype == np.float64 for a in ("mean_", "var_", "scale_"))
    assert np.allclose(scaler.transform(X), (X - X.astype(np.float64).mean(0)) / X.astype(np.float64).std(0),
                       atol=5e-3 if dtype == np.float16 else 1e-5)


@requires_sklearn
@pytest.mark.parametrize("with_mean", [True, False])
def test_sparse_input_is_rejected(with_mean):
    from scipy import sparse

    scaler = StandardScaler(with_mean=with_mean)
    X = sparse.random(20, 3, density=0.5, format="csr", random_state=0)
    with pytest.raises(TypeError, match="dense data is required"):
        scaler.fit(X)
    with pytest.raises(TypeError, match="dense data is required"):
        scaler.fit(X.toarray()).transform(X)
    try:
        from sklearn.utils import get_tags  # scikit-learn >= 1.6
    except ImportError:
        tags = scaler._get_tags()
        assert tags["X_types"] == ["2darray"] and tags["allow_nan"]
        assert tags["preserves_dtype"] == [np.float64, np.float32]
        return
    tags = get_tags(scaler)
    assert not tags.input_tags.sparse and tags.input_tags.allow_nan
    assert tags.transformer_tags.preserves_dtype == ["float64", "float32"]


@requires_sklearn
def test_feature_names_and_pandas_output():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1.0, 2.0, 4.0], "b": [3.0, 3.5, 5.0]})
    scaler = StandardScaler().fit(df)
    assert scaler.feature_names_in_.tolist() == ["a", "b"] and scaler.n_features_in_ == 2
    assert scaler.get_feature_names_out().tolist() == ["a", "b"]
    out = scaler.set_output(transform="pandas").transform(df)
    assert list(out.columns) == ["a", "b"] and np.allclose(out.to_numpy(), (df - df.mean()) / df.std(ddof=0))
    with pytest.warns(UserWarning, match="feature names"):
        StandardScaler().fit(df).transform(df.to_numpy())
    assert np.allclose(scaler.inverse_transform(out.to_numpy()), df.to_numpy())  # no warning on ndarrays


def test_lazy_attribute_of_the_package():
    assert fastnorm.preprocessing.StandardScaler is StandardScaler and "preprocessing" in fastnorm.__all__


# --------------------------------------------------------------------------------------------------------
# Errors: clear, and a failing call changes nothing; the caller's array is never written
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, match", [
    (lambda s, X: s.set_params(with_mean=1).fit(X), TypeError, "with_mean: expected a bool"),
    (lambda s, X: s.set_params(with_std="yes").fit(X), TypeError, "with_std: expected a bool"),
    (lambda s, X: s.set_params(copy=None).fit(X), TypeError, "copy: expected a bool"),
    (lambda s, X: s.fit(X, sample_weight=np.ones(3)), ValueError, r"sample_weight: expected shape \(10,\)"),
    (lambda s, X: s.fit(X, sample_weight=np.ones((10, 1))), ValueError, "sample_weight: expected shape"),
    (lambda s, X: s.fit(X, sample_weight=-np.ones(10)), ValueError, "sample_weight: expected finite weights"),
    (lambda s, X: s.fit(X, sample_weight=np.full(10, np.nan)), ValueError, "sample_weight: expected finite"),
    (lambda s, X: s.fit(X, sample_weight=np.zeros(10)), ValueError, "sample_weight: all weights are zero"),
    (lambda s, X: s.fit(X, sample_weight=["a"] * 10), TypeError, "sample_weight: expected real numbers"),
    (lambda s, X: s.fit(np.where(X > 0, np.inf, X)), ValueError, "[Ii]nf"),
    (lambda s, X: s.partial_fit(X[:, :2]), ValueError, "X has 2 features, but StandardScaler is expecting 3"),
    (lambda s, X: s.fit(X[:, 0]), ValueError, "2D array|2-d array"),
])
def test_errors_name_the_argument_and_change_nothing(rng, call, error, match):
    X = rng.normal(size=(10, 3))
    scaler = StandardScaler().fit(X + 1.0)
    before = _fitted_state(scaler)
    with pytest.raises(error, match=match):
        call(scaler, X)
    scaler.set_params(with_mean=True, with_std=True, copy=True)
    assert _same_state(_fitted_state(scaler), before)


def test_transform_errors(rng):
    X = rng.normal(size=(10, 3))
    scaler = StandardScaler()
    for method in (scaler.transform, scaler.inverse_transform):
        with pytest.raises((ValueError, AttributeError), match="not fitted"):
            method(X)
    scaler.fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but StandardScaler is expecting 3"):
        scaler.transform(X[:, :2])
    with pytest.raises(ValueError, match="X: expected 3 features, got 2"):
        scaler.inverse_transform(X[:, :2])
    if skp is not None:
        with pytest.raises(NotFittedError):
            StandardScaler().transform(X)


@pytest.mark.parametrize("copy", [True, False])
def test_nothing_written_to_the_input(rng, copy):
    X = rng.normal(3, 2, size=(100, 4))
    X[0, 0] = np.nan
    original = X.copy()
    scaler = StandardScaler(copy=copy).fit(X, sample_weight=np.ones(100))
    y = scaler.partial_fit(X).transform(X, copy=copy)
    scaler.inverse_transform(y, copy=copy)
    assert np.array_equal(X, original, equal_nan=True)


# --------------------------------------------------------------------------------------------------------
# Without scikit-learn
# --------------------------------------------------------------------------------------------------------

_STANDALONE = r"""
import json, sys
sys.modules["sklearn"] = None  # as if scikit-learn were not installed: importing it raises ImportError
import numpy as np
from fastnorm.preprocessing import StandardScaler
X = np.array(json.loads(sys.argv[1]))
out = {"errors": []}
s = StandardScaler()
for call in (lambda: s.transform(X), lambda: s.fit(X[:, 0]), lambda: s.fit(np.where(X > 0, np.inf, X)),
             lambda: s.fit(X.astype(str)), lambda: StandardScaler().fit(X).transform(X[:, :1]),
             lambda: s.set_params(mean=1)):
    try:
        call()
    except (TypeError, ValueError) as e:
        out["errors"].append(f"{type(e).__name__}: {e}")
y = s.fit_transform(X)
chunked = StandardScaler(with_mean=False).partial_fit(X[:3]).partial_fit(X[3:])
out.update(y=y.tolist(), inverse=s.inverse_transform(y).tolist(), mean=s.mean_.tolist(), n=s.n_samples_seen_.tolist(),
           chunked_var=chunked.var_.tolist(), params=chunked.get_params(), repr=repr(chunked),
           names=s.get_feature_names_out().tolist())
print(json.dumps(out))
"""


def test_works_without_sklearn(rng):
    X = rng.normal(2, 3, size=(8, 3))
    X[1, 1] = np.nan
    got = json.loads(fresh_python(_STANDALONE, json.dumps(X.tolist())))
    scaler = StandardScaler().fit(X)
    assert np.array_equal(np.array(got["y"], float), scaler.transform(X), equal_nan=True)
    assert np.array_equal(got["mean"], scaler.mean_) and got["n"] == [8, 7, 8]
    assert np.allclose(np.array(got["inverse"], float), X, equal_nan=True)
    assert np.allclose(got["chunked_var"], scaler.var_, rtol=1e-13, equal_nan=True)
    assert got["params"] == {"copy": True, "with_mean": False, "with_std": True}
    assert got["repr"] == "StandardScaler(with_mean=False)" and got["names"] == ["x0", "x1", "x2"]
    assert [e.split(":")[0] for e in got["errors"]] == ["NotFittedError"] + ["ValueError"] * 2 + ["TypeError"] + \
        ["ValueError"] * 2
    for error, words in zip(got["errors"], ["not fitted", "X: expected a 2-d array", "X: contains infinity",
                                            "X: expected real numbers", "X has 1 features, but StandardScaler "
                                            "is expecting 3 features", "mean: not a parameter"]):
        assert words in error


def test_import_fastnorm_does_not_import_sklearn():
    assert fresh_python("import sys, fastnorm; print('sklearn' in sys.modules)").strip() == "False"


def exact_standard_scaler(x):
    """Per-column mean and biased variance of a 2-d array in exact rational arithmetic, each rounded once
    to float64, and the standardized data ``(x - mean) / sqrt(var)`` computed from the exact mean (in two
    parts: ``x - hi`` is exact, ``lo`` the rest) to within a few float64 ulps."""
    from fractions import Fraction

    x = np.asarray(x, np.float64)
    mean, lo, var = [], [], []
    for col in x.T:
        values = [Fraction(v) for v in col.tolist()]  # exact: a float is a fraction with a power-of-2 denominator
        m = sum(values) / len(values)
        mean.append(float(m))
        lo.append(float(m - Fraction(mean[-1])))
        var.append(float(sum((v - m) ** 2 for v in values) / len(values)))
    mean, lo, var = np.array(mean), np.array(lo), np.array(var)
    return mean, var, ((x - mean) - lo) / np.sqrt(var)
