"""The float64 twins of ``fastnorm.functional``'s backwards of the normalizations: (grad_input,
grad_weight, grad_bias) from the forward's input and statistics, by the formulas in
``tests/reference.py``'s docstring; ``reference`` holds them by name with the other twins."""
import numbers

import numpy as np

from reference_steps import (_affine, _backward, _channel_axes, _channel_shape, _grad_input, _groups, _instance_axis,
                             _kept, _mask, _require, _through, _trailing, _vector)


def batch_norm_backward(grad_output, input, mean, invstd, weight=None, training=True, *, channel_axis=1, eps=None,
                        mask=None, activation=None, add=None, bias=None):
    """Gradients of :func:`batch_norm` (reference's docstring, the values of a channel): dx, and the (C,)
    sums dweight = sum(dy * xhat), dbias = sum(dy) (returned with or without ``weight``).
    ``training=False``: the statistics were the running ones, so dx = rstd * weight * dy.  ``activation``,
    ``add``, ``bias``: the backward through the forward's activation, then grad of ``add`` fourth."""
    _require(mask is None or isinstance(channel_axis, numbers.Integral),
             "mask: not supported together with several channel axes")
    dy, x = _grad_input(grad_output, input, min_ndim=2)
    _, params, shape, others = _channel_axes(x, channel_axis)
    mean, rstd = _vector(mean, "mean", params), _vector(invstd, "invstd", params)
    weight, bias = _vector(weight, "weight", params), _vector(bias, "bias", params)

    def backward(dy):
        dx, xhat = _backward(dy, x, mean.reshape(shape), rstd.reshape(shape),
                             None if weight is None else weight.reshape(shape), others, training, eps=eps, mask=mask)
        return dx, (dy * xhat).sum(axis=others), dy.sum(axis=others)
    z = _affine((x - mean.reshape(shape)) * rstd.reshape(shape), weight, bias, shape)
    return _through(backward, dy, x, z, activation, add)


def _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, centered, eps, mask, axes,
                   activation):
    _require(mask is None or axes is None, "mask: not supported together with axes")
    dy, x = _grad_input(grad_output, input)
    axes, shape = _trailing(x, normalized_shape, axes)
    bias = _vector(bias, "bias", shape)  # without activation, only says whether there is a bias
    lead, spread = _kept(x, axes)
    kept_spread = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    rstd = _vector(rstd, "rstd", lead).reshape(kept_spread)
    mean = _vector(mean, "mean", lead).reshape(kept_spread) if centered else 0.0
    weight = _vector(weight, "weight", shape)
    outer = tuple(a for a in range(x.ndim) if a not in axes)

    def backward(dy):
        dx, xhat = _backward(dy, x, mean, rstd, None if weight is None else weight.reshape(spread), axes, True,
                             centered, eps, mask)
        return dx, (dy * xhat).sum(axis=outer).reshape(shape), dy.sum(axis=outer).reshape(shape)
    return _through(backward, dy, x, _affine((x - mean) * rstd, weight, bias, spread), activation, None)


def layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight=None, bias=None, *, axes=None,
                        eps=None, mask=None, activation=None):
    """Gradients of :func:`layer_norm` (reference's docstring, the values of a row): dx, and dweight, dbias of
    ``normalized_shape`` summed over the rows (None without ``weight``, ``bias``)."""
    dx, dw, db = _rows_backward(grad_output, input, normalized_shape, mean, rstd, weight, bias, True, eps, mask, axes,
                                activation)
    return dx, (None if weight is None else dw), (None if bias is None else db)


def rms_norm_backward(grad_output, input, normalized_shape, rstd, weight=None, *, axes=None, eps=None, mask=None,
                      activation=None):
    """Gradients of :func:`rms_norm`: dx = rstd * (g - xhat * mean(g * xhat)) per row, xhat = x * rstd;
    dweight = sum(dy * xhat) over the rows (None without ``weight``); no bias."""
    dx, dw, _ = _rows_backward(grad_output, input, normalized_shape, None, rstd, weight, None, False, eps, mask, axes,
                               activation)
    return dx, (None if weight is None else dw), None


def group_norm_backward(grad_output, input, num_groups, mean, rstd, weight=None, *, channel_axis=1, eps=None,
                        mask=None, activation=None, add=None, bias=None):
    """Gradients of :func:`group_norm` (reference's docstring, the values of a (sample, group)): dx, and the
    (C,) sums dweight = sum(dy * xhat), dbias = sum(dy) over samples and spatial values."""
    dy, x = _grad_input(grad_output, input, min_ndim=2)
    grouped, axis = _groups(x, num_groups, channel_axis)
    N, G, K, _ = grouped.shape
    mean, rstd = (_vector(v, name, (N, G)).reshape(N, G, 1, 1) for v, name in ((mean, "mean"), (rstd, "rstd")))
    weight, bias = _vector(weight, "weight", (G * K,)), _vector(bias, "bias", (G * K,))

    def backward(dy):
        dy_grouped, _ = _groups(dy, num_groups, channel_axis)
        dx, xhat = _backward(dy_grouped, grouped, mean, rstd, None if weight is None else weight.reshape(1, G, K, 1),
                             (2, 3), True, eps=eps, mask=_groups(_mask(mask, x), num_groups, channel_axis)[0])
        dx = np.moveaxis(dx.reshape(np.moveaxis(x, axis, 1).shape), 1, axis)
        return dx, (dy_grouped * xhat).sum(axis=(0, 3)).reshape(-1), dy_grouped.sum(axis=(0, 3)).reshape(-1)
    xhat = np.moveaxis(((grouped - mean) * rstd).reshape(np.moveaxis(x, axis, 1).shape), 1, axis)
    z = _affine(xhat, weight, bias, _channel_shape(x.ndim, axis))
    return _through(backward, dy, x, z, activation, add)


def instance_norm_backward(grad_output, input, mean, rstd, weight=None, use_input_stats=True, *, channel_axis=1,
                           eps=None, mask=None, activation=None, add=None, bias=None):
    """Gradients of :func:`instance_norm` (reference's docstring, the spatial values of a (sample, channel)):
    dx, and the (C,) sums dweight = sum(dy * xhat), dbias = sum(dy).  mean and rstd are (N, C) with
    ``use_input_stats``; without, the running (C,) ones, frozen: dx = rstd * weight * dy."""
    _require(mask is None or channel_axis == 1, "mask: supported with channel_axis=1 only")
    dy, x = _grad_input(grad_output, input, min_ndim=3)
    axis = _instance_axis(x, channel_axis)
    x0, dy0, x = x, dy, np.moveaxis(x, axis, 1)
    N, C = x.shape[:2]
    stats = (N, C) if use_input_stats else (C,)
    spread = (1,) * (x.ndim - 2)
    mean, rstd = (_vector(v, name, stats).reshape(stats + spread) for v, name in ((mean, "mean"), (rstd, "rstd")))
    weight, bias = _vector(weight, "weight", (C,)), _vector(bias, "bias", (C,))
    spatial = tuple(range(2, x.ndim))

    def backward(dy):
        dy = np.moveaxis(dy, axis, 1)
        dx, xhat = _backward(dy, x, mean, rstd, None if weight is None else weight.reshape((C,) + spread), spatial,
                             use_input_stats, eps=eps, mask=mask)
        return np.moveaxis(dx, 1, axis), (dy * xhat).sum(axis=(0,) + spatial), dy.sum(axis=(0,) + spatial)
    z = np.moveaxis(_affine((x - mean) * rstd, weight, bias, (C,) + spread), 1, axis)
    return _through(backward, dy0, x0, z, activation, add)
