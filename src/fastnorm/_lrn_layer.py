"""LocalResponseNorm: each value over a window of neighbouring channels."""
from __future__ import annotations

from typing import Any, Dict, Optional

from numpy.typing import ArrayLike, NDArray

from . import _lrn
from ._layer import _Grads, _Layer
from ._layer_docs import _forward_doc, _raises


class LocalResponseNorm(_Layer):
    __doc__ = r"""Local response normalization across channels, as ``torch.nn.LocalResponseNorm``.

    Parameters
    ----------
    size : int
        The number of channels in a window, >= 1.
    alpha, beta, k : float
        The scale, the exponent and the additive constant (finite).

    Shape
    -----
    input : (N, C, *)
        float16, bfloat16, float32 or float64, 3 or more dimensions.
    output : the input's shape and dtype

    Attributes
    ----------
    size, alpha, beta, k
        The constructor's arguments.
    weight, bias, grad_weight, grad_bias : None
        The layer has no parameters (kept for the interface the other layers share).
    training : bool
        Kept for PyTorch's interface: the layer computes the same in both modes.

    Notes
    -----
    .. math::

        y_c = x_c \Big/ \Big(k + \frac{\alpha}{n} \sum_{c' = c - \lfloor n/2 \rfloor}
              ^{c + \lfloor (n - 1)/2 \rfloor} x_{c'}^2\Big)^{\beta}

    with :math:`n` = ``size``, zero outside the channels; computed in float64 (see
    :func:`fastnorm.functional.local_response_norm`).

    References
    ----------
    Krizhevsky, A., Sutskever, I. and Hinton, G. E. (2012). ImageNet classification with deep
    convolutional neural networks. NeurIPS, section 3.3.
    https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks

    PyTorch: https://pytorch.org/docs/stable/generated/torch.nn.LocalResponseNorm.html

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> lrn = fastnorm.LocalResponseNorm(2, alpha=1.0, beta=1.0, k=0.0)
    >>> lrn(np.array([[[1.], [2.], [3.]]], np.float32)).ravel()
    array([2.        , 0.8       , 0.46153846], dtype=float32)
    """

    weight = bias = None

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        self.size, self.alpha, self.beta, self.k = _lrn._check_params(size, alpha, beta, k)
        self.training = True

    def _config(self) -> Dict[str, Any]:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def _state(self) -> Dict[str, Optional[NDArray[Any]]]:
        return {}

    @_forward_doc(
        "Normalize each value by the squares of its neighbouring channels.\n"
        "\n"
        "        Keeps the input (by reference) for :meth:`backward`, outside :func:`fastnorm.no_grad`.",
        "float16, bfloat16, float32 or float64, of shape (N, C, \\*); any memory order.",
        _raises("``x`` with fewer than 3 dimensions; ``out`` of another shape, or read-only."),
        ">>> import numpy as np, fastnorm\n"
        "        >>> fastnorm.LocalResponseNorm(1, alpha=1.0, beta=0.5, k=0.0).forward(np.full((1, 2, 1), -2.0))\n"
        "        array([[[-1.],\n"
        "                [-1.]]])")
    def forward(self, x: ArrayLike, *, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        commit = self._commit({}, (self._input_to_keep(x, out),))
        return _lrn._local_response_norm(x, self.size, self.alpha, self.beta, self.k, out, commit)

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> _Grads:
        return _lrn.local_response_norm_backward(grad_output, saved[0], self.size, self.alpha, self.beta,
                                                 self.k), None, None

    def _torch_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
