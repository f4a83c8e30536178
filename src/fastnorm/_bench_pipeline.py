"""The "pipeline" section of ``python -m fastnorm bench`` (also ``bench/pipeline.py``): fastnorm between the
matmuls of NumPy, PyTorch and ONNX Runtime in the step ``h = x @ W1; h = bn(h); h = ln(h); y = h @ W2``, at
its default thread count and at one, and its two calls alone, interleaved in one process; then the step's
calls and matmuls timed apart within it.
"""
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

from ._bench import _print, _Row, torch
from ._threads import get_num_threads, threads
from .layers import BatchNorm1d, LayerNorm, _running_stats

_Matmul = Callable[[NDArray[np.float32], NDArray[np.float32]], NDArray[Any]]
_PipelineKey = Tuple[str, str, int]  # (matmul library, part: "step", "alone", ..., fastnorm's thread count)


def _onnx_matmul(W: NDArray[np.float32], nthreads: Optional[int], spinning: bool = True
                 ) -> Optional[Callable[[NDArray[np.float32]], NDArray[Any]]]:
    """An ONNX Runtime session computing ``x @ W`` (W an initializer), or None without onnx/onnxruntime;
    without ``spinning``, its idle threads sleep between runs (``session.intra_op.allow_spinning`` 0)."""
    try:
        import onnx  # noqa: F401  (onnxruntime's models are built with it below)
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, W.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, W.shape[1]])],
        [numpy_helper.from_array(W, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = onnxruntime.SessionOptions()
    if nthreads is not None:
        options.intra_op_num_threads = nthreads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def matmul(x: NDArray[np.float32]) -> NDArray[Any]:
        return np.asarray(session.run(None, {"x": x})[0])
    return matmul


def _by_weight(sessions: Dict[int, Callable[[NDArray[np.float32]], NDArray[Any]]]) -> _Matmul:
    """``a @ W`` by the session made for W."""
    return lambda a, W: sessions[id(W)](a)


def pipeline_steps(shape: Tuple[int, int] = (2048, 1024), nthreads: Optional[int] = None, seed: int = 0
                   ) -> Tuple[NDArray[np.float32], Tuple[NDArray[np.float32], NDArray[np.float32]],
                              Tuple[BatchNorm1d, LayerNorm], List[Tuple[str, _Matmul]]]:
    """(name, matmul) pairs for the pipeline step ``h = x @ W1; h = bn(h); h = ln(h); y = h @ W2``: the
    matmuls by NumPy, PyTorch and ONNX Runtime (those installed; ONNX Runtime also with its threads
    sleeping between runs, "no spin"), each with ``nthreads`` threads (None: the library's default), plus
    the two layers and their input for timing them alone."""
    rng = np.random.default_rng(seed)
    M, D = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    W1, W2 = (rng.standard_normal((D, D), dtype=np.float32) / np.float32(D ** 0.5) for _ in range(2))
    bn, ln = BatchNorm1d(D).eval(), LayerNorm(D)
    running_mean, running_var = _running_stats(bn)
    running_mean[:] = rng.standard_normal(D, dtype=np.float32)
    running_var[:] = rng.uniform(0.5, 2, D).astype(np.float32)
    matmuls: List[Tuple[str, _Matmul]] = [("numpy", lambda a, W: a @ W)]
    if torch is not None:
        Wt = {id(W): torch.from_numpy(W) for W in (W1, W2)}
        matmuls.append(("torch", lambda a, W: torch.mm(torch.from_numpy(a), Wt[id(W)]).numpy()))
    for name, spinning in (("onnxruntime", True), ("onnxruntime no spin", False)):
        ort1, ort2 = (_onnx_matmul(W, nthreads, spinning) for W in (W1, W2))
        if ort1 is not None and ort2 is not None:
            matmuls.append((name, _by_weight({id(W1): ort1, id(W2): ort2})))
    return x, (W1, W2), (bn, ln), matmuls


def run_pipeline(nthreads: Optional[int] = None, repeat: int = 41, shape: Tuple[int, int] = (2048, 1024),
                 print_fn: Callable[[str], None] = _print) -> List[_Row]:
    """Time the step ``h = x @ W1; h = bn(h); h = ln(h); y = h @ W2`` (BatchNorm1d in eval mode, LayerNorm,
    float32) with fastnorm at ``nthreads`` threads (None: its default) and at 1 thread, the matmuls by
    NumPy, PyTorch and ONNX Runtime where installed, and the two fastnorm calls alone (among each library's
    steps, and in a block of their own before any library runs, matmul "none").

    One block of rounds per matmul library (a pipeline uses one; the idle threads of the others sleep
    before it starts): each round runs the step at both thread counts and fastnorm alone at both, in
    an order drawn anew each round; medians of ``repeat`` rounds ("saved": the median of each round's
    step at 1 thread less the step at ``nthreads``).  "alone" times the two calls back to
    back after an untimed pair.  With ``nthreads`` given, the matmul libraries get as many threads
    (NumPy's BLAS through threadpoolctl, where installed); otherwise each keeps its default.  Returns the
    rows: one per (library, part, fastnorm's thread count), with the median seconds; the parts are
    "step", "alone", and "calls in step" / "matmuls in step" (the step's own two calls and its two
    matmuls, timed apart within it: where a second thread's gain or cost lands)."""
    import contextlib

    from .layers import no_grad

    n = get_num_threads() if nthreads is None else nthreads
    blas: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    torch_threads = torch.get_num_threads() if torch is not None else None
    if nthreads is not None:
        if torch is not None:
            torch.set_num_threads(nthreads)
        try:
            from threadpoolctl import threadpool_limits
            blas = threadpool_limits(nthreads, user_api="blas")
        except ImportError:
            pass
    order = np.random.default_rng(0)
    medians: Dict[_PipelineKey, float] = {}
    saved: Dict[str, float] = {}
    with blas, no_grad():
        x, (W1, W2), (bn, ln), matmuls = pipeline_steps(shape, nthreads)

        parts: Dict[_PipelineKey, List[float]] = {}

        def step(name: str, matmul: _Matmul, k: int) -> Callable[[], Optional[float]]:
            calls, matmuls = (parts.setdefault((name, part, k), []) for part in ("calls in step", "matmuls in step"))

            def run() -> None:
                with threads(k):
                    t0 = time.perf_counter()
                    h = matmul(x, W1)
                    t1 = time.perf_counter()
                    h = ln(bn(h))
                    t2 = time.perf_counter()
                    matmul(h, W2)
                    calls.append(t2 - t1)
                    matmuls.append(time.perf_counter() - t2 + t1 - t0)
            return run

        def alone(h: NDArray[np.float32], k: int) -> Callable[[], Optional[float]]:
            def run() -> float:
                with threads(k):
                    ln(bn(h))
                    t0 = time.perf_counter()
                    ln(bn(h))
                    return time.perf_counter() - t0
            return run

        # First the two calls with no library between them: their gain where no other threads spin.
        for name, matmul in [("none", None), *matmuls]:
            h = x if matmul is None else matmul(x, W1)
            variants = [] if matmul is None else [((name, "step", k), step(name, matmul, k)) for k in (n, 1)]
            variants += [((name, "alone", k), alone(h, k)) for k in (n, 1)]
            samples: Dict[_PipelineKey, List[float]] = {key: [] for key, _ in variants}
            time.sleep(0.5)  # the threads of the library before go idle
            for _, f in variants:
                f()
            for _ in range(repeat):
                for i in order.permutation(len(variants)):
                    key, f = variants[i]
                    t0 = time.perf_counter()
                    t = f()
                    samples[key].append(time.perf_counter() - t0 if t is None else t)
            medians.update({key: float(np.median(s)) for key, s in [*samples.items(), *parts.items()] if s})
            if matmul is not None:  # the step's saving, paired within each round: the rounds' drift cancels
                saved[name] = float(np.median(np.subtract(samples[(name, "step", 1)], samples[(name, "step", n)])))
    if torch is not None:
        torch.set_num_threads(torch_threads)
    print_fn(f"\npipeline step h = x @ W1; h = bn(h); h = ln(h); y = h @ W2 on {shape} float32 (BatchNorm1d eval, "
             f"LayerNorm), medians of {repeat} rounds; alone: the two fastnorm calls back to back")
    print_fn(f"{'matmuls by':<20}{f'step {n} thr':>12}{'step 1 thr':>12}{'saved':>9}"
             f"{f'alone {n} thr':>13}{'alone 1 thr':>13}{'gain':>8}  saved >= gain / 2")
    for name, _ in matmuls:
        a, b = medians[(name, "step", n)], medians[(name, "step", 1)]
        c, d = medians[(name, "alone", n)], medians[(name, "alone", 1)]
        print_fn(f"{name:<20}{a * 1e3:>10.2f}ms{b * 1e3:>10.2f}ms{saved[name] * 1e3:>7.2f}ms{c * 1e3:>11.3f}ms"
                 f"{d * 1e3:>11.3f}ms{d / c:>7.2f}x  {'yes' if saved[name] >= (d - c) / 2 else 'no'}")
    c, d = medians[("none", "alone", n)], medians[("none", "alone", 1)]
    print_fn(f"{'none (alone only)':<44}{c * 1e3:>11.3f}ms{d * 1e3:>11.3f}ms{d / c:>7.2f}x")
    print_fn(f"{'the step, timed apart':<20}{f'calls {n} thr':>12}{'calls 1 thr':>13}{'gain':>8}"
             f"{f'matmuls {n} thr':>16}{'matmuls 1 thr':>15}")
    for name, _ in matmuls:
        a, b = medians[(name, "calls in step", n)], medians[(name, "calls in step", 1)]
        c, d = medians[(name, "matmuls in step", n)], medians[(name, "matmuls in step", 1)]
        print_fn(f"{name:<20}{a * 1e3:>11.3f}ms{b * 1e3:>11.3f}ms{b / a:>7.2f}x{c * 1e3:>14.2f}ms{d * 1e3:>13.2f}ms")
    return [dict(matmul=name, part=part, threads=k, median_s=median) for (name, part, k), median in medians.items()]
