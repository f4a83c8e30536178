"""What each fused activation costs per value, forward and backward: ``batch_norm(..., activation=a)`` in
eval mode and ``batch_norm_backward(..., activation=a)`` on float32 (32, 64, 56, 56), against the same
call without an activation, interleaved medians; the difference divided by the number of values.

    PYTHONPATH=src python bench/activations.py [--repeat 21] [--threads 1] [--shape 32 64 56 56]
"""
import argparse

import numpy as np

import fastnorm
from fastnorm._bench import time_interleaved
from fastnorm._validation import ACTIVATIONS


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 56, 56])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.shape, dtype=np.float32)
    C = x.shape[1]
    mean, var = rng.standard_normal(C, dtype=np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
    w, b = rng.uniform(0.5, 2, C).astype(np.float32), rng.standard_normal(C, dtype=np.float32)
    rstd = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    acts = [None, *ACTIVATIONS]
    fastnorm.set_num_threads(args.threads)
    forward = [lambda a=a: fastnorm.batch_norm(x, mean, var, w, b, False, activation=a) for a in acts]
    backward = [lambda a=a: fastnorm.batch_norm_backward(dy, x, mean, rstd, w, False, activation=a, bias=b)
                for a in acts]
    for name, calls in (("forward", forward), ("backward", backward)):
        times = [t for _, t, _ in time_interleaved(calls, args.repeat)]
        print(f"{name}, {x.shape} float32, {args.threads} thread(s), medians of {args.repeat}: "
              f"no activation {times[0] * 1e3:.2f} ms")
        for a, t in zip(acts[1:], times[1:]):
            print(f"  {a:10s} {t * 1e3:8.2f} ms  {(t - times[0]) / x.size * 1e9:6.2f} ns/value")


if __name__ == "__main__":
    main()
