"""Dask moments through dask.array.reduction: exact, in block order, any chunking and axes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

da = pytest.importorskip("dask.array")
import fastnorm.dask as fdask  # noqa: E402
from fastnorm.statistics import Moments  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), data=st.data())
def test_dask_moments_match_whole_array_moments(shape, data):
    x = np.random.default_rng(len(shape)).normal(1e4, 1.0, size=shape)
    chunks = tuple(data.draw(st.integers(1, n)) for n in shape)
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    keepdims = data.draw(st.booleans())
    split_every = data.draw(st.integers(2, 4))
    mean, var = fdask.moments(da.from_array(x, chunks=chunks), axes, keepdims, split_every=split_every)
    whole = Moments.of(x, tuple(axes), keepdims)
    assert mean.shape == whole.mean.shape and var.shape == whole.mean.shape
    np.testing.assert_allclose(mean.compute(), whole.mean, rtol=1e-14)
    np.testing.assert_allclose(var.compute(), whole.var(), rtol=1e-9, atol=1e-12)


def test_dask_moments_do_not_depend_on_the_scheduler():
    x = da.from_array(np.random.default_rng(3).normal(size=(64, 5)), chunks=(7, 2))
    results = [np.stack(da.compute(*fdask.moments(x, 0), scheduler=s)) for s in ("sync", "threads")]
    assert np.array_equal(results[0], results[1])


@pytest.mark.parametrize("split_every", [1, 0, 2.5, True])
def test_dask_moments_split_every_errors(split_every):
    with pytest.raises((TypeError, ValueError), match="split_every"):
        fdask.moments(da.ones((4, 4), chunks=2), 0, split_every=split_every)
