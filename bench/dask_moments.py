"""Exact moments of a (10_000_000, 64) float32 dask array in 64 chunks: fastnorm.dask.moments against
dask.array's own mean and var (threaded scheduler).  Run: ``python bench/dask_moments.py [rows]``."""
import sys
import time

import dask
import dask.array as da
import numpy as np

import fastnorm.dask


def best_of(f, repeat=3):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(rows=10_000_000, columns=64, chunks=64):
    dask.config.set(scheduler="threads")
    x = np.random.default_rng(0).standard_normal((rows, columns), dtype=np.float32) + np.float32(1e4)
    array = da.from_array(x, chunks=(rows // chunks, columns))
    exact_mean, exact_var = x.mean(axis=0, dtype=np.float64), x.var(axis=0, dtype=np.float64)
    cases = {
        "fastnorm.dask.moments": lambda: dask.compute(*fastnorm.dask.moments(array, 0)),
        "dask mean, var": lambda: dask.compute(array.mean(axis=0), array.var(axis=0)),
        "dask mean, var in float64": lambda: dask.compute(array.astype(np.float64).mean(axis=0),
                                                          array.astype(np.float64).var(axis=0)),
    }
    print(f"({rows}, {columns}) float32 at 1e4 +- 1 in {chunks} chunks; best of 3; errors against float64")
    baseline = None
    for name, run in cases.items():
        seconds, (mean, var) = best_of(run)
        baseline = baseline or seconds
        print(f"{name:<28}{seconds:8.3f} s  {seconds / baseline:5.2f}x fastnorm's time   "
              f"max |mean error| {np.abs(mean - exact_mean).max():.2e}   "
              f"max relative var error {np.abs(var / exact_var - 1).max():.2e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000)
