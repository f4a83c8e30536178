"""Lazy layers: ``num_features`` from the first call, as torch.nn's LazyBatchNorm*d and LazyInstanceNorm*d."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ._batch_norm_layers import (BatchNorm1d, BatchNorm2d, BatchNorm3d, Features, _BatchNorm, _check_channel_axes,
                                 _NormBase)
from ._instance_layers import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, _InstanceNorm
from ._layer import LoadResult, StateDictSource, _Layer, _state_array
from ._validation import _array, _check_axis

_VECTOR_KEYS = ("weight", "bias", "running_mean", "running_var", "renorm_mean", "renorm_stddev")


class _LazyNorm(_NormBase):
    """``num_features`` is 0 and the parameters and running statistics are None until the first call (or a
    load of a state dict that holds them) gives their length; the first call then turns the instance into
    ``cls_to_become`` (torch's ``LazyModuleMixin``)."""

    cls_to_become: type

    def __init_subclass__(cls, becomes: Optional[Type[_NormBase]] = None, **kwargs: Any) -> None:
        # A concrete lazy class names the class it becomes, and takes its input shapes and docstring from it.
        super().__init_subclass__(**kwargs)
        if becomes is not None:
            cls.cls_to_become = becomes
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

    def _channels(self, x: NDArray[Any]) -> Features:
        raise NotImplementedError

    def _features_of(self, shape: Tuple[int, ...]) -> Optional[Features]:
        """The ``num_features`` a state dict's vectors of ``shape`` give, or None where they give none."""
        if len(shape) != self._features_ndim() or 0 in shape:
            return None
        return shape if len(shape) > 1 else shape[0]

    def _features_ndim(self) -> int:
        return 1

    @staticmethod
    def _materialize(layer: _NormBase, num_features: Features) -> None:
        """Create ``layer``'s parameters and buffers for ``num_features`` channels."""
        layer.num_features = num_features
        tracked = layer.num_batches_tracked
        layer.reset_parameters()
        layer.num_batches_tracked = tracked

    def _forward(self, x: Any, out: Optional[NDArray[Any]], add: Optional[ArrayLike],
                 mask: Optional[ArrayLike]) -> NDArray[Any]:
        if self.num_features == 0:
            x = _array(x, "input")
            self._check_input(x)
            channels = self._channels(x)
            if 0 in (channels if isinstance(channels, tuple) else (channels,)):
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
        y: NDArray[Any] = stand_in._forward(x, out, add, mask)
        return y

    _forward_parts = (  # of forward's docstring: see _AddLayer
        "The first call: ``num_features`` from ``x``'s channels, then the call of ``cls_to_become``, which\n"
        "        the layer is from then on.",
        "float16, bfloat16, float32 or float64, of the input shape of ``cls_to_become``, with at least one channel.",
        "TypeError, ValueError\n"
        "            As ``cls_to_become.forward``, and a ValueError for an input without channels.  A call that\n"
        "            raises leaves the layer lazy.",
        ">>> import numpy as np, fastnorm\n"
        "        >>> bn = fastnorm.LazyBatchNorm1d()\n"
        "        >>> y = bn.forward(np.array([[1., 2.], [3., 6.]], np.float32))\n"
        "        >>> type(bn).__name__, bn.num_features, bn.running_mean\n"
        "        ('BatchNorm1d', 2, array([0.2, 0.4], dtype=float32))")

    def load_state_dict(self, state_dict: StateDictSource, strict: bool = True, prefix: str = "") -> LoadResult:
        if self.num_features == 0 and isinstance(state_dict, Mapping):
            # As torch's lazy load hook: initialized values materialize the layer with their length.
            lengths = {_state_array(state_dict[prefix + key], f"state_dict[{prefix + key!r}]").shape
                       for key in _VECTOR_KEYS if prefix + key in state_dict}
            features = self._features_of(lengths.pop()) if len(lengths) == 1 else None
            if features is not None:
                before = self.__dict__.copy()
                self._materialize(self, features)
                try:
                    return super().load_state_dict(state_dict, strict, prefix)
                except BaseException:
                    self.__dict__.clear()
                    self.__dict__.update(before)
                    raise
        return super().load_state_dict(state_dict, strict, prefix)

    load_state_dict.__doc__ = _Layer.load_state_dict.__doc__


_LAZY_NOTE = """
    The first call infers ``num_features`` from the channel count of its input, creates the parameters and
    running statistics and turns the instance into a
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
    rest = re.sub(r"    num_features : .*\n(        .*\n)+?(?=    \w)", "", rest, count=1)
    rest = rest.replace(f"torch.nn.{cls[:-2]}", f"torch.nn.Lazy{cls[:-2]}")
    rest = rest.replace(f"= fastnorm.{cls}(3)", f"= fastnorm.Lazy{cls}()")
    rest = rest.replace("; default False.", "; default True, as PyTorch's lazy class (False in InstanceNorm).")
    rest = rest.replace("\n    References", _LAZY_NOTE.replace("{becomes}", cls) + "\n    References", 1)
    return summary + "\n" + rest


class _LazyBatchNorm(_LazyNorm, _BatchNorm):
    def __init__(self, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, dtype: DTypeLike = np.float32,
                 channel_axis: Union[int, Sequence[int]] = 1, bessel: bool = True, renorm: bool = False,
                 renorm_clipping: Optional[Mapping[str, Optional[float]]] = None, renorm_momentum: float = 0.01,
                 virtual_batch_size: Optional[int] = None, activation: Optional[str] = None) -> None:
        axes = _check_channel_axes(channel_axis)
        placeholder = (1,) * len(axes) if isinstance(axes, tuple) else 1  # until the first call
        super().__init__(placeholder, eps, momentum, affine, track_running_stats, bias=bias, dtype=dtype,
                         channel_axis=channel_axis, bessel=bessel, renorm=renorm, renorm_clipping=renorm_clipping,
                         renorm_momentum=renorm_momentum, virtual_batch_size=virtual_batch_size,
                         activation=activation)
        self._lazy_init()
        self.renorm_mean = self.renorm_stddev = None

    def _channels(self, x: NDArray[Any]) -> Features:
        if isinstance(self.channel_axis, tuple):
            return tuple(int(x.shape[a]) for a in sorted(_check_axis(a, x.ndim, "channel_axis")
                                                         for a in self.channel_axis))
        return int(x.shape[_check_axis(self.channel_axis, x.ndim, "channel_axis")])

    def _features_ndim(self) -> int:
        return len(self.channel_axis) if isinstance(self.channel_axis, tuple) else 1


class _LazyInstanceNorm(_LazyNorm, _InstanceNorm):
    # affine and track_running_stats default to True, as in PyTorch's lazy classes (InstanceNorm's: False).
    def __init__(self, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, dtype: DTypeLike = np.float32,
                 channel_axis: int = 1, activation: Optional[str] = None) -> None:
        super().__init__(1, eps, momentum, affine, track_running_stats, bias=bias, dtype=dtype,
                         channel_axis=channel_axis, activation=activation)
        self._lazy_init()

    def _channels(self, x: NDArray[Any]) -> int:
        # PyTorch 2.13 reads dimension 1 whatever the input; an unbatched input has its channels first.
        if self.channel_axis == -1:
            return int(x.shape[-1])
        return int(x.shape[0 if x.ndim == self._input_ndims[0] else 1])


class LazyBatchNorm1d(_LazyBatchNorm, becomes=BatchNorm1d): ...


class LazyBatchNorm2d(_LazyBatchNorm, becomes=BatchNorm2d): ...


class LazyBatchNorm3d(_LazyBatchNorm, becomes=BatchNorm3d): ...


class LazyInstanceNorm1d(_LazyInstanceNorm, becomes=InstanceNorm1d): ...


class LazyInstanceNorm2d(_LazyInstanceNorm, becomes=InstanceNorm2d): ...


class LazyInstanceNorm3d(_LazyInstanceNorm, becomes=InstanceNorm3d): ...
