"""Normalization functions on ndarrays, with the names and arguments of ``torch.nn.functional``.

Each function runs four steps, each in one place:

1. validate the arguments (``_validation``: dtypes, shapes, ``out=``, running statistics);
2. plan the view of the input's memory the kernels work on (``[N, C, S]`` channels first, ``[M, C]``
   channels last, rows of ``[R, D]``), the kernel path and the array it writes (``_plan``);
3. call the kernel (``_kernels``);
4. finish: the result in the input's layout and dtype, in ``out=`` when given (``_plan``).

The functions live by family: the forwards in ``_forward`` (by channels) and ``_rows_forward`` (by
rows), their gradients in ``_backward``, the per-step operations of a BatchNorm split across processes
(PyTorch's ``torch.batch_norm_stats`` and its kin, on which :class:`fastnorm.SyncBatchNorm` is built)
in ``_batch_norm_steps``, TensorFlow's ``moments`` and ``batch_normalization`` in ``_tf_ops``,
``normalize`` in ``_lp`` and ``local_response_norm`` in ``_lrn`` (both computed in float64 with
NumPy), ``mask=`` in ``_masked``.  Over several axes (``batch_norm``'s tuple ``channel_axis``,
``layer_norm``'s and ``rms_norm``'s ``axes``) a forward or backward sees its input through
``_over_axes`` as the one-axis view it takes.  This module is their public namespace.
"""
from __future__ import annotations

from ._backward import (batch_norm_backward, group_norm_backward, instance_norm_backward, layer_norm_backward,
                        rms_norm_backward)
from ._batch_norm_steps import (batch_norm_backward_elemt, batch_norm_backward_reduce, batch_norm_elemt,
                                batch_norm_gather_stats_with_counts, batch_norm_stats)
from ._forward import batch_norm, group_norm, instance_norm
from ._rows_forward import layer_norm, rms_norm
from ._lp import normalize, normalize_backward
from ._lrn import local_response_norm, local_response_norm_backward
from ._tf_ops import batch_normalization, moments

# What the layers call: a layer's call also applies its commit (see _plan._committing).
from ._forward import _batch_norm as _batch_norm, _group_norm as _group_norm  # noqa: E402
from ._forward import _instance_norm as _instance_norm  # noqa: E402
from ._forward import _batch_norm_masked as _batch_norm_masked  # noqa: E402
from ._forward import _group_norm_masked as _group_norm_masked  # noqa: E402
from ._forward import _instance_norm_masked as _instance_norm_masked  # noqa: E402
from ._rows_forward import _rows_call as _rows_call  # noqa: E402
from ._rows_forward import _rows_norm as _rows_norm  # noqa: E402
from ._rows_forward import _rows_norm_residual as _rows_norm_residual  # noqa: E402
from ._validation import _rms_eps as _rms_eps  # noqa: E402
from ._batch_norm_steps import _batch_norm_elemt as _batch_norm_elemt  # noqa: E402

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "moments",
           "batch_normalization", "batch_norm_backward", "layer_norm_backward", "group_norm_backward",
           "instance_norm_backward", "rms_norm_backward", "local_response_norm", "local_response_norm_backward",
           "normalize", "normalize_backward", "batch_norm_stats", "batch_norm_elemt",
           "batch_norm_gather_stats_with_counts", "batch_norm_backward_reduce", "batch_norm_backward_elemt"]
