"""The backward through an activation: the pre-activation recomputed and ``dy * act'(z)`` taken in one
kernel pass by chunks (``_epilogue._activation_grad``), against the recomputation by NumPy passes it
replaced (the forward's fold applied array by array, then the ``act'`` kernel on the result), bit for bit.

    PYTHONPATH=src python bench/activation_backward.py [--repeat 41] [--threads 1]
"""
import argparse

import numpy as np
from threadpoolctl import threadpool_limits

import fastnorm
from fastnorm import _epilogue, _kernels
from fastnorm._bench import time_interleaved


def numpy_activation_grad(fold, x, g, add, act):
    """The replaced path: z by NumPy passes in the compute dtype, then dz = g * act'(z) (factors None)."""
    z = np.subtract(x, fold.mean_hi, out=np.empty(x.shape, fold.dtype), dtype=fold.dtype)
    z *= fold.scale
    z += fold.shift
    if fold.w is not None:
        z *= fold.w
    if fold.b is not None:
        z += fold.b
    if add is not None:
        z += add.astype(fold.dtype, copy=False)
    return _kernels.activation_grad(z, np.ascontiguousarray(g, dtype=fold.dtype), None, act, None, False, None,
                                    None, z.size, 1)


def cases(rng):
    f32 = np.float32
    x = rng.normal(size=(32, 64, 56, 56)).astype(f32)
    _, mean, rstd = fastnorm.batch_norm(x, training=True, return_stats=True)
    w, b = rng.normal(size=64).astype(f32), rng.normal(size=64).astype(f32)
    for act in ("relu", "gelu"):
        yield (f"batch_norm (32, 64, 56, 56) {act}",
               lambda dy, act=act: fastnorm.batch_norm_backward(dy, x, mean, rstd, w, True, activation=act, bias=b), x)
    r = rng.normal(size=(4096, 768)).astype(f32)
    _, rmean, rrstd = fastnorm.layer_norm(r, (768,), return_stats=True)
    rw, rb = rng.normal(size=768).astype(f32), rng.normal(size=768).astype(f32)
    yield ("layer_norm (4096, 768) gelu",
           lambda dy: fastnorm.layer_norm_backward(dy, r, (768,), rmean, rrstd, rw, activation="gelu", bias=rb), r)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=41)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    fused = _epilogue._activation_grad
    rng = np.random.default_rng(0)
    with threadpool_limits(args.threads):
        fastnorm.set_num_threads(args.threads)
        for name, call, x in cases(rng):
            dy = rng.normal(size=x.shape).astype(x.dtype)

            def new():
                _epilogue._activation_grad = fused
                return call(dy)

            def old():
                _epilogue._activation_grad = numpy_activation_grad
                return call(dy)

            same = all(np.array_equal(a, c) for a, c in zip(new(), old()))
            (_, t_new, _), (_, t_old, _) = time_interleaved([new, old], args.repeat)
            print(f"{name}: {t_old * 1e3:.2f} ms -> {t_new * 1e3:.2f} ms (bits equal: {same})")
    _epilogue._activation_grad = fused


if __name__ == "__main__":
    main()
