# float16 and bfloat16 read and written natively: computed in float32 with the float32 code's operations in
# its order, so the statistics and the bits of each value are those of the float32 call on the same values
# (upcast exactly), its result rounded once to the half type (_simd_convert.h), and nothing of the input's
# or the output's size is ever float32.  Values are widened where they are used: a block at a time for the
# moments (into an L1 buffer, or in registers from ISA level 1), a run at a time by the sweeps
# (fastnorm_sweep_half), or a tile of rows into a thread's scratch of HALF_TILE floats that the float32
# kernel normalizes in place before it is narrowed into the output (short sub-runs, the residual's rows,
# rows too few for the threads).

from libc.stdint cimport uint16_t

cdef extern from "_simd_convert.h" nogil:
    void fastnorm_widen(const uint16_t* src, float* dst, Py_ssize_t n, int bf16)
    void fastnorm_narrow(const float* src, uint16_t* dst, Py_ssize_t n, int bf16)
    void fastnorm_shifted_sums_half(const uint16_t* x, Py_ssize_t n, double shift, int bf16, double* s1, double* s2)
    void fastnorm_row_moments_half(const uint16_t* x, Py_ssize_t rows, Py_ssize_t n, int bf16, double* mean,
                                   double* var)
    void fastnorm_column_sums_half(const uint16_t* x, Py_ssize_t rows, Py_ssize_t ncols, Py_ssize_t ld,
                                   float* scratch, double* s1, double* s2, int bf16)
    float fastnorm_bf16_value(uint16_t h)
    float fastnorm_f16_value(uint16_t h)
    void fastnorm_sweep_columns_half(const uint16_t* x, uint16_t* y, Py_ssize_t rows, Py_ssize_t ncols,
                                     const float* p, Py_ssize_t plen, float* scratch, int bf16, int act,
                                     const uint16_t* add)
    void fastnorm_sweep_half(const uint16_t* x, uint16_t* y, Py_ssize_t n, float mean_hi, float scale, float shift,
                             const float* w, const float* b, int bf16, int act, const uint16_t* add)
    void fastnorm_narrow_fused(float* v, uint16_t* y, Py_ssize_t n, int bf16, int act, const uint16_t* add)
    void fastnorm_prefetch_range(const void* p, Py_ssize_t nbytes)
    void fastnorm_add_half(const uint16_t* x, const uint16_t* r, uint16_t* h, float* t, Py_ssize_t n, int bf16)

cdef enum:
    HALF_TILE = 8192  # float32 values of a tile's scratch: 32 KiB, with its half input and output in L1 and L2
    HALF_RUNS = 64    # sub-runs at least this long are swept one call each, shorter ones by tiles of rows
    HALF_BATCH = 8    # rows of a per-element affine whose statistics go one step for all (_forward_row_batch_half)
    HALF_F16 = 0      # a half kind is the C loops' ``bf16`` argument as it is
    HALF_BF16 = 1


cdef int _half_kind(cnp.ndarray x):
    """HALF_F16 or HALF_BF16 for a float16 or bfloat16 array (any 2-byte dtype named bfloat16), else -1."""
    if cnp.PyArray_TYPE(x) == 23:  # NPY_HALF (absent from numpy.pxd)
        return HALF_F16
    if cnp.PyArray_ITEMSIZE(x) == 2 and x.dtype.name == "bfloat16":
        return HALF_BF16
    return -1


# A fused half call (see Epilogue): ``add`` holds half values in the output's layout; the epilogue runs on
# the float32 values before they are narrowed, so that they are rounded once, as the float32 call's result.

cdef inline int _act(const Epilogue* ep) noexcept nogil:
    return 0 if ep == NULL else ep.act


cdef inline const uint16_t* _half_added(const Epilogue* ep, const uint16_t* y) noexcept nogil:
    """The half values of ``ep.add`` that go with ``y`` (NULL: no add)."""
    if ep == NULL or ep.add == NULL:
        return NULL
    return <const uint16_t*>ep.add + (y - <const uint16_t*>ep.y0)


cdef inline void _narrow_fused(float* src, uint16_t* dst, Py_ssize_t n, int kind, const Epilogue* ep) noexcept nogil:
    """fastnorm_narrow, after ``ep`` (if any) on the float32 values."""
    if ep == NULL:
        fastnorm_narrow(src, dst, n, kind)
    else:
        fastnorm_narrow_fused(src, dst, n, kind, ep.act, _half_added(ep, dst))


cdef struct RowTiles:
    # Tiles of the rows of a [1, R, S] buffer: ``per`` rows each, never across a sample's block of
    # ``groups`` rows unless whole blocks (the channel of a row's sub-run is then its row within the tile,
    # the tile's parameters taken from its first row's channel on).
    Py_ssize_t R, S, per, groups, per_block, count


cdef RowTiles _row_tiles(Py_ssize_t R, Py_ssize_t S, const RowAffine* a) noexcept nogil:
    cdef RowTiles t
    t.R = R
    t.S = S
    t.per = max(<Py_ssize_t>1, HALF_TILE // max(S, <Py_ssize_t>1))
    t.groups = R if a.per_element else a.groups
    if t.per >= t.groups:
        t.per -= t.per % t.groups   # whole blocks
        t.per_block = 0
        t.count = (R + t.per - 1) // t.per
    else:
        t.per_block = (t.groups + t.per - 1) // t.per
        t.count = (R // t.groups) * t.per_block
    return t


cdef inline void _tile_rows(const RowTiles* t, Py_ssize_t k, Py_ssize_t* r0, Py_ssize_t* r1) noexcept nogil:
    cdef Py_ssize_t block
    if t.per_block == 0:
        r0[0] = k * t.per
        r1[0] = min(t.R, r0[0] + t.per)
    else:
        block = (k // t.per_block) * t.groups
        r0[0] = block + (k % t.per_block) * t.per
        r1[0] = min(block + t.groups, r0[0] + t.per)


cdef inline ParamVector _param_from(ParamVector v, Py_ssize_t first) noexcept nogil:
    """The vector from element ``first`` on."""
    if v.data != NULL:
        v.data = <const char*>v.data + first * (8 if v.is_f64 else 4)
    return v


cdef int _forward_rows_tile(const uint16_t* x, uint16_t* y, int kind, const RowTiles* t, Py_ssize_t k,
                            const RowAffine* a, double eps, double* mean, double* var, float* scratch,
                            int nthreads, const uint16_t* res=NULL, uint16_t* h=NULL) noexcept nogil:
    """Tile k: widen, the float32 kernel in place, narrow.  With ``res``: the rows of ``h = x + res``, h
    rounded into ``h`` (which may be x or res) and its values widened (fastnorm_add_half)."""
    cdef Py_ssize_t r0, r1, n, next0, next1
    cdef RowAffine local = a[0]
    cdef int status
    _tile_rows(t, k, &r0, &r1)
    n = (r1 - r0) * t.S
    local.ep = NULL  # applied to the tile as it is narrowed: its add holds half values
    if not a.per_element:
        local.weight = _param_from(a.weight, (r0 % a.groups) * (t.S // a.sub))
        local.bias = _param_from(a.bias, (r0 % a.groups) * (t.S // a.sub))
    if res == NULL:
        fastnorm_widen(x + r0 * t.S, scratch, n, kind)
    else:
        fastnorm_add_half(x + r0 * t.S, res + r0 * t.S, h + r0 * t.S, scratch, n, kind)
        if k + 1 < t.count:  # the next tile's x and res arrive while this one is normalized
            _tile_rows(t, k + 1, &next0, &next1)
            fastnorm_prefetch_range(x + next0 * t.S, (next1 - next0) * t.S * 2)
            fastnorm_prefetch_range(res + next0 * t.S, (next1 - next0) * t.S * 2)
    status = _forward_rows(<const float*>scratch, scratch, 1, r1 - r0, t.S, &local, eps, mean + r0, var + r0,
                           nthreads)
    _narrow_fused(scratch, y + r0 * t.S, n, kind, a.ep)
    return status


# LayerNorm and RMSNorm (a per-element affine): a row at a time, its blocks widened into an L1 buffer for
# their moments, then its sweep widening and narrowing a run at a time (fastnorm_sweep_half): the row's
# values are read from the half input twice and never stored as float32 beyond the buffer.

cdef inline Moments _block_moments_half(const uint16_t* x, Py_ssize_t n, int kind) noexcept nogil:
    """_block_moments of ``n`` (<= BLOCK) half values."""
    cdef double shift = fastnorm_bf16_value(x[0]) if kind == HALF_BF16 else fastnorm_f16_value(x[0])
    cdef double t1, t2
    fastnorm_shifted_sums_half(x, n, shift, kind, &t1, &t2)
    return _shifted_moments(shift, t1, t2, n)


cdef Moments _strided_moments_half(const uint16_t* x, Py_ssize_t nruns, Py_ssize_t runlen, Py_ssize_t stride,
                                   int kind) noexcept nogil:
    """_strided_moments of half values: the same blocks merged in the same order."""
    cdef Moments acc
    cdef Py_ssize_t r, b
    acc.count = 0.0
    acc.mean = 0.0
    acc.var = 0.0
    for r in range(nruns):
        for b in range(0, runlen, 2048):  # BLOCK
            _chan_merge(&acc, _block_moments_half(x + r * stride + b, min(<Py_ssize_t>BLOCK, runlen - b), kind))
    return acc


cdef void _forward_row_batch_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t rows, Py_ssize_t S,
                                  const RowAffine* a, double eps, double* mean, double* var) noexcept nogil:
    """Rows of S values with a per-element affine (at most HALF_BATCH of them, ``x``, ``y``, ``mean``, ``var``
    pointing at the first): what _forward_row and _sweep_span do for float32, one step for all the rows at
    a time, so that the rows' chains of divisions and square roots overlap (_forward_row_batch)."""
    cdef double center[HALF_BATCH]
    cdef double inv[HALF_BATCH]
    cdef float mean_hi
    cdef Py_ssize_t r
    if S <= BLOCK:  # rows of one block: their sums side by side, divided by vectors (_rows_block_moments)
        fastnorm_row_moments_half(x, rows, S, kind, mean, var)
    else:
        for r in range(rows):
            _store_moments(_strided_moments_half(x + r * S, 1, S, S, kind), r, mean, var)
    for r in range(rows):
        _center_and_rstd(mean[r], var[r], eps, a.rms, &center[r], &inv[r])
    for r in range(rows):
        mean_hi = <float>center[r]
        fastnorm_sweep_half(x + r * S, y + r * S, S, mean_hi, <float>inv[r],
                            <float>(-(center[r] - <double>mean_hi) * inv[r]), <const float*>a.weight.data,
                            <const float*>a.bias.data, kind, _act(a.ep), _half_added(a.ep, y + r * S))


# A channel's affine per sub-run of a row (BatchNorm channels first in training: row r of [N, R, S] is N
# runs of channel r; InstanceNorm: N = 1, row r of channel r % groups; GroupNorm: its sub-runs of S values
# are the channels of the group).

cdef void _sweep_channel_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t r, Py_ssize_t R, Py_ssize_t S,
                              Py_ssize_t n, Py_ssize_t start, Py_ssize_t length, const RowAffine* a, double eps,
                              const double* mean, const double* var) noexcept nogil:
    """Values start <= i < start + length of run n of row r, its statistics known: each sub-run's part with
    its channel's fold (_sweep_span)."""
    cdef double center, inv
    cdef float mean_hi, scale, shift
    cdef Py_ssize_t off = (n * R + r) * S
    cdef Py_ssize_t pos = start, end = start + length, j = start // a.sub, stop
    cdef Py_ssize_t first = (r % a.groups) * (S // a.sub)
    _center_and_rstd(mean[r], var[r], eps, False, &center, &inv)
    while pos < end:
        stop = min(end, (j + 1) * a.sub)
        _fold(center, inv, _at(a.weight, first + j, 1.0), _at(a.bias, first + j, 0.0), &mean_hi, &scale, &shift)
        fastnorm_sweep_half(x + off + pos, y + off + pos, stop - pos, mean_hi, scale, shift, NULL, NULL, kind,
                            _act(a.ep), _half_added(a.ep, y + off + pos))
        pos = stop
        j += 1


cdef void _forward_channel_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t r, Py_ssize_t N, Py_ssize_t R,
                                Py_ssize_t S, const RowAffine* a, double eps, double* mean,
                                double* var) noexcept nogil:
    cdef Py_ssize_t n
    _store_moments(_strided_moments_half(x + r * S, N, S, R * S, kind), r, mean, var)
    for n in range(N):
        _sweep_channel_half(x, y, kind, r, R, S, n, 0, S, a, eps, mean, var)


cdef int _forward_channels_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S,
                                const RowAffine* a, double eps, double* mean, double* var,
                                int nthreads) noexcept nogil:
    """_forward_rows of a half [N, R, S] buffer with a channel's affine per row (BatchNorm): a channel at
    a time, or with too few channels for the threads, the blocks' moments in parallel (merged in the
    canonical order, as _moments_channels) and then the pieces of the runs."""
    cdef Py_ssize_t r, t, k
    cdef Py_ssize_t runs = (S + BLOCK - 1) // BLOCK  # blocks a run
    cdef Py_ssize_t per_channel = N * runs
    cdef Py_ssize_t pieces = (S + SPLIT - 1) // SPLIT
    cdef Moments m
    cdef Moments* partial
    if nthreads <= 1 or R >= 4 * nthreads:
        if nthreads <= 1:
            for r in range(R):
                _forward_channel_half(x, y, kind, r, N, R, S, a, eps, mean, var)
        else:
            for r in prange(R, schedule="static", num_threads=nthreads):
                _forward_channel_half(x, y, kind, r, N, R, S, a, eps, mean, var)
        return 0
    partial = <Moments*>_alloc(R * per_channel * sizeof(Moments))
    if partial == NULL:
        return -1
    for t in prange(R * per_channel, schedule="static", num_threads=nthreads):
        partial[t] = _block_moments_half(x + ((t % per_channel) // runs * R + t // per_channel) * S
                                         + (t % runs) * BLOCK, min(<Py_ssize_t>BLOCK, S - (t % runs) * BLOCK), kind)
    for r in range(R):
        m = partial[r * per_channel]
        for k in range(1, per_channel):
            _chan_merge(&m, partial[r * per_channel + k])
        _store_moments(m, r, mean, var)
    free(partial)
    for t in prange(R * N * pieces, schedule="static", num_threads=nthreads):
        _sweep_channel_half(x, y, kind, t // (N * pieces), R, S, (t // pieces) % N, (t % pieces) * SPLIT,
                            min(<Py_ssize_t>SPLIT, S - (t % pieces) * SPLIT), a, eps, mean, var)
    return 0


cdef int _forward_rows_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t R, Py_ssize_t S,
                            const RowAffine* a, double eps, double* mean, double* var, int nthreads,
                            const uint16_t* res=NULL, uint16_t* h=NULL) noexcept nogil:
    """_forward_rows of a half [1, R, S] buffer, a tile of rows at a time (see RowTiles).  With tiles for
    every thread, each thread takes a contiguous share of them into its own scratch; otherwise (few long
    rows) the tiles go one after the other, each kernel call using the threads.  With ``res`` and ``h``
    (rows of a per-element affine), the rows normalized are those of ``h = x + res``, written to h in the
    same pass (_forward_rows_tile)."""
    cdef RowTiles t = _row_tiles(R, S, a)
    cdef Py_ssize_t size = t.per * S
    cdef Py_ssize_t k, j, share, r
    cdef Py_ssize_t per = max(<Py_ssize_t>1, min(<Py_ssize_t>HALF_BATCH, R // (4 * nthreads)))
    if not a.per_element and a.sub >= HALF_RUNS:
        return _forward_channels_half(x, y, kind, 1, R, S, a, eps, mean, var, nthreads)
    if a.per_element and res == NULL and (nthreads <= 1 or R >= 4 * nthreads):
        if nthreads <= 1:
            for k in range((R + per - 1) // per):
                _forward_row_batch_half(x + k * per * S, y + k * per * S, kind, min(per, R - k * per), S, a, eps,
                                        mean + k * per, var + k * per)
        else:
            for k in prange((R + per - 1) // per, schedule="static", num_threads=nthreads):
                _forward_row_batch_half(x + k * per * S, y + k * per * S, kind, min(per, R - k * per), S, a, eps,
                                        mean + k * per, var + k * per)
        return 0
    cdef int team = nthreads if t.count >= 2 * nthreads else 1
    cdef int status = 0
    cdef float* scratch = <float*>_alloc(team * size * sizeof(float))
    if scratch == NULL:
        return -1
    if team <= 1:
        for k in range(t.count):
            if _forward_rows_tile(x, y, kind, &t, k, a, eps, mean, var, scratch, nthreads, res, h) < 0:
                status = -1
    else:  # one thread a tile's kernel: it allocates nothing then, so it cannot fail
        share = (t.count + team - 1) // team
        for j in prange(team, schedule="static", num_threads=team):
            for k in range(j * share, min(t.count, (j + 1) * share)):
                _forward_rows_tile(x, y, kind, &t, k, a, eps, mean, var, scratch + j * size, 1, res, h)
    free(scratch)
    return status


# ---------------------------------------------------------------------------------------------------------
# Frozen statistics (BatchNorm and InstanceNorm in eval mode): the float32 fold once, then the sweep on half
# values, as _sweep_folded: runs of [N, C, S], or columns of [N, C] (short runs: columns of [N, C * S])
# ---------------------------------------------------------------------------------------------------------

cdef void _sweep_runs_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                           const float* p, int nthreads, const Epilogue* ep) noexcept nogil:
    cdef Py_ssize_t run, c
    if nthreads <= 1:
        for run in range(N * C):
            c = run % C
            fastnorm_sweep_half(x + run * S, y + run * S, S, p[c], p[C + c], p[2 * C + c], NULL, NULL, kind,
                                _act(ep), _half_added(ep, y + run * S))
        return
    for run in prange(N * C, schedule="static", num_threads=nthreads):
        c = run % C
        fastnorm_sweep_half(x + run * S, y + run * S, S, p[c], p[C + c], p[2 * C + c], NULL, NULL, kind,
                            _act(ep), _half_added(ep, y + run * S))


cdef int _sweep_columns_folded_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t M, Py_ssize_t ncols,
                                    const float* p, int nthreads, const Epilogue* ep) noexcept nogil:
    """The columns of [M, ncols] with per-column factors p (3 * ncols), as _sweep_columns_folded: the factors
    tiled ``rep`` times so that a row of the sweep is ``rep * ncols`` values, by tiles of such rows, each
    thread widening a tile into its own scratch."""
    cdef Py_ssize_t rep = 4 * max(<Py_ssize_t>1, 256 // ncols) if ncols < 256 else 1
    cdef Py_ssize_t L = rep * ncols
    cdef Py_ssize_t full = M // rep
    cdef Py_ssize_t per = max(<Py_ssize_t>1, HALF_TILE // L)
    cdef Py_ssize_t tiles = (full + per - 1) // per
    cdef int team = nthreads if tiles >= 2 * nthreads else 1
    cdef Py_ssize_t share = (tiles + team - 1) // team
    cdef Py_ssize_t j, k, r0, rest = (M - full * rep) * ncols
    cdef float* tiled = <float*>_alloc(3 * L * sizeof(float))
    cdef float* scratch = <float*>_alloc(team * max(per * L, rest) * sizeof(float))
    if tiled == NULL or scratch == NULL:
        free(tiled)
        free(scratch)
        return -1
    for k in range(3):
        for j in range(rep):
            memcpy(tiled + k * L + j * ncols, p + k * ncols, ncols * sizeof(float))
    for j in prange(team, schedule="static", num_threads=team):
        for k in range(j * share, min(tiles, (j + 1) * share)):
            r0 = k * per
            fastnorm_sweep_columns_half(x + r0 * L, y + r0 * L, min(per, full - r0), L, tiled, L,
                                        scratch + j * per * L, kind, _act(ep), _half_added(ep, y + r0 * L))
    if rest:  # the last M % rep rows: one partial row
        fastnorm_sweep_columns_half(x + full * L, y + full * L, 1, rest, tiled, L, scratch, kind, _act(ep),
                                    _half_added(ep, y + full * L))
    free(tiled)
    free(scratch)
    return 0


cdef int _fold_and_sweep_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                              ParamVector mean, ParamVector var, ParamVector weight, ParamVector bias, double eps,
                              int nthreads, const Epilogue* ep) noexcept nogil:
    """_fold_and_sweep of a half buffer: the same float32 factors, the same sweep's operations."""
    # Short runs repeat each channel's factors S times below; long ones use them as they are.
    cdef float* p = <float*>_alloc(3 * C * (S if 1 < S < SHORT_SWEEP else 1) * sizeof(float))
    cdef Py_ssize_t k, c, j
    cdef int status = 0
    if p == NULL:
        return -1
    _fold_channels(C, mean, var, weight, bias, eps, p)
    if S >= SHORT_SWEEP:
        _sweep_runs_half(x, y, kind, N, C, S, p, nthreads, ep)
    else:
        if S > 1:  # each channel's factors repeated S times, from the last (in place)
            for k in range(2, -1, -1):
                for c in range(C - 1, -1, -1):
                    for j in range(S - 1, -1, -1):
                        p[(k * C + c) * S + j] = p[k * C + c]
        status = _sweep_columns_folded_half(x, y, kind, N, C * S, p, nthreads, ep)
    free(p)
    return status


# ---------------------------------------------------------------------------------------------------------
# Columns of [M, C] (BatchNorm channels last, in training): _moments_columns' tiles, each widened into a
# thread's scratch (the tile's rows side by side) for the same column sums, then the eval sweep
# ---------------------------------------------------------------------------------------------------------

cdef void _moments_tile_half(const uint16_t* x, int kind, const Tiles* g, Py_ssize_t t, double* partial,
                             float* scratch) noexcept nogil:
    """Tile ``t`` of _moments_columns on half values (fastnorm_column_sums_half: in registers from ISA level 1
    on, else on the tile widened into ``scratch``)."""
    cdef Py_ssize_t blk, r0, rows, c0, ncols
    cdef double* bmean
    if not _tile(g, t, &blk, &r0, &rows, &c0, &ncols):
        return
    bmean = partial + 2 * g.C * blk + c0
    fastnorm_widen(x + r0 * g.C + c0, scratch, ncols, kind)  # the block's first row: the shift of its sums
    fastnorm_column_sums_half(x + r0 * g.C + c0, rows, ncols, g.C, scratch, bmean, bmean + g.C, kind)
    fastnorm_shifted_moments_f32(scratch, 1, <double>rows, ncols, bmean, bmean + g.C)


cdef int _moments_columns_half(const uint16_t* x, int kind, Py_ssize_t M, Py_ssize_t C, double* mean, double* var,
                               int nthreads, double* partial) noexcept nogil:
    """_moments_columns of a half [M, C] buffer (``partial``: _moments_columns_scratch doubles)."""
    cdef Tiles g = _tiles(M, C, nthreads)
    cdef Py_ssize_t tiles = g.nblocks * g.ncb
    cdef int team = max(1, min(nthreads, <int>tiles))
    cdef Py_ssize_t share = (tiles + team - 1) // team
    cdef Py_ssize_t size = g.rb * g.cw
    cdef Py_ssize_t j, t
    cdef float* scratch = <float*>_alloc(team * size * sizeof(float))
    if scratch == NULL:
        return -1
    for j in prange(team, schedule="static", num_threads=team):
        for t in range(j * share, min(tiles, (j + 1) * share)):
            _moments_tile_half(x, kind, &g, t, partial, scratch + j * size)
    _merge_row_blocks(&g, partial, mean, var)
    free(scratch)
    return 0


cdef int _forward_columns_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t M, Py_ssize_t C,
                               ParamVector weight, ParamVector bias, double eps, double* mean, double* var,
                               ParamVector vm, ParamVector vv, int nthreads, const Epilogue* ep) noexcept nogil:
    """forward_columns of a half [M, C] buffer: its columns' moments (those of the float32 call) into mean
    and var, then the sweep with them (``vm``, ``vv``: the same vectors)."""
    cdef double* partial = <double*>_alloc(_moments_columns_scratch(M, C) * sizeof(double))
    cdef int status
    if partial == NULL:
        return -1
    status = _moments_columns_half(x, kind, M, C, mean, var, nthreads, partial)
    free(partial)
    if status < 0:
        return -1
    return _fold_and_sweep_half(x, y, kind, M, C, 1, vm, vv, weight, bias, eps, nthreads, ep)


cdef int _forward_column_groups_half(const uint16_t* x, uint16_t* y, int kind, Py_ssize_t N, Py_ssize_t S,
                                     Py_ssize_t C, Py_ssize_t G, ParamVector weight, ParamVector bias, double eps,
                                     double* mean, double* var, int nthreads, const Epilogue* ep) noexcept nogil:
    """_forward_column_groups of a half [N, S, C] buffer: per sample, the same moments and fold, the sweep."""
    cdef Py_ssize_t n
    cdef int status = 0
    cdef double* cmean = <double*>_alloc((2 * C + _moments_columns_scratch(S, C)) * sizeof(double))
    cdef float* p = <float*>_alloc(3 * C * sizeof(float))
    if cmean == NULL or p == NULL:
        status = -1
    n = 0
    while status == 0 and n < N:
        status = _moments_columns_half(x + n * S * C, kind, S, C, cmean, cmean + C, nthreads, cmean + 2 * C)
        if status == 0:
            _fold_column_groups(n, S, C, G, cmean, cmean + C, weight, bias, eps, mean, var, p)
            status = _sweep_columns_folded_half(x + n * S * C, y + n * S * C, kind, S, C, p, nthreads, ep)
        n += 1
    free(cmean)
    free(p)
    return status
