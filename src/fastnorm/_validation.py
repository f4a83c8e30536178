"""Argument checks shared by the functions and the layers, and the one statement of what the kernels
may assume about an array.  Every check of ``fastnorm.functional`` lives here (the first step of each
function; the last section holds each family's), so a function's body is its plan and its kernel call.

The kernels read and write raw memory.  An array handed to them is *plain*: an ndarray (not a subclass:
a ``numpy.ma.MaskedArray`` means more than its memory), float32 or float64 in the machine's byte order,
aligned to its item size, C-contiguous where it is passed as a buffer (``functional`` copies other
strides), writable where it is written.  ``_kernels.is_plain`` and ``_kernels.is_vector`` test exactly
that (the same C predicate serves the eval cache and the running-statistics update), and are the fast
path of every check below.  Every other array argument is brought to that form or rejected here, with
an error naming the argument:

* a masked array: ``TypeError`` (pass ``a.filled(value)`` or the data), except the input of the functions
  that take ``mask=`` (``_masked``: its data, its mask the values masked out);
* another byte order (``'>f4'`` on a little-endian machine) or misaligned memory (``np.frombuffer(raw,
  np.float32, offset=1)``): read through a plain copy; results are in native byte order;
* an ``out=`` of that kind: the result is computed into a plain array and copied into it;
* a running statistic of that kind (updated in place in training): updated by NumPy, in its own byte
  order.
"""
from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any, Dict, Literal, Optional, Sequence, SupportsFloat, SupportsIndex, Tuple, Union, cast, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _kernels

FloatArray = NDArray[np.floating[Any]]
"""An ndarray of float16, bfloat16, float32 or float64 (a result has its input's dtype)."""
Stats = NDArray[np.float64]
"""Statistics (means, inverse standard deviations) and parameter gradients: always float64."""
Shape = Union[SupportsIndex, Sequence[SupportsIndex]]
"""A shape or a set of axes: one integer or a sequence of them."""
Grads = Tuple[FloatArray, Stats, Stats]
"""``(grad_input, grad_weight, grad_bias)``: grad_input of the input's shape and dtype, the parameter
gradients float64."""
GradsWithAdd = Tuple[FloatArray, Stats, Stats, FloatArray]
"""``(grad_input, grad_weight, grad_bias, grad_add)``: a backward given the forward's ``add``, grad_add
of the input's shape and dtype."""
_Vector = Optional[FloatArray]  # a checked parameter vector, or None
_Running = Optional[Tuple[FloatArray, FloatArray]]  # (running_mean, running_var), or None


def _refuse_masked(value: object, name: str) -> None:
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name}: masked arrays are not supported (the mask would be ignored); pass "
                        f"{name}.filled(value) or the unmasked data")


def _array(value: object, name: str) -> NDArray[Any]:
    """``value`` as an ndarray; a masked array is refused (its mask would be silently dropped)."""
    if type(value) is np.ndarray:
        return value
    _refuse_masked(value, name)
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RecursionError) as error:  # ragged or self-containing sequences
        raise (TypeError if isinstance(error, TypeError) else ValueError)(f"{name}: {error}") from None


def _plain_copy(a: NDArray[Any], dtype: DTypeLike) -> NDArray[Any]:
    """A new C-contiguous array of ``a``'s values in ``dtype`` (native byte order, aligned)."""
    return np.array(a, dtype=np.dtype(dtype).newbyteorder("="), order="C")


def _is_half(dtype: np.dtype[Any]) -> bool:
    """Whether ``dtype`` is one of the half-precision types computed in float32: float16, or bfloat16
    (``ml_dtypes.bfloat16``, or any NumPy dtype of that name and 2 bytes: NumPy has none of its own)."""
    return dtype.itemsize == 2 and (dtype.kind == "f" or dtype.name == "bfloat16")


def _is_float(dtype: np.dtype[Any]) -> bool:
    """Whether ``dtype`` is a floating-point type fastnorm reads: float16, bfloat16, float32, float64."""
    return (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) or _is_half(dtype)


def _c_aligned(a: ArrayLike, dtype: DTypeLike) -> NDArray[Any]:
    """``a`` as a C-contiguous array of ``dtype`` aligned to its item size, as a kernel reads it: itself
    when it is one, else a copy (``np.ascontiguousarray`` keeps a misaligned array as it is)."""
    return np.require(a, dtype, ("C", "A"))


def _reals(value: object, name: str) -> Stats:
    """``value`` as a float64 array of real numbers (itself when it is one: read, never written):
    integers or any floating-point type (bfloat16, whose NumPy kind is not ``"f"``, included); otherwise a
    TypeError naming the argument."""
    a = _array(value, name)
    if a.dtype.kind not in "fiu" and not _is_half(a.dtype):
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _compute_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype a result of ``dtype`` is computed in: float32 for the half-precision types."""
    return np.dtype(np.float32) if _is_half(dtype) else dtype


def _as_input(x: object, name: str, half: bool = False) -> Tuple[FloatArray, np.dtype[Any]]:
    """Return (array to compute on, result dtype): a plain float32/float64 array as is, anything else as a
    plain view or copy (float16 and bfloat16 computed in float32, or kept as they are with ``half``: the
    callers whose kernels read them); the result dtype is the input's, in native byte order."""
    if _kernels.is_plain(x):
        return x, x.dtype
    a = _array(x, name)
    if not _is_float(a.dtype):
        raise TypeError(f"{name}: expected a floating-point array (float16, bfloat16, float32 or float64), "
                        f"got dtype {a.dtype}")
    dtype = a.dtype.newbyteorder("=")
    compute = dtype if half else _compute_dtype(dtype)
    if a.dtype != compute or not a.flags.aligned:
        a = a.astype(compute)  # a new array: native, aligned
    return a, dtype


def _is_real_scalar(value: object) -> bool:
    """Whether ``value`` is one real number: a bool is not; a bfloat16 scalar is, though it is no
    ``numbers.Real`` (NumPy registers its own scalar types only)."""
    if isinstance(value, numbers.Real):
        return not isinstance(value, bool)
    return isinstance(value, np.generic) and _is_half(value.dtype)


def _real(value: object, name: str, expected: str) -> float:
    """``value`` as a float in ``expected`` terms: a TypeError for a non-number, a ValueError for one no
    float can hold (10**400) or that is not finite."""
    if not _is_real_scalar(value):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}")
    try:
        value = float(cast(SupportsFloat, value))
    except OverflowError:
        raise ValueError(f"{name}: expected {expected}, got an integer too large for a float") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return value


def _check_eps(eps: object, name: str = "eps", training: bool = False) -> float:
    """A finite eps >= 0; > 0 when ``training`` (a batch may have zero variance), as PyTorch's batch_norm
    ("eps must be positive during training")."""
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    if not _is_real_scalar(eps):
        raise TypeError(f"{name}: expected a real number, got {type(eps).__name__}")
    eps = _real(eps, name, "a finite number >= 0")
    if eps < 0.0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {eps}")
    if training and eps == 0.0:
        raise ValueError(f"{name}: expected a positive number in training (batch_norm eps must be positive "
                         f"during training), got {eps}")
    return eps


@overload
def _check_momentum(momentum: object, allow_none: Literal[False], name: str = ...) -> float: ...
@overload
def _check_momentum(momentum: object, allow_none: bool = True, name: str = ...) -> Optional[float]: ...
def _check_momentum(momentum: object, allow_none: bool = True, name: str = "momentum") -> Optional[float]:
    if momentum is None and allow_none:
        return None
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # the common case, without the checks' calls
        return momentum
    expected = "a number in [0, 1]" + (" or None" if allow_none else "")
    momentum = _real(momentum, name, expected)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{name}: expected {expected}, got {momentum}")
    return momentum


def _integer(value: SupportsIndex, name: str, expected: str) -> int:
    """``value`` as an int (a bool is not one); otherwise a TypeError naming the argument and ``expected``."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected {expected}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected {expected}, got {value!r}") from None


def check_count(value: SupportsIndex, name: str) -> int:
    """``value`` as a positive int; otherwise an error naming the argument."""
    value = _integer(value, name, "a positive integer")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    return value


def _check_axis(axis: SupportsIndex, ndim: int, name: str) -> int:
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, without the checks' calls
        return axis % ndim
    axis = _integer(axis, name, "an integer axis")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} is out of range for a {ndim}-D input")
    return axis % ndim


def _normalized_shape(normalized_shape: object) -> Tuple[int, ...]:
    """``normalized_shape`` as a non-empty tuple of integers >= 0 (PyTorch accepts zero-size dimensions
    and rejects an empty shape)."""
    shape: Tuple[int, ...]
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape = (operator.index(normalized_shape),)
    else:
        try:
            if not isinstance(normalized_shape, Iterable) or isinstance(normalized_shape, bool) \
                    or any(isinstance(d, bool) for d in normalized_shape):
                raise TypeError
            shape = tuple(operator.index(d) for d in normalized_shape)
        except TypeError:
            raise TypeError("normalized_shape: expected an integer or a sequence of integers, "
                            f"got {normalized_shape!r}") from None
    if not shape:
        raise ValueError("normalized_shape: expected at least one dimension, got ()")
    if any(d < 0 for d in shape):
        raise ValueError(f"normalized_shape: expected dimensions >= 0, got {shape}")
    return shape


def _channel_vector(v: object, name: str, C: int, dtype: DTypeLike) -> Optional[FloatArray]:
    """A per-channel parameter as a plain vector of length C (float32/float64; other float types in
    ``dtype``), or None."""
    if v is None or _kernels.is_vector(v, C):
        return v
    a = _array(v, name)
    if not _is_float(a.dtype):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if a.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},) to match the {C} channels of the input, got shape {a.shape}")
    native = a.dtype.newbyteorder("=")
    return a if _kernels.is_vector(a, C) else _plain_copy(a, native if native in (np.float32, np.float64)
                                                          else _compute_dtype(np.dtype(dtype)))


def _elementwise_vector(v: object, name: str, shape: Tuple[int, ...], x: FloatArray) -> Optional[FloatArray]:
    """A per-element parameter of ``shape`` as a plain vector of the dtype x is computed in (or None)."""
    if v is None:
        return None
    size = math.prod(shape)
    if len(shape) == 1 and _kernels.is_vector(v, size, x):
        return v
    a = _array(v, name)
    if not _is_float(a.dtype):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (normalized_shape), got shape {a.shape}")
    a = a.reshape(size)
    compute = _compute_dtype(x.dtype)  # a half input's is float32
    return a if a.dtype == compute and _kernels.is_vector(a, size) else _plain_copy(a, compute)


def _stat_vector(v: object, name: str, shape: Tuple[int, ...]) -> Stats:
    """Statistics given to a backward function (a forward's ``return_stats``) as a plain float64 vector."""
    a = _reals(v, name)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    a = a.reshape(-1)
    return a if _kernels.is_vector(a, a.size) else _plain_copy(a, np.float64)


def _check_buffer(v: object, name: str) -> FloatArray:
    """A running statistic that training updates in place: a writable ndarray (its shape and dtype are
    checked by _channel_vector).  Another byte order or misaligned memory is fine: the update is then
    NumPy's, in the buffer's own form."""
    if type(v) is np.ndarray and v.flags.writeable:
        return v
    _refuse_masked(v, name)
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name}: expected a writable ndarray to update in place, got {type(v).__name__}")
    if not v.flags.writeable:
        raise ValueError(f"{name}: the array is read-only, so it cannot be updated in training mode")
    return v


def _check_out(out: object, shape: Tuple[int, ...], dtype: np.dtype[Any], name: str = "out") -> None:
    """``out=``: an ndarray of the result's shape and dtype (either byte order), writable."""
    _refuse_masked(out, name)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: expected an ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (the input's), got {out.shape}")
    if out.dtype.newbyteorder("=") != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the input's), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: the array is read-only")


def _check_residual(residual: object, shape: Tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any]:
    """``residual=``: an array of the input's dtype (either byte order) that broadcasts to its shape."""
    r = _array(residual, "residual")
    if r.dtype.newbyteorder("=") != dtype:
        raise TypeError(f"residual: expected dtype {dtype} (the input's), got {r.dtype}")
    try:
        fits = np.broadcast_shapes(r.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"residual: expected a shape that broadcasts to {shape} (the input's), got {r.shape}")
    return r


ACTIVATIONS = ("relu", "relu6", "silu", "gelu", "gelu_tanh", "sigmoid", "tanh")
"""The names ``activation=`` takes (their kernel codes are 1, 2, ... in this order; 0 is None)."""


def _check_activation(activation: object) -> int:
    """``activation=``: None (code 0) or one of ACTIVATIONS (its code)."""
    if activation is None:
        return 0
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS.index(activation) + 1
    names = ", ".join(repr(a) for a in ACTIVATIONS)
    if not isinstance(activation, str):
        raise TypeError(f"activation: expected None or one of {names}, got {type(activation).__name__}")
    raise ValueError(f"activation: expected None or one of {names}, got {activation!r}")


def _check_add(add: object, shape: Tuple[int, ...]) -> Optional[NDArray[Any]]:
    """``add=``: None, or a floating-point array that broadcasts to the input's ``shape``."""
    if add is None:
        return None
    a = _array(add, "add")
    if a.dtype.kind != "f" and not _is_half(a.dtype):
        raise TypeError(f"add: expected a floating-point array, got dtype {a.dtype}")
    if a.ndim > len(shape) or any(m not in (1, n) for m, n in zip(a.shape[::-1], shape[::-1])):
        raise ValueError(f"add: expected the input's shape {shape} (or one that broadcasts to it), got {a.shape}")
    return a


# ---------------------------------------------------------------------------------------------------------
# The arguments of the functions, family by family
# ---------------------------------------------------------------------------------------------------------

def _check_ndim(x: FloatArray, ndim: int, axes: str) -> None:
    """At least ``ndim`` dimensions, ``axes`` naming them: ``"(N, C, ...)"``."""
    if x.ndim < ndim:
        raise ValueError(f"input: expected at least {ndim} dimensions {axes}, got {x.ndim}-D input of shape {x.shape}")


def _check_channels(x: FloatArray, channel_axis: SupportsIndex) -> Tuple[int, int]:
    """(axis, C) of a BatchNorm-style input: at least (N, C), the channels on ``channel_axis``."""
    _check_ndim(x, 2, "(N, C, ...)")
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    return axis, x.shape[axis]


def _check_instance_axis(x: FloatArray, channel_axis: SupportsIndex) -> int:
    """The channel axis of an InstanceNorm input (N, ..., C, ...): any axis but the batch axis 0."""
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    if axis == 0:
        raise ValueError(f"channel_axis: expected an axis other than 0 (the samples), got {channel_axis}")
    return axis


def _channel_params(x: FloatArray, C: int, running_mean: object, running_var: object, weight: object,
                    bias: object) -> Tuple[_Vector, _Vector, _Vector, _Vector]:
    """The per-channel vectors of batch_norm and instance_norm, checked (see _channel_vector)."""
    rm = _channel_vector(running_mean, "running_mean", C, x.dtype)
    rv = _channel_vector(running_var, "running_var", C, x.dtype)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean, running_var: expected both or neither")
    return rm, rv, _channel_vector(weight, "weight", C, x.dtype), _channel_vector(bias, "bias", C, x.dtype)


def _running_roles(use_batch_stats: bool, running_mean: object, running_var: object, rm: _Vector, rv: _Vector,
                   required: str) -> Tuple[_Running, _Running]:
    """``(buffers, frozen)``: the running statistics that a call with batch statistics updates in place
    (None where there are none), or the checked ones (``rm``, ``rv``) that a call without normalizes
    with (required then: ``required`` says when)."""
    if use_batch_stats:
        if rm is None:
            return None, None
        return (_check_buffer(running_mean, "running_mean"), _check_buffer(running_var, "running_var")), None
    if rm is None or rv is None:
        raise ValueError(f"running_mean, running_var: required when {required}")
    return None, (rm, rv)


def _momentum_factor(momentum: object, num_batches_tracked: object) -> float:
    """The weight of the new batch in the running statistics: ``momentum``, or the cumulative average's
    ``1 / (num_batches_tracked + 1)`` for ``momentum=None``."""
    momentum = _check_momentum(momentum)
    if momentum is not None:
        return momentum
    if num_batches_tracked is None:
        raise ValueError("num_batches_tracked: required with momentum=None (a cumulative average)")
    if isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, numbers.Integral) \
            or num_batches_tracked < 0:
        raise ValueError(f"num_batches_tracked: expected an integer >= 0, got {num_batches_tracked!r}")
    return 1.0 / (int(num_batches_tracked) + 1)


def _check_normalized_shape(normalized_shape: object, x: FloatArray) -> Tuple[int, ...]:
    """normalized_shape as a tuple that must equal the input's trailing dimensions."""
    if (type(normalized_shape) is tuple and 0 < len(normalized_shape) <= x.ndim
            and x.shape[x.ndim - len(normalized_shape):] == normalized_shape
            and (type(normalized_shape[0]) is int if len(normalized_shape) == 1
                 else all(type(d) is int for d in normalized_shape))):
        return normalized_shape
    shape = _normalized_shape(normalized_shape)
    if len(shape) > x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"normalized_shape: expected the input's trailing dimensions to be {shape}, "
                         f"got input of shape {x.shape}")
    return shape


def _check_normalized_axes(normalized_shape: object, axes: Shape,
                           x: FloatArray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(axes, shape) of LayerNorm or RMSNorm over ``axes`` (see _check_axes); ``normalized_shape`` then
    None or their sizes."""
    checked, shape = _check_axes(axes, x, "axes")
    if normalized_shape is not None and _normalized_shape(normalized_shape) != shape:
        raise ValueError(f"normalized_shape: expected None or {shape} (the sizes of axes {checked}), "
                         f"got {normalized_shape!r}")
    return checked, shape


def _check_layer_axes(axes: Optional[Iterable[SupportsIndex]],
                      normalized_shape: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
    """A LayerNorm's or RMSNorm's ``axes``: None, or distinct integers, one per dimension of
    ``normalized_shape`` (placed on an input's axes at each call)."""
    if axes is None:
        return None
    try:
        if isinstance(axes, (str, bytes)) or any(isinstance(a, bool) for a in axes):
            raise TypeError
        checked = tuple(operator.index(a) for a in axes)
    except TypeError:
        raise TypeError(f"axes: expected None or a sequence of integers, got {axes!r}") from None
    if len(set(checked)) != len(checked) or len(checked) != len(normalized_shape):
        raise ValueError(f"axes: expected {len(normalized_shape)} distinct axes (one per dimension of "
                         f"normalized_shape {normalized_shape}), got {axes!r}")
    return checked


def _rms_eps(eps: Optional[float], dtype: np.dtype[Any]) -> float:
    """RMSNorm's eps: None is the machine epsilon of the dtype the input is computed in, as PyTorch
    (float32's for float16 and bfloat16 input); the backward's check needs the same value."""
    if eps is not None:
        return eps
    return float(np.finfo(_compute_dtype(dtype)).eps)


def _group_norm_layout(x: FloatArray, num_groups: SupportsIndex, channel_axis: SupportsIndex) -> Tuple[int, int, int]:
    """(channel axis, groups, channels) of a GroupNorm input, checked."""
    _check_ndim(x, 2, "(N, C, ...)")
    axis = _check_axis(channel_axis, x.ndim, "channel_axis")
    if axis not in (1, x.ndim - 1):
        raise ValueError(f"channel_axis: expected 1 (channels first) or -1 (channels last), got {channel_axis}")
    G = check_count(num_groups, "num_groups")
    C = x.shape[axis]
    if C % G:
        raise ValueError(f"num_groups: expected a divisor of the {C} channels of the input, got {G}")
    return axis, G, C


def _grad_inputs(grad_output: ArrayLike, input: ArrayLike,
                 half: bool = False) -> Tuple[FloatArray, FloatArray, np.dtype[Any]]:
    """(x, dy, result dtype) of a backward: dy of x's shape, in x's compute dtype (with ``half``, float16
    and bfloat16 kept as they are where x and dy have the same: the callers whose kernels read them)."""
    x, dtype = _as_input(input, "input", half)
    g, _ = _as_input(grad_output, "grad_output", half)
    if g.shape != x.shape:
        raise ValueError(f"grad_output: expected shape {x.shape} (the input's), got {g.shape}")
    if g.dtype != x.dtype:
        compute = _compute_dtype(x.dtype)
        x, g = x.astype(compute, copy=False), g.astype(compute)
    return x, g, dtype


def _check_of(eps: Optional[float]) -> Optional[float]:
    """The kernels' ``check`` argument of a backward: the forward's eps, or None (no check)."""
    return None if eps is None else _check_eps(eps)


def _normalize_axes(axes: Shape, ndim: int, name: str = "axes") -> Tuple[int, ...]:
    """``axes`` of a reduction as sorted distinct axes in range."""
    items = axes if isinstance(axes, Iterable) and not isinstance(axes, numbers.Integral) else (axes,)
    try:
        checked = tuple(_check_axis(a, ndim, name) for a in items)
    except TypeError:
        raise TypeError(f"{name}: expected an integer or a sequence of integers, got {axes!r}") from None
    if len(set(checked)) != len(checked):
        raise ValueError(f"{name}: repeated axis in {checked}")
    return tuple(sorted(checked))


def _several_axes(axes: object) -> bool:
    """Whether a ``channel_axis`` or ``axes`` argument names a sequence of axes (not one integer)."""
    if type(axes) is int:  # the common case, without an abstract base class's check
        return False
    return isinstance(axes, Iterable) and not isinstance(axes, (numbers.Integral, str, bytes))


def _check_axes(axes: Shape, x: FloatArray, name: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(axes, shape): a non-empty set of x's axes as sorted distinct axes, and their sizes in that order
    (the shape of the parameters over them)."""
    checked = _normalize_axes(axes, x.ndim, name)
    if not checked:
        raise ValueError(f"{name}: expected at least one axis, got {axes!r}")
    return checked, tuple(x.shape[a] for a in checked)


def _shaped_like(v: object, name: str, shape: Tuple[int, ...], axes: Tuple[int, ...],
                 perm: Optional[Sequence[int]] = None) -> Any:
    """A parameter or statistic over several axes: an array of ``shape`` (the sizes of ``axes``) seen as
    the vector the kernels take (a view of an ndarray where its memory allows), its axes first permuted
    by ``perm`` (the order of the kernels' view), or None; the vector's own checks (dtype, writability)
    are the callee's."""
    if v is None:
        return None
    a = _array(v, name)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (the sizes of axes {axes}), got shape {a.shape}")
    if perm is not None:
        a = np.transpose(a, perm)
    flat = _reshaped_view(a, (a.size,))
    return np.reshape(a, -1) if flat is None else flat  # not contiguous: a flat copy, written back after


def _reshaped_view(a: FloatArray, shape: Tuple[int, ...]) -> Optional[FloatArray]:
    """``a`` reshaped to ``shape`` as a view of its memory, or None where that needs a copy
    (``np.reshape(a, shape, copy=False)`` of NumPy 2.1 and later, which NumPy 1.25 to 2.0 lack)."""
    view = a.view()
    try:
        view.shape = shape  # in place: refused (AttributeError) where the strides do not allow it
    except AttributeError:
        return None
    return view


def _broadcast_params(x: FloatArray, **values: object) -> Tuple[Dict[str, Stats], Tuple[int, ...]]:
    """batch_normalization's parameters as float64 arrays (those None left out; ``mean`` and ``variance``
    required), and the shape they broadcast to with x."""
    params: Dict[str, Stats] = {}
    for pname, value in values.items():
        if value is None:
            if pname in ("mean", "variance"):
                raise TypeError(f"{pname}: required, got None")
            continue
        params[pname] = _reals(value, pname)
    try:
        shape = np.broadcast_shapes(x.shape, *(a.shape for a in params.values()))
    except ValueError:
        shapes = ", ".join(f"{k} {a.shape}" for k, a in params.items())
        raise ValueError(f"x, {', '.join(params)}: shapes do not broadcast: x {x.shape}, {shapes}") from None
    return params, shape


def _float64_input(x: object, name: str) -> Tuple[Stats, np.dtype[Any]]:
    """(``x`` as float64, the result dtype) for the ops computed in NumPy in float64 (every float input:
    its values exactly, so float16 and float32 are accumulated in float64)."""
    a, dtype = _as_input(x, name)
    return a.astype(np.float64, copy=False), dtype


def _float64_grads(grad_output: object, input: object) -> Tuple[Stats, Stats, np.dtype[Any]]:
    """(grad_output, input, the result dtype) of a backward computed in float64, of one shape."""
    x, dtype = _float64_input(input, "input")
    g, _ = _float64_input(grad_output, "grad_output")
    if g.shape != x.shape:
        raise ValueError(f"grad_output: expected shape {x.shape} (the input's), got {g.shape}")
    return g, x, dtype


def _rounded(result: FloatArray, dtype: np.dtype[Any]) -> FloatArray:
    """A result (float64, float32) in the result dtype; beyond float16's range it is inf, silently (as a kernel's)."""
    with np.errstate(over="ignore"):
        return result.astype(dtype, copy=False)


def _deliver(result: Stats, out: Optional[FloatArray], dtype: np.dtype[Any],
             commit: Optional[_kernels.Commit] = None) -> FloatArray:
    """What an op computed in float64 returns: ``out`` (checked) with the result copied in, rounded once
    to its dtype, or a new array of ``dtype``.  The copy into ``out`` and a layer's ``commit`` are
    applied together by one C call, so a call is applied whole or not at all."""
    if out is not None:
        _check_out(out, result.shape, dtype)
    y = out if out is not None else _rounded(result, dtype)
    if out is not None or commit is not None:
        commit = commit if commit is not None else _kernels.Commit()
        commit.prepare(out)
        commit.apply(result)
    return y


def _check_mask(mask: object, shape: Tuple[int, ...]) -> NDArray[np.bool_]:
    """``mask=``: a boolean array broadcastable to the input's ``shape``, as a (read-only) view of that shape."""
    m = _array(mask, "mask")
    if m.dtype != np.bool_:
        raise TypeError(f"mask: expected a boolean array, got dtype {m.dtype}")
    try:
        return np.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(f"mask: expected a shape that broadcasts to the input's {shape}, got {m.shape}") from None


def _batch_norm_args(x: FloatArray, channel_axis: SupportsIndex, running_mean: object, running_var: object,
                     weight: object, bias: object, training: bool, momentum: object, eps: object,
                     num_batches_tracked: object) -> Tuple[int, int, float, _Vector, _Vector, _Running, _Running,
                                                           float]:
    """batch_norm's arguments checked: (axis, C, eps, weight, bias, buffers, frozen, factor), see
    _running_roles and _momentum_factor (factor 0 where nothing is updated)."""
    axis, C = _check_channels(x, channel_axis)
    eps = _check_eps(eps, training=training)
    rm, rv, w, b = _channel_params(x, C, running_mean, running_var, weight, bias)
    buffers, frozen = _running_roles(training, running_mean, running_var, rm, rv, "training=False (evaluation "
                                     "normalizes with the running statistics); pass training=True to use the "
                                     "batch statistics")
    factor = _momentum_factor(momentum, num_batches_tracked) if buffers is not None else 0.0
    return axis, C, eps, w, b, buffers, frozen, factor


def _instance_norm_args(x: FloatArray, running_mean: object, running_var: object, weight: object, bias: object,
                        use_input_stats: bool, momentum: object,
                        eps: object) -> Tuple[float, _Vector, _Vector, _Running, _Running, float]:
    """instance_norm's arguments checked: (eps, weight, bias, buffers, frozen, factor), see batch_norm's."""
    _check_ndim(x, 3, "(N, C, spatial...)")
    eps = _check_eps(eps)
    rm, rv, w, b = _channel_params(x, x.shape[1], running_mean, running_var, weight, bias)
    buffers, frozen = _running_roles(use_input_stats, running_mean, running_var, rm, rv, "use_input_stats=False")
    factor = _check_momentum(momentum, allow_none=False) if buffers is not None else 0.0
    return eps, w, b, buffers, frozen, factor


def _group_norm_args(x: FloatArray, num_groups: SupportsIndex, weight: object, bias: object, eps: object,
                     channel_axis: SupportsIndex) -> Tuple[int, int, int, _Vector, _Vector, float]:
    """group_norm's arguments checked: (channel axis, G, C, weight, bias, eps)."""
    axis, G, C = _group_norm_layout(x, num_groups, channel_axis)
    return (axis, G, C, _channel_vector(weight, "weight", C, x.dtype), _channel_vector(bias, "bias", C, x.dtype),
            _check_eps(eps))
