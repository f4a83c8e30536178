"""Inference pipelines: folding BatchNorm into the layer before it, saving and loading layers (.npz and
safetensors formats)."""
from __future__ import annotations

import json
import math
import os
import secrets
import struct
import tokenize
import zipfile
import zlib
from typing import (IO, TYPE_CHECKING, Any, BinaryIO, Callable, Dict, List, Literal, Mapping, Optional, Sequence,
                    Tuple, Type, Union)

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import distributed as _distributed
from . import layers as _layers
from ._safetensors import SafetensorsFile, strict_json
from ._validation import _array, _is_half, _reals

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing's from Python 3.13

__all__ = ["fold_batch_norm", "save", "load"]

_FORMAT = 1
_META_KEY = "__fastnorm__"
_LAYER_CLASSES: Dict[str, Type[_layers._Layer]] = {
    name: getattr(_layers, name) for name in _layers.__all__ if name != "no_grad"}
_LAYER_CLASSES["SyncBatchNorm"] = _distributed.SyncBatchNorm

_Path = Union[str, "os.PathLike[str]"]
_Format = Optional[Literal["npz", "safetensors"]]
# What save takes and load gives back: a layer, or layers by name.
_Layers = Union[_layers._Layer, Mapping[str, _layers._Layer]]


def fold_batch_norm(weight: ArrayLike, bias: Optional[ArrayLike], bn: _layers._BatchNorm, *,
                    layout: Literal["conv", "linear"] = "conv") -> Tuple[NDArray[Any], NDArray[Any]]:
    r"""The weight and bias of a convolution or linear layer followed by an eval-mode BatchNorm, as one layer.

    ``bn(conv(x)) == folded_conv(x)`` for ``bn`` in evaluation mode (its running statistics).  Computed in
    float64 and returned in the weight's dtype (in native byte order); the inputs are not modified.

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
        Where the output channels are: both layouts have them first, as PyTorch's ``Conv*d`` and
        ``Linear``; "linear" requires a 2-D weight, "conv" at least 3-D.

    Returns
    -------
    weight : ndarray
        The folded weight, of ``weight``'s shape and dtype.
    bias : ndarray of shape (out_channels,)
        The folded bias, of ``weight``'s dtype.

    Raises
    ------
    TypeError
        ``bn`` not a fastnorm BatchNorm layer, ``weight`` not floating point, or ``bias`` not real numbers.
    ValueError
        An unknown ``layout``; a ``bn`` without running statistics, with an ``activation`` or with several
        channel axes; a weight of the wrong number of dimensions, or whose first axis is not
        ``bn.num_features`` long; a bias not of shape ``(out_channels,)``.

    Notes
    -----
    With :math:`s = \gamma / \sqrt{\sigma^2_{running} + \epsilon}` per output channel,

    .. math::

        W' = W \cdot s, \qquad b' = (b - \mu_{running}) \cdot s + \beta

    (:math:`\gamma = 1`, :math:`\beta = 0` without them), as PyTorch's ``fuse_conv_bn_weights`` and
    ``fuse_linear_bn_weights`` in ``torch.nn.utils.fusion``.

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
        raise ValueError(f"bn: expected running statistics (track_running_stats=True) to fold{_layers._lazy_hint(bn)}")
    if bn.activation is not None:
        raise ValueError(f"bn: has activation={bn.activation!r}, which a folded weight and bias cannot hold; "
                         "fold a layer without one and apply the activation after the folded layer")
    w = _array(weight, "weight")
    if w.dtype.kind != "f" and not _is_half(w.dtype):  # bfloat16 included
        raise TypeError(f"weight: expected a floating-point array, got dtype {w.dtype}")
    expected_ndim = "at least 3" if layout == "conv" else "2"
    if (layout == "conv" and w.ndim < 3) or (layout == "linear" and w.ndim != 2):
        raise ValueError(f"weight: expected {expected_ndim} dimensions for layout={layout!r}, got shape {w.shape}")
    C = bn.num_features
    if isinstance(C, tuple):
        raise ValueError(f"bn: has channel_axis={bn.channel_axis}, several channel axes, which no output channel "
                         "axis of a weight holds")
    if w.shape[0] != C:
        raise ValueError(f"weight: expected {C} output channels (bn.num_features) on axis 0, got shape {w.shape}")
    b = np.zeros(C) if bias is None else _reals(bias, "bias")
    if b.shape != (C,):
        raise ValueError(f"bias: expected shape ({C},), got {b.shape}")
    running_mean, running_var = _layers._running_stats(bn)
    scale = 1.0 / np.sqrt(_reals(running_var, "bn.running_var") + bn.eps)
    if bn.weight is not None:
        scale = scale * _reals(bn.weight, "bn.weight")
    shift = -_reals(running_mean, "bn.running_mean") * scale
    if bn.bias is not None:
        shift = shift + _reals(bn.bias, "bn.bias")
    folded_w = w.astype(np.float64) * scale.reshape((C,) + (1,) * (w.ndim - 1))
    folded_b = b * scale + shift
    dtype = w.dtype.newbyteorder("=")
    return folded_w.astype(dtype), folded_b.astype(dtype)


def save(path: Union[_Path, BinaryIO], layers: _Layers, *, format: _Format = None) -> None:
    """Save a layer, or a mapping of names to layers, to a file in NumPy's ``.npz`` format or in the
    safetensors format.

    The file holds each layer's parameters and buffers, under PyTorch's state-dict keys
    (``"<name>.<key>"``; for a single layer saved as safetensors, the bare keys, as PyTorch's
    ``state_dict()`` of one module), and a JSON description of each layer's class, constructor arguments
    and mode (the ``"__fastnorm__"`` member of the ``.npz`` archive, or entry of the safetensors
    metadata): no pickled code, so :func:`load` reads it without running anything from the file.  A
    safetensors file loads into PyTorch as well: ``model.load_state_dict(safetensors.torch.load_file(path))``
    for a model whose modules have the names given here.  The file is written under exactly ``path`` (no
    suffix is appended), through a temporary file beside it that replaces ``path`` only once complete: a
    save that fails leaves ``path`` as it was.

    Parameters
    ----------
    path : str, path-like or binary file object
        Where to write: a path (written as described above), or a writable binary file object (written
        at its position, and not closed).
    layers : fastnorm layer, or mapping of str to fastnorm layers
        Names may not contain ``"."``.
    format : {None, "npz", "safetensors"}, keyword-only
        None: safetensors for a path ending in ``.safetensors`` (in any case), ``.npz`` otherwise (a file
        object included).  Writing safetensors needs the ``safetensors`` package
        (``pip install "fastnorm[safetensors]"``).

    Raises
    ------
    TypeError
        Something other than a fastnorm layer, or a name that is not a string.
    OSError
        The file cannot be written (``path`` is then left as it was).
    ValueError
        A name with ``"."``, an unknown ``format``, or a layer whose parameters or buffers contradict its
        configuration (a ``weight`` of another shape or dtype than ``num_features`` and ``dtype`` give, a
        buffer its configuration does not have): :func:`load` would refuse the file.
    ImportError
        ``format="safetensors"`` without the ``safetensors`` package.
    TypeError
        A ``path`` that is neither a path nor a file object.

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastnorm
    >>> bn = fastnorm.BatchNorm1d(3).eval()
    >>> bn.running_mean[:] = [1.0, 2.0, 3.0]
    >>> path = os.path.join(tempfile.mkdtemp(), "model.bin")
    >>> fastnorm.save(path, {"bn": bn})
    >>> fastnorm.load(path)["bn"].running_mean.tolist()
    [1.0, 2.0, 3.0]
    """
    format = _format(path, format)
    save_safetensors = _safetensors_save() if format == "safetensors" else None
    named: Dict[Any, Any] = {"": layers} if isinstance(layers, _layers._Layer) else dict(layers)
    single = isinstance(layers, _layers._Layer)
    arrays: Dict[str, NDArray[Any]] = {}
    meta: Dict[str, Any] = {}
    for name, layer in named.items():
        if not isinstance(name, str):
            raise TypeError(f"layers: expected names that are strings, got {name!r}")
        if not isinstance(layer, _layers._Layer) or type(layer).__name__ not in _LAYER_CLASSES:
            raise TypeError(f"layers[{name!r}]: expected a fastnorm layer, got {type(layer).__name__}")
        if "." in name or name == _META_KEY:
            raise ValueError(f"layers: a name may not contain '.' or be {_META_KEY!r}, got {name!r}")
        meta[name] = {"class": type(layer).__name__, "config": layer._config(), "training": layer.training}
        for key, value in layer.state_dict().items():
            arrays[f"{name}.{key}"] = value
    text = json.dumps({"format": _FORMAT, "single": single, "layers": meta})
    try:
        _parse(text, arrays)  # what load would refuse, save refuses
    except ValueError as e:
        raise ValueError(f"layers: {e}") from None
    if save_safetensors is not None:
        # A single layer's keys bare ("weight"), as PyTorch's state_dict() of one module; the data
        # contiguous and little-endian, as the format stores it.
        tensors = {(key[1:] if single else key): np.asarray(value, value.dtype.newbyteorder("<"), order="C")
                   for key, value in arrays.items()}
        writer = save_safetensors

        def write(f: IO[bytes]) -> None:
            f.write(writer(tensors, {_META_KEY: text}))
    else:
        # savez's keyword arguments are the members and its own options alike: a plain mapping.
        members: Dict[str, Any] = {**arrays, _META_KEY: np.array(text)}

        def write(f: IO[bytes]) -> None:
            np.savez(f, **members)
    if not _is_path(path):
        write(path)
        return
    target = os.fsdecode(path)
    partial = f"{target}.{secrets.token_hex(6)}.partial"
    try:
        with open(partial, "xb") as f:  # np.savez(path) would append ".npz" to a path without it
            write(f)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _format(path: object, format: object) -> Literal["npz", "safetensors"]:
    """The file format of a save or load: ``format``, or the one ``path``'s suffix names."""
    if not (_is_path(path) or hasattr(path, "read") or hasattr(path, "write")):
        raise TypeError(f"path: expected a str, path-like or binary file object, got {type(path).__name__}")
    if format is None:
        name = os.fsdecode(path) if _is_path(path) else ""
        return "safetensors" if name.lower().endswith(".safetensors") else "npz"
    if format == "npz":
        return "npz"
    if format == "safetensors":
        return "safetensors"
    raise ValueError(f"format: expected 'npz', 'safetensors' or None, got {format!r}")


def _is_path(path: object) -> TypeIs[Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]]:
    return isinstance(path, (str, bytes, os.PathLike))


def _safetensors_save() -> Callable[[Dict[str, NDArray[Any]], Dict[str, str]], bytes]:
    try:
        from safetensors.numpy import save
    except ImportError:
        raise ImportError("format='safetensors': writing safetensors needs the safetensors package "
                          "(pip install 'fastnorm[safetensors]')") from None
    writer: Callable[[Dict[str, NDArray[Any]], Dict[str, str]], bytes] = save  # typed with or without its stubs
    return writer


def load(path: Union[_Path, BinaryIO], *, format: _Format = None
         ) -> Union[_layers._Layer, Dict[str, _layers._Layer]]:
    """Load what :func:`save` wrote: a layer, or a dict of names to layers.

    Everything in the file is checked before anything of a size it states is allocated: each array's
    header against the bytes the file holds for it, each configuration against the arrays (a
    ``num_features`` of 2**28 without arrays of that size is refused before a layer is built).  Loading
    allocates little more than the file's size.  Reading safetensors needs no package.

    Parameters
    ----------
    path : str, path-like or binary file object
        The file (a file object: seekable, read from its start).
    format : {None, "npz", "safetensors"}, keyword-only
        None: safetensors for a path ending in ``.safetensors`` (in any case), ``.npz`` otherwise (a file
        object included).

    Returns
    -------
    layer or dict of str to layers
        As given to :func:`save`, each in the mode (training or evaluation) it was in.

    Raises
    ------
    ValueError
        An unknown ``format``, or a file that is not one :func:`save` writes, or is damaged: not a zip
        archive or safetensors file, truncated, compressed or encrypted members, an array whose header
        disagrees with its data, a safetensors header longer than the file or whose offsets leave holes,
        overlap or run past the data, an unknown format, a description that is not the JSON :func:`save`
        writes (wrong or missing keys, unknown layer classes, configuration values of the wrong type or
        out of range), arrays missing, unexpected or of another shape or dtype than the configuration
        gives.  The message names what is wrong.
    TypeError
        A ``path`` that is neither a path nor a file object.
    OSError
        The file cannot be opened.

    Examples
    --------
    >>> import io, fastnorm
    >>> buffer = io.BytesIO()
    >>> fastnorm.save(buffer, fastnorm.LayerNorm(4, eps=1e-3))
    >>> _ = buffer.seek(0)
    >>> fastnorm.load(buffer)
    LayerNorm((4,), eps=0.001, elementwise_affine=True, bias=True)
    """
    kind = _format(path, format)
    if not _is_path(path):
        return _load(path, f"path: {path!r}", kind)
    with open(path, "rb") as f:
        return _load(f, f"path: {os.fspath(path)!r}", kind)


def _load(f: BinaryIO, where: str, format: str) -> Union[_layers._Layer, Dict[str, _layers._Layer]]:
    try:
        if format == "safetensors":
            tensors = SafetensorsFile(f, widen=False)
            text = tensors.metadata.get(_META_KEY)
            if text is None:
                raise ValueError(f"not a file written by fastnorm.save (no {_META_KEY!r} in its metadata; "
                                 "layer.load_state_dict reads a PyTorch state dict)")
            single, entries = _document(text)
            # A single layer's keys are bare ("weight"), as in PyTorch; the description names it "".
            arrays: Dict[str, NDArray[Any]] = {("." if single else "") + key: tensors[key] for key in tensors}
        else:
            arrays = _read_archive(f)
            meta = arrays.pop(_META_KEY, None)
            if meta is None or meta.shape != () or meta.dtype.kind != "U":
                raise ValueError("not a file written by fastnorm.save (no description)")
            single, entries = _document(str(meta[()]))
        layers = _layers_of(entries, arrays)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    except _DAMAGED as e:
        kind = "safetensors file" if format == "safetensors" else ".npz archive"
        raise ValueError(f"{where}: not a readable {kind} ({type(e).__name__}: {e})") from e
    return layers[""] if single else layers


# Exceptions with which zipfile and NumPy's .npy reader report a damaged archive (besides ValueError; the
# reader retries a header that does not parse with a tokenizer for files of Python 2).
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError,
            OverflowError, struct.error, zlib.error, tokenize.TokenError, SyntaxError)


def _read_archive(f: BinaryIO) -> Dict[str, NDArray[Any]]:
    """The arrays of the ``.npz`` archive in the binary file ``f``, by name, in native byte order.

    Each member's header is checked against the bytes the archive holds for it before its data is read,
    and the members together may not hold more than the file: a header that claims a terabyte is
    refused, not allocated.
    """
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    f.seek(0)
    arrays: Dict[str, NDArray[Any]] = {}
    total = 0
    with zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            member = f"member {info.filename!r}"
            if not info.filename.endswith(".npy") or info.filename[:-4] in arrays:
                raise ValueError(f"{member}: expected one .npy array per name")
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise ValueError(f"{member}: compressed or encrypted; fastnorm.save writes plain members")
            total += info.file_size
            if total > file_size:
                raise ValueError(f"{member}: the members claim more bytes than the file's {file_size}")
            try:
                arrays[info.filename[:-4]] = _read_member(archive, info)
            except ValueError as e:
                raise ValueError(f"{member}: {e}") from e
    return arrays


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> NDArray[Any]:
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype.kind not in "biufcU" or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"unsupported dtype {dtype}")
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if f.tell() + nbytes != info.file_size:
            raise ValueError(f"its header gives {nbytes} bytes of data ({dtype}, shape {shape}); "
                             f"the member holds {info.file_size - f.tell()}")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError("truncated")
    array = np.frombuffer(data, dtype, count).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="))


def _parse(text: str, arrays: Mapping[str, NDArray[Any]]) -> Tuple[Dict[str, _layers._Layer], bool]:
    """The layers a description (JSON) and its arrays (``"<name>.<key>"``) give, and whether it is of
    one layer; ValueError naming what is wrong otherwise."""
    single, entries = _document(text)
    return _layers_of(entries, arrays), single


def _document(text: str) -> Tuple[bool, Dict[str, Any]]:
    """Whether a description (JSON) is of one layer, and its entries (name -> class, config, mode)."""
    document = strict_json(text, "the description")
    version, single, entries = _fields(document, ("format", "single", "layers"), "the description")
    if type(version) is not int or version != _FORMAT:
        raise ValueError(f"unsupported fastnorm file format {version!r}")
    if type(single) is not bool or not isinstance(entries, dict) or (single and list(entries) != [""]):
        raise ValueError(f"the description's 'single' ({single!r}) and 'layers' disagree")
    return single, entries


def _layers_of(entries: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> Dict[str, _layers._Layer]:
    """The layers of a description's entries holding the arrays (``"<name>.<key>"``).

    Each configuration is tried on a stand-in layer whose vectors have one value, and the arrays'
    shapes are checked against the configuration's sizes, before the layer itself is built: building
    allocates no more than the arrays hold.
    """
    state: Dict[str, Dict[str, NDArray[Any]]] = {name: {} for name in entries}
    for key, value in arrays.items():
        name, _, field = key.partition(".")
        if name not in state or not field:
            raise ValueError(f"array {key!r} belongs to no layer of the description")
        state[name][field] = value
    layers = {}
    for name, entry in entries.items():
        where = f"layer {name!r}"
        cls_name, config, training = _fields(entry, ("class", "config", "training"), where)
        cls = _LAYER_CLASSES.get(cls_name) if isinstance(cls_name, str) else None
        if cls is None or "." in name or type(training) is not bool:
            raise ValueError(f"{where}: expected a name without '.', a fastnorm layer class and a training "
                             f"flag, got class {cls_name!r}, training {training!r}")
        layers[name] = _build(cls, config, state[name], f"{where} ({cls_name})").train(training)
    return layers


def _fields(value: object, names: Sequence[str], where: str) -> List[Any]:
    if not isinstance(value, dict) or set(value) != set(names):
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"{where}: expected the keys {list(names)}, got {keys}")
    return [value[n] for n in names]


def _build(cls: Type[_layers._Layer], config: object, state: Mapping[str, NDArray[Any]],
           where: str) -> _layers._Layer:
    """A ``cls`` of ``config`` holding ``state`` (key -> array), after checking they agree."""
    if not isinstance(config, dict) or not all(
            v is None or isinstance(v, (bool, int, float, str))
            or (isinstance(v, list) and all(type(d) is int for d in v))
            or (k == "renorm_clipping" and isinstance(v, dict)
                and all(type(n) in (int, float) for n in v.values()))
            for k, v in config.items()):
        raise ValueError(f"{where}: config: expected an object of numbers, strings and lists of integers "
                         f"(renorm_clipping: an object of numbers), got {config!r:.200}")
    try:
        kwargs = _layers._from_config(config)
        sizes, small = _sizes(cls, kwargs)
        stand_in = cls(**{**kwargs, **small})
        if isinstance(stand_in, _layers._LazyNorm):  # loaded once called (or loaded into): their length
            stand_in.load_state_dict(state, strict=False)
            sizes = _features_shape(stand_in.num_features)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{where}: config: {e}") from None
    unknown = sorted(set(config) - set(stand_in._config()))
    if unknown:
        raise ValueError(f"{where}: config: unknown arguments {unknown}")
    expected = stand_in.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: its configuration gives the arrays {sorted(expected)}: missing {missing}, "
                         f"unexpected {unexpected}")
    for key, value in state.items():
        shape, dtype = (sizes if expected[key].ndim else ()), expected[key].dtype
        if value.shape != shape or value.dtype.kind != dtype.kind or value.dtype.itemsize != dtype.itemsize:
            raise ValueError(f"{where}: array {key!r} is {value.dtype} of shape {value.shape}; its "
                             f"configuration gives {dtype} of shape {shape}")
    try:
        layer = cls(**kwargs)
        layer.load_state_dict(state)
    except (TypeError, ValueError, OverflowError, KeyError) as e:
        raise ValueError(f"{where}: {e}") from None
    return layer


def _features_shape(num_features: Any) -> Tuple[Any, ...]:
    """The parameters' shape of a ``num_features`` (with several channel axes: a tuple of sizes)."""
    return num_features if isinstance(num_features, tuple) else (num_features,)


def _sizes(cls: Type[_layers._Layer], kwargs: Mapping[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """The shape of a layer's parameter and buffer vectors given its constructor arguments, and the
    arguments of a stand-in of the same configuration whose vectors have one value."""
    if issubclass(cls, _layers._LazyNorm):  # the arrays, when there are any, give the length
        return (), {}
    if issubclass(cls, _layers._NormBase):
        features = _features_shape(kwargs.get("num_features"))
        return features, {"num_features": (1,) * len(features)}
    if issubclass(cls, _layers.LocalResponseNorm):  # no parameters
        return (), {}
    if issubclass(cls, _layers.GroupNorm):
        return (kwargs.get("num_channels"),), {"num_groups": 1, "num_channels": 1}
    shape = kwargs.get("normalized_shape")
    shape = shape if isinstance(shape, tuple) else (shape,)
    return shape, {"normalized_shape": (1,) * len(shape)}
