"""Fingerprints of every op's results, to show that a refactor changes no bit.

Record them on the head before the change and check them after::

    PYTHONPATH=src python bench/fingerprints.py --record /tmp/before.json
    PYTHONPATH=src python bench/fingerprints.py --check /tmp/before.json

Each case is one public op (forward or backward) on one shape, dtype, layout and thread count; its
fingerprint is the SHA-256 of the bytes of everything it returns.  The shapes are chosen to reach every
kernel path: rows and columns, short runs, few rows split into pieces, channels-last groups, odd sizes,
a large offset (the shifted sums), and the eval cache of a layer.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any, Callable, Dict, Iterator, Tuple

import numpy as np

import fastnorm
import fastnorm.functional as F


def _digest(result: Any) -> str:
    h = hashlib.sha256()

    def feed(r: Any) -> None:
        if isinstance(r, (tuple, list)):
            for item in r:
                feed(item)
        elif r is None:
            h.update(b"None")
        else:
            a = np.asarray(r)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())

    feed(result)
    return h.hexdigest()


def _data(shape: Tuple[int, ...], dtype: Any, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)


def _cases() -> Iterator[Tuple[str, Callable[[], Any]]]:
    channel_shapes = [(32, 64, 28, 28), (256, 512), (64, 32, 5), (2, 8, 3000), (7, 13, 17), (3, 5)]
    row_shapes = [((4096, 768), (768,)), ((8, 197, 384), (384,)), ((6, 7, 11), (7, 11)), ((3, 1000003), (1000003,))]
    group_shapes = [((8, 64, 14, 16), 8), ((4, 12, 33), 3), ((2, 6, 12), 6)]
    for dtype in (np.float32, np.float64, np.float16):
        name = np.dtype(dtype).name
        for shape in channel_shapes:
            for offset in (0.0, 1e4):
                for axis in (1, -1):
                    C = shape[axis]
                    x = _data(shape, dtype, 1, offset)
                    w = _data((C,), np.float32, 2)
                    b = _data((C,), np.float32, 3)
                    dy = _data(shape, dtype, 4)
                    tag = f"{name} {shape} offset={offset} channel_axis={axis}"

                    def bn_train(x=x, w=w, b=b, axis=axis, C=C) -> Any:
                        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
                        y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, channel_axis=axis,
                                                       return_stats=True)
                        return y, mean, invstd, rm, rv

                    def bn_eval(x=x, w=w, b=b, axis=axis, C=C) -> Any:
                        rm, rv = _data((C,), np.float32, 5), np.abs(_data((C,), np.float32, 6)) + 0.5
                        return F.batch_norm(x, rm, rv, w, b, training=False, channel_axis=axis)

                    def bn_backward(x=x, w=w, b=b, dy=dy, axis=axis) -> Any:
                        _, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, channel_axis=axis,
                                                       return_stats=True)
                        return (F.batch_norm_backward(dy, x, mean, invstd, w, True, channel_axis=axis),
                                F.batch_norm_backward(dy, x, mean, invstd, w, False, channel_axis=axis))

                    def layer_eval(x=x, w=w, b=b, axis=axis, C=C) -> Any:
                        cls = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d}[x.ndim]
                        layer = cls(C, channel_axis=axis)
                        layer.weight[...] = w
                        layer.bias[...] = b
                        layer(x)
                        layer.eval()
                        return layer(x), layer(x)

                    yield f"batch_norm train {tag}", bn_train
                    yield f"batch_norm eval {tag}", bn_eval
                    yield f"batch_norm_backward {tag}", bn_backward
                    yield f"BatchNorm eval cache {tag}", layer_eval
                    if x.ndim >= 3 and axis == 1:
                        def inst(x=x, w=w, b=b, dy=dy) -> Any:
                            y, mean, rstd = F.instance_norm(x, None, None, w, b, return_stats=True)
                            return y, mean, rstd, F.instance_norm_backward(dy, x, mean, rstd, w)

                        yield f"instance_norm {tag}", inst
        for shape, normalized in row_shapes:
            for offset in (0.0, 1e4):
                x = _data(shape, dtype, 7, offset)
                w = _data(normalized, np.float32, 8)
                b = _data(normalized, np.float32, 9)
                dy = _data(shape, dtype, 10)
                tag = f"{name} {shape} offset={offset}"

                def ln(x=x, w=w, b=b, dy=dy, normalized=normalized) -> Any:
                    y, mean, rstd = F.layer_norm(x, normalized, w, b, return_stats=True)
                    return y, mean, rstd, F.layer_norm_backward(dy, x, normalized, mean, rstd, w, b)

                def rms(x=x, w=w, dy=dy, normalized=normalized) -> Any:
                    y, rstd = F.rms_norm(x, normalized, w, return_stats=True)
                    return y, rstd, F.rms_norm_backward(dy, x, normalized, rstd, w)

                def mom(x=x) -> Any:
                    return F.moments(x, tuple(range(x.ndim - 1)))

                yield f"layer_norm {tag}", ln
                yield f"rms_norm {tag}", rms
                yield f"moments {tag}", mom
        for shape, G in group_shapes:
            for axis in (1, -1):
                C = shape[axis]
                x = _data(shape, dtype, 11, 100.0)
                w = _data((C,), np.float32, 12)
                b = _data((C,), np.float32, 13)
                dy = _data(shape, dtype, 14)

                def gn(x=x, w=w, b=b, dy=dy, axis=axis, G=G) -> Any:
                    y, mean, rstd = F.group_norm(x, G, w, b, channel_axis=axis, return_stats=True)
                    return y, mean, rstd, F.group_norm_backward(dy, x, G, mean, rstd, w, channel_axis=axis)

                yield f"group_norm {name} {shape} G={G} channel_axis={axis}", gn


def fingerprints() -> Dict[str, str]:
    found = {}
    for threads in (1, 2):
        with fastnorm.threads(threads), np.errstate(over="ignore"):  # float16 results may overflow
            for name, case in _cases():
                found[f"{name} threads={threads}"] = _digest(case())
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", metavar="FILE", help="write the fingerprints to FILE (JSON)")
    group.add_argument("--check", metavar="FILE", help="compare with the fingerprints in FILE")
    args = parser.parse_args()
    found = fingerprints()
    if args.record:
        with open(args.record, "w") as f:
            json.dump(found, f, indent=0, sort_keys=True)
        print(f"{len(found)} fingerprints written to {args.record}")
        return 0
    with open(args.check) as f:
        expected = json.load(f)
    differ = sorted(k for k in expected if found.get(k) != expected[k])
    missing = sorted(set(found) - set(expected))
    for k in differ:
        print("differs:", k)
    print(f"{len(expected) - len(differ)} of {len(expected)} identical; {len(missing)} cases not recorded before")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
