"""Dask arrays: exact statistics chunk by chunk, and eval-mode layers applied block by block.

Needs dask (``pip install fastnorm[dask]``); the rest of fastnorm never imports it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Sequence, SupportsIndex, Tuple, Union

import numpy as np
from numpy.typing import NDArray

from . import layers as L
from ._validation import _normalize_axes
from .statistics import Moments

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["moments", "apply"]

_STATS = np.dtype([("mean", np.float64), ("var", np.float64)])


def _flatten(parts: Any) -> List[Moments]:
    """The partials of a reduction step in block order (dask nests them one list per reduced axis)."""
    return [q for p in parts for q in _flatten(p)] if isinstance(parts, list) else [parts]


def _tree_merge(parts: List[Moments]) -> Moments:
    """Pairwise merges, level by level: a tree of depth log2(len(parts)) in a fixed order."""
    while len(parts) > 1:
        parts = [parts[k] if k + 1 == len(parts) else parts[k] + parts[k + 1] for k in range(0, len(parts), 2)]
    return parts[0]


def moments(array: da.Array, axes: Union[SupportsIndex, Sequence[SupportsIndex]], keepdims: bool = False, *,
            split_every: int = 8) -> Tuple[da.Array, da.Array]:
    r"""Mean and biased variance of a dask array over ``axes``, exact: each chunk's (count, mean, M2) by
    fastnorm's kernels, merged with Chan's formula in a tree of ``split_every`` partials per task
    (``dask.array.reduction``).

    Parameters
    ----------
    array : dask.array.Array
        float16, bfloat16, float32 or float64 values (the chunks go through :meth:`fastnorm.Moments.of`).
    axes : int or sequence of int
        The axes to reduce.
    keepdims : bool
        Keep the reduced axes as size 1.
    split_every : int, keyword-only
        Partials merged per task (at least 2).

    Returns
    -------
    mean, variance : dask.array.Array
        float64, of the kept shape (with the reduced axes kept as 1 with ``keepdims``); the variance in
        the array's units squared.  The merges follow the block order, so the result does not depend on
        the scheduler.

    Raises
    ------
    TypeError
        ``split_every`` or ``axes`` not integers; at compute time, chunks that are not floating point.
    ValueError
        ``split_every`` below 2; ``axes`` out of range or repeated.

    Notes
    -----
    The statistics of :func:`fastnorm.moments` (``tf.nn.moments``), the chunks' partials merged as in
    :class:`fastnorm.Moments` (Chan, Golub and LeVeque).

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastnorm.dask
    >>> x = da.from_array(np.arange(12.0).reshape(6, 2), chunks=(2, 2))
    >>> mean, var = fastnorm.dask.moments(x, axes=0)
    >>> mean.compute().tolist(), var.compute().tolist()
    ([5.0, 6.0], [11.666666666666666, 11.666666666666666])
    """
    import dask.array as da

    from ._validation import check_count

    if check_count(split_every, "split_every") < 2:
        raise ValueError(f"split_every: expected at least 2 partials per merge, got {split_every}")
    reduced = _normalize_axes(axes, array.ndim)

    def chunk(x: NDArray[Any], axis: Tuple[int, ...], keepdims: bool,
              computing_meta: bool = False) -> Union[Moments, NDArray[Any]]:
        if computing_meta:  # dask asks what a chunk's result looks like: the partials are no arrays
            return np.empty((0,) * x.ndim, _STATS)
        return Moments.of(x, axis, keepdims=True)

    def combine(parts: Any, axis: Tuple[int, ...], keepdims: bool) -> Moments:
        return _tree_merge(_flatten(parts))

    def aggregate(parts: Any, axis: Tuple[int, ...], keepdims: bool) -> NDArray[Any]:
        total = combine(parts, axis, keepdims)
        stats = np.empty(total.shape, _STATS)
        stats["mean"], stats["var"] = total.mean, total.var()
        return stats if keepdims else stats.squeeze(axis)

    stats = da.reduction(array, chunk, aggregate, axis=reduced, keepdims=keepdims, combine=combine,
                         concatenate=False, split_every=split_every, dtype=_STATS,
                         meta=np.empty((0,) * (array.ndim if keepdims else array.ndim - len(reduced)), _STATS))
    return stats["mean"], stats["var"]


def _whole_axes(layer: L._Layer, ndim: int) -> Tuple[int, ...]:
    """Axes an eval-mode layer needs in one chunk (its statistics or parameters span them)."""
    if isinstance(layer, (L.LayerNorm, L.RMSNorm)):
        return tuple(range(ndim - len(layer.normalized_shape), ndim))
    if isinstance(layer, L.GroupNorm):
        return tuple(range(1, ndim))
    if isinstance(layer, L._InstanceNorm):
        return tuple(range(1 if ndim == layer._input_ndims[1] else 0, ndim))
    if isinstance(layer, L._BatchNorm):
        axes = layer.channel_axis if isinstance(layer.channel_axis, tuple) else (layer.channel_axis,)
        return tuple(sorted(a % ndim for a in axes))
    raise TypeError(f"layer: expected a fastnorm layer, got {type(layer).__name__}")


def apply(layer: L._Layer, array: da.Array) -> da.Array:
    """``layer(array)`` block by block for a dask array, in evaluation mode.

    The axes a block must hold whole (the channel axis for BatchNorm; the normalized axes of LayerNorm,
    RMSNorm, GroupNorm and InstanceNorm) are rechunked to one chunk; the others keep their chunks.  No
    block keeps anything for a backward pass (the blocks run under :func:`fastnorm.no_grad`).

    Parameters
    ----------
    layer : fastnorm layer
        BatchNorm and InstanceNorm with running statistics in evaluation mode (``layer.eval()``);
        LayerNorm, RMSNorm, GroupNorm and InstanceNorm without running statistics in either mode.
    array : dask.array.Array
        An input of the layer (the shapes and dtypes ``layer(x)`` accepts).

    Returns
    -------
    dask.array.Array
        ``layer(array)``, lazily: of the array's shape and dtype.

    Raises
    ------
    TypeError
        ``layer`` is not a fastnorm normalization layer.
    ValueError
        A BatchNorm in training mode or without running statistics; an InstanceNorm in training mode
        with running statistics (each block would update them).  The layer's own input errors come at
        compute time.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastnorm, fastnorm.dask
    >>> x = da.from_array(np.arange(24.0).reshape(4, 6), chunks=(2, 3))
    >>> y = fastnorm.dask.apply(fastnorm.LayerNorm(6), x)
    >>> y.chunks, bool(np.allclose(y.compute(), fastnorm.LayerNorm(6)(x.compute())))
    (((2, 2), (6,)), True)
    """
    if isinstance(layer, L._BatchNorm) and (layer.training or layer.running_mean is None):
        raise ValueError("layer: expected an eval-mode BatchNorm with running statistics (call layer.eval()): "
                         f"the batch statistics of a block are not those of the array{L._lazy_hint(layer)}")
    if isinstance(layer, L._InstanceNorm) and layer.training and layer.track_running_stats:
        raise ValueError("layer: expected eval mode (call layer.eval()): in training mode every block would "
                         "update the running statistics")
    whole = _whole_axes(layer, array.ndim)
    array = array.rechunk({a: -1 for a in whole})

    def block(x: NDArray[Any]) -> NDArray[Any]:
        with L.no_grad():
            return layer(x)

    return array.map_blocks(block, dtype=array.dtype, meta=np.empty((0,) * array.ndim, array.dtype))
