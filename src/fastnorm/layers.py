"""Normalization layers with the constructor arguments, attributes and state-dict keys of ``torch.nn``.

Parameters and running statistics are plain ndarrays (length C vectors); the layers are thin over
:mod:`fastnorm.functional`.
"""
from __future__ import annotations

import collections
import contextvars
import inspect
import numbers
import os
import warnings
from typing import BinaryIO, ContextManager, Mapping, Optional, Union

from numpy.typing import ArrayLike, NDArray

import numpy as np

from . import _kernels
from . import functional as F
from ._safetensors import SafetensorsFile
from ._threads import check_count, context_setting, threads_for
from ._validation import _array, _check_axis, _check_eps, _check_momentum, _normalized_shape
from .statistics import Moments

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "no_grad"]

# Whether layer calls keep what backward needs, per context (a Python thread, an asyncio task).
_grad_off: contextvars.ContextVar[bool] = contextvars.ContextVar("fastnorm_no_grad", default=False)


def no_grad() -> ContextManager[None]:
    """Within it, layer calls made in the current context keep nothing for ``backward`` (as
    ``torch.no_grad``): for inference, and for calls on one layer from several threads.

    The setting belongs to the calling Python thread, or to the asyncio task: each task runs in a copy of
    its creator's context, so ``no_grad()`` inside one task does not reach a task running beside it.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> ln = fastnorm.LayerNorm(4)
    >>> with fastnorm.no_grad():
    ...     y = ln(np.ones((2, 4), np.float32))
    """
    return context_setting(_grad_off, True)


def _keeps_grad():
    return not _grad_off.get()


def _from_config(config):
    """Constructor arguments from a JSON config (lists back to tuples, dtype names to dtypes)."""
    return {k: tuple(v) if isinstance(v, list) else (np.dtype(v) if k == "dtype" else v)
            for k, v in config.items()}


def _config_value(key, value):
    """A constructor argument as ``_config`` records it (dtypes by name)."""
    return np.dtype(value).name if key == "dtype" else value


LoadResult = collections.namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


def _state_array(value, name):
    """A state-dict value as an ndarray.  A PyTorch tensor goes through float64 when it is floating point:
    exact for every torch float type, including bfloat16 and float8, which NumPy lacks."""
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()
    return _array(value, name)


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


class _Layer:
    """State-dict plumbing and backward bookkeeping shared by the layers: ``_state`` lists the keys in
    PyTorch's order; a forward keeps what ``_backward`` needs (the input, by reference, and per-row
    statistics, never a normalized copy) and ``backward`` turns it into gradients."""

    _optional_state = ()
    _has_bias = True  # with affine parameters, whether one is a bias (PyTorch's bias=False)
    _saved = None
    grad_weight = None
    grad_bias = None

    @staticmethod
    def _input_to_keep(x, out):
        """Before a forward: the input backward will need (a copy when the forward overwrites it)."""
        if out is not None and _keeps_grad() and np.may_share_memory(out, x):
            return np.array(x, copy=True)
        return x

    def _keep(self, x, *stats):
        if _keeps_grad():
            self._saved = (x,) + stats

    def backward(self, grad_output: ArrayLike) -> NDArray:
        """Gradient of the loss with respect to the last forward's input, given ``grad_output`` (the
        gradient with respect to its output).  Stores ``grad_weight`` and ``grad_bias`` (None for a
        parameter the layer does not have).

        The statistics are those of the last forward, in the mode it ran in: the batch's in training
        mode, the running ones (frozen) in evaluation mode.
        """
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no forward to differentiate; call the layer "
                               "on an input first (outside fastnorm.no_grad())")
        dx, grad_weight, grad_bias = self._backward(grad_output, *self._saved)
        state = self._state()
        weight, bias = state.get("weight"), state.get("bias")
        # New arrays of the parameter's dtype, in native byte order whatever the parameter's.
        self.grad_weight = None if weight is None else grad_weight.astype(weight.dtype.newbyteorder("=")).reshape(
            weight.shape)
        self.grad_bias = None if bias is None else grad_bias.astype(bias.dtype.newbyteorder("=")).reshape(bias.shape)
        return dx

    def _state(self):
        raise NotImplementedError

    def _torch_repr(self):
        """The arguments PyTorch's repr of the same layer shows (its ``extra_repr``)."""
        raise NotImplementedError

    def __repr__(self):
        # PyTorch's repr, then fastnorm's own arguments where they differ from the constructor's default.
        config, defaults = self._config(), inspect.signature(type(self)).parameters
        extras = [f"{key}={config[key]}" for key in ("channel_axis", "bessel", "dtype")
                  if key in config and config[key] != _config_value(key, defaults[key].default)]
        return f"{type(self).__name__}({', '.join([self._torch_repr(), *extras])})"

    def __getstate__(self):
        # Pickles and copies carry parameters and buffers, not what the last forward kept for backward.
        state = self.__dict__.copy()
        state.pop("_saved", None)
        state.pop("_eval_cache", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def train(self, mode: bool = True):
        """Set training mode (``mode=True``) or evaluation mode; returns the layer."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set evaluation mode; returns the layer."""
        return self.train(False)

    def __call__(self, x: ArrayLike, *, out: Optional[NDArray] = None) -> NDArray:
        return self.forward(x, out=out)

    def state_dict(self) -> "collections.OrderedDict[str, NDArray]":
        """Copies of the parameters and buffers, under PyTorch's keys."""
        state = collections.OrderedDict()
        for key, value in self._state().items():
            if value is not None:
                state[key] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict: Union[Mapping[str, ArrayLike], str, "os.PathLike[str]", BinaryIO],
                        strict: bool = True, prefix: str = ""):
        """Load parameters and buffers from a mapping of PyTorch's keys to array-likes, or from a
        safetensors file (``safetensors.torch.save_file(model.state_dict(), path)``).

        Values may be ndarrays, PyTorch tensors of any dtype (bfloat16 included) or anything ``np.asarray``
        takes; they are converted to the layer's dtype.  ``prefix`` selects the entries of one module in a
        whole model's state dict (``prefix="features.1."``); others are ignored.  Everything is checked
        before anything is assigned, so a failed load leaves the layer as it was.

        A safetensors file is read without the ``safetensors`` package: its header is checked in full,
        then only this layer's tensors are read (BF16 and F8_E5M2 exactly, as float32 and float16).

        Parameters
        ----------
        state_dict : mapping of str to array-like, or str, path-like or binary file object
            A state dict, or the safetensors file of one (whatever its name).
        strict : bool
            Missing or unexpected keys (among those with the prefix) raise.
        prefix : str
            The module's name in the model, with its trailing ``"."``.

        Returns
        -------
        LoadResult
            ``(missing_keys, unexpected_keys)`` (with the prefix), as PyTorch's.

        Raises
        ------
        RuntimeError
            With ``strict``, keys missing or unexpected, listed as PyTorch lists them.
        ValueError, TypeError
            A value of the wrong shape or type (a masked array, a negative ``num_batches_tracked``), a
            ``state_dict`` that is neither a mapping nor a file, or a safetensors file that is damaged or
            crafted (ValueError; its message names the file and what is wrong).
        OSError
            The file cannot be opened.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> ln = fastnorm.LayerNorm(3)
        >>> ln.load_state_dict({"2.weight": np.full(3, 2.0), "2.bias": np.zeros(3)}, prefix="2.")
        LoadResult(missing_keys=[], unexpected_keys=[])
        >>> ln.weight
        array([2., 2., 2.], dtype=float32)
        """
        if isinstance(state_dict, (str, os.PathLike)) or hasattr(state_dict, "read"):
            return self._load_safetensors(state_dict, strict, prefix)
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a mapping of keys to arrays or a safetensors file, got "
                            f"{type(state_dict).__name__}")
        # The keys with the prefix, without it; a value is read (from a file: loaded) only when it is used.
        given = {k[len(prefix):]: k for k in state_dict if isinstance(k, str) and k.startswith(prefix)}
        expected = {k: v for k, v in self._state().items() if v is not None}
        missing = [prefix + k for k in expected if k not in given and k not in self._optional_state]
        unexpected = [prefix + k for k in given if k not in expected]
        if strict and (missing or unexpected):
            errors = [f"{kind} key(s) in state_dict: " + ", ".join(f'"{k}"' for k in keys) + ". "
                      for kind, keys in (("Missing", missing), ("Unexpected", unexpected)) if keys]
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors))
        new = {}
        for key, current in expected.items():
            if key not in given:
                continue
            name = f"state_dict[{prefix + key!r}]"
            value = _state_array(state_dict[given[key]], name)
            if value.shape != np.shape(current):
                raise ValueError(f"{name}: expected shape {np.shape(current)}, got {value.shape}")
            if np.ndim(current) == 0:  # num_batches_tracked: truncated to an integer, as PyTorch's copy_
                if value.dtype.kind not in "fiu":
                    raise TypeError(f"{name}: expected an integer, got dtype {value.dtype}")
                if not (np.isfinite(value) and value > -1):
                    raise ValueError(f"{name}: expected an integer >= 0, got {value}")
                new[key] = int(value)
            else:
                if value.dtype.kind not in "fiu":
                    raise TypeError(f"{name}: expected real numbers, got dtype {value.dtype}")
                new[key] = value.astype(self.dtype, copy=True)
        for key, value in new.items():
            setattr(self, key, value)
        return LoadResult(missing, unexpected)

    def _load_safetensors(self, file, strict, prefix):
        where = f"state_dict: {file!r}" if hasattr(file, "read") else f"state_dict: {os.fspath(file)!r}"
        try:
            if hasattr(file, "read"):
                return self.load_state_dict(SafetensorsFile(file), strict, prefix)
            with open(file, "rb") as f:
                return self.load_state_dict(SafetensorsFile(f), strict, prefix)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e


class _NormBase(_Layer):
    """Per-channel parameters and running statistics, as PyTorch's ``_NormBase``."""
    _input_ndims = ()
    _optional_state = ("num_batches_tracked",)

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, dtype, bias=True):
        self.num_features = check_count(num_features, "num_features")
        self.eps = _check_eps(eps)
        self.momentum = _check_momentum(momentum)
        self.affine = bool(affine)
        self._has_bias = self.affine and bool(bias)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = _check_dtype(dtype)
        self.training = True
        self.weight = self.bias = None
        self.running_mean = self.running_var = self.num_batches_tracked = None
        self.reset_parameters()

    def _config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "bias": self._has_bias, "track_running_stats": self.track_running_stats,
                "dtype": self.dtype.name}

    def reset_running_stats(self):
        """Running mean 0, running variance 1, no batch tracked."""
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self.dtype)
            self.running_var = np.ones(self.num_features, self.dtype)
            self.num_batches_tracked = 0

    def reset_parameters(self):
        """Reset the running statistics, weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.affine:
            self.weight = np.ones(self.num_features, self.dtype)
            if self._has_bias:
                self.bias = np.zeros(self.num_features, self.dtype)

    def _state(self):
        return {"weight": self.weight, "bias": self.bias, "running_mean": self.running_mean,
                "running_var": self.running_var,
                "num_batches_tracked": None if self.num_batches_tracked is None
                else np.array(self.num_batches_tracked, dtype=np.int64)}

    def _check_input(self, x):
        if x.ndim not in self._input_ndims:
            expected = " or ".join(f"{n}D" for n in self._input_ndims)
            raise ValueError(f"input: expected {expected} input, got {x.ndim}D input of shape {x.shape}")

    def _torch_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self._has_bias}, track_running_stats={self.track_running_stats}")


class _BatchNorm(_NormBase):
    _recorder = None  # [Moments, calls] while calibrate_batch_norms runs

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 bias=True, dtype=np.float32, channel_axis=1, bessel=True):
        if not isinstance(channel_axis, numbers.Integral):
            raise TypeError(f"channel_axis: expected an integer axis, got {channel_axis!r}")
        self.channel_axis = int(channel_axis)
        self.bessel = bool(bessel)
        self._eval_cache = _kernels.EvalCache()
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias)

    def __setstate__(self, state):
        super().__setstate__(state)
        self._eval_cache = _kernels.EvalCache()

    def _config(self):
        return dict(super()._config(), channel_axis=self.channel_axis, bessel=self.bessel)

    def forward(self, x: ArrayLike, *, out: Optional[NDArray] = None) -> NDArray:
        """Normalize ``x``: batch statistics in training mode (updating the running statistics), running
        statistics in evaluation mode (batch statistics when ``track_running_stats`` is False)."""
        if (out is None and not self.training and self.running_mean is not None and type(x) is np.ndarray
                and x.ndim in self._input_ndims and -x.ndim <= self.channel_axis < x.ndim):
            # The eval path of an inference pipeline: factors folded once, one sweep per call.
            y = _kernels.eval_cached(self._eval_cache, x, self.channel_axis, self.running_mean, self.running_var,
                                     self.weight, self.bias, self.eps, threads_for(x.size))
            if y is not None:
                self._keep(x, None, None, False)
                return y
        x = _array(x, "input")
        self._check_input(x)
        if self._recorder is not None:
            moments = self._moments_of(x)
            self._recorder[0] = moments if self._recorder[0] is None else self._recorder[0] + moments
            self._recorder[1] += 1
        tracking = self.training and self.track_running_stats
        use_batch_stats = self.training or self.running_mean is None
        keep_buffers = not self.training or self.track_running_stats
        saved = self._input_to_keep(x, out)
        result = F.batch_norm(x, self.running_mean if keep_buffers else None,
                              self.running_var if keep_buffers else None, self.weight, self.bias,
                              use_batch_stats, self.momentum, self.eps, channel_axis=self.channel_axis, out=out,
                              bessel=self.bessel, num_batches_tracked=self.num_batches_tracked,
                              return_stats=use_batch_stats)
        if tracking and x.size > 0:
            self.num_batches_tracked += 1
        if not use_batch_stats:  # eval: the running statistics, read at backward time
            self._keep(saved, None, None, False)
            return result
        self._keep(saved, result[1], result[2], True)
        return result[0]

    def _moments_of(self, x):
        """Exact per-channel moments of an input of this layer."""
        axis = _check_axis(self.channel_axis, x.ndim, "channel_axis")
        if x.shape[axis] != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels on axis {axis}, got input of shape {x.shape}")
        return Moments.of(x, tuple(a for a in range(x.ndim) if a != axis))

    def calibrate(self, batches):
        """Exact population statistics ("precise BN"): set the running mean and variance to the mean and
        (unbiased, or biased with ``bessel=False``) variance over all the values of all ``batches``
        (inputs of this layer), instead of an exponential average.  Returns the layer.

        See :func:`fastnorm.calibrate_batch_norms` for the layers of a whole model.
        """
        self._set_running_stats(*self._population_stats(lambda: self._moments_of_batches(batches)))
        return self

    def _moments_of_batches(self, batches):
        if self.running_mean is None:
            raise ValueError("calibrate: the layer keeps no running statistics (track_running_stats=False)")
        total, calls = None, 0
        for x in batches:
            x = _array(x, "batches")
            self._check_input(x)
            moments = self._moments_of(x)
            total = moments if total is None else total + moments
            calls += 1
        if total is None:
            raise ValueError("batches: expected at least one batch")
        return total, calls

    def _population_stats(self, local):
        """The running mean, variance and batch count that ``local()``, the ``(Moments, calls)`` of the
        inputs seen here, gives (SyncBatchNorm merges the moments of every process first)."""
        moments, calls = local()
        if float(moments.count.min()) <= (1 if self.bessel else 0):
            raise ValueError("batches: expected more than 1 value per channel in all")
        return moments.mean, moments.var(unbiased=self.bessel), calls

    def _set_running_stats(self, mean, var, calls):
        self.running_mean[...] = mean
        self.running_var[...] = var
        self.num_batches_tracked = calls

    def _backward(self, grad_output, x, mean, invstd, batch_stats):
        if not batch_stats:
            mean = self.running_mean
            invstd = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
        return F.batch_norm_backward(grad_output, x, mean, invstd, self.weight, batch_stats,
                                     channel_axis=self.channel_axis)


class BatchNorm1d(_BatchNorm):
    """Batch normalization over ``(N, C)`` or ``(N, C, L)`` input, as ``torch.nn.BatchNorm1d``.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance before the square root.
    momentum : float or None
        Weight of the new batch in the running statistics (PyTorch's convention; Keras' ``momentum`` is
        ``1 - momentum``).  None: cumulative average over ``num_batches_tracked`` batches.
    affine : bool
        Learnable ``weight`` (1) and ``bias`` (0).
    track_running_stats : bool
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``; without them evaluation mode
        uses the batch statistics.
    bias : bool, keyword-only
        With ``affine``, whether there is a bias (False: a weight only, as PyTorch's ``bias=False``).
    dtype : float32 or float64, keyword-only
        dtype of the parameters and buffers.
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1 (channels last).
    bessel : bool, keyword-only
        Update the running variance with the unbiased (True, PyTorch) or biased (False, ONNX/Keras) batch
        variance.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> bn = fastnorm.BatchNorm1d(3)
    >>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, (64, 3)).astype(np.float32))
    >>> bool(abs(y.mean()) < 1e-5), bn.num_batches_tracked
    (True, 1)
    """
    _input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over ``(N, C, H, W)`` input, as ``torch.nn.BatchNorm2d``.

    ``channel_axis=-1`` takes ``(N, H, W, C)`` input.  Arguments as :class:`BatchNorm1d`.
    """
    _input_ndims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over ``(N, C, D, H, W)`` input, as ``torch.nn.BatchNorm3d``.

    ``channel_axis=-1`` takes ``(N, D, H, W, C)`` input.  Arguments as :class:`BatchNorm1d`.
    """
    _input_ndims = (5,)


class LayerNorm(_Layer):
    """Layer normalization over the trailing ``normalized_shape`` dimensions, as ``torch.nn.LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions of the input to normalize over.
    eps : float
        Added to the variance before the square root.
    elementwise_affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.
    bias : bool
        With ``elementwise_affine``, whether there is a bias.
    dtype : float32 or float64, keyword-only

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> ln = fastnorm.LayerNorm(4)
    >>> ln(np.array([[1, 2, 3, 4]], np.float32)).astype(float).round(3).tolist()
    [[-1.342, -0.447, 0.447, 1.342]]
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *, dtype=np.float32):
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self._has_bias = self.elementwise_affine and bool(bias)
        self.training = True
        self.weight = self.bias = None
        self.reset_parameters()

    def _config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self._has_bias, "dtype": self.dtype.name}

    def reset_parameters(self):
        """Weight to 1, bias to 0."""
        if self.elementwise_affine:
            self.weight = np.ones(self.normalized_shape, self.dtype)
            if self._has_bias:
                self.bias = np.zeros(self.normalized_shape, self.dtype)

    def _state(self):
        return {"weight": self.weight, "bias": self.bias}

    def forward(self, x: ArrayLike, *, out: Optional[NDArray] = None) -> NDArray:
        if not _keeps_grad():
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, out=out)
        saved = self._input_to_keep(x, out)
        y, mean, rstd = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, out=out,
                                     return_stats=True)
        self._keep(saved, mean, rstd)
        return y

    def _backward(self, grad_output, x, mean, rstd):
        return F.layer_norm_backward(grad_output, x, self.normalized_shape, mean, rstd, self.weight, self.bias)

    def _torch_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self._has_bias}")


class RMSNorm(_Layer):
    """Root-mean-square normalization, as ``torch.nn.RMSNorm``: ``x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions of the input to normalize over.
    eps : float or None
        None: the machine epsilon of the dtype the input is computed in (float32 for float16 input), as
        PyTorch.
    elementwise_affine : bool
        Learnable ``weight`` (ones) of shape ``normalized_shape``.
    dtype : float32 or float64, keyword-only
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *, dtype=np.float32):
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = None if eps is None else _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self.training = True
        self.weight = None
        self.reset_parameters()

    def _config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "dtype": self.dtype.name}

    def reset_parameters(self):
        """Weight to 1."""
        if self.elementwise_affine:
            self.weight = np.ones(self.normalized_shape, self.dtype)

    def _state(self):
        return {"weight": self.weight}

    def forward(self, x: ArrayLike, *, out: Optional[NDArray] = None) -> NDArray:
        if not _keeps_grad():
            return F.rms_norm(x, self.normalized_shape, self.weight, self.eps, out=out)
        saved = self._input_to_keep(x, out)
        y, rstd = F.rms_norm(x, self.normalized_shape, self.weight, self.eps, out=out, return_stats=True)
        self._keep(saved, rstd)
        return y

    def _backward(self, grad_output, x, rstd):
        return F.rms_norm_backward(grad_output, x, self.normalized_shape, rstd, self.weight)

    def _torch_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(_Layer):
    """Group normalization, as ``torch.nn.GroupNorm``.

    Parameters
    ----------
    num_groups : int
        Groups the channels are split into; must divide ``num_channels``.
    num_channels : int
        C.
    eps : float
        Added to the variance before the square root.
    affine : bool
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    bias : bool, keyword-only
        With ``affine``, whether there is a bias.
    dtype : float32 or float64, keyword-only
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1 (channels last).
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, bias=True, dtype=np.float32,
                 channel_axis=1):
        self.num_groups = check_count(num_groups, "num_groups")
        self.num_channels = check_count(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups: expected a divisor of num_channels={self.num_channels}, "
                             f"got {self.num_groups}")
        self.eps = _check_eps(eps)
        self.affine = bool(affine)
        self._has_bias = self.affine and bool(bias)
        self.dtype = _check_dtype(dtype)
        if channel_axis not in (1, -1):
            raise ValueError(f"channel_axis: expected 1 or -1, got {channel_axis!r}")
        self.channel_axis = channel_axis
        self.training = True
        self.weight = self.bias = None
        self.reset_parameters()

    def _config(self):
        return {"num_groups": self.num_groups, "num_channels": self.num_channels, "eps": self.eps,
                "affine": self.affine, "bias": self._has_bias, "dtype": self.dtype.name,
                "channel_axis": self.channel_axis}

    def reset_parameters(self):
        """Weight to 1, bias to 0."""
        if self.affine:
            self.weight = np.ones(self.num_channels, self.dtype)
            if self._has_bias:
                self.bias = np.zeros(self.num_channels, self.dtype)

    def _state(self):
        return {"weight": self.weight, "bias": self.bias}

    def forward(self, x: ArrayLike, *, out: Optional[NDArray] = None) -> NDArray:
        x = _array(x, "input")
        if x.ndim >= 2 and x.shape[self.channel_axis] != self.num_channels:
            raise ValueError(f"input: expected {self.num_channels} channels on axis {self.channel_axis}, "
                             f"got input of shape {x.shape}")
        if not _keeps_grad():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                channel_axis=self.channel_axis, out=out)
        saved = self._input_to_keep(x, out)
        y, mean, rstd = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                     channel_axis=self.channel_axis, out=out, return_stats=True)
        self._keep(saved, mean, rstd)
        return y

    def _backward(self, grad_output, x, mean, rstd):
        return F.group_norm_backward(grad_output, x, self.num_groups, mean, rstd, self.weight,
                                     channel_axis=self.channel_axis)

    def _torch_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self._has_bias}"


class _InstanceNorm(_NormBase):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, *,
                 bias=True, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias)

    def forward(self, x: ArrayLike, *, out: Optional[NDArray] = None) -> NDArray:
        """Normalize each (sample, channel) with its own statistics, or with the running statistics in
        evaluation mode when they are tracked.  Unbatched input (C, ...) is accepted."""
        x = _array(x, "input")
        self._check_input(x)
        unbatched = x.ndim == self._input_ndims[0]
        given_out = out
        if unbatched:
            x = x[np.newaxis]
            out = None if out is None else out[np.newaxis]
        if x.shape[1] != self.num_features:
            if self.affine or self.track_running_stats:
                raise ValueError(f"input: expected {self.num_features} channels, got input of shape {x.shape}")
            warnings.warn(f"input has {x.shape[1]} channels, not num_features={self.num_features}; "
                          "normalizing anyway", stacklevel=2)
        use_input_stats = self.training or not self.track_running_stats
        momentum = self.momentum if self.momentum is not None else 0.0
        if not _keeps_grad():
            y = F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_input_stats,
                                momentum, self.eps, out=out)
            return given_out if given_out is not None else (y[0] if unbatched else y)
        saved = self._input_to_keep(x, out)
        y, mean, rstd = F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        use_input_stats, momentum, self.eps, out=out, return_stats=True)
        self._keep(saved, mean, rstd, use_input_stats, unbatched)
        return given_out if given_out is not None else (y[0] if unbatched else y)

    def _backward(self, grad_output, x, mean, rstd, use_input_stats, unbatched):
        grad_output = _array(grad_output, "grad_output")
        if unbatched:
            grad_output = grad_output[np.newaxis]
        dx, grad_weight, grad_bias = F.instance_norm_backward(grad_output, x, mean, rstd, self.weight,
                                                              use_input_stats)
        return (dx[0] if unbatched else dx), grad_weight, grad_bias


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization over ``(N, C, L)`` or unbatched ``(C, L)`` input, as
    ``torch.nn.InstanceNorm1d``.

    Parameters
    ----------
    num_features : int
        C.
    eps : float
        Added to the variance before the square root.
    momentum : float or None
        Weight of the new batch in the running statistics (None: not updated, as in PyTorch).
    affine : bool
        Learnable per-channel ``weight`` and ``bias`` (default False).
    track_running_stats : bool
        Keep running statistics, used in evaluation mode (default False).
    bias : bool, keyword-only
        With ``affine``, whether there is a bias.
    dtype : float32 or float64, keyword-only
    """
    _input_ndims = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization over ``(N, C, H, W)`` or ``(C, H, W)``; see :class:`InstanceNorm1d`."""
    _input_ndims = (3, 4)


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization over ``(N, C, D, H, W)`` or ``(C, D, H, W)``; see :class:`InstanceNorm1d`."""
    _input_ndims = (4, 5)
