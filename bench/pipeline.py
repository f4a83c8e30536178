"""Threads in a pipeline: fastnorm between matmuls of NumPy, PyTorch and ONNX Runtime.

    python bench/pipeline.py [--threads N] [--repeat 41]

Times the step ``h = x @ W1; h = bn(h); h = ln(h); y = h @ W2`` on (2048, 1024) float32 (BatchNorm1d in
eval mode, LayerNorm) with fastnorm at its default thread count (or ``--threads N``, which the matmul
libraries get too) and at 1 thread, and the two fastnorm calls alone, interleaved in one process; then
the step's calls and matmuls timed apart within it.
A good neighbour keeps at least half of its own gain in the step: step(N) <= step(1) - gain alone / 2.
"""
import argparse

from fastnorm import _bench_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastnorm and the matmul libraries (default: each one's default)")
    parser.add_argument("--repeat", type=int, default=41, help="interleaved rounds (medians reported)")
    parser.add_argument("--shape", default="2048,1024", help="the activations' shape, M,D")
    args = parser.parse_args()
    _bench_pipeline.run_pipeline(args.threads, args.repeat, tuple(int(d) for d in args.shape.split(",")))


if __name__ == "__main__":
    main()
