"""GroupNorm: each sample's channels in groups."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import functional as F
from ._layer import STATS, _AddLayer, _check_dtype
from ._layer_docs import _ACTIVATION, _KEEPS, _modeless, _raises, _references, _reset_doc
from ._validation import _array, _check_activation, _check_eps, check_count


class GroupNorm(_AddLayer):
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
    """ + _ACTIVATION + r"""

    Shape
    -----
    input : (N, C, \*)
        float16, bfloat16, float32 or float64, any number of spatial dimensions (none included).
    output : the input's shape and dtype

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
        Learnable per-channel :math:`\gamma` and :math:`\beta` (None without ``affine``; bias None with
        ``bias=False``).
    """ + _modeless("GroupNorm") + r"""

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
                 bias: bool = True, dtype: DTypeLike = np.float32, channel_axis: int = 1,
                 activation: Optional[str] = None) -> None:
        self.num_groups = check_count(num_groups, "num_groups")
        self._set_activation(activation)
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
                "channel_axis": self.channel_axis, "activation": self.activation}

    @_reset_doc("Weight to 1, bias to 0.", "gn", "GroupNorm(1, 2)", "weight", "5.0")
    def reset_parameters(self) -> None:
        self._reset_affine(self.affine, self.num_channels)

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {"weight": self.weight, "bias": self.bias}

    def _forward(self, x: Any, out: Optional[NDArray[Any]], add: Optional[ArrayLike],
                 mask: Optional[ArrayLike]) -> NDArray[Any]:
        x = _array(x, "input")
        act = _check_activation(self.activation)
        if x.ndim >= 2 and x.shape[self.channel_axis] != self.num_channels:
            raise ValueError(f"input: expected {self.num_channels} channels on axis {self.channel_axis}, "
                             f"got input of shape {x.shape}")
        commit = self._commit({}, (self._input_to_keep(x, out), STATS), add, mask)
        if mask is not None:
            return F._group_norm_masked(x, self.num_groups, self.weight, self.bias, self.eps, self.channel_axis, out,
                                        mask, act, add, commit)[0]
        y = F._group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.channel_axis, out, False, commit,
                          act, add)
        assert not isinstance(y, tuple)  # return_stats=False
        return y

    _forward_parts = (  # of forward's docstring: see _AddLayer
        "Normalize each (sample, group) with its own statistics.\n"
        "\n"
        f"        {_KEEPS}",
        "float16, bfloat16, float32 or float64, of shape (N, C, \\*) (``channel_axis=-1``: (N, \\*, C)); any memory\n"
        "            order.",
        _raises("``x`` with fewer than 2 dimensions or another number of channels; ``out`` of another shape,\n"
                "            or read-only; a ``mask`` that does not broadcast to ``x``.", masked=True),
        ">>> import numpy as np, fastnorm\n"
        "        >>> fastnorm.GroupNorm(1, 2).forward(np.array([[1., 3.]], np.float32)).round(4)\n"
        "        array([[-1.,  1.]], dtype=float32)")

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> Tuple[Any, ...]:
        x, mean, rstd = saved
        return F.group_norm_backward(grad_output, x, self.num_groups, mean, rstd,
                                     self.weight, channel_axis=self.channel_axis, eps=self.eps, bias=self.bias,
                                     **self._epilogue())

    def _torch_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self._has_bias}"
