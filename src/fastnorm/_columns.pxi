# The [M, C] columns (channels last): statistics per column need every row, so a pass of column moments
# (_moments_columns) then a sweep; GroupNorm channels last merges a sample's columns into its groups.
# Forward, then backward (column sums by tiles, then the dx sweep).  Shapes: x, y, dy, dx [N][M, C];
# mean, rstd per (sample, group); sum_dy, sum_dy_xhat [N, C].

cdef void _sweep_columns_folded(const floating* x, floating* y, Py_ssize_t M, Py_ssize_t C, const floating* p,
                                int nthreads, bint stream, const Epilogue* ep) noexcept nogil:
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
            _sweep_columns(x, y, M, C, p, C, stream, ep)
        else:
            rows_per_task = max(<Py_ssize_t>1, 65536 // C)
            ntasks = (M + rows_per_task - 1) // rows_per_task
            for task in prange(ntasks, schedule="static", num_threads=nthreads):
                r0 = task * rows_per_task
                _sweep_columns(x + r0 * C, y + r0 * C, min(rows_per_task, M - r0), C, p, C, stream, ep)
        return
    for k in range(3):
        for j in range(rep):
            memcpy(tiled + k * L + j * C, p + k * C, C * sizeof(floating))
    if nthreads <= 1:
        _sweep_columns(x, y, full, L, tiled, L, stream, ep)
    else:
        for task in prange(ntasks, schedule="static", num_threads=nthreads):
            r0 = task * rows_per_task
            _sweep_columns(x + r0 * L, y + r0 * L, min(rows_per_task, full - r0), L, tiled, L, stream, ep)
    # The last M % rep rows of the tensor: one partial tiled row.
    _sweep_columns(x + full * L, y + full * L, 1, (M - full * rep) * C, tiled, L, stream, ep)
    free(tiled)


cdef void _fold_column_groups(Py_ssize_t n, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G, const double* cmean,
                              const double* cvar, ParamVector weight, ParamVector bias, double eps, double* mean,
                              double* var, floating* p) noexcept nogil:
    """Sample n's groups of C/G columns: their moments merged (Chan, in column order) from the columns' over
    S rows, into mean[n * G + g], var[n * G + g]; and the columns' folded factors into p."""
    cdef Py_ssize_t K = C // G
    cdef Py_ssize_t g, c
    cdef Moments m, col
    cdef double center, inv
    for g in range(G):
        m.count = 0.0
        m.mean = 0.0
        m.var = 0.0
        for c in range(g * K, (g + 1) * K):
            col.count = <double>S
            col.mean = cmean[c]
            col.var = cvar[c]
            _chan_merge(&m, col)
        _store_moments(m, n * G + g, mean, var)
        _center_and_rstd(mean[n * G + g], var[n * G + g], eps, False, &center, &inv)
        for c in range(g * K, (g + 1) * K):
            _fold(center, inv, _at(weight, c, 1.0), _at(bias, c, 0.0), &p[c], &p[C + c], &p[2 * C + c])


cdef int _forward_column_groups(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t S, Py_ssize_t C,
                                Py_ssize_t G, ParamVector weight, ParamVector bias, double eps, double* mean,
                                double* var, int nthreads, const Epilogue* ep) noexcept nogil:
    """GroupNorm of channels-last data ``[N, S, C]``: per sample, column moments over the S rows, merged
    (Chan, in column order) into the moments of each group of C/G columns, then a channels-last sweep."""
    cdef Py_ssize_t n
    # All the scratch memory before the first sample is written (out= may be the input)
    cdef double* cmean = <double*>_alloc((2 * C + _moments_columns_scratch(S, C)) * sizeof(double))
    cdef double* cvar = cmean + C
    cdef floating* p = <floating*>_alloc(3 * C * sizeof(floating))
    cdef bint stream = _streams(2 * N * S * C * sizeof(floating))
    if cmean == NULL or p == NULL:
        free(cmean)
        free(p)
        return -1
    for n in range(N):
        _moments_columns(x + n * S * C, S, C, cmean, cvar, nthreads, cmean + 2 * C)
        _fold_column_groups(n, S, C, G, cmean, cvar, weight, bias, eps, mean, var, p)
        _sweep_columns_folded(x + n * S * C, y + n * S * C, S, C, p, nthreads, stream, ep)
    _fence_streams(stream, nthreads)
    free(p)
    free(cmean)
    return 0


cdef inline Py_ssize_t _backward_columns_scratch(Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    """The bytes of scratch memory _backward_columns needs (the same for every thread count)."""
    return (4 * ((M + _rows_per_block(C) - 1) // _rows_per_block(C)) * C + 6 * C) * sizeof(double)


cdef void _backward_columns(const floating* x, const floating* dy, floating* dx, Py_ssize_t M, Py_ssize_t C,
                            const double* mean, const double* rstd, Py_ssize_t group, ParamVector weight,
                            bint training, double* sum_dy, double* sum_dy_xhat, double* xhat_sums, int nthreads,
                            void* scratch, int half=-1, float* half_scratch=NULL) noexcept nogil:
    """Channels-last backward of an [M, C] block whose columns form groups of ``group`` columns sharing
    mean[c // group], rstd[c // group] (BatchNorm: group = 1; GroupNorm per sample: C / G).  sum_dy,
    sum_dy_xhat receive the per-column sum(dy), sum(dy * xhat); xhat_sums[2 g], xhat_sums[2 g + 1] the
    groups' check sums; ``scratch``: _backward_columns_scratch bytes.  ``half`` (HALF_F16, HALF_BF16; the
    float specialization): x, dy and dx hold half values, each tile widened into a thread's part of
    ``half_scratch`` (_half_tiles_scratch)."""
    cdef Tiles tiles = _tiles(M, C, nthreads)
    cdef Py_ssize_t nblocks = tiles.nblocks
    cdef Py_ssize_t G = C // group
    cdef Py_ssize_t blk, c, g, i, t
    cdef double sum_w_dy, sum_w_dy_xhat, w, c2, c3
    cdef double* partial = <double*>scratch  # per row block: sum(dy), sum(dy (x - mean)), sum(xhat), sum(xhat**2)
    cdef double* colmean = partial + 4 * nblocks * C
    cdef double* colrstd = colmean + C
    cdef floating* p = <floating*>(colrstd + C)  # 4 * C values
    memset(partial, 0, 4 * nblocks * C * sizeof(double))  # the column sums accumulate into it
    for c in range(C):
        colmean[c] = mean[c // group]
        colrstd[c] = rstd[c // group]
    if half >= 0:
        _backward_tiles_half(<const uint16_t*>x, <const uint16_t*>dy, NULL, half, &tiles, colmean, colrstd, partial,
                             NULL, half_scratch, nthreads)
    elif nthreads <= 1:  # no thread team for one thread
        for t in range(nblocks * tiles.ncb):
            _backward_reduce_tile(x, dy, &tiles, t, colmean, colrstd, partial)
    else:
        for t in prange(nblocks * tiles.ncb, schedule="static", num_threads=nthreads):
            _backward_reduce_tile(x, dy, &tiles, t, colmean, colrstd, partial)
    for c in range(C):
        sum_dy[c] = 0.0
        sum_dy_xhat[c] = 0.0
    for g in range(2 * G):
        xhat_sums[g] = 0.0
    for blk in range(nblocks):
        for c in range(C):
            sum_dy[c] += partial[4 * C * blk + c]
            sum_dy_xhat[c] += partial[4 * C * blk + C + c]
            xhat_sums[2 * (c // group)] += partial[4 * C * blk + 2 * C + c]
            xhat_sums[2 * (c // group) + 1] += partial[4 * C * blk + 3 * C + c]
    for g in range(G):
        sum_w_dy = 0.0
        sum_w_dy_xhat = 0.0
        for i in range(group):
            c = g * group + i
            sum_dy_xhat[c] *= rstd[g]
            w = _at(weight, c, 1.0)
            sum_w_dy += w * sum_dy[c]
            sum_w_dy_xhat += w * sum_dy_xhat[c]
        c2 = 0.0
        c3 = 0.0
        if training:
            _backward_coefficients(sum_w_dy, sum_w_dy_xhat, <double>(M * group), rstd[g],
                                   mean[g] - <double><floating>mean[g], False, &c2, &c3)
        for i in range(group):
            c = g * group + i
            p[c] = <floating>mean[g]
            p[C + c] = <floating>(rstd[g] * _at(weight, c, 1.0))
            p[2 * C + c] = <floating>c2
            p[3 * C + c] = <floating>c3
    if half >= 0:
        _backward_tiles_half(<const uint16_t*>x, <const uint16_t*>dy, <uint16_t*>dx, half, &tiles, colmean, colrstd,
                             partial, <const float*>p, half_scratch, nthreads)
    elif nthreads <= 1:  # no thread team for one thread
        for t in range(nblocks * tiles.ncb):
            _backward_elemt_tile(x, dy, dx, &tiles, t, p)
    else:
        for t in prange(nblocks * tiles.ncb, schedule="static", num_threads=nthreads):
            _backward_elemt_tile(x, dy, dx, &tiles, t, p)


cdef inline void _backward_reduce_tile(const floating* x, const floating* dy, const Tiles* g, Py_ssize_t t,
                                       const double* colmean, const double* colrstd, double* partial) noexcept nogil:
    """Tile ``t`` of _backward_columns's column sums, into row block ``blk``'s partials."""
    cdef Py_ssize_t blk, r0, rows, c0, ncols
    cdef double* sum_dy
    if not _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        return
    sum_dy = partial + 4 * g.C * blk + c0
    if floating is float:
        fastnorm_backward_reduce_columns_f32(x + r0 * g.C + c0, dy + r0 * g.C + c0, rows, ncols, g.C, colmean + c0,
                                             colrstd + c0, sum_dy, sum_dy + g.C, sum_dy + 2 * g.C, sum_dy + 3 * g.C)
    else:
        fastnorm_backward_reduce_columns_f64(x + r0 * g.C + c0, dy + r0 * g.C + c0, rows, ncols, g.C, colmean + c0,
                                             colrstd + c0, sum_dy, sum_dy + g.C, sum_dy + 2 * g.C, sum_dy + 3 * g.C)


cdef inline void _backward_elemt_tile(const floating* x, const floating* dy, floating* dx, const Tiles* g,
                                      Py_ssize_t t, const floating* p) noexcept nogil:
    """Tile ``t`` of _backward_columns's dx sweep."""
    cdef Py_ssize_t blk, r0, rows, c0, ncols, off
    if not _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        return
    off = r0 * g.C + c0
    if floating is float:
        fastnorm_backward_elemt_columns_f32(x + off, dy + off, dx + off, rows, ncols, g.C, p + c0, g.C)
    else:
        fastnorm_backward_elemt_columns_f64(x + off, dy + off, dx + off, rows, ncols, g.C, p + c0, g.C)
