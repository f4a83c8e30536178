# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Moment and normalization kernels.

Every normalization in fastnorm is "moments over some axes, then a per-element affine", and a C-contiguous
buffer seen through the right view has only two reduction shapes:

* ``[N, C, S]``: the statistics of "channel" ``c`` are taken over ``N`` runs of ``S`` contiguous values,
  ``x[n, c, :]`` (BatchNorm channels first; a row of LayerNorm or InstanceNorm is the case ``N = 1``);
* ``[M, C]``: the statistics of column ``c`` are taken over the ``M`` rows (channels last).

Moments are computed in double precision on blocks of at most ``BLOCK`` contiguous values (shifted sums
with one accumulator per SIMD lane, the shift being a value of the block itself), and blocks are merged
with Chan's formula.  The set of blocks and the order of the merges depend only on the shape, never on
the thread count, so results are bitwise identical whatever the number of threads.

The normalization sweep computes ``(x - mean_hi) * scale + shift`` where ``mean_hi`` is the double-precision
mean rounded to the data's type and ``shift`` carries the remainder at the scale of the output: for float32
data at 1e5 +- 1 the subtraction ``x - mean_hi`` is exact, so folding the mean into a single float32 offset
``x * scale + (bias - mean * scale)`` (and losing up to half an ulp of 1e5, 0.004) is avoided.

Nothing here knows about layers, momentum or modes: the Python layer validates, builds the views and
passes raw contiguous buffers.
"""

cimport cython
cimport numpy as cnp
from cpython.dict cimport PyDict_Update
from cython.parallel cimport prange
from libc.float cimport DBL_EPSILON, DBL_MAX, FLT_EPSILON, FLT_MAX
from libc.math cimport fabs, frexp, ldexp, sqrt
from libc.stdlib cimport free
from libc.string cimport memcmp, memcpy, memset

import operator
import sys

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    static int fastnorm_openmp_enabled(void) { return 1; }
    #else
    static int fastnorm_openmp_enabled(void) { return 0; }
    #endif
    """
    int fastnorm_openmp_enabled() nogil

cdef extern from "_pool.h" nogil:
    int fastnorm_get_num_threads()
    void fastnorm_set_num_threads(int n)
    void fastnorm_set_thread_cap(int n)
    int fastnorm_own_runtime()
    void fastnorm_pool_init()
    void fastnorm_set_spin_ns(long ns)

fastnorm_pool_init()

cdef extern from "_simd.h" nogil:
    int fastnorm_select_isa(int on)
    int fastnorm_avx2_fma
    void fastnorm_store_fence()
    void fastnorm_copy_stream(char* dst, const char* src, size_t n)
    void fastnorm_shifted_sums_f32(const float* x, Py_ssize_t n, double shift, double* s1, double* s2)
    void fastnorm_shifted_sums_f64(const double* x, Py_ssize_t n, double shift, double* s1, double* s2)
    void fastnorm_column_sums_f32(const float* x, Py_ssize_t rows, Py_ssize_t ncols, Py_ssize_t ld,
                                  const float* base, double* s1, double* s2)
    void fastnorm_column_sums_f64(const double* x, Py_ssize_t rows, Py_ssize_t ncols, Py_ssize_t ld,
                                  const double* base, double* s1, double* s2)
    Py_ssize_t fastnorm_first_modified(const double* X, Py_ssize_t G, double inv, const double* mean,
                                       const double* rstd, double tol, double per_mean, double top, double eps,
                                       const double* eps_r2, int rms)
    void fastnorm_sweep_f32(const float* x, float* y, Py_ssize_t n, float hi, float scale, float shift)
    void fastnorm_sweep_f64(const double* x, double* y, Py_ssize_t n, double hi, double scale, double shift)
    void fastnorm_sweep_rows_f32(const float* x, float* y, Py_ssize_t rows, Py_ssize_t ncols,
                                 const float* p, Py_ssize_t plen)
    void fastnorm_sweep_rows_f64(const double* x, double* y, Py_ssize_t rows, Py_ssize_t ncols,
                                 const double* p, Py_ssize_t plen)
    void fastnorm_sweep_affine_f32(const float* x, float* y, Py_ssize_t n, float hi, float scale,
                                   float shift, const float* w, const float* b)
    void fastnorm_sweep_affine_f64(const double* x, double* y, Py_ssize_t n, double hi, double scale,
                                   double shift, const double* w, const double* b)
    void fastnorm_grad_sums_f32(const float* x, const float* dy, Py_ssize_t n, double mean, double rstd,
                                double* s_dy, double* s_dyx, double* s_xhat, double* s_xhat2)
    void fastnorm_grad_sums_f64(const double* x, const double* dy, Py_ssize_t n, double mean, double rstd,
                                double* s_dy, double* s_dyx, double* s_xhat, double* s_xhat2)
    void fastnorm_grad_row_elem_f32(const float* x, const float* dy, Py_ssize_t n, double mean, double rstd,
                                    const float* w, double* s_wdy, double* s_wdyx, double* s_xhat,
                                    double* s_xhat2, double* col_dy, double* col_dyx)
    void fastnorm_grad_row_elem_f64(const double* x, const double* dy, Py_ssize_t n, double mean,
                                    double rstd, const double* w, double* s_wdy, double* s_wdyx,
                                    double* s_xhat, double* s_xhat2, double* col_dy, double* col_dyx)
    void fastnorm_grad_sweep_f32(const float* x, const float* dy, float* dx, Py_ssize_t n, float hi,
                                 float alpha, float beta, float gamma)
    void fastnorm_grad_sweep_f64(const double* x, const double* dy, double* dx, Py_ssize_t n, double hi,
                                 double alpha, double beta, double gamma)
    void fastnorm_grad_run_sums_f32(const float* x, const float* dy, Py_ssize_t rows, Py_ssize_t K,
                                    Py_ssize_t length, const double* mean, const double* rstd, double* P1,
                                    double* P2, double* X)
    void fastnorm_grad_run_sums_f64(const double* x, const double* dy, Py_ssize_t rows, Py_ssize_t K,
                                    Py_ssize_t length, const double* mean, const double* rstd, double* P1,
                                    double* P2, double* X)
    void fastnorm_grad_sweep_runs_f32(const float* x, const float* dy, float* dx, Py_ssize_t rows,
                                      Py_ssize_t K, Py_ssize_t length, const float* hi, const float* alpha,
                                      const float* beta, const float* gamma)
    void fastnorm_grad_sweep_runs_f64(const double* x, const double* dy, double* dx, Py_ssize_t rows,
                                      Py_ssize_t K, Py_ssize_t length, const double* hi, const double* alpha,
                                      const double* beta, const double* gamma)
    void fastnorm_grad_sweep_elem_f32(const float* x, const float* dy, float* dx, Py_ssize_t n, float hi,
                                      float alpha, float beta, float gamma, const float* w)
    void fastnorm_grad_sweep_elem_f64(const double* x, const double* dy, double* dx, Py_ssize_t n,
                                      double hi, double alpha, double beta, double gamma, const double* w)
    void fastnorm_grad_column_sums_f32(const float* x, const float* dy, Py_ssize_t rows, Py_ssize_t ncols,
                                       Py_ssize_t ld, const double* mean, const double* rstd, double* s_dy,
                                       double* s_dyx, double* s_xhat, double* s_xhat2)
    void fastnorm_grad_column_sums_f64(const double* x, const double* dy, Py_ssize_t rows,
                                       Py_ssize_t ncols, Py_ssize_t ld, const double* mean, const double* rstd,
                                       double* s_dy, double* s_dyx, double* s_xhat, double* s_xhat2)
    void fastnorm_grad_sweep_rows_f32(const float* x, const float* dy, float* dx, Py_ssize_t rows,
                                      Py_ssize_t ncols, Py_ssize_t ld, const float* p, Py_ssize_t plen)
    void fastnorm_grad_sweep_rows_f64(const double* x, const double* dy, double* dx, Py_ssize_t rows,
                                      Py_ssize_t ncols, Py_ssize_t ld, const double* p, Py_ssize_t plen)
    void fastnorm_grad_sweep_stream_f32(const float* x, const float* dy, float* dx, Py_ssize_t n, float hi,
                                        float alpha, float beta, float gamma, const float* w)
    void fastnorm_grad_sweep_stream_f64(const double* x, const double* dy, double* dx, Py_ssize_t n,
                                        double hi, double alpha, double beta, double gamma, const double* w)
    void fastnorm_sweep_affine_stream_f32(const float* x, float* y, Py_ssize_t n, float hi, float scale,
                                          float shift, const float* w, const float* b)
    void fastnorm_sweep_affine_stream_f64(const double* x, double* y, Py_ssize_t n, double hi, double scale,
                                          double shift, const double* w, const double* b)
    void fastnorm_sweep_stream_f32(const float* x, float* y, Py_ssize_t n, const float* hi,
                                   const float* scale, const float* shift, Py_ssize_t period)
    void fastnorm_sweep_stream_f64(const double* x, double* y, Py_ssize_t n, const double* hi,
                                   const double* scale, const double* shift, Py_ssize_t period)

ctypedef fused floating:
    float
    double

# Values per moments block.  Small enough to sit in L1 while the block is summed, large enough that the
# Chan merge that follows each block (a few divisions) is negligible.
cdef enum:
    BLOCK = 2048

cdef struct Moments:
    double count
    double mean
    double var      # biased variance: the sum of squared deviations (M2) itself overflows first, e.g.
                    # 2e308 for the two values +-1e154, whose variance 1e308 is a double

# A per-channel parameter vector: float32 or float64, contiguous, or absent (NULL).
cdef struct Vec:
    const void* data
    bint is_f64


def set_fast_isa(bint on):
    """Use the AVX2+FMA statistics passes where the CPU has them (the default), or force the generic ones
    (for measurements and tests; not while a kernel runs).  Returns whether the fast ones are now in use."""
    return bool(fastnorm_select_isa(on))


set_fast_isa(True)


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


@cython.auto_pickle(False)  # applied once, by the call it was made for
cdef class Commit:
    """What a call changes besides its kernel's output, applied by the kernel call itself once that
    output is written.

    Python runs signal handlers (KeyboardInterrupt) between bytecodes: anywhere in Python code, never
    inside a kernel call.  So a call prepares everything beforehand (checks, the memory of the new running
    values) and its kernel call, after its sweep, copies the result into ``out=`` where it could not write
    there directly, updates the running statistics, and sets a layer's attributes (its batch count, what
    backward keeps).  A call interrupted or failing before its kernel runs has changed nothing; once the
    kernel has run, all of it is applied.

    ``Commit(namespace, values)``: ``namespace.update(values)`` is part of the application (a layer's
    ``__dict__`` and its new attribute values).
    """
    cdef object target
    cdef tuple copies
    cdef object running_mean, running_var
    cdef cnp.ndarray old_mean, old_var, new_mean, new_var   # float64, for running buffers of other kinds
    cdef bint plain
    cdef double factor, var_scale
    cdef dict namespace, values
    cdef object stats_shape
    cdef bint rms
    cdef tuple kept                 # the statistics to keep: given, or (mean, rstd) of the call
    cdef object owner, owner_class  # become(): an object whose class the application sets
    cdef readonly bint applied

    @property
    def stats(self):
        """The statistics a layer keeps for backward: (mean, rstd), or (rstd,) for RMSNorm, of
        ``stats_shape``; None before it is applied."""
        if self.kept is None or self.stats_shape is None:
            return self.kept
        mean, rstd = self.kept
        rstd = rstd.reshape(self.stats_shape)
        return (rstd,) if self.rms else (mean.reshape(self.stats_shape), rstd)

    def __init__(self, dict namespace=None, dict values=None):
        self.namespace = namespace
        self.values = values

    def prepare(self, object target=None, tuple running=None, object stats_shape=None, bint rms=False,
                tuple stats=None, tuple copies=None):
        """``target``: ``out=`` in the kernel's layout, where the kernel writes elsewhere (copied with
        casting).  ``running``: ``(running_mean, running_var, factor, var_scale)``, updated in float64
        with ``(1 - factor) * running + factor * batch``, the batch's being its mean and ``var *
        var_scale`` (averaged over the samples when the statistics are per sample and channel).
        ``stats_shape``: keep the call's statistics (see ``stats``) in this shape; ``stats``: the
        statistics to keep where they are known beforehand (frozen ones).  ``copies``: ``(destination,
        source)`` arrays, copied with casting."""
        self.target = target
        self.copies = copies
        self.stats_shape = stats_shape
        self.rms = rms
        if stats is not None:
            self.kept = stats
            self.stats_shape = None
        if running is None:
            return
        self.running_mean, self.running_var, self.factor, self.var_scale = running
        self.plain = _plain_running(self.running_mean, self.running_var)
        if not self.plain:  # read now, written with casting by NumPy's C copy at the end
            self.old_mean = np.array(self.running_mean, dtype=np.float64).reshape(-1)
            self.old_var = np.array(self.running_var, dtype=np.float64).reshape(-1)
            self.new_mean = np.empty_like(self.old_mean)
            self.new_var = np.empty_like(self.old_var)

    def apply(self, object result=None, object mean=None, object var=None, object rstd=None):
        """Apply it where no kernel runs (an empty input): ``result`` the output, mean, var and rstd the
        batch statistics (float64, per channel or per sample and channel)."""
        self._apply(result, mean, var, rstd)

    cdef int _apply(self, object result, object mean, object var, object rstd) except -1:
        cdef Py_ssize_t c, n, C, N
        cdef double* pm
        cdef double* pv
        cdef double am, av, nm, nv, f
        if self.target is not None:
            cnp.PyArray_CopyInto(<cnp.ndarray>self.target, <cnp.ndarray>result)
        if self.copies is not None:
            for destination, source in self.copies:
                cnp.PyArray_CopyInto(<cnp.ndarray>destination, <cnp.ndarray>source)
        if self.running_mean is not None and mean is not None:
            mean = np.ascontiguousarray(mean, dtype=np.float64)  # as they are, from the kernels
            var = np.ascontiguousarray(var, dtype=np.float64)
            C = cnp.PyArray_SIZE(<cnp.ndarray>self.running_mean)
            N = cnp.PyArray_SIZE(<cnp.ndarray>mean) // C
            pm = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean)
            pv = <double*>cnp.PyArray_DATA(<cnp.ndarray>var)
            f = self.factor
            for c in range(C):
                am = pm[c]
                av = pv[c] * self.var_scale
                for n in range(1, N):  # NumPy's mean over the samples: in order, then one division
                    am = am + pm[n * C + c]
                    av = av + pv[n * C + c] * self.var_scale
                if N > 1:
                    am = am / N
                    av = av / N
                if self.plain:
                    if cnp.PyArray_TYPE(<cnp.ndarray>self.running_mean) == cnp.NPY_FLOAT:
                        nm = (1.0 - f) * (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] + f * am
                        nv = (1.0 - f) * (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] + f * av
                        (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] = <float>nm
                        (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] = <float>nv
                    else:
                        nm = (1.0 - f) * (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] + f * am
                        nv = (1.0 - f) * (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] + f * av
                        (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] = nm
                        (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] = nv
                else:
                    (<double*>cnp.PyArray_DATA(self.new_mean))[c] = (
                        (1.0 - f) * (<double*>cnp.PyArray_DATA(self.old_mean))[c] + f * am)
                    (<double*>cnp.PyArray_DATA(self.new_var))[c] = (
                        (1.0 - f) * (<double*>cnp.PyArray_DATA(self.old_var))[c] + f * av)
            if not self.plain:  # one after the other: where they overlap, the variance lands last
                cnp.PyArray_CopyInto(<cnp.ndarray>self.running_mean, self.new_mean)
                cnp.PyArray_CopyInto(<cnp.ndarray>self.running_var, self.new_var)
        if self.stats_shape is not None and rstd is not None:
            self.kept = (mean, rstd)
        if self.namespace is not None:
            PyDict_Update(self.namespace, self.values)
            self.namespace = self.values = None  # the values may hold this commit (a layer's saved stats)
        if self.owner is not None:
            self.owner.__class__ = self.owner_class
            self.owner = self.owner_class = None
        self.applied = True
        return 0

    def become(self, object owner, type cls):
        """Also set ``owner.__class__ = cls`` in the application, after the namespace's update (a lazy
        layer's first call: it becomes the non-lazy class with its first forward)."""
        self.owner = owner
        self.owner_class = cls


cdef inline int _apply(object commit, object result, object mean, object var, object rstd) except -1:
    if commit is not None:
        (<Commit>commit)._apply(result, mean, var, rstd)
    return 0


def parallel_copy(cnp.ndarray src, cnp.ndarray dst, int nthreads):
    """``dst[...] = src`` (C-contiguous, same size) by ``nthreads`` threads, each copying one slice: the
    bench's floor for a call that moves as many bytes.  It stores as the kernels store an output: with
    non-temporal stores when the copy touches (reads plus writes) as many bytes as make a kernel stream
    its output, with memcpy below."""
    cdef char* ps = <char*>cnp.PyArray_DATA(src)
    cdef char* pd = <char*>cnp.PyArray_DATA(dst)
    cdef Py_ssize_t n = cnp.PyArray_NBYTES(src), part, t
    if n != cnp.PyArray_NBYTES(dst) or not (cnp.PyArray_IS_C_CONTIGUOUS(src) and cnp.PyArray_IS_C_CONTIGUOUS(dst)):
        raise ValueError("parallel_copy: expected C-contiguous arrays of the same size")
    cdef bint stream = _streams(2 * n)
    nthreads = max(1, nthreads)
    part = ((n + nthreads - 1) // nthreads + 63) & ~63  # whole cache lines per thread
    with nogil:
        if nthreads == 1:
            _copy(pd, ps, n, stream)
        else:
            for t in prange(nthreads, schedule="static", chunksize=1, num_threads=nthreads):
                if t * part < n:
                    _copy(pd + t * part, ps + t * part, min(part, n - t * part), stream)


cdef void _copy(char* dst, const char* src, Py_ssize_t n, bint stream) noexcept nogil:
    if stream:
        fastnorm_copy_stream(dst, src, n)
        fastnorm_store_fence()  # once per thread that streamed, as the kernels do
    else:
        memcpy(dst, src, n)


def fast_isa():
    """Whether the AVX2+FMA statistics passes are in use."""
    return bool(fastnorm_avx2_fma)


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fastnorm_openmp_enabled())


def get_num_threads():
    """The process's thread count (what set_num_threads and threadpoolctl set)."""
    return fastnorm_get_num_threads()


def set_num_threads(int n, int cap):
    """Set the thread count to ``n``, at most ``cap``, and keep ``cap`` for threadpoolctl's settings."""
    fastnorm_set_thread_cap(cap)
    fastnorm_set_num_threads(n)


def own_runtime():
    """True when the parallel loops run on fastnorm's own pool (_pool.h), not an OpenMP runtime."""
    return bool(fastnorm_own_runtime())


def set_spin(double seconds):
    """How long an idle worker of fastnorm's pool waits for the next region before it sleeps."""
    fastnorm_set_spin_ns(<long>(seconds * 1e9))


cdef inline Vec _vec(object a):
    cdef Vec v
    if a is None:
        v.data = NULL
        v.is_f64 = False
    else:
        v.data = cnp.PyArray_DATA(<cnp.ndarray>a)
        v.is_f64 = cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_DOUBLE
    return v


cdef inline double _at(Vec v, Py_ssize_t i, double default) noexcept nogil:
    if v.data == NULL:
        return default
    if v.is_f64:
        return (<const double*>v.data)[i]
    return (<const float*>v.data)[i]


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


# ---------------------------------------------------------------------------------------------------------
# Moments
# ---------------------------------------------------------------------------------------------------------

cdef inline Moments _run_moments(const floating* x, Py_ssize_t n) noexcept nogil:
    """Moments of ``n`` (1 <= n <= BLOCK) contiguous values.

    Shifted sums in double precision: with the shift being one of the values, ``M2 = S2 - S1**2 / n``
    loses at most a factor ``n`` of double precision even in the worst case, and typically nothing.
    float64 data beyond about 1e150 overflow the sum of squares: such a block is summed again scaled by
    a power of two (exact), the only cost of the check being a comparison per block.
    """
    cdef double shift = x[0]
    cdef double t1, t2, dm
    cdef Moments m
    if floating is float:
        fastnorm_shifted_sums_f32(x, n, shift, &t1, &t2)
    else:
        fastnorm_shifted_sums_f64(x, n, shift, &t1, &t2)
        if not t2 <= DBL_MAX:  # overflow (or a NaN or an infinity in the data, which the redo keeps)
            return _scaled_moments(x, n, 1)
    dm = t1 / n
    m.count = <double>n
    m.mean = shift + dm
    m.var = (t2 - t1 * dm) / n
    if m.var < 0.0:
        m.var = 0.0
    return m


cdef inline int _scale_exponent(double big) noexcept nogil:
    """k such that values up to ``big`` scaled by 2**-k sum and square without overflow in a block or
    a merge (at most 2**500 after scaling, their squares' sum over 2**13 values below 2**1014); 0 when
    no scaling is needed or ``big`` is not finite."""
    cdef int e
    if not big <= DBL_MAX:
        return 0
    frexp(big, &e)
    return e - 500 if e > 500 else 0


cdef Moments _scaled_moments(const double* x, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """The moments of ``n`` float64 values ``stride`` apart, scaled by 2**-k before the shift and the
    squares (their plain sums overflowed): the shifted sums of _run_moments, scaled back at the end."""
    cdef double big = 0.0, s, shift, d, t1 = 0.0, t2 = 0.0, dm
    cdef Py_ssize_t i
    cdef int k
    cdef Moments m
    for i in range(n):
        big = max(big, fabs(x[i * stride]))
    k = _scale_exponent(big)
    s = ldexp(1.0, -k)
    shift = x[0] * s
    for i in range(n):
        d = x[i * stride] * s - shift
        t1 = t1 + d
        t2 = t2 + d * d
    dm = t1 / n
    m.count = <double>n
    m.mean = x[0] + ldexp(dm, k)
    m.var = max(0.0, (t2 - t1 * dm) / n)
    m.var = ldexp(m.var, 2 * k)  # inf where the variance itself is beyond the doubles
    return m


cdef inline void _merge(Moments* a, Moments b) noexcept nogil:
    """Chan's formula: fold the moments ``b`` into ``a``.  In terms of variances, and the squared
    difference of the means taken as ``(delta * wa) * (delta * wb)``: no intermediate overflows unless
    the variance does."""
    cdef double n, delta, wa, wb
    if b.count == 0.0:
        return
    if a.count == 0.0:
        a[0] = b
        return
    n = a.count + b.count
    wb = b.count / n
    wa = a.count / n
    delta = b.mean - a.mean
    a.var = a.var * wa + b.var * wb + (delta * wa) * (delta * wb)
    a.mean = _merged_mean(a.mean, b.mean, delta, wa, wb)
    a.count = n


cdef inline double _merged_mean(double ma, double mb, double delta, double wa, double wb) noexcept nogil:
    """The mean of two merged sets: ``ma + delta * wb`` (exactly ``ma`` when the means are equal), or
    ``ma * wa + mb * wb`` where the difference of the means overflows (means near +-1.8e308)."""
    if delta - delta == 0.0:
        return ma + delta * wb
    return ma * wa + mb * wb


cdef inline Moments _strided_moments(const floating* x, Py_ssize_t nruns, Py_ssize_t runlen,
                                     Py_ssize_t stride) noexcept nogil:
    """Moments of ``nruns`` runs of ``runlen`` contiguous values, run ``r`` starting at ``x + r * stride``.

    The canonical order: runs in order, blocks of BLOCK values in order within a run.
    """
    cdef Moments acc
    cdef Py_ssize_t r, b
    cdef const floating* p
    acc.count = 0.0
    acc.mean = 0.0
    acc.var = 0.0
    for r in range(nruns):
        p = x + r * stride
        for b in range(0, runlen, 2048):  # BLOCK
            _merge(&acc, _run_moments(p + b, min(<Py_ssize_t>BLOCK, runlen - b)))
    return acc


cdef void _block_moments_ncs(const floating* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t blocks_per_run,
                             Py_ssize_t c, Py_ssize_t k, Moments* out) noexcept nogil:
    """Block ``k`` (in canonical order) of channel ``c`` of an ``[N, C, S]`` buffer."""
    cdef Py_ssize_t n = k // blocks_per_run
    cdef Py_ssize_t start = (k % blocks_per_run) * BLOCK
    out[0] = _run_moments(x + (n * C + c) * S + start, min(<Py_ssize_t>BLOCK, S - start))


cdef int _moments_ncs(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                      double* mean, double* var, int nthreads) noexcept nogil:
    """Per-channel mean and biased variance of an ``[N, C, S]`` buffer (N * S >= 1); -1: out of memory."""
    cdef Py_ssize_t c, k, i
    cdef Py_ssize_t blocks_per_run = (S + BLOCK - 1) // BLOCK
    cdef Py_ssize_t per_channel = N * blocks_per_run
    cdef Moments m
    cdef Moments* partial
    if nthreads <= 1 or C >= 4 * nthreads:
        if nthreads <= 1:  # no thread team for one thread
            for c in range(C):
                _store_moments(_strided_moments(x + c * S, N, S, C * S), c, mean, var)
        else:
            for c in prange(C, schedule="static", num_threads=nthreads):
                _store_moments(_strided_moments(x + c * S, N, S, C * S), c, mean, var)
        return 0
    # Few channels for the threads: compute the blocks of all channels in parallel, then merge each
    # channel's blocks in the same canonical order as _strided_moments (so the bits do not change).
    partial = <Moments*>_alloc(C * per_channel * sizeof(Moments))
    if partial == NULL:
        return -1
    for i in prange(C * per_channel, schedule="static", num_threads=nthreads):
        _block_moments_ncs(x, C, S, blocks_per_run, i // per_channel, i % per_channel, partial + i)
    for c in range(C):
        m = partial[c * per_channel]
        for k in range(1, per_channel):
            _merge(&m, partial[c * per_channel + k])
        _store_moments(m, c, mean, var)
    free(partial)
    return 0


cdef inline void _store_moments(Moments m, Py_ssize_t c, double* mean, double* var) noexcept nogil:
    mean[c] = m.mean
    var[c] = m.var


cdef void _column_block_moments(const floating* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                                Py_ssize_t c0, Py_ssize_t c1, double* bmean, double* bvar) noexcept nogil:
    """Moments of columns ``c0 <= c < c1`` over rows ``r0 <= r < r1`` of an ``[M, C]`` buffer, shifted by
    row ``r0``, into bmean[c], bvar[c]; a float64 column whose sum of squares overflowed is summed again
    scaled, as in _run_moments."""
    cdef const floating* base = x + r0 * C
    cdef Py_ssize_t c
    cdef double dm
    cdef double n = <double>(r1 - r0)
    cdef Moments m
    if floating is float:
        fastnorm_column_sums_f32(base + c0, r1 - r0, c1 - c0, C, base + c0, bmean + c0, bvar + c0)
    else:
        fastnorm_column_sums_f64(base + c0, r1 - r0, c1 - c0, C, base + c0, bmean + c0, bvar + c0)
    for c in range(c0, c1):
        if floating is double:
            if not bvar[c] <= DBL_MAX:
                m = _scaled_moments(base + c, r1 - r0, C)
                bmean[c] = m.mean
                bvar[c] = m.var
                continue
        dm = bmean[c] / n
        bvar[c] = (bvar[c] - bmean[c] * dm) / n
        if bvar[c] < 0.0:
            bvar[c] = 0.0
        bmean[c] = <double>base[c] + dm


cdef Py_ssize_t _rows_per_block(Py_ssize_t C) noexcept nogil:
    # A function of the shape only: the blocking (hence the bits) must not depend on the thread count.
    return max(<Py_ssize_t>64, 16384 // C)


cdef Py_ssize_t _column_blocks(Py_ssize_t nblocks, Py_ssize_t C, int nthreads) noexcept nogil:
    """Column blocks per row block of the channels-last passes: the columns are split too when the row
    blocks are fewer than the threads need (a batch of 8 or 64 rows by columns: BatchNorm on small maps
    went by one thread).  A column's sums do not depend on the split, so the bits do not either."""
    if nthreads <= 1 or nblocks >= 2 * nthreads:
        return 1
    return max(<Py_ssize_t>1, min(C // 512, (2 * nthreads + nblocks - 1) // nblocks))


cdef struct Tiles:
    # The tiles of a channels-last pass over [M, C]: row blocks of ``rb`` rows (fixed by the shape: the
    # bits depend on them), each split into ``ncb`` column blocks of ``cw`` columns (for the threads).
    Py_ssize_t M, C, rb, nblocks, ncb, cw


cdef inline Tiles _tiles(Py_ssize_t M, Py_ssize_t C, int nthreads) noexcept nogil:
    cdef Tiles g
    g.M = M
    g.C = C
    g.rb = _rows_per_block(C)
    g.nblocks = (M + g.rb - 1) // g.rb
    g.ncb = _column_blocks(g.nblocks, C, nthreads)
    g.cw = ((C + g.ncb - 1) // g.ncb + 15) // 16 * 16  # rounded up to whole cache lines
    return g


cdef inline bint _tile(const Tiles* g, Py_ssize_t t, Py_ssize_t* blk, Py_ssize_t* r0, Py_ssize_t* rows,
                       Py_ssize_t* c0, Py_ssize_t* ncols) noexcept nogil:
    """Tile ``t`` (0 <= t < nblocks * ncb): row block t // ncb, column block t % ncb.  False for an empty
    one (the last column blocks of a rounded-up width)."""
    blk[0] = t // g.ncb
    r0[0] = blk[0] * g.rb
    rows[0] = min(g.rb, g.M - r0[0])
    c0[0] = (t % g.ncb) * g.cw
    ncols[0] = min(g.cw, g.C - c0[0])
    return ncols[0] > 0


cdef void _moments_tile(const floating* x, const Tiles* g, Py_ssize_t t, double* partial) noexcept nogil:
    """Tile ``t`` of _moments_mc: its columns' moments over its rows, into row block ``blk``'s partials."""
    cdef Py_ssize_t blk, r0, rows, c0, ncols
    if _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        _column_block_moments(x, r0, r0 + rows, g.C, c0, c0 + ncols, partial + 2 * g.C * blk,
                              partial + 2 * g.C * blk + g.C)


cdef inline Py_ssize_t _moments_mc_scratch(Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    """The doubles of scratch memory _moments_mc needs."""
    return (M + _rows_per_block(C) - 1) // _rows_per_block(C) * 2 * C


cdef void _moments_mc(const floating* x, Py_ssize_t M, Py_ssize_t C, double* mean, double* var,
                      int nthreads, double* partial) noexcept nogil:
    """Per-column mean and biased variance of an ``[M, C]`` buffer (M >= 1), with the caller's scratch
    memory (_moments_mc_scratch doubles): a caller sweeping several samples allocates before its first
    write."""
    cdef Tiles g = _tiles(M, C, nthreads)
    cdef Py_ssize_t rb = g.rb, nblocks = g.nblocks
    cdef Py_ssize_t blk, c, t
    cdef double* bmean
    cdef double* bvar
    cdef double na, nb, wa, wb, delta
    if nthreads <= 1:  # no thread team for one thread
        for t in range(nblocks * g.ncb):
            _moments_tile(x, &g, t, partial)
    else:
        for t in prange(nblocks * g.ncb, schedule="static", num_threads=nthreads):
            _moments_tile(x, &g, t, partial)
    # Chan merges of the row blocks, in order (as _merge); every column of a block has the same count, so
    # the weights are computed once per block and the column loop vectorizes.
    na = <double>min(M, rb)
    for c in range(C):
        mean[c] = partial[c]
        var[c] = partial[C + c]
    for blk in range(1, nblocks):
        nb = <double>(min(M, (blk + 1) * rb) - blk * rb)
        wb = nb / (na + nb)
        wa = na / (na + nb)
        bmean = partial + 2 * C * blk
        bvar = bmean + C
        for c in range(C):
            delta = bmean[c] - mean[c]
            var[c] = var[c] * wa + bvar[c] * wb + (delta * wa) * (delta * wb)
            mean[c] = _merged_mean(mean[c], bmean[c], delta, wa, wb)
        na = na + nb


# ---------------------------------------------------------------------------------------------------------
# Normalization sweeps
# ---------------------------------------------------------------------------------------------------------

cdef inline void _affine(double mean, double var, double eps, Vec weight, Vec bias, Py_ssize_t c,
                         floating* hi, floating* scale, floating* shift) noexcept nogil:
    """Fold channel ``c``'s statistics and affine into ``y = (x - hi) * scale + shift``.

    ``hi`` is the mean rounded to the data's type; the rest of the mean, ``mean - hi``, goes into
    ``shift`` as ``- (mean - hi) * scale``.  ``x - hi`` is exact for data near its mean (Sterbenz), so no
    precision of a large mean is lost, and the remainder is added at the scale of the output, where its
    rounding is a fraction of an ulp of ``y``.
    """
    cdef double s = _at(weight, c, 1.0) * (1.0 / sqrt(var + eps))
    hi[0] = <floating>mean
    scale[0] = <floating>s
    shift[0] = <floating>(_at(bias, c, 0.0) - (mean - <double>hi[0]) * s)


# Streamed stores that land a little ahead of the loads that follow them, modulo 4 KiB, stall those
# loads: the CPU matches a load against the pending stores by the low 12 bits of the address, and a
# non-temporal store stays pending for long.  Two heap blocks can sit so.  A streamed InstanceNorm
# (8, 64, 64, 64) whose output was 16, 32 or 64 bytes ahead of its input took 1.75x, 1.34x and 1.15x
# the time of a level one; BatchNorm eval on (N, 64, 256), 16 bytes ahead, 1.35x.  Such a sweep uses
# ordinary stores, which leave the store queue at once: as fast as level streaming in a loop over
# cached data, up to a fifth slower from memory.  (Staging each block in cache and streaming it out
# helped within a run but not across runs: the end of one run's output still lands just ahead of the
# start of the next run's input.)
cdef size_t alias_window = 256


def set_alias_window(size_t nbytes):
    """Sweeps whose output lands less than ``nbytes`` ahead of an input modulo 4 KiB do not stream
    (0: any may; 4096: only level ones).  For measurements and tests; returns the previous value."""
    global alias_window
    previous = alias_window
    alias_window = nbytes
    return previous


cdef inline bint _lands_ahead(const void* y, const void* p) noexcept nogil:
    """Whether stores to ``y`` land just ahead of loads from ``p`` modulo 4 KiB."""
    cdef size_t d = (<size_t>y - <size_t>p) & 4095
    return p != NULL and 0 < d < alias_window


cdef inline void _sweep(const floating* x, floating* y, Py_ssize_t n, const floating* hi,
                        const floating* scale, const floating* shift, bint stream) noexcept nogil:
    """One channel's run: ``y = (x - hi[0]) * scale[0] + shift[0]``."""
    if stream and _lands_ahead(y, x):
        stream = False  # see _lands_ahead
    if floating is float:
        if stream:
            fastnorm_sweep_stream_f32(x, y, n, hi, scale, shift, 0)
        else:
            fastnorm_sweep_f32(x, y, n, hi[0], scale[0], shift[0])
    else:
        if stream:
            fastnorm_sweep_stream_f64(x, y, n, hi, scale, shift, 0)
        else:
            fastnorm_sweep_f64(x, y, n, hi[0], scale[0], shift[0])


cdef inline void _sweep_affine(const floating* x, floating* y, Py_ssize_t n, floating hi, floating scale,
                               floating shift, const floating* w, const floating* b, bint stream) noexcept nogil:
    """``y = ((x - hi) * scale + shift) * w + b`` with per-element ``w`` and ``b`` (b may be NULL)."""
    if stream and _lands_ahead(y, x):  # not w, b: measured, they made no difference, and rows of
        stream = False                  # LayerNorm would then stream or not by turns (see _lands_ahead)
    if floating is float:
        if stream:
            fastnorm_sweep_affine_stream_f32(x, y, n, hi, scale, shift, w, b)
        else:
            fastnorm_sweep_affine_f32(x, y, n, hi, scale, shift, w, b)
    else:
        if stream:
            fastnorm_sweep_affine_stream_f64(x, y, n, hi, scale, shift, w, b)
        else:
            fastnorm_sweep_affine_f64(x, y, n, hi, scale, shift, w, b)


cdef inline void _sweep_rows(const floating* x, floating* y, Py_ssize_t rows, Py_ssize_t ncols,
                             const floating* p, Py_ssize_t plen, bint stream) noexcept nogil:
    """``rows`` rows of ``ncols`` values, column ``c`` with ``p[c], p[plen + c], p[2 * plen + c]``."""
    if stream and _lands_ahead(y, x):
        stream = False  # see _lands_ahead
    if stream:
        if floating is float:
            fastnorm_sweep_stream_f32(x, y, rows * ncols, p, p + plen, p + 2 * plen, ncols)
        else:
            fastnorm_sweep_stream_f64(x, y, rows * ncols, p, p + plen, p + 2 * plen, ncols)
    elif floating is float:
        fastnorm_sweep_rows_f32(x, y, rows, ncols, p, plen)
    else:
        fastnorm_sweep_rows_f64(x, y, rows, ncols, p, plen)


def last_level_cache_bytes():
    """Size of the CPU's last-level cache as Linux reports it (sysfs), or 32 MiB where it does not."""
    import glob
    size = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
            size = max(size, int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]])
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return size or 32 << 20


# Calls that touch at least this many bytes (inputs and output) write their output with non-temporal
# stores: it would not stay in the last-level cache anyway, and streaming it saves reading its lines
# before writing them.  Below, the output is left in the cache for whatever reads it next.  Three
# quarters of the last-level cache, glibc's threshold for non-temporal memcpy (24 MiB for 32 MiB of L3;
# LayerNorm (4096, 768), which touches 24 MiB, measured 5-13% faster streamed, in a loop and between
# other work).
cdef Py_ssize_t stream_bytes = 3 * last_level_cache_bytes() // 4


# Short channels-first runs (BatchNorm1d on (N, C, L) with small L, BatchNorm2d on small maps) go by the
# columns of [N, C * S]: a kernel call per run of a few values costs more than the values themselves
# (about 60 ns a run).  The columns cost a few ns per column for their statistics, so training and
# backward take them for runs shorter than ``short_run`` when there are at least as many rows as values
# in a run (N >= S); the sweep alone (eval) for runs shorter than SHORT_SWEEP.  Measured on
# (N, 128, S), 1 thread: training 2.3x faster at N = 64, S = 16 and 2x at N = 256, S = 49; eval equal
# at S = 16 and slower by columns beyond.
cdef enum:
    SHORT_SWEEP = 16

cdef Py_ssize_t short_run = 64


def set_short_run(Py_ssize_t n):
    """Set the run length below which channels-first training and backward go by columns (for
    measurements); returns the previous one."""
    global short_run
    previous = short_run
    short_run = n
    return previous


def get_short_run():
    return short_run


def set_stream_bytes(Py_ssize_t nbytes):
    """Set the size from which outputs are streamed (for measurements); returns the previous one."""
    global stream_bytes
    previous = stream_bytes
    stream_bytes = nbytes
    return previous


cdef inline bint _streams(Py_ssize_t nbytes) noexcept nogil:
    """Whether a call touching ``nbytes`` in all streams its output."""
    return nbytes >= stream_bytes


cdef void _fence_streams(bint stream, int nthreads) noexcept nogil:
    """Make a kernel's streamed stores visible: they are weakly ordered, so every thread that made them
    fences once before the kernel returns.  Once per kernel, not per sweep: a fence per 4 KiB run (GroupNorm,
    a channel at a time) cost a quarter of the call's time.  A static schedule of ``nthreads`` iterations
    gives one to each thread of the team that did the work."""
    cdef int t
    if not stream:
        return
    fastnorm_store_fence()
    if nthreads > 1:
        for t in prange(nthreads, schedule="static", chunksize=1, num_threads=nthreads):
            fastnorm_store_fence()


cdef void _normalize_ncs(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                         const floating* p, int nthreads, bint stream) noexcept nogil:
    cdef Py_ssize_t run, c
    if nthreads <= 1:
        for run in range(N * C):
            c = run % C
            _sweep(x + run * S, y + run * S, S, p + c, p + C + c, p + 2 * C + c, stream)
        return
    for run in prange(N * C, schedule="static", num_threads=nthreads):
        c = run % C
        _sweep(x + run * S, y + run * S, S, p + c, p + C + c, p + 2 * C + c, stream)


cdef void _normalize_mc(const floating* x, floating* y, Py_ssize_t M, Py_ssize_t C, const floating* p,
                        int nthreads, bint stream) noexcept nogil:
    """Channels-last sweep.  The per-channel values are tiled ``rep`` times so that the sweep runs over
    rows of ``rep * C`` values (a short row, e.g. C = 64, would pay the loop set-up every 64 values);
    ``rep`` is a multiple of 4 so that a tiled row is a whole number of SIMD vectors."""
    cdef Py_ssize_t rep = 4 * max(<Py_ssize_t>1, 256 // C)
    cdef Py_ssize_t L = rep * C
    cdef Py_ssize_t full = M // rep
    cdef Py_ssize_t rows_per_task = max(<Py_ssize_t>1, 65536 // L)
    cdef Py_ssize_t ntasks = (full + rows_per_task - 1) // rows_per_task
    cdef Py_ssize_t k, j, task, r0
    cdef floating* tiled
    tiled = NULL if stream or M < rep or C >= 256 else <floating*>_alloc(3 * L * sizeof(floating))
    if tiled == NULL:
        # Streaming stores reach memory bandwidth with the per-channel values as they are (tiling them
        # would only crowd L1); a few rows, or rows of 256 values or more, are not worth tiling (BatchNorm
        # by columns, [64, 12544]: tiling copied 600 KB); and without memory for the tile, the untiled
        # sweep gives the same bits.
        if nthreads <= 1:
            _sweep_rows(x, y, M, C, p, C, stream)
        else:
            rows_per_task = max(<Py_ssize_t>1, 65536 // C)
            ntasks = (M + rows_per_task - 1) // rows_per_task
            for task in prange(ntasks, schedule="static", num_threads=nthreads):
                r0 = task * rows_per_task
                _sweep_rows(x + r0 * C, y + r0 * C, min(rows_per_task, M - r0), C, p, C, stream)
        return
    for k in range(3):
        for j in range(rep):
            memcpy(tiled + k * L + j * C, p + k * C, C * sizeof(floating))
    if nthreads <= 1:
        _sweep_rows(x, y, full, L, tiled, L, stream)
    else:
        for task in prange(ntasks, schedule="static", num_threads=nthreads):
            r0 = task * rows_per_task
            _sweep_rows(x + r0 * L, y + r0 * L, min(rows_per_task, full - r0), L, tiled, L, stream)
    # The last M % rep rows of the tensor: one partial tiled row.
    _sweep_rows(x + full * L, y + full * L, 1, (M - full * rep) * C, tiled, L, stream)
    free(tiled)


# ---------------------------------------------------------------------------------------------------------
# Training-mode normalization: statistics of each "row", then the sweep of that row
# ---------------------------------------------------------------------------------------------------------
# A row r of an [N, R, S] buffer is N runs of S values (x[n, r, :]).  BatchNorm channels first: a row is
# a channel (R = C).  LayerNorm, InstanceNorm, GroupNorm, RMSNorm: N = 1 and a row is one contiguous
# normalization group.  Only the affine that follows differs:

cdef struct RowAffine:
    Vec weight
    Vec bias
    Py_ssize_t sub          # per-channel mode: values per sub-run sharing one channel's scale and shift;
    Py_ssize_t groups       # sub-run j of row r belongs to channel (r % groups) * (S // sub) + j
    bint per_element        # weight/bias indexed by the position in the run (LayerNorm, RMSNorm); they
                            # then have the data's dtype
    bint rms                # scale by the root mean square, without centering (RMSNorm)

# Rows are split into pieces of this many values when there are too few rows for the threads.
cdef enum:
    PIECE = 32768


cdef inline void _center_and_scale(double mean, double var, double eps, bint rms, double* center,
                                   double* inv) noexcept nogil:
    """The center and the inverse scale of a group.  Branch-free but for rms, so that a loop of it over
    rows vectorizes (a short row's time is its chain of division and square root); float64 RMSNorm data
    beyond 1e154 then need _rms_in_range."""
    if rms:
        center[0] = 0.0
        inv[0] = 1.0 / sqrt(var + mean * mean + eps)
    else:
        center[0] = mean
        inv[0] = 1.0 / sqrt(var + eps)


cdef inline void _rms_in_range(double mean, double var, double eps, double* inv) noexcept nogil:
    """RMSNorm's ``1 / sqrt(var + mean**2 + eps)`` again, scaled by a power of two, where ``mean**2``
    overflowed (float64 data beyond 1e154) although the root mean square does not."""
    cdef int k
    if var + mean * mean <= DBL_MAX:
        return
    k = _scale_exponent(max(fabs(mean), sqrt(var)))
    mean = ldexp(mean, -k)
    inv[0] = ldexp(1.0 / sqrt(ldexp(var, -2 * k) + mean * mean + ldexp(eps, -2 * k)), -k)


cdef void _sweep_span(const floating* xrun, floating* yrun, Py_ssize_t start, Py_ssize_t length,
                      Py_ssize_t r, Py_ssize_t S, double center, double inv, const RowAffine* a,
                      bint stream) noexcept nogil:
    """Normalize values ``start <= i < start + length`` of one run of row ``r``."""
    cdef floating hi = <floating>center
    cdef double rem = center - <double>hi  # the part of the mean below the precision of the data
    cdef floating scale, shift
    cdef double s
    cdef Py_ssize_t pos = start, end = start + length, j, stop, c, first, i
    cdef const floating* b
    if a.per_element:
        scale = <floating>inv
        shift = <floating>(-rem * inv)
        if a.weight.data == NULL:
            _sweep(xrun + start, yrun + start, length, &hi, &scale, &shift, stream)
        else:
            b = NULL if a.bias.data == NULL else <const floating*>a.bias.data + start
            _sweep_affine(xrun + start, yrun + start, length, hi, scale, shift,
                          <const floating*>a.weight.data + start, b, stream)
        return
    first = (r % a.groups) * (S // a.sub)
    if a.sub == 1:
        # One value per channel (GroupNorm on (N, C) or 1x1 maps): the loop below, without its per-run
        # steps, which cost 6 ns a value ((256, 512), 32 groups: 1650 -> 230 us with the row path).
        for i in range(pos, end):
            s = inv * _at(a.weight, first + i, 1.0)
            yrun[i] = (xrun[i] - hi) * <floating>s + <floating>(_at(a.bias, first + i, 0.0) - rem * s)
        return
    j = pos // a.sub
    while pos < end:
        stop = min(end, (j + 1) * a.sub)
        c = first + j
        s = inv * _at(a.weight, c, 1.0)
        scale = <floating>s
        shift = <floating>(_at(a.bias, c, 0.0) - rem * s)
        if stop - pos < SHORT_SWEEP:
            # A short sub-run (GroupNorm on small maps): inline, the same operations as the sweep.
            for i in range(pos, stop):
                yrun[i] = (xrun[i] - hi) * scale + shift
        else:
            _sweep(xrun + pos, yrun + pos, stop - pos, &hi, &scale, &shift, stream)
        pos = stop
        j += 1


cdef void _norm_row(const floating* x, floating* y, Py_ssize_t r, Py_ssize_t N, Py_ssize_t R,
                    Py_ssize_t S, const RowAffine* a, double eps, double* mean, double* var,
                    bint stream) noexcept nogil:
    """Statistics of row ``r``, then its normalization while its runs are still in cache."""
    cdef double center, inv
    cdef Py_ssize_t n
    _store_moments(_strided_moments(x + r * S, N, S, R * S), r, mean, var)
    _center_and_scale(mean[r], var[r], eps, a.rms, &center, &inv)
    if floating is double and a.rms:
        _rms_in_range(mean[r], var[r], eps, &inv)
    for n in range(N):
        _sweep_span(x + (n * R + r) * S, y + (n * R + r) * S, 0, S, r, S, center, inv, a, stream)


cdef enum:
    BATCH_ROWS = 64        # rows (N = 1) go in batches of at most this many rows
    BATCH_VALUES = 4096    # and of at most this many values, so that a batch is in cache for its sweep


cdef inline Py_ssize_t _batch_rows(Py_ssize_t N, Py_ssize_t R, Py_ssize_t S, int nthreads) noexcept nogil:
    """Rows per batch for _norm_batch / _grad_batch, or 0 where rows go one at a time: long rows, runs of
    several samples (N > 1), or too few rows to share among the threads.  Batches of rows of up to 512
    values: InstanceNorm (32, 256, 8, 8) 470 -> 300 us, LayerNorm (4096, 128) 280 -> 210 us, 1 thread."""
    cdef Py_ssize_t rows
    if N != 1 or S < 1:
        return 0
    rows = min(<Py_ssize_t>BATCH_ROWS, BATCH_VALUES // S)
    if rows < 8:  # long rows: a row's own work hides its chain of divisions
        return 0
    if nthreads > 1:
        if R < 4 * nthreads and S * R >= BATCH_VALUES:
            return 0
        rows = max(<Py_ssize_t>2, min(rows, R // (4 * nthreads)))  # at least 4 batches a thread
    return rows


cdef void _norm_batch(const floating* x, floating* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t S,
                      const RowAffine* a, double eps, double* mean, double* var, bint stream) noexcept nogil:
    """Rows r0 <= r < r1 (at most BATCH_ROWS of them) of an [1, R, S] buffer: what _norm_row does, one
    step for all the rows at a time.  A short row's time is the latency of its chain of divisions and
    square root; with the rows' chains side by side they overlap (InstanceNorm on (8, 256, 2, 2): about
    40 -> 20 ns a row).  The same operations, so the same bits."""
    cdef double center[BATCH_ROWS]
    cdef double inv[BATCH_ROWS]
    cdef Py_ssize_t r
    for r in range(r0, r1):
        _store_moments(_run_moments(x + r * S, S), r, mean, var)
    for r in range(r0, r1):
        _center_and_scale(mean[r], var[r], eps, a.rms, &center[r - r0], &inv[r - r0])
    if floating is double and a.rms:
        for r in range(r0, r1):
            _rms_in_range(mean[r], var[r], eps, &inv[r - r0])
    for r in range(r0, r1):
        _sweep_span(x + r * S, y + r * S, 0, S, r, S, center[r - r0], inv[r - r0], a, stream)


cdef void _norm_piece(const floating* x, floating* y, Py_ssize_t r, Py_ssize_t n, Py_ssize_t start,
                      Py_ssize_t N, Py_ssize_t R, Py_ssize_t S, const RowAffine* a, double eps,
                      const double* mean, const double* var, bint stream) noexcept nogil:
    """The piece of run n of row r from ``start``, once the row's statistics are known.  (A function of
    its own: the locals whose address is taken must be private to the thread.)"""
    cdef double center, inv
    _center_and_scale(mean[r], var[r], eps, a.rms, &center, &inv)
    if floating is double and a.rms:
        _rms_in_range(mean[r], var[r], eps, &inv)
    _sweep_span(x + (n * R + r) * S, y + (n * R + r) * S, start, min(<Py_ssize_t>PIECE, S - start), r, S,
                center, inv, a, stream)


cdef int _norm_rows(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S,
                    const RowAffine* a, double eps, double* mean, double* var, int nthreads) noexcept nogil:
    cdef bint stream = _streams(2 * N * R * S * sizeof(floating))
    cdef Py_ssize_t r, t
    cdef Py_ssize_t pieces = (S + PIECE - 1) // PIECE
    cdef Py_ssize_t rows = _batch_rows(N, R, S, nthreads)
    cdef Py_ssize_t batches = (R + rows - 1) // rows if rows else 0
    if rows:
        if nthreads <= 1 or batches < 2:
            for t in range(batches):
                _norm_batch(x, y, t * rows, min(R, (t + 1) * rows), S, a, eps, mean, var, stream)
        else:
            for t in prange(batches, schedule="static", num_threads=nthreads):
                _norm_batch(x, y, t * rows, min(R, (t + 1) * rows), S, a, eps, mean, var, stream)
        _fence_streams(stream, nthreads)
        return 0
    if nthreads <= 1 or R >= 4 * nthreads:
        if nthreads <= 1:  # no thread team for one thread
            for r in range(R):
                _norm_row(x, y, r, N, R, S, a, eps, mean, var, stream)
        else:
            for r in prange(R, schedule="static", num_threads=nthreads):
                _norm_row(x, y, r, N, R, S, a, eps, mean, var, stream)
        _fence_streams(stream, nthreads)
        return 0
    # Too few rows to share among the threads one row each: statistics from blocks computed in
    # parallel (the same bits, see _moments_ncs), then all pieces of all runs swept in parallel.
    if _moments_ncs(x, N, R, S, mean, var, nthreads) < 0:
        return -1
    for t in prange(R * N * pieces, schedule="static", num_threads=nthreads):
        _norm_piece(x, y, t // (N * pieces), (t // pieces) % N, (t % pieces) * PIECE, N, R, S, a, eps, mean,
                    var, stream)
    _fence_streams(stream, nthreads)
    return 0


# ---------------------------------------------------------------------------------------------------------
# Typed entry points: dispatch on dtype, release the GIL, and leave validation to the Python layer
# (buffers are C-contiguous float32/float64 of the stated sizes; parameter vectors have length C).
# ---------------------------------------------------------------------------------------------------------

cdef inline bint _is_f64(cnp.ndarray x):
    return cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE


def moments(cnp.ndarray x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, int nthreads):
    """Per-channel (mean, biased variance) as float64 arrays of an ``[N, C, S]`` buffer (``S == 1``: the
    columns of ``[N, C]``)."""
    cdef cnp.ndarray mean = _empty_doubles(C)
    cdef cnp.ndarray var = _empty_doubles(C)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pv = <double*>cnp.PyArray_DATA(var)
    cdef bint f64 = _is_f64(x)
    cdef int status = 0
    cdef double* partial
    with nogil:
        if S == 1:
            partial = <double*>_alloc(_moments_mc_scratch(N, C) * sizeof(double))
            if partial == NULL:
                status = -1
            elif f64:
                _moments_mc(<const double*>px, N, C, pm, pv, nthreads, partial)
            else:
                _moments_mc(<const float*>px, N, C, pm, pv, nthreads, partial)
            free(partial)
        elif f64:
            status = _moments_ncs(<const double*>px, N, C, S, pm, pv, nthreads)
        else:
            status = _moments_ncs(<const float*>px, N, C, S, pm, pv, nthreads)
    if status < 0:
        _out_of_memory()
    return mean, var


cdef void _fold_all(Py_ssize_t C, Vec mean, Vec var, Vec weight, Vec bias, double eps,
                    floating* p) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        _affine(_at(mean, c, 0.0), _at(var, c, 1.0), eps, weight, bias, c, &p[c], &p[C + c], &p[2 * C + c])


cdef int _fold_and_normalize(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                             Vec mean, Vec var, Vec weight, Vec bias, double eps,
                             int nthreads) noexcept nogil:
    """Normalize with given statistics: ``[N, C, S]`` when S > 1, ``[N, C]`` rows when S == 1."""
    cdef floating* p = <floating*>_alloc(3 * C * sizeof(floating))
    if p == NULL:
        return -1
    _fold_all(C, mean, var, weight, bias, eps, p)
    _normalize(x, y, N, C, S, p, nthreads)
    free(p)
    return 0


cdef void _normalize(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                     const floating* p, int nthreads) noexcept nogil:
    """The sweep with folded factors p: ``[N, C, S]``, or the columns of ``[N, C]`` when S == 1."""
    cdef bint stream = _streams(2 * N * C * S * sizeof(floating))
    cdef floating* columns = NULL
    cdef Py_ssize_t k, c, j
    if 1 < S < SHORT_SWEEP:
        columns = <floating*>_alloc(3 * C * S * sizeof(floating))
    if S == 1:
        _normalize_mc(x, y, N, C, p, nthreads, stream)
    elif columns != NULL:
        # Short runs: the same sweep over the columns of [N, C * S], each channel's factors repeated S
        # times (a call per run of a few values would cost more than its values).
        for k in range(3):
            for c in range(C):
                for j in range(S):
                    columns[(k * C + c) * S + j] = p[k * C + c]
        _normalize_mc(x, y, N, C * S, columns, nthreads, stream)
        free(columns)
    else:
        _normalize_ncs(x, y, N, C, S, p, nthreads, stream)
    _fence_streams(stream, nthreads)


def forward_with_stats(cnp.ndarray x, cnp.ndarray out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                       object mean, object var, object weight, object bias, double eps, int nthreads,
                       object commit=None):
    """``out = (x - mean) / sqrt(var + eps) * weight + bias`` per channel of an ``[N, C, S]`` buffer
    (``S == 1`` is the channels-last ``[N, C]`` case); then applies ``commit`` (a :class:`Commit`)."""
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(out)
    cdef Vec vm = _vec(mean), vv = _vec(var), vw = _vec(weight), vb = _vec(bias)
    cdef bint f64 = _is_f64(x)
    cdef int status
    with nogil:
        if f64:
            status = _fold_and_normalize(<const double*>px, <double*>py, N, C, S, vm, vv, vw, vb, eps, nthreads)
        else:
            status = _fold_and_normalize(<const float*>px, <float*>py, N, C, S, vm, vv, vw, vb, eps, nthreads)
    if status < 0:
        _out_of_memory()
    _apply(commit, out, mean, var, None)


cdef tuple _statistics(Py_ssize_t n):
    """Empty (mean, var, rstd) float64 vectors for a training call: allocated before it writes."""
    return _empty_doubles(n), _empty_doubles(n), _empty_doubles(n)


cdef tuple _with_rstd(tuple stats, double eps, bint rms):
    """The (mean, var, rstd) of a training call, rstd filled exactly as the sweeps computed it."""
    cdef cnp.ndarray mean = stats[0], var = stats[1], rstd = stats[2]
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(mean)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pv = <double*>cnp.PyArray_DATA(var)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef double center
    for i in range(n):
        _center_and_scale(pm[i], pv[i], eps, rms, &center, &pr[i])
    if rms:
        for i in range(n):
            _rms_in_range(pm[i], pv[i], eps, &pr[i])
    return stats


cdef RowAffine _row_affine(object weight, object bias, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sub,
                           Py_ssize_t groups, bint per_element, bint rms):
    """The affine map of the rows of an [N, R, S] buffer; sub, groups <= 0 mean one channel per row."""
    cdef RowAffine a
    a.weight = _vec(weight)
    a.bias = _vec(bias)
    a.sub = sub if sub > 0 else S
    a.groups = groups if groups > 0 else R
    a.per_element = per_element
    a.rms = rms
    return a


def forward_rows(cnp.ndarray x, cnp.ndarray out, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S, object weight,
                 object bias, double eps, int nthreads, Py_ssize_t sub=0, Py_ssize_t groups=0,
                 bint per_element=False, bint rms=False, bint stats=True, object commit=None):
    """Training-mode normalization of the rows of an ``[N, R, S]`` buffer with their own statistics.

    ``sub``/``groups`` map sub-runs to channels of ``weight``/``bias`` (defaults: one channel per row);
    ``per_element`` indexes ``weight``/``bias`` (of the data's dtype) by position in the run instead;
    ``rms`` scales by the root mean square.  Returns the per-row (mean, biased variance, rstd), float64,
    rstd being the inverse standard deviation (or root mean square) the sweep used; None without ``stats``.
    Then applies ``commit`` (a :class:`Commit`) with these statistics.
    """
    stats = stats or commit is not None
    cdef tuple result = _statistics(R) if stats else None
    cdef double* scratch = NULL if stats else <double*>_alloc(2 * R * sizeof(double))
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(out)
    cdef double* pm = <double*>cnp.PyArray_DATA(<cnp.ndarray>result[0]) if stats else scratch
    cdef double* pv = <double*>cnp.PyArray_DATA(<cnp.ndarray>result[1]) if stats else scratch + R
    cdef RowAffine a = _row_affine(weight, bias, R, S, sub, groups, per_element, rms)
    cdef bint f64 = _is_f64(x)
    cdef int status
    if pm == NULL:
        _out_of_memory()
    with nogil:
        if f64:
            status = _norm_rows(<const double*>px, <double*>py, N, R, S, &a, eps, pm, pv, nthreads)
        else:
            status = _norm_rows(<const float*>px, <float*>py, N, R, S, &a, eps, pm, pv, nthreads)
    free(scratch)
    if status < 0:
        _out_of_memory()
    if not stats:
        return None
    _with_rstd(result, eps, rms)
    _apply(commit, out, result[0], result[1], result[2])
    return result


def forward_columns(cnp.ndarray x, cnp.ndarray out, Py_ssize_t M, Py_ssize_t C, object weight, object bias,
                    double eps, int nthreads, object commit=None):
    """Training-mode normalization of the columns of an ``[M, C]`` buffer (channels last): the
    statistics need every row, so it is moments, then a second sweep.  Returns (mean, biased var, rstd)
    after applying ``commit`` (a :class:`Commit`) with them."""
    cdef tuple stats = _statistics(C)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(out)
    cdef double* pm = <double*>cnp.PyArray_DATA(<cnp.ndarray>stats[0])
    cdef double* pv = <double*>cnp.PyArray_DATA(<cnp.ndarray>stats[1])
    cdef Vec vw = _vec(weight), vb = _vec(bias), vm = _vec(stats[0]), vv = _vec(stats[1])
    cdef bint f64 = _is_f64(x)
    cdef int status = -1
    cdef double* partial
    with nogil:
        partial = <double*>_alloc(_moments_mc_scratch(M, C) * sizeof(double))
        if partial != NULL:
            if f64:
                _moments_mc(<const double*>px, M, C, pm, pv, nthreads, partial)
                status = _fold_and_normalize(<const double*>px, <double*>py, M, C, 1, vm, vv, vw, vb, eps,
                                             nthreads)
            else:
                _moments_mc(<const float*>px, M, C, pm, pv, nthreads, partial)
                status = _fold_and_normalize(<const float*>px, <float*>py, M, C, 1, vm, vv, vw, vb, eps,
                                             nthreads)
        free(partial)
    if status < 0:
        _out_of_memory()
    _with_rstd(stats, eps, False)
    _apply(commit, out, stats[0], stats[1], stats[2])
    return stats


cdef int _group_norm_mc(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t S, Py_ssize_t C,
                        Py_ssize_t G, Vec weight, Vec bias, double eps, double* mean, double* var,
                        int nthreads) noexcept nogil:
    """GroupNorm of channels-last data ``[N, S, C]``: per sample, column moments over the S rows, merged
    (Chan, in column order) into the moments of each group of C/G columns, then a channels-last sweep."""
    cdef Py_ssize_t K = C // G
    cdef Py_ssize_t n, g, c
    # All the scratch memory before the first sample is written (out= may be the input)
    cdef double* cmean = <double*>_alloc((2 * C + _moments_mc_scratch(S, C)) * sizeof(double))
    cdef double* cvar = cmean + C
    cdef floating* p = <floating*>_alloc(3 * C * sizeof(floating))
    cdef Moments m, col
    cdef double center, inv, s, rem
    cdef bint stream = _streams(2 * N * S * C * sizeof(floating))
    if cmean == NULL or p == NULL:
        free(cmean)
        free(p)
        return -1
    for n in range(N):
        _moments_mc(x + n * S * C, S, C, cmean, cvar, nthreads, cmean + 2 * C)
        for g in range(G):
            m.count = 0.0
            m.mean = 0.0
            m.var = 0.0
            for c in range(g * K, (g + 1) * K):
                col.count = <double>S
                col.mean = cmean[c]
                col.var = cvar[c]
                _merge(&m, col)
            _store_moments(m, n * G + g, mean, var)
            _center_and_scale(mean[n * G + g], var[n * G + g], eps, False, &center, &inv)
            for c in range(g * K, (g + 1) * K):
                p[c] = <floating>center
                rem = center - <double>p[c]
                s = inv * _at(weight, c, 1.0)
                p[C + c] = <floating>s
                p[2 * C + c] = <floating>(_at(bias, c, 0.0) - rem * s)
        _normalize_mc(x + n * S * C, y + n * S * C, S, C, p, nthreads, stream)
    _fence_streams(stream, nthreads)
    free(p)
    free(cmean)
    return 0


def forward_column_groups(cnp.ndarray x, cnp.ndarray out, Py_ssize_t N, Py_ssize_t S, Py_ssize_t C,
                          Py_ssize_t G, object weight, object bias, double eps, int nthreads, object commit=None):
    """GroupNorm of a channels-last ``[N, S, C]`` buffer; returns per (sample, group) (mean, var, rstd)
    after applying ``commit`` (a :class:`Commit`) with them."""
    cdef tuple stats = _statistics(N * G)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(out)
    cdef double* pm = <double*>cnp.PyArray_DATA(<cnp.ndarray>stats[0])
    cdef double* pv = <double*>cnp.PyArray_DATA(<cnp.ndarray>stats[1])
    cdef Vec vw = _vec(weight), vb = _vec(bias)
    cdef bint f64 = _is_f64(x)
    cdef int status
    with nogil:
        if f64:
            status = _group_norm_mc(<const double*>px, <double*>py, N, S, C, G, vw, vb, eps, pm, pv, nthreads)
        else:
            status = _group_norm_mc(<const float*>px, <float*>py, N, S, C, G, vw, vb, eps, pm, pv, nthreads)
    if status < 0:
        _out_of_memory()
    _with_rstd(stats, eps, False)
    _apply(commit, out, stats[0], stats[1], stats[2])
    return stats


# ---------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------
# Forward: y = (x - mean) * rstd * w + b over a normalization group of M values, w and b per channel or
# per element.  With g = w * dy and xhat = (x - mean) * rstd:
#   training (mean and rstd depend on x): dx = rstd * (g - sum(g) / M - xhat * sum(g * xhat) / M)
#   frozen statistics (eval):             dx = rstd * g
#   dw = sum(dy * xhat), db = sum(dy), each over the values of its parameter.
# RMSNorm: the mean is 0 and the sum(g) term is absent.
# The sweep is written dx = alpha * dy + beta * (x - hi) + gamma, with hi the mean rounded to the data's
# type (x - hi is exact near the mean, as in the forward sweep) and the rest of the mean in gamma.

cdef inline void _grad_sums(const floating* x, const floating* dy, Py_ssize_t n, double mean, double rstd,
                            double* s) noexcept nogil:
    """s[0..3] = sum(dy), sum(dy * (x - mean)), and the check sums sum(xhat), sum(xhat**2)."""
    if floating is float:
        fastnorm_grad_sums_f32(x, dy, n, mean, rstd, s, s + 1, s + 2, s + 3)
    else:
        fastnorm_grad_sums_f64(x, dy, n, mean, rstd, s, s + 1, s + 2, s + 3)


cdef inline void _grad_sweep(const floating* x, const floating* dy, floating* dx, Py_ssize_t n, floating hi,
                             floating alpha, floating beta, floating gamma, const floating* w,
                             bint stream) noexcept nogil:
    """dx = (w * dy) * alpha + beta * (x - hi) + gamma; w is per element, or NULL."""
    if stream and (_lands_ahead(dx, x) or _lands_ahead(dx, dy)):  # not w, as in _sweep_affine
        stream = False
    if floating is float:
        if stream:
            fastnorm_grad_sweep_stream_f32(x, dy, dx, n, hi, alpha, beta, gamma, w)
        elif w != NULL:
            fastnorm_grad_sweep_elem_f32(x, dy, dx, n, hi, alpha, beta, gamma, w)
        else:
            fastnorm_grad_sweep_f32(x, dy, dx, n, hi, alpha, beta, gamma)
    else:
        if stream:
            fastnorm_grad_sweep_stream_f64(x, dy, dx, n, hi, alpha, beta, gamma, w)
        elif w != NULL:
            fastnorm_grad_sweep_elem_f64(x, dy, dx, n, hi, alpha, beta, gamma, w)
        else:
            fastnorm_grad_sweep_f64(x, dy, dx, n, hi, alpha, beta, gamma)


cdef inline void _grad_piece(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t R,
                             Py_ssize_t S, Py_ssize_t sub, Py_ssize_t r, Py_ssize_t t, double mean, double rstd,
                             double* s) noexcept nogil:
    """Sums (as _grad_sums) of piece ``t`` of row ``r`` in canonical order (run n, sub-run j, piece k
    within it)."""
    cdef Py_ssize_t per_sub = (sub + PIECE - 1) // PIECE
    cdef Py_ssize_t K = S // sub
    cdef Py_ssize_t n = t // (K * per_sub)
    cdef Py_ssize_t j = (t // per_sub) % K
    cdef Py_ssize_t start = j * sub + (t % per_sub) * PIECE
    cdef Py_ssize_t off = (n * R + r) * S + start
    _grad_sums(x + off, dy + off, min(<Py_ssize_t>PIECE, (j + 1) * sub - start), mean, rstd, s)


cdef void _grad_row_sums(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S,
                         Py_ssize_t sub, Py_ssize_t r, double mean, double rstd, double* P1,
                         double* P2, double* X) noexcept nogil:
    """Per sub-run j of row r, summed over its runs: P1[j] = sum(dy), P2[j] = sum(dy * xhat); and the row's
    check sums X[0] = sum(xhat), X[1] = sum(xhat**2).  The pieces in the canonical order of _grad_piece
    (run n, sub-run j, piece k), walked without its divisions: a short row's time went to them."""
    cdef Py_ssize_t K = S // sub
    cdef Py_ssize_t n, j, start, off
    cdef double sums[4]
    cdef double x1 = 0.0, x2 = 0.0
    for j in range(K):
        P1[j] = 0.0
        P2[j] = 0.0
    for n in range(N):
        off = (n * R + r) * S
        for j in range(K):
            start = j * sub
            while start < (j + 1) * sub:
                _grad_sums(x + off + start, dy + off + start, min(<Py_ssize_t>PIECE, (j + 1) * sub - start), mean,
                           rstd, sums)
                P1[j] += sums[0]
                P2[j] += sums[1]
                x1 += sums[2]
                x2 += sums[3]
                start += PIECE
    for j in range(K):
        P2[j] *= rstd
    if X != NULL:
        X[0] = x1
        X[1] = x2


cdef void _grad_row_coefficients(const RowAffine* a, Py_ssize_t first, Py_ssize_t K, double M,
                                 double lo, double rstd, bint training, const double* P1,
                                 const double* P2, double* beta, double* gamma) noexcept nogil:
    """beta and gamma of a row whose K sub-runs are the channels from ``first`` on (the terms of dx that
    depend on the row's sums); ``lo`` is the part of the mean below the data's precision."""
    cdef double A = 0.0, B = 0.0, w
    cdef Py_ssize_t j
    beta[0] = 0.0
    gamma[0] = 0.0
    if not training:
        return
    for j in range(K):
        w = _at(a.weight, first + j, 1.0)
        A += w * P1[j]
        B += w * P2[j]
    beta[0] = -rstd * rstd * B / M
    if not a.rms:
        gamma[0] = -rstd * A / M
    gamma[0] = gamma[0] - beta[0] * lo


cdef void _grad_sweep_span(const floating* x, const floating* dy, floating* dx, Py_ssize_t N,
                           Py_ssize_t R, Py_ssize_t S, const RowAffine* a, Py_ssize_t r, Py_ssize_t n,
                           Py_ssize_t start, Py_ssize_t length, double mean, double rstd, double beta,
                           double gamma, bint stream) noexcept nogil:
    cdef Py_ssize_t off = (n * R + r) * S
    cdef Py_ssize_t pos = start, end = start + length, stop
    cdef Py_ssize_t j = pos // a.sub, first = (r % a.groups) * (S // a.sub)
    cdef floating hi = <floating>mean
    cdef floating b = <floating>beta, g = <floating>gamma
    if a.sub == 1:  # one value per channel: the sweep below without a call per value, as _sweep_span
        for j in range(pos, end):
            dx[off + j] = (dy[off + j] * <floating>(rstd * _at(a.weight, first + j, 1.0))
                           + b * (x[off + j] - hi) + g)
        return
    while pos < end:
        stop = min(end, (j + 1) * a.sub)
        _grad_sweep(x + off + pos, dy + off + pos, dx + off + pos, stop - pos, hi,
                    <floating>(rstd * _at(a.weight, first + j, 1.0)), <floating>beta, <floating>gamma, NULL,
                    stream)
        pos = stop
        j += 1


cdef void _grad_row_sweep(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t R,
                          Py_ssize_t S, const RowAffine* a, Py_ssize_t r, Py_ssize_t n, Py_ssize_t start,
                          Py_ssize_t length, const double* mean, const double* rstd, bint training,
                          const double* P1, const double* P2, double count, bint stream) noexcept nogil:
    """dx for values start <= i < start + length of run n of row r, once the row's sums over ``count``
    values are known (N * S, or more when the row is spread over several processes)."""
    cdef Py_ssize_t K = S // a.sub
    cdef double beta, gamma
    _grad_row_coefficients(a, (r % a.groups) * K, K, count, mean[r] - <double><floating>mean[r], rstd[r],
                           training, P1 + r * K, P2 + r * K, &beta, &gamma)
    _grad_sweep_span(x, dy, dx, N, R, S, a, r, n, start, length, mean[r], rstd[r], beta, gamma, stream)


cdef void _grad_row(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t R,
                    Py_ssize_t S, const RowAffine* a, Py_ssize_t r, const double* mean, const double* rstd,
                    bint training, double* P1, double* P2, double* X, bint stream) noexcept nogil:
    """Row r: its sums, then its dx while its runs are in cache."""
    cdef Py_ssize_t K = S // a.sub
    cdef Py_ssize_t n
    _grad_row_sums(x, dy, N, R, S, a.sub, r, mean[r], rstd[r], P1 + r * K, P2 + r * K, X + 2 * r)
    for n in range(N):
        _grad_row_sweep(x, dy, dx, N, R, S, a, r, n, 0, S, mean, rstd, training, P1, P2, N * S, stream)


cdef void _grad_batch(const floating* x, const floating* dy, floating* dx, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t R, Py_ssize_t S, const RowAffine* a, const double* mean, const double* rstd,
                      bint training, double* P1, double* P2, double* X) noexcept nogil:
    """_grad_row for rows r0 <= r < r1 (at most BATCH_ROWS) of an [1, R, S] buffer, one step for all the
    rows at a time, as _norm_batch: the same operations, so the same bits.  The runs' sums and sweeps
    are one C loop each: a call per run from here cost more than its 16 or 64 values (InstanceNorm
    backward, 1 thread: (32, 256, 4, 4) 347 -> 254 us, (32, 256, 8, 8) 588 -> 376 us).  Cached stores
    even for outputs that others stream: streaming runs this short one by one was slower ((1024, 256,
    4, 4): 8.4 against 6.6 ms)."""
    cdef double beta[BATCH_ROWS]
    cdef double gamma[BATCH_ROWS]
    cdef floating hi_v[BATCH_ROWS]
    cdef floating beta_v[BATCH_ROWS]
    cdef floating gamma_v[BATCH_ROWS]
    cdef floating alpha_v[BATCH_VALUES]  # one per run: rows * K <= rows * S <= BATCH_VALUES
    cdef Py_ssize_t K = S // a.sub
    cdef Py_ssize_t r, j, first
    if floating is float:
        fastnorm_grad_run_sums_f32(x + r0 * S, dy + r0 * S, r1 - r0, K, a.sub, mean + r0, rstd + r0,
                                   P1 + r0 * K, P2 + r0 * K, X + 2 * r0)
    else:
        fastnorm_grad_run_sums_f64(x + r0 * S, dy + r0 * S, r1 - r0, K, a.sub, mean + r0, rstd + r0,
                                   P1 + r0 * K, P2 + r0 * K, X + 2 * r0)
    first = (r0 % a.groups) * K  # the channel of the row's first sub-run
    for r in range(r0, r1):
        _grad_row_coefficients(a, first, K, S, mean[r] - <double><floating>mean[r], rstd[r], training, P1 + r * K,
                               P2 + r * K, &beta[r - r0], &gamma[r - r0])
        # the values _grad_sweep_span passes to each run's sweep
        hi_v[r - r0] = <floating>mean[r]
        beta_v[r - r0] = <floating>beta[r - r0]
        gamma_v[r - r0] = <floating>gamma[r - r0]
        for j in range(K):
            alpha_v[(r - r0) * K + j] = <floating>(rstd[r] * _at(a.weight, first + j, 1.0))
        first += K
        if first == a.groups * K:
            first = 0
    if floating is float:
        fastnorm_grad_sweep_runs_f32(x + r0 * S, dy + r0 * S, dx + r0 * S, r1 - r0, K, a.sub, hi_v, alpha_v,
                                     beta_v, gamma_v)
    else:
        fastnorm_grad_sweep_runs_f64(x + r0 * S, dy + r0 * S, dx + r0 * S, r1 - r0, K, a.sub, hi_v, alpha_v,
                                     beta_v, gamma_v)


cdef int _grad_rows(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t R,
                    Py_ssize_t S, const RowAffine* a, const double* mean, const double* rstd, bint training,
                    double* P1, double* P2, double* X, int nthreads) noexcept nogil:
    """Backward of _norm_rows with a per-channel affine; P1, P2: [R, S // sub] sums per sub-run; X: the
    rows' check sums, [R, 2]."""
    cdef Py_ssize_t K = S // a.sub
    cdef Py_ssize_t per_sub = (a.sub + PIECE - 1) // PIECE
    cdef Py_ssize_t per_row = N * K * per_sub
    cdef Py_ssize_t sweep_pieces = (S + PIECE - 1) // PIECE
    cdef Py_ssize_t r, t, j, start
    cdef double* partial
    cdef bint stream = _streams(3 * N * R * S * sizeof(floating))
    cdef Py_ssize_t rows = _batch_rows(N, R, S, nthreads)
    cdef Py_ssize_t batches = (R + rows - 1) // rows if rows else 0
    if rows:
        if nthreads <= 1 or batches < 2:
            for t in range(batches):
                _grad_batch(x, dy, dx, t * rows, min(R, (t + 1) * rows), R, S, a, mean, rstd, training, P1, P2, X)
        else:
            for t in prange(batches, schedule="static", num_threads=nthreads):
                _grad_batch(x, dy, dx, t * rows, min(R, (t + 1) * rows), R, S, a, mean, rstd, training, P1, P2, X)
        return 0
    if nthreads <= 1 or R >= 4 * nthreads:
        if nthreads <= 1:  # no thread team for one thread
            for r in range(R):
                _grad_row(x, dy, dx, N, R, S, a, r, mean, rstd, training, P1, P2, X, stream)
        else:
            for r in prange(R, schedule="static", num_threads=nthreads):
                _grad_row(x, dy, dx, N, R, S, a, r, mean, rstd, training, P1, P2, X, stream)
        _fence_streams(stream, nthreads)
        return 0
    # Few rows: the pieces' sums in parallel, folded in the canonical order of _grad_row_sums.
    partial = <double*>_alloc(4 * R * per_row * sizeof(double))
    if partial == NULL:
        return -1
    for t in prange(R * per_row, schedule="static", num_threads=nthreads):
        _grad_piece(x, dy, N, R, S, a.sub, t // per_row, t % per_row, mean[t // per_row], rstd[t // per_row],
                    partial + 4 * t)
    for r in range(R):
        for j in range(K):
            P1[r * K + j] = 0.0
            P2[r * K + j] = 0.0
        X[2 * r] = 0.0
        X[2 * r + 1] = 0.0
        for t in range(per_row):
            j = (t // per_sub) % K
            P1[r * K + j] += partial[4 * (r * per_row + t)]
            P2[r * K + j] += partial[4 * (r * per_row + t) + 1]
            X[2 * r] += partial[4 * (r * per_row + t) + 2]
            X[2 * r + 1] += partial[4 * (r * per_row + t) + 3]
        for j in range(K):
            P2[r * K + j] *= rstd[r]
    free(partial)
    for t in prange(R * N * sweep_pieces, schedule="static", num_threads=nthreads):
        start = (t % sweep_pieces) * PIECE
        _grad_row_sweep(x, dy, dx, N, R, S, a, t // (N * sweep_pieces), (t // sweep_pieces) % N, start,
                        min(<Py_ssize_t>PIECE, S - start), mean, rstd, training, P1, P2, N * S, stream)
    _fence_streams(stream, nthreads)
    return 0


cdef void _grad_elem_chunk(const floating* x, const floating* dy, floating* dx, Py_ssize_t r0, Py_ssize_t r1,
                           Py_ssize_t D, const floating* w, const double* mean, const double* rstd,
                           bint training, bint rms, double* col_dy, double* col_dyx, double* X,
                           bint stream) noexcept nogil:
    """Backward of rows r0 <= r < r1 with an elementwise weight; column sums into col_dy, col_dyx, the
    rows' check sums into X[2 r], X[2 r + 1]."""
    cdef Py_ssize_t r, d
    cdef double A, B, beta, gamma
    cdef floating hi
    for d in range(D):
        col_dy[d] = 0.0
        col_dyx[d] = 0.0
    for r in range(r0, r1):
        if floating is float:
            fastnorm_grad_row_elem_f32(x + r * D, dy + r * D, D, mean[r], rstd[r], w, &A, &B, X + 2 * r,
                                       X + 2 * r + 1, col_dy, col_dyx)
        else:
            fastnorm_grad_row_elem_f64(x + r * D, dy + r * D, D, mean[r], rstd[r], w, &A, &B, X + 2 * r,
                                       X + 2 * r + 1, col_dy, col_dyx)
        hi = <floating>mean[r]
        beta = 0.0
        gamma = 0.0
        if training:
            beta = -rstd[r] * rstd[r] * (B * rstd[r]) / D
            gamma = (0.0 if rms else -rstd[r] * A / D) - beta * (mean[r] - <double>hi)
        _grad_sweep(x + r * D, dy + r * D, dx + r * D, D, hi, <floating>rstd[r], <floating>beta,
                    <floating>gamma, w, stream)


cdef enum:
    ELEM_CHUNKS = 32   # row chunks of the elementwise backward (their column sums are merged in order)


cdef enum:
    MERGE_COLUMNS = 4096


cdef void _merge_chunks(const double* partial, Py_ssize_t nchunks, Py_ssize_t D, Py_ssize_t d0, Py_ssize_t d1,
                        double* grad_w, double* grad_b) noexcept nogil:
    """Columns d0 <= d < d1 of the chunks' column sums, added in chunk order."""
    cdef Py_ssize_t k, d
    for d in range(d0, d1):
        grad_b[d] = 0.0
        grad_w[d] = 0.0
    for k in range(nchunks):
        for d in range(d0, d1):
            grad_b[d] += partial[2 * k * D + d]
            grad_w[d] += partial[(2 * k + 1) * D + d]


cdef int _grad_elem(const floating* x, const floating* dy, floating* dx, Py_ssize_t R, Py_ssize_t D,
                    const floating* w, const double* mean, const double* rstd, bint training, bint rms,
                    double* grad_w, double* grad_b, double* X, int nthreads) noexcept nogil:
    # Few long rows get few chunks: each chunk's column sums are 16 bytes a column, zeroed, updated by
    # every row and merged, so 32 chunks of 2 rows of 14336 values moved more memory than the rows
    # (LayerNorm backward on (56, 14336): 990 -> 600 us, 1 thread; 670 -> 440 us, 2 threads).  The
    # chunks' sums are kept to an eighth of the bytes the call moves (3 R D values), at least 2 chunks.
    cdef Py_ssize_t nchunks = max(min(R, <Py_ssize_t>2), min(min(R, <Py_ssize_t>ELEM_CHUNKS),
                                                     3 * R * <Py_ssize_t>sizeof(floating) // (16 * 8)))
    cdef Py_ssize_t per = (R + nchunks - 1) // nchunks
    cdef Py_ssize_t k
    cdef double* partial = <double*>_alloc(2 * nchunks * D * sizeof(double))
    cdef bint stream = _streams(3 * R * D * sizeof(floating))
    if partial == NULL:
        return -1
    if nthreads <= 1:  # no thread team for one thread
        for k in range(nchunks):
            _grad_elem_chunk(x, dy, dx, min(R, k * per), min(R, (k + 1) * per), D, w, mean, rstd, training, rms,
                             partial + 2 * k * D, partial + (2 * k + 1) * D, X, stream)
    else:
        for k in prange(nchunks, schedule="static", num_threads=nthreads):
            _grad_elem_chunk(x, dy, dx, min(R, k * per), min(R, (k + 1) * per), D, w, mean, rstd, training, rms,
                             partial + 2 * k * D, partial + (2 * k + 1) * D, X, stream)
    _fence_streams(stream, nthreads)
    if nthreads <= 1 or D < 2 * MERGE_COLUMNS:
        _merge_chunks(partial, nchunks, D, 0, D, grad_w, grad_b)
    else:
        for k in prange((D + MERGE_COLUMNS - 1) // MERGE_COLUMNS, schedule="static", num_threads=nthreads):
            _merge_chunks(partial, nchunks, D, k * MERGE_COLUMNS, min(D, (k + 1) * MERGE_COLUMNS), grad_w, grad_b)
    free(partial)
    return 0


cdef inline Py_ssize_t _grad_mc_scratch(Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    """The bytes of scratch memory _grad_mc needs (the same for every thread count)."""
    return (4 * ((M + _rows_per_block(C) - 1) // _rows_per_block(C)) * C + 6 * C) * sizeof(double)


cdef void _grad_mc(const floating* x, const floating* dy, floating* dx, Py_ssize_t M, Py_ssize_t C,
                   const double* mean, const double* rstd, Py_ssize_t group, Vec weight, bint training,
                   double* P1, double* P2, double* X, int nthreads, void* scratch) noexcept nogil:
    """Channels-last backward of an [M, C] block whose columns form groups of ``group`` columns sharing
    mean[c // group], rstd[c // group] (BatchNorm: group = 1; GroupNorm per sample: C / G).
    P1, P2 receive the per-column sum(dy), sum(dy * xhat), X[2 g], X[2 g + 1] the groups' check sums;
    ``scratch``: _grad_mc_scratch bytes."""
    cdef Tiles tiles = _tiles(M, C, nthreads)
    cdef Py_ssize_t nblocks = tiles.nblocks
    cdef Py_ssize_t G = C // group
    cdef Py_ssize_t blk, c, g, i, t
    cdef double A, B, w, beta, gamma
    cdef double* partial = <double*>scratch  # per row block: sum(dy), sum(dy (x - mean)), sum(xhat), sum(xhat**2)
    cdef double* colmean = partial + 4 * nblocks * C
    cdef double* colrstd = colmean + C
    cdef floating* p = <floating*>(colrstd + C)  # 4 * C values
    memset(partial, 0, 4 * nblocks * C * sizeof(double))  # the column sums accumulate into it
    for c in range(C):
        colmean[c] = mean[c // group]
        colrstd[c] = rstd[c // group]
    if nthreads <= 1:  # no thread team for one thread
        for t in range(nblocks * tiles.ncb):
            _grad_column_tile(x, dy, &tiles, t, colmean, colrstd, partial)
    else:
        for t in prange(nblocks * tiles.ncb, schedule="static", num_threads=nthreads):
            _grad_column_tile(x, dy, &tiles, t, colmean, colrstd, partial)
    for c in range(C):
        P1[c] = 0.0
        P2[c] = 0.0
    for g in range(2 * G):
        X[g] = 0.0
    for blk in range(nblocks):
        for c in range(C):
            P1[c] += partial[4 * C * blk + c]
            P2[c] += partial[4 * C * blk + C + c]
            X[2 * (c // group)] += partial[4 * C * blk + 2 * C + c]
            X[2 * (c // group) + 1] += partial[4 * C * blk + 3 * C + c]
    for g in range(G):
        A = 0.0
        B = 0.0
        for i in range(group):
            c = g * group + i
            P2[c] *= rstd[g]
            w = _at(weight, c, 1.0)
            A += w * P1[c]
            B += w * P2[c]
        beta = 0.0
        gamma = 0.0
        if training:
            beta = -rstd[g] * rstd[g] * B / (M * group)
            gamma = -rstd[g] * A / (M * group) - beta * (mean[g] - <double><floating>mean[g])
        for i in range(group):
            c = g * group + i
            p[c] = <floating>mean[g]
            p[C + c] = <floating>(rstd[g] * _at(weight, c, 1.0))
            p[2 * C + c] = <floating>beta
            p[3 * C + c] = <floating>gamma
    if nthreads <= 1:  # no thread team for one thread
        for t in range(nblocks * tiles.ncb):
            _grad_sweep_tile(x, dy, dx, &tiles, t, p)
    else:
        for t in prange(nblocks * tiles.ncb, schedule="static", num_threads=nthreads):
            _grad_sweep_tile(x, dy, dx, &tiles, t, p)


cdef inline void _grad_column_tile(const floating* x, const floating* dy, const Tiles* g, Py_ssize_t t,
                                   const double* colmean, const double* colrstd, double* partial) noexcept nogil:
    """Tile ``t`` of _grad_mc's column sums, into row block ``blk``'s partials."""
    cdef Py_ssize_t blk, r0, rows, c0, ncols
    cdef double* s_dy
    if not _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        return
    s_dy = partial + 4 * g.C * blk + c0
    if floating is float:
        fastnorm_grad_column_sums_f32(x + r0 * g.C + c0, dy + r0 * g.C + c0, rows, ncols, g.C, colmean + c0,
                                      colrstd + c0, s_dy, s_dy + g.C, s_dy + 2 * g.C, s_dy + 3 * g.C)
    else:
        fastnorm_grad_column_sums_f64(x + r0 * g.C + c0, dy + r0 * g.C + c0, rows, ncols, g.C, colmean + c0,
                                      colrstd + c0, s_dy, s_dy + g.C, s_dy + 2 * g.C, s_dy + 3 * g.C)


cdef inline void _grad_sweep_tile(const floating* x, const floating* dy, floating* dx, const Tiles* g,
                                  Py_ssize_t t, const floating* p) noexcept nogil:
    """Tile ``t`` of _grad_mc's dx sweep."""
    cdef Py_ssize_t blk, r0, rows, c0, ncols, off
    if not _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        return
    off = r0 * g.C + c0
    if floating is float:
        fastnorm_grad_sweep_rows_f32(x + off, dy + off, dx + off, rows, ncols, g.C, p + c0, g.C)
    else:
        fastnorm_grad_sweep_rows_f64(x + off, dy + off, dx + off, rows, ncols, g.C, p + c0, g.C)


cdef Py_ssize_t _first_modified(const double* X, Py_ssize_t G, double count, const double* mean,
                                const double* rstd, double eps, const double* eps_r2, bint rms, bint f64, double* m1,
                                double* q) noexcept nogil:
    """The first of G normalization groups whose check sums cannot come from the input the statistics
    were computed from, or -1; m1 and q are then its mean and variance in units of the forward's.

    X[2 g], X[2 g + 1] are sum(xhat) and sum(xhat**2) over the group's ``count`` values, xhat = (x -
    mean) * rstd with the statistics given.  For the forward's input, m1 = sum(xhat) / count is 0 and q =
    sum(xhat**2) / count - m1**2 is var * rstd**2 = 1 - eps * rstd**2 (``eps_r2[g]`` where given: the
    rescaled backward's, whose rstd is not the forward's) (RMSNorm, uncentered: mean(x**2) *
    rstd**2, the same), up to rounding: the backward forms the terms in the data's type and sums them in
    blocks of 64 (within 2**10 units of that precision) and in double across blocks, as the forward
    (count / 16 + 2**14 units of double precision, the forward's variance included).  The forward's mean
    and the differences of its blocks' means carry a rounding of double at |mean| per block merge: data
    far from 0 against their spread (|mean| * rstd large) are judged by as much less closely.  A group
    modified after its forward (x += y, x *= 2, a value overwritten) moves m1 or q by far more.  A group
    with a non-finite statistic or sum, or an rstd beyond the data's type, is not judged (NaN compares
    false).
    """
    cdef double unit = DBL_EPSILON / 2 if f64 else FLT_EPSILON / 2
    cdef double tol = 1024.0 * unit + (count / 16.0 + 16384.0) * (DBL_EPSILON / 2)
    cdef double per_mean = 4.0 * (count / 2048.0 + 2.0) * DBL_EPSILON
    cdef double inv = 1.0 / count, top = DBL_MAX if f64 else FLT_MAX
    cdef Py_ssize_t g = fastnorm_first_modified(X, G, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms)
    if g >= 0:
        m1[0] = 0.0 if rms else X[2 * g] * inv
        q[0] = X[2 * g + 1] * inv - m1[0] * m1[0]
    return g


cdef int _check_unmodified(const double* X, Py_ssize_t G, double count, const double* mean, const double* rstd,
                           object check, bint rms, bint f64) except -1:
    """Raise RuntimeError (PyTorch's words) when a group of a training backward's input no longer has
    the statistics given for it: modified in place after its forward, or not the input they came from.
    ``check``: the forward's eps, or eps * rstd**2 per group (an array)."""
    cdef double m1, q, eps = 0.0
    cdef const double* eps_r2 = NULL
    if isinstance(check, np.ndarray):
        eps_r2 = <const double*>cnp.PyArray_DATA(<cnp.ndarray>check)
    else:
        eps = check
    cdef Py_ssize_t g = _first_modified(X, G, count, mean, rstd, eps, eps_r2, rms, f64, &m1, &q)
    if g < 0:
        return 0
    change = ("" if rms else f"mean moved by {m1:.3g} standard deviations, ") + (
        f"{'mean square' if rms else 'variance'} "
        f"{q / (1.0 - (eps_r2[g] if eps_r2 != NULL else eps * rstd[g] * rstd[g])):.3g} times the forward's")
    raise RuntimeError(
        "input: one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: normalization group {g} no longer has the statistics its forward computed ({change}); "
        "backward needs the forward's input as it was")


cdef object _rescale_exponents(cnp.ndarray x, cnp.ndarray rstd, bint training):
    """Per-group exponents ``e`` (0.5 <= rstd * 2**-e < 1) for a float64 training backward whose rstd is
    beyond 2**+-400 (data beyond about 1e120 or, with eps=0, below 1e-120): rstd squared enters the
    gradient's coefficients and would under- or overflow.  None (the common case) when no group's is."""
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(rstd)
    cdef bint found = False
    if not training or not _is_f64(x):
        return None
    for i in range(n):
        if 0.0 < pr[i] <= DBL_MAX and not (RESCALE_BELOW <= pr[i] <= 1.0 / RESCALE_BELOW):
            found = True
            break
    if not found:
        return None
    e = np.frexp(rstd)[1]
    e[(rstd >= RESCALE_BELOW) & (rstd <= 1.0 / RESCALE_BELOW) | ~np.isfinite(rstd)] = 0
    return e


# rstd below this (or above its inverse) takes the rescaled backward
cdef double RESCALE_BELOW = 2.0 ** -400


cdef object _rescaled(object kernel, cnp.ndarray x, cnp.ndarray dy, cnp.ndarray dx, tuple dims, tuple shape,
                      tuple group_shape, cnp.ndarray mean, cnp.ndarray rstd, object e, dict kwargs):
    """The backward ``kernel`` on x scaled by 2**e per group (exact: a power of two), with the statistics
    of the scaled data: xhat and the parameter gradients are unchanged, dx is 2**e times the scaled
    data's.  A copy of x, for the rare groups that need it (see _rescale_exponents)."""
    g = e.reshape(group_shape)
    scaled = np.ldexp(x.reshape(shape), g).reshape(-1)
    if kwargs.get("check") is not None and not isinstance(kwargs["check"], np.ndarray):
        kwargs["check"] = kwargs["check"] * rstd * rstd  # eps * rstd**2 per group: what the scaling keeps
    sums = kernel(scaled, dy, dx, *dims, np.ldexp(mean, e), np.ldexp(rstd, -e), **kwargs)
    view = dx.reshape(shape)
    np.ldexp(view, g, out=view)
    return sums


def backward_rows(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S,
                  cnp.ndarray mean, cnp.ndarray rstd, object weight, bint training, int nthreads,
                  Py_ssize_t sub=0, Py_ssize_t groups=0, bint per_element=False, bint rms=False,
                  object check=None):
    """Backward of :func:`forward_rows` (``training``) or of a normalization with frozen statistics.

    ``mean``, ``rstd``: float64 per row.  Returns (sum_dy, sum_dy_xhat) as float64: per row and sub-run,
    ``[R, S // sub]``, for a per-channel affine; per element of the row, ``[S]``, summed over the rows,
    with ``per_element`` (then ``weight`` has the data's dtype).  ``check``: the forward's eps (or eps *
    rstd**2 per row, an array), to raise RuntimeError where x no longer has the statistics (see
    _first_modified); None: no check.
    """
    cdef RowAffine a = _row_affine(weight, None, R, S, sub, groups, per_element, rms)
    cdef Py_ssize_t nsums = S if per_element else R * (S // a.sub)
    e = _rescale_exponents(x, rstd, training)
    if e is not None:
        return _rescaled(backward_rows, x, dy, dx, (N, R, S), (N, R, S), (1, R, 1), mean, rstd, e,
                         dict(weight=weight, training=True, nthreads=nthreads, sub=sub, groups=groups,
                              per_element=per_element, rms=rms, check=check))
    cdef double* X = <double*>_alloc(2 * R * sizeof(double))  # the rows' check sums
    if X == NULL:
        _out_of_memory()
    cdef cnp.ndarray P1 = _empty_doubles(nsums)
    cdef cnp.ndarray P2 = _empty_doubles(nsums)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pg = cnp.PyArray_DATA(dy)
    cdef void* po = cnp.PyArray_DATA(dx)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef double* p1 = <double*>cnp.PyArray_DATA(P1)
    cdef double* p2 = <double*>cnp.PyArray_DATA(P2)
    cdef bint f64 = _is_f64(x)
    cdef int status
    with nogil:
        if per_element:
            if f64:
                status = _grad_elem(<const double*>px, <const double*>pg, <double*>po, R, S, <const double*>a.weight.data,
                           pm, pr, training, rms, p2, p1, X, nthreads)
            else:
                status = _grad_elem(<const float*>px, <const float*>pg, <float*>po, R, S, <const float*>a.weight.data,
                           pm, pr, training, rms, p2, p1, X, nthreads)
        elif f64:
            status = _grad_rows(<const double*>px, <const double*>pg, <double*>po, N, R, S, &a, pm, pr, training, p1, p2,
                       X, nthreads)
        else:
            status = _grad_rows(<const float*>px, <const float*>pg, <float*>po, N, R, S, &a, pm, pr, training, p1, p2,
                       X, nthreads)
    try:
        if status < 0:
            _out_of_memory()
        if training and check is not None:
            _check_unmodified(X, R, N * S, pm, pr, check, rms, f64)
    finally:
        free(X)
    return P1, P2


cdef void _grad_sums_rows(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                          const double* mean, const double* rstd, double* P1, double* P2,
                          int nthreads) noexcept nogil:
    cdef Py_ssize_t r
    if nthreads <= 1:  # no thread team for one thread
        for r in range(C):
            _grad_row_sums(x, dy, N, C, S, S, r, mean[r], rstd[r], P1 + r, P2 + r, NULL)
    else:
        for r in prange(C, schedule="static", num_threads=nthreads):
            _grad_row_sums(x, dy, N, C, S, S, r, mean[r], rstd[r], P1 + r, P2 + r, NULL)


cdef void _grad_apply_rows(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t S, const RowAffine* a, const double* mean, const double* rstd,
                           const double* P1, const double* P2, double count, int nthreads) noexcept nogil:
    cdef Py_ssize_t t
    cdef bint stream = _streams(3 * N * C * S * sizeof(floating))
    if nthreads <= 1:  # no thread team for one thread
        for t in range(N * C):
            _grad_row_sweep(x, dy, dx, N, C, S, a, t % C, t // C, 0, S, mean, rstd, True, P1, P2, count, stream)
    else:
        for t in prange(N * C, schedule="static", num_threads=nthreads):
            _grad_row_sweep(x, dy, dx, N, C, S, a, t % C, t // C, 0, S, mean, rstd, True, P1, P2, count, stream)
    _fence_streams(stream, nthreads)


def backward_reduce(cnp.ndarray x, cnp.ndarray dy, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                    cnp.ndarray mean, cnp.ndarray rstd, int nthreads):
    """Per-channel (sum(dy), sum(dy * xhat)) of an ``[N, C, S]`` buffer, float64: the part of a
    BatchNorm backward that several processes add up before :func:`backward_elemt`."""
    cdef cnp.ndarray P1 = _empty_doubles(C)
    cdef cnp.ndarray P2 = _empty_doubles(C)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pg = cnp.PyArray_DATA(dy)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef double* p1 = <double*>cnp.PyArray_DATA(P1)
    cdef double* p2 = <double*>cnp.PyArray_DATA(P2)
    cdef bint f64 = _is_f64(x)
    with nogil:
        if f64:
            _grad_sums_rows(<const double*>px, <const double*>pg, N, C, S, pm, pr, p1, p2, nthreads)
        else:
            _grad_sums_rows(<const float*>px, <const float*>pg, N, C, S, pm, pr, p1, p2, nthreads)
    return P1, P2


def backward_elemt(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                   cnp.ndarray mean, cnp.ndarray rstd, object weight, cnp.ndarray sum_dy,
                   cnp.ndarray sum_dy_xhat, double count, int nthreads):
    """Training-mode BatchNorm input gradient of an ``[N, C, S]`` buffer from per-channel sums taken over
    ``count`` values in all (this buffer and others elsewhere)."""
    cdef RowAffine a = _row_affine(weight, None, C, S, 0, 0, False, False)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pg = cnp.PyArray_DATA(dy)
    cdef void* po = cnp.PyArray_DATA(dx)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef double* p1 = <double*>cnp.PyArray_DATA(sum_dy)
    cdef double* p2 = <double*>cnp.PyArray_DATA(sum_dy_xhat)
    cdef bint f64 = _is_f64(x)
    with nogil:
        if f64:
            _grad_apply_rows(<const double*>px, <const double*>pg, <double*>po, N, C, S, &a, pm, pr, p1, p2, count,
                             nthreads)
        else:
            _grad_apply_rows(<const float*>px, <const float*>pg, <float*>po, N, C, S, &a, pm, pr, p1, p2, count,
                             nthreads)


def backward_columns(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t M,
                     Py_ssize_t C, Py_ssize_t G, cnp.ndarray mean, cnp.ndarray rstd, object weight, bint training,
                     int nthreads, object check=None):
    """Channels-last backward of N samples of ``[M, C]`` (BatchNorm: N = 1, G = C; GroupNorm: G groups
    per sample); ``mean``, ``rstd``: float64 per (sample, group).  Returns per (sample, column)
    (sum_dy, sum_dy_xhat) as float64 ``[N * C]``.  ``check``: as :func:`backward_rows`'s."""
    e = _rescale_exponents(x, rstd, training)
    if e is not None:
        return _rescaled(backward_columns, x, dy, dx, (N, M, C, G), (N, M, G, C // G), (N, 1, G, 1), mean, rstd, e,
                         dict(weight=weight, training=True, nthreads=nthreads, check=check))
    cdef cnp.ndarray P1 = _empty_doubles(N * C)
    cdef cnp.ndarray P2 = _empty_doubles(N * C)
    cdef char* px = <char*>cnp.PyArray_DATA(x)
    cdef char* pg = <char*>cnp.PyArray_DATA(dy)
    cdef char* po = <char*>cnp.PyArray_DATA(dx)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef double* p1 = <double*>cnp.PyArray_DATA(P1)
    cdef double* p2 = <double*>cnp.PyArray_DATA(P2)
    cdef Vec vw = _vec(weight)
    cdef bint f64 = _is_f64(x)
    cdef Py_ssize_t n
    cdef Py_ssize_t item = 8 if f64 else 4
    # once, before the first sample: the kernel's scratch and the groups' check sums
    cdef void* scratch = _alloc(_grad_mc_scratch(M, C) + 2 * N * G * sizeof(double))
    cdef double* X
    if scratch == NULL:
        _out_of_memory()
    X = <double*>(<char*>scratch + _grad_mc_scratch(M, C))
    with nogil:
        for n in range(N):
            if f64:
                _grad_mc(<const double*>(px + n * M * C * item), <const double*>(pg + n * M * C * item),
                         <double*>(po + n * M * C * item), M, C, pm + n * G, pr + n * G, C // G, vw, training,
                         p1 + n * C, p2 + n * C, X + 2 * n * G, nthreads, scratch)
            else:
                _grad_mc(<const float*>(px + n * M * C * item), <const float*>(pg + n * M * C * item),
                         <float*>(po + n * M * C * item), M, C, pm + n * G, pr + n * G, C // G, vw, training,
                         p1 + n * C, p2 + n * C, X + 2 * n * G, nthreads, scratch)
    try:
        if training and check is not None:
            _check_unmodified(X, N * G, M * (C // G), pm, pr, check, False, f64)
    finally:
        free(scratch)
    return P1, P2


# ---------------------------------------------------------------------------------------------------------
# Eval mode of a layer: per-channel factors folded once, reused while the parameters are unchanged
# ---------------------------------------------------------------------------------------------------------

cdef class EvalCache:
    """The folded factors (mean_hi, scale, shift per channel) of an eval-mode BatchNorm layer.

    They are recomputed when the parameters they came from differ, byte for byte, from a snapshot taken
    when they were folded: any assignment or in-place update of the running statistics, weight or bias
    (or eps) is seen on the next call, and an unchanged layer pays a memcmp of its few vectors instead of
    a square root and a division per channel.  Each call sweeps with its own copy of the factors, so a
    call never reads factors that another thread is replacing.
    """
    cdef char* snapshot
    cdef Py_ssize_t snapshot_bytes
    cdef Py_ssize_t C
    cdef double eps
    cdef int layout          # which vectors are present and their dtypes
    cdef float* p32
    cdef double* p64

    def __dealloc__(self):
        free(self.snapshot)
        free(self.p32)
        free(self.p64)

    cdef bint _refresh(self, object vectors, Py_ssize_t C, double eps):
        """Compare the parameters with the snapshot; on any difference take a new snapshot and drop the
        folded factors.  Returns False when a parameter is not a usable vector (the caller then takes
        the validating path)."""
        cdef int layout = 0, k = 0
        cdef Py_ssize_t total = 0, nbytes, offset = 0
        cdef cnp.ndarray arr
        cdef bint same
        for v in vectors:
            if v is not None:
                if not _is_vector(v, C):
                    return False
                arr = <cnp.ndarray>v
                layout |= (1 if cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT else 2) << (2 * k)
                total += cnp.PyArray_NBYTES(arr)
            k += 1
        same = (self.snapshot != NULL and C == self.C and eps == self.eps and layout == self.layout
                and total == self.snapshot_bytes)
        if same:
            for v in vectors:
                if v is not None:
                    nbytes = cnp.PyArray_NBYTES(<cnp.ndarray>v)
                    if memcmp(self.snapshot + offset, cnp.PyArray_DATA(<cnp.ndarray>v), nbytes) != 0:
                        same = False
                        break
                    offset += nbytes
        if same:
            return True
        free(self.snapshot)
        free(self.p32)
        free(self.p64)
        self.p32 = NULL
        self.p64 = NULL
        self.snapshot = <char*>_alloc(total)
        if self.snapshot == NULL:
            _out_of_memory()
        offset = 0
        for v in vectors:
            if v is not None:
                nbytes = cnp.PyArray_NBYTES(<cnp.ndarray>v)
                memcpy(self.snapshot + offset, cnp.PyArray_DATA(<cnp.ndarray>v), nbytes)
                offset += nbytes
        self.snapshot_bytes = total
        self.C = C
        self.eps = eps
        self.layout = layout
        return True


def eval_cached(EvalCache cache, object x, int channel_axis, object mean, object var, object weight,
                object bias, double eps, int nthreads):
    """Eval-mode BatchNorm of ``x`` with the factors in ``cache``: returns a new array, or None when an
    argument is not of the plain kind (then the validating path handles it)."""
    cdef cnp.ndarray arr, out
    cdef int t, ndim, axis, i
    cdef Py_ssize_t N = 1, C, S = 1
    cdef cnp.npy_intp* dims
    if not _plain_values(x) or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        return None
    arr = <cnp.ndarray>x
    t = cnp.PyArray_TYPE(arr)
    ndim = cnp.PyArray_NDIM(arr)
    if ndim < 2:
        return None
    axis = channel_axis + ndim if channel_axis < 0 else channel_axis  # C's % keeps the sign
    if axis < 0 or axis >= ndim or mean is None or var is None:
        return None
    dims = cnp.PyArray_DIMS(arr)
    C = dims[axis]
    for i in range(axis):
        N *= dims[i]
    for i in range(axis + 1, ndim):
        S *= dims[i]
    if N * S == 0 or not cache._refresh((mean, var, weight, bias), C, eps):
        return None
    out = _empty(ndim, dims, t)
    cdef Vec vm = _vec(mean), vv = _vec(var), vw = _vec(weight), vb = _vec(bias)
    cdef void* px = cnp.PyArray_DATA(arr)
    cdef void* py = cnp.PyArray_DATA(out)
    # The sweep runs without the GIL on a copy of the factors: another thread may refold the cache
    # meanwhile (parameters changed under a running call), and must not free what this call reads.
    cdef void* factors
    if t == cnp.NPY_FLOAT:
        if cache.p32 == NULL:
            cache.p32 = <float*>_alloc(3 * C * sizeof(float))
            if cache.p32 == NULL:
                _out_of_memory()
            _fold_all(C, vm, vv, vw, vb, eps, cache.p32)
        factors = _alloc(3 * C * sizeof(float))
        if factors == NULL:
            _out_of_memory()
        memcpy(factors, cache.p32, 3 * C * sizeof(float))
        with nogil:
            _normalize(<const float*>px, <float*>py, N, C, S, <const float*>factors, nthreads)
    else:
        if cache.p64 == NULL:
            cache.p64 = <double*>_alloc(3 * C * sizeof(double))
            if cache.p64 == NULL:
                _out_of_memory()
            _fold_all(C, vm, vv, vw, vb, eps, cache.p64)
        factors = _alloc(3 * C * sizeof(double))
        if factors == NULL:
            _out_of_memory()
        memcpy(factors, cache.p64, 3 * C * sizeof(double))
        with nogil:
            _normalize(<const double*>px, <double*>py, N, C, S, <const double*>factors, nthreads)
    free(factors)
    return out


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
