"""Fused inference: fastnorm's fused calls against the composition and ONNX Runtime, hot, one process.

    python bench/fused.py [--threads 1 2] [--repeat 41] [--filter NAME]

Each case times the fused call, the unfused composition a NumPy user writes (``layer_norm(np.add(x, r))``,
``batch_norm`` then ``np.maximum``, float32 instead of bfloat16, a copy of the same bytes for the small
tensors) and ONNX Runtime's op for the step where installed, interleaved, medians (the "fused" section of
``python -m fastnorm bench``).  It imports the installed fastnorm; from a checkout built in place, run it
with ``PYTHONPATH=src``.
"""
import argparse

from fastnorm import _bench
from fastnorm._bench_fused import run_fused


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=41)
    parser.add_argument("--filter", default="fused")
    args = parser.parse_args()
    run_fused(_bench.Settings(args.threads, args.repeat, args.filter))


if __name__ == "__main__":
    main()
