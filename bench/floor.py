"""Each bench case against the memory floor, measured in the same process and in the same rounds.

    python bench/floor.py [--threads 1 2] [--filter NAME] [--rounds 41]

The floor of a case is a copy moving the bytes the case must move at least (x read and y written; a
backward also reads dy), by as many threads and storing as the kernels store, with the caches evicted
before each call as for the cases.  The copy is timed between the calls of fastnorm and PyTorch, so that
a change of the machine's bandwidth during the run moves all three alike.  Prints medians, fastnorm /
floor (1.0: at copy speed) and PyTorch / floor (the most a kernel at copy speed could gain on PyTorch).
It imports the installed fastnorm; from a checkout built in place, run it with ``PYTHONPATH=src``.
"""
import argparse
import sys

from fastnorm import _bench
from fastnorm._threads import threads


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

    for n in args.threads:
        torch.set_num_threads(n)
        print(f"threads={n}", flush=True)
        with threads(n):
            for case in _bench.all_cases():
                if args.filter not in case.name:
                    continue
                calls = case.build()
                times = _bench.time_interleaved([calls.fastnorm, _bench.copy_of(calls.moved, n), calls.torch],
                                                args.rounds)
                a, c, b = (median for _, median, _ in times)
                print(f"  {case.name:42}fastnorm {a * 1e3:7.3f} ms  floor {c * 1e3:7.3f} ms  torch {b * 1e3:7.3f} ms"
                      f"  fastnorm/floor {a / c:5.2f}  torch/floor {b / c:5.2f}  torch/fastnorm {b / a:5.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
