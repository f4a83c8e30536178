"""Each bench case against the memory floor, measured in the same process and in the same rounds.

    python bench/floor.py [--threads 1 2] [--filter NAME] [--rounds 41]

The floor of a case is a memcpy moving the bytes the case must move at least (x read and y written; a
backward also reads dy), with the caches evicted before each call as for the cases.  The copy is timed
between the calls of fastnorm and PyTorch, so that a change of the machine's bandwidth during the run
moves all three alike.  Prints medians, fastnorm / floor (1.0: at copy bandwidth) and PyTorch / floor
(the most a kernel at copy bandwidth could gain on PyTorch).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
from fastnorm import _bench, _kernels  # noqa: E402
from fastnorm._threads import threads  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--filter", default="")
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("bench/floor.py compares with PyTorch: pip install torch")
    junk = np.ones(16 << 20, np.float32)  # 64 MiB, twice the last-level cache here

    for n in args.threads:
        torch.set_num_threads(n)
        print(f"threads={n}")
        with threads(n):
            for name, build in _bench.all_cases():
                if args.filter not in name:
                    continue
                x, ours, _, theirs = build()
                moved = (3 if "backward" in name else 2) * x.nbytes
                src = np.ones(moved // 8, np.uint32)
                dst = np.empty_like(src)

                def floor():
                    _kernels.parallel_copy(src, dst, n)

                calls = [ours, floor, theirs]
                for f in calls:
                    f()
                times = [[] for _ in calls]
                for _ in range(args.rounds):
                    for f, t in zip(calls, times):
                        np.add(junk, 1, out=junk)
                        t0 = time.perf_counter()
                        f()
                        t.append(time.perf_counter() - t0)
                a, c, b = (float(np.median(t)) for t in times)
                print(f"  {name:42}fastnorm {a * 1e3:7.3f} ms  floor {c * 1e3:7.3f} ms  torch {b * 1e3:7.3f} ms"
                      f"  fastnorm/floor {a / c:5.2f}  torch/floor {b / c:5.2f}  torch/fastnorm {b / a:5.2f}")


if __name__ == "__main__":
    main()
