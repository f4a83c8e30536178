"""The keyword-only arguments that the overloads of ``fastnorm.functional`` take as ``**options``.

A function's overloads split on one or two arguments (``return_stats``, ``residual``, ``add``, the
parameters given) and take the others, which do not change the result's type, from one of these: stated
once here instead of in every overload.  The function itself states them all, with their defaults, in the
signature ``help()`` shows.
"""
from __future__ import annotations

from typing import Optional, SupportsIndex, TypedDict

from numpy.typing import ArrayLike

from ._validation import FloatArray, Shape


class ChannelForward(TypedDict, total=False):
    """batch_norm's, group_norm's and instance_norm's."""
    channel_axis: SupportsIndex
    activation: Optional[str]
    add: Optional[ArrayLike]
    out: Optional[FloatArray]
    mask: Optional[ArrayLike]


class BatchNormForward(ChannelForward, total=False):
    """batch_norm's."""
    bessel: bool
    num_batches_tracked: Optional[int]


class RowsForward(TypedDict, total=False):
    """layer_norm's and rms_norm's."""
    axes: Optional[Shape]
    activation: Optional[str]
    out: Optional[FloatArray]
    mask: Optional[ArrayLike]


class ChannelBackward(TypedDict, total=False):
    """batch_norm_backward's, group_norm_backward's and instance_norm_backward's but ``add``, which their
    overloads split on (three gradients without it, four with it)."""
    channel_axis: SupportsIndex
    eps: Optional[float]
    mask: Optional[ArrayLike]
    activation: Optional[str]
    bias: Optional[ArrayLike]


class RowsBackward(TypedDict, total=False):
    """layer_norm_backward's and rms_norm_backward's (their overloads split on the parameters given)."""
    axes: Optional[Shape]
    eps: Optional[float]
    mask: Optional[ArrayLike]
    activation: Optional[str]
