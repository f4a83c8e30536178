"""fastnorm: the normalization layers of deep learning for NumPy arrays, on Cython + OpenMP kernels."""
import types
from typing import TYPE_CHECKING, Any, Dict

from . import functional
from ._version import __version__
from ._threads import get_num_threads, set_num_threads, threads
from ._kernels import set_output_cache
from .deploy import fold_batch_norm, load, save
from .distributed import SyncBatchNorm, calibrate_batch_norms
from .keras import from_keras
from .statistics import Moments
from .functional import (batch_norm, batch_norm_backward, batch_normalization, group_norm, group_norm_backward,
                         instance_norm, instance_norm_backward, layer_norm, layer_norm_backward, moments,
                         rms_norm, rms_norm_backward)
from .functional import local_response_norm, local_response_norm_backward, normalize, normalize_backward
from .layers import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
                     InstanceNorm3d, LayerNorm, LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d, LazyInstanceNorm1d,
                     LazyInstanceNorm2d, LazyInstanceNorm3d, LocalResponseNorm, RMSNorm, no_grad)


__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm", "LazyBatchNorm1d", "LazyBatchNorm2d",
    "LazyBatchNorm3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d", "no_grad",
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "batch_normalization", "moments",
    "batch_norm_backward", "layer_norm_backward", "group_norm_backward", "instance_norm_backward",
    "rms_norm_backward", "local_response_norm", "local_response_norm_backward",
    "normalize", "normalize_backward",
    "fold_batch_norm", "save", "load", "from_keras", "Moments", "SyncBatchNorm", "calibrate_batch_norms",
    "functional", "preprocessing", "onnx", "get_num_threads", "set_num_threads", "threads", "set_output_cache",
    "show_config",
]

if TYPE_CHECKING:
    from . import onnx, preprocessing


def __getattr__(name: str) -> types.ModuleType:
    # fastnorm.preprocessing is imported on first use: it imports scikit-learn where that is installed,
    # which takes seconds, and most users of fastnorm never need it.  fastnorm.onnx likewise (it imports
    # onnx only when its functions are called).
    if name in ("preprocessing", "onnx"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The ISA levels of the C loops (src/fastnorm/_simd.h), as show_config names them.
_ISA_LEVELS = ("level 0: generic loops", "level 1: avx2, fma, f16c", "level 2: avx-512 (f, bw, vl, dq)",
               "level 3: avx-512 (f, bw, vl, dq) and avx512-bf16")


def show_config(print_out: bool = True) -> Dict[str, Any]:
    """Describe the build: version, OpenMP, thread count and pool, SIMD dispatch, output cache.

    Parameters
    ----------
    print_out : bool
        Also print the facts, one per line (as ``numpy.show_config``); ``python -m fastnorm info``
        prints the same.

    Returns
    -------
    dict of str
        ``fastnorm``, ``numpy``, ``python`` (versions), ``machine``, ``openmp`` (bool: whether the
        kernels were compiled with OpenMP; without it they run on one thread), ``threads`` (what
        :func:`get_num_threads` returns), ``pool`` (what runs the parallel loops: fastnorm's own pool,
        the compiler's OpenMP runtime, or none), ``simd`` (the ISA level of the C loops) and ``cache``
        (the output cache's use and limit, in MiB).

    Examples
    --------
    >>> import fastnorm
    >>> config = fastnorm.show_config(print_out=False)
    >>> sorted(config)
    ['cache', 'fastnorm', 'machine', 'numpy', 'openmp', 'pool', 'python', 'simd', 'threads']
    >>> config["fastnorm"] == fastnorm.__version__
    True
    """
    import platform

    import numpy as np

    from . import _kernels

    config: Dict[str, Any] = {
        "fastnorm": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "openmp": _kernels.openmp_enabled(),
        "threads": get_num_threads(),
        "pool": ("fastnorm's own (idle workers spin 100 us, then sleep; fork-safe)" if _kernels.own_runtime()
                 else "the compiler's OpenMP runtime" if _kernels.openmp_enabled() else "none"),
        "simd": _ISA_LEVELS[_kernels.get_isa()],
        "cache": f"{_kernels.output_cache_bytes() >> 20} of {_kernels.output_cache_limit() >> 20} MiB of freed results"
                 " held for reuse (set_output_cache" + (": auto, the peak of large results, at most 256 MiB)"
                                                        if _kernels.output_cache_auto() else ")"),
    }
    if print_out:
        for key, value in config.items():
            if key == "openmp" and not value:
                value = "False (built without OpenMP: kernels run single-threaded)"
            print(f"{key:>9}: {value}")
    return config
