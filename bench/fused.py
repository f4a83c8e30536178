"""Fused activation against the unfused composition: ``batch_norm(..., activation="relu")`` on float32
(32, 64, 56, 56) in evaluation mode, against ``batch_norm`` then ``np.maximum(y, 0, out=y)``, at 1 and 2
threads, interleaved in one process (medians).

    PYTHONPATH=src python bench/fused.py [--repeat 30] [--activation relu] [--add]
"""
import argparse

import numpy as np

import fastnorm
from fastnorm._bench import time_interleaved

UNFUSED = {
    "relu": lambda y: np.maximum(y, 0, out=y),
    "sigmoid": lambda y: np.reciprocal(np.exp(np.negative(y, out=y), out=y).__iadd__(1), out=y),
    "tanh": lambda y: np.tanh(y, out=y),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--activation", default="relu", choices=sorted(UNFUSED))
    parser.add_argument("--add", action="store_true", help="also add a residual (add=) in the fused call")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 64, 56, 56)).astype(np.float32)
    rm, rv, w, b = (rng.uniform(0.5, 2, 64).astype(np.float32) for _ in range(4))
    add = rng.normal(size=x.shape).astype(np.float32) if args.add else None
    act = UNFUSED[args.activation]

    def unfused() -> None:
        y = fastnorm.batch_norm(x, rm, rv, w, b, training=False)
        if add is not None:
            np.add(y, add, out=y)
        act(y)

    def fused() -> None:
        fastnorm.batch_norm(x, rm, rv, w, b, training=False, activation=args.activation, add=add)

    for threads in (1, 2):
        with fastnorm.threads(threads):
            (_, t_unfused, _), (_, t_fused, _) = time_interleaved([unfused, fused], args.repeat)
        print(f"{threads} thread(s): unfused {t_unfused * 1e3:7.2f} ms   fused {t_fused * 1e3:7.2f} ms   "
              f"speedup {t_unfused / t_fused:.2f}x")


if __name__ == "__main__":
    main()
