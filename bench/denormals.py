"""Subnormal float32 inputs against normal ones, one thread: ``python bench/denormals.py``.
fastnorm does not flush to zero; the point is that subnormals do not slow the kernels much."""
import time

import numpy as np

import fastnorm
import fastnorm.functional as F


def med(f, r=21):
    f()
    ts = []
    for _ in range(r):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e3


rng = np.random.default_rng(0)
normal = rng.standard_normal((8, 64, 64, 64), dtype=np.float32)
tiny = (normal * np.float32(1e-39)).astype(np.float32)   # subnormal float32
assert np.all((np.abs(tiny) < np.finfo(np.float32).tiny) | (tiny == 0))
w, b = np.ones(64, np.float32), np.zeros(64, np.float32)
rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
D = 4096
with fastnorm.threads(1):
    for name, f in [("batch_norm train", lambda x: F.batch_norm(x, None, None, w, b, True)),
                    ("batch_norm eval", lambda x: F.batch_norm(x, rm, rv, w, b, False)),
                    ("layer_norm", lambda x: F.layer_norm(x.reshape(-1, D), D)),
                    ("group_norm", lambda x: F.group_norm(x, 8)),
                    ("instance_norm", lambda x: F.instance_norm(x)),
                    ("rms_norm", lambda x: F.rms_norm(x.reshape(-1, D), D, eps=1e-30))]:
        a, t = med(lambda: f(normal)), med(lambda: f(tiny))
        print(f"{name:18s} normal {a:6.3f} ms  subnormal {t:6.3f} ms  ratio {t / a:4.2f}")
