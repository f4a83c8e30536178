"""Normalization layers with the constructor arguments, attributes and state-dict keys of ``torch.nn``.

Parameters and running statistics are plain ndarrays (length C vectors); the layers are thin over
:mod:`fastnorm.functional`.
"""
import collections
import numbers
import operator

import numpy as np

from . import functional as F

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

LoadResult = collections.namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


def _check_features(num_features, name="num_features"):
    try:
        n = operator.index(num_features)
    except TypeError:
        raise TypeError(f"{name}: expected a positive integer, got {num_features!r}") from None
    if n < 1:
        raise ValueError(f"{name}: expected a positive integer, got {n}")
    return n


class _Layer:
    """State-dict plumbing shared by the layers: ``_state`` lists the keys in PyTorch's order."""

    _optional_state = ()

    def _state(self):
        raise NotImplementedError

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode; returns the layer."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set evaluation mode; returns the layer."""
        return self.train(False)

    def __call__(self, x, *, out=None):
        return self.forward(x, out=out)

    def state_dict(self):
        """Copies of the parameters and buffers, under PyTorch's keys."""
        state = collections.OrderedDict()
        for key, value in self._state().items():
            if value is not None:
                state[key] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters and buffers from a mapping of PyTorch's keys to array-likes.

        Values may be ndarrays, PyTorch tensors or anything ``np.asarray`` takes.  Everything is checked
        before anything is assigned, so a failed load leaves the layer as it was.

        Returns
        -------
        LoadResult
            ``(missing_keys, unexpected_keys)``, as PyTorch's.
        """
        expected = {k: v for k, v in self._state().items() if v is not None}
        missing = [k for k in expected if k not in state_dict and k not in self._optional_state]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for key, current in expected.items():
            if key not in state_dict:
                continue
            value = np.asarray(state_dict[key])
            if value.shape != np.shape(current):
                raise ValueError(f"state_dict[{key!r}]: expected shape {np.shape(current)}, got {value.shape}")
            if np.ndim(current) == 0:
                new[key] = int(value)
            else:
                if value.dtype.kind not in "fiu":
                    raise TypeError(f"state_dict[{key!r}]: expected real numbers, got dtype {value.dtype}")
                new[key] = value.astype(self.dtype, copy=True)
        for key, value in new.items():
            setattr(self, key, value)
        return LoadResult(missing, unexpected)


class _BatchNorm(_Layer):
    _input_ndims = ()
    _optional_state = ("num_batches_tracked",)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32, channel_axis=1, bessel=True):
        self.num_features = _check_features(num_features)
        self.eps = F._check_eps(eps)
        self.momentum = F._check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = _check_dtype(dtype)
        if not isinstance(channel_axis, numbers.Integral):
            raise TypeError(f"channel_axis: expected an integer axis, got {channel_axis!r}")
        self.channel_axis = int(channel_axis)
        self.bessel = bool(bessel)
        self.training = True
        self.weight = self.bias = None
        self.running_mean = self.running_var = self.num_batches_tracked = None
        self.reset_parameters()

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

    def forward(self, x, *, out=None):
        """Normalize ``x``: batch statistics in training mode (updating the running statistics), running
        statistics in evaluation mode (batch statistics when ``track_running_stats`` is False)."""
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        self._check_input(x)
        tracking = self.training and self.track_running_stats
        factor = self.momentum
        if tracking and factor is None:
            factor = 1.0 / (self.num_batches_tracked + 1)
        use_batch_stats = self.training or self.running_mean is None
        keep_buffers = not self.training or self.track_running_stats
        y = F.batch_norm(x, self.running_mean if keep_buffers else None,
                         self.running_var if keep_buffers else None, self.weight, self.bias,
                         use_batch_stats, 0.0 if factor is None else factor, self.eps,
                         channel_axis=self.channel_axis, out=out, bessel=self.bessel)
        if tracking and x.size > 0:
            self.num_batches_tracked += 1
        return y

    def __repr__(self):
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")


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
