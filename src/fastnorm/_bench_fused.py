"""The "fused" section of ``python -m fastnorm bench`` (also ``bench/fused.py``): what fusing the neighbours
of a normalization into its sweep saves in an inference pipeline, hot data, interleaved in one process.

Each row times fastnorm's fused call, the unfused composition a NumPy user writes today, and ONNX
Runtime's op for the same step where onnxruntime is installed (a session per op, its inputs and outputs
bound to preallocated buffers, so that it pays neither allocation nor copies): the residual of a pre-norm
block (``SkipLayerNormalization``; in bfloat16 against NumPy's addition), BatchNorm followed by ReLU,
LayerNorm on bfloat16 against float32, and the small tensors of batch-1-to-8 inference against a copy of
the same bytes.
"""
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

from . import functional as F
from ._bench import _Row, Settings, _optional_module, time_interleaved
from ._threads import threads
from .layers import BatchNorm1d, BatchNorm2d, LayerNorm, no_grad


class FusedCase(NamedTuple):
    name: str
    build: Callable[[int], Dict[str, Optional[Callable[[], object]]]]  # thread count -> the variants
    baseline: str  # the variant the others are compared with; "fastnorm" is the fused call


def _onnx_session(nodes: List[Any], inputs: Dict[str, NDArray[Any]], outputs: Dict[str, NDArray[Any]],
                  initializers: Dict[str, NDArray[Any]], nthreads: int) -> Optional[Callable[[], object]]:
    """A call of an ONNX Runtime session of ``nodes`` with its inputs and outputs bound to the given arrays
    (so that a call allocates and copies nothing), or None without onnx/onnxruntime."""
    onnx, ort = _optional_module("onnx"), _optional_module("onnxruntime")
    if onnx is None or ort is None:
        return None
    from onnx import helper, numpy_helper

    def info(name: str, a: NDArray[Any]) -> Any:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))

    graph = helper.make_graph(nodes, "fused", [info(k, v) for k, v in inputs.items()],
                              [info(k, v) for k, v in outputs.items()],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = nthreads
    # Its threads sleep between runs, as fastnorm's: spinning, they would take the cores of the calls
    # timed in between.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    for k, v in inputs.items():
        binding.bind_cpu_input(k, v)
    for k, v in outputs.items():
        binding.bind_output(k, "cpu", 0, v.dtype.type, list(v.shape), v.ctypes.data)
    bound = (inputs, outputs)  # the binding holds their addresses: they live as long as the call

    def run() -> object:
        session.run_with_iobinding(binding)
        return bound
    return run


def _residual_case(nthreads: int) -> Dict[str, Optional[Callable[[], object]]]:
    rng = np.random.default_rng(0)
    x, r = (rng.standard_normal((4096, 768), dtype=np.float32) for _ in range(2))
    w, b = rng.uniform(0.5, 2, 768).astype(np.float32), rng.standard_normal(768, dtype=np.float32)
    y, h = np.empty_like(x), np.empty_like(x)
    return {
        "fastnorm": lambda: F.layer_norm(x, 768, w, b, residual=r),
        "unfused": lambda: F.layer_norm(np.add(x, r), 768, w, b),
        "onnxruntime": _onnx_node(lambda helper: [helper.make_node(
            "SkipLayerNormalization", ["x", "r", "w", "b"], ["y", "", "", "h"], domain="com.microsoft",
            epsilon=1e-5)], {"x": x.reshape(8, 512, 768), "r": r.reshape(8, 512, 768)},
            {"y": y.reshape(8, 512, 768), "h": h.reshape(8, 512, 768)}, {"w": w, "b": b}, nthreads)}


def _residual_bfloat16_case(nthreads: int) -> Dict[str, Optional[Callable[[], object]]]:
    """The residual of a pre-norm block in bfloat16: one pass against NumPy's addition then layer_norm."""
    ml_dtypes = _optional_module("ml_dtypes")
    if ml_dtypes is None:
        return {"fastnorm": None, "unfused": None}
    rng = np.random.default_rng(0)
    x, r = (rng.standard_normal((4096, 768), dtype=np.float32).astype(ml_dtypes.bfloat16) for _ in range(2))
    w, b = rng.uniform(0.5, 2, 768).astype(np.float32), rng.standard_normal(768, dtype=np.float32)
    return {"fastnorm": lambda: F.layer_norm(x, 768, w, b, residual=r),
            "unfused": lambda: F.layer_norm(np.add(x, r), 768, w, b)}


def _onnx_node(nodes: Callable[[Any], List[Any]], inputs: Dict[str, NDArray[Any]], outputs: Dict[str, NDArray[Any]],
               initializers: Dict[str, NDArray[Any]], nthreads: int) -> Optional[Callable[[], object]]:
    onnx = _optional_module("onnx")
    if onnx is None:
        return None
    return _onnx_session(nodes(onnx.helper), inputs, outputs, initializers, nthreads)


def _batch_norm_relu_case(nthreads: int) -> Dict[str, Optional[Callable[[], object]]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 56, 56), dtype=np.float32)
    mean, var = rng.standard_normal(64, dtype=np.float32), rng.uniform(0.5, 2, 64).astype(np.float32)
    w, b = rng.uniform(0.5, 2, 64).astype(np.float32), rng.standard_normal(64, dtype=np.float32)

    def unfused() -> object:
        y = F.batch_norm(x, mean, var, w, b, training=False)
        return np.maximum(y, 0, out=y)
    return {
        "fastnorm": lambda: F.batch_norm(x, mean, var, w, b, training=False, activation="relu"),
        "unfused": unfused,
        "onnxruntime": _onnx_node(lambda helper: [
            helper.make_node("BatchNormalization", ["x", "w", "b", "mean", "var"], ["z"], epsilon=1e-5),
            helper.make_node("Relu", ["z"], ["y"])], {"x": x}, {"y": np.empty_like(x)},
            {"w": w, "b": b, "mean": mean, "var": var}, nthreads)}


def _bfloat16_case(nthreads: int) -> Dict[str, Optional[Callable[[], object]]]:
    ml_dtypes = _optional_module("ml_dtypes")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 768), dtype=np.float32)
    w, b = rng.uniform(0.5, 2, 768).astype(np.float32), rng.standard_normal(768, dtype=np.float32)
    half = x.astype(ml_dtypes.bfloat16) if ml_dtypes is not None else None
    return {
        "fastnorm": None if half is None else lambda: F.layer_norm(half, 768, w, b),
        "float32": lambda: F.layer_norm(x, 768, w, b),
        "onnxruntime": _onnx_node(lambda helper: [helper.make_node(
            "LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-5)], {"x": x}, {"y": np.empty_like(x)},
            {"w": w, "b": b}, nthreads)}


def _small_case(kind: str, shape: Tuple[int, ...]) -> Callable[[int], Dict[str, Optional[Callable[[], object]]]]:
    """A small tensor of batch-1-to-8 inference, the functional call and the layer's, against a copy of the
    same bytes (np.copyto into a preallocated array)."""
    def build(nthreads: int) -> Dict[str, Optional[Callable[[], object]]]:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32)
        y = np.empty_like(x)
        C = shape[-1] if kind == "layer_norm" else shape[1]
        w, b = rng.uniform(0.5, 2, C).astype(np.float32), rng.standard_normal(C, dtype=np.float32)
        mean, var = rng.standard_normal(C, dtype=np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
        layer: Any
        if kind == "layer_norm":
            layer = LayerNorm(C)
            call: Callable[[], object] = lambda: F.layer_norm(x, C, w, b)  # noqa: E731
        elif kind == "batch_norm eval":
            layer = (BatchNorm1d(C) if len(shape) == 2 else BatchNorm2d(C)).eval()
            call = lambda: F.batch_norm(x, mean, var, w, b, training=False)  # noqa: E731
        else:
            layer = BatchNorm1d(C) if len(shape) == 2 else BatchNorm2d(C)
            call = lambda: F.batch_norm(x, None, None, w, b, training=True)  # noqa: E731

        def layer_call() -> object:
            with no_grad():
                return layer(x)
        return {"fastnorm": call, "layer": layer_call, "copy": lambda: np.copyto(y, x)}
    return build


def cases() -> Iterator[FusedCase]:
    yield FusedCase("layer_norm residual= 4096x768", _residual_case, "unfused")
    yield FusedCase("batch_norm eval relu 32x64x56x56", _batch_norm_relu_case, "unfused")
    yield FusedCase("layer_norm bfloat16 4096x768", _bfloat16_case, "float32")
    yield FusedCase("layer_norm residual= bfloat16 4096x768", _residual_bfloat16_case, "unfused")
    for kind, shape in [("batch_norm eval", (8, 256, 14, 14)), ("batch_norm train", (256, 512)),
                        ("layer_norm", (8, 197, 384))]:
        yield FusedCase(f"small {kind} {'x'.join(map(str, shape))}", _small_case(kind, shape), "copy")


def run_fused(settings: Settings) -> List[_Row]:
    """The section: each case whose name contains the filter (or all, for the filter "fused"), at each
    thread count (the small tensors at 1 thread only: their figure is the floor of one core)."""
    chosen = [c for c in cases() if settings.name_filter in c.name or settings.name_filter in "fused"]
    if not chosen:
        return []
    out = settings.print_fn
    out(f"\nfused: one pass instead of the composition, hot data, medians of {settings.repeat} interleaved calls; "
        "'x' = the baseline's time (last) / this one's; 'x copy' = this one's / the copy's")
    rows: List[_Row] = []
    for n in settings.thread_counts:
        for case in chosen:
            if case.baseline == "copy" and n != 1:
                continue
            with threads(n):
                variants = {k: f for k, f in case.build(n).items() if f is not None}
                if "fastnorm" not in variants:  # needs a module that is not installed (ml_dtypes)
                    continue
                medians = dict(zip(variants, (t[1] for t in time_interleaved(list(variants.values()),
                                                                              settings.repeat, evict=False))))
            base = medians[case.baseline]
            # Against a copy: the time over the copy's (1.0: at the floor); otherwise the speedup over the
            # baseline.
            out(f"{case.name:<42}{n:>2} thr  " + "  ".join(
                f"{k} {t * 1e3:.3f}ms " + (f"{t / base:.2f}x copy" if case.baseline == "copy" else f"{base / t:.2f}x")
                for k, t in medians.items() if k != case.baseline) + f"  {case.baseline} {base * 1e3:.3f}ms")
            rows.append(dict(case=case.name, threads=n, baseline=case.baseline,
                             **{f"{k}_s": t for k, t in medians.items()}))
    return rows
