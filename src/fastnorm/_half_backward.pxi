# The backward passes of float16 and bfloat16 (see _half.pxi): x and dy widened into cache a chunk, row or
# tile at a time for the float32 loops, dx computed in float32 and rounded once; the parameter gradients
# are the float32 call's.


# ---------------------------------------------------------------------------------------------------------
# The gradient at the pre-activation (_activation_grad_folded) of half x, dy and add: each chunk widened
# into L1, dz = dy * act'(z) computed in float32 by the float32 chunk loops, rounded once into dz
# ---------------------------------------------------------------------------------------------------------

cdef void _activation_grad_chunk_half(const uint16_t* x, const uint16_t* dy, const uint16_t* add, uint16_t* dz,
                                      int kind, Py_ssize_t n, const float* mean_hi, const float* scale,
                                      const float* shift, bint columns, const float* w, const float* b, int act,
                                      bint clamp) noexcept nogil:
    cdef float bx[CHUNK]
    cdef float bg[CHUNK]
    cdef float ba[CHUNK]
    cdef float bz[CHUNK]
    fastnorm_widen(x, bx, n, kind)
    fastnorm_widen(dy, bg, n, kind)
    if add != NULL:
        fastnorm_widen(add, ba, n, kind)
    if clamp:
        fastnorm_clamp_grad_f32(bx, bg, bz, n, mean_hi[0], scale[0], shift[0], ba if add != NULL else NULL,
                                act == 2)
    else:
        _pre_activation_chunk(<const float*>bx, bz, n, mean_hi, scale, shift, columns, w, b,
                              ba if add != NULL else NULL)
        fastnorm_activation_grad_f32(bz, bg, n, act)
    fastnorm_narrow(bz, dz, n, kind)


cdef void _activation_grad_half(const uint16_t* x, const uint16_t* dy, const uint16_t* add, uint16_t* dz, int kind,
                                Py_ssize_t P, Py_ssize_t S, const float* factors, Py_ssize_t L, bint columns,
                                const float* w, const float* b, int act, int nthreads) noexcept nogil:
    """_activation_grad_folded of half x, dy, add and dz (float32 factors, w, b): the same chunks."""
    cdef Py_ssize_t per_row = (S + CHUNK - 1) // CHUNK, t, p, s0, o, f
    cdef bint clamp = (act == 1 or act == 2) and not columns and factors != NULL and w == NULL and b == NULL
    for t in prange(P * per_row, schedule="static", num_threads=max(1, nthreads)):
        p = t // per_row
        s0 = (t - p * per_row) * CHUNK
        o = p * S + s0
        f = s0 if columns else p
        _activation_grad_chunk_half(x + o, dy + o, NULL if add == NULL else add + o, dz + o, kind,
                                    min(<Py_ssize_t>CHUNK, S - s0), NULL if factors == NULL else factors + f,
                                    NULL if factors == NULL else factors + L + f,
                                    NULL if factors == NULL else factors + 2 * L + f, columns,
                                    NULL if w == NULL else w + s0, NULL if b == NULL else b + s0, act, clamp)


# ---------------------------------------------------------------------------------------------------------
# Backward of LayerNorm and RMSNorm (a per-element affine): the chunks of rows of _backward_per_element,
# each row widened into L1 and given to its chunk function alone, its column sums added to the chunk's
# (one addition per row and column there too: the same sums), its dx narrowed
# ---------------------------------------------------------------------------------------------------------

cdef int _backward_per_element_chunk_half(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int kind,
                                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t D, const float* w,
                                          const double* mean, const double* rstd, bint training, bint rms,
                                          double* col_dy, double* col_dy_xhat, double* xhat_sums) noexcept nogil:
    # The doubles first: after 3 * D floats they would be misaligned for an odd D.
    cdef double* row_dy = <double*>_alloc(2 * D * sizeof(double) + 3 * D * sizeof(float))
    cdef float* rows
    cdef Py_ssize_t r, d
    if row_dy == NULL:
        return -1
    rows = <float*>(row_dy + 2 * D)
    for d in range(D):
        col_dy[d] = 0.0
        col_dy_xhat[d] = 0.0
    for r in range(r0, r1):
        fastnorm_widen(x + r * D, rows, D, kind)
        fastnorm_widen(dy + r * D, rows + D, D, kind)
        _backward_per_element_chunk(<const float*>rows, <const float*>(rows + D), rows + 2 * D, 0, 1, D, w, mean + r,
                                    rstd + r, training, rms, row_dy, row_dy + D, xhat_sums + 2 * r, False)
        fastnorm_narrow(rows + 2 * D, dx + r * D, D, kind)
        for d in range(D):
            col_dy[d] += row_dy[d]
            col_dy_xhat[d] += row_dy[D + d]
    free(row_dy)
    return 0


cdef int _backward_per_element_half(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int kind, Py_ssize_t R,
                                    Py_ssize_t D, const float* w, const double* mean, const double* rstd,
                                    bint training, bint rms, double* grad_w, double* grad_b, double* xhat_sums,
                                    int nthreads) noexcept nogil:
    """_backward_per_element of half x, dy and dx: its chunks (those of float32 data), merged in order."""
    cdef Py_ssize_t nchunks = _per_element_chunks(R, sizeof(float))
    cdef Py_ssize_t per = (R + nchunks - 1) // nchunks
    cdef Py_ssize_t k
    cdef int failed = 0
    cdef double* partial = <double*>_alloc(2 * nchunks * D * sizeof(double))
    if partial == NULL:
        return -1
    for k in prange(nchunks, schedule="static", num_threads=max(1, min(nthreads, nchunks))):
        failed += _backward_per_element_chunk_half(x, dy, dx, kind, min(R, k * per), min(R, (k + 1) * per), D, w,
                                                   mean, rstd, training, rms, partial + 2 * k * D,
                                                   partial + (2 * k + 1) * D, xhat_sums) < 0
    if not failed:
        _add_chunk_sums(partial, nchunks, D, 0, D, grad_w, grad_b)
    free(partial)
    return -1 if failed else 0


# ---------------------------------------------------------------------------------------------------------
# Backward with a channel's affine per sub-run (BatchNorm channels first, InstanceNorm, GroupNorm): each
# row's pieces as _backward_reduce_row and _backward_elemt_span cut them, widened into a thread's buffer of
# SPLIT values, given to the same float32 loops, dx narrowed
# ---------------------------------------------------------------------------------------------------------

cdef void _backward_row_half(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int kind, Py_ssize_t N,
                             Py_ssize_t R, Py_ssize_t S, const RowAffine* a, Py_ssize_t r, const double* mean,
                             const double* rstd, bint training, double* sum_dy, double* sum_dy_xhat,
                             double* xhat_sums, float* buf) noexcept nogil:
    """_backward_row of half row r; ``buf``: 3 * SPLIT floats."""
    cdef Py_ssize_t K = S // a.sub
    cdef Py_ssize_t n, j, start, stop, off, length
    cdef double sums[4]
    cdef double x1 = 0.0, x2 = 0.0, c2, c3
    cdef float mean_hi = <float>mean[r]
    cdef float* bx = buf
    cdef float* bdy = buf + SPLIT
    cdef float* bdx = buf + 2 * SPLIT
    for j in range(K):
        sum_dy[r * K + j] = 0.0
        sum_dy_xhat[r * K + j] = 0.0
    for n in range(N):  # the sums: _backward_reduce_row's pieces in its order
        off = (n * R + r) * S
        for j in range(K):
            start = j * a.sub
            while start < (j + 1) * a.sub:
                length = min(<Py_ssize_t>SPLIT, (j + 1) * a.sub - start)
                fastnorm_widen(x + off + start, bx, length, kind)
                fastnorm_widen(dy + off + start, bdy, length, kind)
                _backward_reduce_run(<const float*>bx, <const float*>bdy, length, mean[r], rstd[r], sums)
                sum_dy[r * K + j] += sums[0]
                sum_dy_xhat[r * K + j] += sums[1]
                x1 += sums[2]
                x2 += sums[3]
                start += SPLIT
    for j in range(K):
        sum_dy_xhat[r * K + j] *= rstd[r]
    xhat_sums[2 * r] = x1
    xhat_sums[2 * r + 1] = x2
    _backward_row_coefficients(a, (r % a.groups) * K, K, N * S, mean[r] - <double>mean_hi, rstd[r], training,
                               sum_dy + r * K, sum_dy_xhat + r * K, &c2, &c3)
    for n in range(N):  # dx: each sub-run's pieces with its channel's c1
        off = (n * R + r) * S
        for j in range(K):
            start = j * a.sub
            while start < (j + 1) * a.sub:
                stop = min(start + SPLIT, (j + 1) * a.sub)
                fastnorm_widen(x + off + start, bx, stop - start, kind)
                fastnorm_widen(dy + off + start, bdy, stop - start, kind)
                _backward_elemt_run(<const float*>bx, <const float*>bdy, bdx, stop - start, mean_hi,
                                    <float>(rstd[r] * _at(a.weight, (r % a.groups) * K + j, 1.0)), <float>c2,
                                    <float>c3, NULL, False)
                fastnorm_narrow(bdx, dx + off + start, stop - start, kind)
                start = stop


cdef int _backward_rows_half(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int kind, Py_ssize_t N,
                             Py_ssize_t R, Py_ssize_t S, const RowAffine* a, const double* mean, const double* rstd,
                             bint training, double* sum_dy, double* sum_dy_xhat, double* xhat_sums,
                             int nthreads) noexcept nogil:
    """_backward_rows of half buffers, a row at a time (the same sums in the same order, so the same bits),
    each thread its own buffer."""
    cdef int team = max(1, min(nthreads, <int>R))
    cdef Py_ssize_t share = (R + team - 1) // team
    cdef Py_ssize_t j, r
    cdef float* buf = <float*>_alloc(team * 3 * SPLIT * sizeof(float))
    if buf == NULL:
        return -1
    if team <= 1:
        for r in range(R):
            _backward_row_half(x, dy, dx, kind, N, R, S, a, r, mean, rstd, training, sum_dy, sum_dy_xhat, xhat_sums,
                               buf)
    else:
        for j in prange(team, schedule="static", num_threads=team):
            for r in range(j * share, min(R, (j + 1) * share)):
                _backward_row_half(x, dy, dx, kind, N, R, S, a, r, mean, rstd, training, sum_dy, sum_dy_xhat,
                                   xhat_sums, buf + j * 3 * SPLIT)
    free(buf)
    return 0


# ---------------------------------------------------------------------------------------------------------
# Channels-last backward (_backward_columns): each tile of x and dy widened into the thread's scratch for the
# same column sums and dx sweep, dx narrowed
# ---------------------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _half_tiles_scratch(Py_ssize_t M, Py_ssize_t C, int nthreads) noexcept nogil:
    """The floats of _backward_columns' ``half_scratch``: three tiles a thread."""
    cdef Tiles g = _tiles(M, C, nthreads)
    return max(nthreads, 1) * 3 * g.rb * g.cw


cdef void _widen_tile(const uint16_t* x, int kind, const Tiles* g, Py_ssize_t r0, Py_ssize_t rows, Py_ssize_t c0,
                      Py_ssize_t ncols, float* out) noexcept nogil:
    """Rows r0 <= r < r0 + rows, columns c0 <= c < c0 + ncols of an [M, C] half buffer, as [rows, ncols]."""
    cdef Py_ssize_t i
    if ncols == g.C:
        fastnorm_widen(x + r0 * g.C, out, rows * ncols, kind)
        return
    for i in range(rows):
        fastnorm_widen(x + (r0 + i) * g.C + c0, out + i * ncols, ncols, kind)


cdef void _backward_reduce_tile_half(const uint16_t* x, const uint16_t* dy, int kind, const Tiles* g, Py_ssize_t t,
                                     const double* colmean, const double* colrstd, double* partial,
                                     float* scratch) noexcept nogil:
    cdef Py_ssize_t blk, r0, rows, c0, ncols
    cdef double* sums
    if not _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        return
    sums = partial + 4 * g.C * blk + c0
    _widen_tile(x, kind, g, r0, rows, c0, ncols, scratch)
    _widen_tile(dy, kind, g, r0, rows, c0, ncols, scratch + rows * ncols)
    fastnorm_backward_reduce_columns_f32(scratch, scratch + rows * ncols, rows, ncols, ncols, colmean + c0,
                                         colrstd + c0, sums, sums + g.C, sums + 2 * g.C, sums + 3 * g.C)


cdef void _backward_elemt_tile_half(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int kind, const Tiles* g,
                                    Py_ssize_t t, const float* p, float* scratch) noexcept nogil:
    cdef Py_ssize_t blk, r0, rows, c0, ncols, i
    cdef float* out
    if not _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        return
    out = scratch + 2 * rows * ncols
    _widen_tile(x, kind, g, r0, rows, c0, ncols, scratch)
    _widen_tile(dy, kind, g, r0, rows, c0, ncols, scratch + rows * ncols)
    fastnorm_backward_elemt_columns_f32(scratch, scratch + rows * ncols, out, rows, ncols, ncols, p + c0, g.C)
    for i in range(rows):
        fastnorm_narrow(out + i * ncols, dx + (r0 + i) * g.C + c0, ncols, kind)


cdef void _backward_tiles_half(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int kind, const Tiles* g,
                               const double* colmean, const double* colrstd, double* partial, const float* p,
                               float* scratch, int nthreads) noexcept nogil:
    """The tiles of _backward_columns: their column sums (``dx`` NULL), or their dx sweep with the factors
    ``p``; each thread a contiguous share of them in its part of ``scratch``."""
    cdef Py_ssize_t tiles = g.nblocks * g.ncb
    cdef int team = max(1, min(nthreads, <int>tiles))
    cdef Py_ssize_t share = (tiles + team - 1) // team
    cdef Py_ssize_t size = 3 * g.rb * g.cw
    cdef Py_ssize_t j, t
    for j in prange(team, schedule="static", num_threads=team):
        for t in range(j * share, min(tiles, (j + 1) * share)):
            if dx == NULL:
                _backward_reduce_tile_half(x, dy, kind, g, t, colmean, colrstd, partial, scratch + j * size)
            else:
                _backward_elemt_tile_half(x, dy, dx, kind, g, t, p, scratch + j * size)
