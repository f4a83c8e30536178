"""Layers that normalize each row of trailing dimensions: LayerNorm and RMSNorm."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _kernels
from . import functional as F
from ._layer import STATS, _check_dtype, _Grads, _Layer, _split_masked
from ._layer_docs import _ACTIVATION, _F, _KEEPS, _LAYER_MASK, _modeless, _references, _reset_doc
from ._validation import _array, _as_input, _check_activation, _check_eps, _check_layer_axes, _normalized_shape


_ROWS_FORWARD = """{summary}

        {keeps}  After a call with ``residual``, that is h, and :meth:`backward` gives the gradient of h,
        which is the gradient of both ``x`` and ``residual`` (of a broadcast ``residual``: that summed over
        the axes it was broadcast along).

        Parameters
        ----------
        x : array_like
            float16, bfloat16, float32 or float64, of shape ``(*, *normalized_shape)``; any memory order.
        residual : array_like, keyword-only, optional
            Added to ``x`` first, of its dtype and broadcast to its shape: the layer normalizes
            ``h = x + residual`` and returns ``(y, h)``, in one pass over memory where the layout allows
            (see :func:`fastnorm.{function}`).
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.
        residual_out : ndarray, keyword-only, optional
            Where to write h (with ``residual``): the input's shape and dtype; may be ``x`` or ``residual``.{mask}

        Returns
        -------
        y : ndarray
            The normalized input (or h), of its shape and dtype (``out`` when given).
        h : ndarray
            With ``residual`` only: ``x + residual`` (``residual_out`` when given).

        Raises
        ------
        TypeError
            ``x`` not floating point; ``out`` of another dtype; a ``mask`` that is not boolean; ``residual`` or
            ``residual_out`` not of ``x``'s dtype.
        ValueError
            ``x`` whose trailing dimensions are not ``normalized_shape``; ``out`` or ``residual_out`` of
            another shape, read-only, or overlapping each other; ``residual`` that does not broadcast to
            ``x``, or ``residual_out`` without it.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> fastnorm.{cls}(2).forward(np.array([[3., 4.]], np.float32)).round(4)
        {example}
        >>> y, h = fastnorm.{cls}(2)(np.array([[1., 2.]], np.float32), residual=np.array([[2., 2.]], np.float32))
        >>> h
        array([[3., 4.]], dtype=float32)
        """


def _rows_forward_doc(summary: str, cls: str, example: str) -> Callable[[_F], _F]:
    """The ``forward`` docstring of LayerNorm and RMSNorm."""
    def document(forward: _F) -> _F:
        forward.__doc__ = _ROWS_FORWARD.format(summary=summary, keeps=_KEEPS, cls=cls, example=example,
                                               function="layer_norm" if cls == "LayerNorm" else "rms_norm",
                                               mask=_LAYER_MASK.replace("``x``", "``x`` (or h)"))
        return forward
    return document


_WITH_RESIDUAL = "residual"  # last of what a forward with a residual keeps for backward


class _RowsLayer(_Layer):
    """What LayerNorm and RMSNorm share: a forward on ``x`` or on ``x + residual``, and its backward."""

    normalized_shape: Tuple[int, ...]
    axes: Optional[Tuple[int, ...]]
    eps: Optional[float]
    weight: Optional[NDArray[Any]]
    _rms = False

    def _bias(self) -> Optional[NDArray[Any]]:
        return None

    def forward(self, x: ArrayLike, *, residual: Optional[ArrayLike] = None, out: Optional[NDArray[Any]] = None,
                residual_out: Optional[NDArray[Any]] = None, mask: Optional[ArrayLike] = None) -> Any:
        x, mask = _split_masked(x, mask)
        act = _check_activation(self.activation)
        if mask is not None:
            return self._forward_masked(x, residual, out, residual_out, mask)
        if residual is None and residual_out is None:
            commit = self._commit({}, (self._input_to_keep(x, out), STATS))
            return F._rows_norm(x, self.normalized_shape, self.weight, self._bias(), self.eps, out, self._rms, False,
                                commit, self.axes, act=act)[0]
        if residual is None:
            raise ValueError("residual_out: given without residual")
        # h is written to an array of the layer's own unless residual_out is given: backward needs it.
        h = residual_out if residual_out is not None else \
            _kernels.empty(np.shape(x), _as_input(x, "input", half=True)[1])
        commit = self._commit({}, (h, STATS, _WITH_RESIDUAL))
        y, h, _ = F._rows_norm_residual(x, residual, h, self.normalized_shape, self.weight, self._bias(), self.eps,
                                        out, self._rms, False, commit, self.axes, act=act)
        return y, h

    def _forward_masked(self, x: ArrayLike, residual: Optional[ArrayLike], out: Optional[NDArray[Any]],
                        residual_out: Optional[NDArray[Any]], mask: ArrayLike) -> Any:
        """A forward given ``mask``: :func:`fastnorm.layer_norm`'s (``rms_norm``'s) masked path, each row's
        statistics over its values where the mask is True."""
        x_ = _array(x, "input")
        if residual is None:
            saved: Tuple[Any, ...] = (self._input_to_keep(x_, out), STATS)
        else:  # h is written to an array of the layer's own unless residual_out is given: backward needs it
            if residual_out is None:
                residual_out = _kernels.empty(x_.shape, _as_input(x_, "input", half=True)[1])
            saved = (residual_out, STATS, _WITH_RESIDUAL)
        return F._rows_call(x_, residual, residual_out, self.normalized_shape, self.weight, self._bias(), self.eps, out,
                            self._rms, False, self.axes, mask, self.activation, self._commit({}, saved, None, mask))

    def __call__(self, x: ArrayLike, *, residual: Optional[ArrayLike] = None, out: Optional[NDArray[Any]] = None,
                 residual_out: Optional[NDArray[Any]] = None, mask: Optional[ArrayLike] = None) -> Any:
        """``layer(x, ...)`` is ``layer.forward(x, ...)``."""
        return self.forward(x, residual=residual, out=out, residual_out=residual_out, mask=mask)

    def backward(self, grad_output: ArrayLike, grad_residual_out: Optional[ArrayLike] = None) -> NDArray[Any]:
        """Gradient of the loss with respect to the last forward's input; after a forward with
        ``residual``, with respect to h, which is the gradient of both ``x`` and ``residual``.

        As :meth:`_Layer.backward`; ``grad_residual_out``, after a forward with ``residual``: the gradient
        of h that reaches it other than through this layer (the residual stream), added to the result.

        Parameters
        ----------
        grad_output : array_like
            The gradient of the loss with respect to the last forward's output y.
        grad_residual_out : array_like, optional
            After a forward with ``residual``: the gradient with respect to h from the rest of the network.

        Returns
        -------
        ndarray
            A new array of the input's shape and dtype.

        Raises
        ------
        RuntimeError
            No forward to differentiate, or its input (h) modified in place since.
        ValueError
            ``grad_output`` or ``grad_residual_out`` of another shape; ``grad_residual_out`` after a forward
            without ``residual``.
        TypeError
            A gradient that is not floating point.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> ln = fastnorm.LayerNorm(2)
        >>> y, h = ln(np.array([[1., 2.]], np.float32), residual=np.array([[0., 2.]], np.float32))
        >>> ln.backward(np.ones((1, 2), np.float32), grad_residual_out=np.ones((1, 2), np.float32))
        array([[1., 1.]], dtype=float32)
        """
        g = None
        if grad_residual_out is not None:  # checked before backward sets the gradients
            if self._saved is None or self._saved[-1] is not _WITH_RESIDUAL:
                raise ValueError("grad_residual_out: the last forward had no residual")
            g = _as_input(grad_residual_out, "grad_residual_out")[0]
            if g.shape != np.shape(self._saved[0]):
                raise ValueError(f"grad_residual_out: expected shape {np.shape(self._saved[0])} (h's), got {g.shape}")
        dx = super().backward(grad_output)
        if g is not None:
            np.add(dx, g, out=dx, casting="unsafe")
        return dx


_ROWS_SHAPE = """
    Shape
    -----
    input : (*, *normalized_shape)
        float16, bfloat16, float32 or float64, any number of leading dimensions.
    output : the input's shape and dtype
"""


class LayerNorm(_RowsLayer):
    __doc__ = r"""Layer normalization over the trailing ``normalized_shape`` dimensions, as ``torch.nn.LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions of the input to normalize over.
    eps : float
        Added to the variance before the square root; >= 0.
    elementwise_affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``.
    bias : bool
        With ``elementwise_affine``, whether there is a bias.
    axes : tuple of int, keyword-only, optional
        Normalize over these axes of the input instead of the trailing ones (Keras'
        ``LayerNormalization(axis=[1, 3])``): ``normalized_shape`` is then their sizes, in the order of
        the axes (sorted), and the parameters have that shape.  See :func:`fastnorm.layer_norm` for which
        memory layouts are read without a copy.
    dtype : float32 or float64, keyword-only
        dtype of the parameters.
    """ + _ACTIVATION + "\n" + _ROWS_SHAPE + r"""
    Attributes
    ----------
    weight, bias : ndarray of shape normalized_shape, or None
        Learnable :math:`\gamma` and :math:`\beta` (None without ``elementwise_affine``; bias None with
        ``bias=False``).
    """ + _modeless("LayerNorm") + r"""

    the mean and biased variance over the last ``len(normalized_shape)`` dimensions of each sample, in
    float64.
    """ + _references("layer", "torch.nn.LayerNorm") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> ln = fastnorm.LayerNorm(4)
    >>> ln(np.array([[1, 2, 3, 4]], np.float32)).astype(float).round(3).tolist()
    [[-1.342, -0.447, 0.447, 1.342]]
    """

    weight: Optional[NDArray[Any]]
    bias: Optional[NDArray[Any]]

    def __init__(self, normalized_shape: Union[int, Iterable[int]], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, *, axes: Optional[Iterable[int]] = None,
                 dtype: DTypeLike = np.float32, activation: Optional[str] = None) -> None:
        self.normalized_shape: Tuple[int, ...] = _normalized_shape(normalized_shape)
        self._set_activation(activation)
        self.axes = _check_layer_axes(axes, self.normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self._has_bias = self.elementwise_affine and bool(bias)
        self.training = True
        self.weight = self.bias = None
        self.reset_parameters()

    def _config(self) -> Dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self._has_bias,
                "axes": None if self.axes is None else list(self.axes), "dtype": self.dtype.name,
                "activation": self.activation}

    @_reset_doc("Weight to 1, bias to 0.", "ln", "LayerNorm(2)", "bias", "5.0")
    def reset_parameters(self) -> None:
        self._reset_affine(self.elementwise_affine, self.normalized_shape)

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {"weight": self.weight, "bias": self.bias}

    @_rows_forward_doc("Normalize each sample over its trailing ``normalized_shape`` dimensions.", "LayerNorm",
                       "array([[-1.,  1.]], dtype=float32)")
    def forward(self, x: ArrayLike, *, residual: Optional[ArrayLike] = None, out: Optional[NDArray[Any]] = None,
                residual_out: Optional[NDArray[Any]] = None, mask: Optional[ArrayLike] = None) -> Any:
        return super().forward(x, residual=residual, out=out, residual_out=residual_out, mask=mask)

    def _bias(self) -> Optional[NDArray[Any]]:
        return self.bias

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        x, mean, rstd = saved[:3]
        return F.layer_norm_backward(grad_output, x, self.normalized_shape, mean, rstd, self.weight, self.bias,
                                     axes=self.axes, eps=self.eps, **self._epilogue())

    def _torch_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self._has_bias}")


class RMSNorm(_RowsLayer):
    __doc__ = r"""Root-mean-square normalization over the trailing ``normalized_shape`` dimensions, as
    ``torch.nn.RMSNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions of the input to normalize over.
    eps : float or None
        Added to the mean square before the square root.  None: the machine epsilon of the dtype the
        input is computed in (float32 for float16 input), as PyTorch.
    elementwise_affine : bool
        Learnable ``weight`` (ones) of shape ``normalized_shape``.
    axes : tuple of int, keyword-only, optional
        Normalize over these axes of the input instead of the trailing ones: ``normalized_shape`` is then
        their sizes, in the order of the axes (sorted), as :class:`LayerNorm`'s ``axes``.
    dtype : float32 or float64, keyword-only
        dtype of the weight.
    """ + _ACTIVATION + "\n" + _ROWS_SHAPE + r"""
    Attributes
    ----------
    weight : ndarray of shape normalized_shape, or None
        Learnable :math:`\gamma` (None without ``elementwise_affine``).  RMSNorm has no bias.
    grad_weight : ndarray or None
        The weight's gradient from the last :meth:`backward`.
    training : bool
        Kept for PyTorch's interface: RMSNorm computes the same in both modes.

    Notes
    -----
    .. math::

        y = \frac{x}{\sqrt{\frac{1}{n} \sum x^2 + \epsilon}} \cdot \gamma

    over the :math:`n` values of the last ``len(normalized_shape)`` dimensions of each sample, in
    float64.  No mean is subtracted.
    """ + _references("rms", "torch.nn.RMSNorm") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> rms = fastnorm.RMSNorm(2, eps=0.0)
    >>> rms(np.array([[3., 4.]], np.float32)).round(4)    # x / sqrt(mean(x**2)), sqrt(12.5) = 3.5355
    array([[0.8485, 1.1314]], dtype=float32)
    """

    weight: Optional[NDArray[Any]]
    _rms = True
    _has_bias = False

    def __init__(self, normalized_shape: Union[int, Iterable[int]], eps: Optional[float] = None,
                 elementwise_affine: bool = True, *, axes: Optional[Iterable[int]] = None,
                 dtype: DTypeLike = np.float32, activation: Optional[str] = None) -> None:
        self.normalized_shape: Tuple[int, ...] = _normalized_shape(normalized_shape)
        self._set_activation(activation)
        self.axes = _check_layer_axes(axes, self.normalized_shape)
        self.eps = None if eps is None else _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _check_dtype(dtype)
        self.training = True
        self.weight = None
        self.reset_parameters()

    def _config(self) -> Dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "axes": None if self.axes is None else list(self.axes),
                "dtype": self.dtype.name, "activation": self.activation}

    @_reset_doc("Weight to 1.", "rms", "RMSNorm(2)", "weight", "5.0")
    def reset_parameters(self) -> None:
        self._reset_affine(self.elementwise_affine, self.normalized_shape)

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {"weight": self.weight}

    @_rows_forward_doc("Divide each sample by its root mean square over the trailing ``normalized_shape`` dimensions.",
                       "RMSNorm", "array([[0.8485, 1.1314]], dtype=float32)")
    def forward(self, x: ArrayLike, *, residual: Optional[ArrayLike] = None, out: Optional[NDArray[Any]] = None,
                residual_out: Optional[NDArray[Any]] = None, mask: Optional[ArrayLike] = None) -> Any:
        return super().forward(x, residual=residual, out=out, residual_out=residual_out, mask=mask)

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        x, rstd = saved[:2]
        return F.rms_norm_backward(grad_output, x, self.normalized_shape, rstd, self.weight, axes=self.axes,
                                   eps=F._rms_eps(self.eps, x.dtype), **self._epilogue())

    def _torch_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
