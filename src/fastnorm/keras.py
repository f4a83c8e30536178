"""Layers from Keras: a fastnorm layer from a Keras normalization layer's serialized config and weights.

Needs no Keras: the config is the dictionary ``keras.saving.serialize_keras_object(layer)`` gives (or its
JSON), the weights the arrays of ``layer.get_weights()``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import layers as _layers

__all__ = ["from_keras"]

# Keys of a Keras config that do not change what the layer computes: its name, whether an optimizer trains
# it, and how a training loop initializes, regularizes and constrains its weights.
_NOT_COMPUTED = {"name", "trainable", "dtype", "batch_input_shape", "batch_shape", "beta_initializer",
                 "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer", "beta_regularizer",
                 "gamma_regularizer", "beta_constraint", "gamma_constraint", "fused"}


def from_keras(config: Mapping[str, Any], weights: Sequence[ArrayLike] = (), *, class_name: Optional[str] = None,
               ndim: Optional[int] = None, bessel: bool = False) -> _layers._Layer:
    r"""A fastnorm layer that computes what a Keras normalization layer computes.

    Parameters
    ----------
    config : mapping
        What ``keras.saving.serialize_keras_object(layer)`` gives (``{"class_name": ..., "config": {...},
        "build_config": {...}}``, also read back from its JSON), or the bare ``layer.get_config()`` with
        ``class_name``.
    weights : sequence of array_like
        ``layer.get_weights()``: in Keras' order (``gamma``, ``beta``, ``moving_mean``,
        ``moving_variance``, then with ``renorm`` ``moving_stddev``, ``renorm_mean``, ``renorm_stddev``;
        RMSNormalization: ``scale``), those the config has.
    class_name : str, keyword-only, optional
        ``"BatchNormalization"``, ``"LayerNormalization"``, ``"RMSNormalization"`` or
        ``"GroupNormalization"``: required with a bare config, checked against a serialized one.
    ndim : int, keyword-only, optional
        The number of dimensions of the layer's input (the batch included), where the config has no
        ``build_config``: it chooses BatchNorm1d, 2d or 3d, and places axes given from the front.
    bessel : bool, keyword-only
        For BatchNormalization: False (the default) updates the running variance with the biased batch
        variance, as Keras' ``moving_variance``; True with the unbiased one, as PyTorch.

    Returns
    -------
    layer
        BatchNormalization: :class:`BatchNorm1d`, :class:`BatchNorm2d` or :class:`BatchNorm3d` (by ``ndim``)
        with ``momentum = 1 - momentum`` and ``renorm_momentum = 1 - renorm_momentum`` (Keras' momenta are
        the weights of the old values, fastnorm's of the new ones; rounded to 15 digits, so 0.99 gives
        0.01), ``bessel`` as given, ``channel_axis`` Keras' ``axis`` (-1 for the last; a list of several
        axes, tf.keras 2's, as a sorted tuple, ``num_features`` their sizes and the weights reshaped to them),
        ``renorm``, ``renorm_clipping`` and (tf.keras 2) ``virtual_batch_size``; ``moving_stddev`` is
        not kept (Keras derives ``moving_variance`` from it).  LayerNormalization: :class:`LayerNorm`
        over the axes Keras normalizes over (``normalized_shape`` for trailing axes, ``axes=`` for any
        others, the weights in the order of the input's axes).  RMSNormalization: :class:`RMSNorm`
        likewise (Keras' ``epsilon=None`` is its default ``keras.config.epsilon()``, 1e-7).  GroupNormalization:
        :class:`GroupNorm` (``groups=-1``: one group per channel), ``channel_axis`` 1 or -1.  ``scale=False``
        with ``center=True`` gives a weight of ones; ``dtype`` float64 for Keras' float64 policy, float32
        otherwise.  In training mode, as a new fastnorm layer; evaluation mode is ``layer.eval()``.

    Raises
    ------
    ValueError
        A config fastnorm cannot represent, named: BatchNormalization over the batch axis or repeated axes,
        LayerNormalization or RMSNormalization over repeated axes, LayerNormalization's
        ``rms_scaling=True`` (Keras divides the uncentred input by its standard deviation, which is
        neither LayerNorm nor RMSNorm; Keras deprecates it for RMSNormalization), GroupNormalization over
        an axis other than 1 and the last, ``synchronized=True``, arguments fastnorm does not know; an
        unknown class; weights that are not the config's (count, shapes); an ``ndim`` needed and not
        given.
    TypeError
        ``config`` not a mapping, or weights that are not arrays of real numbers.

    Notes
    -----
    The outputs equal Keras' in evaluation (``training=False``) and training mode, the running statistics
    after a training step too (with ``bessel=False``; with ``renorm`` Keras' ``moving_variance`` follows
    its own rule, see :class:`BatchNorm1d`).  tf.keras 2's ``virtual_batch_size`` grouped samples
    interleaved where fastnorm groups consecutive ones (see :class:`BatchNorm1d`).

    References
    ----------
    Keras: https://keras.io/api/layers/normalization_layers/

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> config = {"class_name": "BatchNormalization", "config": {"axis": -1, "momentum": 0.99,
    ...           "epsilon": 0.001, "center": True, "scale": True}, "build_config": {"input_shape": [None, 3]}}
    >>> weights = [np.ones(3), np.zeros(3), np.array([1.0, 2.0, 3.0]), np.full(3, 4.0)]  # get_weights()
    >>> bn = fastnorm.from_keras(config, weights)
    >>> bn
    BatchNorm1d(3, eps=0.001, momentum=0.01, affine=True, bias=True, track_running_stats=True,
                channel_axis=-1, bessel=False)
    >>> bn.eval()(np.array([[3.0, 4.0, 5.0]], np.float32)).round(4)    # (x - moving_mean) / sqrt(4 + 0.001)
    array([[0.9999, 0.9999, 0.9999]], dtype=float32)
    """
    name, inner, input_shape = _unwrap(config, class_name)
    build = _BUILDERS.get(name)
    if build is None:
        raise ValueError(f"config: class_name {name!r}: expected one of {sorted(_BUILDERS)}")
    known, builder = build
    unknown = sorted(set(inner) - known - _NOT_COMPUTED)
    if unknown:
        raise ValueError(f"config: {name} arguments fastnorm does not know: {unknown}")
    if ndim is None and input_shape is not None:
        ndim = len(input_shape)
    if ndim is not None and (isinstance(ndim, bool) or not isinstance(ndim, int) or ndim < 1):
        raise ValueError(f"ndim: expected a positive integer, got {ndim!r}")
    arrays = [_layers._state_array(w, f"weights[{i}]") for i, w in enumerate(weights)]
    for i, array in enumerate(arrays):
        if array.dtype.kind not in "fiu":
            raise TypeError(f"weights[{i}]: expected real numbers, got dtype {array.dtype}")
    return builder(_Keras(name, inner, arrays, ndim, input_shape, bessel))


class _Keras:
    """One conversion: the config's values and the weights by Keras' names."""

    def __init__(self, name: str, config: Mapping[str, Any], arrays: List[NDArray[Any]], ndim: Optional[int],
                 input_shape: Optional[Sequence[Any]], bessel: bool) -> None:
        self.name, self.config, self.arrays, self.ndim = name, config, arrays, ndim
        self.input_shape, self.bessel = input_shape, bool(bessel)
        policy = config.get("dtype")
        if isinstance(policy, Mapping):
            policy = policy.get("config", {}).get("name")
        self.dtype = np.float64 if policy == "float64" else np.float32

    def get(self, key: str, default: Any) -> Any:
        value = self.config.get(key, default)
        return default if value is None and default is not None else value

    def weights(self, names: Sequence[str]) -> Dict[str, NDArray[Any]]:
        """The weights by their Keras names, after checking there are those of the config, of one shape."""
        if len(self.arrays) != len(names):
            raise ValueError(f"weights: this {self.name} config has {len(names)} weights ({', '.join(names)}), "
                             f"got {len(self.arrays)}")
        if len({a.shape for a in self.arrays}) > 1:
            raise ValueError(f"weights: expected arrays of one shape ({', '.join(names)}), got shapes "
                             f"{[a.shape for a in self.arrays]}")
        return dict(zip(names, self.arrays))

    def channels(self, axis: int) -> int:
        """The channel count: the weights' length, or the build_config's size of ``axis``."""
        if self.arrays:
            if self.arrays[0].ndim != 1:
                raise ValueError(f"weights: expected 1-D arrays (one value per channel), got shape "
                                 f"{self.arrays[0].shape}")
            return int(self.arrays[0].shape[0])
        size = self.input_size(axis)
        if size is None:
            raise ValueError(f"config: a {self.name} without weights needs a build_config (its input_shape) "
                             "to give its size")
        return size

    def need_ndim(self, why: str) -> int:
        if self.ndim is None:
            raise ValueError(f"ndim: the input's number of dimensions is needed {why}; the config has no "
                             "build_config (pass ndim=)")
        return self.ndim

    def axes(self, key: str = "axis") -> List[int]:
        axis = self.get(key, -1)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
            raise ValueError(f"config: {key}: expected an integer or a list of integers, got {axis!r}")
        if self.ndim is not None and not all(-self.ndim <= a < self.ndim for a in axes):
            raise ValueError(f"config: {key}={axis!r}: out of range for a {self.ndim}-D input")
        return axes

    def input_size(self, axis: int) -> Optional[int]:
        """The input's size along ``axis`` from the build_config, where it is known."""
        if self.input_shape is None or not -len(self.input_shape) <= axis < len(self.input_shape):
            return None
        size = self.input_shape[axis]
        return size if isinstance(size, int) else None

    def affine(self, names: Dict[str, NDArray[Any]], layer: _layers._Layer) -> _layers._Layer:
        """``layer`` with the weights loaded: gamma as weight, beta as bias (the rest by their own names)."""
        keys = {"gamma": "weight", "beta": "bias", "scale": "weight", "moving_mean": "running_mean",
                "moving_variance": "running_var", "renorm_mean": "renorm_mean", "renorm_stddev": "renorm_stddev"}
        layer.load_state_dict({keys[k]: v for k, v in names.items() if k in keys}, strict=False)
        return layer


def _unwrap(config: object, class_name: Optional[str]) -> Tuple[str, Mapping[str, Any], Optional[Sequence[Any]]]:
    """(class name, inner config, build input shape or None) of a serialized or bare config."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a mapping (a Keras layer's serialized config), got {type(config).__name__}")
    if "config" in config and isinstance(config["config"], Mapping):
        name = config.get("class_name")
        if class_name is not None and name != class_name:
            raise ValueError(f"class_name: {class_name!r} given, the config is of {name!r}")
        build = config.get("build_config")
        shape = build.get("input_shape") if isinstance(build, Mapping) else None
        return str(name), config["config"], shape if isinstance(shape, (list, tuple)) else None
    if class_name is None:
        raise ValueError("class_name: required with a bare config (layer.get_config()), e.g. "
                         "class_name='BatchNormalization'")
    return class_name, config, None


def _momentum(keras_momentum: Any, key: str) -> float:
    """fastnorm's momentum (the weight of the new value) for Keras' (the old value's)."""
    if isinstance(keras_momentum, bool) or not isinstance(keras_momentum, (int, float)):
        raise ValueError(f"config: {key}: expected a number, got {keras_momentum!r}")
    return float(f"{1.0 - keras_momentum:.15g}")


def _batch_normalization(k: _Keras) -> _layers._Layer:
    if k.get("synchronized", False):
        raise ValueError("config: synchronized=True: build it unsynchronized and pass the layer to "
                         "fastnorm.SyncBatchNorm.convert")
    if k.config.get("adjustment") is not None:
        raise ValueError("config: adjustment (tf.keras 2's random rescaling in training) is not supported")
    axes = k.axes()
    ndim = k.need_ndim("to choose BatchNorm1d, 2d or 3d")
    cls = {2: _layers.BatchNorm1d, 3: _layers.BatchNorm1d, 4: _layers.BatchNorm2d, 5: _layers.BatchNorm3d}.get(ndim)
    if cls is None:
        raise ValueError(f"ndim: expected 2 to 5 dimensions (BatchNorm1d to 3d), got {ndim}")
    placed = sorted(a + ndim if a < 0 else a for a in axes)
    if not all(0 < a < ndim for a in placed) or len(set(placed)) != len(placed):
        raise ValueError(f"config: axis={axes if len(axes) > 1 else axes[0]} of a {ndim}-D input: expected distinct "
                         "channel axes other than the batch axis 0")
    center, scale, renorm = bool(k.get("center", True)), bool(k.get("scale", True)), bool(k.get("renorm", False))
    names = ["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"]
    names += ["moving_stddev", "renorm_mean", "renorm_stddev"] * renorm
    weights = k.weights(names)
    if len(placed) == 1:
        features: Any = k.channels(placed[0])
        channel_axis: Any = -1 if placed[0] == ndim - 1 else placed[0]
    else:  # tf.keras 2: weights of the input's rank, 1 off the axes (or already of the axes' sizes)
        features, channel_axis = _several_channels(k, placed, ndim), tuple(placed)
        weights = {key: value.reshape(features) for key, value in weights.items()}
    layer = cls(features, eps=k.get("epsilon", 1e-3), momentum=_momentum(k.get("momentum", 0.99), "momentum"),
                affine=scale or center, bias=center, dtype=k.dtype, channel_axis=channel_axis,
                bessel=k.bessel, renorm=renorm, renorm_clipping=k.get("renorm_clipping", None) if renorm else None,
                renorm_momentum=_momentum(k.get("renorm_momentum", 0.99), "renorm_momentum"),
                virtual_batch_size=k.get("virtual_batch_size", None))
    return k.affine(weights, layer)


def _several_channels(k: _Keras, axes: List[int], ndim: int) -> Tuple[int, ...]:
    """The sizes of several channel axes, from the weights (BatchNormalization always has its moving
    statistics): of shape ``sizes``, or of the input's rank with 1 off the axes (tf.keras 2's)."""
    shape = k.arrays[0].shape
    sizes = tuple(shape[a] for a in axes) if len(shape) == ndim else shape
    if len(sizes) != len(axes) or int(np.prod(shape)) != int(np.prod(sizes)):
        raise ValueError(f"weights: expected arrays of the sizes of axis={axes}, or of a {ndim}-D input's rank "
                         f"with 1 off those axes, got shape {shape}")
    return tuple(int(n) for n in sizes)


def _normalized(k: _Keras) -> Tuple[Tuple[int, ...], Optional[Tuple[int, ...]]]:
    """(shape, axes) of a LayerNormalization or RMSNormalization: the parameters' shape, and the axes
    (None: the trailing ones, as ``normalized_shape``).  Keras shapes its weights by its sorted ``axis``
    list and reshapes them (in memory order) onto the input's axes; fastnorm's have the shape of the
    input's axes, sorted: the same memory, reshaped (they differ where ``axis`` mixes signs)."""
    axes = k.axes()
    ndim = k.need_ndim(f"to place axis={axes}") if any(a >= 0 for a in axes) or k.ndim is not None else None
    placed = [a % ndim if ndim is not None else a for a in sorted(axes)]  # Keras' order of the weights' axes
    if ndim is not None and not all(-ndim <= a < ndim for a in axes) or len(set(placed)) != len(placed):
        raise ValueError(f"config: axis={k.get('axis', -1)}: expected distinct axes of the input")
    perm = [int(i) for i in np.argsort(placed)]
    if k.arrays:
        if k.arrays[0].ndim != len(axes):
            raise ValueError(f"weights: expected {len(axes)}-D arrays for axis={k.get('axis', -1)}, got shape "
                             f"{k.arrays[0].shape}")
        k.arrays = [np.reshape(a, tuple(a.shape[i] for i in perm)) for a in k.arrays]
    ordered = sorted(placed)
    trailing = ordered == list(range(-len(ordered), 0)) or (ndim is not None and ordered == list(
        range(ndim - len(ordered), ndim)))
    if k.arrays:
        return tuple(k.arrays[0].shape), None if trailing else tuple(ordered)
    sizes = [k.input_size(a) for a in ordered]
    if any(size is None for size in sizes):
        raise ValueError(f"config: a {k.name} without weights needs a build_config (its input_shape) to give "
                         "its size")
    return tuple(int(s) for s in sizes if s is not None), None if trailing else tuple(ordered)


def _layer_normalization(k: _Keras) -> _layers._Layer:
    if k.get("rms_scaling", False):
        raise ValueError("config: rms_scaling=True: Keras then divides the uncentred input by its standard "
                         "deviation (x / sqrt(var(x) + epsilon) * gamma), which is neither LayerNorm nor RMSNorm "
                         "(Keras deprecates it); keras.layers.RMSNormalization converts to fastnorm.RMSNorm")
    center, scale = bool(k.get("center", True)), bool(k.get("scale", True))
    names = ["gamma"] * scale + ["beta"] * center
    shape, axes = _normalized(k)
    weights = k.weights(names)
    layer = _layers.LayerNorm(shape, eps=k.get("epsilon", 1e-3), elementwise_affine=scale or center, bias=center,
                              axes=axes, dtype=k.dtype)
    return k.affine(weights, layer)


def _rms_normalization(k: _Keras) -> _layers._Layer:
    shape, axes = _normalized(k)
    weights = k.weights(["scale"])
    return k.affine(weights, _layers.RMSNorm(shape, eps=k.get("epsilon", 1e-7), axes=axes, dtype=k.dtype))


def _group_normalization(k: _Keras) -> _layers._Layer:
    axes = k.axes()
    last = len(axes) == 1 and (axes[0] == -1 or (k.ndim is not None and axes[0] == k.ndim - 1))
    if len(axes) != 1 or not (last or axes[0] == 1):
        raise ValueError(f"config: axis={k.get('axis', -1)}: fastnorm's GroupNorm takes its channels on axis 1 "
                         "or the last axis")
    center, scale = bool(k.get("center", True)), bool(k.get("scale", True))
    names = ["gamma"] * scale + ["beta"] * center
    weights = k.weights(names)
    channels = k.channels(axes[0])
    groups = k.get("groups", 32)
    layer = _layers.GroupNorm(channels if groups == -1 else groups, channels, eps=k.get("epsilon", 1e-3),
                              affine=scale or center, bias=center, dtype=k.dtype, channel_axis=-1 if last else 1)
    return k.affine(weights, layer)


_BUILDERS: Dict[str, Tuple[Set[str], Callable[[_Keras], _layers._Layer]]] = {
    "BatchNormalization": ({"axis", "momentum", "epsilon", "center", "scale", "synchronized", "renorm",
                            "renorm_clipping", "renorm_momentum", "virtual_batch_size", "adjustment"},
                           _batch_normalization),
    "LayerNormalization": ({"axis", "epsilon", "center", "scale", "rms_scaling"}, _layer_normalization),
    "RMSNormalization": ({"axis", "epsilon"}, _rms_normalization),
    "GroupNormalization": ({"groups", "axis", "epsilon", "center", "scale"}, _group_normalization),
}
