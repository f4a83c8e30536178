"""How many threads a kernel call uses.

One place decides: the innermost :func:`threads` setting of the calling context, else the process's count.
The process's count lives in the extension, where :func:`set_num_threads` and threadpoolctl's
``threadpool_limits`` both set it; it starts at ``OMP_NUM_THREADS`` when that is set, else the number of
CPUs the process may use.  Every count is bounded by that number of CPUs (CPU affinity and cgroup quota):
more threads than cores only wait for one another.  Small workloads run on one thread: waking a worker
costs more than it saves.

The parallel loops run on fastnorm's own pool where the extension was built with gcc (see ``_pool.h``):
its idle workers spin for 100 microseconds, then sleep, so the cores go back to the libraries that run
between fastnorm's calls, and a child of ``fork()`` starts its own workers.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
from typing import Iterator, Optional, SupportsIndex, TypeVar

from . import _kernels
from ._layer_docs import _filled
from ._validation import check_count

# The Raises section of the functions taking a thread count ``n``.
_COUNT_RAISES = """Raises
    ------
    TypeError
        ``n`` is not an integer.
    ValueError
        ``n`` is below 1."""

__all__ = ["get_num_threads", "set_num_threads", "threads"]

# Elements below which a second thread does not pay for its start-up (a few microseconds).
_ELEMENTS_PER_THREAD = 1 << 15

_T = TypeVar("_T")

# The innermost threads() setting of the context (a Python thread, an asyncio task), or None.
_context_count: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("fastnorm_threads", default=None)


def _cgroup_cpus(root: str = "/sys/fs/cgroup") -> Optional[int]:
    """The CPUs that the cgroup's CPU quota allows (rounded up), or None without a quota."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:  # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:  # cgroup v1
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


# The cgroup quota as last read: at import and by set_num_threads.  Reading its files costs about 30 us,
# too much for each threads() block; the affinity (a system call of well under 1 us) is read each time.
_cgroup_quota = _cgroup_cpus()


def available_cpus() -> int:
    """The CPUs this process may run on: its CPU affinity, and the cgroup CPU quota where there is one (as
    read at import or at the last :func:`set_num_threads`)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13: the affinity, or -X cpu_count / PYTHON_CPU_COUNT
        n = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count()
    quota = _cgroup_quota
    return max(1, min(n or 1, quota or n or 1))


def _cap() -> int:
    return available_cpus() if _kernels.openmp_enabled() else 1


def _default_count() -> int:
    """``OMP_NUM_THREADS`` (its first entry) where it is set to a positive count, else the CPUs available."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else available_cpus()


def get_num_threads() -> int:
    """Number of threads the kernels use for large inputs.

    Returns
    -------
    int
        The innermost :func:`threads` setting of the calling context, else the process's count: the value
        given to :func:`set_num_threads` or by threadpoolctl's ``threadpool_limits``, else
        ``OMP_NUM_THREADS``, else the number of CPUs the process may use (CPU affinity, cgroup quota); 1
        when fastnorm was built without OpenMP.

    Examples
    --------
    >>> import fastnorm
    >>> with fastnorm.threads(1):
    ...     fastnorm.get_num_threads()
    1
    """
    n = _context_count.get()
    return _kernels.get_num_threads() if n is None else n


@_filled(count_raises=_COUNT_RAISES)
def set_num_threads(n: Optional[SupportsIndex]) -> None:
    """Set the process's thread count: the kernels' count in every Python thread outside :func:`threads`.

    It is the setting that threadpoolctl controls: ``with threadpoolctl.threadpool_limits(1):`` applies
    to fastnorm (it appears there with ``user_api="openmp"``, ``internal_api="fastnorm"``) and restores
    this value on exit.

    Parameters
    ----------
    n : int or None
        A positive count, or None to return to the default (``OMP_NUM_THREADS``, else the number of CPUs
        the process may use).  A count above the number of CPUs available to the process (CPU affinity,
        cgroup quota, read at this call) is lowered to it: no more OS threads start than there are CPUs.

    {count_raises}

    Examples
    --------
    >>> import os, fastnorm
    >>> fastnorm.set_num_threads(1)
    >>> fastnorm.get_num_threads()
    1
    >>> fastnorm.set_num_threads(10**6)  # lowered to the CPUs available
    >>> fastnorm.get_num_threads() <= os.cpu_count()
    True
    >>> fastnorm.set_num_threads(None)
    """
    global _cgroup_quota
    n = _default_count() if n is None else check_count(n, "n")
    _cgroup_quota = _cgroup_cpus()
    cap = _cap()
    _kernels.set_num_threads(min(n, cap), cap)


@contextlib.contextmanager
def context_setting(var: contextvars.ContextVar[_T], value: _T) -> Iterator[None]:
    """Set ``var`` to ``value`` in the current context (a Python thread, an asyncio task) until exit."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@_filled(count_raises=_COUNT_RAISES)
def threads(n: SupportsIndex) -> contextlib.AbstractContextManager[None]:
    """Context manager: use ``n`` threads in kernel calls made in the current context.

    The setting belongs to the calling Python thread, or to the asyncio task (each task runs in a copy of
    its creator's context, so a setting made inside one task does not reach another).  It takes
    precedence over :func:`set_num_threads` and threadpoolctl.

    Parameters
    ----------
    n : int
        A positive count; above the number of CPUs available to the process it is lowered to that.

    {count_raises}

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> with fastnorm.threads(1):
    ...     y = fastnorm.batch_norm(np.ones((2, 3, 4), np.float32), training=True)
    """
    return context_setting(_context_count, min(check_count(n, "n"), _cap()))


def threads_for(size: int, run: int = 64) -> int:
    """Threads for a kernel call over ``size`` elements normalized in contiguous runs of ``run`` values.

    A value of a short run costs more (the run's own steps are shared by fewer values): runs shorter than
    64 values count up to 8 times, so that GroupNorm on (8, 256, 3, 3) gets two threads (20 -> 12 us)."""
    if run < 64:
        size *= min(8, 64 // max(1, run))
    if size < 2 * _ELEMENTS_PER_THREAD:
        return 1
    return max(1, min(get_num_threads(), size // _ELEMENTS_PER_THREAD))


def _register_with_threadpoolctl() -> None:
    """Make threadpoolctl list and limit fastnorm's thread count (where threadpoolctl is installed)."""
    try:
        import threadpoolctl
    except ImportError:
        return

    class FastnormController(threadpoolctl.LibController):  # type: ignore[misc]  # threadpoolctl is untyped
        user_api = "openmp"  # what fastnorm's threads were, and what limits on OpenMP mean to cover
        internal_api = "fastnorm"
        filename_prefixes = ("_kernels",)
        check_symbols = ("fastnorm_get_num_threads", "fastnorm_set_num_threads")

        def get_num_threads(self) -> int:
            return int(self.dynlib.fastnorm_get_num_threads())

        def set_num_threads(self, num_threads: int) -> None:
            self.dynlib.fastnorm_set_num_threads(num_threads)

        def get_version(self) -> str:
            from ._version import __version__
            return __version__

    if hasattr(threadpoolctl, "register"):  # threadpoolctl >= 3.3
        threadpoolctl.register(FastnormController)


set_num_threads(None)
_register_with_threadpoolctl()
