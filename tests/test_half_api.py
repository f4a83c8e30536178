"""float16 and bfloat16 through the rest of the public API (test_half.py holds the ops' core promise): the
calls that normalize first and apply ``activation=`` and ``add=`` after, SyncBatchNorm, the per-step
functions' and batch_normalization's statistics and parameters, and the other entry points.  Each half
call equals the float32 call on the same values rounded once to the half dtype, or is refused by a
TypeError or ValueError naming the argument."""
import numpy as np
import pytest

import fastnorm
from fastnorm import functional as F
from test_half import HALVES, _data, _same


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("act", [None, "relu"])
def test_sync_batch_norm_takes_half_input(half, act):
    """A training forward reads the half input natively (its output array is of the input's dtype)."""
    MPI = pytest.importorskip("mpi4py.MPI")
    x, dy = _data(half, (4, 6, 5))
    ours = fastnorm.SyncBatchNorm(6, comm=MPI.COMM_SELF, activation=act)
    theirs = fastnorm.SyncBatchNorm(6, comm=MPI.COMM_SELF, activation=act)
    _same(ours(x), theirs(x.astype(np.float32)), half)
    _same(ours.backward(dy), theirs.backward(dy.astype(np.float32)), half)
    _same((ours.running_mean, ours.running_var, ours.grad_weight), (theirs.running_mean, theirs.running_var,
                                                                    theirs.grad_weight), half)
    out = np.empty_like(x)
    assert ours(x, out=out) is out


@pytest.mark.parametrize("half", HALVES)
def test_half_statistics_and_counts_are_taken_as_real_numbers(half):
    """Statistics, parameters and counts of the half dtypes (bfloat16's NumPy kind is "V", not "f") are read
    as the float32 ones of the same values by batch_normalization and the per-step functions."""
    x = _data(half, (4, 6, 5))[0]
    mean, var, offset, scale = (np.linspace(lo, hi, 6).astype(half).reshape(6, 1) for lo, hi in
                                ((-1, 1), (0.5, 2), (0, 1), (1, 3)))
    _same(F.batch_normalization(x, mean, var, offset, scale, 1e-3),
          F.batch_normalization(x.astype(np.float32), *(a.astype(np.float32) for a in (mean, var, offset, scale)),
                                1e-3), half)
    means, invstds = (np.stack([a.ravel(), a.ravel()[::-1]]) for a in (mean, var))
    counts = np.array([20, 30]).astype(half)
    _same(F.batch_norm_gather_stats_with_counts(x, means, invstds, None, None, 0.1, 1e-5, counts),
          F.batch_norm_gather_stats_with_counts(x, means.astype(np.float32), invstds.astype(np.float32), None, None,
                                                0.1, 1e-5, counts.astype(np.float32)), half)
    dy = _data(half, x.shape, seed=2)[0]
    m, invstd = F.batch_norm_stats(x, 1e-5)
    sum_dy, sum_dy_xmu, _, _ = F.batch_norm_backward_reduce(dy, x, m, invstd, None, True, False, False)
    _same(F.batch_norm_backward_elemt(dy, x, m, invstd, None, sum_dy, sum_dy_xmu, np.array([20]).astype(half)),
          F.batch_norm_backward_elemt(dy, x, m, invstd, None, sum_dy, sum_dy_xmu, np.array([20.0])), half)
    with pytest.raises(TypeError, match="count: expected real numbers"):
        F.batch_norm_backward_elemt(dy, x, m, invstd, None, sum_dy, sum_dy_xmu, np.array(["20"]))


@pytest.mark.parametrize("half", HALVES)
def test_standard_scaler_takes_half_sample_weight(half):
    X = np.random.default_rng(0).normal(size=(20, 3))
    w = np.arange(20).astype(half)
    ours = fastnorm.preprocessing.StandardScaler().fit(X, sample_weight=w)
    theirs = fastnorm.preprocessing.StandardScaler().fit(X, sample_weight=w.astype(np.float64))
    np.testing.assert_array_equal(ours.mean_, theirs.mean_)
    np.testing.assert_array_equal(ours.var_, theirs.var_)


# The calls that normalize first, then apply activation= and add= (masked inputs, several channel axes, axes=):
# function of (x, add, act, out) with x (5, 6, 7), add of x's shape (the residual of the residual case).
_MASK = np.random.default_rng(7).random((5, 6, 7)) > 0.3
_NORMALIZE_FIRST = {
    "batch_norm mask": lambda x, a, act, out: F.batch_norm(x, None, None, None, None, True, mask=_MASK, add=a,
                                                           activation=act, out=out),
    "batch_norm several axes": lambda x, a, act, out: F.batch_norm(x, None, None, None, None, True,
                                                                   channel_axis=(1, 2), add=a, activation=act,
                                                                   out=out),
    "group_norm mask": lambda x, a, act, out: F.group_norm(x, 3, mask=_MASK, add=a, activation=act, out=out),
    "instance_norm mask": lambda x, a, act, out: F.instance_norm(x, mask=_MASK, add=a, activation=act, out=out),
    "layer_norm mask": lambda x, a, act, out: F.layer_norm(x, 7, mask=_MASK, activation=act, out=out),
    "rms_norm axes": lambda x, a, act, out: F.rms_norm(x, None, axes=(0, 2), activation=act, out=out),
    "layer_norm residual mask": lambda x, a, act, out: F.layer_norm(x, 7, mask=_MASK, residual=a, activation=act,
                                                                    out=out)[0],
}


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("act", [None, "gelu"])
@pytest.mark.parametrize("name", sorted(_NORMALIZE_FIRST))
def test_normalize_first_paths_round_once_after_the_activation_and_add(half, act, name):
    """The normalization, activation and add in float32 on the half values (add taken in the input's dtype,
    a float32 add rounded to it first), rounded once: the float32 call's result rounded, also into out=."""
    call = _NORMALIZE_FIRST[name]
    x = _data(half, (5, 6, 7))[0]
    add = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)  # not all of half's values
    if name == "layer_norm residual mask":  # h = x + residual in the half dtype, then normalized
        theirs = F.layer_norm((x + add.astype(half)).astype(np.float32), 7, mask=_MASK, activation=act)
    else:
        theirs = call(x.astype(np.float32), add.astype(half).astype(np.float32), act, None)
    _same(call(x, add.astype(half), act, None), theirs, half)
    if name != "layer_norm residual mask":
        _same(call(x, add, act, None), theirs, half)
    out = np.full_like(x, 7)
    assert call(x, add.astype(half), act, out) is out
    _same(out, theirs, half)
    with pytest.raises(TypeError, match="out: expected dtype"):
        call(x, add.astype(half), act, np.empty(x.shape, np.float32))


@pytest.mark.parametrize("half", HALVES)
def test_fold_batch_norm_takes_a_half_bias_and_names_a_bad_one(half):
    bn = fastnorm.BatchNorm2d(6).eval()
    bn.running_mean[:], bn.running_var[:] = np.linspace(-1, 1, 6), np.linspace(0.5, 2, 6)
    w, b = _data(half, (6, 3, 2, 2))[0], _data(half, (6,), seed=4)[0]
    ours = fastnorm.fold_batch_norm(w, b, bn)
    theirs = fastnorm.fold_batch_norm(w, b.astype(np.float64), bn)
    assert ours[1].dtype == half
    np.testing.assert_array_equal(ours[0].view(np.uint16), theirs[0].view(np.uint16))
    np.testing.assert_array_equal(ours[1].view(np.uint16), theirs[1].view(np.uint16))
    with pytest.raises(TypeError, match="bias: expected real numbers"):
        fastnorm.fold_batch_norm(w, np.array(["1"] * 6), bn)


@pytest.mark.parametrize("half", HALVES)
def test_statistics_are_real_numbers_or_refused_by_name(half):
    """Moments and the backwards' statistics take the half dtypes as their values; strings and complex
    numbers are refused naming the argument (not NumPy's conversion error, nor an imaginary part dropped)."""
    mean = np.array([0.5, -1.0]).astype(half)
    assert fastnorm.Moments(np.array([2, 3]), mean, np.ones(2, half)) == fastnorm.Moments([2, 3], [0.5, -1.0],
                                                                                       [1.0, 1.0])
    assert fastnorm.Moments.from_arrays({"count": [2, 3], "mean": mean, "var": np.ones(2, half)}) == \
        fastnorm.Moments.from_arrays({"count": [2, 3], "mean": [0.5, -1.0], "var": [1.0, 1.0]})
    for bad in (np.array(["0.5", "1"]), np.array([0.5 + 1j, 1])):
        with pytest.raises(TypeError, match="mean: expected real numbers"):
            fastnorm.Moments([2, 3], bad, [1.0, 1.0])
        with pytest.raises(TypeError, match="mean: expected real numbers"):
            fastnorm.Moments.from_arrays({"count": [2, 3], "mean": bad, "var": [1.0, 1.0]})
    x, dy = _data(half, (4, 2, 3))
    _, m, rstd = F.batch_norm(x, training=True, return_stats=True)
    for act in (None, "relu"):
        _same(F.batch_norm_backward(dy, x, m.astype(half), rstd.astype(half), activation=act),
              F.batch_norm_backward(dy, x, m.astype(half).astype(np.float64), rstd.astype(half).astype(np.float64),
                                    activation=act), half)
        with pytest.raises(TypeError, match="mean: expected real numbers"):
            F.batch_norm_backward(dy, x, m.astype(complex), rstd, activation=act)


@pytest.mark.parametrize("half", HALVES)
def test_half_scalars_are_numbers(half):
    """A float16 or bfloat16 scalar (``ml_dtypes.finfo(bfloat16).eps``, ``x.max()`` of a half array) is
    taken as its value wherever a number is (bfloat16's is no ``numbers.Real``); a bool is not one."""
    x = _data(half, (4, 6, 5))[0]
    eps, momentum = half.type(1e-3), half.type(0.5)
    rm, rv, rm2, rv2 = np.zeros(6), np.ones(6), np.zeros(6), np.ones(6)
    _same(F.batch_norm(x, rm, rv, training=True, eps=eps, momentum=momentum),
          F.batch_norm(x, rm2, rv2, training=True, eps=float(eps), momentum=float(momentum)), half)
    np.testing.assert_array_equal(rv, rv2)
    _same(F.rms_norm(x, 5, eps=eps), F.rms_norm(x, 5, eps=float(eps)), half)
    for p in (3.0, np.inf):
        _same(F.normalize(x, p=half.type(p), eps=eps), F.normalize(x, p=p, eps=float(eps)), half)
    _same(F.local_response_norm(x, 3, alpha=eps, beta=momentum, k=half.type(2)),
          F.local_response_norm(x, 3, alpha=float(eps), beta=float(momentum), k=2.0), half)
    _same(fastnorm.LayerNorm(5, eps=eps)(x), fastnorm.LayerNorm(5, eps=float(eps))(x), half)
    with pytest.raises(TypeError, match="eps: expected a real number, got bool"):
        F.layer_norm(x, 5, eps=True)


@pytest.mark.parametrize("half", HALVES)
def test_masked_paths_equal_the_float32_call_rounded(half):
    """The masked forms compute in float64: a half result is that rounded to float32, then to the half
    type, as the float32 call's (a direct rounding to float16 differs on rare ties: 1 value in ~16000)."""
    rng = np.random.default_rng(0)
    x, dy = _data(half, (64, 8, 256))
    mask = rng.random(x.shape) > 0.2
    _same(F.layer_norm(x, 256, mask=mask, return_stats=True),
          F.layer_norm(x.astype(np.float32), 256, mask=mask, return_stats=True), half)
    _same(F.batch_norm(x, None, None, None, None, True, mask=mask, return_stats=True),
          F.batch_norm(x.astype(np.float32), None, None, None, None, True, mask=mask, return_stats=True), half)
    _, mean, rstd = F.layer_norm(x.astype(np.float32), 256, mask=mask, return_stats=True)
    _same(F.layer_norm_backward(dy, x, 256, mean, rstd, mask=mask),
          F.layer_norm_backward(dy.astype(np.float32), x.astype(np.float32), 256, mean, rstd, mask=mask), half)
