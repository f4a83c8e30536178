"""Inference pipelines: folding BatchNorm into the layer before it, saving and loading layers as .npz."""
from __future__ import annotations

import json
import os
from typing import Union

import numpy as np

from . import distributed as _distributed
from . import layers as _layers
from ._validation import _array

__all__ = ["fold_batch_norm", "save", "load"]

_FORMAT = 1
_META_KEY = "__fastnorm__"
_LAYER_CLASSES = {name: getattr(_layers, name) for name in _layers.__all__ if name != "no_grad"}
_LAYER_CLASSES["SyncBatchNorm"] = _distributed.SyncBatchNorm


def fold_batch_norm(weight, bias, bn, *, layout: str = "conv"):
    """The weight and bias of a convolution or linear layer followed by an eval-mode BatchNorm, as one layer.

    ``bn(conv(x)) == folded_conv(x)`` with ``scale = bn.weight / sqrt(bn.running_var + bn.eps)``,
    ``weight' = weight * scale`` along the output channels and
    ``bias' = (bias - bn.running_mean) * scale + bn.bias`` (what ``torch.nn.utils.fusion`` does).
    Computed in float64 and returned in the weight's dtype (in native byte order).

    Parameters
    ----------
    weight : array_like
        ``layout="conv"``: ``(out_channels, in_channels / groups, *kernel)``; ``layout="linear"``:
        (out_features, in_features). The output channels are the first axis, as in PyTorch.
    bias : array_like of shape (out_channels,) or None
        None is a zero bias.
    bn : BatchNorm1d, BatchNorm2d or BatchNorm3d
        With running statistics (``track_running_stats=True``); its out_channels must match.
    layout : {"conv", "linear"}

    Returns
    -------
    weight, bias : ndarray

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> bn = fastnorm.BatchNorm1d(2, dtype=np.float64).eval()
    >>> bn.running_mean[:] = [1.0, -1.0]; bn.running_var[:] = [4.0, 0.25]
    >>> w, b = fastnorm.fold_batch_norm(np.eye(2), None, bn, layout="linear")
    >>> x = np.array([[3.0, 5.0]])
    >>> bool(np.allclose(x @ w.T + b, bn(x @ np.eye(2).T), atol=1e-6))
    True
    """
    if layout not in ("conv", "linear"):
        raise ValueError(f"layout: expected 'conv' or 'linear', got {layout!r}")
    if not isinstance(bn, _layers._BatchNorm):
        raise TypeError(f"bn: expected a fastnorm BatchNorm layer, got {type(bn).__name__}")
    if bn.running_mean is None:
        raise ValueError("bn: expected running statistics (track_running_stats=True) to fold")
    w = _array(weight, "weight")
    if w.dtype.kind != "f":
        raise TypeError(f"weight: expected a floating-point array, got dtype {w.dtype}")
    expected_ndim = "at least 3" if layout == "conv" else "2"
    if (layout == "conv" and w.ndim < 3) or (layout == "linear" and w.ndim != 2):
        raise ValueError(f"weight: expected {expected_ndim} dimensions for layout={layout!r}, got shape {w.shape}")
    C = bn.num_features
    if w.shape[0] != C:
        raise ValueError(f"weight: expected {C} output channels (bn.num_features) on axis 0, got shape {w.shape}")
    b = np.zeros(C) if bias is None else np.asarray(_array(bias, "bias"), dtype=np.float64)
    if b.shape != (C,):
        raise ValueError(f"bias: expected shape ({C},), got {b.shape}")
    stats = {k: None if getattr(bn, k) is None else np.asarray(_array(getattr(bn, k), f"bn.{k}"), np.float64)
             for k in ("running_mean", "running_var", "weight", "bias")}
    scale = 1.0 / np.sqrt(stats["running_var"] + bn.eps)
    if bn.weight is not None:
        scale = scale * stats["weight"]
    shift = -stats["running_mean"] * scale
    if bn.bias is not None:
        shift = shift + stats["bias"]
    folded_w = w.astype(np.float64) * scale.reshape((C,) + (1,) * (w.ndim - 1))
    folded_b = b * scale + shift
    dtype = w.dtype.newbyteorder("=")
    return folded_w.astype(dtype), folded_b.astype(dtype)


def save(path: Union[str, os.PathLike], layers) -> None:
    """Save a layer, or a mapping of names to layers, to a ``.npz`` file.

    The file holds each layer's parameters and buffers (PyTorch's state-dict keys, under
    ``"<name>.<key>"``) and a JSON description of its class, constructor arguments and mode: no pickled
    code, so :func:`load` reads it with ``allow_pickle=False``.
    """
    single = isinstance(layers, _layers._Layer)
    named = {"": layers} if single else dict(layers)
    arrays, meta = {}, {}
    for name, layer in named.items():
        if not isinstance(layer, _layers._Layer) or type(layer).__name__ not in _LAYER_CLASSES:
            raise TypeError(f"layers[{name!r}]: expected a fastnorm layer, got {type(layer).__name__}")
        if "." in name or name == _META_KEY:
            raise ValueError(f"layers: a name may not contain '.' or be {_META_KEY!r}, got {name!r}")
        meta[name] = {"class": type(layer).__name__, "config": layer._config(), "training": layer.training}
        for key, value in layer.state_dict().items():
            arrays[f"{name}.{key}"] = value
    document = {"format": _FORMAT, "single": single, "layers": meta}
    np.savez(path, **{_META_KEY: np.array(json.dumps(document))}, **arrays)


def load(path: Union[str, os.PathLike]):
    """Load what :func:`save` wrote: a layer, or a dict of names to layers."""
    with np.load(path, allow_pickle=False) as data:
        if _META_KEY not in data.files:
            raise ValueError(f"path: {os.fspath(path)!r} is not a file written by fastnorm.save")
        document = json.loads(str(data[_META_KEY]))
        if document.get("format") != _FORMAT:
            raise ValueError(f"path: unsupported fastnorm file format {document.get('format')!r}")
        loaded = {}
        for name, entry in document["layers"].items():
            cls = _LAYER_CLASSES.get(entry["class"])
            if cls is None:
                raise ValueError(f"path: unknown layer class {entry['class']!r}")
            layer = cls(**_layers._from_config(entry["config"]))
            state = {f[len(name) + 1:]: data[f] for f in data.files if f.startswith(name + ".")}
            layer.load_state_dict(state)
            layer.train(entry["training"])
            loaded[name] = layer
    return loaded[""] if document["single"] else loaded

