"""The cache of freed result memory (fastnorm.set_output_cache): results are ordinary arrays, large ones
reuse freed memory, the limit holds (by default the peak of the results alive at once), an allocation
never fails for the memory the cache holds, and NumPy's own allocations are left alone."""
import os
import subprocess
import sys
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


def test_by_default_the_cache_keeps_no_more_than_the_results_took_at_their_peak():
    assert fastnorm.set_output_cache(None) == 256 * MIB  # the fixture's; None: follow the process
    assert _kernels.output_cache_auto() and "auto" in fastnorm.show_config(print_out=False)["cache"]
    small = [F.layer_norm(big((64, 1024), seed=k), 1024) for k in range(8)]  # 256 KiB each: never cached
    del small
    assert _kernels.output_cache_limit() == 0 and _kernels.output_cache_bytes() == 0
    y = F.layer_norm(big((512, 1024)), 1024)  # 2 MiB
    del y
    assert _kernels.output_cache_limit() == 2 * MIB and _kernels.output_cache_bytes() == 2 * MIB
    y = F.layer_norm(big((1024, 1024)), 1024)  # 4 MiB, one at a time: the peak is 4 MiB
    del y
    assert _kernels.output_cache_limit() == 4 * MIB and _kernels.output_cache_bytes() == 4 * MIB
    pair = [F.layer_norm(big((1024, 1024), seed=k), 1024) for k in range(2)]  # 8 MiB alive at once
    del pair
    assert _kernels.output_cache_limit() == 8 * MIB and _kernels.output_cache_bytes() == 8 * MIB
    assert fastnorm.set_output_cache(None) is None  # counts the peak again from now: nothing is alive
    assert _kernels.output_cache_limit() == 0 and _kernels.output_cache_bytes() == 0


def test_a_loop_reuses_its_blocks_under_the_default():
    fastnorm.set_output_cache(None)
    bn = fastnorm.BatchNorm2d(64)
    x = big((8, 64, 32, 32))  # 2 MiB results
    addresses = set()
    for _ in range(6):
        y = bn(x)
        dx = bn.backward(y)
        addresses |= {address(y), address(dx)}
    assert len(addresses) <= 3  # y and dx of a step, and the next step's y before the last one is freed
    assert _kernels.output_cache_bytes() <= _kernels.output_cache_limit() <= 3 * 2 * MIB


@pytest.mark.parametrize("value, error", [(-1, ValueError), (2 ** 64, ValueError), (1.5, TypeError),
                                          (True, TypeError), ("x", TypeError), (np.float64(1e6), TypeError)])
def test_set_output_cache_refuses_what_is_not_a_number_of_bytes(value, error):
    with pytest.raises(error, match="nbytes: expected a number of bytes"):
        fastnorm.set_output_cache(value)
    assert _kernels.output_cache_limit() == 256 * MIB  # unchanged
    assert fastnorm.set_output_cache(np.int64(MIB)) == 256 * MIB


@pytest.mark.parametrize("setting, warns, expected", [
    ("18446744073709551616", True, None), ("-1", True, None), ("lots", True, None), ("1.5", True, None),
    ("", False, None), ("auto", False, None), (" 1048576 ", False, MIB), ("0", False, 0),
])
def test_junk_in_fastnorm_output_cache_warns_and_leaves_the_default(setting, warns, expected):
    code = "import fastnorm; print(fastnorm.set_output_cache(None))"
    env = dict(os.environ, FASTNORM_OUTPUT_CACHE=setting)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(expected)]
    assert ("RuntimeWarning: FASTNORM_OUTPUT_CACHE=" in run.stderr) == warns, run.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or "asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="needs an address-space limit (Linux; the sanitizer's shadow memory does not fit one)")
def test_an_allocation_that_fails_while_the_cache_holds_memory_frees_it_and_succeeds():
    code = """if True:
    import resource
    import numpy as np
    import fastnorm, fastnorm.functional as F
    from fastnorm import _kernels
    MIB = 1 << 20
    fastnorm.set_output_cache(512 * MIB)
    x = np.ones((12 * 1024, 1024), np.float32)           # 48 MiB
    large = np.ones((40 * 1024, 1024), np.float32)       # 160 MiB
    expected = F.layer_norm(large[:2], 1024)

    def fill():                                          # 192 MiB of idle blocks in the cache
        results = [F.layer_norm(x, 1024) for _ in range(4)]
        del results
        assert _kernels.output_cache_bytes() == 192 * MIB

    fill()
    status = open("/proc/self/status").read()
    mapped = int(status.split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + 64 * MIB, resource.getrlimit(resource.RLIMIT_AS)[1]))
    z = np.empty(160 * MIB, np.uint8)                    # NumPy's own allocation: frees the cache
    assert _kernels.output_cache_bytes() == 0
    del z
    fill()
    y = F.layer_norm(large, 1024)                        # fastnorm's: frees the cache
    assert _kernels.output_cache_bytes() == 0
    np.testing.assert_array_equal(y[:2], expected)
    print("ok")
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["ok"], run.stderr


def test_numpy_allocations_of_the_importing_thread_go_through_numpy_allocator_wrapped():
    a = np.arange(10.0)  # NumPy's own functions, NumPy's own allocator behind the wrapper
    assert get_handler_name(a) == "fastnorm_retrying_default_allocator" == get_handler_name()
    names = []
    worker = threading.Thread(target=lambda: names.append(get_handler_name(np.ones(3))))
    worker.start()
    worker.join()
    assert names == ["default_allocator"]  # a thread's own context: NumPy's allocator as it is
