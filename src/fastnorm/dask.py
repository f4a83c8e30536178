"""Dask arrays: exact statistics chunk by chunk, and eval-mode layers applied block by block.

Needs dask (``pip install fastnorm[dask]``); the rest of fastnorm never imports it.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from . import functional as F
from . import layers as L
from .statistics import Moments

__all__ = ["moments", "apply"]


_STATS = np.dtype([("mean", np.float64), ("var", np.float64)])


def _flatten(parts):
    """The partials of a reduction step in block order (dask nests them one list per reduced axis)."""
    return [q for p in parts for q in _flatten(p)] if isinstance(parts, list) else [parts]


def _tree_merge(parts):
    """Pairwise merges, level by level: a tree of depth log2(len(parts)) in a fixed order."""
    while len(parts) > 1:
        parts = [parts[k] if k + 1 == len(parts) else parts[k] + parts[k + 1] for k in range(0, len(parts), 2)]
    return parts[0]


def moments(array, axes: Union[int, Sequence[int]], keepdims: bool = False, *, split_every: int = 8):
    """Mean and biased variance of a dask array over ``axes``, exact: each chunk's (count, mean, M2) by
    fastnorm's kernels, merged with Chan's formula in a tree of ``split_every`` partials per task
    (``dask.array.reduction``).

    Parameters
    ----------
    array : dask.array.Array
        Any real dtype; computed in float64 statistics.
    axes : int or sequence of int
        The axes to reduce.
    keepdims : bool
        Keep the reduced axes as size 1.
    split_every : int
        Partials merged per task (at least 2).

    Returns
    -------
    mean, variance : dask.array.Array
        float64, of the kept shape (with the reduced axes kept as 1 with ``keepdims``).  The merges follow
        the block order, so the result does not depend on the scheduler.

    Raises
    ------
    TypeError, ValueError
        ``split_every`` not an integer of at least 2; ``axes`` out of range or repeated.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastnorm.dask
    >>> x = da.from_array(np.arange(12.0).reshape(6, 2), chunks=(2, 2))
    >>> mean, var = fastnorm.dask.moments(x, axes=0)
    >>> mean.compute().tolist(), var.compute().tolist()
    ([5.0, 6.0], [11.666666666666666, 11.666666666666666])
    """
    import dask.array as da

    from ._threads import check_count

    if check_count(split_every, "split_every") < 2:
        raise ValueError(f"split_every: expected at least 2 partials per merge, got {split_every}")
    axes = F._normalize_axes(axes, array.ndim)

    def chunk(x, axis, keepdims, computing_meta=False):
        if computing_meta:  # dask asks what a chunk's result looks like: the partials are no arrays
            return np.empty((0,) * x.ndim, _STATS)
        return Moments.of(x, axis, keepdims=True)

    def combine(parts, axis, keepdims):
        return _tree_merge(_flatten(parts))

    def aggregate(parts, axis, keepdims):
        total = combine(parts, axis, keepdims)
        stats = np.empty(total.shape, _STATS)
        stats["mean"], stats["var"] = total.mean, total.var()
        return stats if keepdims else stats.squeeze(axis)

    stats = da.reduction(array, chunk, aggregate, axis=axes, keepdims=keepdims, combine=combine,
                         concatenate=False, split_every=split_every, dtype=_STATS,
                         meta=np.empty((0,) * (array.ndim if keepdims else array.ndim - len(axes)), _STATS))
    return stats["mean"], stats["var"]


def _whole_axes(layer, ndim):
    """Axes an eval-mode layer needs in one chunk (its statistics or parameters span them)."""
    if isinstance(layer, (L.LayerNorm, L.RMSNorm)):
        return tuple(range(ndim - len(layer.normalized_shape), ndim))
    if isinstance(layer, L.GroupNorm):
        return tuple(range(1, ndim))
    if isinstance(layer, L._InstanceNorm):
        return tuple(range(1 if ndim == layer._input_ndims[1] else 0, ndim))
    if isinstance(layer, L._BatchNorm):
        return (layer.channel_axis % ndim,)
    raise TypeError(f"layer: expected a fastnorm layer, got {type(layer).__name__}")


def apply(layer, array):
    """``layer(array)`` block by block for a dask array, in evaluation mode (``layer.eval()`` first for
    BatchNorm and InstanceNorm with running statistics).  The axes a block must hold whole (the channel
    axis for BatchNorm; the normalized axes of LayerNorm, RMSNorm, GroupNorm and InstanceNorm) are
    rechunked to one chunk; the others keep their chunks.
    """
    if isinstance(layer, L._BatchNorm) and (layer.training or layer.running_mean is None):
        raise ValueError("layer: expected an eval-mode BatchNorm with running statistics (call layer.eval()): "
                         "the batch statistics of a block are not those of the array")
    if isinstance(layer, L._InstanceNorm) and layer.training and layer.track_running_stats:
        raise ValueError("layer: expected eval mode (call layer.eval()): in training mode every block would "
                         "update the running statistics")
    whole = _whole_axes(layer, array.ndim)
    array = array.rechunk({a: -1 for a in whole})

    def block(x):
        with L.no_grad():
            return layer(x)

    return array.map_blocks(block, dtype=array.dtype, meta=np.empty((0,) * array.ndim, array.dtype))
