"""The sections that docstrings share (the layers' math, parameters, forward and references; the functions' mask)."""
from __future__ import annotations

from typing import Callable, TypeVar

_F = TypeVar("_F", bound=Callable[..., object])

# The normalization formula of the layers' docstrings; the entry of the parameters' gradients.
_NORMALIZE = r"""    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta"""
_GRADS = """grad_weight, grad_bias : ndarray or None
        The parameters' gradients from the last :meth:`backward`."""


def _modeless(layer: str) -> str:
    """The docstring of a layer that computes the same in training and evaluation mode, from the gradients'
    entry of its Attributes to the formula of its Notes."""
    return (f"{_GRADS}\n    training : bool\n        Kept for PyTorch's interface: {layer} computes the same in both"
            f" modes.\n\n    Notes\n    -----\n{_NORMALIZE}")


# The sections the docstrings of the per-channel layers share.
_BATCH_NORM_MATH = "\n" + _NORMALIZE + r"""

    per channel, the mean and biased variance over the batch and the spatial dimensions (every axis but
    the channels').  In training mode each forward also updates, per channel,
    ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and the same for ``running_var``
    with the unbiased variance (``bessel=False``: the biased one); ``momentum=None`` averages all the
    batches (``momentum = 1 / (num_batches_tracked + 1)``).  Evaluation mode normalizes with the
    running statistics.  The statistics are computed in float64 whatever the dtype."""

_GROUPS_MATH = r"""

    With ``renorm`` (Ioffe, 2017, https://arxiv.org/abs/1702.03275), training mode computes, per channel,
    with :math:`\mu_B` and
    :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}` of the batch (biased variance) and
    :math:`\mu`, :math:`\sigma` the ``renorm_mean`` and ``renorm_stddev`` (:math:`\sigma` at least
    :math:`\sqrt{\epsilon}`, as Keras),

    .. math::

        r = \mathrm{clip}_{[r_{min}, r_{max}]}(\sigma_B / \sigma),\qquad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mu) / \sigma),\qquad
        y = \left(\frac{x - \mu_B}{\sigma_B}\, r + d\right) \gamma + \beta

    with r and d constants in :meth:`backward` (the paper's stop-gradient), then updates
    :math:`\mu \leftarrow (1 - m_r)\mu + m_r \mu_B` and :math:`\sigma \leftarrow (1 - m_r)\sigma +
    m_r \sigma_B` (:math:`m_r` = ``renorm_momentum``), and the running statistics as without renorm.
    The output equals Keras 3's in training and evaluation; Keras' ``moving_variance`` differs (Keras
    averages the standard deviations :math:`\sigma_B` and derives the variance from them; fastnorm
    averages the variances, as without renorm).

    With ``virtual_batch_size`` v (Ghost BatchNorm, Hoffer et al., 2017, https://arxiv.org/abs/1705.08741),
    training mode splits the batch
    into sub-batches of v consecutive samples, normalizes each with its own statistics (and its own r and
    d with ``renorm``) and differentiates each on its own; the running statistics are updated once per
    call with the mean over the sub-batches of their means and of their unbiased variances (biased with
    ``bessel=False``: then as tf.keras 2 did), the renorm statistics with the mean of their
    :math:`\mu_B` and :math:`\sigma_B`.  Evaluation mode is unchanged.  tf.keras 2 (Keras 3 dropped the
    argument) reshaped the batch to ``(v, N / v, ...)``, so its sub-batch k held samples k, k + N/v,
    k + 2N/v, ...: interleaved.  ``x.reshape(v, N // v, ...).swapaxes(0, 1).reshape(x.shape)`` puts those
    samples next to each other for fastnorm."""

# The names ``activation=`` takes, for the docstrings.
_ACTIVATION_NAMES = """``"relu"``, ``"relu6"``,
        ``"silu"``, ``"gelu"`` (erf form), ``"gelu_tanh"`` (PyTorch's ``approximate="tanh"``),
        ``"sigmoid"``, ``"tanh"``"""
_ACTIVATION = """activation : str or None, keyword-only
        Applied to the output in the sweep that writes it: one of """ + _ACTIVATION_NAMES + """;
        :meth:`backward` differentiates through it.  None (the default): none."""

_BATCH_NORM_PARAMETERS = """
    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance before the square root; >= 0, and > 0 to train (as PyTorch).
    momentum : float in [0, 1] or None
        Weight of the new batch in the running statistics (PyTorch's convention; Keras' ``momentum`` is
        ``1 - momentum``).  None: cumulative average over ``num_batches_tracked`` batches.
    affine : bool
        Learnable ``weight`` (initially 1) and ``bias`` (initially 0).
    track_running_stats : bool
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``; without them evaluation mode
        uses the batch statistics.
    bias : bool, keyword-only
        With ``affine``, whether there is a bias (False: a weight only, as PyTorch's ``bias=False``).
    dtype : float32 or float64, keyword-only
        dtype of the parameters and buffers.
    """ + _ACTIVATION

_BATCH_NORM_ATTRIBUTES = """
    Attributes
    ----------
    weight : ndarray of shape (C,) or None
        Learnable scale :math:`\\gamma` (None without ``affine``).
    bias : ndarray of shape (C,) or None
        Learnable shift :math:`\\beta` (None without ``affine`` or with ``bias=False``).
    running_mean, running_var : ndarray of shape (C,) or None
        Running statistics (None without ``track_running_stats``).
    num_batches_tracked : int or None
        Training-mode forwards on non-empty batches since the last reset (None without
        ``track_running_stats``).
    """ + _GRADS + """
    grad_add : ndarray or None
        The gradient of the last forward's ``add`` (None after a forward without one): of ``add``'s shape,
        summed over the axes it was broadcast along (as autograd), in the input's dtype.
    activation : str or None
        The activation applied to the output (the constructor's).
    training : bool
        Training mode (the default) or evaluation mode."""

_REFERENCES = {
    "batch": ("Ioffe, S. and Szegedy, C. (2015). Batch normalization: accelerating deep network training by "
              "reducing internal covariate shift. ICML. https://arxiv.org/abs/1502.03167"),
    "layer": "Ba, J. L., Kiros, J. R. and Hinton, G. E. (2016). Layer normalization. https://arxiv.org/abs/1607.06450",
    "group": "Wu, Y. and He, K. (2018). Group normalization. ECCV. https://arxiv.org/abs/1803.08494",
    "instance": ("Ulyanov, D., Vedaldi, A. and Lempitsky, V. (2016). Instance normalization: the missing "
                 "ingredient for fast stylization. https://arxiv.org/abs/1607.08022"),
    "rms": ("Zhang, B. and Sennrich, R. (2019). Root mean square layer normalization. NeurIPS. "
            "https://arxiv.org/abs/1910.07467"),
}


def _fill(template: str, **values: str) -> str:
    """``template`` with each ``{key}`` replaced (``str.format`` would read the braces of the math)."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


# A layer's ``forward``: only the summary, the input, the ValueErrors and the example differ between layers.
_FORWARD = """{summary}

        Parameters
        ----------
        x : array_like
            {x}
        out : ndarray, keyword-only, optional
            Where to write the result: the input's shape and dtype, writable; may be ``x`` itself.{add}

        Returns
        -------
        ndarray
            The normalized {result}, of its shape and dtype (``out`` when given).

        Raises
        ------
        {raises}

        Examples
        --------
        {examples}
        """

# The ``mask`` call argument of the layers.
_LAYER_MASK = """
        mask : array_like of bool, keyword-only, optional
            Broadcastable to ``x``: the statistics are taken over the values where it is True only (as the
            functional ``mask=``, Flax's ``mask`` and Keras' BatchNormalization ``mask``), every value
            normalized with them; running statistics are updated with the masked-in count, and
            :meth:`backward` differentiates the masked statistics.  A ``numpy.ma`` input is its data with
            ``mask=~numpy.ma.getmaskarray(x)`` (and'ed with ``mask``).  Computed in float64 NumPy (not the
            kernels' sweep)."""

_KEEPS = "Keeps what :meth:`backward` needs, outside :func:`fastnorm.no_grad`."


def _raises(value_error: str, masked: bool = False) -> str:
    """The Raises entries of most forwards: the TypeErrors they share, then ``value_error``; ``masked``: the
    forward takes ``mask=`` and a ``numpy.ma`` input."""
    type_error = ("``x`` not floating point; ``out`` of another dtype; a ``mask`` that is not boolean." if masked
                  else "``x`` not floating point, or a masked array; ``out`` of another dtype.")
    return f"TypeError\n            {type_error}\n        ValueError\n            {value_error}"


_ADD = """
        add : array_like, keyword-only, optional
            Added to the normalized values before the layer's activation, in the same sweep:
            ``y = activation(norm(x) + add)``; floating point, of the input's shape (or one that
            broadcasts to it), taken in the input's dtype.  :meth:`backward` then also stores its
            gradient in ``grad_add``.""" + _LAYER_MASK


def _forward_text(add: bool, summary: str, x: str, raises: str, examples: str, result: str = "input") -> str:
    """A layer's ``forward`` docstring: the shared one, filled in (the text indented as a method's docstring);
    ``add``: the forward takes ``add=`` (and ``mask=``)."""
    return _fill(_FORWARD, summary=summary, x=x, raises=raises, examples=examples, result=result,
                 add=_ADD if add else "")


def _forward_doc(summary: str, x: str, raises: str, examples: str) -> Callable[[_F], _F]:
    """A decorator giving a layer's ``forward`` (one without ``add=``) its docstring (see _forward_text)."""
    def document(forward: _F) -> _F:
        forward.__doc__ = _forward_text(False, summary, x, raises, examples)
        return forward
    return document


# A layer's ``reset_parameters``: the example sets a parameter of a new layer, resets it and shows it.
_RESET = """{summary}

        Examples
        --------
        >>> import fastnorm
        >>> {name} = fastnorm.{layer}
        >>> {name}.{parameter}[:] = {value}
        >>> {name}.reset_parameters()
        >>> {name}.{parameter}
        array([{reset}, {reset}], dtype=float32)
        """


def _reset_doc(summary: str, name: str, layer: str, parameter: str, value: str) -> Callable[[_F], _F]:
    """A decorator giving a layer's ``reset_parameters`` its docstring: ``summary``, then an example where
    ``name = fastnorm.<layer>`` has its ``parameter`` set to ``value`` and reset (a weight to 1, a bias to 0)."""
    def document(reset_parameters: _F) -> _F:
        reset_parameters.__doc__ = _fill(_RESET, summary=summary, name=name, layer=layer, parameter=parameter,
                                         value=value, reset="1." if parameter == "weight" else "0.")
        return reset_parameters
    return document


# The ``out`` parameter and the Returns section of the functions computed in float64 (normalize,
# local_response_norm).
_OUT_AND_RETURNS = """out : ndarray, keyword-only, optional
        Where to write the result: the input's shape and dtype, writable; may be the input itself.

    Returns
    -------
    ndarray
        Of the input's shape and dtype (``out`` when given)."""

# The Returns section of their backwards.
_GRAD_RETURNS = """Returns
    -------
    ndarray
        The gradient with respect to the input, of its shape and dtype (computed in float64)."""

# The ``mask`` parameter of the normalizing functions.
_MASK = """mask : array_like of bool, keyword-only, optional
        Broadcastable to the input: the statistics are taken over the values where it is True only
        (padding, even NaN, does not leak into them) and every value is normalized with them, as Flax's
        ``mask``; a statistic of no value is NaN.  A ``numpy.ma`` input means
        ``mask=~numpy.ma.getmaskarray(input)`` (and'ed with ``mask``); the result is an ndarray."""


def _filled(**values: str) -> Callable[[_F], _F]:
    """A decorator filling the ``{key}`` placeholders of the docstring of what it decorates."""
    def fill(function: _F) -> _F:
        function.__doc__ = _fill(function.__doc__ or "", **values)
        return function
    return fill


# The ``activation`` and ``add`` parameters of the normalizing functions.
_FUNCTION_ACTIVATION = """activation : str or None, keyword-only
        Applied to the result in the same sweep that writes it: one of """ + _ACTIVATION_NAMES + """;
        None: none."""
_FUNCTION_ADD = """add : array_like, keyword-only, optional
        Added to the normalized values before the activation, ``y = activation(norm(x) + add)``, read
        once in the same sweep (the end of a ResNet block): floating point, of the input's shape (or one
        that broadcasts to it), taken in the input's dtype (a float16 input's add is rounded to float16).
        A C-contiguous array of the input's dtype is read as it is."""

_FUNCTION_OUT = """out : ndarray, keyword-only, optional
        Where to write the result (the input's shape and dtype); may be the input itself."""

# Fills the ``{mask}``, ``{activation}``, ``{add}`` and ``{out}`` placeholders of a normalizing function's
# docstring, and ``{epilogue}``: the four in the order group_norm and instance_norm take them.
_with_mask_doc = _filled(epilogue="\n    ".join((_FUNCTION_ACTIVATION, _FUNCTION_ADD, _FUNCTION_OUT, _MASK)),
                         mask=_MASK, activation=_FUNCTION_ACTIVATION, add=_FUNCTION_ADD, out=_FUNCTION_OUT)


def _references(kind: str, torch_name: str) -> str:
    """A docstring's References section: the paper, and the PyTorch class whose semantics the layer has."""
    return (f"\n    References\n    ----------\n    {_REFERENCES[kind]}\n\n"
            f"    PyTorch: https://pytorch.org/docs/stable/generated/{torch_name}.html\n")
