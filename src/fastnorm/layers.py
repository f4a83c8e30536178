"""Normalization layers with the constructor arguments, attributes and state-dict keys of ``torch.nn``.

Parameters and running statistics are plain ndarrays (length C vectors); the layers are thin over
:mod:`fastnorm.functional`.  The families live in private modules (``_layer``: the base and ``no_grad``;
``_batch_norm_layers``, ``_row_layers``, ``_group_layers``, ``_instance_layers``, ``_lrn_layer``, ``_lazy``);
this module is their public namespace.
"""
from ._batch_norm_layers import BatchNorm1d, BatchNorm2d, BatchNorm3d
from ._batch_norm_layers import _BatchNorm as _BatchNorm
from ._batch_norm_layers import _NormBase as _NormBase
from ._batch_norm_layers import _running_stats as _running_stats
from ._batch_norm_layers import _lazy_hint as _lazy_hint
from ._group_layers import GroupNorm
from ._instance_layers import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from ._instance_layers import _InstanceNorm as _InstanceNorm
from ._layer import LoadResult as LoadResult
from ._layer import StateDictSource as StateDictSource
from ._layer import _from_config as _from_config
from ._layer import _Grads as _Grads
from ._layer import _keeps_grad as _keeps_grad
from ._layer import _Layer as _Layer
from ._layer import _state_array as _state_array
from ._layer import no_grad
from ._layer_docs import _BATCH_NORM_ATTRIBUTES as _BATCH_NORM_ATTRIBUTES
from ._layer_docs import _BATCH_NORM_MATH as _BATCH_NORM_MATH
from ._layer_docs import _BATCH_NORM_PARAMETERS as _BATCH_NORM_PARAMETERS
from ._layer_docs import _fill as _fill
from ._layer_docs import _references as _references
from ._lazy import LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d, LazyInstanceNorm1d, LazyInstanceNorm2d
from ._lazy import LazyInstanceNorm3d
from ._lazy import _LazyNorm as _LazyNorm
from ._lrn_layer import LocalResponseNorm
from ._row_layers import LayerNorm, RMSNorm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm", "LazyBatchNorm1d", "LazyBatchNorm2d",
           "LazyBatchNorm3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d", "no_grad"]
