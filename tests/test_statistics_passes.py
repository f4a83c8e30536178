"""The statistics passes of each instruction set give the same bits: the AVX-512 twins those of the AVX2+FMA
passes (the same lanes summed in the same order), on the shapes that take them: batches of short rows
(LayerNorm, InstanceNorm, GroupNorm) and the columns of channels-last BatchNorm."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
from fastnorm import _kernels

pytestmark = pytest.mark.skipif(_kernels.set_isa() < 2, reason="the CPU has no AVX-512: one path only")


def _on_both_paths(call):
    """call() at ISA level 1 (the AVX2+FMA passes), then at level 2 (their AVX-512 twins)."""
    try:
        _kernels.set_isa(1)
        narrow = call()
        _kernels.set_isa(2)
        wide = call()
    finally:
        _kernels.set_isa()
    return narrow, wide


def _data(seed, shape, offset, special):
    x = (offset + np.random.default_rng(seed).normal(size=shape)).astype(np.float32)
    if special and x.size:
        x.flat[seed % x.size] = [np.nan, np.inf, 3e38, 0.0][seed % 4]
    return x


def _assert_same_bits(narrow, wide):
    for a, b in zip(narrow, wide):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 70), length=st.integers(2, 512), offset=st.sampled_from([0.0, 1e3, -1e5]),
       seed=st.integers(0, 2**16), special=st.booleans())
def test_short_rows_have_the_bits_of_the_avx2_passes(rows, length, offset, seed, special):
    x = _data(seed, (rows, length), offset, special)
    w = np.random.default_rng(seed + 1).normal(size=length).astype(np.float32)

    def call():
        y, mean, rstd = fastnorm.layer_norm(x, (length,), w, w, return_stats=True)
        return y, mean, rstd, fastnorm.instance_norm(x.reshape(1, rows, length))

    _assert_same_bits(*_on_both_paths(call))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(2, 300), columns=st.integers(1, 80), offset=st.sampled_from([0.0, 1e3, -1e5]),
       seed=st.integers(0, 2**16), special=st.booleans())
def test_columns_have_the_bits_of_the_avx2_passes(rows, columns, offset, seed, special):
    x = _data(seed, (rows, columns), offset, special)

    def call():
        rm, rv = np.zeros(columns, np.float32), np.ones(columns, np.float32)
        y = fastnorm.batch_norm(x, rm, rv, training=True)
        return (y, rm, rv, *fastnorm.moments(x, 0))

    _assert_same_bits(*_on_both_paths(call))
