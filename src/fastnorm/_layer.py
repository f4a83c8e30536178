"""The base of every layer (state dict, config, train/eval, the forward/backward protocol), ``no_grad``
and the state and config helpers the layers share."""
from __future__ import annotations

import collections
import contextvars
import inspect
import os
import types
from typing import (Any, BinaryIO, Callable, ClassVar, ContextManager, Dict, List, Mapping, NamedTuple, Optional,
                    Tuple, TypeVar, Union)

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _kernels
from ._layer_docs import _filled, _forward_text
from ._safetensors import SafetensorsFile
from ._threads import context_setting
from ._validation import _array, _check_activation, _check_mask, _is_half

# Whether layer calls keep what backward needs, per context (a Python thread, an asyncio task).
_grad_off: contextvars.ContextVar[bool] = contextvars.ContextVar("fastnorm_no_grad", default=False)

_LayerT = TypeVar("_LayerT", bound="_Layer")
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


def _split_masked(x: Any, mask: Any) -> Tuple[Any, Any]:
    """A layer's input and ``mask=``: a ``numpy.ma`` input as its data, with ``~getmaskarray(x)`` as the mask
    (and'ed with ``mask``, checked); any other input as it is."""
    if not isinstance(x, np.ma.MaskedArray):
        return x, mask
    valid = ~np.ma.getmaskarray(x)
    return np.ma.getdata(x), valid if mask is None else valid & _check_mask(mask, valid.shape)


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


def _grad_of_add(grad: NDArray[Any], add: Any) -> NDArray[Any]:
    """The gradient at the pre-activation as the gradient of ``add``: summed (in float64) over the axes
    ``add`` was broadcast along, as autograd gives a broadcast operand's gradient; in ``grad``'s dtype."""
    shape = np.shape(add)
    if shape == grad.shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    return np.sum(grad, axis=axes, dtype=np.float64).reshape(shape).astype(grad.dtype)


def _state_array(value: Any, name: str) -> NDArray[Any]:
    """A state-dict value as an ndarray.  A PyTorch tensor goes through float64 when it is floating point:
    exact for every torch float type, including bfloat16 and float8, which NumPy lacks; so does an array of
    a 2-byte dtype named bfloat16 (ml_dtypes'), which NumPy does not count as floating point."""
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()
    a = _array(value, name)
    return a.astype(np.float64) if a.dtype.kind != "f" and _is_half(a.dtype) else a


def _check_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


# The Returns section of the methods that return the layer itself (train, eval).
_RETURNS_SELF = """Returns
        -------
        layer
            The layer itself."""


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
    weight: Optional[NDArray[Any]]  # of the layers with parameters
    bias: Optional[NDArray[Any]]
    grad_weight: Optional[NDArray[Any]] = None
    grad_bias: Optional[NDArray[Any]] = None
    grad_add: Optional[NDArray[Any]] = None  # the gradient of the last forward's ``add=``
    activation: Optional[str] = None  # applied in the sweep that writes the output (see _check_activation)
    # The activation, ``add`` and ``mask`` of the forward that ``_saved`` is from: what backward differentiates
    # through.
    _saved_epilogue: Tuple[Optional[str], Any, Any] = (None, None, None)

    def _reset_affine(self, affine: bool, shape: Union[int, Tuple[int, ...]]) -> None:
        """With ``affine``: the weight, of ``shape``, to 1, and the bias (where the layer has one) to 0."""
        if affine:
            self.weight = np.ones(shape, self.dtype)
            if self._has_bias:
                self.bias = np.zeros(shape, self.dtype)

    def _set_activation(self, activation: Optional[str]) -> None:
        """The constructor's ``activation``, checked."""
        _check_activation(activation)
        self.activation = activation

    def _epilogue(self) -> Dict[str, Any]:
        """The keyword arguments of a backward function for the activation, ``add`` and ``mask`` of the kept
        forward."""
        activation, add, mask = self._saved_epilogue
        kwargs: Dict[str, Any] = {"activation": activation}
        if add is not None:
            kwargs["add"] = add
        if mask is not None:
            kwargs["mask"] = mask
        return kwargs

    @staticmethod
    def _input_to_keep(x: Any, out: Optional[NDArray[Any]]) -> Any:
        """Before a forward: the input backward will need (a copy when the forward overwrites it)."""
        if out is not None and _keeps_grad() and np.may_share_memory(out, x):
            return np.array(x, copy=True)
        return x

    def _keep(self, x: Any, *stats: Any, add: Any = None) -> None:
        if _keeps_grad():
            self._saved = (x,) + stats
            self._saved_epilogue = (self.activation, add, None)

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        raise NotImplementedError

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> Tuple[Any, ...]:
        """(grad_input, grad_weight, grad_bias), and grad_add fourth after a forward given ``add``."""
        raise NotImplementedError

    def _commit(self, state: Dict[str, Any], saved: Tuple[Any, ...], add: Any = None,
                mask: Any = None) -> Optional[_kernels.Commit]:
        """The :class:`~fastnorm._kernels.Commit` for a forward: the kernel call that writes the output
        also sets ``state`` (new attribute values) and what backward keeps, ``saved`` (the input and what
        follows it; ``STATS`` second stands for the statistics of the call; and the activation, ``add``
        and a copy of ``mask``: backward's statistics depend on it), so that an interrupted or failing call
        changes nothing and a completed one all of it.  None when there is nothing to set."""
        keep = _keeps_grad()
        if not (keep or state or self._lazy_target is not None):
            return None
        commit = self._namespace_commit(state)
        if keep:
            state["_saved"] = (saved[0], commit) + saved[2:] if len(saved) > 1 and saved[1] is STATS else saved
            state["_saved_epilogue"] = (self.activation, add,
                                        None if mask is None else np.array(_array(mask, "mask"), copy=True))
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
        parameter the layer does not have), and ``grad_add`` after a forward given ``add=`` (else None).
        A layer built with ``activation=`` differentiates through it.  The input is the one the forward
        kept, by reference: modified
        in place between the two calls, it no longer has the statistics the forward computed, and
        backward raises (as PyTorch) rather than return a gradient of the modified values.  A forward
        with the running statistics (evaluation mode) computes none, and ``add`` is kept by reference
        too: a change to either of those before backward is not seen (the gradients are then those of
        the changed values), so leave them as they were until backward.

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
            No forward to differentiate: none yet outside :func:`no_grad` (a forward under it leaves what an
            earlier one kept, as PyTorch's graph of an earlier output stays); or the input
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
        grads = self._backward(grad_output, *saved)
        dx: NDArray[Any] = grads[0]
        grad_weight, grad_bias = grads[1:3]
        state = self._state()
        weight, bias = state.get("weight"), state.get("bias")
        # New arrays of the parameter's dtype, in native byte order whatever the parameter's; set together
        # by one C call, so a backward that fails or is interrupted leaves the last one's
        _kernels.Commit(self.__dict__, {
            "grad_add": _grad_of_add(grads[3], self._saved_epilogue[1]) if len(grads) > 3 else None,
            "grad_weight": None if weight is None or grad_weight is None else grad_weight.astype(
                weight.dtype.newbyteorder("=")).reshape(weight.shape),
            "grad_bias": None if bias is None or grad_bias is None else grad_bias.astype(
                bias.dtype.newbyteorder("=")).reshape(bias.shape)}).apply()
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
        extras = [f"{key}={config[key]!r}" if key == "activation" else f"{key}={config[key]}"
                  for key in ("axes", "channel_axis", "bessel", "renorm", "renorm_clipping", "renorm_momentum",
                              "virtual_batch_size", "dtype", "activation")
                  if key in config and config[key] != _config_value(key, defaults[key].default)]
        return f"{type(self).__name__}({', '.join([self._torch_repr(), *extras])})"

    def __getstate__(self) -> Dict[str, Any]:
        # Pickles and copies carry parameters and buffers, not what the last forward kept for backward.
        state = self.__dict__.copy()
        state.pop("_saved", None)
        state.pop("_saved_epilogue", None)
        state.pop("_eval_cache", None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    @_filled(returns=_RETURNS_SELF)
    def train(self: _LayerT, mode: bool = True) -> _LayerT:
        """Set training mode, or evaluation mode with ``mode=False``, as ``torch.nn.Module.train``.

        Parameters
        ----------
        mode : bool
            True: training mode (batch statistics, running statistics updated); False: evaluation mode.

        {returns}

        Examples
        --------
        >>> import fastnorm
        >>> fastnorm.BatchNorm2d(4).train(False).training
        False
        """
        self.training = bool(mode)
        return self

    @_filled(returns=_RETURNS_SELF)
    def eval(self: _LayerT) -> _LayerT:
        """Set evaluation mode: ``train(False)``.

        {returns}

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


class _AddLayer(_Layer):
    """A layer whose call takes ``add=``, added before its activation, and ``mask=`` (BatchNorm,
    InstanceNorm, GroupNorm).  ``forward`` is stated here once: a class gives its steps as ``_forward`` and
    the parts of its docstring as ``_forward_parts`` (see _layer_docs._forward_text), and gets a ``forward``
    of its own with that docstring."""

    _forward_parts: ClassVar[Tuple[str, str, str, str]]  # summary, x, raises, examples
    _forward_result = "input"  # what forward returns is "the normalized <_forward_result>"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_forward_parts" in cls.__dict__:
            doc = _forward_text(True, *cls._forward_parts, result=cls._forward_result)
            cls.forward = _method_copy(_AddLayer.forward, cls, doc)  # type: ignore[method-assign]

    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None, add: Optional[ArrayLike] = None,
                mask: Optional[ArrayLike] = None) -> NDArray[Any]:
        x, mask = _split_masked(x, mask)
        if add is not None and self.activation is not None:  # backward recomputes the pre-activation from add
            add = self._input_to_keep(add, out)
        return self._forward(x, out, add, mask)

    def _forward(self, x: Any, out: Optional[NDArray[Any]], add: Optional[ArrayLike],
                 mask: Optional[ArrayLike]) -> NDArray[Any]:
        """The forward of ``x``, not a ``numpy.ma`` array (its mask is in ``mask``)."""
        raise NotImplementedError

    def __call__(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None, add: Optional[ArrayLike] = None,
                 mask: Optional[ArrayLike] = None) -> NDArray[Any]:
        """``layer(x, add=a, mask=m)`` is ``layer.forward(x, add=a, mask=m)``."""
        return self.forward(x, out=out, add=add, mask=mask)


def _method_copy(function: Callable[..., Any], owner: type, doc: str) -> Callable[..., Any]:
    """``function`` (the same code, signature and defaults) as a method of ``owner``, with docstring ``doc``:
    what ``help()`` and doctest show for ``owner``'s method."""
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__annotations__ = function.__annotations__
    copy.__doc__ = doc
    copy.__module__ = owner.__module__
    copy.__qualname__ = f"{owner.__qualname__}.{function.__name__}"
    return copy
