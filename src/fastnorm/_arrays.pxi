# What the kernels accept as is: plain arrays and parameter vectors.

cdef inline bint _plain_values(object a):
    """What the kernels assume of every array they read or write: a plain ndarray (a subclass such as
    ``numpy.ma.MaskedArray`` means more than its memory) of float32 or float64 in the machine's byte
    order, aligned to its item size.  ``fastnorm._validation`` brings every other array argument to this
    form or rejects it; the predicates below are the fast path of that module."""
    cdef int t
    if not cnp.PyArray_CheckExact(a):
        return False
    t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return (t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE) and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a)


cdef inline bint _is_vector(object a, Py_ssize_t n):
    """A plain C-contiguous 1-D array of n values: a per-channel or per-element vector the kernels read
    as is."""
    return (_plain_values(a) and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1
            and cnp.PyArray_DIMS(<cnp.ndarray>a)[0] == n and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a))


cdef bint _overlap(cnp.ndarray a, cnp.ndarray b):
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a)


cdef bint _plain_running(object rm, object rv):
    """Running statistics that the update writes in one loop: non-overlapping plain vectors (see
    _plain_values) of one dtype and length.  Others (the other byte order, misaligned, strided) are
    read and written through NumPy, in their own form."""
    if not cnp.PyArray_Check(rm):
        return False
    cdef Py_ssize_t C = cnp.PyArray_SIZE(<cnp.ndarray>rm)
    return (_is_vector(rm, C) and _is_vector(rv, C)
            and cnp.PyArray_TYPE(<cnp.ndarray>rm) == cnp.PyArray_TYPE(<cnp.ndarray>rv)
            and not _overlap(<cnp.ndarray>rm, <cnp.ndarray>rv))


cdef inline double* _doubles(cnp.ndarray a):
    """The data of a float64 array (statistics, sums)."""
    return <double*>cnp.PyArray_DATA(a)


cdef inline ParamVector _param_vector(object a):
    cdef ParamVector v
    if a is None:
        v.data = NULL
        v.is_f64 = False
    else:
        v.data = cnp.PyArray_DATA(<cnp.ndarray>a)
        v.is_f64 = cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_DOUBLE
    return v


cdef inline double _at(ParamVector v, Py_ssize_t i, double default) noexcept nogil:
    if v.data == NULL:
        return default
    if v.is_f64:
        return (<const double*>v.data)[i]
    return (<const float*>v.data)[i]


cdef inline void _param_doubles(ParamVector v, Py_ssize_t start, Py_ssize_t n, double default,
                                double* out) noexcept nogil:
    """``out[i] = _at(v, start + i, default)`` for i < n, a plain loop for each case (which vectorizes)."""
    cdef Py_ssize_t i
    cdef const float* f = <const float*>v.data
    if v.data == NULL:
        for i in range(n):
            out[i] = default
    elif v.is_f64:
        memcpy(out, <const double*>v.data + start, n * sizeof(double))
    else:
        for i in range(n):
            out[i] = f[start + i]


# ---------------------------------------------------------------------------------------------------------
# Fast checks for the Python layer's common case (a call on a tiny input must cost microseconds)
# ---------------------------------------------------------------------------------------------------------

def is_plain(object x):
    """Whether the kernels can read ``x`` as it is, given a C-contiguous view or copy of it (see
    ``_plain_values``): the fast path of ``fastnorm._validation``."""
    return _plain_values(x)


def is_vector(object a, Py_ssize_t n, cnp.ndarray like=None):
    """Whether ``a`` is a plain C-contiguous 1-D array of ``n`` values (of ``like``'s dtype when given),
    usable by the kernels as is."""
    return _is_vector(a, n) and (like is None or cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.PyArray_TYPE(like))


def is_c_contiguous(cnp.ndarray x):
    return cnp.PyArray_IS_C_CONTIGUOUS(x)


cdef bint _same_layout(object a, cnp.ndarray like):
    """Whether ``a`` is a plain C-contiguous array of ``like``'s shape and dtype: an ``add`` the fused
    sweep reads as it is, value i with value i of the output."""
    cdef int i
    if not (_plain_values(a) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.PyArray_TYPE(like)
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == cnp.PyArray_NDIM(like)):
        return False
    for i in range(cnp.PyArray_NDIM(like)):
        if cnp.PyArray_DIMS(<cnp.ndarray>a)[i] != cnp.PyArray_DIMS(like)[i]:
            return False
    return True


cdef const Epilogue* _epilogue_for(Epilogue* e, int act, object add, cnp.ndarray out):
    """``e`` filled for an output ``out`` (activation code ``act``, ``add`` in ``out``'s layout or None),
    or NULL where there is nothing to apply: the plain sweeps then run unchanged."""
    if act == 0 and add is None:
        return NULL
    e.act = act
    e.add = NULL if add is None else cnp.PyArray_DATA(<cnp.ndarray>add)
    e.y0 = cnp.PyArray_DATA(out)
    return e
