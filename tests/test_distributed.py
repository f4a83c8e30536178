"""Moments, SyncBatchNorm (over an in-process communicator), precise BN, Dask."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import collective_scenarios
import fastnorm
import reference
from conftest import assert_sync_matches_whole

# --------------------------------------------------------------------------------------------------------
# Moments
# --------------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1),
       order_seed=st.integers(0, 1000))
def test_any_split_merged_in_any_order_equals_the_whole(sizes, seed, order_seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(sizes) + 2, 3)) * rng.uniform(0.1, 10) + rng.uniform(-100, 100)
    bounds = np.cumsum([0] + sizes + [2])
    parts = [fastnorm.Moments.of(x[a:b], axes=0) for a, b in zip(bounds[:-1], bounds[1:])]
    order = np.random.default_rng(order_seed).permutation(len(parts))
    total = fastnorm.Moments.empty(3)
    for k in order:
        total = total + parts[k]
    np.testing.assert_array_equal(total.count, x.shape[0])
    np.testing.assert_allclose(total.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total.var(), x.var(axis=0), rtol=1e-12)
    np.testing.assert_allclose(total.var(unbiased=True), x.var(axis=0, ddof=1), rtol=1e-12)


def test_merge_is_associative(rng):
    a, b, c = (fastnorm.Moments.of(rng.normal(size=(n, 4)) + 5, 0) for n in (7, 30, 2))
    left, right = (a + b) + c, a + (b + c)
    np.testing.assert_allclose(left.mean, right.mean, rtol=1e-14)
    np.testing.assert_allclose(left.m2, right.m2, rtol=1e-13)


def test_float32_offset_data_keeps_the_accuracy_bar(rng):
    x = (1e4 + rng.normal(size=(4096, 8))).astype(np.float32)
    total = fastnorm.Moments.empty(8)
    for part in np.array_split(x, 7):
        total = total + fastnorm.Moments.of(part, 0)
    x64 = x.astype(np.float64)
    assert np.all(np.abs(total.mean - x64.mean(0)) <= np.spacing(np.float32(1e4)))
    np.testing.assert_allclose(total.var(), x64.var(0), rtol=1e-6)


def test_moments_serialize_and_validate(rng, tmp_path):
    m = fastnorm.Moments.of(rng.normal(size=(10, 2, 3)), axes=(0, 2))
    np.savez(tmp_path / "m.npz", **m.to_arrays())
    with np.load(tmp_path / "m.npz") as data:
        assert fastnorm.Moments.from_arrays(data) == m
    with pytest.raises(ValueError, match="other: expected moments of shape"):
        m + fastnorm.Moments.empty(5)
    with pytest.raises(TypeError, match="other: expected Moments"):
        m.merge(3)
    assert np.isnan(fastnorm.Moments.empty(2).var()).all()
    assert np.isnan(fastnorm.Moments.of(np.ones((1, 2)), 0).var(unbiased=True)).all()


# --------------------------------------------------------------------------------------------------------
# SyncBatchNorm, over a communicator between threads (the MPI tests run the same under mpiexec)
# --------------------------------------------------------------------------------------------------------

class ThreadComm:
    """mpi4py's buffer Allgather between threads of one process, one handle per rank.  A rank left waiting
    for the others fails after ``timeout`` seconds (BrokenBarrierError) instead of hanging."""

    def __init__(self, shared, rank):
        self.shared, self.rank = shared, rank

    @classmethod
    def world(cls, size, timeout=20):
        shared = {"slots": [None] * size, "barrier": threading.Barrier(size, timeout=timeout), "calls": 0}
        return [cls(shared, rank) for rank in range(size)]

    def Get_size(self):
        return len(self.shared["slots"])

    def Allgather(self, sendbuf, recvbuf):
        self.shared["slots"][self.rank] = np.array(sendbuf, copy=True)
        self.shared["barrier"].wait()
        recvbuf[...] = np.stack(self.shared["slots"]).reshape(recvbuf.shape)
        if self.rank == 0:
            self.shared["calls"] += 1
        self.shared["barrier"].wait()


def _outcomes(comms, work):
    """``work(rank, comm)`` on one thread per rank: each rank's result, or the exception it raised."""
    outcomes = [None] * len(comms)

    def target(rank):
        try:
            outcomes[rank] = work(rank, comms[rank])
        except BaseException as exc:  # compared by the caller
            outcomes[rank] = exc

    pool = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(len(comms))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return outcomes


def _run_ranks(comms, work):
    outcomes = _outcomes(comms, work)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


@pytest.mark.parametrize("sizes", [(4, 4), (5, 2, 1), (6, 0, 3), (0, 7), (1, 0, 1), (0, 0, 0)], ids=str)
@pytest.mark.parametrize("shape, channel_axis", [((3, 5, 4), 1), ((3, 4, 4, 5), -1), ((3, 5), 1)], ids=str)
def test_sync_batch_norm_equals_batch_norm_on_the_whole_batch(rng, sizes, shape, channel_axis):
    C = shape[channel_axis]
    total = sum(sizes)
    x = rng.normal(size=(total,) + shape[1:]) * 2 + 3
    g = rng.normal(size=x.shape)
    weight, bias = rng.normal(size=C), rng.normal(size=C)
    single = fastnorm.BatchNorm1d if len(shape) < 4 else fastnorm.BatchNorm2d
    whole = single(C, dtype=np.float64, channel_axis=channel_axis)
    whole.weight[:], whole.bias[:] = weight, bias
    expected_steps = []
    for step in range(2):
        y = whole(x + step)
        expected_steps.append((y, whole.backward(g)))
    bounds = np.cumsum((0,) + sizes)

    def work(rank, comm):
        layer = fastnorm.SyncBatchNorm(C, dtype=np.float64, channel_axis=channel_axis, comm=comm)
        layer.weight[:], layer.bias[:] = weight, bias
        mine = slice(bounds[rank], bounds[rank + 1])
        outputs = []
        for step in range(2):
            y = layer(x[mine] + step)
            outputs.append((y, layer.backward(g[mine])))
        return layer, outputs

    results = _run_ranks(ThreadComm.world(len(sizes)), work)
    for rank, (layer, outputs) in enumerate(results):
        mine = slice(bounds[rank], bounds[rank + 1])
        for (y, dx), (y_all, dx_all) in zip(outputs, expected_steps):
            np.testing.assert_allclose(y, y_all[mine], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dx, dx_all[mine], rtol=1e-12, atol=1e-12)
        assert_sync_matches_whole(layer, whole)
        assert layer.num_batches_tracked == whole.num_batches_tracked == (2 if total else 0)
    for layer, _ in results[1:]:  # identical on every rank, to the bit
        np.testing.assert_array_equal(layer.running_mean, results[0][0].running_mean)
        np.testing.assert_array_equal(layer.running_var, results[0][0].running_var)


@pytest.mark.parametrize("track_running_stats", [True, False])
def test_sync_batch_norm_eval_needs_no_communication(rng, track_running_stats):
    class NoComm:
        def Allgather(self, sendbuf, recvbuf):
            raise AssertionError("eval mode communicated")

    layer = fastnorm.SyncBatchNorm(3, track_running_stats=track_running_stats, comm=NoComm()).eval()
    plain = fastnorm.BatchNorm1d(3, track_running_stats=track_running_stats).eval()
    x, g = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(x), plain(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.backward(g), plain.backward(g), rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="no forward"):
        fastnorm.SyncBatchNorm(3, comm=NoComm()).eval().backward(g)


def test_a_training_step_is_one_exchange_of_buffers(rng):
    """One buffer Allgather for the forward and one for the backward (the fake has no pickling allgather)."""
    comms = ThreadComm.world(2)

    def work(rank, comm):
        layer = fastnorm.SyncBatchNorm(3, comm=comm)
        layer.backward(np.ones_like(layer(rng.normal(size=(4, 3)).astype(np.float32))))

    _run_ranks(comms, work)
    assert comms[0].shared["calls"] == 2


@settings(max_examples=40, deadline=None)
@given(data=st.data(), size=st.integers(1, 4))
def test_an_exchange_raises_the_first_failure_on_every_process(data, size):
    """The exchange under every collective call: any set of failing processes, any error type and message
    (long, non-ASCII, empty): each failing process raises its own error, the others the first one's."""
    from fastnorm.distributed import _allgather

    message = st.text(max_size=12) | st.text(min_size=1, max_size=3).map(lambda t: t * 2000)
    errors = data.draw(st.lists(st.none() | st.builds(lambda cls, m: cls(m), st.sampled_from(
        [ValueError, TypeError, MemoryError, OSError, KeyError]), message), min_size=size, max_size=size))

    def work(rank, comm):
        def local():
            if errors[rank] is not None:
                raise errors[rank]
            return np.full(2, rank), rank

        return _allgather(comm, 2, local)

    outcomes = _outcomes(ThreadComm.world(size), work)
    failed = [rank for rank, error in enumerate(errors) if error is not None]
    for rank, outcome in enumerate(outcomes):
        if not failed:
            rows, context = outcome
            np.testing.assert_array_equal(rows, np.repeat(np.arange(size), 2).reshape(size, 2))
            assert context == rank
        elif errors[rank] is not None:
            assert outcome is errors[rank]
        else:
            first = errors[failed[0]]
            rebuilt = type(first) in (ValueError, TypeError, MemoryError)
            assert type(outcome) is (type(first) if rebuilt else RuntimeError)
            text = str(first) if rebuilt else f"{type(first).__name__}: {first}"
            assert str(outcome).endswith(f" (raised on process {failed[0]})")
            if len(str(first)) < 1000:
                assert str(outcome) == f"{text} (raised on process {failed[0]})"
            else:  # cut to _MESSAGE_BYTES, a split character replaced
                assert text.startswith(str(outcome)[:900])


def test_error_messages_sent_to_the_others_are_bounded():
    def work(rank, comm):
        layer = fastnorm.SyncBatchNorm(3, comm=comm)
        if rank == 0:
            with pytest.raises(ValueError, match="^" + "x" * 10000 + "$"):
                layer(collective_scenarios._Unreadable(ValueError("x" * 10000)))
        else:
            with pytest.raises(ValueError, match=r"^x{4084} \(raised on process 0\)$"):
                layer(np.ones((2, 3), np.float32))

    _run_ranks(ThreadComm.world(2), work)


def test_convert(rng):
    model = {"bn": fastnorm.BatchNorm2d(4, momentum=0.3), "ln": fastnorm.LayerNorm(4)}
    model["bn"](rng.normal(size=(2, 4, 3, 3)).astype(np.float32))
    model["bn"].eval()
    converted = fastnorm.SyncBatchNorm.convert(model, comm=ThreadComm.world(1)[0])
    assert converted["ln"] is model["ln"]
    sync = converted["bn"]
    assert isinstance(sync, fastnorm.SyncBatchNorm) and not sync.training and sync.momentum == 0.3
    np.testing.assert_array_equal(sync.running_var, model["bn"].running_var)
    assert sync.num_batches_tracked == 1


def test_convert_keeps_the_activation_and_sizes_lazy_layers_or_refuses_them(rng):
    comm = ThreadComm.world(1)[0]
    bn = fastnorm.BatchNorm2d(4, activation="gelu", channel_axis=-1, bessel=False)
    sync = fastnorm.SyncBatchNorm.convert(bn, comm=comm)
    assert (sync.activation, sync.channel_axis, sync.bessel) == ("gelu", -1, False)
    lazy = fastnorm.LazyBatchNorm2d(activation="relu", momentum=0.3)
    with pytest.raises(ValueError, match="layers: a LazyBatchNorm2d whose num_features is not known yet"):
        fastnorm.SyncBatchNorm.convert({"bn": lazy}, comm=comm)  # not left local in a synced model
    sized = fastnorm.BatchNorm2d(4)
    sized(rng.normal(size=(2, 4, 3, 3)).astype(np.float32))
    lazy.load_state_dict(sized.state_dict())
    sync = fastnorm.SyncBatchNorm.convert({"bn": lazy}, comm=comm)["bn"]
    assert type(sync) is fastnorm.SyncBatchNorm
    assert (sync.num_features, sync.activation, sync.momentum) == (4, "relu", 0.3)
    np.testing.assert_array_equal(sync.running_mean, sized.running_mean)
    x = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(sync.eval()(x), lazy.eval()(x))


def test_convert_refuses_a_container_that_contains_itself():
    comm = ThreadComm.world(1)[0]
    looped = [fastnorm.BatchNorm1d(3)]
    looped.append(looped)
    with pytest.raises(ValueError, match="layers: a list that contains itself"):
        fastnorm.SyncBatchNorm.convert(looped, comm=comm)
    model = {"bn": fastnorm.BatchNorm1d(3), "blocks": [{}]}
    model["blocks"][0]["up"] = model
    with pytest.raises(ValueError, match="layers: a dict that contains itself"):
        fastnorm.SyncBatchNorm.convert(model, comm=comm)
    shared = [fastnorm.BatchNorm1d(3)]  # the same list twice is a tree's leaves, not a loop
    twins = fastnorm.SyncBatchNorm.convert((shared, shared), comm=comm)
    assert isinstance(twins, tuple) and all(type(t[0]) is fastnorm.SyncBatchNorm for t in twins)


# --------------------------------------------------------------------------------------------------------
# Exact population statistics
# --------------------------------------------------------------------------------------------------------

def test_calibrate_sets_exact_population_statistics(rng):
    batches = [rng.normal(size=(n, 3, 4)) * 2 + 1 for n in (5, 9, 2)]
    layer = fastnorm.BatchNorm1d(3, dtype=np.float64)
    assert layer.calibrate(iter(batches)) is layer
    everything = np.concatenate(batches)
    np.testing.assert_allclose(layer.running_mean, everything.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, everything.var(axis=(0, 2), ddof=1), rtol=1e-12)
    assert layer.num_batches_tracked == 3
    with pytest.raises(ValueError, match="batches: expected at least one batch"):
        layer.calibrate([])
    with pytest.raises(ValueError, match="input: expected 3 channels"):
        layer.calibrate([np.ones((2, 4, 4))])


def test_calibrate_batch_norms_of_a_model(rng):
    first = fastnorm.BatchNorm1d(4, dtype=np.float64)
    second = fastnorm.BatchNorm1d(4, dtype=np.float64).eval()
    w = rng.normal(size=(4, 4))

    def forward(x):
        return second(np.maximum(first(x), 0) @ w)

    batches = [rng.normal(size=(16, 4)) * 3 + 2 for _ in range(5)]
    fastnorm.calibrate_batch_norms([first, second], forward, batches)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(first.running_mean, everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(first.running_var, everything.var(0, ddof=1), rtol=1e-12)
    # The second layer saw the first one's training-mode outputs, batch by batch.
    seen = np.concatenate([np.maximum(reference.batch_norm(b, training=True) * first.weight + first.bias, 0) @ w
                           for b in batches])
    np.testing.assert_allclose(second.running_mean, seen.mean(0), rtol=1e-9, atol=1e-12)
    assert first.training and not second.training and first.num_batches_tracked == 5
    with pytest.raises(ValueError, match=r"layers\[1\]: received no input"):
        fastnorm.calibrate_batch_norms([first, fastnorm.BatchNorm1d(4)], first, batches)


# --------------------------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------------------------

da = pytest.importorskip("dask.array")
import fastnorm.dask as fdask  # noqa: E402


@pytest.mark.parametrize("axes", [0, (0, 2), 1, (0, 1, 2), 2])
@pytest.mark.parametrize("keepdims", [False, True])
def test_dask_moments_equal_numpy_float64(rng, axes, keepdims):
    x = (rng.normal(size=(700, 6, 5)) * 3 + 1e4).astype(np.float32)
    mean, var = fdask.moments(da.from_array(x, chunks=(97, 4, 5)), axes, keepdims)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean.compute(), x64.mean(axis=axes, keepdims=keepdims), rtol=1e-12)
    np.testing.assert_allclose(var.compute(), x64.var(axis=axes, keepdims=keepdims), rtol=1e-9)


def test_dask_apply_eval_layers(rng):
    x = rng.normal(size=(40, 6, 5, 5)).astype(np.float32)
    d = da.from_array(x, chunks=(7, 2, 5, 3))
    bn = fastnorm.BatchNorm2d(6)
    bn.calibrate([x])
    bn.eval()
    for layer in (bn, fastnorm.LayerNorm((5, 5)), fastnorm.GroupNorm(3, 6), fastnorm.InstanceNorm2d(6)):
        with fastnorm.no_grad():
            np.testing.assert_allclose(fdask.apply(layer, d).compute(), layer(x), atol=1e-6)
    with pytest.raises(ValueError, match="eval-mode BatchNorm"):
        fdask.apply(fastnorm.BatchNorm2d(6), d)


def test_calibration_of_sync_batch_norm_merges_every_process(rng):
    batches = [[rng.normal(size=(n, 3)) * 2 + 1 for n in sizes] for sizes in ((4, 0, 7), (5, 3, 2))]

    def work(rank, comm):
        through_model = fastnorm.SyncBatchNorm(3, dtype=np.float64, comm=comm)
        fastnorm.calibrate_batch_norms([through_model], through_model, batches[rank])
        direct = fastnorm.SyncBatchNorm(3, dtype=np.float64, comm=comm).calibrate(batches[rank])
        return through_model, direct

    everything = np.concatenate(batches[0] + batches[1])
    for through_model, direct in _run_ranks(ThreadComm.world(2), work):
        for layer in (through_model, direct):
            np.testing.assert_allclose(layer.running_mean, everything.mean(0), rtol=1e-12)
            np.testing.assert_allclose(layer.running_var, everything.var(0, ddof=1), rtol=1e-12)
            assert layer.num_batches_tracked == 3


def test_empty_moments_have_a_nan_mean():
    assert np.isnan(fastnorm.Moments.empty(3).mean).all()
    assert np.isnan(fastnorm.Moments.of(np.zeros((0, 3)), 0).mean).all()
    merged = fastnorm.Moments.empty(3) + fastnorm.Moments.of(np.ones((2, 3)), 0)
    np.testing.assert_array_equal(merged.mean, 1.0)


def test_dask_guards(rng):
    x = da.from_array(rng.normal(size=(6, 4, 5, 5)).astype(np.float32), chunks=(2, 2, 3, 3))
    with pytest.raises(ValueError, match="running statistics"):
        fdask.apply(fastnorm.BatchNorm2d(4, track_running_stats=False).eval(), x)
    with pytest.raises(ValueError, match="layer: expected eval mode"):
        fdask.apply(fastnorm.InstanceNorm2d(4, track_running_stats=True), x)
    for bad in (0, 1):
        with pytest.raises(ValueError, match="split_every"):
            fdask.moments(x, 0, split_every=bad)
    mean, var = fdask.moments(da.from_array(np.zeros((0, 3)), chunks=(1, 3)), 0)
    assert np.isnan(mean.compute()).all() and np.isnan(var.compute()).all()


# --------------------------------------------------------------------------------------------------------
# Failure modes of the collective calls (tests/collective_scenarios.py; tests/mpi runs them under mpiexec)
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("scenario", collective_scenarios.SCENARIOS, ids=lambda f: f.__name__)
def test_collective_call_ends_on_every_process(scenario, size):
    _run_ranks(ThreadComm.world(size), lambda rank, comm: scenario(comm, rank, size))
