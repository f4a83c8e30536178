"""How many threads a kernel call uses.

One place decides: a per-thread override from :func:`threads`, else the value given to
:func:`set_num_threads`, else ``omp_get_max_threads()`` read at call time, so ``OMP_NUM_THREADS`` and
threadpoolctl's limits on the OpenMP runtime govern fastnorm too.  Small workloads run on one thread:
starting a thread team costs more than it saves.
"""
from __future__ import annotations

import contextlib
import operator
import threading
from typing import ContextManager, Iterator, Optional

from . import _kernels

__all__ = ["get_num_threads", "set_num_threads", "threads"]

# Elements below which a second thread does not pay for its start-up (a few microseconds).
_ELEMENTS_PER_THREAD = 1 << 15

_local = threading.local()
_process_default = None


def check_count(value, name):
    """``value`` as a positive int; otherwise an error naming the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a positive integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected a positive integer, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    return value


def get_num_threads() -> int:
    """Number of threads the kernels use for large inputs.

    Returns
    -------
    int
        The innermost :func:`threads` setting of the calling thread, else the value given to
        :func:`set_num_threads`, else OpenMP's default (``OMP_NUM_THREADS`` or the CPU count); 1 when
        fastnorm was built without OpenMP.
    """
    n = getattr(_local, "n", None)
    if n is None:
        n = _process_default
    if n is None:
        n = _kernels.omp_max_threads()
    return n


def set_num_threads(n: Optional[int]) -> None:
    """Set the number of threads the kernels use, for every Python thread of the process.

    Parameters
    ----------
    n : int or None
        A positive count, or None to return to OpenMP's default.
    """
    global _process_default
    _process_default = None if n is None else check_count(n, "n")


@contextlib.contextmanager
def thread_setting(local, name, value, default=None) -> Iterator[None]:
    """Set ``local.<name>`` to ``value`` for the calling Python thread, restoring it on exit."""
    previous = getattr(local, name, default)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, previous)


def threads(n: int) -> ContextManager[None]:
    """Context manager: use ``n`` threads in kernel calls made by the calling Python thread.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> with fastnorm.threads(1):
    ...     y = fastnorm.batch_norm(np.ones((2, 3, 4), np.float32), training=True)
    """
    return thread_setting(_local, "n", check_count(n, "n"))


def threads_for(size: int, run: int = 64) -> int:
    """Threads for a kernel call over ``size`` elements normalized in contiguous runs of ``run`` values.

    A value of a short run costs more (the run's own steps are shared by fewer values): runs shorter than
    64 values count up to 8 times, so that GroupNorm on (8, 256, 3, 3) gets two threads (20 -> 12 us)."""
    if run < 64:
        size *= min(8, 64 // max(1, run))
    if size < 2 * _ELEMENTS_PER_THREAD:
        return 1
    return max(1, min(get_num_threads(), size // _ELEMENTS_PER_THREAD))
