"""``python -m fastnorm bench``: fastnorm against a NumPy baseline and PyTorch, per case and thread count.

The report is a list of sections (``SECTIONS``), each a function that prints its table row by row as it
measures and returns its rows: the kernel cases, the latency of tiny eval calls, one layer shared by
Python threads, fastnorm between the matmuls of a pipeline step (``_bench_pipeline``, also
``bench/pipeline.py``), and the fused calls against their composition (``_bench_fused``, also
``bench/fused.py``).  In the table of kernel cases, each case times fastnorm, the NumPy
baseline, PyTorch (when installed) and a copy of the bytes the call must move, interleaved in the same
rounds with the same threads and the same cache state, and reports each one's median with its p25-p75
spread, the ratios, fastnorm's bandwidth and its fraction of the copy's speed.
"""
import functools
import importlib
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _kernels
from . import functional as F
from ._threads import get_num_threads, threads
from .layers import _Layer


def _optional_module(name: str) -> Any:
    """The module, or None where it is not installed (typed Any: its stubs may be missing too)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


torch = _optional_module("torch")  # None: the PyTorch column is left out

BATCH_NORM_SHAPES = [(32, 64, 56, 56), (8, 256, 14, 14), (1, 64, 112, 112), (256, 512)]


_Call = Callable[[], object]
_Implementations = Tuple[_Call, _Call, Optional[_Call]]  # fastnorm, NumPy, PyTorch (None: not installed)
_Row = Dict[str, Any]  # a row of a report's section, as the JSON report holds it


class Calls(NamedTuple):
    """One case's callables on the same data, and the bytes each call must move at least."""
    fastnorm: Callable[[], object]
    numpy: Callable[[], object]
    torch: Optional[Callable[[], object]]
    moved: int  # x read and y written once each; a backward also reads dy


class Case(NamedTuple):
    name: str
    shape: Tuple[int, ...]
    build: Callable[[], Calls]  # allocates the data: call it when the case is about to run

    @property
    def id(self) -> str:
        """The name, short and without spaces: ``batch_norm-train-NCHW-32x64x56x56``."""
        words = self.name.replace(", ", "x").replace("(", "").replace(")", "").split()
        return "-".join(words)


def _print(line: str) -> None:
    print(line, flush=True)  # each row as it is measured, also when stdout is a pipe


_junk: List[NDArray[np.float32]] = []


def _evict() -> None:
    """Write twice the last-level cache, so that the next call starts with its data in memory only."""
    if not _junk:
        _junk.append(np.ones(_kernels.last_level_cache_bytes() // 2, np.float32))
    np.add(_junk[0], 1, out=_junk[0])


def time_interleaved(functions: Sequence[_Call], repeat: int, evict: bool = True) -> List[Tuple[float, float, float]]:
    """(p25, median, p75) seconds per call of each function.

    ``repeat`` rounds each call every function once, the order rotating from round to round, so that a
    drift of the machine's speed hits all of them alike.  With ``evict`` the caches are evicted before
    every call (as in a network, where other layers run in between), so all start from the same state.
    """
    for f in functions:
        f()  # first-call costs: lazy initialisation, first-touch page faults of reused buffers
    samples: List[List[float]] = [[] for _ in functions]
    for r in range(repeat):
        for k in range(len(functions)):
            i = (r + k) % len(functions)
            if evict:
                _evict()
            t0 = time.perf_counter()
            functions[i]()
            samples[i].append(time.perf_counter() - t0)
    quartiles = [np.percentile(s, [25, 50, 75]) for s in samples]
    return [(float(p25), float(median), float(p75)) for p25, median, p75 in quartiles]


def copy_of(moved: int, nthreads: int) -> Callable[[], None]:
    """A copy moving ``moved`` bytes (half read, half written) by ``nthreads`` threads, storing as the
    kernels store their output: the floor of a call that must move as many."""
    src = np.ones(max(1, moved // 8), np.uint32)
    dst = np.empty_like(src)
    return lambda: _kernels.parallel_copy(src, dst, nthreads)


def _numpy_batch_norm(x: NDArray[Any], axis: int, weight: NDArray[Any], bias: NDArray[Any], eps: float,
                      mean: Optional[NDArray[Any]] = None, var: Optional[NDArray[Any]] = None) -> NDArray[Any]:
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    m, v = (x.mean(axis=reduce), x.var(axis=reduce)) if mean is None or var is None else (mean, var)
    scale = (weight / np.sqrt(v + eps)).reshape(shape)
    y: NDArray[Any] = (x - m.reshape(shape)) * scale + bias.reshape(shape)
    return y


def batch_norm_cases() -> Iterator[Case]:
    """A Case for every bench case of BatchNorm."""
    for shape in BATCH_NORM_SHAPES:
        layouts = [("NCHW", 1), ("NHWC", -1)] if len(shape) == 4 else [("NC", 1)]
        for layout, axis in layouts:
            for training in (True, False):
                mode = "train" if training else "eval"
                dims = shape if axis == 1 else (shape[0], *shape[2:], shape[1])
                yield Case(f"batch_norm {mode} {layout} {dims}", dims,
                           functools.partial(make_batch_norm_case, dims, axis, training))


def make_batch_norm_case(shape: Tuple[int, ...], axis: int, training: bool, dtype: DTypeLike = np.float32,
                         seed: int = 0) -> Calls:
    """Calls of one case, on the same data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    C = shape[axis]
    weight, bias = np.ones(C, dtype), np.zeros(C, dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    ax = axis % x.ndim

    # Each implementation allocates its output, as a user's ``y = bn(x)`` does.
    def ours() -> None:
        F.batch_norm(x, rm, rv, weight, bias, training, 0.1, 1e-5, channel_axis=axis)

    def baseline() -> None:
        _numpy_batch_norm(x, ax, weight, bias, 1e-5, None if training else rm, None if training else rv)

    theirs: Optional[_Call] = None
    if torch is not None:
        if axis == 1:
            xt = torch.from_numpy(x)
        else:  # the same memory, seen by PyTorch as a channels_last NCHW tensor
            xt = torch.from_numpy(x).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
        rmt, rvt = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        wt, bt = torch.from_numpy(weight), torch.from_numpy(bias)

        def run_torch() -> None:
            with torch.no_grad():
                torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, training, 0.1, 1e-5)

        theirs = run_torch

    return Calls(ours, baseline, theirs, 2 * x.nbytes)


def _numpy_rows(x: NDArray[Any], axes: Union[int, Tuple[int, ...]], rms: bool = False) -> NDArray[Any]:
    y: NDArray[Any]
    if rms:
        y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + 1e-6)
    else:
        y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
    return y


def family_cases() -> Iterator[Case]:
    """A Case for every bench case of the rest of the family and of the backward passes."""
    def layer_norm(x: NDArray[np.float32]) -> _Implementations:
        D = x.shape[-1]
        w, b = np.ones(D, x.dtype), np.zeros(D, x.dtype)
        ours = lambda: F.layer_norm(x, D, w, b)
        base = lambda: _numpy_rows(x, -1) * w + b
        theirs: Optional[_Call] = None
        if torch is not None:
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            theirs = lambda: torch.nn.functional.layer_norm(xt, (D,), wt, bt)
        return ours, base, theirs

    def rms_norm(x: NDArray[np.float32]) -> _Implementations:
        D = x.shape[-1]
        w = np.ones(D, x.dtype)
        ours = lambda: F.rms_norm(x, D, w, 1e-6)
        base = lambda: _numpy_rows(x, -1, rms=True) * w
        theirs: Optional[_Call] = None
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            theirs = lambda: torch.nn.functional.rms_norm(xt, (D,), wt, 1e-6)
        return ours, base, theirs

    def group_norm(x: NDArray[np.float32], groups: int = 32) -> _Implementations:
        N, C = x.shape[:2]
        w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        ours = lambda: F.group_norm(x, groups, w, b)
        base = lambda: _numpy_rows(x.reshape(N, groups, -1), -1).reshape(x.shape) * w[:, None, None] + b[:, None, None]
        theirs: Optional[_Call] = None
        if torch is not None:
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            theirs = lambda: torch.nn.functional.group_norm(xt, groups, wt, bt)
        return ours, base, theirs

    def instance_norm(x: NDArray[np.float32]) -> _Implementations:
        C = x.shape[1]
        w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        ours = lambda: F.instance_norm(x, None, None, w, b)
        base = lambda: _numpy_rows(x, (2, 3)) * w[:, None, None] + b[:, None, None]
        theirs: Optional[_Call] = None
        if torch is not None:
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            theirs = lambda: torch.nn.functional.instance_norm(xt, None, None, wt, bt)
        return ours, base, theirs

    def batch_norm_backward(x: NDArray[np.float32]) -> _Implementations:
        C = x.shape[1]
        g = np.random.default_rng(1).standard_normal(x.shape, dtype=np.float32)
        w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
        _, mean, invstd = F.batch_norm(x, None, None, w, b, True, return_stats=True)
        ours = lambda: F.batch_norm_backward(g, x, mean, invstd, w)
        axes = (0, 2, 3)

        def base() -> NDArray[Any]:
            xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
            db, dw = g.sum(axis=axes), (g * xhat).sum(axis=axes)
            n = x.size // C
            dx: NDArray[Any] = (w / np.sqrt(x.var(axis=axes) + 1e-5))[:, None, None] * (
                g - (db / n)[:, None, None] - xhat * (dw / n)[:, None, None])
            return dx
        return ours, base, _torch_backward(lambda xt, wt, bt: torch.nn.functional.batch_norm(
            xt, None, None, wt, bt, True), x, g, w, b)

    def layer_norm_backward(x: NDArray[np.float32]) -> _Implementations:
        D = x.shape[-1]
        g = np.random.default_rng(1).standard_normal(x.shape, dtype=np.float32)
        w, b = np.ones(D, x.dtype), np.zeros(D, x.dtype)
        _, mean, rstd = F.layer_norm(x, D, w, b, return_stats=True)
        ours = lambda: F.layer_norm_backward(g, x, D, mean, rstd, w, b)

        def base() -> Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
            xhat = _numpy_rows(x, -1)
            wg = g * w
            r = 1 / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5)
            dx = r * (wg - wg.mean(-1, keepdims=True) - xhat * (wg * xhat).mean(-1, keepdims=True))
            return dx, (g * xhat).sum(0), g.sum(0)
        return ours, base, _torch_backward(lambda xt, wt, bt: torch.nn.functional.layer_norm(
            xt, (D,), wt, bt), x, g, w, b)

    def case(name: str, shape: Tuple[int, ...], make: Callable[[NDArray[np.float32]], _Implementations],
             passes: int = 2) -> Case:  # passes: arrays of x's size the call reads or writes
        def build() -> Calls:
            x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            return Calls(*make(x), passes * x.nbytes)
        return Case(f"{name} {shape}", shape, build)

    yield case("layer_norm", (4096, 768), layer_norm)
    yield case("layer_norm", (8, 197, 384), layer_norm)
    yield case("group_norm G=32", (8, 256, 32, 32), group_norm)
    yield case("instance_norm", (8, 64, 64, 64), instance_norm)
    yield case("rms_norm", (4096, 4096), rms_norm)
    yield case("batch_norm backward", (32, 64, 56, 56), batch_norm_backward, passes=3)
    yield case("layer_norm backward", (4096, 768), layer_norm_backward, passes=3)


def _torch_backward(forward: Callable[[Any, Any, Any], Any], x: NDArray[Any], g: NDArray[Any], w: NDArray[Any],
                    b: NDArray[Any]) -> Optional[_Call]:
    """PyTorch autograd of ``forward`` (the graph built once; each call runs the backward only)."""
    if torch is None:
        return None
    xt = torch.from_numpy(x).requires_grad_()
    wt, bt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    yt = forward(xt, wt, bt)
    gt = torch.from_numpy(g)
    return lambda: torch.autograd.grad(yt, (xt, wt, bt), gt, retain_graph=True)


def all_cases() -> Iterator[Case]:
    """Every Case of the kernel table (their data is allocated by ``build``)."""
    yield from batch_norm_cases()
    yield from family_cases()


def latency_cases() -> Iterator[Tuple[str, _Layer, Any, Tuple[int, ...]]]:
    """(name, fastnorm layer, torch module or None, shape) of the tiny eval-mode calls of a CPU service."""
    from . import layers as L

    def pair(ours: _Layer, theirs: Any) -> Tuple[_Layer, Any]:
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


def run_latency(repeat: int = 7, number: int = 2000, print_fn: Callable[[str], None] = _print) -> List[_Row]:
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
            row: _Row = dict(layer=name, shape=shape, fastnorm_us=t_ours)
            if theirs is not None and torch is not None:
                xt = torch.from_numpy(x)
                with torch.no_grad():
                    t_theirs = min(timeit.repeat(lambda: theirs(xt), number=number, repeat=repeat)) / number * 1e6
                line += f"{t_theirs:>8.2f}us{t_theirs / t_ours:>8.2f}x"
                row["torch_us"] = t_theirs
            print_fn(line)
            rows.append(row)
    return rows


def run_shared_layer_throughput(calls: int = 200, shape: Tuple[int, ...] = (8, 256, 14, 14),
                                print_fn: Callable[[str], None] = _print) -> List[_Row]:
    """Calls per second of one eval-mode BatchNorm2d shared by 1 and by 2 Python threads, each call on
    its own input with one kernel thread (the GIL is released in the kernels)."""
    import threading

    from .layers import BatchNorm2d, no_grad

    layer = BatchNorm2d(shape[1]).eval()
    inputs = [np.random.default_rng(k).standard_normal(shape, dtype=np.float32) for k in range(2)]

    def work(x: NDArray[np.float32]) -> None:
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
    return [dict(python_threads=n, shape=shape, calls_per_s=rate) for n, rate in rates.items()]


class Settings(NamedTuple):
    thread_counts: List[int]
    repeat: int = 15
    name_filter: str = ""  # a section runs what matches: cases by their name, other sections by theirs
    evict: bool = True
    print_fn: Callable[[str], None] = _print


def measure_case(case: Case, nthreads: int, repeat: int, evict: bool = True) -> _Row:
    """One row of the kernel table: the p25, median and p75 seconds of fastnorm, the NumPy baseline,
    PyTorch (when installed) and the copy of the same bytes, timed in the same rounds on ``nthreads``."""
    calls = case.build()
    given = {"fastnorm": calls.fastnorm, "numpy": calls.numpy, "torch": calls.torch,
             "copy": copy_of(calls.moved, nthreads)}
    named = {k: f for k, f in given.items() if f is not None}
    row: _Row = dict(case=case.name, shape=list(case.shape), threads=nthreads, moved_bytes=calls.moved)
    for k, (p25, median, p75) in zip(named, time_interleaved(list(named.values()), repeat, evict)):
        row.update({f"{k}_s": median, f"{k}_p25_s": p25, f"{k}_p75_s": p75})
    ours, copy = row["fastnorm_s"], row["copy_s"]
    row["gbps"] = calls.moved / ours / 1e9
    # The floor of the bytes is the faster of the copy and fastnorm itself: a call faster than the copy
    # is at the floor (100%), and flagged, rather than shown above it.
    row["faster_than_copy"] = ours < copy
    row["copy_fraction"] = min(copy, ours) / ours
    return row


def _table_line(row: Mapping[str, Any], width: int) -> str:
    ours = row["fastnorm_s"]
    line = f"{row['case']:<{width}}{row['threads']:>3}"
    for k in ("fastnorm", "numpy", "torch"):
        if f"{k}_s" in row:
            median = row[f"{k}_s"]
            spread = f"±{(row[f'{k}_p75_s'] - row[f'{k}_p25_s']) / 2 / median:.0%}"
            line += f"{median * 1e3:>9.3f}ms{spread:>6}"
            if k != "fastnorm":
                line += f"{median / ours:>7.2f}x"
    return line + f"{row['gbps']:>7.1f}{row['copy_fraction']:>8.0%}" + ("*" if row["faster_than_copy"] else "")


def run_cases(settings: Settings) -> List[_Row]:
    """The kernel table: each case whose name contains the filter, at each thread count."""
    cases = [case for case in all_cases() if settings.name_filter in case.name]
    if not cases:
        return []
    out = settings.print_fn
    width = max(len(case.name) for case in cases) + 2
    header = (f"{'case':<{width}}{'thr':>3}{'fastnorm':>17}{'numpy':>17}{'x numpy':>8}"
              + (f"{'torch':>17}{'x torch':>8}" if torch is not None else "") + f"{'GB/s':>7}{'of copy':>9}")
    rows = []
    torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        for n in settings.thread_counts:
            if torch is not None:
                torch.set_num_threads(n)
            out(f"\nthreads={n}")
            out(header)
            with threads(n):
                for case in cases:
                    rows.append(measure_case(case, n, settings.repeat, settings.evict))
                    out(_table_line(rows[-1], width))
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
    if any(row["faster_than_copy"] for row in rows):
        out("* faster than the copy of its bytes (within the spread, or where the copy stored otherwise): "
            "the call is at the floor")
    return rows


def run_latency_section(settings: Settings) -> List[_Row]:
    return run_latency(print_fn=settings.print_fn) if settings.name_filter in "latency" else []


def run_shared_layer_section(settings: Settings) -> List[_Row]:
    return run_shared_layer_throughput(print_fn=settings.print_fn) if settings.name_filter in "shared layer" else []


def run_pipeline_section(settings: Settings) -> List[_Row]:
    if settings.name_filter not in "pipeline":
        return []
    from ._bench_pipeline import run_pipeline
    return run_pipeline(repeat=settings.repeat, print_fn=settings.print_fn)


# (name, function(settings) -> rows): the report's sections, in order.  Each prints its table as it
# measures and runs only what matches the filter (an empty filter matches everything).
SECTIONS: List[Tuple[str, Callable[[Settings], List[_Row]]]] = [
    ("kernels", run_cases),
    ("latency", run_latency_section),
    ("shared layer", run_shared_layer_section),
    ("pipeline", run_pipeline_section),
    ("fused", lambda settings: _fused_section(settings)),
]


def _fused_section(settings: Settings) -> List[_Row]:
    from ._bench_fused import run_fused  # a module of its own (it imports this one)
    return run_fused(settings)


def setup(settings: Settings) -> Dict[str, Any]:
    """What the figures depend on: versions, build, machine and the bench's own settings."""
    from . import show_config

    facts = show_config(print_out=False)
    facts.update(torch=torch.__version__ if torch is not None else None, cpus=os.cpu_count(),
                 thread_counts=list(settings.thread_counts), repeat=settings.repeat,
                 caches="evicted before every call" if settings.evict else "hot",
                 argv=sys.argv[1:])
    return facts


def run(thread_counts: Optional[Sequence[int]] = None, repeat: int = 15, name_filter: str = "", evict: bool = True,
        print_fn: Callable[[str], None] = _print) -> Dict[str, Any]:
    """Print every section as it is measured; returns the report: ``setup`` and each section's rows."""
    if thread_counts is None:
        thread_counts = sorted({1, get_num_threads()})
    settings = Settings(list(thread_counts), repeat, name_filter, evict, print_fn)
    report: Dict[str, Any] = dict(setup=setup(settings), sections={})
    print_fn(f"fastnorm bench: float32, median of {repeat} calls ± half their p25-p75 range; "
             f"'x' columns = their median / fastnorm's; caches {report['setup']['caches']}")
    print_fn("'of copy': time of a copy of the bytes the call must move (x read and y written; a backward "
             "also reads dy), by as many threads in the same rounds, over fastnorm's time")
    print_fn(f"C loops: ISA level {_kernels.get_isa()}; "
             f"PyTorch: {torch.__version__ if torch is not None else 'not installed (its columns are left out)'}")
    for name, section in SECTIONS:
        rows = section(settings)
        if rows:
            report["sections"][name] = rows
    return report


def plot(report: Mapping[str, Any], path: str) -> None:
    """Save a figure of the kernel table: each case's time relative to fastnorm's (NumPy, PyTorch and the
    copy of the same bytes), one panel per thread count, bars at the median, whiskers p25 to p75."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = report["sections"].get("kernels", [])
    counts = sorted({row["threads"] for row in rows}) or [1]
    cases = list(dict.fromkeys(row["case"] for row in rows))
    others = [k for k in ("numpy", "torch", "copy") if any(f"{k}_s" in row for row in rows)]
    labels = {"numpy": "NumPy", "torch": "PyTorch", "copy": "copy of the same bytes"}
    fig, axes = plt.subplots(1, len(counts), figsize=(4 + 4 * len(counts), 1.5 + 0.18 * len(cases) * len(others)),
                             sharey=True, squeeze=False)
    height = 0.8 / max(1, len(others))
    for ax, n in zip(axes[0], counts):
        by_case = {row["case"]: row for row in rows if row["threads"] == n}
        for j, k in enumerate(others):
            bars = [(i, by_case[case]) for i, case in enumerate(cases) if f"{k}_s" in by_case.get(case, {})]
            ratio = [row[f"{k}_s"] / row["fastnorm_s"] for _, row in bars]
            spread = [[r - row[f"{k}_p25_s"] / row["fastnorm_s"] for r, (_, row) in zip(ratio, bars)],
                      [row[f"{k}_p75_s"] / row["fastnorm_s"] - r for r, (_, row) in zip(ratio, bars)]]
            ax.barh([i + (j - (len(others) - 1) / 2) * height for i, _ in bars], ratio, height, xerr=spread,
                    label=labels[k], error_kw=dict(linewidth=0.8))
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{n} thread{'s' if n > 1 else ''}")
        ax.set_xlabel("time / fastnorm's time")
    axes[0][0].set_yticks(range(len(cases)), cases)
    axes[0][0].set_ylim(len(cases) - 0.5, -0.5)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(others), frameon=False)
    fig.suptitle(f"fastnorm {report['setup']['fastnorm']}: median of {report['setup']['repeat']} calls "
                 f"(whiskers p25-p75), caches {report['setup']['caches']}")
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)
