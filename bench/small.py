"""Small tensors against a copy of the same bytes: hot data, functional and layer calls.

    PYTHONPATH=src python bench/small.py [--threads 1 2] [--rounds 201] [--tiny]

The shapes of batch-1-to-8 inference (and a small training batch) fit in L2 or L3, so a call's fixed
costs and its passes over cached data decide its time.  Each case times ``np.copyto(y, x)`` of an array
of the input's size, the functional call and the layer call, interleaved in the same rounds on hot data
(no eviction: a small tensor in a network is still cached from the layer before), and prints the medians
and each call's ratio to the copy.  ``--tiny`` adds the same calls on a tensor of one value per channel
(or row): their time is the fixed cost of a call, validation and planning included.
"""
import argparse

import numpy as np

import fastnorm.functional as F
from fastnorm import _bench
from fastnorm._threads import threads
from fastnorm.layers import BatchNorm1d, BatchNorm2d, LayerNorm


def cases(tiny):
    """(name, shape, functional(x), layer, layer(x) args)."""
    rng = np.random.default_rng(0)

    def params(C):
        return (rng.standard_normal(C).astype(np.float32), rng.random(C).astype(np.float32) + 0.5,
                rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32))

    rm, rv, w, b = params(256)
    bn2 = BatchNorm2d(256).eval()
    bn2.running_mean[...], bn2.running_var[...], bn2.weight[...], bn2.bias[...] = rm, rv, w, b
    yield ("batch_norm eval (8, 256, 14, 14)", (1, 256, 1, 1) if tiny else (8, 256, 14, 14),
           lambda x: F.batch_norm(x, rm, rv, w, b, training=False), bn2)
    _, _, w1, b1 = params(512)
    bn1 = BatchNorm1d(512)
    yield ("batch_norm train (256, 512)", (2, 512) if tiny else (256, 512),
           lambda x: F.batch_norm(x, None, None, w1, b1, training=True), bn1)
    _, _, wl, bl = params(384)
    ln = LayerNorm(384)
    yield ("layer_norm (8, 197, 384)", (1, 1, 384) if tiny else (8, 197, 384),
           lambda x: F.layer_norm(x, (384,), wl, bl), ln)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=201)
    parser.add_argument("--tiny", action="store_true", help="also the fixed cost: one value per channel or row")
    args = parser.parse_args()
    for n in args.threads:
        print(f"threads={n}", flush=True)
        with threads(n):
            for tiny in ([False, True] if args.tiny else [False]):
                for name, shape, functional, layer in cases(tiny):
                    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
                    y = np.empty_like(x)
                    times = _bench.time_interleaved([lambda: np.copyto(y, x), lambda: functional(x),
                                                     lambda: layer(x)], args.rounds, evict=False)
                    copy, func, lay = (median for _, median, _ in times)
                    label = f"{name} at {shape}" if tiny else name
                    print(f"  {label:48} copy {copy * 1e6:8.2f} us  functional {func * 1e6:8.2f} us "
                          f"({func / copy:4.2f}x)  layer {lay * 1e6:8.2f} us ({lay / copy:4.2f}x)", flush=True)


if __name__ == "__main__":
    main()
