"""SyncBatchNorm over real MPI processes: run with ``mpiexec -n 2 python -m pytest -q tests/mpi`` (or -n 3).

Every process builds the same global batch, runs SyncBatchNorm on its slice (slices of unequal sizes,
one of them empty), and compares with a single-process BatchNorm on the whole batch.  With one process
(plain pytest) the same checks run on a world of one.
"""
import numpy as np
import pytest

import fastnorm
from conftest import assert_sync_matches_whole
from mpi_watchdog import watchdog  # noqa: F401 (autouse)

MPI = pytest.importorskip("mpi4py.MPI")
comm = MPI.COMM_WORLD


def _slices(total_sizes):
    bounds = np.cumsum((0,) + total_sizes)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("shape, channel_axis", [((3, 5, 4), 1), ((3, 4, 4, 5), -1)], ids=str)
@pytest.mark.parametrize("layout", ["unequal", "one-empty"])
def test_sync_batch_norm_equals_batch_norm_on_the_concatenated_batch(shape, channel_axis, layout):
    size, rank = comm.size, comm.rank
    sizes = tuple(2 + 3 * r for r in range(size))
    if layout == "one-empty":
        sizes = (0,) + sizes[1:] if size > 1 else sizes
    rng = np.random.default_rng(7)  # the same global batch on every process
    C = shape[channel_axis]
    x = rng.normal(size=(sum(sizes),) + shape[1:]) * 2 + 3
    g = rng.normal(size=x.shape)
    weight, bias = rng.normal(size=C), rng.normal(size=C)

    whole = (fastnorm.BatchNorm1d if len(shape) == 3 else fastnorm.BatchNorm2d)(
        C, dtype=np.float64, channel_axis=channel_axis)
    sync = fastnorm.SyncBatchNorm(C, dtype=np.float64, channel_axis=channel_axis)
    for layer in (whole, sync):
        layer.weight[:], layer.bias[:] = weight, bias
    mine = _slices(sizes)[rank]
    for step in range(3):
        y_all = whole(x + step)
        dx_all = whole.backward(g)
        y = sync(x[mine] + step)
        dx = sync.backward(g[mine])
        np.testing.assert_allclose(y, y_all[mine], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, dx_all[mine], rtol=1e-12, atol=1e-12)
    assert_sync_matches_whole(sync, whole)
    # Running statistics are the same, to the bit, on every process.
    for other in comm.allgather(np.concatenate([sync.running_mean, sync.running_var])):
        np.testing.assert_array_equal(other, np.concatenate([sync.running_mean, sync.running_var]))
    # Eval mode: no communication, the local running statistics.
    sync.eval(), whole.eval()
    np.testing.assert_allclose(sync(x[mine]), whole(x)[mine], rtol=1e-12, atol=1e-12)
