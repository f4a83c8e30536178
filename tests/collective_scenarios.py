"""Failure modes of fastnorm's collective calls, each a function ``scenario(comm, rank, size)`` that every
process runs: ``tests/mpi`` over real MPI processes, ``tests/test_distributed.py`` over threads.

In each, one process's step goes wrong (its own check or computation fails, or it makes a call the
others do not make) and every process asserts what it must see: the same error everywhere (never some
processes waiting for ever), nothing changed, and a next collective step that works.  Any size works,
one process included.
"""
import re

import numpy as np
import pytest

import fastnorm

C = 3


def raises_everywhere(rank, bad, error, message):
    """The failing process ``bad`` raises its own ``error``; the others one of the same type naming it."""
    if rank == bad:
        return pytest.raises(error, match=re.escape(message))
    return pytest.raises(error, match=re.escape(message) + rf".* \(raised on process {bad}\)$")


def batch(rank, n=None, seed=0):
    """This process's slice of a global batch, ``(n, C, 4)`` (default ``2 + rank`` samples)."""
    n = 2 + rank if n is None else n
    return np.random.default_rng([seed, rank]).normal(3.0, 2.0, (n, C, 4))


def layer(comm, **kwargs):
    return fastnorm.SyncBatchNorm(C, comm=comm, dtype=np.float64, **kwargs)


def state(bn):
    return (bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked)


def assert_state(bn, expected):
    np.testing.assert_array_equal(bn.running_mean, expected[0])
    np.testing.assert_array_equal(bn.running_var, expected[1])
    assert bn.num_batches_tracked == expected[2]


def assert_next_step_works(bn, rank, size):
    """A training step after a failed one: every process is back in step."""
    steps = bn.num_batches_tracked
    y = bn(batch(rank, seed=1))
    assert y.shape == batch(rank).shape and bn.num_batches_tracked == steps + 1
    dx = bn.backward(np.ones_like(y))
    np.testing.assert_allclose(dx, 0, atol=1e-12)  # dy constant over the batch: no input gradient
    np.testing.assert_allclose(bn.grad_bias, sum(2 + r for r in range(size)) * 4)


# ------------------------------------------------------------------------------------------------------
# Evaluation mode never communicates
# ------------------------------------------------------------------------------------------------------

def eval_runs_on_one_process_alone(comm, rank, size):
    """Validation on process 0 alone, with and without running statistics (then the local batch's)."""
    x, g = batch(rank), batch(rank, seed=2)
    for track in (False, True):
        sync = layer(comm, track_running_stats=track).eval()
        plain = fastnorm.BatchNorm1d(C, dtype=np.float64, track_running_stats=track).eval()
        if rank == 0:  # the others are elsewhere
            np.testing.assert_allclose(sync(x), plain(x), rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(sync.backward(g), plain.backward(g), rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(sync.grad_weight, plain.grad_weight, rtol=1e-13, atol=1e-13)
            with pytest.raises(RuntimeError, match="no forward"):
                layer(comm).eval().backward(g)


# ------------------------------------------------------------------------------------------------------
# A forward that fails on one process
# ------------------------------------------------------------------------------------------------------

def wrong_channel_count_in_forward(comm, rank, size):
    bn, bad = layer(comm), size - 1
    before = state(bn)
    x = batch(rank)[:, :2] if rank == bad else batch(rank)
    with raises_everywhere(rank, bad, ValueError, f"input: expected 3 channels on axis 1, got input of shape "
                                                  f"({2 + bad}, 2, 4)"):
        bn(x)
    assert_state(bn, before)
    assert_next_step_works(bn, rank, size)


def wrong_dtype_in_forward(comm, rank, size):
    bn = layer(comm)
    x = batch(rank).astype(np.int64) if rank == 0 else batch(rank)
    with raises_everywhere(rank, 0, TypeError, "input: expected a floating-point array"):
        bn(x)
    assert_next_step_works(bn, rank, size)


class _Unreadable:
    """An input whose conversion fails with ``error``, as a lazy array whose file went away would."""

    def __init__(self, error):
        self.error = error

    def __array__(self, *args, **kwargs):
        raise self.error


def any_exception_in_forward(comm, rank, size):
    """An error of a type the others cannot rebuild reaches them as a RuntimeError naming it."""
    bn, bad = layer(comm), size - 1
    for error in (OSError("input file vanished"), KeyboardInterrupt()):
        if rank == bad:
            with pytest.raises(type(error)):
                bn(_Unreadable(error))
        else:
            with raises_everywhere(rank, bad, RuntimeError, f"{type(error).__name__}: {error}"):
                bn(batch(rank))
    assert_next_step_works(bn, rank, size)


def one_value_in_the_whole_batch(comm, rank, size):
    bn = layer(comm)
    before = state(bn)
    with pytest.raises(ValueError, match="expected more than 1 value per channel when training"):
        bn(np.ones((1 if rank == 0 else 0, C)))
    assert_state(bn, before)


def empty_batch_on_every_process(comm, rank, size):
    """As BatchNorm on an empty batch: empty output, nothing updated, zero parameter gradients."""
    for shape in ((0, C, 4), (2, C, 0), (0, C)):
        bn, plain = layer(comm), fastnorm.BatchNorm1d(C, dtype=np.float64)
        before = state(bn)
        y, y_plain = bn(np.empty(shape)), plain(np.empty(shape))
        assert y.shape == y_plain.shape == shape and y.dtype == np.float64
        assert_state(bn, before)
        assert_state(plain, before)
        dx, dx_plain = bn.backward(np.empty(shape)), plain.backward(np.empty(shape))
        assert dx.shape == dx_plain.shape == shape
        for grad in (bn.grad_weight, bn.grad_bias, plain.grad_weight, plain.grad_bias):
            np.testing.assert_array_equal(grad, np.zeros(C))
    assert_next_step_works(bn, rank, size)


# ------------------------------------------------------------------------------------------------------
# A backward that fails on one process
# ------------------------------------------------------------------------------------------------------

def wrong_grad_output_shape(comm, rank, size):
    bn, bad = layer(comm), size - 1
    y = bn(batch(rank))
    g = np.ones((9,) + y.shape[1:]) if rank == bad else np.ones_like(y)
    with raises_everywhere(rank, bad, ValueError, f"grad_output: expected shape ({2 + bad}, 3, 4) (the input's), "
                                                  "got (9, 3, 4)"):
        bn.backward(g)
    assert bn.grad_weight is None and bn.grad_bias is None
    bn.backward(np.ones_like(y))  # the same forward, differentiated in step
    np.testing.assert_allclose(bn.grad_bias, sum(2 + r for r in range(size)) * 4)
    assert_next_step_works(bn, rank, size)


def backward_without_a_forward(comm, rank, size):
    """Process 0 ran its forward under no_grad, so it has nothing to differentiate."""
    bn = layer(comm)
    if rank == 0:
        with fastnorm.no_grad():
            y = bn(batch(rank))
    else:
        y = bn(batch(rank))
    with raises_everywhere(rank, 0, RuntimeError, "SyncBatchNorm.backward: no forward to differentiate"):
        bn.backward(np.ones_like(y))
    assert_next_step_works(bn, rank, size)


# ------------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------------

def calibrate_fails_on_one_process(comm, rank, size):
    bn, bad = layer(comm), size - 1
    before = state(bn)
    with raises_everywhere(rank, bad, ValueError, "batches: expected at least one batch"):
        bn.calibrate([] if rank == bad else [batch(rank)])
    with raises_everywhere(rank, 0, ValueError, "input: expected 3 channels"):
        bn.calibrate([batch(rank), np.ones((2, 4))] if rank == 0 else [batch(rank)])
    assert_state(bn, before)
    bn.calibrate([batch(rank), batch(rank, seed=3)])
    assert bn.num_batches_tracked == 2
    everything = np.concatenate([np.concatenate([batch(r), batch(r, seed=3)]) for r in range(size)])
    np.testing.assert_allclose(bn.running_mean, everything.mean(axis=(0, 2)), rtol=1e-12)


def calibrate_batch_norms_fails_on_one_process(comm, rank, size):
    """A plain BatchNorm fails on one process before a SyncBatchNorm: the others fail there too, and no
    layer on any process is changed."""
    sync, plain, bad = layer(comm), fastnorm.BatchNorm1d(C, dtype=np.float64), size - 1
    before = state(sync), state(plain)

    def forward(x):
        h = sync(x)
        if rank != bad:  # the model skips the plain layer there
            plain(h)

    with raises_everywhere(rank, bad, ValueError, "layers[0]: received no input during the calibration pass"):
        fastnorm.calibrate_batch_norms([plain, sync], forward, [batch(rank), batch(rank, seed=3)])
    assert_state(sync, before[0])
    assert_state(plain, before[1])
    fastnorm.calibrate_batch_norms([sync, plain], lambda x: plain(sync(x)), [batch(rank)])
    assert sync.num_batches_tracked == plain.num_batches_tracked == 1


SCENARIOS = [eval_runs_on_one_process_alone, wrong_channel_count_in_forward, wrong_dtype_in_forward,
             any_exception_in_forward, one_value_in_the_whole_batch, empty_batch_on_every_process,
             wrong_grad_output_shape, backward_without_a_forward, calibrate_fails_on_one_process,
             calibrate_batch_norms_fails_on_one_process]
