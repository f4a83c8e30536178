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
from typing import (Any, BinaryIO, Callable, ContextManager, Dict, Iterable, List, Mapping, NamedTuple, Optional,
                    Tuple, TypeVar, Union)

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _kernels
from . import _lrn
from . import functional as F
from ._safetensors import SafetensorsFile
from ._threads import check_count, context_setting, threads_for
from ._tf_ops import moments64
from ._validation import (_array, _as_input, _check_axis, _check_eps, _check_momentum, _check_out, _momentum_factor,
                          _normalized_shape, _real)
from .statistics import Moments

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm", "LazyBatchNorm1d", "LazyBatchNorm2d",
           "LazyBatchNorm3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d", "no_grad"]

# Whether layer calls keep what backward needs, per context (a Python thread, an asyncio task).
_grad_off: contextvars.ContextVar[bool] = contextvars.ContextVar("fastnorm_no_grad", default=False)

_LayerT = TypeVar("_LayerT", bound="_Layer")
_BatchNormT = TypeVar("_BatchNormT", bound="_BatchNorm")
# What backward computes: (grad_input, grad_weight, grad_bias), a parameter's gradient None without it.
_Grads = Tuple[NDArray[Any], Optional[NDArray[Any]], Optional[NDArray[Any]]]
# A state dict, or a safetensors file of one: a path or a binary file object.
StateDictSource = Union[Mapping[str, ArrayLike], str, "os.PathLike[str]", BinaryIO]


def no_grad() -> ContextManager[None]:
    """Context manager: layer calls made in the current context keep nothing for ``backward``.

    As ``torch.no_grad``: for inference (no reference to the input is kept), and for calls on one layer
    from several threads (a forward does not replace what another thread's forward kept).  A
    ``backward`` after a forward run inside it raises ``RuntimeError``.

    Returns
    -------
    context manager
        Restores the previous mode on exit; nests.

    Notes
    -----
    The setting belongs to the calling Python thread, or to the asyncio task: each task runs in a copy of
    its creator's context, so ``no_grad()`` inside one task does not reach a task running beside it.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> ln = fastnorm.LayerNorm(4)
    >>> with fastnorm.no_grad():
    ...     y = ln(np.ones((2, 4), np.float32))
    >>> ln.backward(np.ones((2, 4), np.float32))
    Traceback (most recent call last):
    ...
    RuntimeError: LayerNorm.backward: no forward to differentiate; ...
    """
    return context_setting(_grad_off, True)


def _keeps_grad() -> bool:
    return not _grad_off.get()


def _from_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Constructor arguments from a JSON config (lists back to tuples, dtype names to dtypes)."""
    return {k: tuple(v) if isinstance(v, list) else (np.dtype(v) if k == "dtype" else v)
            for k, v in config.items()}


def _config_value(key: str, value: Any) -> Any:
    """A constructor argument as ``_config`` records it (dtypes by name)."""
    return np.dtype(value).name if key == "dtype" else value


class LoadResult(NamedTuple):
    """What :meth:`load_state_dict` returns, as PyTorch's ``_IncompatibleKeys``."""

    missing_keys: List[str]
    """Keys the layer has and the state dict lacks (with the prefix)."""
    unexpected_keys: List[str]
    """Keys with the prefix that the layer does not have."""

STATS = object()  # in what a forward keeps for backward: the statistics of its call (see _Layer._commit)


def _state_array(value: Any, name: str) -> NDArray[Any]:
    """A state-dict value as an ndarray.  A PyTorch tensor goes through float64 when it is floating point:
    exact for every torch float type, including bfloat16 and float8, which NumPy lacks."""
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()
    return _array(value, name)


def _check_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


class _Layer:
    """State-dict plumbing and backward bookkeeping shared by the layers: ``_state`` lists the keys in
    PyTorch's order; a forward keeps what ``_backward`` needs (the input, by reference, and per-row
    statistics, never a normalized copy) and ``backward`` turns it into gradients."""

    _optional_state: Tuple[str, ...] = ()
    _has_bias = True  # with affine parameters, whether one is a bias (PyTorch's bias=False)
    _saved: Optional[Tuple[Any, ...]] = None
    _lazy_target: Optional[_Layer] = None  # on the stand-in of a lazy layer's first call: that layer
    training: bool
    dtype: np.dtype[Any]
    grad_weight: Optional[NDArray[Any]] = None
    grad_bias: Optional[NDArray[Any]] = None

    @staticmethod
    def _input_to_keep(x: Any, out: Optional[NDArray[Any]]) -> Any:
        """Before a forward: the input backward will need (a copy when the forward overwrites it)."""
        if out is not None and _keeps_grad() and np.may_share_memory(out, x):
            return np.array(x, copy=True)
        return x

    def _keep(self, x: Any, *stats: Any) -> None:
        if _keeps_grad():
            self._saved = (x,) + stats

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        raise NotImplementedError

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        raise NotImplementedError

    def _commit(self, state: Dict[str, Any], saved: Tuple[Any, ...]) -> Optional[_kernels.Commit]:
        """The :class:`~fastnorm._kernels.Commit` for a forward: the kernel call that writes the output
        also sets ``state`` (new attribute values) and what backward keeps, ``saved`` (the input and what
        follows it; ``STATS`` second stands for the statistics of the call), so that an interrupted or
        failing call changes nothing and a completed one all of it.  None when there is nothing to set."""
        keep = _keeps_grad()
        if not (keep or state or self._lazy_target is not None):
            return None
        commit = self._namespace_commit(state)
        if keep:
            state["_saved"] = (saved[0], commit) + saved[2:] if len(saved) > 1 and saved[1] is STATS else saved
        return commit

    def _namespace_commit(self, state: Dict[str, Any]) -> _kernels.Commit:
        """A :class:`~fastnorm._kernels.Commit` that sets ``state`` (new attribute values) on the layer; on the
        stand-in of a lazy layer's first call, on the lazy layer, with the stand-in's other attributes and
        class (see _LazyNorm.forward)."""
        target = self._lazy_target
        if target is None:
            return _kernels.Commit(self.__dict__, state)
        for key, value in self.__dict__.items():
            if key != "_lazy_target":
                state.setdefault(key, value)
        commit = _kernels.Commit(target.__dict__, state)
        commit.become(target, type(self))
        return commit

    def backward(self, grad_output: ArrayLike) -> NDArray[Any]:
        r"""Gradient of the loss with respect to the last forward's input.

        The statistics are those of the last forward, in the mode it ran in: the batch's in training
        mode (their dependence on the input included), the running ones (constants) in evaluation mode.
        Stores ``grad_weight`` and ``grad_bias``, of the parameters' shape and dtype (None for a
        parameter the layer does not have).  The input is the one the forward kept, by reference: modified
        in place between the two calls, it no longer has the statistics the forward computed, and
        backward raises (as PyTorch) rather than return a gradient of the modified values.

        Parameters
        ----------
        grad_output : array_like
            The gradient of the loss with respect to the last forward's output: its shape, floating point
            (converted to the input's dtype).

        Returns
        -------
        ndarray
            The gradient with respect to the input: a new array of the input's shape and dtype.

        Raises
        ------
        RuntimeError
            No forward to differentiate: none yet, or the last one ran under :func:`no_grad`; or the input
            was modified in place after the forward ("one of the variables needed for gradient computation
            has been modified by an inplace operation"): a change of any group's mean or variance beyond
            rounding, seen in sums the backward takes anyway.
        ValueError
            ``grad_output`` of another shape than the output.
        TypeError
            ``grad_output`` that is not floating point, or a masked array.

        Notes
        -----
        With :math:`\hat x = (x - \mu)\,r` normalized over the :math:`m` values of a group (a channel of
        a batch, a row, a sample's group), :math:`r = 1 / \sqrt{\sigma^2 + \epsilon}` and
        :math:`g = \gamma\, \partial L / \partial y`,

        .. math::

            \frac{\partial L}{\partial x} = r \left(g - \frac{1}{m} \sum g
                - \frac{\hat x}{m} \sum g\, \hat x\right),\qquad
            \frac{\partial L}{\partial \gamma} = \sum \frac{\partial L}{\partial y}\,\hat x,\qquad
            \frac{\partial L}{\partial \beta} = \sum \frac{\partial L}{\partial y},

        the parameter sums over every value a parameter multiplies (RMSNorm: no mean and no
        :math:`\sum g` term; evaluation-mode BatchNorm: :math:`r g` alone).  The sums are taken in
        float64.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> bn = fastnorm.BatchNorm1d(2)
        >>> y = bn(np.array([[1., 2.], [3., 6.]], np.float32))
        >>> dx = bn.backward(np.array([[1., 0.], [0., 2.]], np.float32))
        >>> dx.shape, bn.grad_bias, bn.grad_weight.round(4)    # sum(dy), sum(dy * xhat) per channel
        ((2, 2), array([1., 2.], dtype=float32), array([-1.,  2.], dtype=float32))
        """
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no forward to differentiate; call the layer "
                               "on an input first (outside fastnorm.no_grad())")
        saved = self._saved
        if len(saved) > 1 and isinstance(saved[1], _kernels.Commit):  # the statistics its call kept
            stats = saved[1].stats
            assert stats is not None  # kept only once the call was applied
            saved = saved[:1] + stats + saved[2:]
        dx, grad_weight, grad_bias = self._backward(grad_output, *saved)
        state = self._state()
        weight, bias = state.get("weight"), state.get("bias")
        # New arrays of the parameter's dtype, in native byte order whatever the parameter's.
        self.grad_weight = None if weight is None or grad_weight is None else grad_weight.astype(
            weight.dtype.newbyteorder("=")).reshape(weight.shape)
        self.grad_bias = None if bias is None or grad_bias is None else grad_bias.astype(
            bias.dtype.newbyteorder("=")).reshape(bias.shape)
        return dx

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        raise NotImplementedError

    def _config(self) -> Dict[str, Any]:
        """The constructor arguments, as JSON values (what :func:`fastnorm.save` records)."""
        raise NotImplementedError

    def _torch_repr(self) -> str:
        """The arguments PyTorch's repr of the same layer shows (its ``extra_repr``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        # PyTorch's repr, then fastnorm's own arguments where they differ from the constructor's default.
        config, defaults = self._config(), inspect.signature(type(self)).parameters
        extras = [f"{key}={config[key]}" for key in ("channel_axis", "bessel", "renorm", "renorm_clipping",
                                                       "renorm_momentum", "virtual_batch_size", "dtype")
                  if key in config and config[key] != _config_value(key, defaults[key].default)]
        return f"{type(self).__name__}({', '.join([self._torch_repr(), *extras])})"

    def __getstate__(self) -> Dict[str, Any]:
        # Pickles and copies carry parameters and buffers, not what the last forward kept for backward.
        state = self.__dict__.copy()
        state.pop("_saved", None)
        state.pop("_eval_cache", None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    def train(self: _LayerT, mode: bool = True) -> _LayerT:
        """Set training mode, or evaluation mode with ``mode=False``, as ``torch.nn.Module.train``.

        Parameters
        ----------
        mode : bool
            True: training mode (batch statistics, running statistics updated); False: evaluation mode.

        Returns
        -------
        layer
            The layer itself.

        Examples
        --------
        >>> import fastnorm
        >>> fastnorm.BatchNorm2d(4).train(False).training
        False
        """
        self.training = bool(mode)
        return self

    def eval(self: _LayerT) -> _LayerT:
        """Set evaluation mode: ``train(False)``.

        Returns
        -------
        layer
            The layer itself.

        Examples
        --------
        >>> import fastnorm
        >>> bn = fastnorm.BatchNorm2d(4).eval()
        >>> bn.training
        False
        """
        return self.train(False)

    def __call__(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        """``layer(x)`` is ``layer.forward(x)``."""
        return self.forward(x, out=out)

    def state_dict(self) -> collections.OrderedDict[str, NDArray[Any]]:
        """Copies of the parameters and buffers, under PyTorch's keys and in PyTorch's order.

        Returns
        -------
        OrderedDict of str to ndarray
            ``weight`` and ``bias`` (those the layer has), then for BatchNorm and InstanceNorm with
            ``track_running_stats`` ``running_mean``, ``running_var`` (the layer's dtype) and
            ``num_batches_tracked`` (0-d int64), as ``torch.nn`` names them.

        Examples
        --------
        >>> import fastnorm
        >>> list(fastnorm.BatchNorm1d(3).state_dict())
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
        >>> dict(fastnorm.RMSNorm(2).state_dict())
        {'weight': array([1., 1.], dtype=float32)}
        """
        state: collections.OrderedDict[str, NDArray[Any]] = collections.OrderedDict()
        for key, value in self._state().items():
            if value is not None:
                state[key] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict: StateDictSource, strict: bool = True, prefix: str = "") -> LoadResult:
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
        if isinstance(state_dict, (str, os.PathLike)):
            return self._load_safetensors(state_dict, strict, prefix)
        if not isinstance(state_dict, Mapping):
            if hasattr(state_dict, "read"):
                return self._load_safetensors(state_dict, strict, prefix)
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
        new: Dict[str, Any] = {}
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

    def _load_safetensors(self, file: Union[str, os.PathLike[str], BinaryIO], strict: bool,
                          prefix: str) -> LoadResult:
        if not isinstance(file, (str, os.PathLike)):
            try:
                return self.load_state_dict(SafetensorsFile(file), strict, prefix)
            except ValueError as e:
                raise ValueError(f"state_dict: {file!r}: {e}") from e
        try:
            with open(file, "rb") as f:
                return self.load_state_dict(SafetensorsFile(f), strict, prefix)
        except ValueError as e:
            raise ValueError(f"state_dict: {os.fspath(file)!r}: {e}") from e


# The sections the docstrings of the per-channel layers share.
_BATCH_NORM_MATH = r"""
    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    per channel, the mean and biased variance over the batch and the spatial dimensions (every axis but
    the channels').  In training mode each forward also updates, per channel,
    ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and the same for ``running_var``
    with the unbiased variance (``bessel=False``: the biased one); ``momentum=None`` averages all the
    batches (``momentum = 1 / (num_batches_tracked + 1)``).  Evaluation mode normalizes with the
    running statistics.  The statistics are computed in float64 whatever the dtype."""

_GROUPS_MATH = r"""

    With ``renorm`` (Ioffe, 2017, https://arxiv.org/abs/1702.03275), training mode computes, per channel, with :math:`\mu_B` and
    :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}` of the batch (biased variance) and
    :math:`\mu`, :math:`\sigma` the ``renorm_mean`` and ``renorm_stddev`` (:math:`\sigma` at least
    :math:`\sqrt{\epsilon}`, as Keras),

    .. math::

        r = \mathrm{clip}_{[r_{min}, r_{max}]}(\sigma_B / \sigma),\qquad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mu) / \sigma),\qquad
        y = \left(\frac{x - \mu_B}{\sigma_B}\, r + d\right) \gamma + \beta

    with r and d constants in :meth:`backward` (the paper's stop-gradient), then updates
    :math:`\mu \leftarrow (1 - m_r)\mu + m_r \mu_B` and :math:`\sigma \leftarrow (1 - m_r)\sigma +
    m_r \sigma_B` (:math:`m_r` = ``renorm_momentum``), and the running statistics as without renorm.
    The output equals Keras 3's in training and evaluation; Keras' ``moving_variance`` differs (Keras
    averages the standard deviations :math:`\sigma_B` and derives the variance from them; fastnorm
    averages the variances, as without renorm).

    With ``virtual_batch_size`` v (Ghost BatchNorm, Hoffer et al., 2017, https://arxiv.org/abs/1705.08741),
    training mode splits the batch
    into sub-batches of v consecutive samples, normalizes each with its own statistics (and its own r and
    d with ``renorm``) and differentiates each on its own; the running statistics are updated once per
    call with the mean over the sub-batches of their means and of their unbiased variances (biased with
    ``bessel=False``: then as tf.keras 2 did), the renorm statistics with the mean of their
    :math:`\mu_B` and :math:`\sigma_B`.  Evaluation mode is unchanged.  tf.keras 2 (Keras 3 dropped the
    argument) reshaped the batch to ``(v, N / v, ...)``, so its sub-batch k held samples k, k + N/v,
    k + 2N/v, ...: interleaved.  ``x.reshape(v, N // v, ...).swapaxes(0, 1).reshape(x.shape)`` puts those
    samples next to each other for fastnorm."""

_BATCH_NORM_PARAMETERS = """
    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance before the square root; >= 0, and > 0 to train (as PyTorch).
    momentum : float in [0, 1] or None
        Weight of the new batch in the running statistics (PyTorch's convention; Keras' ``momentum`` is
        ``1 - momentum``).  None: cumulative average over ``num_batches_tracked`` batches.
    affine : bool
        Learnable ``weight`` (initially 1) and ``bias`` (initially 0).
    track_running_stats : bool
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``; without them evaluation mode
        uses the batch statistics.
    bias : bool, keyword-only
        With ``affine``, whether there is a bias (False: a weight only, as PyTorch's ``bias=False``).
    dtype : float32 or float64, keyword-only
        dtype of the parameters and buffers."""

_BATCH_NORM_ATTRIBUTES = """
    Attributes
    ----------
    weight : ndarray of shape (C,) or None
        Learnable scale :math:`\\gamma` (None without ``affine``).
    bias : ndarray of shape (C,) or None
        Learnable shift :math:`\\beta` (None without ``affine`` or with ``bias=False``).
    running_mean, running_var : ndarray of shape (C,) or None
        Running statistics (None without ``track_running_stats``).
    num_batches_tracked : int or None
        Training-mode forwards on non-empty batches since the last reset (None without
        ``track_running_stats``).
    grad_weight, grad_bias : ndarray or None
        The parameters' gradients from the last :meth:`backward`.
    training : bool
        Training mode (the default) or evaluation mode."""

_REFERENCES = {
    "batch": ("Ioffe, S. and Szegedy, C. (2015). Batch normalization: accelerating deep network training by "
              "reducing internal covariate shift. ICML. https://arxiv.org/abs/1502.03167"),
    "layer": "Ba, J. L., Kiros, J. R. and Hinton, G. E. (2016). Layer normalization. https://arxiv.org/abs/1607.06450",
    "group": "Wu, Y. and He, K. (2018). Group normalization. ECCV. https://arxiv.org/abs/1803.08494",
    "instance": ("Ulyanov, D., Vedaldi, A. and Lempitsky, V. (2016). Instance normalization: the missing "
                 "ingredient for fast stylization. https://arxiv.org/abs/1607.08022"),
    "rms": ("Zhang, B. and Sennrich, R. (2019). Root mean square layer normalization. NeurIPS. "
            "https://arxiv.org/abs/1910.07467"),
}


def _fill(template: str, **values: str) -> str:
    """``template`` with each ``{key}`` replaced (``str.format`` would read the braces of the math)."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def _references(kind: str, torch_name: str) -> str:
    """A docstring's References section: the paper, and the PyTorch class whose semantics the layer has."""
    return (f"\n    References\n    ----------\n    {_REFERENCES[kind]}\n\n"
            f"    PyTorch: https://pytorch.org/docs/stable/generated/{torch_name}.html\n")


class _NormBase(_Layer):
    """Per-channel parameters and running statistics, as PyTorch's ``_NormBase``."""
    _input_ndims: Tuple[int, ...] = ()
    _optional_state = ("num_batches_tracked",)
    weight: Optional[NDArray[Any]]
    bias: Optional[NDArray[Any]]
    running_mean: Optional[NDArray[Any]]
    running_var: Optional[NDArray[Any]]
    num_batches_tracked: Optional[int]
    eps: float

    def __init__(self, num_features: int, eps: float, momentum: Optional[float], affine: bool,
                 track_running_stats: bool, dtype: DTypeLike, bias: bool = True) -> None:
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

    def _config(self) -> Dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "bias": self._has_bias, "track_running_stats": self.track_running_stats,
                "dtype": self.dtype.name}

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch tracked (with ``track_running_stats``).

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> bn = fastnorm.BatchNorm1d(2)
        >>> y = bn(np.array([[1., 2.], [3., 6.]], np.float32))
        >>> bn.reset_running_stats()
        >>> bn.running_mean, bn.num_batches_tracked
        (array([0., 0.], dtype=float32), 0)
        """
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self.dtype)
            self.running_var = np.ones(self.num_features, self.dtype)
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        """Reset the running statistics (:meth:`reset_running_stats`), the weight to 1 and the bias to 0.

        Examples
        --------
        >>> import fastnorm
        >>> bn = fastnorm.BatchNorm1d(2)
        >>> bn.weight[:] = 3.0
        >>> bn.reset_parameters()
        >>> bn.weight
        array([1., 1.], dtype=float32)
        """
        self.reset_running_stats()
        if self.affine:
            self.weight = np.ones(self.num_features, self.dtype)
            if self._has_bias:
                self.bias = np.zeros(self.num_features, self.dtype)

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {"weight": self.weight, "bias": self.bias, "running_mean": self.running_mean,
                "running_var": self.running_var,
                "num_batches_tracked": None if self.num_batches_tracked is None
                else np.array(self.num_batches_tracked, dtype=np.int64)}

    def _check_input(self, x: NDArray[Any]) -> None:
        if x.ndim not in self._input_ndims:
            expected = " or ".join(f"{n}D" for n in self._input_ndims)
            raise ValueError(f"input: expected {expected} input, got {x.ndim}D input of shape {x.shape}")

    def _torch_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self._has_bias}, track_running_stats={self.track_running_stats}")


def _check_renorm_clipping(clipping: object) -> Optional[Dict[str, float]]:
    """``renorm_clipping``: None, or a mapping of some of "rmax", "rmin", "dmax" to numbers (None: not
    clipped, as a missing key), rmin <= rmax and dmax >= 0, as Keras checks them."""
    if clipping is None:
        return None
    if not isinstance(clipping, Mapping) or not set(clipping) <= {"rmax", "rmin", "dmax"}:
        raise ValueError(f"renorm_clipping: expected None or a dict with some of the keys 'rmax', 'rmin', 'dmax', "
                         f"got {clipping!r}")
    values = {}
    for key, value in clipping.items():
        if value is not None:
            values[key] = _real(value, f"renorm_clipping[{key!r}]", "a finite number or None")
    if values.get("rmin", -np.inf) > values.get("rmax", np.inf) or values.get("dmax", 0.0) < 0:
        raise ValueError(f"renorm_clipping: expected rmin <= rmax and dmax >= 0, got {clipping!r}")
    return values


def _running_stats(layer: _NormBase) -> Tuple[NDArray[Any], NDArray[Any]]:
    """The running mean and variance of a layer that tracks them."""
    if layer.running_mean is None or layer.running_var is None:
        raise ValueError("the layer keeps no running statistics (track_running_stats=False)")
    return layer.running_mean, layer.running_var


class _BatchNorm(_NormBase):
    _recorder: Optional[List[Any]] = None  # [Moments or None, calls] while calibrate_batch_norms runs
    channel_axis: int
    bessel: bool
    renorm: bool
    renorm_clipping: Optional[Dict[str, float]]
    renorm_momentum: float
    virtual_batch_size: Optional[int]
    renorm_mean: Optional[NDArray[Any]] = None  # with renorm (Keras' names)
    renorm_stddev: Optional[NDArray[Any]] = None
    _eval_cache: _kernels.EvalCache

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, dtype: DTypeLike = np.float32,
                 channel_axis: int = 1, bessel: bool = True, renorm: bool = False,
                 renorm_clipping: Optional[Mapping[str, Optional[float]]] = None, renorm_momentum: float = 0.01,
                 virtual_batch_size: Optional[int] = None) -> None:
        if not isinstance(channel_axis, numbers.Integral):
            raise TypeError(f"channel_axis: expected an integer axis, got {channel_axis!r}")
        self.channel_axis = int(channel_axis)
        self.bessel = bool(bessel)
        self.renorm = bool(renorm)
        self.renorm_clipping = _check_renorm_clipping(renorm_clipping)
        self.renorm_momentum = _check_momentum(renorm_momentum, False, "renorm_momentum")
        self.virtual_batch_size = None if virtual_batch_size is None else check_count(virtual_batch_size,
                                                                                          "virtual_batch_size")
        if self.renorm and not track_running_stats:
            raise ValueError("renorm: expected track_running_stats=True (the corrections r and d come from "
                             "running statistics)")
        self._eval_cache = _kernels.EvalCache()
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._eval_cache = _kernels.EvalCache()

    def _config(self) -> Dict[str, Any]:
        return dict(super()._config(), channel_axis=self.channel_axis, bessel=self.bessel, renorm=self.renorm,
                    renorm_clipping=self.renorm_clipping, renorm_momentum=self.renorm_momentum,
                    virtual_batch_size=self.virtual_batch_size)

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if self.renorm and self.num_features:
            self.renorm_mean = np.zeros(self.num_features, self.dtype)
            self.renorm_stddev = np.ones(self.num_features, self.dtype)

    reset_running_stats.__doc__ = _NormBase.reset_running_stats.__doc__

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        state = super()._state()
        if self.renorm:  # after PyTorch's keys, under Keras' names
            state.update(renorm_mean=self.renorm_mean, renorm_stddev=self.renorm_stddev)
        return state

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        """Normalize ``x`` per channel.

        Training mode: with the batch's statistics, updating the running statistics (with
        ``track_running_stats``).  Evaluation mode: with the running statistics (the batch's without
        ``track_running_stats``).  Keeps what :meth:`backward` needs, outside :func:`fastnorm.no_grad`.

        Parameters
        ----------
        x : array_like
            float16, float32 or float64, of the layer's input shape (see Shape), C channels on
            ``channel_axis``; any memory order.
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.

        Returns
        -------
        ndarray
            The normalized input, of its shape and dtype (``out`` when given).

        Raises
        ------
        TypeError
            ``x`` not floating point, or a masked array; ``out`` of another dtype.
        ValueError
            ``x`` of another number of dimensions or channels; training with a single value per channel
            (per sub-batch with ``virtual_batch_size``) or with ``eps=0``; training with a batch size that
            is not a multiple of ``virtual_batch_size``; ``out`` of another shape, or read-only.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> bn = fastnorm.BatchNorm1d(2)
        >>> bn(np.array([[1., 2.], [3., 6.]], np.float32)).round(4)
        array([[-1., -1.],
               [ 1.,  1.]], dtype=float32)
        >>> bn.running_mean, bn.running_var    # 0.1 * the batch means; 0.9 + 0.1 * the unbiased variances
        (array([0.2, 0.4], dtype=float32), array([1.1, 1.7], dtype=float32))
        """
        if (out is None and not self.training and self.running_mean is not None and type(x) is np.ndarray
                and self._lazy_target is None
                and x.ndim in self._input_ndims and -x.ndim <= self.channel_axis < x.ndim):
            # The eval path of an inference pipeline: factors folded once, one sweep per call.
            y = _kernels.eval_cached(self._eval_cache, x, self.channel_axis, self.running_mean, self.running_var,
                                     self.weight, self.bias, self.eps, threads_for(x.size))
            if y is not None:
                self._keep(x, None, None, False)
                return y
        x = _array(x, "input")
        self._check_input(x)
        state: Dict[str, Any] = {}
        if self._recorder is not None:  # calibrate_batch_norms: recorded with the call, not before it
            moments = self._moments_of(x)
            state["_recorder"] = [moments if self._recorder[0] is None else self._recorder[0] + moments,
                                  self._recorder[1] + 1]
        tracking = self.training and self.track_running_stats
        if tracking and x.size > 0 and self.num_batches_tracked is not None:
            state["num_batches_tracked"] = self.num_batches_tracked + 1
        if self.training and (self.renorm or self.virtual_batch_size is not None) and x.size > 0:
            return self._forward_groups(x, out, state)
        use_batch_stats = self.training or self.running_mean is None
        keep_buffers = not self.training or self.track_running_stats
        saved = self._input_to_keep(x, out)
        commit = self._commit(state, (saved, STATS, True) if use_batch_stats else (saved, None, None, False))
        result = F._batch_norm(x, self.running_mean if keep_buffers else None,
                               self.running_var if keep_buffers else None, self.weight, self.bias, use_batch_stats,
                               self.momentum, self.eps, self.channel_axis, out, self.bessel,
                               self.num_batches_tracked, use_batch_stats, commit)
        return result[0] if isinstance(result, tuple) else result

    def _moments_of(self, x: NDArray[Any]) -> Moments:
        """Exact per-channel moments of an input of this layer."""
        axis = _check_axis(self.channel_axis, x.ndim, "channel_axis")
        if x.shape[axis] != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels on axis {axis}, got input of shape {x.shape}")
        return Moments.of(x, tuple(a for a in range(x.ndim) if a != axis))

    def calibrate(self: _BatchNormT, batches: Iterable[ArrayLike]) -> _BatchNormT:
        """Exact population statistics ("precise BN") of this layer's inputs.

        Sets the running mean and variance to the mean and variance (unbiased, or biased with
        ``bessel=False``) over all the values of all ``batches``, instead of an exponential average, and
        ``num_batches_tracked`` to the number of batches.  The statistics are exact (Chan's merge of
        float64 moments): the order and split of the batches do not matter.  See
        :func:`fastnorm.calibrate_batch_norms` for the layers of a whole model.

        Parameters
        ----------
        batches : iterable of array_like
            Inputs of this layer (the shapes :meth:`forward` takes).

        Returns
        -------
        layer
            The layer itself.  A call that raises leaves it as it was.

        Raises
        ------
        ValueError
            No batch, one value per channel in all (``bessel=False``: none), a batch of another number
            of dimensions or channels, or a layer without running statistics.
        TypeError
            A batch that is not floating point.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> bn = fastnorm.BatchNorm1d(1, dtype=np.float64).calibrate([np.array([[1.], [2.]]), np.array([[6.]])])
        >>> bn.running_mean, bn.running_var, bn.num_batches_tracked
        (array([3.]), array([7.]), 2)
        """
        self._set_running_stats(*self._population_stats(lambda: self._moments_of_batches(batches)))
        return self

    def _moments_of_batches(self, batches: Iterable[ArrayLike]) -> Tuple[Moments, int]:
        if self.running_mean is None:
            raise ValueError("calibrate: the layer keeps no running statistics (track_running_stats=False)")
        total, calls = None, 0
        for batch in batches:
            x = _array(batch, "batches")
            self._check_input(x)
            moments = self._moments_of(x)
            total = moments if total is None else total + moments
            calls += 1
        if total is None:
            raise ValueError("batches: expected at least one batch")
        return total, calls

    def _population_stats(self, local: Callable[[], Tuple[Moments, int]]
                          ) -> Tuple[NDArray[Any], NDArray[Any], int]:
        """The running mean, variance and batch count that ``local()``, the ``(Moments, calls)`` of the
        inputs seen here, gives (SyncBatchNorm merges the moments of every process first)."""
        moments, calls = local()
        if float(moments.count.min()) <= (1 if self.bessel else 0):
            raise ValueError("batches: expected more than 1 value per channel in all")
        return moments.mean, moments.var(unbiased=self.bessel), calls

    def _set_running_stats(self, mean: NDArray[Any], var: NDArray[Any], calls: int) -> None:
        # in one C call, as a forward's update (see _kernels.Commit): an interrupt leaves all or none
        running_mean, running_var = _running_stats(self)
        commit = _kernels.Commit(self.__dict__, {"num_batches_tracked": calls})
        commit.prepare(copies=((running_mean, np.asarray(mean, np.float64)),
                               (running_var, np.asarray(var, np.float64))))
        commit.apply()

    def _forward_groups(self, x: NDArray[Any], out: Optional[NDArray[Any]], state: Dict[str, Any]) -> NDArray[Any]:
        """Training with renorm or ghost batches: each sub-batch of ``virtual_batch_size`` consecutive samples
        (the whole batch without it) normalized with its own statistics, then corrected by r and d."""
        axis = _check_axis(self.channel_axis, x.ndim, "channel_axis")
        C = self.num_features
        if x.shape[axis] != C:
            raise ValueError(f"input: expected {C} channels on axis {axis}, got input of shape {x.shape}")
        size = self.virtual_batch_size or x.shape[0]
        if self.virtual_batch_size is not None and axis == 0:
            raise ValueError("virtual_batch_size: splits axis 0, the batch; expected channel_axis on another axis")
        if x.shape[0] % size:
            raise ValueError(f"virtual_batch_size: expected a divisor of the batch size, got {size} for a batch "
                             f"of {x.shape[0]}")
        groups = x.shape[0] // size
        count = x.size // C // groups
        if count <= 1:
            raise ValueError(f"input: expected more than 1 value per channel in each {'virtual ' * (groups > 1)}"
                             f"batch when training, got input size {x.shape}")
        eps = _check_eps(self.eps, training=True)
        compute, dtype = _as_input(x, "input")
        if out is not None:
            _check_out(out, x.shape, dtype)
        axes = tuple(a for a in range(x.ndim) if a != axis)
        pieces = [slice(g * size, (g + 1) * size) for g in range(groups)]
        stats = [moments64(compute[piece], axes)[1:] for piece in pieces]
        mean, var = np.stack([m for m, _ in stats]), np.stack([v for _, v in stats])   # (groups, C), float64
        if self.renorm:
            r, d, renorm_copies = self._renorm_corrections(mean, var)
        else:
            r, d, renorm_copies = np.ones_like(mean), np.zeros_like(mean), ()
        weight = np.ones(C) if self.weight is None else self.weight.astype(np.float64)
        bias = np.zeros(C) if self.bias is None else self.bias.astype(np.float64)
        y = np.empty(x.shape, dtype)
        for g, piece in enumerate(pieces):  # (x - mean) / sqrt(var + eps) * (r * weight) + (d * weight + bias)
            F.batch_norm(x[piece], mean[g], var[g], weight * r[g], bias + weight * d[g], False, eps=eps,
                         channel_axis=axis, out=y[piece])
        if _keeps_grad():
            state["_saved"] = (self._input_to_keep(x, out), mean, 1.0 / np.sqrt(var + eps), True, size, r, d)
        # One C call applies the rest: out=, the running statistics (averaged over the sub-batches), the
        # renorm statistics and the layer's attributes (see _kernels.Commit).
        running = None
        if self.running_mean is not None and self.running_var is not None:
            running = (self.running_mean, self.running_var,
                       _momentum_factor(self.momentum, self.num_batches_tracked),
                       count / (count - 1) if self.bessel else 1.0)
        commit = self._namespace_commit(state)
        commit.prepare(out, running, copies=renorm_copies or None)
        commit.apply(y, mean, var)
        return y if out is None else out

    def _renorm_corrections(self, mean: NDArray[np.float64], var: NDArray[np.float64]) -> Tuple[
            NDArray[np.float64], NDArray[np.float64], Tuple[Tuple[NDArray[Any], NDArray[Any]], ...]]:
        """Batch renormalization's r and d per sub-batch and channel (clipped), and the updates of the renorm
        statistics as ``(buffer, new value)`` pairs."""
        assert self.renorm_mean is not None and self.renorm_stddev is not None  # with renorm
        renorm_mean = self.renorm_mean.astype(np.float64)
        renorm_stddev = self.renorm_stddev.astype(np.float64)
        stddev = np.sqrt(var + self.eps)  # sigma_B, of the biased batch variance, as the paper and Keras
        sigma = np.maximum(renorm_stddev, np.sqrt(self.eps))  # as Keras: no division by 0 early in training
        r, d = stddev / sigma, (mean - renorm_mean) / sigma
        clip = self.renorm_clipping or {}
        r = np.clip(r, clip.get("rmin"), clip.get("rmax")) if clip.keys() & {"rmin", "rmax"} else r
        d = np.clip(d, -clip["dmax"], clip["dmax"]) if "dmax" in clip else d
        m = self.renorm_momentum
        return r, d, ((self.renorm_mean, (1 - m) * renorm_mean + m * mean.mean(axis=0)),
                      (self.renorm_stddev, (1 - m) * renorm_stddev + m * stddev.mean(axis=0)))

    def _backward_groups(self, grad_output: ArrayLike, x: NDArray[Any], mean: NDArray[np.float64],
                         invstd: NDArray[np.float64], size: int, r: NDArray[np.float64],
                         d: NDArray[np.float64]) -> _Grads:
        """Backward of :meth:`_forward_groups`: per sub-batch, with r and d constants (the paper's
        stop-gradient): the batch-statistics backward with weight ``r * weight``; the weight's gradient
        ``r * sum(dy * xhat) + d * sum(dy)``."""
        g = _array(grad_output, "grad_output")
        if g.shape != x.shape:
            raise ValueError(f"grad_output: expected the output's shape {x.shape}, got {g.shape}")
        weight = np.ones(mean.shape[1]) if self.weight is None else self.weight.astype(np.float64)
        dx = np.empty(x.shape, x.dtype.newbyteorder("="))
        grad_weight, grad_bias = np.zeros(mean.shape[1]), np.zeros(mean.shape[1])
        for k in range(mean.shape[0]):
            piece = slice(k * size, (k + 1) * size)
            dx[piece], gw, gb = F.batch_norm_backward(g[piece], x[piece], mean[k], invstd[k], weight * r[k], True,
                                                      channel_axis=self.channel_axis, eps=self.eps)
            grad_weight += r[k] * gw + d[k] * gb
            grad_bias += gb
        return dx, grad_weight, grad_bias

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        if len(saved) == 7:  # kept by _forward_groups
            return self._backward_groups(grad_output, saved[0], *saved[1:3], *saved[4:])
        x, mean, invstd, batch_stats = saved[:4]
        if not batch_stats:
            mean, running_var = _running_stats(self)
            invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + self.eps)
        return F.batch_norm_backward(grad_output, x, mean, invstd, self.weight, batch_stats,
                                     channel_axis=self.channel_axis, eps=self.eps)


_BATCH_NORM_DOC = r"""Batch normalization over {shape} input, as ``torch.nn.BatchNorm{dims}``.
""" + _BATCH_NORM_PARAMETERS + """
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1 (channels last: {last} input).
    bessel : bool, keyword-only
        Update the running variance with the unbiased (True, PyTorch) or biased (False, ONNX/Keras) batch
        variance.
    renorm : bool, keyword-only
        Batch Renormalization (Ioffe 2017, Keras' ``renorm``) in training mode; needs
        ``track_running_stats``.  Adds the buffers ``renorm_mean`` and ``renorm_stddev``.
    renorm_clipping : dict or None, keyword-only
        Some of ``"rmax"``, ``"rmin"``, ``"dmax"``: r is clipped to [rmin, rmax], d to [-dmax, dmax]; a key
        missing (or None) does not clip, as Keras.  Used with ``renorm`` only.
    renorm_momentum : float in [0, 1], keyword-only
        Weight of the new batch in ``renorm_mean`` and ``renorm_stddev``: fastnorm's (PyTorch's) convention,
        as ``momentum``.  Keras' ``renorm_momentum`` is the weight of the old value: Keras' 0.99 (its
        default) is 0.01 here, the default; :func:`fastnorm.from_keras` converts.  Used with ``renorm`` only.
    virtual_batch_size : int or None, keyword-only
        Ghost BatchNorm (Hoffer et al. 2017): in training mode each sub-batch of this many consecutive
        samples (axis 0) is normalized with its own statistics; the batch size must be a multiple of it.

    Shape
    -----
    input : {shape}
        float16, float32 or float64 (computed in float32 or float64; the parameters' dtype need not
        match).
    output : the input's shape and dtype
""" + _BATCH_NORM_ATTRIBUTES + """
    renorm_mean, renorm_stddev : ndarray of shape (C,)
        With ``renorm``: the running mean and standard deviation :math:`\\sqrt{\\mathrm{Var}[x] + \\epsilon}`
        that r and d are measured against (initially 0 and 1), under Keras' names.

    Notes
    -----""" + _BATCH_NORM_MATH + _GROUPS_MATH + "\n" + _references("batch", "torch.nn.BatchNorm{dims}") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> bn = fastnorm.BatchNorm{dims}(3)
    >>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, {example}).astype(np.float32))
    >>> bool(abs(y.mean()) < 1e-5), bn.num_batches_tracked
    (True, 1)
    >>> bn.eval()
    BatchNorm{dims}(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
"""


class BatchNorm1d(_BatchNorm):
    __doc__ = _fill(_BATCH_NORM_DOC, dims="1d", shape="(N, C) or (N, C, L)", last="(N, L, C)",
                                     example="(64, 3)")
    _input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    __doc__ = _fill(_BATCH_NORM_DOC, dims="2d", shape="(N, C, H, W)", last="(N, H, W, C)", example="(8, 3, 4, 4)")
    _input_ndims = (4,)


class BatchNorm3d(_BatchNorm):
    __doc__ = _fill(_BATCH_NORM_DOC, dims="3d", shape="(N, C, D, H, W)", last="(N, D, H, W, C)",
                                     example="(4, 3, 2, 4, 4)")
    _input_ndims = (5,)


_ROWS_FORWARD = """{summary}

        Keeps what :meth:`backward` needs, outside :func:`fastnorm.no_grad`.

        Parameters
        ----------
        x : array_like
            float16, float32 or float64, of shape ``(*, *normalized_shape)``; any memory order.
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.

        Returns
        -------
        ndarray
            The normalized input, of its shape and dtype (``out`` when given).

        Raises
        ------
        TypeError
            ``x`` not floating point, or a masked array; ``out`` of another dtype.
        ValueError
            ``x`` whose trailing dimensions are not ``normalized_shape``; ``out`` of another shape, or
            read-only.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> fastnorm.{cls}(2).forward(np.array([[3., 4.]], np.float32)).round(4)
        {example}
        """

_ROWS_SHAPE = """
    Shape
    -----
    input : (*, *normalized_shape)
        float16, float32 or float64, any number of leading dimensions.
    output : the input's shape and dtype
"""


class LayerNorm(_Layer):
    __doc__ = r"""Layer normalization over the trailing ``normalized_shape`` dimensions, as ``torch.nn.LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions of the input to normalize over.
    eps : float
        Added to the variance before the square root; >= 0.
    elementwise_affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.
    bias : bool
        With ``elementwise_affine``, whether there is a bias.
    dtype : float32 or float64, keyword-only
        dtype of the parameters.
    """ + _ROWS_SHAPE + r"""
    Attributes
    ----------
    weight, bias : ndarray of shape normalized_shape, or None
        Learnable :math:`\gamma` and :math:`\beta` (None without ``elementwise_affine``; bias None with
        ``bias=False``).
    grad_weight, grad_bias : ndarray or None
        The parameters' gradients from the last :meth:`backward`.
    training : bool
        Kept for PyTorch's interface: LayerNorm computes the same in both modes.

    Notes
    -----
    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    the mean and biased variance over the last ``len(normalized_shape)`` dimensions of each sample, in
    float64.
    """ + _references("layer", "torch.nn.LayerNorm") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> ln = fastnorm.LayerNorm(4)
    >>> ln(np.array([[1, 2, 3, 4]], np.float32)).astype(float).round(3).tolist()
    [[-1.342, -0.447, 0.447, 1.342]]
    """

    weight: Optional[NDArray[Any]]
    bias: Optional[NDArray[Any]]

    def __init__(self, normalized_shape: Union[int, Iterable[int]], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, *, dtype: DTypeLike = np.float32) -> None:
        self.normalized_shape: Tuple[int, ...] = _normalized_shape(normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self._has_bias = self.elementwise_affine and bool(bias)
        self.training = True
        self.weight = self.bias = None
        self.reset_parameters()

    def _config(self) -> Dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self._has_bias, "dtype": self.dtype.name}

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0.

        Examples
        --------
        >>> import fastnorm
        >>> ln = fastnorm.LayerNorm(2)
        >>> ln.bias[:] = 5.0
        >>> ln.reset_parameters()
        >>> ln.bias
        array([0., 0.], dtype=float32)
        """
        if self.elementwise_affine:
            self.weight = np.ones(self.normalized_shape, self.dtype)
            if self._has_bias:
                self.bias = np.zeros(self.normalized_shape, self.dtype)

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {"weight": self.weight, "bias": self.bias}

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        commit = self._commit({}, (self._input_to_keep(x, out), STATS))
        return F._rows_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, out, False, False, commit)[0]

    forward.__doc__ = _fill(_ROWS_FORWARD, 
        summary="Normalize each sample over its trailing ``normalized_shape`` dimensions.", cls="LayerNorm",
        example="array([[-1.,  1.]], dtype=float32)")

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        x, mean, rstd = saved
        return F.layer_norm_backward(grad_output, x, self.normalized_shape, mean, rstd, self.weight, self.bias,
                                     eps=self.eps)

    def _torch_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self._has_bias}")


class RMSNorm(_Layer):
    __doc__ = r"""Root-mean-square normalization over the trailing ``normalized_shape`` dimensions, as
    ``torch.nn.RMSNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions of the input to normalize over.
    eps : float or None
        Added to the mean square before the square root.  None: the machine epsilon of the dtype the
        input is computed in (float32 for float16 input), as PyTorch.
    elementwise_affine : bool
        Learnable ``weight`` (ones) of shape ``normalized_shape``.
    dtype : float32 or float64, keyword-only
        dtype of the weight.
    """ + _ROWS_SHAPE + r"""
    Attributes
    ----------
    weight : ndarray of shape normalized_shape, or None
        Learnable :math:`\gamma` (None without ``elementwise_affine``).  RMSNorm has no bias.
    grad_weight : ndarray or None
        The weight's gradient from the last :meth:`backward`.
    training : bool
        Kept for PyTorch's interface: RMSNorm computes the same in both modes.

    Notes
    -----
    .. math::

        y = \frac{x}{\sqrt{\frac{1}{n} \sum x^2 + \epsilon}} \cdot \gamma

    over the :math:`n` values of the last ``len(normalized_shape)`` dimensions of each sample, in
    float64.  No mean is subtracted.
    """ + _references("rms", "torch.nn.RMSNorm") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> rms = fastnorm.RMSNorm(2, eps=0.0)
    >>> rms(np.array([[3., 4.]], np.float32)).round(4)    # x / sqrt(mean(x**2)), sqrt(12.5) = 3.5355
    array([[0.8485, 1.1314]], dtype=float32)
    """

    weight: Optional[NDArray[Any]]

    def __init__(self, normalized_shape: Union[int, Iterable[int]], eps: Optional[float] = None,
                 elementwise_affine: bool = True, *, dtype: DTypeLike = np.float32) -> None:
        self.normalized_shape: Tuple[int, ...] = _normalized_shape(normalized_shape)
        self.eps = None if eps is None else _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self.training = True
        self.weight = None
        self.reset_parameters()

    def _config(self) -> Dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "dtype": self.dtype.name}

    def reset_parameters(self) -> None:
        """Weight to 1.

        Examples
        --------
        >>> import fastnorm
        >>> rms = fastnorm.RMSNorm(2)
        >>> rms.weight[:] = 5.0
        >>> rms.reset_parameters()
        >>> rms.weight
        array([1., 1.], dtype=float32)
        """
        if self.elementwise_affine:
            self.weight = np.ones(self.normalized_shape, self.dtype)

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {"weight": self.weight}

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        commit = self._commit({}, (self._input_to_keep(x, out), STATS))
        return F._rows_norm(x, self.normalized_shape, self.weight, None, self.eps, out, True, False, commit)[0]

    forward.__doc__ = _fill(_ROWS_FORWARD, 
        summary="Divide each sample by its root mean square over the trailing ``normalized_shape`` dimensions.",
        cls="RMSNorm", example="array([[0.8485, 1.1314]], dtype=float32)")

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        x, rstd = saved
        return F.rms_norm_backward(grad_output, x, self.normalized_shape, rstd, self.weight,
                                   eps=F._rms_eps(self.eps, x.dtype))

    def _torch_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(_Layer):
    __doc__ = r"""Group normalization, as ``torch.nn.GroupNorm``: the channels of each sample are split into
    ``num_groups`` groups, each normalized over its channels and spatial dimensions.

    Parameters
    ----------
    num_groups : int
        G, the groups the channels are split into; must divide ``num_channels``.
    num_channels : int
        C, the number of channels.
    eps : float
        Added to the variance before the square root; >= 0.
    affine : bool
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    bias : bool, keyword-only
        With ``affine``, whether there is a bias.
    dtype : float32 or float64, keyword-only
        dtype of the parameters.
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1 (channels last: (N, \*, C) input).

    Shape
    -----
    input : (N, C, \*)
        float16, float32 or float64, any number of spatial dimensions (none included).
    output : the input's shape and dtype

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
        Learnable per-channel :math:`\gamma` and :math:`\beta` (None without ``affine``; bias None with
        ``bias=False``).
    grad_weight, grad_bias : ndarray or None
        The parameters' gradients from the last :meth:`backward`.
    training : bool
        Kept for PyTorch's interface: GroupNorm computes the same in both modes.

    Notes
    -----
    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    the mean and biased variance over the ``C / G`` channels and the spatial dimensions of each (sample,
    group), in float64; :math:`\gamma` and :math:`\beta` per channel.
    """ + _references("group", "torch.nn.GroupNorm") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> gn = fastnorm.GroupNorm(2, 4)
    >>> y = gn(np.arange(16, dtype=np.float32).reshape(2, 4, 2))
    >>> y[0].round(4)    # channels 0-1 are one group, 2-3 the other
    array([[-1.3416, -0.4472],
           [ 0.4472,  1.3416],
           [-1.3416, -0.4472],
           [ 0.4472,  1.3416]], dtype=float32)
    """

    weight: Optional[NDArray[Any]]
    bias: Optional[NDArray[Any]]

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 bias: bool = True, dtype: DTypeLike = np.float32, channel_axis: int = 1) -> None:
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

    def _config(self) -> Dict[str, Any]:
        return {"num_groups": self.num_groups, "num_channels": self.num_channels, "eps": self.eps,
                "affine": self.affine, "bias": self._has_bias, "dtype": self.dtype.name,
                "channel_axis": self.channel_axis}

    def reset_parameters(self) -> None:
        """Weight to 1, bias to 0.

        Examples
        --------
        >>> import fastnorm
        >>> gn = fastnorm.GroupNorm(1, 2)
        >>> gn.weight[:] = 5.0
        >>> gn.reset_parameters()
        >>> gn.weight
        array([1., 1.], dtype=float32)
        """
        if self.affine:
            self.weight = np.ones(self.num_channels, self.dtype)
            if self._has_bias:
                self.bias = np.zeros(self.num_channels, self.dtype)

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {"weight": self.weight, "bias": self.bias}

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        """Normalize each (sample, group) with its own statistics.

        Keeps what :meth:`backward` needs, outside :func:`fastnorm.no_grad`.

        Parameters
        ----------
        x : array_like
            float16, float32 or float64, of shape (N, C, \\*) (``channel_axis=-1``: (N, \\*, C)); any memory
            order.
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.

        Returns
        -------
        ndarray
            The normalized input, of its shape and dtype (``out`` when given).

        Raises
        ------
        TypeError
            ``x`` not floating point, or a masked array; ``out`` of another dtype.
        ValueError
            ``x`` with fewer than 2 dimensions or another number of channels; ``out`` of another shape,
            or read-only.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> fastnorm.GroupNorm(1, 2).forward(np.array([[1., 3.]], np.float32)).round(4)
        array([[-1.,  1.]], dtype=float32)
        """
        x = _array(x, "input")
        if x.ndim >= 2 and x.shape[self.channel_axis] != self.num_channels:
            raise ValueError(f"input: expected {self.num_channels} channels on axis {self.channel_axis}, "
                             f"got input of shape {x.shape}")
        commit = self._commit({}, (self._input_to_keep(x, out), STATS))
        y = F._group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.channel_axis, out, False, commit)
        assert not isinstance(y, tuple)  # return_stats=False
        return y

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        x, mean, rstd = saved
        return F.group_norm_backward(grad_output, x, self.num_groups, mean, rstd, self.weight,
                                     channel_axis=self.channel_axis, eps=self.eps)

    def _torch_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self._has_bias}"


class _InstanceNorm(_NormBase):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = False,
                 track_running_stats: bool = False, *, bias: bool = True, dtype: DTypeLike = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias)

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        """Normalize each (sample, channel) with its own statistics, or with the running statistics in
        evaluation mode when they are tracked.

        Keeps what :meth:`backward` needs, outside :func:`fastnorm.no_grad`.

        Parameters
        ----------
        x : array_like
            float16, float32 or float64, batched (N, C, \\*) or unbatched (C, \\*) (see Shape); any memory
            order.  Without ``affine`` and ``track_running_stats`` another number of channels than
            ``num_features`` is normalized with a warning, as PyTorch.
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.

        Returns
        -------
        ndarray
            The normalized input, of its shape and dtype (``out`` when given).

        Raises
        ------
        TypeError
            ``x`` not floating point, or a masked array; ``out`` of another dtype.
        ValueError
            ``x`` of another number of dimensions, or of channels with ``affine`` or
            ``track_running_stats``; a single spatial value when normalizing with the instance's own
            statistics; ``out`` of another shape, or read-only.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> fastnorm.InstanceNorm1d(2).forward(np.array([[1., 3.], [2., 6.]], np.float32)).round(4)  # (C, L)
        array([[-1.,  1.],
               [-1.,  1.]], dtype=float32)
        """
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
        commit = self._commit({}, (self._input_to_keep(x, out), STATS, use_input_stats, unbatched))
        y = F._instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_input_stats,
                             momentum, self.eps, out, False, commit)
        assert not isinstance(y, tuple)  # return_stats=False
        return given_out if given_out is not None else (y[0] if unbatched else y)

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        x, mean, rstd, use_input_stats, unbatched = saved
        g = _array(grad_output, "grad_output")
        if unbatched:
            g = g[np.newaxis]
        dx, grad_weight, grad_bias = F.instance_norm_backward(g, x, mean, rstd, self.weight, use_input_stats,
                                                              eps=self.eps)
        return (dx[0] if unbatched else dx), grad_weight, grad_bias


_INSTANCE_NORM_DOC = r"""Instance normalization over {shape} or unbatched {unbatched} input, as
    ``torch.nn.InstanceNorm{dims}``.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance before the square root; >= 0.
    momentum : float in [0, 1] or None
        Weight of the new batch in the running statistics (None: they are not updated, as in PyTorch).
    affine : bool
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros); default False.
    track_running_stats : bool
        Keep running statistics, used in evaluation mode; default False.
    bias : bool, keyword-only
        With ``affine``, whether there is a bias.
    dtype : float32 or float64, keyword-only
        dtype of the parameters and buffers.

    Shape
    -----
    input : {shape} or {unbatched}
        float16, float32 or float64.
    output : the input's shape and dtype

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
        Learnable :math:`\gamma` and :math:`\beta` (None without ``affine``; bias None with ``bias=False``).
    running_mean, running_var : ndarray of shape (C,) or None
        Running statistics (None without ``track_running_stats``).
    num_batches_tracked : int or None
        0 with ``track_running_stats`` (None without): kept for PyTorch's state dict, which has it;
        InstanceNorm does not count batches, as PyTorch's does not.
    grad_weight, grad_bias : ndarray or None
        The parameters' gradients from the last :meth:`backward`.
    training : bool
        Training mode (the default) or evaluation mode.

    Notes
    -----
    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    the mean and biased variance over the spatial dimensions of each (sample, channel), in float64.  With
    ``track_running_stats``, training mode updates the running statistics with the batch's average of the
    instance means and unbiased variances, and evaluation mode normalizes with them.
""" + _references("instance", "torch.nn.InstanceNorm{dims}") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> inorm = fastnorm.InstanceNorm{dims}(3)
    >>> y = inorm(np.random.default_rng(0).normal(5.0, 2.0, {example}).astype(np.float32))
    >>> bool(np.abs(y.mean(axis={axes})).max() < 1e-5)    # each (sample, channel) centred
    True
"""


class InstanceNorm1d(_InstanceNorm):
    __doc__ = _fill(_INSTANCE_NORM_DOC, dims="1d", shape="(N, C, L)", unbatched="(C, L)", example="(2, 3, 8)",
                                        axes="2")
    _input_ndims = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    __doc__ = _fill(_INSTANCE_NORM_DOC, dims="2d", shape="(N, C, H, W)", unbatched="(C, H, W)",
                                        example="(2, 3, 4, 4)", axes="(2, 3)")
    _input_ndims = (3, 4)


class InstanceNorm3d(_InstanceNorm):
    __doc__ = _fill(_INSTANCE_NORM_DOC, dims="3d", shape="(N, C, D, H, W)", unbatched="(C, D, H, W)",
                                        example="(2, 3, 2, 4, 4)", axes="(2, 3, 4)")
    _input_ndims = (4, 5)


class LocalResponseNorm(_Layer):
    __doc__ = r"""Local response normalization across channels, as ``torch.nn.LocalResponseNorm``.

    Parameters
    ----------
    size : int
        The number of channels in a window, >= 1.
    alpha, beta, k : float
        The scale, the exponent and the additive constant (finite).

    Shape
    -----
    input : (N, C, *)
        float16, float32 or float64, 3 or more dimensions.
    output : the input's shape and dtype

    Attributes
    ----------
    size, alpha, beta, k
        The constructor's arguments.
    weight, bias, grad_weight, grad_bias : None
        The layer has no parameters (kept for the interface the other layers share).
    training : bool
        Kept for PyTorch's interface: the layer computes the same in both modes.

    Notes
    -----
    .. math::

        y_c = x_c \Big/ \Big(k + \frac{\alpha}{n} \sum_{c' = c - \lfloor n/2 \rfloor}
              ^{c + \lfloor (n - 1)/2 \rfloor} x_{c'}^2\Big)^{\beta}

    with :math:`n` = ``size``, zero outside the channels; computed in float64 (see
    :func:`fastnorm.functional.local_response_norm`).

    References
    ----------
    Krizhevsky, A., Sutskever, I. and Hinton, G. E. (2012). ImageNet classification with deep
    convolutional neural networks. NeurIPS, section 3.3.
    https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.LocalResponseNorm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> lrn = fastnorm.LocalResponseNorm(2, alpha=1.0, beta=1.0, k=0.0)
    >>> lrn(np.array([[[1.], [2.], [3.]]], np.float32)).ravel()
    array([2.        , 0.8       , 0.46153846], dtype=float32)
    """

    weight = bias = None

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        self.size, self.alpha, self.beta, self.k = _lrn._check_params(size, alpha, beta, k)
        self.training = True

    def _config(self) -> Dict[str, Any]:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {}

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        """Normalize each value by the squares of its neighbouring channels.

        Keeps the input (by reference) for :meth:`backward`, outside :func:`fastnorm.no_grad`.

        Parameters
        ----------
        x : array_like
            float16, float32 or float64, of shape (N, C, \\*); any memory order.
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.

        Returns
        -------
        ndarray
            The normalized input, of its shape and dtype (``out`` when given).

        Raises
        ------
        TypeError
            ``x`` not floating point, or a masked array; ``out`` of another dtype.
        ValueError
            ``x`` with fewer than 3 dimensions; ``out`` of another shape, or read-only.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> fastnorm.LocalResponseNorm(1, alpha=1.0, beta=0.5, k=0.0).forward(np.full((1, 2, 1), -2.0))
        array([[[-1.],
                [-1.]]])
        """
        commit = self._commit({}, (self._input_to_keep(x, out),))
        return _lrn._local_response_norm(x, self.size, self.alpha, self.beta, self.k, out, commit)

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        return _lrn.local_response_norm_backward(grad_output, saved[0], self.size, self.alpha, self.beta,
                                                 self.k), None, None

    def _torch_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


# ---------------------------------------------------------------------------------------------------------
# Lazy layers: num_features from the first call, as torch.nn's LazyBatchNorm*d and LazyInstanceNorm*d
# ---------------------------------------------------------------------------------------------------------

_VECTOR_KEYS = ("weight", "bias", "running_mean", "running_var", "renorm_mean", "renorm_stddev")


class _LazyNorm(_NormBase):
    """``num_features`` is 0 and the parameters and running statistics are None until the first call (or a
    load of a state dict that holds them) gives their length; the first call then turns the instance into
    ``cls_to_become`` (torch's ``LazyModuleMixin``)."""

    cls_to_become: type

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A concrete lazy class takes its input shapes and docstring from the class it becomes.
        super().__init_subclass__(**kwargs)
        becomes = cls.__dict__.get("cls_to_become")
        if becomes is not None:
            cls._input_ndims = becomes._input_ndims
            cls.__doc__ = _lazy_doc(becomes)

    def _lazy_init(self) -> None:
        # PyTorch keeps num_batches_tracked as a real tensor (0) before the first call; the rest waits.
        self.num_features = 0
        self.weight = self.bias = self.running_mean = self.running_var = None

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        del config["num_features"]
        return config

    def has_uninitialized_params(self) -> bool:
        """Whether ``num_features`` is still unknown (no call and no state dict loaded yet).

        Returns
        -------
        bool
            True until the parameters and buffers exist (as torch's ``has_uninitialized_params``; a layer
            without affine parameters and running statistics has none, and is False from the start).

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> bn = fastnorm.LazyBatchNorm1d()
        >>> bn.has_uninitialized_params()
        True
        >>> _ = bn.load_state_dict(fastnorm.BatchNorm1d(3).state_dict())
        >>> bn.has_uninitialized_params(), bn.num_features
        (False, 3)
        """
        return self.num_features == 0 and (self.affine or self.track_running_stats)

    def reset_running_stats(self) -> None:
        if self.num_features:
            super().reset_running_stats()
        elif self.track_running_stats:
            self.num_batches_tracked = 0

    reset_running_stats.__doc__ = _NormBase.reset_running_stats.__doc__

    def reset_parameters(self) -> None:
        if self.num_features:
            super().reset_parameters()
        else:
            self.reset_running_stats()

    reset_parameters.__doc__ = _NormBase.reset_parameters.__doc__

    def _channels(self, x: NDArray[Any]) -> int:
        raise NotImplementedError

    @staticmethod
    def _materialize(layer: _NormBase, num_features: int) -> None:
        """Create ``layer``'s parameters and buffers for ``num_features`` channels."""
        layer.num_features = num_features
        tracked = layer.num_batches_tracked
        layer.reset_parameters()
        layer.num_batches_tracked = tracked

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        """The first call: ``num_features`` from ``x``'s channels, then the call of ``cls_to_become``, which
        the layer is from then on.

        Parameters
        ----------
        x : array_like
            float16, float32 or float64, of the input shape of ``cls_to_become``, with at least one channel.
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.

        Returns
        -------
        ndarray
            The normalized input, of its shape and dtype (``out`` when given).

        Raises
        ------
        TypeError, ValueError
            As ``cls_to_become.forward``, and a ValueError for an input without channels.  A call that
            raises leaves the layer lazy.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> bn = fastnorm.LazyBatchNorm1d()
        >>> y = bn.forward(np.array([[1., 2.], [3., 6.]], np.float32))
        >>> type(bn).__name__, bn.num_features, bn.running_mean
        ('BatchNorm1d', 2, array([0.2, 0.4], dtype=float32))
        """
        if self.num_features == 0:
            x = _array(x, "input")
            self._check_input(x)
            channels = self._channels(x)
            if channels == 0:
                raise ValueError(f"input: expected at least one channel to infer num_features from, got input "
                                 f"of shape {x.shape}")
        # The call runs on a stand-in of cls_to_become with the parameters and buffers created; the kernel
        # call that writes its output also gives this layer the stand-in's attributes and class (see
        # _Layer._namespace_commit): a call that fails or is interrupted before it leaves the layer lazy.
        stand_in: _NormBase = object.__new__(self.cls_to_become)
        stand_in.__dict__.update(self.__dict__)
        if self.num_features == 0:
            self._materialize(stand_in, channels)
        stand_in._lazy_target = self
        y: NDArray[Any] = stand_in.forward(x, out=out)
        return y

    def load_state_dict(self, state_dict: StateDictSource, strict: bool = True, prefix: str = "") -> LoadResult:
        if self.num_features == 0 and isinstance(state_dict, Mapping):
            # As torch's lazy load hook: initialized values materialize the layer with their length.
            lengths = {_state_array(state_dict[prefix + key], f"state_dict[{prefix + key!r}]").shape
                       for key in _VECTOR_KEYS if prefix + key in state_dict}
            if len(lengths) == 1 and len(shape := lengths.pop()) == 1 and shape[0] > 0:
                before = self.__dict__.copy()
                self._materialize(self, shape[0])
                try:
                    return super().load_state_dict(state_dict, strict, prefix)
                except BaseException:
                    self.__dict__.clear()
                    self.__dict__.update(before)
                    raise
        return super().load_state_dict(state_dict, strict, prefix)

    load_state_dict.__doc__ = _Layer.load_state_dict.__doc__


_LAZY_NOTE = """
    The first call infers ``num_features`` from the channel count of its input, creates the parameters and running statistics and turns the instance into a
    :class:`{becomes}`: ``isinstance(layer, fastnorm.{becomes})`` holds from then on, as with PyTorch's
    ``cls_to_become``.  Before it, ``state_dict()`` holds only ``num_batches_tracked`` (with
    ``track_running_stats``): PyTorch holds the others as uninitialized placeholders, which NumPy does not
    have.  Loading a state dict that holds them sets ``num_features`` to their length, as PyTorch's lazy
    modules do; :func:`fastnorm.save` then :func:`fastnorm.load` of a layer not yet called gives one not
    yet called.
"""


def _lazy_doc(becomes: type) -> str:
    """The docstring of ``Lazy<becomes>`` from ``becomes``': no ``num_features`` argument, a note on the
    first call, the example on the lazy class."""
    cls = becomes.__name__
    summary = (f"A :class:`{cls}` whose ``num_features`` is inferred from the first call's input, as "
               f"``torch.nn.Lazy{cls}``.")
    rest = (becomes.__doc__ or "").split("\n", 1)[1]
    rest = rest.replace("    num_features : int\n        C, the number of channels.\n", "")
    rest = rest.replace(f"torch.nn.{cls[:-2]}", f"torch.nn.Lazy{cls[:-2]}")
    rest = rest.replace(f"= fastnorm.{cls}(3)", f"= fastnorm.Lazy{cls}()")
    rest = rest.replace("; default False.", "; default True, as PyTorch's lazy class (False in InstanceNorm).")
    rest = rest.replace("\n    References", _LAZY_NOTE.replace("{becomes}", cls) + "\n    References", 1)
    return summary + "\n" + rest


class _LazyBatchNorm(_LazyNorm, _BatchNorm):
    def __init__(self, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, dtype: DTypeLike = np.float32,
                 channel_axis: int = 1, bessel: bool = True, renorm: bool = False,
                 renorm_clipping: Optional[Mapping[str, Optional[float]]] = None, renorm_momentum: float = 0.01,
                 virtual_batch_size: Optional[int] = None) -> None:
        super().__init__(1, eps, momentum, affine, track_running_stats, bias=bias, dtype=dtype,
                         channel_axis=channel_axis, bessel=bessel, renorm=renorm, renorm_clipping=renorm_clipping,
                         renorm_momentum=renorm_momentum, virtual_batch_size=virtual_batch_size)
        self._lazy_init()
        self.renorm_mean = self.renorm_stddev = None

    def _channels(self, x: NDArray[Any]) -> int:
        return int(x.shape[_check_axis(self.channel_axis, x.ndim, "channel_axis")])


class _LazyInstanceNorm(_LazyNorm, _InstanceNorm):
    # affine and track_running_stats default to True, as in PyTorch's lazy classes (InstanceNorm's: False).
    def __init__(self, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, dtype: DTypeLike = np.float32) -> None:
        super().__init__(1, eps, momentum, affine, track_running_stats, bias=bias, dtype=dtype)
        self._lazy_init()

    def _channels(self, x: NDArray[Any]) -> int:
        # PyTorch 2.13 reads dimension 1 whatever the input; an unbatched input has its channels first.
        return int(x.shape[0 if x.ndim == self._input_ndims[0] else 1])


class LazyBatchNorm1d(_LazyBatchNorm):
    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_LazyBatchNorm):
    cls_to_become = BatchNorm2d


class LazyBatchNorm3d(_LazyBatchNorm):
    cls_to_become = BatchNorm3d


class LazyInstanceNorm1d(_LazyInstanceNorm):
    cls_to_become = InstanceNorm1d


class LazyInstanceNorm2d(_LazyInstanceNorm):
    cls_to_become = InstanceNorm2d


class LazyInstanceNorm3d(_LazyInstanceNorm):
    cls_to_become = InstanceNorm3d
