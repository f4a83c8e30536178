"""The forwards of the rows family of ``fastnorm.functional``: layer_norm and rms_norm.

Statistics per row of a contiguous ``[R, D]`` view (``_kernels.forward_rows``), the same four steps as
``_forward`` (validate, plan, kernel, finish); ``_rows_norm`` also takes a layer's ``commit``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels, _masked
from ._epilogue import _normalize_then_activate
from ._layer_docs import _filled, _with_mask_doc
from ._options import RowsForward
from ._over_axes import _rows_norm_over_axes
from ._plan import _committing, _contiguous, _empty_call, _returned
from ._threads import threads_for
from ._validation import (FloatArray, Shape, Stats, _as_input, _c_aligned, _check_activation, _check_eps,
                          _check_normalized_shape, _check_out, _check_residual, _compute_dtype, _elementwise_vector,
                          _rms_eps)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11

__all__ = ["layer_norm", "rms_norm"]

# ---------------------------------------------------------------------------------------------------------
# LayerNorm, RMSNorm: statistics per row of a contiguous view
# ---------------------------------------------------------------------------------------------------------


def _rows_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike],
               bias: Optional[ArrayLike], eps: Optional[float], out: Optional[FloatArray], rms: bool,
               return_stats: bool,
               commit: Optional[_kernels.Commit] = None,
               axes: Optional[Shape] = None, residual: Optional[FloatArray] = None,
               h: Optional[FloatArray] = None, act: int = 0,
               copies: Optional[Tuple[Tuple[FloatArray, FloatArray], ...]] = None
               ) -> Tuple[FloatArray, Optional[Tuple[Stats, Stats]]]:
    """LayerNorm or RMSNorm: ``(y, (mean, rstd))`` of the input's leading shape (the kept axes' with
    ``axes``) with ``return_stats``, else ``(y, None)``; the kernel call also applies a layer's ``commit``
    and ``copies`` (see _committing).  With ``residual`` and ``h`` (see _rows_norm_residual: checked,
    contiguous, of the input's shape and dtype), the rows normalized are those of ``input + residual``,
    written to ``h``.  ``act``: the activation's code (see _check_activation)."""
    if axes is not None:
        return _rows_norm_over_axes(_rows_norm, *_as_input(input, "input", half=True), normalized_shape, axes, weight,
                                    bias, eps, out, rms, return_stats, commit, act, copies)
    x, dtype = _as_input(input, "input", half=True)  # half precision: the kernel reads it
    shape = _check_normalized_shape(normalized_shape, x)
    w = _elementwise_vector(weight, "weight", shape, x)
    b = _elementwise_vector(bias, "bias", shape, x)
    if rms:
        eps = _rms_eps(eps, x.dtype)
    eps = _check_eps(eps)
    if out is not None:
        _check_out(out, x.shape, dtype)
    lead = x.shape[:x.ndim - len(shape)]
    if x.size == 0:
        y, empty = _empty_call(x, out, dtype, lead, rms, commit)
        return y, empty if return_stats else None
    D = math.prod(shape)
    if w is None and b is not None:
        w = np.ones(D, _compute_dtype(x.dtype))
    buf = _contiguous(x)
    result, commit = _committing(commit, out, buf, 0, False, None, lead, rms, copies=copies)
    stats = _kernels.forward_rows(buf, result, 1, x.size // D, D, w, b, eps, threads_for(x.size, D), per_element=True,
                                  rms=rms, stats=return_stats, commit=commit, residual=residual, h=h, act=act)
    y = _returned(result, out, 0, False, dtype)
    return y, None if not return_stats or stats is None else (stats[0].reshape(lead), stats[2].reshape(lead))


def _rows_norm_residual(input: ArrayLike, residual: ArrayLike, residual_out: Optional[FloatArray],
                        normalized_shape: Optional[Shape], weight: Optional[ArrayLike], bias: Optional[ArrayLike],
                        eps: Optional[float], out: Optional[FloatArray], rms: bool, return_stats: bool,
                        commit: Optional[_kernels.Commit] = None, axes: Optional[Shape] = None,
                        mask: Optional[ArrayLike] = None,
                        act: int = 0) -> Tuple[FloatArray, FloatArray, Optional[Tuple[Stats, ...]]]:
    """``(y, h, stats)`` of LayerNorm or RMSNorm of ``h = input + residual`` (the pre-norm transformer
    block), h written to ``residual_out`` when given.  Where the rows allow (trailing normalized axes, a
    residual of the input's shape and dtype, outputs that do not partly overlap the inputs) one
    kernel pass reads input and residual and writes h and y; otherwise h is added first, then normalized,
    with the same result."""
    masked = _masked.is_masked(input, mask)
    x, dtype = _as_input(np.ma.getdata(input) if isinstance(input, np.ma.MaskedArray) else input, "input",
                         half=True)
    r = _check_residual(residual, x.shape, dtype)
    if out is not None:  # here as well as in _rows_norm: the overlap tests below need arrays
        _check_out(out, x.shape, dtype)
    if residual_out is not None:
        _check_out(residual_out, x.shape, dtype, "residual_out")
        if out is not None and np.may_share_memory(out, residual_out):
            raise ValueError("out, residual_out: expected two arrays that do not overlap (y and h differ)")
    if (axes is None and not masked and x.dtype == dtype and r.shape == x.shape and x.size
            and all(_written_whole(a, x, r) for a in (out, residual_out))):
        h = residual_out if residual_out is not None and _kernels.is_c_contiguous(residual_out) and \
            residual_out.dtype == dtype and residual_out.flags.aligned else _kernels.empty(x.shape, dtype)
        buf = _c_aligned(r, dtype)
        y, stats = _rows_norm(x, normalized_shape, weight, bias, eps, out, rms, return_stats, commit, None, buf, h,
                              act, None if residual_out is None or h is residual_out else ((residual_out, h),))
        h = h if residual_out is None else residual_out
    else:
        # The sum first, into a new array, so that a call that fails writes nothing; then h normalized, and
        # written to residual_out by the call that writes y.  h of a numpy.ma input carries its mask into
        # the normalization; h returned is the data.
        h = np.add(input, r, dtype=dtype)
        h_data = np.ma.getdata(h)
        copies = () if residual_out is None else ((residual_out, h_data),)
        if masked:
            y, mean, rstd = _normalize_then_activate(
                lambda v: _masked.rows_norm(v, normalized_shape, weight, bias, eps, rms, mask), h, out, act, None,
                copies, commit, rms)
            stats = (mean, rstd) if return_stats else None
        else:
            y, stats = _rows_norm(h, normalized_shape, weight, bias, eps, out, rms, return_stats, commit, axes,
                                  act=act, copies=copies or None)
        h = h_data if residual_out is None else residual_out
    return y, h, stats


def _rows_call(input: ArrayLike, residual: Optional[ArrayLike], residual_out: Optional[FloatArray],
               normalized_shape: Optional[Shape], weight: Optional[ArrayLike], bias: Optional[ArrayLike],
               eps: Optional[float], out: Optional[FloatArray], rms: bool, return_stats: bool,
               axes: Optional[Shape], mask: Optional[ArrayLike], activation: Optional[str],
               commit: Optional[_kernels.Commit] = None) -> Union[FloatArray, Tuple[FloatArray, ...]]:
    """What layer_norm and rms_norm (``rms``, without ``bias``) return: y, or (y, h) with ``residual``;
    then, with ``return_stats``, the statistics: (mean, rstd), or rstd for rms_norm.  The call also applies
    a layer's ``commit``."""
    act = _check_activation(activation)
    stats: Optional[Tuple[Stats, ...]]
    if residual is not None or residual_out is not None:
        if residual is None:
            raise ValueError("residual_out: given without residual")
        if mask is not None and axes is not None:
            raise ValueError("mask: not supported together with axes")
        y, h, stats = _rows_norm_residual(input, residual, residual_out, normalized_shape, weight, bias, eps, out, rms,
                                          return_stats, commit, axes, mask, act)
        result: Tuple[FloatArray, ...] = (y, h)
    elif _masked.is_masked(input, mask):
        if axes is not None:
            raise ValueError("mask: not supported together with axes")
        y, mean, rstd = _normalize_then_activate(
            lambda v: _masked.rows_norm(v, normalized_shape, weight, bias, eps, rms, mask), input, out, act, None,
            commit=commit, rms=rms)
        result = (y,)
        stats = (mean, rstd) if return_stats else None
    else:
        y, stats = _rows_norm(input, normalized_shape, weight, bias, eps, out, rms, return_stats, commit, axes, act=act)
        result = (y,)
    if stats is not None:
        result += stats[1:] if rms else stats
    return result if len(result) > 1 else result[0]


def _written_whole(a: Optional[FloatArray], x: FloatArray, r: FloatArray) -> bool:
    """Whether the fused kernel may write ``a`` (an out= or residual_out=, or None) as it reads x and r:
    memory apart from theirs, or exactly theirs (an update in place)."""
    if a is None:
        return True
    start = a.__array_interface__["data"][0]
    return all(not np.may_share_memory(a, b) or (start == b.__array_interface__["data"][0] and a.strides == b.strides)
               for b in (x, r))


# The docstrings' input entries, their residual entry and the first two of what they return.
_INPUT = """input : array_like, shape ``(..., *normalized_shape)``
        float16, bfloat16, float32 or float64 (the half types computed in float32).
    normalized_shape : int or sequence of int, or None"""

_RESIDUAL = """residual : array_like, keyword-only, optional
        Added to the input before the normalization, in the input's dtype (which it must have) and
        broadcast to its shape: the call normalizes ``h = input + residual`` and returns h too, as ONNX
        Runtime's ``SkipLayerNormalization`` and ``SkipSimplifiedLayerNormalization`` (the pre-norm
        transformer block).  Where the rows are the trailing axes, one pass reads input and residual and
        writes h and y (float16 and bfloat16: h rounded to the input's dtype, as NumPy's addition, and
        normalized as rounded).
    residual_out : ndarray, keyword-only, optional
        Where to write h (the input's shape and dtype); may be the input or the residual itself, so that
        a loop updates its residual stream in place.  Not the same memory as ``out``."""

_RETURNS = """Returns
    -------
    y : ndarray
        Of the input's shape and dtype (``out`` when given).
    h : ndarray
        With ``residual`` only (before the statistics): ``input + residual``, of the input's shape and
        dtype (``residual_out`` when given).  Its gradient is the gradient of both input and residual."""


@overload
def layer_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, residual: None = ...,
               return_stats: Literal[False] = ..., **options: Unpack[RowsForward]) -> FloatArray: ...
@overload
def layer_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, residual: None = ..., return_stats: Literal[True],
               **options: Unpack[RowsForward]) -> Tuple[FloatArray, Stats, Stats]: ...
@overload
def layer_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, residual: None = ..., return_stats: bool,
               **options: Unpack[RowsForward]) -> Union[FloatArray, Tuple[FloatArray, Stats, Stats]]: ...
@overload
def layer_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, residual: ArrayLike,
               residual_out: Optional[FloatArray] = ..., return_stats: bool = ...,
               **options: Unpack[RowsForward]) -> Tuple[FloatArray, ...]: ...
@_with_mask_doc
@_filled(residual=_RESIDUAL, input=_INPUT, returns=_RETURNS)
def layer_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, axes: Optional[Shape] = None,
               activation: Optional[str] = None, out: Optional[FloatArray] = None,
               mask: Optional[ArrayLike] = None, residual: Optional[ArrayLike] = None,
               residual_out: Optional[FloatArray] = None,
               return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, ...]]:
    r"""Layer normalization over the trailing ``normalized_shape`` dimensions, as
    ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    {input}
        The trailing dimensions to normalize over (one "row" is their product of values).  With ``axes``:
        None or the sizes of those axes.
    weight, bias : array_like of shape normalized_shape, optional
        Elementwise affine (:math:`\gamma` and :math:`\beta`), floating point.  With ``axes``: of the
        shape of those axes, ``tuple(input.shape[a] for a in sorted(axes))``.
    eps : float
        Added to the variance before the square root, in the input's units squared.
    axes : int or sequence of int, keyword-only, optional
        Normalize over these axes instead of the trailing ones: any set (Keras'
        ``LayerNormalization(axis=[1, 3])``, Flax's ``reduction_axes``), a row being the values at one
        index of the other axes.  The kernels read the input as rows through a view where its memory
        holds the other axes before the normalized ones, each group in its order after merging adjacent
        axes (the trailing axes of C-ordered data; the channel axis 1 of an NCHW view of NHWC memory);
        otherwise (e.g. axes (1, 3) of C-ordered data, or (0,)) through a copy with the normalized axes
        moved last.
    {activation}
    {out}
    {mask}
    {residual}
    return_stats : bool, keyword-only
        Also return the statistics of each row: what :func:`layer_norm_backward` needs.

    {returns}
    mean, rstd : ndarray of float64, of the input's leading shape ``input.shape[:-len(normalized_shape)]``
        With ``return_stats`` only: each row's mean and :math:`1 / \sqrt{\mathrm{Var}[x] + \epsilon}`;
        with ``axes``, of the shape of the other axes.

    Raises
    ------
    TypeError
        Input, ``weight``, ``bias`` or ``out`` that is not floating point; ``residual`` or ``residual_out``
        not of the input's dtype; ``normalized_shape`` or ``axes`` not integers; ``activation`` not a string.
    ValueError
        An unknown ``activation``.
        A ``mask`` that does not broadcast to the input, or given with ``axes``.
        ``normalized_shape`` empty, negative or not the input's trailing dimensions (with ``axes``: not
        their sizes); ``axes`` empty, repeated or out of range; ``weight`` or ``bias`` of another shape;
        ``out`` or ``residual_out`` of the wrong shape or read-only, or overlapping each other; a
        ``residual`` that does not broadcast to the input (or ``residual_out`` without it); a negative or
        non-finite ``eps``.

    Notes
    -----
    Over each row of ``D = prod(normalized_shape)`` values, with the biased variance:

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma + \beta

    as defined by Ba, Kiros and Hinton (2016) and by PyTorch's ``layer_norm`` (ONNX LayerNormalization).

    References
    ----------
    Ba, J. L., Kiros, J. R. and Hinton, G. E. (2016). Layer normalization. https://arxiv.org/abs/1607.06450

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.functional.layer_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.layer_norm(np.array([[1., 2., 3.]]), 3).round(4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    >>> x = np.arange(8.).reshape(2, 2, 2)
    >>> y, mean, rstd = fastnorm.layer_norm(x, None, axes=(0, 2), return_stats=True)  # a row per x[:, j, :]
    >>> mean.tolist()  # the means of 0, 1, 4, 5 and of 2, 3, 6, 7
    [2.5, 4.5]
    >>> y, mean, rstd = fastnorm.layer_norm(np.array([[1., 2., 3.]]), 3, eps=0.0, return_stats=True)
    >>> mean.tolist(), (rstd ** -2).round(4).tolist()  # the mean and the variance 2/3 of the row
    ([2.0], [0.6667])
    >>> y, h = fastnorm.layer_norm(np.array([[1., 2., 3.]]), 3, residual=np.array([[1., 0., 1.]]))
    >>> h.tolist(), y.round(4).tolist()  # h = x + residual, and y the normalized h
    ([[2.0, 2.0, 4.0]], [[-0.7071, -0.7071, 1.4142]])
    >>> fastnorm.layer_norm(np.array([[1., 2., 3.]]), 3, activation="relu").round(4).tolist()
    [[0.0, 0.0, 1.2247]]
    """
    return _rows_call(input, residual, residual_out, normalized_shape, weight, bias, eps, out, False, return_stats,
                      axes, mask, activation)


@overload
def rms_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, residual: None = ..., return_stats: Literal[False] = ...,
             **options: Unpack[RowsForward]) -> FloatArray: ...
@overload
def rms_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, residual: None = ..., return_stats: Literal[True],
             **options: Unpack[RowsForward]) -> Tuple[FloatArray, Stats]: ...
@overload
def rms_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, residual: None = ..., return_stats: bool,
             **options: Unpack[RowsForward]) -> Union[FloatArray, Tuple[FloatArray, Stats]]: ...
@overload
def rms_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, residual: ArrayLike, residual_out: Optional[FloatArray] = ...,
             return_stats: bool = ..., **options: Unpack[RowsForward]) -> Tuple[FloatArray, ...]: ...
@_with_mask_doc
@_filled(residual=_RESIDUAL, input=_INPUT, returns=_RETURNS)
def rms_norm(input: ArrayLike, normalized_shape: Optional[Shape], weight: Optional[ArrayLike] = None,
             eps: Optional[float] = None, *, axes: Optional[Shape] = None, activation: Optional[str] = None,
             out: Optional[FloatArray] = None,
             mask: Optional[ArrayLike] = None, residual: Optional[ArrayLike] = None,
             residual_out: Optional[FloatArray] = None,
             return_stats: bool = False) -> Union[FloatArray, Tuple[FloatArray, ...]]:
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dimensions, as
    ``torch.nn.functional.rms_norm``.

    Parameters
    ----------
    {input}
        The trailing dimensions to normalize over.  With ``axes``: None or the sizes of those axes.
    weight : array_like of shape normalized_shape, optional
        Elementwise scale :math:`\gamma`, floating point.  With ``axes``: of the shape of those axes.
    eps : float or None
        Added to the mean square before the square root, in the input's units squared.  None (the
        default) is the machine epsilon of the dtype the input is computed in (float32's for float16
        input), as in PyTorch.
    axes : int or sequence of int, keyword-only, optional
        Normalize over these axes instead of the trailing ones, as :func:`layer_norm`'s ``axes`` (what
        is read through a view and what is copied is said there).
    {activation}
    {out}
    {mask}
    {residual}
    return_stats : bool, keyword-only
        Also return each row's inverse root mean square: what :func:`rms_norm_backward` needs.

    {returns}
    rstd : ndarray of float64, of the input's leading shape
        With ``return_stats`` only: :math:`1 / \sqrt{\mathrm{E}[x^2] + \epsilon}` per row; with ``axes``,
        of the shape of the other axes.

    Raises
    ------
    TypeError
        Input, ``weight`` or ``out`` that is not floating point; ``residual`` or ``residual_out`` not of the
        input's dtype; ``normalized_shape`` or ``axes`` not integers; ``activation`` not a string.
    ValueError
        An unknown ``activation``.
        A ``mask`` that does not broadcast to the input, or given with ``axes``.
        ``normalized_shape`` empty, negative or not the input's trailing dimensions (with ``axes``: not
        their sizes); ``axes`` empty, repeated or out of range; ``weight`` of another shape; ``out`` or
        ``residual_out`` of the wrong shape or read-only, or overlapping each other; a ``residual`` that
        does not broadcast to the input (or ``residual_out`` without it); a negative or non-finite ``eps``.

    Notes
    -----
    Over each row, without centering:

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \, \gamma

    as defined by Zhang and Sennrich (2019) and by PyTorch's ``rms_norm``.

    References
    ----------
    Zhang, B. and Sennrich, R. (2019). Root mean square layer normalization. NeurIPS.
    https://arxiv.org/abs/1910.07467

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.functional.rms_norm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> fastnorm.rms_norm(np.array([[3., 4.]]), 2, eps=0.0).round(4).tolist()
    [[0.8485, 1.1314]]
    >>> y, rstd = fastnorm.rms_norm(np.array([[3., 4.]]), 2, eps=0.0, return_stats=True)
    >>> (1 / rstd ** 2).tolist()  # the mean square (9 + 16) / 2
    [12.5]
    >>> fastnorm.rms_norm(np.array([[3., 1.], [4., 1.]]), None, eps=0.0, axes=0).round(4).tolist()  # columns
    [[0.8485, 1.0], [1.1314, 1.0]]
    >>> stream = np.array([[2., 3.]])
    >>> y, h = fastnorm.rms_norm(np.array([[1., 1.]]), 2, eps=0.0, residual=stream, residual_out=stream)
    >>> stream.tolist(), y.round(4).tolist()  # the residual stream updated in place: 3, 4 and their rms
    ([[3.0, 4.0]], [[0.8485, 1.1314]])
    >>> fastnorm.rms_norm(np.array([[3., 4.]]), 2, eps=0.0, activation="silu").round(4).tolist()
    [[0.5942, 0.8554]]
    """
    return _rows_call(input, residual, residual_out, normalized_shape, weight, None, eps, out, True, return_stats,
                      axes, mask, activation)
