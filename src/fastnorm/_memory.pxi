# ---------------------------------------------------------------------------------------------------------
# Output memory: large results come from a cache of freed output buffers (see _buffers.h)
# ---------------------------------------------------------------------------------------------------------

cdef extern from "_buffers.h":
    object fastnorm_buffer_handler_capsule()
    object fastnorm_retrying_handler_capsule(object numpy_handler)
    size_t fastnorm_cache_set_limit(size_t limit)
    size_t fastnorm_cache_held()
    size_t fastnorm_cache_limit()
    void* fastnorm_malloc(size_t size) nogil
    size_t FASTNORM_CACHE_MIN
    size_t FASTNORM_CACHE_AUTO
    size_t fastnorm_cache_setting
    int fastnorm_madvise_huge

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()

cdef object _output_handler = fastnorm_buffer_handler_capsule()


def _wrap_numpy_allocator():
    """NumPy's own allocations in the importing context (a thread, and the asyncio tasks it starts) go
    through NumPy's default allocator wrapped to free the cache and retry when it fails (see _buffers.h).
    Another handler, someone else's choice, is left alone."""
    try:
        from numpy._core.multiarray import get_handler_name
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import get_handler_name
    if get_handler_name() == "default_allocator":
        PyDataMem_SetHandler(fastnorm_retrying_handler_capsule(PyDataMem_GetHandler()))


_wrap_numpy_allocator()


def _cache_setting(nbytes):
    """``set_output_cache``'s argument as the C setting; TypeError or ValueError naming it otherwise."""
    if nbytes is None:
        return FASTNORM_CACHE_AUTO
    if isinstance(nbytes, bool):
        raise TypeError(f"nbytes: expected a number of bytes (int) or None, got {nbytes!r}")
    try:
        nbytes = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"nbytes: expected a number of bytes (int) or None, got {nbytes!r}") from None
    if not 0 <= nbytes <= sys.maxsize:
        raise ValueError(f"nbytes: expected a number of bytes from 0 to {sys.maxsize}, got {nbytes}")
    return nbytes


def _configure_output_cache():
    """Huge pages as NumPy asks for them; the cache's size from FASTNORM_OUTPUT_CACHE if set (bytes, or
    "auto"); a value that is neither warns and leaves the default."""
    import os
    import warnings
    global fastnorm_madvise_huge
    try:
        from numpy._core.multiarray import _get_madvise_hugepage
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _get_madvise_hugepage
    fastnorm_madvise_huge = bool(_get_madvise_hugepage())
    setting = os.environ.get("FASTNORM_OUTPUT_CACHE", "").strip()
    if setting and setting.lower() != "auto":
        try:
            fastnorm_cache_set_limit(_cache_setting(int(setting)))
        except ValueError as e:
            warnings.warn(f"FASTNORM_OUTPUT_CACHE={setting!r} is not a number of bytes from 0 to {sys.maxsize} "
                          f"or 'auto' ({e}); the default (auto) is used", RuntimeWarning)


_configure_output_cache()


cdef cnp.ndarray _empty(int ndim, cnp.npy_intp* dims, int typenum):
    """A new C-contiguous array; one of at least FASTNORM_CACHE_MIN bytes takes its memory from the cache."""
    cdef size_t nbytes = cnp.PyArray_DescrFromType(typenum).itemsize
    cdef int i
    if _allocation_fails():
        _out_of_memory()
    for i in range(ndim):
        nbytes *= <size_t>dims[i]
    if nbytes < FASTNORM_CACHE_MIN:
        return cnp.PyArray_EMPTY(ndim, dims, typenum, 0)
    previous = PyDataMem_SetHandler(_output_handler)
    try:
        return cnp.PyArray_EMPTY(ndim, dims, typenum, 0)
    finally:
        PyDataMem_SetHandler(previous)


cdef cnp.ndarray _empty_doubles(cnp.npy_intp n):
    """A new float64 vector of ``n`` values (per-row statistics, per-run sums), as ``_empty``."""
    return _empty(1, &n, cnp.NPY_DOUBLE)


def empty(object shape, object dtype):
    """``np.empty(shape, dtype)`` for a result array (see ``set_output_cache``)."""
    cdef object descr = np.dtype(dtype)
    cdef tuple dims = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    cdef cnp.npy_intp c_dims[32]
    cdef int i
    if len(dims) > 32 or descr.kind != "f" or not descr.isnative:
        return np.empty(dims, descr)
    for i in range(len(dims)):
        c_dims[i] = dims[i]
    return _empty(len(dims), c_dims, descr.num)


def empty_like(cnp.ndarray a):
    """A new C-contiguous array of ``a``'s shape and dtype (see ``set_output_cache``)."""
    return _empty(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), cnp.PyArray_TYPE(a))


def set_output_cache(nbytes=None):
    """Set how much memory of freed results the cache keeps for new results; returns the previous setting.

    float32 and float64 results of 1 MiB or more (outputs, gradients, statistics) take their memory from
    this cache and give it back when they are freed: a loop that computes the same shapes every step
    then writes to memory that is already mapped, instead of page-faulting fresh memory.  An allocation
    of fastnorm that fails while the cache holds memory frees it all and tries again.

    Parameters
    ----------
    nbytes : int or None
        None (the default at import): the cache keeps at most as many bytes as the process's results of
        1 MiB or more took at their peak, all alive at once, counted from this call on, and at most
        256 MiB, so a process that never holds large results keeps nothing.  An int: at most that many
        bytes, whatever the process does; 0 frees what the cache holds and keeps nothing from then on.
        The environment variable ``FASTNORM_OUTPUT_CACHE`` (bytes, or ``auto``) sets it at import.

    Returns
    -------
    int or None
        The previous setting, to restore it with.

    Raises
    ------
    TypeError
        ``nbytes`` is not an int or None (a bool or a float is refused).
    ValueError
        ``nbytes`` is negative or above ``sys.maxsize``.

    Examples
    --------
    >>> import fastnorm
    >>> previous = fastnorm.set_output_cache(64 << 20)  # keep up to 64 MiB
    >>> fastnorm.set_output_cache(previous) == 64 << 20
    True
    """
    previous = fastnorm_cache_set_limit(_cache_setting(nbytes))
    return None if previous == FASTNORM_CACHE_AUTO else previous


def output_cache_limit():
    """The most bytes of freed result buffers the cache keeps now (``set_output_cache``)."""
    return fastnorm_cache_limit()


def output_cache_auto():
    """Whether the cache's limit follows the peak of live results (``set_output_cache(None)``)."""
    return fastnorm_cache_setting == FASTNORM_CACHE_AUTO


def output_cache_bytes():
    """Bytes of freed result buffers held for reuse now."""
    return fastnorm_cache_held()


# ---------------------------------------------------------------------------------------------------------
# Scratch memory.  Kernels allocate their scratch without the GIL; one that cannot returns -1 through its
# callers, and the entry point raises MemoryError (before any running statistics are touched, which the
# Python layer updates from the entry point's results).
# ---------------------------------------------------------------------------------------------------------

cdef Py_ssize_t allocations_before_failure = -1


def fail_allocations_after(Py_ssize_t n):
    """Make every allocation of the kernels (scratch memory, result arrays) after the next ``n`` fail
    (-1: none fails); returns the previous setting.  For tests of the out-of-memory paths."""
    global allocations_before_failure
    previous = allocations_before_failure
    allocations_before_failure = n
    return previous


cdef bint _allocation_fails() noexcept nogil:
    """The test hook of fail_allocations_after: counts an allocation, True for one that must fail."""
    global allocations_before_failure
    if allocations_before_failure == 0:
        return True
    if allocations_before_failure > 0:
        allocations_before_failure -= 1
    return False


cdef void* _alloc(size_t nbytes) noexcept nogil:
    if _allocation_fails():
        return NULL
    return fastnorm_malloc(nbytes if nbytes > 0 else 1)


cdef int _out_of_memory() except -1:
    raise MemoryError("fastnorm: out of memory for a kernel's scratch buffers")
