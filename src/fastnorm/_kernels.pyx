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

The Python layer validates, builds the views and passes raw contiguous buffers.  The kernels know the
statistics and the affine; of a layer they know only what a call must apply atomically with its output
(``Commit``: the running-statistics update, ``out=``, the layer's attributes) and an eval-mode layer's
folded factors (``EvalCache``).

The entry points are named ``<phase>_<layout>``: ``forward_rows``/``backward_rows`` for the ``[N, R, S]``
rows, ``forward_columns``/``backward_columns`` (and ``forward_column_groups``) for the ``[M, C]``
columns, ``forward_with_stats`` for frozen statistics, ``backward_reduce``/``backward_elemt`` for the two
steps of a backward whose sums are added across processes (PyTorch's SyncBatchNorm names).  The backward's
sums are ``sum_dy`` and ``sum_dy_xhat``; its sweep is ``dx = c1 * dy + c2 * (x - mean_hi) + c3``.

Sources: this file holds the typed entry points (dtype dispatch, GIL release) and includes the parts:

====================  =====================================================================================
_kernels.pxd          the C loops' declarations, the fused type, the structs the parts share
_runtime.pxi          thread pool (_pool.h), ISA and OpenMP probes, cache sizes, the streaming policy
_memory.pxi           the output cache (_buffers.h) and scratch allocation: the only owner of that state
_arrays.pxi           what the kernels accept as is: plain arrays, parameter vectors
_commit.pxi           ``Commit``: what a call changes besides its output, running statistics included
_moments.pxi          block moments, Chan's merge, moments of ``[N, C, S]`` channels and ``[M, C]`` columns
_sweeps.pxi           each formula once: center and rstd, the fold, the dx coefficients; the sweeps
_rows.pxi             ``[N, R, S]`` rows, forward then backward (per channel and per element)
_columns.pxi          ``[M, C]`` columns, forward then backward, channels-last GroupNorm
_backward_checks.pxi  a backward's input modified in place; float64 rescaling of extreme rstd
_inference.pxi        frozen statistics: fold once, sweep; ``EvalCache``; the backward through an activation
_half.pxi             float16 and bfloat16 read and written natively (widened in cache): the forwards
_half_backward.pxi    the same for the backwards and the backward through an activation
_simd.h               the C loops (the ISA levels and their dispatch, streamed stores) including
                      _simd_moments.h, _simd_sweeps.h, _simd_backward.h and _simd_activation.h
====================  =====================================================================================
"""

# The included parts use these names; cython-lint reads this file alone, hence no-cython-lint.
cimport cython  # no-cython-lint
cimport numpy as cnp
from cpython.dict cimport PyDict_Update  # no-cython-lint
from cython.parallel cimport prange  # no-cython-lint
from libc.float cimport DBL_EPSILON, DBL_MAX, FLT_EPSILON, FLT_MAX  # no-cython-lint
from libc.math cimport INFINITY, fabs, frexp, ldexp, sqrt  # no-cython-lint
from libc.stdlib cimport free  # no-cython-lint
from libc.string cimport memcmp, memcpy, memset  # no-cython-lint

import operator  # no-cython-lint
import sys  # no-cython-lint

import numpy as np  # no-cython-lint

cnp.import_array()

# One extension module built from several files: the parts below are textually included, so the thread
# pool (_pool.h: the libgomp entry points the prange loops call, its fork handlers, its threadpoolctl
# registration) and the output cache (_buffers.h) exist once per process, as they must; separate
# extension modules would each compile their own static copy of that C state.  Shared declarations are in
# _kernels.pxd.

include "_runtime.pxi"      # ISA and OpenMP probes, thread count, cache sizes, streaming policy
include "_memory.pxi"       # the output cache and scratch allocation (the only owner of that state)
include "_arrays.pxi"       # what the kernels accept as is: plain arrays, parameter vectors
include "_commit.pxi"       # Commit: what a call changes besides its output, applied by its kernel call
include "_moments.pxi"      # block sums, Chan merge, moments of [N, C, S] channels and [M, C] columns
include "_sweeps.pxi"       # center and rstd, the fold, the dx coefficients, the sweeps that apply them
include "_rows.pxi"         # [N, R, S] rows: forward and backward
include "_columns.pxi"      # [M, C] columns: forward and backward, channels-last GroupNorm
include "_backward_checks.pxi"  # backward: input modified in place, float64 rescaling
include "_inference.pxi"    # frozen statistics: fold once, sweep; the eval cache of a layer
include "_half.pxi"         # float16 and bfloat16 read and written natively: forward
include "_half_backward.pxi"  # the same: backward


# ---------------------------------------------------------------------------------------------------------
# Typed entry points: dispatch on dtype, release the GIL, and leave validation to the Python layer
# (buffers are C-contiguous float32/float64 of the stated sizes; parameter vectors have length C).
# ---------------------------------------------------------------------------------------------------------

cdef inline bint _is_f64(cnp.ndarray x):
    return cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE


cdef struct Buffers:
    # A call's arrays as its kernel sees them: x, the output (y of a forward, dx of a backward), dy (NULL
    # in a forward), their type, and the epilogue of a fused sweep (see _epilogue_for); a backward's
    # statistics and sums, float64 per group.
    char* x
    char* y
    char* dy
    bint f64
    int half  # _half_kind
    Epilogue e
    const Epilogue* ep
    double* mean
    double* rstd
    double* sum_dy
    double* sum_dy_xhat


cdef void _buffers(Buffers* c, cnp.ndarray x, cnp.ndarray y, cnp.ndarray dy, int act=0, object add=None):
    """``c`` filled for a call on ``x`` writing ``y`` (None: none) with ``dy`` (None: a forward)."""
    c.x = <char*>cnp.PyArray_DATA(x)
    c.y = NULL if y is None else <char*>cnp.PyArray_DATA(y)
    c.dy = NULL if dy is None else <char*>cnp.PyArray_DATA(dy)
    c.f64 = _is_f64(x)
    c.half = _half_kind(x)
    c.ep = _epilogue_for(&c.e, act, add, y)


cdef void _backward_buffers(Buffers* c, cnp.ndarray x, cnp.ndarray dy, cnp.ndarray dx, cnp.ndarray mean,
                            cnp.ndarray rstd, cnp.ndarray sum_dy, cnp.ndarray sum_dy_xhat):
    """``c`` filled for a backward (``dx`` None: its sums alone)."""
    _buffers(c, x, dx, dy)
    c.mean = _doubles(mean)
    c.rstd = _doubles(rstd)
    c.sum_dy = _doubles(sum_dy)
    c.sum_dy_xhat = _doubles(sum_dy_xhat)


def moments(cnp.ndarray x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, int nthreads):
    """Per-channel (mean, biased variance) as float64 arrays of an ``[N, C, S]`` buffer (``S == 1``: the
    columns of ``[N, C]``)."""
    cdef cnp.ndarray mean = _empty_doubles(C)
    cdef cnp.ndarray var = _empty_doubles(C)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef double* pm = _doubles(mean)
    cdef double* pv = _doubles(var)
    cdef bint f64 = _is_f64(x)
    cdef int status = 0
    cdef double* partial
    with nogil:
        if S == 1:
            partial = <double*>_alloc(_moments_columns_scratch(N, C) * sizeof(double))
            if partial == NULL:
                status = -1
            elif f64:
                _moments_columns(<const double*>px, N, C, pm, pv, nthreads, partial)
            else:
                _moments_columns(<const float*>px, N, C, pm, pv, nthreads, partial)
            free(partial)
        elif f64:
            status = _moments_channels(<const double*>px, N, C, S, pm, pv, nthreads)
        else:
            status = _moments_channels(<const float*>px, N, C, S, pm, pv, nthreads)
    if status < 0:
        _out_of_memory()
    return mean, var


def forward_with_stats(cnp.ndarray x, cnp.ndarray out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                       object mean, object var, object weight, object bias, double eps, int nthreads,
                       object commit=None, int act=0, object add=None):
    """``out = (x - mean) / sqrt(var + eps) * weight + bias`` per channel of an ``[N, C, S]`` buffer
    (``S == 1`` is the channels-last ``[N, C]`` case), then ``act(out + add)`` in the same sweep (``act``:
    an activation code, 0 none; ``add``: None or an array in ``out``'s layout, see Epilogue); then applies
    ``commit`` (a :class:`Commit`)."""
    cdef Buffers c
    _buffers(&c, x, out, None, act, add)
    cdef ParamVector vm = _param_vector(mean), vv = _param_vector(var)
    cdef ParamVector vw = _param_vector(weight), vb = _param_vector(bias)
    cdef int status
    with nogil:
        if c.half >= 0:
            status = _fold_and_sweep_half(<const uint16_t*>c.x, <uint16_t*>c.y, c.half, N, C, S, vm, vv, vw, vb, eps,
                                          nthreads, c.ep)
        elif c.f64:
            status = _fold_and_sweep(<const double*>c.x, <double*>c.y, N, C, S, vm, vv, vw, vb, eps, nthreads, c.ep)
        else:
            status = _fold_and_sweep(<const float*>c.x, <float*>c.y, N, C, S, vm, vv, vw, vb, eps, nthreads, c.ep)
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
    cdef double* pm = _doubles(mean)
    cdef double* pv = _doubles(var)
    cdef double* pr = _doubles(rstd)
    cdef double center
    for i in range(n):
        _center_and_rstd(pm[i], pv[i], eps, rms, &center, &pr[i])
    if rms:
        for i in range(n):
            _rms_in_range(pm[i], pv[i], eps, &pr[i])
    return stats


cdef RowAffine _row_affine(object weight, object bias, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sub,
                           Py_ssize_t groups, bint per_element, bint rms):
    """The affine map of the rows of an [N, R, S] buffer; sub, groups <= 0 mean one channel per row."""
    cdef RowAffine a
    a.weight = _param_vector(weight)
    a.bias = _param_vector(bias)
    a.sub = sub if sub > 0 else S
    a.groups = groups if groups > 0 else R
    a.per_element = per_element
    a.rms = rms
    a.ep = NULL
    return a


def forward_rows(cnp.ndarray x, cnp.ndarray out, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S, object weight,
                 object bias, double eps, int nthreads, Py_ssize_t sub=0, Py_ssize_t groups=0,
                 bint per_element=False, bint rms=False, bint stats=True, object commit=None,
                 cnp.ndarray residual=None, cnp.ndarray h=None, int act=0, object add=None):
    """Training-mode normalization of the rows of an ``[N, R, S]`` buffer with their own statistics.

    ``sub``/``groups`` map sub-runs to channels of ``weight``/``bias`` (defaults: one channel per row);
    ``per_element`` indexes ``weight``/``bias`` (of the data's dtype) by position in the run instead;
    ``rms`` scales by the root mean square.  With ``residual`` (of x's size and dtype, N == 1), the rows
    normalized are those of ``h = x + residual``, written to ``h`` in the same pass.  Returns the per-row
    (mean, biased variance, rstd), float64, rstd being the inverse standard deviation (or root mean square)
    the sweep used; None without ``stats``.  Then applies ``commit`` (a :class:`Commit`) with these
    statistics.  ``act``, ``add``: as :func:`forward_with_stats`'s.
    """
    stats = stats or commit is not None
    cdef tuple result = _statistics(R) if stats else None
    cdef double* scratch = NULL if stats else <double*>_alloc(2 * R * sizeof(double))
    cdef Buffers c
    _buffers(&c, x, out, None, act, add)
    cdef double* pm = _doubles(result[0]) if stats else scratch
    cdef double* pv = _doubles(result[1]) if stats else scratch + R
    cdef RowAffine a = _row_affine(weight, bias, R, S, sub, groups, per_element, rms)
    cdef int status
    a.ep = c.ep
    if pm == NULL:
        _out_of_memory()
    cdef bint channel_rows = not per_element and not rms and a.sub == S and a.groups == R
    if c.half >= 0 and (residual is not None and not per_element or N != 1 and not channel_rows):
        free(scratch)
        raise ValueError("forward_rows: half-precision buffers take a residual with a per-element affine only, and "
                         "with N > 1 a channel's affine per row")
    cdef void* pr = NULL if residual is None else cnp.PyArray_DATA(residual)
    cdef void* ph = NULL if h is None else cnp.PyArray_DATA(h)
    with nogil:
        if pr != NULL and c.half >= 0:
            status = _forward_rows_half(<const uint16_t*>c.x, <uint16_t*>c.y, c.half, R, S, &a, eps, pm, pv, nthreads,
                                        <const uint16_t*>pr, <uint16_t*>ph)
        elif pr != NULL and c.f64:
            status = _forward_rows_residual(<const double*>c.x, <const double*>pr, <double*>ph, <double*>c.y, R, S,
                                            &a, eps, pm, pv, nthreads)
        elif pr != NULL:
            status = _forward_rows_residual(<const float*>c.x, <const float*>pr, <float*>ph, <float*>c.y, R, S,
                                            &a, eps, pm, pv, nthreads)
        elif c.half >= 0 and N != 1:
            status = _forward_channels_half(<const uint16_t*>c.x, <uint16_t*>c.y, c.half, N, R, S, &a, eps, pm, pv,
                                            nthreads)
        elif c.half >= 0:
            status = _forward_rows_half(<const uint16_t*>c.x, <uint16_t*>c.y, c.half, R, S, &a, eps, pm, pv, nthreads)
        elif c.f64:
            status = _forward_rows(<const double*>c.x, <double*>c.y, N, R, S, &a, eps, pm, pv, nthreads)
        else:
            status = _forward_rows(<const float*>c.x, <float*>c.y, N, R, S, &a, eps, pm, pv, nthreads)
    free(scratch)
    if status < 0:
        _out_of_memory()
    if not stats:
        return None
    _with_rstd(result, eps, rms)
    _apply(commit, out, result[0], result[1], result[2])
    return result


def forward_columns(cnp.ndarray x, cnp.ndarray out, Py_ssize_t M, Py_ssize_t C, object weight, object bias,
                    double eps, int nthreads, object commit=None, int act=0, object add=None):
    """Training-mode normalization of the columns of an ``[M, C]`` buffer (channels last): the
    statistics need every row, so it is moments, then a second sweep.  Returns (mean, biased var, rstd)
    after applying ``commit`` (a :class:`Commit`) with them.  ``act``, ``add``: as
    :func:`forward_with_stats`'s."""
    cdef tuple stats = _statistics(C)
    cdef Buffers c
    _buffers(&c, x, out, None, act, add)
    cdef double* pm = _doubles(stats[0])
    cdef double* pv = _doubles(stats[1])
    cdef double* pr = _doubles(stats[2])  # filled by the fold, as _with_rstd would
    cdef ParamVector vw = _param_vector(weight), vb = _param_vector(bias)
    cdef ParamVector vm = _param_vector(stats[0]), vv = _param_vector(stats[1])
    cdef int status = -1
    cdef double* partial = NULL
    with nogil:
        if c.half >= 0:
            status = _forward_columns_half(<const uint16_t*>c.x, <uint16_t*>c.y, c.half, M, C, vw, vb, eps, pm, pv, vm,
                                           vv, nthreads, c.ep)
        else:
            partial = <double*>_alloc(_moments_columns_scratch(M, C) * sizeof(double))
        if partial != NULL:
            if c.f64:
                _moments_columns(<const double*>c.x, M, C, pm, pv, nthreads, partial)
                status = _fold_and_sweep(<const double*>c.x, <double*>c.y, M, C, 1, vm, vv, vw, vb, eps, nthreads, c.ep,
                                         pr)
            else:
                _moments_columns(<const float*>c.x, M, C, pm, pv, nthreads, partial)
                status = _fold_and_sweep(<const float*>c.x, <float*>c.y, M, C, 1, vm, vv, vw, vb, eps, nthreads, c.ep,
                                         pr)
        free(partial)
    if status < 0:
        _out_of_memory()
    if c.half >= 0:  # the half sweep's fold leaves rstd to this
        _with_rstd(stats, eps, False)
    _apply(commit, out, stats[0], stats[1], stats[2])
    return stats


def forward_column_groups(cnp.ndarray x, cnp.ndarray out, Py_ssize_t N, Py_ssize_t S, Py_ssize_t C,
                          Py_ssize_t G, object weight, object bias, double eps, int nthreads, object commit=None,
                          int act=0, object add=None):
    """GroupNorm of a channels-last ``[N, S, C]`` buffer; returns per (sample, group) (mean, var, rstd)
    after applying ``commit`` (a :class:`Commit`) with them.  ``act``, ``add``: as
    :func:`forward_with_stats`'s."""
    cdef tuple stats = _statistics(N * G)
    cdef Buffers c
    _buffers(&c, x, out, None, act, add)
    cdef double* pm = _doubles(stats[0])
    cdef double* pv = _doubles(stats[1])
    cdef ParamVector vw = _param_vector(weight), vb = _param_vector(bias)
    cdef int status
    with nogil:
        if c.half >= 0:
            status = _forward_column_groups_half(<const uint16_t*>c.x, <uint16_t*>c.y, c.half, N, S, C, G, vw, vb, eps,
                                                 pm, pv, nthreads, c.ep)
        elif c.f64:
            status = _forward_column_groups(<const double*>c.x, <double*>c.y, N, S, C, G, vw, vb, eps, pm, pv, nthreads,
                                            c.ep)
        else:
            status = _forward_column_groups(<const float*>c.x, <float*>c.y, N, S, C, G, vw, vb, eps, pm, pv, nthreads,
                                            c.ep)
    if status < 0:
        _out_of_memory()
    _with_rstd(stats, eps, False)
    _apply(commit, out, stats[0], stats[1], stats[2])
    return stats


def backward_rows(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S,
                  cnp.ndarray mean, cnp.ndarray rstd, object weight, bint training, int nthreads,
                  Py_ssize_t sub=0, Py_ssize_t groups=0, bint per_element=False, bint rms=False, object check=None):
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
    cdef double* xhat_sums = <double*>_alloc(2 * R * sizeof(double))  # the rows' check sums
    if xhat_sums == NULL:
        _out_of_memory()
    cdef cnp.ndarray sum_dy = _empty_doubles(nsums)
    cdef cnp.ndarray sum_dy_xhat = _empty_doubles(nsums)
    cdef Buffers c
    _backward_buffers(&c, x, dy, dx, mean, rstd, sum_dy, sum_dy_xhat)
    cdef int status
    with nogil:
        if per_element:
            if c.half >= 0:
                status = _backward_per_element_half(<const uint16_t*>c.x, <const uint16_t*>c.dy, <uint16_t*>c.y, c.half,
                                                    R, S, <const float*>a.weight.data, c.mean, c.rstd, training, rms,
                                                    c.sum_dy_xhat, c.sum_dy, xhat_sums, nthreads)
            elif c.f64:
                status = _backward_per_element(<const double*>c.x, <const double*>c.dy, <double*>c.y, R, S,
                                               <const double*>a.weight.data, c.mean, c.rstd, training, rms,
                                               c.sum_dy_xhat, c.sum_dy, xhat_sums, nthreads)
            else:
                status = _backward_per_element(<const float*>c.x, <const float*>c.dy, <float*>c.y, R, S,
                                               <const float*>a.weight.data, c.mean, c.rstd, training, rms,
                                               c.sum_dy_xhat, c.sum_dy, xhat_sums, nthreads)
        elif c.half >= 0:
            status = _backward_rows_half(<const uint16_t*>c.x, <const uint16_t*>c.dy, <uint16_t*>c.y, c.half, N, R, S,
                                         &a, c.mean, c.rstd, training, c.sum_dy, c.sum_dy_xhat, xhat_sums, nthreads)
        elif c.f64:
            status = _backward_rows(<const double*>c.x, <const double*>c.dy, <double*>c.y, N, R, S, &a, c.mean, c.rstd,
                                    training, c.sum_dy, c.sum_dy_xhat, xhat_sums, nthreads)
        else:
            status = _backward_rows(<const float*>c.x, <const float*>c.dy, <float*>c.y, N, R, S, &a, c.mean, c.rstd,
                                    training, c.sum_dy, c.sum_dy_xhat, xhat_sums, nthreads)
    try:
        if status < 0:
            _out_of_memory()
        if training and check is not None:
            _check_unmodified(xhat_sums, R, N * S, c.mean, c.rstd, check, rms, c.f64)
    finally:
        free(xhat_sums)
    return sum_dy, sum_dy_xhat


def backward_reduce(cnp.ndarray x, cnp.ndarray dy, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                    cnp.ndarray mean, cnp.ndarray rstd, int nthreads):
    """Per-channel (sum(dy), sum(dy * xhat)) of an ``[N, C, S]`` buffer, float64: the part of a
    BatchNorm backward that several processes add up before :func:`backward_elemt`."""
    cdef cnp.ndarray sum_dy = _empty_doubles(C)
    cdef cnp.ndarray sum_dy_xhat = _empty_doubles(C)
    cdef Buffers c
    _backward_buffers(&c, x, dy, None, mean, rstd, sum_dy, sum_dy_xhat)
    with nogil:
        if c.f64:
            _backward_reduce_channels(<const double*>c.x, <const double*>c.dy, N, C, S, c.mean, c.rstd, c.sum_dy,
                                      c.sum_dy_xhat, nthreads)
        else:
            _backward_reduce_channels(<const float*>c.x, <const float*>c.dy, N, C, S, c.mean, c.rstd, c.sum_dy,
                                      c.sum_dy_xhat, nthreads)
    return sum_dy, sum_dy_xhat


def backward_elemt(cnp.ndarray x, cnp.ndarray dy, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                   cnp.ndarray mean, cnp.ndarray rstd, object weight, cnp.ndarray sum_dy,
                   cnp.ndarray sum_dy_xhat, double count, int nthreads):
    """Training-mode BatchNorm input gradient of an ``[N, C, S]`` buffer from per-channel sums taken over
    ``count`` values in all (this buffer and others elsewhere)."""
    cdef RowAffine a = _row_affine(weight, None, C, S, 0, 0, False, False)
    cdef Buffers c
    _backward_buffers(&c, x, dy, dx, mean, rstd, sum_dy, sum_dy_xhat)
    with nogil:
        if c.f64:
            _backward_elemt_channels(<const double*>c.x, <const double*>c.dy, <double*>c.y, N, C, S, &a, c.mean,
                                     c.rstd, c.sum_dy, c.sum_dy_xhat, count, nthreads)
        else:
            _backward_elemt_channels(<const float*>c.x, <const float*>c.dy, <float*>c.y, N, C, S, &a, c.mean, c.rstd,
                                     c.sum_dy, c.sum_dy_xhat, count, nthreads)


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
    cdef cnp.ndarray sum_dy = _empty_doubles(N * C)
    cdef cnp.ndarray sum_dy_xhat = _empty_doubles(N * C)
    cdef Buffers c
    _backward_buffers(&c, x, dy, dx, mean, rstd, sum_dy, sum_dy_xhat)
    cdef ParamVector vw = _param_vector(weight)
    cdef Py_ssize_t n
    cdef Py_ssize_t item = 8 if c.f64 else 2 if c.half >= 0 else 4
    # once, before the first sample: the kernel's scratch, the groups' check sums, a half call's tiles
    cdef size_t tiles = _half_tiles_scratch(M, C, nthreads) * sizeof(float) if c.half >= 0 else 0
    cdef void* scratch = _alloc(_backward_columns_scratch(M, C) + 2 * N * G * sizeof(double) + tiles)
    cdef double* xhat_sums
    cdef float* half_scratch
    if scratch == NULL:
        _out_of_memory()
    xhat_sums = <double*>(<char*>scratch + _backward_columns_scratch(M, C))
    half_scratch = <float*>(xhat_sums + 2 * N * G)
    with nogil:
        for n in range(N):
            if c.f64:
                _backward_columns(<const double*>(c.x + n * M * C * item), <const double*>(c.dy + n * M * C * item),
                                  <double*>(c.y + n * M * C * item), M, C, c.mean + n * G, c.rstd + n * G, C // G, vw,
                                  training, c.sum_dy + n * C, c.sum_dy_xhat + n * C, xhat_sums + 2 * n * G, nthreads,
                                  scratch)
            else:
                _backward_columns(<const float*>(c.x + n * M * C * item), <const float*>(c.dy + n * M * C * item),
                                  <float*>(c.y + n * M * C * item), M, C, c.mean + n * G, c.rstd + n * G, C // G, vw,
                                  training, c.sum_dy + n * C, c.sum_dy_xhat + n * C, xhat_sums + 2 * n * G, nthreads,
                                  scratch, c.half, half_scratch)
    try:
        if training and check is not None:
            _check_unmodified(xhat_sums, N * G, M * (C // G), c.mean, c.rstd, check, False, c.f64)
    finally:
        free(scratch)
    return sum_dy, sum_dy_xhat


def activate(cnp.ndarray y, object add, int act, int nthreads):
    """``y = act(y + add)`` in place, y float32 or float64 (``add``: None or an array of y's layout and
    dtype): the epilogue of a fused sweep, for the paths that normalize first (masked inputs, several
    channel axes, ``axes=``)."""
    cdef Buffers c
    _buffers(&c, y, y, None, act, add)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(y), chunks = (n + CHUNK - 1) // CHUNK, t
    if c.ep == NULL:
        return
    with nogil:
        if c.f64:
            for t in prange(chunks, schedule="static", num_threads=max(1, nthreads)):
                _epilogue(<double*>c.y + t * CHUNK, min(<Py_ssize_t>CHUNK, n - t * CHUNK), c.ep)
        else:
            for t in prange(chunks, schedule="static", num_threads=max(1, nthreads)):
                _epilogue(<float*>c.y + t * CHUNK, min(<Py_ssize_t>CHUNK, n - t * CHUNK), c.ep)


def activation_grad(cnp.ndarray x, cnp.ndarray dy, object add, int act, object factors, bint columns, object w,
                    object b, Py_ssize_t S, int nthreads):
    """``dz = dy * act'(z)``, a new array, z the forward's pre-activation recomputed from ``x`` seen as
    ``[P, S]``: ``(x - mean_hi) * scale + shift`` with ``factors`` = rows (mean_hi, scale, shift) of one
    value per row, or per column for ``columns`` (None: z = x), then ``* w``, ``+ b`` (None or S values per
    column), ``+ add`` (None or x's layout).  All C-contiguous, of x's dtype (float32 or float64); for
    float16 or bfloat16 x, dy and add of x's dtype and the rest float32, dz computed in float32, rounded."""
    cdef cnp.ndarray dz = np.empty_like(x)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x), P = n // S if S else 0
    cdef Py_ssize_t L = 0 if factors is None else cnp.PyArray_DIM(factors, 1)
    cdef Buffers c
    _buffers(&c, x, dz, dy)
    cdef const char* pa = NULL if add is None else <const char*>cnp.PyArray_DATA(add)
    cdef const char* pf = NULL if factors is None else <const char*>cnp.PyArray_DATA(factors)
    cdef const char* pw = NULL if w is None else <const char*>cnp.PyArray_DATA(w)
    cdef const char* pb = NULL if b is None else <const char*>cnp.PyArray_DATA(b)
    with nogil:
        if c.half >= 0:
            _activation_grad_half(<const uint16_t*>c.x, <const uint16_t*>c.dy, <const uint16_t*>pa, <uint16_t*>c.y,
                                  c.half, P, S, <const float*>pf, L, columns, <const float*>pw, <const float*>pb, act,
                                  nthreads)
        elif c.f64:
            _activation_grad_folded(<const double*>c.x, <const double*>c.dy, <const double*>pa, <double*>c.y, P, S,
                                    <const double*>pf, L, columns, <const double*>pw, <const double*>pb, act,
                                    nthreads)
        else:
            _activation_grad_folded(<const float*>c.x, <const float*>c.dy, <const float*>pa, <float*>c.y, P, S,
                                    <const float*>pf, L, columns, <const float*>pw, <const float*>pb, act,
                                    nthreads)
    return dz
