"""Per-channel layers with running statistics: ``_NormBase``, batch normalization (renorm, ghost batches)
and BatchNorm1d/2d/3d."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _kernels
from . import functional as F
from ._layer import STATS, _AddLayer, _check_dtype, _Grads, _keeps_grad
from ._layer_docs import (_BATCH_NORM_ATTRIBUTES, _BATCH_NORM_MATH, _BATCH_NORM_PARAMETERS, _GROUPS_MATH, _KEEPS,
                          _fill, _raises, _references, _reset_doc)
from ._tf_ops import moments64
from ._threads import threads_for
from ._validation import (_array, _as_input, _check_activation, _check_axis, _check_eps, _check_momentum, _check_out,
                          _momentum_factor, _real, _several_axes, check_count)
from .statistics import Moments

_BatchNormT = TypeVar("_BatchNormT", bound="_BatchNorm")
# ``num_features``: a channel count, or with several channel axes the sizes of those axes.
Features = Union[int, Tuple[int, ...]]


def _check_features(num_features: Union[int, Sequence[int]]) -> Features:
    """``num_features``: a positive int, or a sequence of them (the sizes of several channel axes) as a tuple."""
    if _several_axes(num_features):
        sizes = tuple(check_count(n, "num_features") for n in num_features)  # type: ignore[union-attr]
        if not sizes:
            raise ValueError("num_features: expected a positive integer or a non-empty tuple of them, got ()")
        return sizes
    return check_count(num_features, "num_features")  # type: ignore[arg-type]


class _NormBase(_AddLayer):
    """Per-channel parameters and running statistics, as PyTorch's ``_NormBase``."""
    _input_ndims: Tuple[int, ...] = ()
    _optional_state = ("num_batches_tracked",)
    weight: Optional[NDArray[Any]]
    bias: Optional[NDArray[Any]]
    running_mean: Optional[NDArray[Any]]
    running_var: Optional[NDArray[Any]]
    num_batches_tracked: Optional[int]
    eps: float

    num_features: Features

    def __init__(self, num_features: Features, eps: float, momentum: Optional[float], affine: bool,
                 track_running_stats: bool, dtype: DTypeLike, bias: bool = True,
                 activation: Optional[str] = None) -> None:
        self.num_features = _check_features(num_features)
        self._set_activation(activation)
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
        features = list(self.num_features) if isinstance(self.num_features, tuple) else self.num_features
        return {"num_features": features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "bias": self._has_bias, "track_running_stats": self.track_running_stats,
                "dtype": self.dtype.name, "activation": self.activation}

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

    @_reset_doc("Reset the running statistics (:meth:`reset_running_stats`), the weight to 1 and the bias to 0.",
                "bn", "BatchNorm1d(2)", "weight", "3.0")
    def reset_parameters(self) -> None:
        self.reset_running_stats()
        self._reset_affine(self.affine, self.num_features)

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


def _check_channel_axes(channel_axis: object) -> Union[int, Tuple[int, ...]]:
    """``channel_axis``: an integer axis, or a sequence of them (several channel axes) as a tuple; a sequence
    of one axis is that axis."""
    if _several_axes(channel_axis):
        axes: Tuple[Any, ...] = tuple(channel_axis)  # type: ignore[arg-type]
        if not axes or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
            raise TypeError(f"channel_axis: expected an integer axis or a non-empty tuple of them, got "
                            f"{channel_axis!r}")
        return int(axes[0]) if len(axes) == 1 else tuple(int(a) for a in axes)
    if not isinstance(channel_axis, numbers.Integral):
        raise TypeError(f"channel_axis: expected an integer axis, got {channel_axis!r}")
    return int(channel_axis)


def _lazy_hint(layer: object) -> str:
    """What an error about a layer without running statistics adds for a Lazy layer not sized yet."""
    unsized = isinstance(layer, _NormBase) and layer.track_running_stats and layer.num_features == 0
    return "; this Lazy layer has none until it is called or given a state dict" if unsized else ""


def _running_stats(layer: _NormBase) -> Tuple[NDArray[Any], NDArray[Any]]:
    """The running mean and variance of a layer that tracks them."""
    if layer.running_mean is None or layer.running_var is None:
        raise ValueError("the layer keeps no running statistics (track_running_stats=False)")
    return layer.running_mean, layer.running_var


class _BatchNorm(_NormBase):
    _recorder: Optional[List[Any]] = None  # [Moments or None, calls] while calibrate_batch_norms runs
    channel_axis: Any  # an int, or a tuple of them (several channel axes; see _check_channel_axes)
    bessel: bool
    renorm: bool
    renorm_clipping: Optional[Dict[str, float]]
    renorm_momentum: float
    virtual_batch_size: Optional[int]
    renorm_mean: Optional[NDArray[Any]] = None  # with renorm (Keras' names)
    renorm_stddev: Optional[NDArray[Any]] = None
    _eval_cache: _kernels.EvalCache

    def __init__(self, num_features: Union[int, Sequence[int]], eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True,
                 dtype: DTypeLike = np.float32, channel_axis: Union[int, Sequence[int]] = 1, bessel: bool = True,
                 renorm: bool = False, renorm_clipping: Optional[Mapping[str, Optional[float]]] = None,
                 renorm_momentum: float = 0.01, virtual_batch_size: Optional[int] = None,
                 activation: Optional[str] = None) -> None:
        self.channel_axis = _check_channel_axes(channel_axis)
        features = _check_features(num_features)
        if isinstance(self.channel_axis, tuple):
            if not isinstance(features, tuple) or len(features) != len(self.channel_axis):
                raise ValueError(f"num_features: expected a tuple of {len(self.channel_axis)} sizes, one per axis of "
                                 f"channel_axis={channel_axis!r}, got {num_features!r}")
        elif isinstance(features, tuple):
            if len(features) != 1:
                raise ValueError(f"num_features: expected an integer (one channel axis, channel_axis="
                                 f"{channel_axis!r}), got {num_features!r}")
            features = features[0]
        self.bessel = bool(bessel)
        self.renorm = bool(renorm)
        self.renorm_clipping = _check_renorm_clipping(renorm_clipping)
        self.renorm_momentum = _check_momentum(renorm_momentum, False, "renorm_momentum")
        self.virtual_batch_size = None if virtual_batch_size is None else check_count(virtual_batch_size,
                                                                                          "virtual_batch_size")
        if self.renorm and not track_running_stats:
            raise ValueError("renorm: expected track_running_stats=True (the corrections r and d come from "
                             "running statistics)")
        self._check_groups_epilogue(activation, None)
        self._eval_cache = _kernels.EvalCache()
        super().__init__(features, eps, momentum, affine, track_running_stats, dtype, bias, activation)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._eval_cache = _kernels.EvalCache()

    def _check_groups_epilogue(self, activation: Optional[str], add: Optional[ArrayLike]) -> None:
        """Refuse ``activation`` or ``add`` on a layer with renorm or sub-batches: their training step has no
        epilogue."""
        if self.renorm or self.virtual_batch_size is not None:
            for name, value in (("activation", activation), ("add", add)):
                if value is not None:
                    raise ValueError(f"{name}: not supported together with renorm or virtual_batch_size")

    def _config(self) -> Dict[str, Any]:
        axes = list(self.channel_axis) if isinstance(self.channel_axis, tuple) else self.channel_axis
        return dict(super()._config(), channel_axis=axes, bessel=self.bessel, renorm=self.renorm,
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

    def _forward(self, x: Any, out: Optional[NDArray[Any]], add: Optional[ArrayLike],
                 mask: Optional[ArrayLike]) -> NDArray[Any]:
        act = _check_activation(self.activation)
        if (out is None and mask is None and not self.training and self.running_mean is not None
                and type(x) is np.ndarray and self._lazy_target is None and isinstance(self.channel_axis, int)
                and x.ndim in self._input_ndims and -x.ndim <= self.channel_axis < x.ndim):
            # The eval path of an inference pipeline: factors folded once, one sweep per call.
            y = _kernels.eval_cached(self._eval_cache, x, self.channel_axis, self.running_mean, self.running_var,
                                     self.weight, self.bias, self.eps, threads_for(x.size), act, add)
            if y is not None:
                self._keep(x, None, None, False, add=add)
                return y
        x = _array(x, "input")
        self._check_input(x)
        if mask is not None:
            return self._forward_masked(x, out, add, mask)
        state = self._counted(x)
        if self._recorder is not None:  # calibrate_batch_norms: recorded with the call, not before it
            moments = self._moments_of(x)
            state["_recorder"] = [moments if self._recorder[0] is None else self._recorder[0] + moments,
                                  self._recorder[1] + 1]
        if self.training and (self.renorm or self.virtual_batch_size is not None) and x.size > 0:
            self._check_groups_epilogue(self.activation, add)  # the attribute may have been set since
            return self._forward_groups(x, out, state)
        use_batch_stats = self.training or self.running_mean is None
        keep_buffers = not self.training or self.track_running_stats
        saved = self._input_to_keep(x, out)
        commit = self._commit(state, (saved, STATS, True) if use_batch_stats else (saved, None, None, False), add)
        result = F._batch_norm(x, self.running_mean if keep_buffers else None,
                               self.running_var if keep_buffers else None, self.weight, self.bias, use_batch_stats,
                               self.momentum, self.eps, self.channel_axis, out, self.bessel,
                               self.num_batches_tracked, use_batch_stats, commit, act, add)
        return result[0] if isinstance(result, tuple) else result

    _forward_parts = (  # of forward's docstring: see _AddLayer
        "Normalize ``x`` per channel.\n"
        "\n"
        "        Training mode: with the batch's statistics, updating the running statistics (with\n"
        "        ``track_running_stats``).  Evaluation mode: with the running statistics (the batch's without\n"
        f"        ``track_running_stats``).  {_KEEPS}",
        "float16, bfloat16, float32 or float64, of the layer's input shape (see Shape), C channels on\n"
        "            ``channel_axis``; any memory order.",
        _raises("``x`` of another number of dimensions or channels; training with a single value per channel\n"
                "            (per sub-batch with ``virtual_batch_size``; allowed with ``bessel=False``) or with\n"
                "            ``eps=0``; training with a batch size that is not a multiple of\n"
                "            ``virtual_batch_size``; ``out`` of another shape, or read-only; a ``mask`` that does not\n"
                "            broadcast to ``x``, or with several channel axes, ``renorm`` or ``virtual_batch_size``;\n"
                "            training with ``renorm`` or ``virtual_batch_size`` and ``add`` or an activation.",
                masked=True),
        ">>> import numpy as np, fastnorm\n"
        "        >>> bn = fastnorm.BatchNorm1d(2)\n"
        "        >>> bn(np.array([[1., 2.], [3., 6.]], np.float32)).round(4)\n"
        "        array([[-1., -1.],\n"
        "               [ 1.,  1.]], dtype=float32)\n"
        "        >>> bn.running_mean, bn.running_var    # 0.1 * the batch means; 0.9 + 0.1 * the unbiased variances\n"
        "        (array([0.2, 0.4], dtype=float32), array([1.1, 1.7], dtype=float32))\n"
        "        >>> x = np.array([[1., 2.], [3., 6.], [9., 9.]], np.float32)\n"
        "        >>> bn(x, mask=np.array([[True], [True], [False]])).round(4)  # the statistics of rows 0 and 1\n"
        "        array([[-1. , -1. ],\n"
        "               [ 1. ,  1. ],\n"
        "               [ 7. ,  2.5]], dtype=float32)")

    def _counted(self, x: NDArray[Any]) -> Dict[str, Any]:
        """The new ``num_batches_tracked`` of a call on ``x``, as the state a forward sets."""
        if self.training and self.track_running_stats and x.size > 0 and self.num_batches_tracked is not None:
            return {"num_batches_tracked": self.num_batches_tracked + 1}
        return {}

    def _forward_masked(self, x: NDArray[Any], out: Optional[NDArray[Any]], add: Optional[ArrayLike],
                        mask: ArrayLike) -> NDArray[Any]:
        """A forward given ``mask``: :func:`fastnorm.batch_norm`'s masked path, the statistics (and the running
        statistics' update) over the values where the mask is True."""
        if self._recorder is not None:
            raise ValueError("mask: not supported while calibrate_batch_norms records the inputs")
        if self.training and (self.renorm or self.virtual_batch_size is not None):
            raise ValueError("mask: not supported together with renorm or virtual_batch_size")
        use_batch_stats = self.training or self.running_mean is None
        keep_buffers = not self.training or self.track_running_stats
        commit = self._commit(self._counted(x), (self._input_to_keep(x, out), STATS, use_batch_stats), add, mask)
        return F._batch_norm_masked(x, self.running_mean if keep_buffers else None,
                                    self.running_var if keep_buffers else None, self.weight, self.bias,
                                    use_batch_stats, self.momentum, self.eps, self.channel_axis, out, self.bessel,
                                    self.num_batches_tracked, mask, _check_activation(self.activation), add,
                                    commit)[0]

    def _channel_axes_of(self, x: NDArray[Any]) -> Tuple[int, ...]:
        """The channel axes of an input of this layer (sorted, non-negative), its channels checked."""
        if isinstance(self.channel_axis, int):
            axes: Tuple[int, ...] = (_check_axis(self.channel_axis, x.ndim, "channel_axis"),)
        else:
            axes = tuple(sorted(_check_axis(a, x.ndim, "channel_axis") for a in self.channel_axis))
            if len(set(axes)) != len(axes):
                raise ValueError(f"channel_axis: expected distinct axes, got {self.channel_axis} for a "
                                 f"{x.ndim}-D input")
        features = self.num_features if isinstance(self.num_features, tuple) else (self.num_features,)
        if tuple(x.shape[a] for a in axes) != features:
            raise ValueError(f"input: expected {self.num_features} channels on axis {self.channel_axis}, "
                             f"got input of shape {x.shape}")
        return axes

    def _moments_of(self, x: NDArray[Any]) -> Moments:
        """Exact per-channel moments of an input of this layer."""
        axes = self._channel_axes_of(x)
        return Moments.of(x, tuple(a for a in range(x.ndim) if a not in axes))

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
        channel_axes = self._channel_axes_of(x)
        C = self.num_features
        size = self.virtual_batch_size or x.shape[0]
        if self.virtual_batch_size is not None and 0 in channel_axes:
            raise ValueError("virtual_batch_size: splits axis 0, the batch; expected channel_axis on another axis")
        if x.shape[0] % size:
            raise ValueError(f"virtual_batch_size: expected a divisor of the batch size, got {size} for a batch "
                             f"of {x.shape[0]}")
        groups = x.shape[0] // size
        count = x.size // (math.prod(C) if isinstance(C, tuple) else C) // groups
        if count <= 1 and self.bessel:
            raise ValueError(f"input: expected more than 1 value per channel in each {'virtual ' * (groups > 1)}"
                             f"batch when training, got input size {x.shape}")
        eps = _check_eps(self.eps, training=True)
        compute, dtype = _as_input(x, "input")
        if out is not None:
            _check_out(out, x.shape, dtype)
        axes = tuple(a for a in range(x.ndim) if a not in channel_axes)
        pieces = [slice(g * size, (g + 1) * size) for g in range(groups)]
        stats = [moments64(compute[piece], axes)[1:] for piece in pieces]
        mean, var = np.stack([m for m, _ in stats]), np.stack([v for _, v in stats])   # (groups, *C), float64
        if self.renorm:
            r, d, renorm_copies = self._renorm_corrections(mean, var)
        else:
            r, d, renorm_copies = np.ones_like(mean), np.zeros_like(mean), ()
        weight = np.ones(C) if self.weight is None else self.weight.astype(np.float64)
        bias = np.zeros(C) if self.bias is None else self.bias.astype(np.float64)
        y = np.empty(x.shape, dtype)
        for g, piece in enumerate(pieces):  # (x - mean) / sqrt(var + eps) * (r * weight) + (d * weight + bias)
            F.batch_norm(x[piece], mean[g], var[g], weight * r[g], bias + weight * d[g], False, eps=eps,
                         channel_axis=self.channel_axis, out=y[piece])
        if _keeps_grad():
            state["_saved"] = (self._input_to_keep(x, out), mean, 1.0 / np.sqrt(var + eps), True, size, r, d)
        # One C call applies the rest: out=, the running statistics (averaged over the sub-batches), the
        # renorm statistics and the layer's attributes (see _kernels.Commit).
        running = None
        if self.running_mean is not None and self.running_var is not None:
            # flat views of the layer's own (contiguous) buffers: the commit updates them per channel
            running = (self.running_mean.reshape(-1), self.running_var.reshape(-1),
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
        weight = np.ones(mean.shape[1:]) if self.weight is None else self.weight.astype(np.float64)
        dx = np.empty(x.shape, x.dtype.newbyteorder("="))
        grad_weight, grad_bias = np.zeros(mean.shape[1:]), np.zeros(mean.shape[1:])
        for k in range(mean.shape[0]):
            piece = slice(k * size, (k + 1) * size)
            dx[piece], gw, gb = F.batch_norm_backward(g[piece], x[piece], mean[k], invstd[k], weight * r[k], True,
                                                      channel_axis=self.channel_axis, eps=self.eps)
            grad_weight += r[k] * gw + d[k] * gb
            grad_bias += gb
        return dx, grad_weight, grad_bias

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> Tuple[Any, ...]:
        if len(saved) == 7:  # kept by _forward_groups
            return self._backward_groups(grad_output, saved[0], *saved[1:3], *saved[4:])
        x, mean, invstd, batch_stats = saved[:4]
        if not batch_stats:
            mean, running_var = _running_stats(self)
            invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + self.eps)
        elif isinstance(self.num_features, tuple):  # kept flat by the kernel call over several channel axes
            mean, invstd = np.reshape(mean, self.num_features), np.reshape(invstd, self.num_features)
        return F.batch_norm_backward(grad_output, x, mean, invstd, self.weight, batch_stats,
                                     channel_axis=self.channel_axis, eps=self.eps, bias=self.bias, **self._epilogue())


_BATCH_NORM_DOC = r"""Batch normalization over {shape} input, as ``torch.nn.BatchNorm{dims}``.
""" + _BATCH_NORM_PARAMETERS.replace(
    "num_features : int\n        C, the number of channels.",
    "num_features : int or tuple of int\n        C, the number of channels; with several channel axes, the tuple of\n"
    "        their sizes (in the order of the axes, sorted).") + """
    channel_axis : int or tuple of int, keyword-only
        1 (channels first, the default) or -1 (channels last: {last} input).  A tuple of axes (Keras 2's
        ``BatchNormalization(axis=[1, 3])``): a channel per combination of their indices, the parameters
        and running statistics of shape ``num_features`` (see :func:`fastnorm.batch_norm`); not with
        ``mask=``.
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
        Neither this nor ``renorm`` goes with ``activation`` (a ValueError, here or at a training call
        after the attribute is set) or with ``add=`` in training.

    Shape
    -----
    input : {shape}
        float16, bfloat16, float32 or float64 (computed in float32 or float64; the parameters' dtype need not
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
