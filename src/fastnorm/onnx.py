"""ONNX's normalization operators computed by fastnorm, and fastnorm layers built from an ONNX model.

:func:`reference_ops` gives operator classes for ``onnx.reference.ReferenceEvaluator(model,
new_ops=...)``; :func:`layers_from_model` builds layers from a model's normalization nodes and their
initializers.  The ``onnx`` package is optional: it is imported by these functions, not by ``import
fastnorm`` (``pip install fastnorm[onnx]``).

ONNX's conventions where they differ from PyTorch's (see the README's semantics table):

* BatchNormalization ``momentum`` is the weight of the *old* running value (fastnorm's ``1 - momentum``),
  and training updates the running variance with the *biased* batch variance (``bessel=False``);
* GroupNormalization's scale and bias are per group in opset 18, per channel from opset 21;
* LRN places a window of even ``size`` one channel later than PyTorch's (``floor((size - 1) / 2)`` before
  a channel, ``ceil((size - 1) / 2)`` after);
* LpNormalization of a zero vector is zero; MeanVarianceNormalization divides by ``std + 1e-9``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import NDArray

from . import functional as F
from . import layers as _layers

__all__ = ["reference_ops", "layers_from_model"]

_Arrays = Tuple[NDArray[Any], ...]


def _import(name: str) -> Any:
    """An onnx module, or an ImportError that says which package to install."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"fastnorm.onnx needs the onnx package, which is not installed ({error}); "
                          "pip install onnx (or fastnorm[onnx])") from error


def _real(value: Any) -> float:
    """An ONNX float attribute (stored as float32) as the decimal it was written as: 1e-05, not
    9.99999974e-06."""
    return float(str(np.float32(value)))


def _channel_shape(x: NDArray[Any], axis: int) -> Tuple[int, ...]:
    """The trailing dimensions of x from ``axis`` (ONNX's normalized axes for LayerNormalization and
    RMSNormalization)."""
    return tuple(x.shape[axis % x.ndim:])


def _stats_shape(x: NDArray[Any], axis: int) -> Tuple[int, ...]:
    axis %= x.ndim
    return tuple(x.shape[:axis]) + (1,) * (x.ndim - axis)


def _per_channel(v: Optional[NDArray[Any]], x: NDArray[Any], num_groups: int, opset: int) -> Optional[NDArray[Any]]:
    """GroupNormalization's scale or bias per channel: opset 18's is per group."""
    if v is None or opset >= 21:
        return v
    return np.repeat(v, x.shape[1] // num_groups)


# ---------------------------------------------------------------------------------------------------------
# The operators: (inputs, attributes, opset) -> outputs, computed by fastnorm
# ---------------------------------------------------------------------------------------------------------

def _batch_normalization(x: NDArray[Any], scale: NDArray[Any], bias: NDArray[Any], mean: NDArray[Any],
                         var: NDArray[Any], *, epsilon: float = 1e-5, momentum: float = 0.9,
                         training_mode: int = 0, **_: Any) -> _Arrays:
    if not training_mode:
        return F.batch_norm(x, mean, var, scale, bias, eps=_real(epsilon)),
    running_mean, running_var = np.array(mean, np.float64), np.array(var, np.float64)
    y = F.batch_norm(x, running_mean, running_var, scale, bias, training=True, momentum=1.0 - _real(momentum),
                     eps=_real(epsilon), bessel=False)
    return y, running_mean.astype(mean.dtype), running_var.astype(var.dtype)


def _instance_normalization(x: NDArray[Any], scale: NDArray[Any], bias: NDArray[Any], *, epsilon: float = 1e-5,
                            **_: Any) -> _Arrays:
    # Group norm with a group per channel: instance norm's result, also for a single spatial element,
    # which ONNX normalizes (to the bias) where PyTorch's instance_norm raises.
    return F.group_norm(x, x.shape[1], scale, bias, _real(epsilon)),


def _layer_normalization(x: NDArray[Any], scale: NDArray[Any], bias: Optional[NDArray[Any]] = None, *,
                         axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1, **_: Any) -> _Arrays:
    shape = _channel_shape(x, axis)
    y, mean, rstd = F.layer_norm(x, shape, np.broadcast_to(scale, shape),
                                 None if bias is None else np.broadcast_to(bias, shape), _real(epsilon),
                                 return_stats=True)
    stash = _import("onnx.helper").tensor_dtype_to_np_dtype(stash_type)
    stats = _stats_shape(x, axis)
    return y, mean.reshape(stats).astype(stash), rstd.reshape(stats).astype(stash)


def _group_normalization(x: NDArray[Any], scale: NDArray[Any], bias: NDArray[Any], *, num_groups: int,
                         epsilon: float = 1e-5, opset: int = 21, **_: Any) -> _Arrays:
    return F.group_norm(x, num_groups, _per_channel(scale, x, num_groups, opset),
                        _per_channel(bias, x, num_groups, opset), _real(epsilon)),


def _rms_normalization(x: NDArray[Any], scale: NDArray[Any], *, axis: int = -1, epsilon: float = 1e-5,
                       **_: Any) -> _Arrays:
    shape = _channel_shape(x, axis)
    return F.rms_norm(x, shape, np.broadcast_to(scale, shape), _real(epsilon)),


def _lp_normalization(x: NDArray[Any], *, axis: int = -1, p: int = 2, **_: Any) -> _Arrays:
    # The smallest divisor a double has: a zero vector gives 0 (ONNX's), every other one its norm.
    return F.normalize(x, float(p), axis, float(np.finfo(np.float64).smallest_subnormal)),


def _mean_variance_normalization(x: NDArray[Any], *, axes: Sequence[int] = (0, 2, 3), **_: Any) -> _Arrays:
    mean, var = F.moments(x.astype(np.float64), tuple(axes), keepdims=True)
    return ((x - mean) / (np.sqrt(var) + 1e-9)).astype(x.dtype),


def _lrn(x: NDArray[Any], *, size: int, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0,
         **_: Any) -> _Arrays:
    # An even window is PyTorch's mirrored: run it on the channels in reverse order.
    flip = size % 2 == 0
    y = F.local_response_norm(x[:, ::-1] if flip else x, size, _real(alpha), _real(beta), _real(bias))
    return np.ascontiguousarray(y[:, ::-1]) if flip else y,


_OPS: Dict[str, Callable[..., _Arrays]] = {
    "BatchNormalization": _batch_normalization,
    "InstanceNormalization": _instance_normalization,
    "LayerNormalization": _layer_normalization,
    "GroupNormalization": _group_normalization,
    "RMSNormalization": _rms_normalization,
    "LpNormalization": _lp_normalization,
    "MeanVarianceNormalization": _mean_variance_normalization,
    "LRN": _lrn,
}


def reference_ops() -> List[type]:
    """ONNX's normalization operators computed by fastnorm, for ``onnx.reference.ReferenceEvaluator``.

    BatchNormalization (with ``training_mode``: the running mean and variance outputs),
    InstanceNormalization, LayerNormalization (``axis``, ``epsilon``, ``stash_type``: the Mean and
    InvStdDev outputs in that type), GroupNormalization (opset 18's per-group scale and bias, or opset
    21's per-channel, by the model's opset), RMSNormalization, LpNormalization, MeanVarianceNormalization
    and LRN, with ONNX's semantics (see the module's notes).

    Returns
    -------
    list of type
        Subclasses of ``onnx.reference.op_run.OpRun``, one per operator, named as the operator (the
        evaluator's ``new_ops`` argument).

    Raises
    ------
    ImportError
        The ``onnx`` package is not installed.

    Examples
    --------
    >>> import numpy as np, onnx, onnx.helper as oh
    >>> from onnx.reference import ReferenceEvaluator
    >>> import fastnorm.onnx
    >>> node = oh.make_node("LpNormalization", ["x"], ["y"], axis=1, p=2)
    >>> graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
    ...                       [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])])
    >>> model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 22)])
    >>> session = ReferenceEvaluator(model, new_ops=fastnorm.onnx.reference_ops())
    >>> session.run(None, {"x": np.array([[3., 4.]], np.float32)})[0]
    array([[0.6, 0.8]], dtype=float32)
    """
    op_run = _import("onnx.reference.op_run")

    def make(name: str, compute: Callable[..., _Arrays]) -> type:
        def _run(self: Any, *inputs: Any, **attributes: Any) -> _Arrays:
            return compute(*inputs, **attributes, opset=self.run_params["opsets"][""])

        return type(name, (op_run.OpRun,), {"op_domain": "", "_run": _run, "__module__": __name__,
                                             "__doc__": f"ONNX {name}, computed by fastnorm."})

    return [make(name, compute) for name, compute in _OPS.items()]


# ---------------------------------------------------------------------------------------------------------
# Layers from a model
# ---------------------------------------------------------------------------------------------------------

def _attributes(node: Any) -> Dict[str, Any]:
    helper = _import("onnx.helper")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _layer_dtype(*arrays: Optional[NDArray[Any]]) -> Any:
    return np.float64 if any(a is not None and a.dtype == np.float64 for a in arrays) else np.float32


def _set(layer: _layers._Layer, **arrays: Optional[NDArray[Any]]) -> _layers._Layer:
    """The layer with its arrays replaced by these values, in the layer's dtype and shape."""
    for key, value in arrays.items():
        current = getattr(layer, key)
        if value is not None and current is not None:
            setattr(layer, key, np.broadcast_to(value, current.shape).astype(current.dtype))
    return layer


def _shapes(model: Any) -> Dict[str, Tuple[Optional[int], ...]]:
    """The shapes of the model's values whose rank shape inference knows (None for a dimension it does
    not know)."""
    graph = _import("onnx.shape_inference").infer_shapes(model).graph
    return {info.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)
            for info in list(graph.input) + list(graph.value_info) + list(graph.output)
            if info.type.tensor_type.HasField("shape")}


def _layer_of(node: Any, params: List[Optional[NDArray[Any]]], shape: Optional[Tuple[Optional[int], ...]],
              opset: int, where: str) -> _layers._Layer:
    """The eval-mode layer of one node, given its parameter inputs (after X) and X's shape if known."""
    attrs = _attributes(node)
    rank = None if shape is None else len(shape)
    op = node.op_type
    eps = _real(attrs.get("epsilon", 1e-5))

    def needs_rank(low: int, high: int) -> int:
        if rank is None or not low <= rank <= high:
            raise ValueError(f"{where}: expected an input of rank {low} to {high} known from the model's "
                             f"shapes, got {rank}")
        return rank

    if op in ("BatchNormalization", "InstanceNormalization"):
        scale, bias = params[0], params[1]
        assert scale is not None
        dims = max(needs_rank(2 if op == "BatchNormalization" else 3, 5) - 2, 1)
        if op == "BatchNormalization":
            batch_norm = {1: _layers.BatchNorm1d, 2: _layers.BatchNorm2d, 3: _layers.BatchNorm3d}[dims]
            bn = batch_norm(scale.shape[0], eps, 1.0 - _real(attrs.get("momentum", 0.9)), dtype=_layer_dtype(*params),
                            bessel=False)
            return _set(bn, weight=scale, bias=bias, running_mean=params[2], running_var=params[3]).eval()
        instance_norm = {1: _layers.InstanceNorm1d, 2: _layers.InstanceNorm2d, 3: _layers.InstanceNorm3d}[dims]
        return _set(instance_norm(scale.shape[0], eps, affine=True, dtype=_layer_dtype(*params)), weight=scale,
                    bias=bias).eval()
    if op == "GroupNormalization":
        scale, bias = params[0], params[1]
        assert scale is not None
        groups = int(attrs["num_groups"])
        channels = scale.shape[0]
        if opset < 21:  # scale and bias per group: the channels from the input's shape
            channels = shape[1] if shape is not None and len(shape) > 1 and shape[1] else 0
            if not channels:
                raise ValueError(f"{where}: expected the input's number of channels known from the model's shapes")
        group_norm = _layers.GroupNorm(groups, channels, eps, dtype=_layer_dtype(*params))
        return _set(group_norm, weight=np.repeat(scale, channels // scale.shape[0]),
                    bias=None if bias is None else np.repeat(bias, channels // bias.shape[0])).eval()
    if op in ("LayerNormalization", "RMSNormalization"):
        scale = params[0]
        assert scale is not None
        axis = int(attrs.get("axis", -1))
        trailing = -axis if axis < 0 else needs_rank(axis + 1, 64) - axis
        normalized: Tuple[int, ...] = (1,) * (trailing - scale.ndim) + scale.shape
        known = () if shape is None else shape[len(shape) - trailing:]
        if len(known) == trailing and all(d is not None for d in known):  # a scale that broadcasts
            normalized = tuple(int(d or 0) for d in known)
        if op == "RMSNormalization":
            return _set(_layers.RMSNorm(normalized, eps, dtype=_layer_dtype(scale)), weight=scale).eval()
        bias = params[1] if len(params) > 1 else None
        layer_norm = _layers.LayerNorm(normalized, eps, bias=bias is not None, dtype=_layer_dtype(scale, bias))
        return _set(layer_norm, weight=scale, bias=bias).eval()
    size = int(attrs["size"])
    if size % 2 == 0:
        raise ValueError(f"{where}: an LRN of even size {size} places its window one channel later than "
                         "LocalResponseNorm's (PyTorch's); use reference_ops() for it")
    return _layers.LocalResponseNorm(size, _real(attrs.get("alpha", 1e-4)), _real(attrs.get("beta", 0.75)),
                                     _real(attrs.get("bias", 1.0))).eval()


_LAYER_OPS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
              "RMSNormalization", "LRN")


def layers_from_model(model: Any) -> Dict[str, _layers._Layer]:
    """fastnorm layers, in evaluation mode, for a model's normalization nodes.

    A layer for each BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
    RMSNormalization and LRN node of the main graph, its parameters and running statistics from the
    model's initializers, its arguments from the node's attributes (ONNX's ``momentum`` as ``1 -
    momentum``; BatchNorm with ``bessel=False``, as ONNX's training).

    Parameters
    ----------
    model : onnx.ModelProto
        The model.

    Returns
    -------
    dict of str to layer
        By node name; a node without one as ``"<op_type>_<index of the node>"``.

    Raises
    ------
    ImportError
        The ``onnx`` package is not installed.
    TypeError
        ``model`` is not an ``onnx.ModelProto``.
    ValueError
        A node's parameter is not an initializer; a rank or size the layer needs (BatchNorm1d/2d/3d,
        InstanceNorm1d/2d/3d, LayerNorm and RMSNorm with a non-negative axis, opset 18's GroupNorm channels)
        that the model's shapes do not give; an LRN of even size (its window is not PyTorch's).

    Examples
    --------
    >>> import numpy as np, onnx, onnx.helper as oh, onnx.numpy_helper as onh
    >>> import fastnorm.onnx
    >>> node = oh.make_node("LayerNormalization", ["x", "w", "b"], ["y"], name="ln", epsilon=1e-5)
    >>> graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
    ...                       [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
    ...                       [onh.from_array(np.ones(4, np.float32), "w"),
    ...                        onh.from_array(np.zeros(4, np.float32), "b")])
    >>> fastnorm.onnx.layers_from_model(oh.make_model(graph))
    {'ln': LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True)}
    """
    onnx = _import("onnx")
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model: expected an onnx.ModelProto, got {type(model).__name__}")
    numpy_helper = _import("onnx.numpy_helper")
    initializers: Mapping[str, NDArray[Any]] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    shapes = _shapes(model)
    result: Dict[str, _layers._Layer] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in _LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"{node.op_type}_{index}"
        where = f"node {name!r} ({node.op_type})"
        params: List[Optional[NDArray[Any]]] = []
        for input_name in node.input[1:]:
            if input_name and input_name not in initializers:
                raise ValueError(f"{where}: input {input_name!r} is not an initializer of the model")
            params.append(initializers[input_name] if input_name else None)
        result[name] = _layer_of(node, params, shapes.get(node.input[0]), opset, where)
    return result
