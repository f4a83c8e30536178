"""fastnorm.preprocessing.StandardScaler against scikit-learn's StandardScaler: accuracy and speed.

    python bench/scaler.py [--rows 100000] [--features 256] [--rounds 11] [--accuracy-rows 100000]

Accuracy: X = 1e4 + U(-1, 1) of (accuracy-rows, 8), float32 and float64, fitted whole (``fit``) and in 100
chunks (``partial_fit``).  The reference is exact: every value is an integer times one power of two, so
the sums are Python integers and the mean and variance exact rationals, rounded once.  Printed: the largest
relative error of ``var_``, the largest error of ``mean_`` in float64 ulps of 1e4, and the largest error of
the ``transform`` output against ``(x - mean) / sqrt(var)`` from the exact mean (the output has unit
scale, so this is relative to its standard deviation).

Speed: ``fit`` and ``transform`` on (rows, features) float32 and float64, fastnorm (its default thread
count, and one thread) and scikit-learn (NumPy, one thread) interleaved in one process, the order rotated
every round; median and p25-p75 in ms, and scikit-learn's median over fastnorm's.  Run on an idle machine
(``cat /proc/loadavg``); the ratios are what to quote.
"""
import argparse
import os
import time
from fractions import Fraction

import numpy as np
from sklearn.preprocessing import StandardScaler as SklearnScaler

import fastnorm
from fastnorm.preprocessing import StandardScaler


def exact_statistics(X):
    """Per column: the mean as two float64 (hi + lo) and the variance, float64, from exact arithmetic."""
    X = np.asarray(X, np.float64)
    _, exponents = np.frexp(X[X != 0])
    shift = 53 - int(exponents.min())  # X * 2**shift is integral
    hi, lo, var = [], [], []
    for column in X.T:
        q = [int(v) for v in np.ldexp(column, shift).tolist()]
        assert all(v == w for v, w in zip(q, np.ldexp(column, shift).tolist()))
        n, s1, s2 = len(q), sum(q), sum(v * v for v in q)
        mean = Fraction(s1, n * 2**shift)
        hi.append(float(mean))
        lo.append(float(mean - Fraction(hi[-1])))
        var.append(float(Fraction(n * s2 - s1 * s1, n * n * 4**shift)))
    return np.array(hi), np.array(lo), np.array(var)


def accuracy(rows, features=8, chunks=100):
    rng = np.random.default_rng(0)
    print(f"accuracy: X = 1e4 + U(-1, 1), ({rows}, {features}); errors against exact arithmetic")
    print(f"{'dtype':8} {'scaler':10} {'fit':12} {'var_ rel err':>13} {'mean_ ulps':>11} {'transform err':>14}")
    for dtype in (np.float32, np.float64):
        X = (1e4 + rng.uniform(-1, 1, size=(rows, features))).astype(dtype)
        hi, lo, var = exact_statistics(X)
        exact = ((X.astype(np.float64) - hi) - lo) / np.sqrt(var)
        for name, cls in (("fastnorm", StandardScaler), ("sklearn", SklearnScaler)):
            for how in ("fit", "partial_fit"):
                scaler = cls()
                if how == "fit":
                    scaler.fit(X)
                else:
                    for part in np.array_split(X, chunks):
                        scaler.partial_fit(part)
                var_err = np.max(np.abs(scaler.var_ - var) / var)
                mean_err = np.max(np.abs(scaler.mean_ - (hi + lo))) / np.spacing(1e4)
                out_err = np.max(np.abs(scaler.transform(X).astype(np.float64) - exact))
                label = how if how == "fit" else f"{chunks} chunks"
                print(f"{np.dtype(dtype).name:8} {name:10} {label:12} {var_err:13.1e} {mean_err:11.1f} {out_err:14.1e}",
                      flush=True)


def speed(rows, features, rounds):
    rng = np.random.default_rng(1)
    n = fastnorm.get_num_threads()
    print(f"\nspeed: ({rows}, {features}), median [p25-p75] ms of {rounds} interleaved rounds; "
          f"fastnorm with {n} threads and with 1; scikit-learn {__import__('sklearn').__version__}")
    print(f"{'case':18} {'fastnorm':>22} {'fastnorm 1 thread':>22} {'sklearn':>22} {'ratio':>7} {'ratio 1t':>8}")
    for dtype in (np.float32, np.float64):
        X = rng.normal(3.0, 2.0, size=(rows, features)).astype(dtype)
        fitted = {"fastnorm": StandardScaler().fit(X), "sklearn": SklearnScaler().fit(X)}
        for op in ("fit", "transform"):
            def call(impl):
                cls = SklearnScaler if impl == "sklearn" else StandardScaler
                if op == "fit":
                    return lambda: cls().fit(X)
                return lambda: fitted["sklearn" if impl == "sklearn" else "fastnorm"].transform(X)

            impls = ["fastnorm", "fastnorm 1 thread", "sklearn"]
            times = {impl: [] for impl in impls}
            for r in range(rounds):
                for impl in impls[r % 3:] + impls[:r % 3]:
                    f = call(impl)
                    with fastnorm.threads(1 if impl == "fastnorm 1 thread" else n):
                        t0 = time.perf_counter()
                        f()
                        times[impl].append(time.perf_counter() - t0)
            q = {impl: np.percentile(np.array(t) * 1e3, [50, 25, 75]) for impl, t in times.items()}
            cells = " ".join(f"{m:8.1f} [{a:5.1f}-{b:5.1f}]" for m, a, b in q.values())
            print(f"{np.dtype(dtype).name + ' ' + op:18} {cells} {q['sklearn'][0] / q['fastnorm'][0]:6.1f}x "
                  f"{q['sklearn'][0] / q['fastnorm 1 thread'][0]:7.1f}x", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--accuracy-rows", type=int, default=100_000)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    accuracy(args.accuracy_rows)
    speed(args.rows, args.features, args.rounds)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
