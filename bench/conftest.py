"""pytest-benchmark settings for bench/: a table that fits a terminal, and each result's thread count and
bandwidth in its ``extra_info`` (saved by ``--benchmark-json`` / ``--benchmark-autosave``).

    python -m pytest bench [--benchmark-columns=min,max,mean,median,iqr,ops,rounds] [--benchmark-json=FILE]
"""
import pytest

from fastnorm import get_num_threads

try:
    import torch
except ImportError:  # the PyTorch cases skip
    torch = None

# The table's columns and name format unless the command line sets them: pytest-benchmark's defaults
# (ten columns, "test_" and the file beside each name) need about 200 characters; these, under 100.
DEFAULTS = {"benchmark_columns": ("--benchmark-columns", ["median", "iqr", "rounds"]),
            "benchmark_name": ("--benchmark-name", "short")}


def pytest_configure(config):
    # Runs before pytest-benchmark reads its options (its pytest_configure is trylast).
    for dest, (flag, value) in DEFAULTS.items():
        if hasattr(config.option, dest) and not any(arg.startswith(flag) for arg in config.invocation_params.args):
            setattr(config.option, dest, value)


@pytest.fixture
def bench_call(benchmark):
    """``bench_call(func, moved, group, *args)``: benchmark ``func(*args)`` at fastnorm's thread count, PyTorch
    set to the same, and record that count (``threads``; the NumPy baseline runs on one thread whatever
    it says), the bytes a call moves at least (``moved_bytes``) and the GB/s that makes (``gbps``)."""
    def run(func, moved, group, *args):
        if func is None:
            pytest.skip("PyTorch is not installed")
        n = get_num_threads()
        if torch is not None:
            torch.set_num_threads(n)
        benchmark.group = group
        benchmark.extra_info.update(threads=n, moved_bytes=moved)
        benchmark(func, *args)
        if benchmark.stats is not None:  # None under --benchmark-disable
            benchmark.extra_info["gbps"] = moved / benchmark.stats.stats.median / 1e9
    return run
