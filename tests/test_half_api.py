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
