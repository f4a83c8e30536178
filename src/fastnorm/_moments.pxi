# Moments: (count, mean, biased variance) of blocks of at most BLOCK contiguous values from shifted sums in
# double, merged with Chan's formula in an order fixed by the shape.  Per channel of [N, C, S]
# (_moments_channels) and per column of [M, C] (_moments_columns, by tiles of rows and columns).

# ---------------------------------------------------------------------------------------------------------
# Moments
# ---------------------------------------------------------------------------------------------------------

cdef inline Moments _block_moments(const floating* x, Py_ssize_t n) noexcept nogil:
    """Moments of ``n`` (1 <= n <= BLOCK) contiguous values.

    Shifted sums in double precision: with the shift being one of the values, ``M2 = S2 - S1**2 / n``
    loses at most a factor ``n`` of double precision even in the worst case, and typically nothing.
    float64 data beyond about 1e150 overflow the sum of squares: such a block is summed again scaled by
    a power of two (exact), the only cost of the check being a comparison per block.
    """
    cdef double shift = x[0]
    cdef double t1, t2
    if floating is float:
        fastnorm_shifted_sums_f32(x, n, shift, &t1, &t2)
    else:
        fastnorm_shifted_sums_f64(x, n, shift, &t1, &t2)
        if not t2 <= DBL_MAX:  # overflow (or a NaN or an infinity in the data, which the redo keeps)
            return _scaled_moments(x, n, 1)
    return _shifted_moments(shift, t1, t2, n)


cdef inline Moments _shifted_moments(double shift, double t1, double t2, Py_ssize_t n) noexcept nogil:
    """The moments of ``n`` values whose differences from ``shift`` sum to ``t1``, their squares to ``t2``."""
    cdef Moments m
    m.count = <double>n
    fastnorm_shifted_moments(shift, t1, t2, <double>n, &m.mean, &m.var)
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
    squares (their plain sums overflowed): the shifted sums of _block_moments, scaled back at the end."""
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


cdef inline void _chan_merge(Moments* a, Moments b) noexcept nogil:
    """Chan's formula (fastnorm_chan_merge): fold the moments ``b`` into ``a``."""
    cdef double n
    if b.count == 0.0:
        return
    if a.count == 0.0:
        a[0] = b
        return
    n = a.count + b.count
    fastnorm_chan_merge(&a.mean, &a.var, b.mean, b.var, a.count / n, b.count / n)
    a.count = n


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
            _chan_merge(&acc, _block_moments(p + b, min(<Py_ssize_t>BLOCK, runlen - b)))
    return acc


cdef void _channel_block_moments(const floating* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t blocks_per_run,
                                 Py_ssize_t c, Py_ssize_t k, Moments* out) noexcept nogil:
    """Block ``k`` (in canonical order) of channel ``c`` of an ``[N, C, S]`` buffer."""
    cdef Py_ssize_t n = k // blocks_per_run
    cdef Py_ssize_t start = (k % blocks_per_run) * BLOCK
    out[0] = _block_moments(x + (n * C + c) * S + start, min(<Py_ssize_t>BLOCK, S - start))


cdef int _moments_channels(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
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
        _channel_block_moments(x, C, S, blocks_per_run, i // per_channel, i % per_channel, partial + i)
    for c in range(C):
        m = partial[c * per_channel]
        for k in range(1, per_channel):
            _chan_merge(&m, partial[c * per_channel + k])
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
    scaled, as in _block_moments."""
    cdef const floating* base = x + r0 * C
    cdef Py_ssize_t c
    cdef double n = <double>(r1 - r0)
    cdef Moments m
    if floating is float:
        fastnorm_column_sums_f32(base + c0, r1 - r0, c1 - c0, C, base + c0, bmean + c0, bvar + c0)
        fastnorm_shifted_moments_f32(base + c0, 1, n, c1 - c0, bmean + c0, bvar + c0)
    else:
        fastnorm_column_sums_f64(base + c0, r1 - r0, c1 - c0, C, base + c0, bmean + c0, bvar + c0)
        for c in range(c0, c1):
            if not bvar[c] <= DBL_MAX:
                m = _scaled_moments(base + c, r1 - r0, C)
                bmean[c] = m.mean
                bvar[c] = m.var
            else:
                fastnorm_shifted_moments(<double>base[c], bmean[c], bvar[c], n, &bmean[c], &bvar[c])


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
    """Tile ``t`` of _moments_columns: its columns' moments over its rows, into row block ``blk``'s partials."""
    cdef Py_ssize_t blk, r0, rows, c0, ncols
    if _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        _column_block_moments(x, r0, r0 + rows, g.C, c0, c0 + ncols, partial + 2 * g.C * blk,
                              partial + 2 * g.C * blk + g.C)


cdef inline Py_ssize_t _moments_columns_scratch(Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    """The doubles of scratch memory _moments_columns needs."""
    return (M + _rows_per_block(C) - 1) // _rows_per_block(C) * 2 * C


cdef void _moments_columns(const floating* x, Py_ssize_t M, Py_ssize_t C, double* mean, double* var,
                           int nthreads, double* partial) noexcept nogil:
    """Per-column mean and biased variance of an ``[M, C]`` buffer (M >= 1), with the caller's scratch
    memory (_moments_columns_scratch doubles): a caller sweeping several samples allocates before its first
    write."""
    cdef Tiles g = _tiles(M, C, nthreads)
    cdef Py_ssize_t t
    if nthreads <= 1:  # no thread team for one thread
        for t in range(g.nblocks * g.ncb):
            _moments_tile(x, &g, t, partial)
    else:
        for t in prange(g.nblocks * g.ncb, schedule="static", num_threads=nthreads):
            _moments_tile(x, &g, t, partial)
    _merge_row_blocks(&g, partial, mean, var)


cdef void _merge_row_blocks(const Tiles* g, const double* partial, double* mean, double* var) noexcept nogil:
    """The columns' moments from those of their row blocks (_moments_columns' partials)."""
    cdef Py_ssize_t M = g.M, C = g.C, rb = g.rb, nblocks = g.nblocks
    cdef Py_ssize_t blk, c
    cdef const double* bmean
    cdef double na, nb, wa, wb
    # Chan merges of the row blocks, in order (as _chan_merge); every column of a block has the same count, so
    # the weights are computed once per block and the column loop vectorizes (fastnorm_chan_merge_columns).
    na = <double>min(M, rb)
    for c in range(C):
        mean[c] = partial[c]
        var[c] = partial[C + c]
    for blk in range(1, nblocks):
        nb = <double>(min(M, (blk + 1) * rb) - blk * rb)
        wb = nb / (na + nb)
        wa = na / (na + nb)
        bmean = partial + 2 * C * blk
        fastnorm_chan_merge_columns(mean, var, bmean, bmean + C, C, wa, wb)
        na = na + nb
