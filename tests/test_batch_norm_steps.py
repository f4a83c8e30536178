"""The per-step operations of a batch split across processes (batch_norm_stats, batch_norm_gather_stats_with_counts,
batch_norm_elemt, batch_norm_backward_reduce, batch_norm_backward_elemt): composed over the slices of a batch
they give batch_norm and batch_norm_backward of the whole batch; against PyTorch's functions of the same names
where those run (PyTorch implements them for CUDA only: the comparison needs a GPU build and device)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
from fastnorm import functional as F


def _split_steps(x, dy, sizes, weight, bias, eps, momentum, channel_axis, running):
    """SyncBatchNorm's steps over the slices of x along axis 0 (sizes), as every process would run them."""
    bounds = np.cumsum((0,) + tuple(sizes))
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    C = x.shape[channel_axis]
    stats = [F.batch_norm_stats(x[s], eps, channel_axis=channel_axis) for s in slices]
    counts = [x[s].size // C for s in slices]
    mean, invstd = F.batch_norm_gather_stats_with_counts(x, [m for m, _ in stats], [v for _, v in stats], *running,
                                                         momentum, eps, counts)
    y = np.concatenate([F.batch_norm_elemt(x[s], weight, bias, mean, invstd, eps, channel_axis=channel_axis)
                        for s in slices])
    reduced = [F.batch_norm_backward_reduce(dy[s], x[s], mean, invstd, weight, True, True, True,
                                            channel_axis=channel_axis) for s in slices]
    sum_dy, sum_dy_xmu, grad_weight, grad_bias = (sum(r[k] for r in reduced) for k in range(4))
    dx = np.concatenate([F.batch_norm_backward_elemt(dy[s], x[s], mean, invstd, weight, sum_dy, sum_dy_xmu, counts,
                                                     channel_axis=channel_axis) for s in slices])
    return y, dx, grad_weight, grad_bias, mean, invstd


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 5), min_size=1, max_size=4).filter(lambda s: sum(s) >= 2),
       shape=st.sampled_from([(3,), (3, 4), (2, 3, 5)]), channels_last=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_the_steps_over_any_split_equal_batch_norm_of_the_whole_batch(sizes, shape, channels_last, dtype, seed):
    rng = np.random.default_rng(seed)
    axis = -1 if channels_last else 1
    x = (rng.normal(size=(sum(sizes),) + shape) * 2 + 50).astype(dtype)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    C = x.shape[axis]
    dy, weight, bias = rng.normal(size=x.shape).astype(dtype), rng.normal(size=C), rng.normal(size=C)
    running, whole_running = (np.zeros(C), np.ones(C)), (np.zeros(C), np.ones(C))
    y, dx, dw, db, mean, invstd = _split_steps(x, dy, sizes, weight, bias, 1e-5, 0.3, axis, running)
    y_all, mean_all, invstd_all = F.batch_norm(x, *whole_running, weight, bias, True, 0.3, 1e-5, channel_axis=axis,
                                               return_stats=True)
    dx_all, dw_all, db_all = F.batch_norm_backward(dy, x, mean_all, invstd_all, weight, channel_axis=axis)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for ours, theirs in ((y, y_all), (dx, dx_all), (dw, dw_all), (db, db_all), (mean, mean_all),
                         (invstd, invstd_all), (running[0], whole_running[0]), (running[1], whole_running[1])):
        np.testing.assert_allclose(ours, theirs, **tol)
    assert y.dtype == dx.dtype == dtype


@pytest.mark.parametrize("shape, axis", [((64, 8, 600), 1), ((64, 30, 20, 8), -1)], ids=str)
def test_bitwise_identical_for_any_thread_count(shape, axis, uncapped_threads):
    rng = np.random.default_rng(3)
    x, dy = (1e3 + rng.normal(size=shape)).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    weight, bias = rng.normal(size=shape[axis]), rng.normal(size=shape[axis])
    results = []
    for n in (1, 2, 3):
        with fastnorm.threads(n):
            results.append(_split_steps(x, dy, (40, 24), weight, bias, 1e-5, 0.1, axis, (None, None)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_gather_ignores_empty_slices_and_is_nan_for_an_empty_batch():
    a = np.array([[1.0], [2.0], [4.0]])
    stats = F.batch_norm_stats(a, 1e-5)
    garbage = (np.array([123.0]), np.array([np.nan]))
    mean, invstd = F.batch_norm_gather_stats_with_counts(a, [garbage[0], stats[0]], [garbage[1], stats[1]], None,
                                                         None, 0.1, 1e-5, [0, 3])
    np.testing.assert_allclose(mean, stats[0], rtol=1e-15)
    np.testing.assert_allclose(invstd, stats[1], rtol=1e-12)
    rm, rv = np.zeros(1), np.ones(1)
    mean, invstd = F.batch_norm_gather_stats_with_counts(a, [garbage[0]], [garbage[1]], rm, rv, 0.1, 1e-5, [0])
    assert np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(rm, 0.0)  # nothing to update with
    np.testing.assert_array_equal(rv, 1.0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.batch_norm_stats(np.ones(3), 1e-5), ValueError, "input: expected at least 2 dimensions"),
    (lambda: F.batch_norm_stats(np.ones((2, 3)), -1.0), ValueError, "eps: expected a finite number >= 0"),
    (lambda: F.batch_norm_elemt(np.ones((2, 3)), None, None, np.zeros(2), np.ones(3), 1e-5), ValueError,
     r"mean: expected shape \(3,\)"),
    (lambda: F.batch_norm_gather_stats_with_counts(np.ones((2, 3)), np.zeros(3), np.ones(3), None, None, 0.1,
                                                   1e-5, [2]), ValueError, r"mean: expected shape \(processes, C\)"),
    (lambda: F.batch_norm_gather_stats_with_counts(np.ones((2, 3)), np.zeros((1, 3)), np.ones((1, 3)), None, None,
                                                   0.1, 1e-5, [-2]), ValueError, "counts: expected numbers >= 0"),
    (lambda: F.batch_norm_gather_stats_with_counts(np.ones((2, 3)), np.zeros((1, 3)), np.ones((1, 3)), np.zeros(3),
                                                   np.ones(3), 0.1, 1e-5, [1]), ValueError,
     "counts: expected more than 1 value per channel"),
    (lambda: F.batch_norm_gather_stats_with_counts(np.ones((2, 3)), np.zeros((1, 3)), np.ones((1, 3)), [0.0] * 3,
                                                   np.ones(3), 0.1, 1e-5, [2]), TypeError,
     "running_mean: expected a writable ndarray"),
    (lambda: F.batch_norm_backward_reduce(np.ones((2, 4)), np.ones((2, 3)), np.zeros(3), np.ones(3), None, True,
                                          True, True), ValueError, "grad_output: expected shape"),
    (lambda: F.batch_norm_backward_elemt(np.ones((2, 3)), np.ones((2, 3)), np.zeros(3), np.ones(3), None,
                                         np.zeros(3), np.zeros(3), ["a"]), TypeError, "count: expected real numbers"),
    # n = 0 for a batch that holds this slice's values: a division by zero, NaN and inf in the gradient
    (lambda: F.batch_norm_backward_elemt(np.ones((2, 3)), np.ones((2, 3)), np.zeros(3), np.ones(3), None,
                                         np.zeros(3), np.zeros(3), [0, 0]), ValueError, "count: expected a positive"),
])
def test_bad_arguments_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_failing_gather_changes_nothing():
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError):
        F.batch_norm_gather_stats_with_counts(np.ones((2, 3)), np.zeros((1, 3)), np.ones((1, 3)), rm, rv, 2.0, 1e-5,
                                              [4])
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)


def test_elemt_writes_out_and_only_out():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    before = x.copy()
    mean, invstd = F.batch_norm_stats(x, 1e-5)
    out = np.empty_like(x)
    assert F.batch_norm_elemt(x, None, None, mean, invstd, 1e-5, out=out) is out
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(out, F.batch_norm(x, training=True), rtol=1e-5, atol=1e-5)
    assert F.batch_norm_elemt(x, None, None, mean, invstd, 1e-5, out=x) is x  # in place
    np.testing.assert_array_equal(x, out)


# --------------------------------------------------------------------------------------------------------
# Against PyTorch's functions of the same names
# --------------------------------------------------------------------------------------------------------

def _torch_device():
    """A device on which PyTorch runs its batch_norm_stats (CUDA in the builds that have it), else skip."""
    torch = pytest.importorskip("torch")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.batch_norm_stats(torch.ones(2, 1, dtype=torch.float64, device=device), 1e-5)
    except (NotImplementedError, RuntimeError) as error:
        pytest.skip(f"PyTorch's batch_norm_stats does not run on {device} in this build: {str(error)[:80]}")
    return torch, device


@pytest.mark.parametrize("sizes", [(4, 3), (5, 0, 2)], ids=str)
def test_every_step_matches_pytorch(sizes):
    torch, device = _torch_device()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(sum(sizes), 3, 4)) * 2 + 5
    dy, weight, bias = rng.normal(size=x.shape), rng.normal(size=3), rng.normal(size=3)
    t = lambda a: torch.as_tensor(a, device=device)
    bounds = np.cumsum((0,) + sizes)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    counts = [x[s].size // 3 for s in slices]
    ours = [F.batch_norm_stats(x[s], 1e-5) for s in slices]
    theirs = [torch.batch_norm_stats(t(x[s]), 1e-5) for s in slices]
    for (m, v), (tm, tv) in zip(ours, theirs):
        np.testing.assert_allclose(m, tm.cpu().numpy(), rtol=1e-10)
        np.testing.assert_allclose(v, tv.cpu().numpy(), rtol=1e-10)
    rm, rv = np.zeros(3), np.ones(3)
    trm, trv = t(rm.copy()), t(rv.copy())
    mean, invstd = F.batch_norm_gather_stats_with_counts(x, [m for m, _ in ours], [v for _, v in ours], rm, rv, 0.1,
                                                         1e-5, counts)
    tmean, tinvstd = torch.batch_norm_gather_stats_with_counts(
        t(x), torch.stack([m for m, _ in theirs]), torch.stack([v for _, v in theirs]), trm, trv, 0.1, 1e-5,
        t(np.array(counts, np.float64)))
    for a, b in ((mean, tmean), (invstd, tinvstd), (rm, trm), (rv, trv)):
        np.testing.assert_allclose(a, b.cpu().numpy(), rtol=1e-10)
    s = slices[0]
    np.testing.assert_allclose(F.batch_norm_elemt(x[s], weight, bias, mean, invstd, 1e-5),
                               torch.batch_norm_elemt(t(x[s]), t(weight), t(bias), tmean, tinvstd, 1e-5).cpu().numpy(),
                               rtol=1e-10, atol=1e-10)
    reduced = F.batch_norm_backward_reduce(dy[s], x[s], mean, invstd, weight, True, True, True)
    treduced = torch.batch_norm_backward_reduce(t(dy[s]), t(x[s]), tmean, tinvstd, t(weight), True, True, True)
    for a, b in zip(reduced, treduced):
        np.testing.assert_allclose(a, b.cpu().numpy(), rtol=1e-10, atol=1e-10)
    dx = F.batch_norm_backward_elemt(dy[s], x[s], mean, invstd, weight, reduced[0], reduced[1], counts)
    tdx = torch.batch_norm_backward_elemt(t(dy[s]), t(x[s]), tmean, tinvstd, t(weight), treduced[0], treduced[1],
                                          t(np.array(counts, np.int32)))
    np.testing.assert_allclose(dx, tdx.cpu().numpy(), rtol=1e-10, atol=1e-10)
