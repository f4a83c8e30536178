"""``python -m fastnorm bench``: fastnorm against a NumPy baseline and PyTorch, per case and thread count.

Each case times fastnorm, the NumPy baseline and PyTorch (when installed) interleaved in the same process,
and reports medians, ratios, the bandwidth fastnorm reaches (bytes of x read plus y written, once each)
and its fraction of the machine's copy bandwidth (a memcpy of the largest input by as many threads,
measured in the same run).
"""
import time

import numpy as np

from . import _kernels
from . import functional as F
from ._threads import get_num_threads, threads

try:
    import torch
except ImportError:  # the PyTorch column is left out
    torch = None

BATCH_NORM_SHAPES = [(32, 64, 56, 56), (8, 256, 14, 14), (1, 64, 112, 112), (256, 512)]


def _median_times(functions, repeat):
    """Median seconds per call of each function, calls interleaved so that drift hits all alike."""
    for f in functions:
        f()
    samples = [[] for _ in functions]
    for _ in range(repeat):
        for f, s in zip(functions, samples):
            t0 = time.perf_counter()
            f()
            s.append(time.perf_counter() - t0)
    return [float(np.median(s)) for s in samples]


def _numpy_batch_norm(x, axis, weight, bias, eps, mean=None, var=None):
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    if mean is None:
        mean, var = x.mean(axis=reduce), x.var(axis=reduce)
    scale = (weight / np.sqrt(var + eps)).reshape(shape)
    return (x - mean.reshape(shape)) * scale + bias.reshape(shape)


def batch_norm_cases():
    """(name, shape, channel_axis, training) for every bench case of BatchNorm."""
    for shape in BATCH_NORM_SHAPES:
        layouts = [("NCHW", 1), ("NHWC", -1)] if len(shape) == 4 else [("NC", 1)]
        for layout, axis in layouts:
            for training in (True, False):
                mode = "train" if training else "eval"
                dims = shape if axis == 1 else (shape[0], *shape[2:], shape[1])
                yield f"batch_norm {mode} {layout} {dims}", dims, axis, training


def make_batch_norm_case(shape, axis, training, dtype=np.float32, seed=0):
    """Callables (fastnorm, numpy, torch or None) for one case, on the same data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    C = shape[axis]
    weight, bias = np.ones(C, dtype), np.zeros(C, dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    ax = axis % x.ndim

    # Each implementation allocates its output, as a user's ``y = bn(x)`` does.
    def ours():
        F.batch_norm(x, rm, rv, weight, bias, training, 0.1, 1e-5, channel_axis=axis)

    def baseline():
        _numpy_batch_norm(x, ax, weight, bias, 1e-5, None if training else rm, None if training else rv)

    theirs = None
    if torch is not None:
        if axis == 1:
            xt = torch.from_numpy(x)
        else:  # the same memory, seen by PyTorch as a channels_last NCHW tensor
            xt = torch.from_numpy(x).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
        rmt, rvt = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        wt, bt = torch.from_numpy(weight), torch.from_numpy(bias)

        def theirs():
            with torch.no_grad():
                torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, training, 0.1, 1e-5)

    return x, ours, baseline, theirs


# (name, shape, fastnorm call, numpy baseline, torch call) for the rest of the family.
def _numpy_rows(x, axes, rms=False):
    if rms:
        return x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + 1e-6)
    return (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)


def family_cases():
    """(name, shape, make) where make(x) returns (fastnorm, numpy, torch or None) callables."""
    def layer_norm(x):
        D = x.shape[-1]
        w, b = np.ones(D, x.dtype), np.zeros(D, x.dtype)
        ours = lambda: F.layer_norm(x, D, w, b)
        base = lambda: _numpy_rows(x, -1) * w + b
        theirs = None
        if torch is not None:
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            theirs = lambda: torch.nn.functional.layer_norm(xt, (D,), wt, bt)
        return ours, base, theirs

    def rms_norm(x):
        D = x.shape[-1]
        w = np.ones(D, x.dtype)
        ours = lambda: F.rms_norm(x, D, w, 1e-6)
        base = lambda: _numpy_rows(x, -1, rms=True) * w
        theirs = None
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            theirs = lambda: torch.nn.functional.rms_norm(xt, (D,), wt, 1e-6)
        return ours, base, theirs

    def group_norm(x, groups=32):
        N, C = x.shape[:2]
        w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        ours = lambda: F.group_norm(x, groups, w, b)
        base = lambda: _numpy_rows(x.reshape(N, groups, -1), -1).reshape(x.shape) * w[:, None, None] + b[:, None, None]
        theirs = None
        if torch is not None:
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            theirs = lambda: torch.nn.functional.group_norm(xt, groups, wt, bt)
        return ours, base, theirs

    def instance_norm(x):
        C = x.shape[1]
        w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        ours = lambda: F.instance_norm(x, None, None, w, b)
        base = lambda: _numpy_rows(x, (2, 3)) * w[:, None, None] + b[:, None, None]
        theirs = None
        if torch is not None:
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            theirs = lambda: torch.nn.functional.instance_norm(xt, None, None, wt, bt)
        return ours, base, theirs

    def batch_norm_backward(x):
        C = x.shape[1]
        g = np.random.default_rng(1).standard_normal(x.shape, dtype=np.float32)
        w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        _, mean, invstd = F.batch_norm(x, None, None, w, b, True, return_stats=True)
        ours = lambda: F.batch_norm_backward(g, x, mean, invstd, w)
        axes = (0, 2, 3)

        def base():
            xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
            db, dw = g.sum(axis=axes), (g * xhat).sum(axis=axes)
            n = x.size // C
            return (w / np.sqrt(x.var(axis=axes) + 1e-5))[:, None, None] * (
                g - (db / n)[:, None, None] - xhat * (dw / n)[:, None, None])
        return ours, base, _torch_backward(lambda xt, wt, bt: torch.nn.functional.batch_norm(
            xt, None, None, wt, bt, True), x, g, w, b)

    def layer_norm_backward(x):
        D = x.shape[-1]
        g = np.random.default_rng(1).standard_normal(x.shape, dtype=np.float32)
        w, b = np.ones(D, x.dtype), np.zeros(D, x.dtype)
        _, mean, rstd = F.layer_norm(x, D, w, b, return_stats=True)
        ours = lambda: F.layer_norm_backward(g, x, D, mean, rstd, w, b)

        def base():
            xhat = _numpy_rows(x, -1)
            wg = g * w
            r = 1 / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5)
            dx = r * (wg - wg.mean(-1, keepdims=True) - xhat * (wg * xhat).mean(-1, keepdims=True))
            return dx, (g * xhat).sum(0), g.sum(0)
        return ours, base, _torch_backward(lambda xt, wt, bt: torch.nn.functional.layer_norm(
            xt, (D,), wt, bt), x, g, w, b)

    yield "layer_norm (4096, 768)", (4096, 768), layer_norm
    yield "layer_norm (8, 197, 384)", (8, 197, 384), layer_norm
    yield "group_norm G=32 (8, 256, 32, 32)", (8, 256, 32, 32), group_norm
    yield "instance_norm (8, 64, 64, 64)", (8, 64, 64, 64), instance_norm
    yield "rms_norm (4096, 4096)", (4096, 4096), rms_norm
    yield "batch_norm backward (32, 64, 56, 56)", (32, 64, 56, 56), batch_norm_backward
    yield "layer_norm backward (4096, 768)", (4096, 768), layer_norm_backward


def _torch_backward(forward, x, g, w, b):
    """PyTorch autograd of ``forward`` (the graph built once; each call runs the backward only)."""
    if torch is None:
        return None
    xt = torch.from_numpy(x).requires_grad_()
    wt, bt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    yt = forward(xt, wt, bt)
    gt = torch.from_numpy(g)
    return lambda: torch.autograd.grad(yt, (xt, wt, bt), gt, retain_graph=True)


def all_cases():
    """(name, x, fastnorm, numpy, torch or None) for every bench case, built lazily."""
    for name, shape, axis, training in batch_norm_cases():
        yield name, lambda shape=shape, axis=axis, training=training: make_batch_norm_case(shape, axis, training)
    for name, shape, make in family_cases():
        def build(shape=shape, make=make):
            x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            return (x,) + make(x)
        yield name, build


def latency_cases():
    """(name, fastnorm layer, torch module or None, shape) of the tiny eval-mode calls of a CPU service."""
    from . import layers as L

    def pair(ours, theirs):
        ours.eval()
        if theirs is not None:
            theirs.eval()
        return ours, theirs

    nn = torch.nn if torch is not None else None
    for shape in [(1, 16, 8, 8), (1, 64, 7, 7)]:
        C = shape[1]
        yield "BatchNorm2d", *pair(L.BatchNorm2d(C), nn and nn.BatchNorm2d(C)), shape
        yield "GroupNorm", *pair(L.GroupNorm(4, C), nn and nn.GroupNorm(4, C)), shape
        yield "InstanceNorm2d", *pair(L.InstanceNorm2d(C), nn and nn.InstanceNorm2d(C)), shape
    yield "BatchNorm1d", *pair(L.BatchNorm1d(768), nn and nn.BatchNorm1d(768)), (1, 768)
    yield "LayerNorm", *pair(L.LayerNorm(768), nn and nn.LayerNorm(768)), (1, 768)
    yield "RMSNorm", *pair(L.RMSNorm(768), nn and nn.RMSNorm(768)), (1, 768)


def run_latency(repeat=7, number=2000, print_fn=print):
    """Microseconds per eval-mode layer call on tiny inputs, fastnorm under no_grad() vs PyTorch modules
    under torch.no_grad(), one thread each."""
    import timeit

    from .layers import no_grad

    print_fn(f"\nlatency of one eval-mode layer call, 1 thread (best of {repeat} x {number} calls)")
    print_fn(f"{'layer':<16}{'input':<16}{'fastnorm':>10}" + (f"{'torch':>10}{'x torch':>9}" if torch else ""))
    rows = []
    if torch is not None:
        torch.set_num_threads(1)
    with threads(1), no_grad():
        for name, ours, theirs, shape in latency_cases():
            x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            t_ours = min(timeit.repeat(lambda: ours(x), number=number, repeat=repeat)) / number * 1e6
            line = f"{name:<16}{str(shape):<16}{t_ours:>8.2f}us"
            row = dict(layer=name, shape=shape, fastnorm_us=t_ours)
            if theirs is not None:
                xt = torch.from_numpy(x)
                with torch.no_grad():
                    t_theirs = min(timeit.repeat(lambda: theirs(xt), number=number, repeat=repeat)) / number * 1e6
                line += f"{t_theirs:>8.2f}us{t_theirs / t_ours:>8.2f}x"
                row["torch_us"] = t_theirs
            print_fn(line)
            rows.append(row)
    return rows


def run_shared_layer_throughput(calls=200, shape=(8, 256, 14, 14), print_fn=print):
    """Calls per second of one eval-mode BatchNorm2d shared by 1 and by 2 Python threads, each call on
    its own input with one kernel thread (the GIL is released in the kernels)."""
    import threading

    from .layers import BatchNorm2d, no_grad

    layer = BatchNorm2d(shape[1]).eval()
    inputs = [np.random.default_rng(k).standard_normal(shape, dtype=np.float32) for k in range(2)]

    def work(x):
        with threads(1), no_grad():
            for _ in range(calls):
                layer(x)

    rates = {}
    for n in (1, 2):
        best = float("inf")
        for _ in range(5):
            pool = [threading.Thread(target=work, args=(inputs[k],)) for k in range(n)]
            t0 = time.perf_counter()
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            best = min(best, time.perf_counter() - t0)
        rates[n] = n * calls / best
    print_fn(f"\none eval BatchNorm2d shared by Python threads, input {shape}, 1 kernel thread per call:")
    print_fn(f"  1 thread: {rates[1]:.0f} calls/s   2 threads: {rates[2]:.0f} calls/s   "
             f"scaling {rates[2] / rates[1]:.2f}x")
    return rates


def copy_bandwidth(nbytes, repeat, nthreads=1):
    """GB/s (bytes read + bytes written) of a copy of ``nbytes`` by ``nthreads`` threads (memcpy of one
    slice each; with one thread, what ``np.copyto`` does)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    (seconds,) = _median_times([lambda: _kernels.parallel_copy(src, dst, nthreads)], repeat)
    return 2 * src.nbytes / seconds / 1e9


def run(thread_counts=None, repeat=15, name_filter="", print_fn=print):
    """Print the bench table; returns its rows as dicts."""
    if thread_counts is None:
        thread_counts = sorted({1, get_num_threads()})
    rows = []
    largest = max(int(np.prod(s)) for s in BATCH_NORM_SHAPES) * 4
    header = (f"{'case':<44}{'thr':>4}{'fastnorm':>11}{'numpy':>11}{'x numpy':>9}"
              + (f"{'torch':>11}{'x torch':>9}" if torch is not None else "") + f"{'GB/s':>8}{'of copy':>9}")
    print_fn(f"fastnorm bench: float32, median of {repeat} calls; 'x' columns = their time / fastnorm's")
    simd = "AVX2+FMA" if _kernels.fast_isa() else "generic"
    print_fn(f"statistics passes: {simd}; PyTorch: {torch.__version__ if torch is not None else 'not installed'}")
    if torch is None:
        print_fn("(PyTorch is not installed: its columns are left out)")
    for n in thread_counts:
        if torch is not None:
            torch.set_num_threads(n)
        with threads(n):
            copy = copy_bandwidth(largest, repeat, n)
            print_fn(f"\nthreads={n}: copy bandwidth {copy:.1f} GB/s (read + write; memcpy, {n} thread"
                     f"{'s' if n > 1 else ''})")
            print_fn(header)
            for name, build in all_cases():
                if name_filter not in name:
                    continue
                x, ours, baseline, theirs = build()
                funcs = [ours, baseline] + ([theirs] if theirs is not None else [])
                times = _median_times(funcs, repeat)
                # bytes each element moves at least: x read, y written; backward also reads dy
                gbps = (3 if "backward" in name else 2) * x.nbytes / times[0] / 1e9
                line = (f"{name:<44}{n:>4}{times[0] * 1e3:>9.3f}ms{times[1] * 1e3:>9.3f}ms"
                        f"{times[1] / times[0]:>8.2f}x")
                row = dict(case=name, threads=n, fastnorm_s=times[0], numpy_s=times[1], gbps=gbps,
                           copy_fraction=gbps / copy)
                if theirs is not None:
                    line += f"{times[2] * 1e3:>9.3f}ms{times[2] / times[0]:>8.2f}x"
                    row["torch_s"] = times[2]
                line += f"{gbps:>8.1f}{gbps / copy:>8.0%}"
                print_fn(line)
                rows.append(row)
    if not name_filter or name_filter == "latency":
        run_latency(print_fn=print_fn)
        run_shared_layer_throughput(print_fn=print_fn)
    return rows
