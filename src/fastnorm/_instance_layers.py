"""InstanceNorm1d/2d/3d: each sample's channels on their own, with optional running statistics."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import functional as F
from ._batch_norm_layers import _NormBase
from ._layer import STATS
from ._layer_docs import _ACTIVATION, _KEEPS, _fill, _raises, _references
from ._validation import _array, _check_activation


class _InstanceNorm(_NormBase):
    channel_axis = 1

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = False,
                 track_running_stats: bool = False, *, bias: bool = True, dtype: DTypeLike = np.float32,
                 channel_axis: int = 1, activation: Optional[str] = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, bias, activation)
        if isinstance(channel_axis, bool) or channel_axis not in (1, -1):
            raise ValueError(f"channel_axis: expected 1 (channels first) or -1 (channels last), got {channel_axis!r}")
        self.channel_axis = int(channel_axis)

    def _config(self) -> Dict[str, Any]:
        return dict(super()._config(), channel_axis=self.channel_axis)

    def _forward(self, x: Any, out: Optional[NDArray[Any]], add: Optional[ArrayLike],
                 mask: Optional[ArrayLike]) -> NDArray[Any]:
        x = _array(x, "input")
        self._check_input(x)
        act = _check_activation(self.activation)
        unbatched = x.ndim == self._input_ndims[0]
        given_out = out
        if unbatched:
            x = x[np.newaxis]
            out = None if out is None else out[np.newaxis]  # add broadcasts to the batch of one as it is
        if x.shape[self.channel_axis] != self.num_features:
            if self.affine or self.track_running_stats:
                raise ValueError(f"input: expected {self.num_features} channels on axis {self.channel_axis}, got "
                                 f"input of shape {x.shape}")
            warnings.warn(f"input has {x.shape[self.channel_axis]} channels, not num_features={self.num_features}; "
                          "normalizing anyway", stacklevel=2)
        use_input_stats = self.training or not self.track_running_stats
        momentum = self.momentum if self.momentum is not None else 0.0
        commit = self._commit({}, (self._input_to_keep(x, out), STATS, use_input_stats, unbatched), add, mask)
        if mask is not None:
            masked = F._instance_norm_masked(x, self.running_mean, self.running_var, self.weight, self.bias,
                                             use_input_stats, momentum, self.eps, self.channel_axis, out, mask, act,
                                             add, commit)[0]
            return given_out if given_out is not None else (masked[0] if unbatched else masked)
        y = F._instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_input_stats,
                             momentum, self.eps, out, False, commit, self.channel_axis, act, add)
        assert not isinstance(y, tuple)  # return_stats=False
        return given_out if given_out is not None else (y[0] if unbatched else y)

    _forward_parts = (  # of forward's docstring: see _AddLayer
        "Normalize each (sample, channel) with its own statistics, or with the running statistics in\n"
        "        evaluation mode when they are tracked.\n"
        "\n"
        f"        {_KEEPS}",
        "float16, bfloat16, float32 or float64, batched (N, C, \\*) or unbatched (C, \\*) (see Shape); any memory\n"
        "            order.  Without ``affine`` and ``track_running_stats`` another number of channels than\n"
        "            ``num_features`` is normalized with a warning, as PyTorch.",
        _raises("``x`` of another number of dimensions, or of channels with ``affine`` or\n"
                "            ``track_running_stats``; a single spatial value when normalizing with the instance's own\n"
                "            statistics; ``out`` of another shape, or read-only; a ``mask`` that does not broadcast\n"
                "            to ``x``, or with ``channel_axis=-1``.", masked=True),
        ">>> import numpy as np, fastnorm\n"
        "        >>> fastnorm.InstanceNorm1d(2).forward(np.array([[1., 3.], [2., 6.]], np.float32))"
        ".round(4)  # (C, L)\n"
        "        array([[-1.,  1.],\n"
        "               [-1.,  1.]], dtype=float32)")

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> Tuple[Any, ...]:
        x, mean, rstd, use_input_stats, unbatched = saved
        g = _array(grad_output, "grad_output")
        if unbatched:
            g = g[np.newaxis]
        grads = F.instance_norm_backward(g, x, mean, rstd, self.weight, use_input_stats,
                                         channel_axis=self.channel_axis, eps=self.eps, bias=self.bias,
                                         **self._epilogue())
        # grad_input and grad_add without the batch axis an unbatched input was given
        return tuple(a[0] if unbatched and i in (0, 3) else a for i, a in enumerate(grads))


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
    """ + _ACTIVATION + r"""
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1: channels-last input, its channels on the last axis
        (unbatched input too).  Channels-last memory is read without a copy either way.

    Shape
    -----
    input : {shape} or {unbatched}
        float16, bfloat16, float32 or float64.
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
