"""The cache of freed result memory (fastnorm.set_output_cache): results are ordinary arrays, large ones
reuse freed memory, the limit holds, and NumPy's own allocations are left alone."""
import threading

import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F
from fastnorm import _kernels

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name

CACHED = "fastnorm_output_cache"
MIB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_cache():
    previous = fastnorm.set_output_cache(0)  # empty, whatever FASTNORM_OUTPUT_CACHE said
    fastnorm.set_output_cache(256 * MIB)
    yield
    fastnorm.set_output_cache(0)
    fastnorm.set_output_cache(previous)


def address(a):
    return a.__array_interface__["data"][0]


def big(shape=(512, 1024), seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_large_results_come_from_the_cache_and_small_ones_do_not():
    x = big()
    w = np.ones(1024, np.float32)
    y, mean, rstd = F.layer_norm(x, 1024, w, return_stats=True)
    dx, dw, db = F.layer_norm_backward(x, x, 1024, mean, rstd, w)
    assert get_handler_name(y) == CACHED and get_handler_name(dx) == CACHED
    assert y.flags.owndata and y.base is None and y.flags.c_contiguous
    assert address(y) % 64 == 0 and address(dx) % 64 == 0
    small = F.layer_norm(x[:4], 1024)
    assert get_handler_name(small) != CACHED
    assert get_handler_name() != CACHED  # the handler is set only around fastnorm's own allocations
    assert get_handler_name(np.empty(2 * MIB, np.float32)) != CACHED


def test_a_freed_result_is_reused_and_the_values_are_those_of_fresh_memory():
    x = big()
    y = F.layer_norm(x, 1024)
    first, expected = address(y), y.copy()
    del y
    assert _kernels.output_cache_bytes() == x.nbytes
    y = F.layer_norm(x, 1024)
    assert address(y) == first
    assert _kernels.output_cache_bytes() == 0
    np.testing.assert_array_equal(y, expected)
    fastnorm.set_output_cache(0)
    np.testing.assert_array_equal(F.layer_norm(x, 1024), expected)


def test_a_block_much_larger_than_the_request_is_not_used():
    y = F.layer_norm(big((1024, 1024)), 1024)
    first = address(y)
    del y
    z = F.layer_norm(big((512, 1024)), 1024)  # half the size: would waste 2 MiB
    assert address(z) != first
    assert _kernels.output_cache_bytes() == 4 * MIB


def test_a_block_reused_for_a_smaller_result_counts_its_whole_size():
    y = F.layer_norm(big((1024, 1024)), 1024)  # 4 MiB
    first = address(y)
    del y
    z = F.layer_norm(big((960, 1024)), 1024)  # 3.75 MiB: reuses the block
    assert address(z) == first
    del z
    assert _kernels.output_cache_bytes() == 4 * MIB


def test_the_limit_holds_and_zero_releases_everything():
    fastnorm.set_output_cache(3 * MIB)
    results = [F.layer_norm(big((384, 1024), seed=k), 1024) for k in range(3)]  # 1.5 MiB each
    del results
    assert _kernels.output_cache_bytes() == 3 * MIB
    assert fastnorm.set_output_cache(0) == 3 * MIB
    assert _kernels.output_cache_bytes() == 0
    y = F.layer_norm(big(), 1024)
    del y
    assert _kernels.output_cache_bytes() == 0


def test_a_cached_result_can_be_resized_and_pickled():
    import pickle

    y = F.layer_norm(big(), 1024)
    expected = y[:100].copy()
    y.resize((100, 1024), refcheck=False)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(y)), expected)


def test_a_failed_allocation_leaves_numpy_default_handler():
    with pytest.raises(MemoryError):
        _kernels.empty((1 << 60,), np.float32)  # 4 EiB: the cache's allocator fails
    assert get_handler_name() != CACHED


def test_results_made_and_freed_on_several_threads():
    x = big((256, 1024))
    expected = F.layer_norm(x, 1024)
    errors = []

    def work():
        try:
            for _ in range(50):
                y = F.layer_norm(x, 1024)
                if not np.array_equal(y, expected):
                    errors.append("wrong values")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    pool = [threading.Thread(target=work) for _ in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert _kernels.output_cache_bytes() <= _kernels.output_cache_limit()
