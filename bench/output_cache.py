"""The training loop that motivated the cache of freed results, under each cache setting; and what the
cache holds in an inference server's worker.

    python bench/output_cache.py [--rounds 5] [--steps 30] [--settings auto 0 268435456]

A training step is BatchNorm2d(64) forward, ReLU (NumPy), ReLU's backward (NumPy) and the BatchNorm
backward on (32, 64, 56, 56) float32 at 1 thread. Each setting of FASTNORM_OUTPUT_CACHE runs in a fresh
process (what the C allocator hands out depends on what the process did before, which is part of what is
measured), the settings in turn, their order rotated every round. Prints each setting's median forward,
backward and step times over all rounds and their ratio to the first setting's (with the spread of the
per-process medians), how many distinct blocks the results of all steps used (the same blocks, the same
pages: a setting under which the loop reuses as many runs as fast), the memory the cache held after the
loop, and the process's peak resident memory.
The server: the same process then serves 200 eval-mode requests of (N, 64, 56, 56), N from 1 to 32 at
random, one at a time, each result dropped after use; prints what the cache holds afterwards.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def child(steps, warmup=5):
    import fastnorm
    from fastnorm import _kernels

    rng = np.random.default_rng(0)
    shape = (32, 64, 56, 56)
    x = rng.standard_normal(shape, dtype=np.float32)
    dr = rng.standard_normal(shape, dtype=np.float32)
    bn = fastnorm.BatchNorm2d(64)
    times, blocks = [], set()
    with fastnorm.threads(1):
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            y = bn(x)
            t1 = time.perf_counter()
            r = np.maximum(y, 0)
            g = np.where(y > 0, dr, 0)
            t2 = time.perf_counter()
            dx = bn.backward(g)
            t3 = time.perf_counter()
            if step >= warmup:
                times.append((t1 - t0, t3 - t2, t3 - t0))
            blocks |= {y.__array_interface__["data"][0], dx.__array_interface__["data"][0]}
    del y, r, g, dx
    held = _kernels.output_cache_bytes()
    bn.eval()
    for n in rng.integers(1, 33, 200):
        bn(x[:n]).sum()
    print(json.dumps({"times": times, "blocks": len(blocks), "held": held, "served": _kernels.output_cache_bytes(),
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--settings", nargs="+", default=["auto", "0", str(256 << 20)])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.steps)
    results = {s: [] for s in args.settings}
    for k in range(args.rounds):
        order = args.settings[k % len(args.settings):] + args.settings[:k % len(args.settings)]
        for setting in order:
            env = dict(os.environ, FASTNORM_OUTPUT_CACHE=setting, OMP_NUM_THREADS="1")
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], env=env,
                                 check=True, capture_output=True, text=True).stdout
            results[setting].append(json.loads(out))
    base = None
    print(f"{'FASTNORM_OUTPUT_CACHE':>22} {'forward ms':>11} {'backward ms':>12} {'step ms':>8}  "
          f"{'forward / first':>19} {'backward / first':>19}  {'blocks':>6} {'held, MiB':>9} {'served':>7} "
          f"{'peak RSS':>8}")
    for setting, runs in results.items():
        per_run = np.array([np.median(run["times"], axis=0) for run in runs]) * 1e3  # (rounds, 3)
        med = np.median(per_run, axis=0)
        base = per_run if base is None else base
        ratio = per_run / base  # round by round: the processes ran next to each other
        lo, hi = np.percentile(ratio, [25, 75], axis=0)
        mid = np.median(ratio, axis=0)
        held = max(run["held"] for run in runs) / 2 ** 20
        served = max(run["served"] for run in runs) / 2 ** 20
        rss = np.median([run["peak_rss"] for run in runs]) / 2 ** 20
        blocks = "/".join(sorted({str(run["blocks"]) for run in runs}))
        print(f"{setting:>22} {med[0]:11.2f} {med[1]:12.2f} {med[2]:8.2f}  {mid[0]:5.2f} ({lo[0]:.2f}-{hi[0]:.2f})"
              f"    {mid[1]:5.2f} ({lo[1]:.2f}-{hi[1]:.2f})  {blocks:>6} {held:9.1f} {served:7.1f} {rss:8.0f}")


if __name__ == "__main__":
    main()
