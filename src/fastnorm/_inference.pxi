# Frozen statistics (eval mode, batch_normalization, SyncBatchNorm's eval): fold each channel's
# statistics and affine once into (mean_hi, scale, shift), then one sweep; and the eval cache of a
# BatchNorm layer, which keeps the folded factors while its parameters are unchanged.  At the end, the
# backward through an activation: the forward's pre-activation recomputed with given folded factors.

cdef enum:
    FOLD_CHUNK = 256  # channels folded at a time (_fold_channels)


cdef void _fold_channels(Py_ssize_t C, ParamVector mean, ParamVector var, ParamVector weight, ParamVector bias,
                         double eps, floating* p, double* rstd_out=NULL) noexcept nogil:
    """The folded factors of C channels from frozen statistics: ``p[c], p[C + c], p[2 * C + c]`` =
    mean_hi, scale, shift (a missing mean is 0, a missing variance 1); each channel's rstd also into
    ``rstd_out`` when given (a training call returns it: one more square root per channel otherwise)."""
    cdef double m[FOLD_CHUNK]
    cdef double v[FOLD_CHUNK]
    cdef double w[FOLD_CHUNK]
    cdef double b[FOLD_CHUNK]
    cdef Py_ssize_t c, c0, n
    cdef double center, rstd
    # By chunks of plain double vectors, so that the loop has no branch and vectorizes: a division and a
    # square root per channel, one at a time, were most of the fixed cost of a call on (2, 512).
    for c0 in range(0, C, 256):  # FOLD_CHUNK
        n = min(<Py_ssize_t>FOLD_CHUNK, C - c0)
        _param_doubles(mean, c0, n, 0.0, m)
        _param_doubles(var, c0, n, 1.0, v)
        _param_doubles(weight, c0, n, 1.0, w)
        _param_doubles(bias, c0, n, 0.0, b)
        for c in range(n):
            _center_and_rstd(m[c], v[c], eps, False, &center, &rstd)
            _fold(center, rstd, w[c], b[c], &p[c0 + c], &p[C + c0 + c], &p[2 * C + c0 + c])
            v[c] = rstd
        if rstd_out != NULL:
            memcpy(rstd_out + c0, v, n * sizeof(double))


cdef int _fold_and_sweep(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                         ParamVector mean, ParamVector var, ParamVector weight, ParamVector bias, double eps,
                         int nthreads, const Epilogue* ep, double* rstd_out=NULL) noexcept nogil:
    """Normalize with given statistics: ``[N, C, S]`` when S > 1, ``[N, C]`` rows when S == 1 (see
    _fold_channels for ``rstd_out``), then ``ep`` (if any)."""
    cdef floating* p = <floating*>_alloc(3 * C * sizeof(floating))
    if p == NULL:
        return -1
    _fold_channels(C, mean, var, weight, bias, eps, p, rstd_out)
    _sweep_folded(x, y, N, C, S, p, nthreads, ep)
    free(p)
    return 0


cdef void _sweep_folded(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                        const floating* p, int nthreads, const Epilogue* ep) noexcept nogil:
    """The sweep with folded factors p: ``[N, C, S]``, or the columns of ``[N, C]`` when S == 1."""
    cdef bint stream = _streams(2 * N * C * S * sizeof(floating))
    cdef floating* columns = NULL
    cdef Py_ssize_t k, c, j
    if 1 < S < SHORT_SWEEP:
        columns = <floating*>_alloc(3 * C * S * sizeof(floating))
    if S == 1:
        _sweep_columns_folded(x, y, N, C, p, nthreads, stream, ep)
    elif columns != NULL:
        # Short runs: the same sweep over the columns of [N, C * S], each channel's factors repeated S
        # times (a call per run of a few values would cost more than its values).
        for k in range(3):
            for c in range(C):
                for j in range(S):
                    columns[(k * C + c) * S + j] = p[k * C + c]
        _sweep_columns_folded(x, y, N, C * S, columns, nthreads, stream, ep)
        free(columns)
    else:
        _sweep_channels(x, y, N, C, S, p, nthreads, stream, ep)
    _fence_streams(stream, nthreads)


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
                object bias, double eps, int nthreads, int act=0, object add=None):
    """Eval-mode BatchNorm of ``x`` with the factors in ``cache``, then ``act(y + add)`` (see Epilogue):
    returns a new array, or None when an argument is not of the plain kind (then the validating path
    handles it)."""
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
    if N * S == 0 or not (add is None or _same_layout(add, arr)) or not cache._refresh((mean, var, weight, bias), C,
                                                                                       eps):
        return None
    out = _empty(ndim, dims, t)
    cdef Epilogue e
    cdef const Epilogue* ep = _epilogue_for(&e, act, add, out)
    cdef ParamVector vm = _param_vector(mean), vv = _param_vector(var)
    cdef ParamVector vw = _param_vector(weight), vb = _param_vector(bias)
    cdef void* px = cnp.PyArray_DATA(arr)
    cdef void* py = cnp.PyArray_DATA(out)
    if t == cnp.NPY_FLOAT:
        _sweep_cached(<const float*>px, <float*>py, N, C, S, &cache.p32, vm, vv, vw, vb, eps, nthreads, ep)
    else:
        _sweep_cached(<const double*>px, <double*>py, N, C, S, &cache.p64, vm, vv, vw, vb, eps, nthreads, ep)
    return out


cdef int _sweep_cached(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                       floating** cached, ParamVector mean, ParamVector var, ParamVector weight, ParamVector bias,
                       double eps, int nthreads, const Epilogue* ep) except -1:
    """The sweep with the cache's factors for the data's type, folded first where the cache has none.  It
    runs without the GIL on a copy of them: another thread may refold the cache meanwhile (parameters
    changed under a running call), and must not free what this call reads."""
    cdef floating* factors
    if cached[0] == NULL:
        cached[0] = <floating*>_alloc(3 * C * sizeof(floating))
        if cached[0] == NULL:
            _out_of_memory()
        _fold_channels(C, mean, var, weight, bias, eps, cached[0])
    factors = <floating*>_alloc(3 * C * sizeof(floating))
    if factors == NULL:
        _out_of_memory()
    memcpy(factors, cached[0], 3 * C * sizeof(floating))
    with nogil:
        _sweep_folded(x, y, N, C, S, factors, nthreads, ep)
    free(factors)
    return 0


# The backward through an activation: the pre-activation z of the forward recomputed by chunks of a
# [P, S] view of x with given folded factors, and ``dz = dy * act'(z)`` written while the chunk is in L1.
cdef inline void _pre_activation_chunk(const floating* x, floating* z, Py_ssize_t n, const floating* mean_hi,
                                       const floating* scale, const floating* shift, bint columns,
                                       const floating* w, const floating* b, const floating* add) noexcept nogil:
    """``z = (x - mean_hi) * scale + shift`` over n values (factors of the run, or per value for
    ``columns``; none given: z = x), then ``* w``, ``+ b``, ``+ add`` per value where given: the operations
    of the forward's sweep, one at a time, so the forward's bits."""
    cdef Py_ssize_t i
    cdef floating m, s, h
    if mean_hi == NULL:
        memcpy(z, x, n * sizeof(floating))
    elif columns:
        for i in range(n):
            z[i] = (x[i] - mean_hi[i]) * scale[i] + shift[i]
    else:
        m = mean_hi[0]
        s = scale[0]
        h = shift[0]
        for i in range(n):
            z[i] = (x[i] - m) * s + h
    if w != NULL:
        for i in range(n):
            z[i] = z[i] * w[i]
    if b != NULL:
        for i in range(n):
            z[i] = z[i] + b[i]
    if add != NULL:
        for i in range(n):
            z[i] = z[i] + add[i]


cdef void _activation_grad_folded(const floating* x, const floating* dy, const floating* add, floating* dz,
                                  Py_ssize_t P, Py_ssize_t S, const floating* factors, Py_ssize_t L, bint columns,
                                  const floating* w, const floating* b, int act, int nthreads) noexcept nogil:
    """``dz = dy * act'(z)``, z the pre-activation of x ``[P, S]`` (_pre_activation_chunk): ``factors``
    (mean_hi, scale, shift, L each) per row p, or per column s for ``columns``; ``w``, ``b`` (S each) per
    column; ``add`` of x's layout; any of them NULL: absent."""
    cdef Py_ssize_t per_row = (S + CHUNK - 1) // CHUNK, t, p, s0, o, f
    # relu and relu6 on runs without per-element parameters (BatchNorm, InstanceNorm, GroupNorm channels
    # first) in one loop from x to dz: the chunk of z through L1 cost more than the recomputation.
    cdef bint clamp = (act == 1 or act == 2) and not columns and factors != NULL and w == NULL and b == NULL
    for t in prange(P * per_row, schedule="static", num_threads=max(1, nthreads)):
        p = t // per_row
        s0 = (t - p * per_row) * CHUNK
        o = p * S + s0
        if clamp:
            if floating is float:
                fastnorm_clamp_grad_f32(x + o, dy + o, dz + o, min(<Py_ssize_t>CHUNK, S - s0), factors[p],
                                        factors[L + p], factors[2 * L + p], NULL if add == NULL else add + o,
                                        act == 2)
            else:
                fastnorm_clamp_grad_f64(x + o, dy + o, dz + o, min(<Py_ssize_t>CHUNK, S - s0), factors[p],
                                        factors[L + p], factors[2 * L + p], NULL if add == NULL else add + o,
                                        act == 2)
            continue
        f = s0 if columns else p
        _pre_activation_chunk(x + o, dz + o, min(<Py_ssize_t>CHUNK, S - s0),
                              NULL if factors == NULL else factors + f,
                              NULL if factors == NULL else factors + L + f,
                              NULL if factors == NULL else factors + 2 * L + f, columns,
                              NULL if w == NULL else w + s0, NULL if b == NULL else b + s0,
                              NULL if add == NULL else add + o)
        if floating is float:
            fastnorm_activation_grad_f32(dz + o, dy + o, min(<Py_ssize_t>CHUNK, S - s0), act)
        else:
            fastnorm_activation_grad_f64(dz + o, dy + o, min(<Py_ssize_t>CHUNK, S - s0), act)
