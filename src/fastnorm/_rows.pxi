# The [N, R, S] rows: row r is N runs of S values, x[n, r, :].  BatchNorm channels first: a row is a
# channel (R = C).  LayerNorm, InstanceNorm, GroupNorm, RMSNorm: N = 1 and a row is one normalization
# group.  Forward (a row's moments, then its sweep while in cache) and, below it, backward (a row's sums,
# then its dx sweep).  Shapes: x, y, dy, dx [N, R, S]; mean, var, rstd [R]; per-channel sums
# [R, S // sub] or per-element sums [S].

# ---------------------------------------------------------------------------------------------------------
# Training-mode normalization: statistics of each "row", then the sweep of that row
# ---------------------------------------------------------------------------------------------------------

# Rows are split into pieces of this many values when there are too few rows for the threads.
cdef enum:
    SPLIT = 32768


cdef void _sweep_span(const floating* xrun, floating* yrun, Py_ssize_t start, Py_ssize_t length,
                      Py_ssize_t r, Py_ssize_t S, double center, double inv, const RowAffine* a,
                      bint stream) noexcept nogil:
    """Normalize values ``start <= i < start + length`` of one run of row ``r``."""
    cdef floating mean_hi = <floating>center
    cdef double mean_lo = center - <double>mean_hi  # the part of the mean below the precision of the data
    cdef floating scale, shift
    cdef Py_ssize_t pos = start, end = start + length, j, stop, c, first, i
    cdef const floating* b
    if a.per_element:
        # The fold without a channel's affine (the per-element one follows in the sweep); written out, as
        # _fold(center, inv, 1, 0) would give the shift +0.0 where this gives -0.0.
        scale = <floating>inv
        shift = <floating>(-mean_lo * inv)
        if a.weight.data == NULL:
            _sweep(xrun + start, yrun + start, length, &mean_hi, &scale, &shift, stream, a.ep)
        else:
            b = NULL if a.bias.data == NULL else <const floating*>a.bias.data + start
            _sweep_affine(xrun + start, yrun + start, length, mean_hi, scale, shift,
                          <const floating*>a.weight.data + start, b, stream, a.ep)
        return
    first = (r % a.groups) * (S // a.sub)
    if a.sub == 1:
        # One value per channel (GroupNorm on (N, C) or 1x1 maps): the loop below, without its per-run
        # steps, which cost more than the value (bench/NOTES.md, "One value per channel").
        for i in range(pos, end):
            _fold(center, inv, _at(a.weight, first + i, 1.0), _at(a.bias, first + i, 0.0), &mean_hi, &scale, &shift)
            yrun[i] = (xrun[i] - mean_hi) * scale + shift
        _epilogue(yrun + pos, end - pos, a.ep)
        return
    j = pos // a.sub
    while pos < end:
        stop = min(end, (j + 1) * a.sub)
        c = first + j
        _fold(center, inv, _at(a.weight, c, 1.0), _at(a.bias, c, 0.0), &mean_hi, &scale, &shift)
        if stop - pos < SHORT_SWEEP:
            # A short sub-run (GroupNorm on small maps): inline, the same operations as the sweep.
            for i in range(pos, stop):
                yrun[i] = (xrun[i] - mean_hi) * scale + shift
            _epilogue(yrun + pos, stop - pos, a.ep)
        else:
            _sweep(xrun + pos, yrun + pos, stop - pos, &mean_hi, &scale, &shift, stream, a.ep)
        pos = stop
        j += 1


cdef void _forward_row(const floating* x, floating* y, Py_ssize_t r, Py_ssize_t N, Py_ssize_t R,
                       Py_ssize_t S, const RowAffine* a, double eps, double* mean, double* var,
                       bint stream) noexcept nogil:
    """Statistics of row ``r``, then its normalization while its runs are still in cache."""
    cdef double center, inv
    cdef Py_ssize_t n
    _store_moments(_strided_moments(x + r * S, N, S, R * S), r, mean, var)
    _center_and_rstd(mean[r], var[r], eps, a.rms, &center, &inv)
    if floating is double and a.rms:
        _rms_in_range(mean[r], var[r], eps, &inv)
    for n in range(N):
        _sweep_span(x + (n * R + r) * S, y + (n * R + r) * S, 0, S, r, S, center, inv, a, stream)


cdef enum:
    BATCH_ROWS = 64        # rows (N = 1) go in batches of at most this many rows
    BATCH_VALUES = 4096    # and of at most this many values, so that a batch is in cache for its sweep


cdef inline Py_ssize_t _batch_rows(Py_ssize_t N, Py_ssize_t R, Py_ssize_t S, int nthreads,
                                   bint streamed) noexcept nogil:
    """Rows per batch for _forward_row_batch / _backward_row_batch, or 0 where rows go one at a time: runs of
    several samples (N > 1), too few rows to share among the threads, or long rows (over 512 values) but
    where the output is ``streamed`` by one thread.  Batches of rows of up to 512 values (bench/NOTES.md,
    "Batches of short rows").  Longer rows, up to 2048 values, in batches of an even count, their statistics
    two rows at a time (fastnorm_row_sums_f32), only streamed at one thread: with cached stores a batch's
    sweeps wait for y's lines all at once, and two threads gained nothing (bench/NOTES.md, "Long rows in
    batches")."""
    cdef Py_ssize_t rows
    if N != 1 or S < 1:
        return 0
    rows = min(<Py_ssize_t>BATCH_ROWS, BATCH_VALUES // S)
    if rows < 8:
        if rows < 2 or not streamed or nthreads > 1:
            return 0
        rows -= rows % 2
    if nthreads > 1:
        if R < 4 * nthreads and S * R >= BATCH_VALUES:
            return 0
        rows = max(<Py_ssize_t>2, min(rows, R // (4 * nthreads)))  # at least 4 batches a thread
    return rows


cdef inline void _rows_block_moments(const floating* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                                     double* mean, double* var) noexcept nogil:
    """The moments of rows ``r0 <= r < r1`` of ``n`` values, ``x`` pointing at row r0, into mean[r], var[r]:
    each row's _strided_moments of one run (its _block_moments for n <= BLOCK).  float32 rows of one block
    in one call, which keeps several rows' chains of additions in flight and divides by vectors
    (_simd_moments.h); the same bits."""
    cdef Py_ssize_t r
    if floating is float and n <= BLOCK:
        fastnorm_row_moments_f32(x, r1 - r0, n, mean + r0, var + r0)
        return
    for r in range(r0, r1):
        if n <= BLOCK:
            _store_moments(_block_moments(x + (r - r0) * n, n), r, mean, var)
        else:
            _store_moments(_strided_moments(x + (r - r0) * n, 1, n, n), r, mean, var)


cdef void _forward_row_batch(const floating* x, floating* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t S,
                             const RowAffine* a, double eps, double* mean, double* var, bint stream) noexcept nogil:
    """Rows r0 <= r < r1 (at most BATCH_ROWS of them) of an [1, R, S] buffer, ``x`` and ``y`` pointing at row
    r0: what _forward_row does, one step for all the rows at a time.  A short row's time is the latency of
    its chain of divisions and square root; with the rows' chains side by side they overlap.  The same
    operations (_strided_moments of one run of at most BLOCK values is its _block_moments), so the same
    bits."""
    cdef double center[BATCH_ROWS]
    cdef double inv[BATCH_ROWS]
    cdef Py_ssize_t r
    _rows_block_moments(x, r0, r1, S, mean, var)
    for r in range(r0, r1):
        _center_and_rstd(mean[r], var[r], eps, a.rms, &center[r - r0], &inv[r - r0])
    if floating is double and a.rms:
        for r in range(r0, r1):
            _rms_in_range(mean[r], var[r], eps, &inv[r - r0])
    for r in range(r0, r1):
        _sweep_span(x + (r - r0) * S, y + (r - r0) * S, 0, S, r, S, center[r - r0], inv[r - r0], a, stream)


cdef void _forward_row_split(const floating* x, floating* y, Py_ssize_t r, Py_ssize_t n, Py_ssize_t start,
                             Py_ssize_t N, Py_ssize_t R, Py_ssize_t S, const RowAffine* a, double eps,
                             const double* mean, const double* var, bint stream) noexcept nogil:
    """The piece of run n of row r from ``start``, once the row's statistics are known.  (A function of
    its own: the locals whose address is taken must be private to the thread.)"""
    cdef double center, inv
    _center_and_rstd(mean[r], var[r], eps, a.rms, &center, &inv)
    if floating is double and a.rms:
        _rms_in_range(mean[r], var[r], eps, &inv)
    _sweep_span(x + (n * R + r) * S, y + (n * R + r) * S, start, min(<Py_ssize_t>SPLIT, S - start), r, S,
                center, inv, a, stream)


cdef int _forward_rows(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S,
                       const RowAffine* a, double eps, double* mean, double* var, int nthreads) noexcept nogil:
    cdef bint stream = _streams(2 * N * R * S * sizeof(floating))
    cdef Py_ssize_t r, t
    cdef Py_ssize_t pieces = (S + SPLIT - 1) // SPLIT
    # whether the sweeps stream: y's distance from x modulo 4 KiB is the same for every row (see _lands_ahead)
    cdef Py_ssize_t rows = _batch_rows(N, R, S, nthreads, stream and not _lands_ahead(y, x))
    cdef Py_ssize_t batches = (R + rows - 1) // rows if rows else 0
    if rows:
        if nthreads <= 1 or batches < 2:
            for t in range(batches):
                _forward_row_batch(x + t * rows * S, y + t * rows * S, t * rows, min(R, (t + 1) * rows), S, a, eps,
                                   mean, var, stream)
        else:
            for t in prange(batches, schedule="static", num_threads=nthreads):
                _forward_row_batch(x + t * rows * S, y + t * rows * S, t * rows, min(R, (t + 1) * rows), S, a, eps,
                                   mean, var, stream)
        _fence_streams(stream, nthreads)
        return 0
    if nthreads <= 1 or R >= 4 * nthreads:
        if nthreads <= 1:  # no thread team for one thread
            for r in range(R):
                _forward_row(x, y, r, N, R, S, a, eps, mean, var, stream)
        else:
            for r in prange(R, schedule="static", num_threads=nthreads):
                _forward_row(x, y, r, N, R, S, a, eps, mean, var, stream)
        _fence_streams(stream, nthreads)
        return 0
    # Too few rows to share among the threads one row each: statistics from blocks computed in
    # parallel (the same bits, see _moments_channels), then all pieces of all runs swept in parallel.
    if _moments_channels(x, N, R, S, mean, var, nthreads) < 0:
        return -1
    for t in prange(R * N * pieces, schedule="static", num_threads=nthreads):
        _forward_row_split(x, y, t // (N * pieces), (t // pieces) % N, (t % pieces) * SPLIT, N, R, S, a, eps, mean,
                           var, stream)
    _fence_streams(stream, nthreads)
    return 0


# ---------------------------------------------------------------------------------------------------------
# With a residual (the pre-norm transformer block): h = x + residual, then the rows of h normalized
# ---------------------------------------------------------------------------------------------------------

# Values of h a thread holds in cache at a time (64 KiB of float32): longer rows go through h in memory.
cdef enum:
    RESIDUAL_VALUES = 16384


cdef inline Py_ssize_t _residual_rows(Py_ssize_t S, int nthreads) noexcept nogil:
    """Rows of h per step of _forward_residual_rows; 0 where a row does not fit in RESIDUAL_VALUES.  Under 8
    rows an even count at one thread, as _batch_rows: every row's statistics then go two rows at a time."""
    cdef Py_ssize_t rows
    if S > RESIDUAL_VALUES:
        return 0
    rows = max(<Py_ssize_t>1, min(<Py_ssize_t>BATCH_ROWS, BATCH_VALUES // S))
    if nthreads <= 1 and 2 < rows < 8:
        rows -= rows % 2
    return rows


cdef inline void _add(const floating* x, const floating* res, floating* tmp, floating* h, Py_ssize_t n,
                      bint stream, Py_ssize_t ahead) noexcept nogil:
    """``tmp = x + res`` (in cache), copied to ``h``: streamed stores where y is streamed, the values
    ``ahead`` on requested from memory meanwhile."""
    if floating is float:
        if stream:
            fastnorm_add_stream_f32(x, res, tmp, h, n, ahead)
        else:
            fastnorm_add_f32(x, res, tmp, h, n)
    elif stream:
        fastnorm_add_stream_f64(x, res, tmp, h, n, ahead)
    else:
        fastnorm_add_f64(x, res, tmp, h, n)


cdef void _forward_residual_share(const floating* x, const floating* res, floating* h, floating* y, Py_ssize_t r0,
                                  Py_ssize_t r1, Py_ssize_t S, const RowAffine* a, double eps, double* mean,
                                  double* var, floating* tmp, Py_ssize_t rows, bint stream) noexcept nogil:
    """Rows r0 <= r < r1 of [1, R, S], a few at a time: ``tmp = x + residual`` in cache (and out to h), then
    the rows normalized from tmp (_forward_row_batch).  x and the residual are read once, h and y written
    once; every row has the bits of layer_norm(x + residual)."""
    cdef Py_ssize_t r = r0, n, off
    cdef floating* t
    while r < r1:
        off = r * S
        n = min(rows, r1 - r) * S
        # t at x's address modulo 4 KiB: its stores then never land just ahead of the loads of x, the
        # residual or y's stores (arrays that start alike), which stalls them (see _lands_ahead).
        t = <floating*>(<char*>tmp + ((<size_t>(x + off) - <size_t>tmp) & 4095))
        _add(x + off, res + off, t, h + off, n, stream, n if r + rows < r1 else 0)
        _forward_row_batch(t, y + off, r, min(r + rows, r1), S, a, eps, mean, var, stream)
        r += rows


cdef int _forward_rows_residual(const floating* x, const floating* res, floating* h, floating* y, Py_ssize_t R,
                                Py_ssize_t S, const RowAffine* a, double eps, double* mean, double* var,
                                int nthreads) noexcept nogil:
    """LayerNorm or RMSNorm of the R rows of ``h = x + residual`` (all [1, R, S]), writing h and y.  h may
    be x or the residual itself (each step reads its rows before it writes them).  -1: out of memory."""
    cdef Py_ssize_t rows = _residual_rows(S, nthreads), share, t
    cdef bint stream = _streams(4 * R * S * sizeof(floating))
    cdef floating* tmp
    if rows == 0:  # long rows: h in memory, then its rows as without a residual
        for t in prange(R, schedule="static", num_threads=max(1, nthreads)):
            _add(x + t * S, res + t * S, h + t * S, NULL, S, False, 0)
        return _forward_rows(h, y, 1, R, S, a, eps, mean, var, nthreads)
    nthreads = max(1, min(nthreads, (R + rows - 1) // rows))
    cdef Py_ssize_t per_thread = rows * S + 4096 // sizeof(floating)  # with room to place it (see above)
    tmp = <floating*>_alloc(nthreads * per_thread * sizeof(floating))
    if tmp == NULL:
        return -1
    share = (R + nthreads - 1) // nthreads
    if nthreads == 1:
        _forward_residual_share(x, res, h, y, 0, R, S, a, eps, mean, var, tmp, rows, stream)
    else:
        for t in prange(nthreads, schedule="static", chunksize=1, num_threads=nthreads):
            if t * share < R:
                _forward_residual_share(x, res, h, y, t * share, min(R, (t + 1) * share), S, a, eps, mean, var,
                                        tmp + t * per_thread, rows, stream)
    free(tmp)
    _fence_streams(stream, nthreads)
    return 0


cdef void _sweep_channels(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                          const floating* p, int nthreads, bint stream, const Epilogue* ep) noexcept nogil:
    cdef Py_ssize_t run, c
    if nthreads <= 1:
        for run in range(N * C):
            c = run % C
            _sweep(x + run * S, y + run * S, S, p + c, p + C + c, p + 2 * C + c, stream, ep)
        return
    for run in prange(N * C, schedule="static", num_threads=nthreads):
        c = run % C
        _sweep(x + run * S, y + run * S, S, p + c, p + C + c, p + 2 * C + c, stream, ep)


# ---------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------
# Forward: y = (x - mean) * rstd * w + b over a normalization group of M values, w and b per channel or
# per element.  With g = w * dy and xhat = (x - mean) * rstd:
#   training (mean and rstd depend on x): dx = rstd * (g - sum(g) / M - xhat * sum(g * xhat) / M)
#   frozen statistics (eval):             dx = rstd * g
#   dw = sum(dy * xhat), db = sum(dy), each over the values of its parameter.
# RMSNorm: the mean is 0 and the sum(g) term is absent.
# The sweep is written dx = c1 * dy + c2 * (x - mean_hi) + c3, with mean_hi the mean rounded to the data's
# type (x - mean_hi is exact near the mean, as in the forward sweep) and the rest of the mean in c3.

cdef inline void _backward_reduce_run(const floating* x, const floating* dy, Py_ssize_t n, double mean, double rstd,
                                      double* s) noexcept nogil:
    """s[0..3] = sum(dy), sum(dy * (x - mean)), and the check sums sum(xhat), sum(xhat**2)."""
    if floating is float:
        fastnorm_backward_reduce_run_f32(x, dy, n, mean, rstd, s, s + 1, s + 2, s + 3)
    else:
        fastnorm_backward_reduce_run_f64(x, dy, n, mean, rstd, s, s + 1, s + 2, s + 3)


cdef inline void _backward_elemt_run(const floating* x, const floating* dy, floating* dx, Py_ssize_t n,
                                     floating mean_hi, floating c1, floating c2, floating c3, const floating* w,
                                     bint stream) noexcept nogil:
    """dx = (w * dy) * c1 + c2 * (x - mean_hi) + c3; w is per element, or NULL."""
    if stream and (_lands_ahead(dx, x) or _lands_ahead(dx, dy)):  # not w, as in _sweep_affine
        stream = False
    if floating is float:
        if stream:
            fastnorm_backward_elemt_stream_f32(x, dy, dx, n, mean_hi, c1, c2, c3, w)
        elif w != NULL:
            fastnorm_backward_elemt_per_element_f32(x, dy, dx, n, mean_hi, c1, c2, c3, w)
        else:
            fastnorm_backward_elemt_f32(x, dy, dx, n, mean_hi, c1, c2, c3)
    else:
        if stream:
            fastnorm_backward_elemt_stream_f64(x, dy, dx, n, mean_hi, c1, c2, c3, w)
        elif w != NULL:
            fastnorm_backward_elemt_per_element_f64(x, dy, dx, n, mean_hi, c1, c2, c3, w)
        else:
            fastnorm_backward_elemt_f64(x, dy, dx, n, mean_hi, c1, c2, c3)


cdef inline void _backward_reduce_split(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t R,
                                        Py_ssize_t S, Py_ssize_t sub, Py_ssize_t r, Py_ssize_t t, double mean,
                                        double rstd, double* s) noexcept nogil:
    """Sums (as _backward_reduce_run) of piece ``t`` of row ``r`` in canonical order (run n, sub-run j, piece k
    within it)."""
    cdef Py_ssize_t per_sub = (sub + SPLIT - 1) // SPLIT
    cdef Py_ssize_t K = S // sub
    cdef Py_ssize_t n = t // (K * per_sub)
    cdef Py_ssize_t j = (t // per_sub) % K
    cdef Py_ssize_t start = j * sub + (t % per_sub) * SPLIT
    cdef Py_ssize_t off = (n * R + r) * S + start
    _backward_reduce_run(x + off, dy + off, min(<Py_ssize_t>SPLIT, (j + 1) * sub - start), mean, rstd, s)


cdef void _backward_reduce_row(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t R, Py_ssize_t S,
                               Py_ssize_t sub, Py_ssize_t r, double mean, double rstd, double* sum_dy,
                               double* sum_dy_xhat, double* xhat_sums) noexcept nogil:
    """Per sub-run j of row r, summed over its runs: sum_dy[j] = sum(dy), sum_dy_xhat[j] = sum(dy * xhat); and
    the row's check sums xhat_sums[0] = sum(xhat), xhat_sums[1] = sum(xhat**2).  The pieces in the canonical
    order of _backward_reduce_split (run n, sub-run j, piece k), walked without its divisions: a short row's
    time went to them."""
    cdef Py_ssize_t K = S // sub
    cdef Py_ssize_t n, j, start, off
    cdef double sums[4]
    cdef double x1 = 0.0, x2 = 0.0
    for j in range(K):
        sum_dy[j] = 0.0
        sum_dy_xhat[j] = 0.0
    for n in range(N):
        off = (n * R + r) * S
        for j in range(K):
            start = j * sub
            while start < (j + 1) * sub:
                _backward_reduce_run(x + off + start, dy + off + start, min(<Py_ssize_t>SPLIT,
                                                                            (j + 1) * sub - start), mean,
                                     rstd, sums)
                sum_dy[j] += sums[0]
                sum_dy_xhat[j] += sums[1]
                x1 += sums[2]
                x2 += sums[3]
                start += SPLIT
    for j in range(K):
        sum_dy_xhat[j] *= rstd
    if xhat_sums != NULL:
        xhat_sums[0] = x1
        xhat_sums[1] = x2


cdef void _backward_row_coefficients(const RowAffine* a, Py_ssize_t first, Py_ssize_t K, double M,
                                     double mean_lo, double rstd, bint training, const double* sum_dy,
                                     const double* sum_dy_xhat, double* c2, double* c3) noexcept nogil:
    """c2 and c3 of a row whose K sub-runs are the channels from ``first`` on (the terms of dx that
    depend on the row's sums); ``mean_lo`` is the part of the mean below the data's precision."""
    cdef double sum_w_dy = 0.0, sum_w_dy_xhat = 0.0, w
    cdef Py_ssize_t j
    c2[0] = 0.0
    c3[0] = 0.0
    if not training:
        return
    for j in range(K):
        w = _at(a.weight, first + j, 1.0)
        sum_w_dy += w * sum_dy[j]
        sum_w_dy_xhat += w * sum_dy_xhat[j]
    _backward_coefficients(sum_w_dy, sum_w_dy_xhat, M, rstd, mean_lo, a.rms, c2, c3)


cdef void _backward_elemt_span(const floating* x, const floating* dy, floating* dx, Py_ssize_t N,
                               Py_ssize_t R, Py_ssize_t S, const RowAffine* a, Py_ssize_t r, Py_ssize_t n,
                               Py_ssize_t start, Py_ssize_t length, double mean, double rstd, double c2,
                               double c3, bint stream) noexcept nogil:
    cdef Py_ssize_t off = (n * R + r) * S
    cdef Py_ssize_t pos = start, end = start + length, stop
    cdef Py_ssize_t j = pos // a.sub, first = (r % a.groups) * (S // a.sub)
    cdef floating mean_hi = <floating>mean
    cdef floating b = <floating>c2, g = <floating>c3
    if a.sub == 1:  # one value per channel: the sweep below without a call per value, as _sweep_span
        for j in range(pos, end):
            dx[off + j] = (dy[off + j] * <floating>(rstd * _at(a.weight, first + j, 1.0))
                           + b * (x[off + j] - mean_hi) + g)
        return
    while pos < end:
        stop = min(end, (j + 1) * a.sub)
        _backward_elemt_run(x + off + pos, dy + off + pos, dx + off + pos, stop - pos, mean_hi,
                            <floating>(rstd * _at(a.weight, first + j, 1.0)), <floating>c2, <floating>c3, NULL,
                            stream)
        pos = stop
        j += 1


cdef void _backward_elemt_row(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t R,
                              Py_ssize_t S, const RowAffine* a, Py_ssize_t r, Py_ssize_t n, Py_ssize_t start,
                              Py_ssize_t length, const double* mean, const double* rstd, bint training,
                              const double* sum_dy, const double* sum_dy_xhat, double count,
                              bint stream) noexcept nogil:
    """dx for values start <= i < start + length of run n of row r, once the row's sums over ``count``
    values are known (N * S, or more when the row is spread over several processes)."""
    cdef Py_ssize_t K = S // a.sub
    cdef double c2, c3
    _backward_row_coefficients(a, (r % a.groups) * K, K, count, mean[r] - <double><floating>mean[r], rstd[r],
                               training, sum_dy + r * K, sum_dy_xhat + r * K, &c2, &c3)
    _backward_elemt_span(x, dy, dx, N, R, S, a, r, n, start, length, mean[r], rstd[r], c2, c3, stream)


cdef void _backward_row(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t R,
                        Py_ssize_t S, const RowAffine* a, Py_ssize_t r, const double* mean, const double* rstd,
                        bint training, double* sum_dy, double* sum_dy_xhat, double* xhat_sums,
                        bint stream) noexcept nogil:
    """Row r: its sums, then its dx while its runs are in cache."""
    cdef Py_ssize_t K = S // a.sub
    cdef Py_ssize_t n
    _backward_reduce_row(x, dy, N, R, S, a.sub, r, mean[r], rstd[r], sum_dy + r * K, sum_dy_xhat + r * K,
                         xhat_sums + 2 * r)
    for n in range(N):
        _backward_elemt_row(x, dy, dx, N, R, S, a, r, n, 0, S, mean, rstd, training, sum_dy, sum_dy_xhat, N * S,
                            stream)


cdef void _backward_row_batch(const floating* x, const floating* dy, floating* dx, Py_ssize_t r0, Py_ssize_t r1,
                              Py_ssize_t R, Py_ssize_t S, const RowAffine* a, const double* mean, const double* rstd,
                              bint training, double* sum_dy, double* sum_dy_xhat, double* xhat_sums) noexcept nogil:
    """_backward_row for rows r0 <= r < r1 (at most BATCH_ROWS) of an [1, R, S] buffer, one step for all the
    rows at a time, as _forward_row_batch: the same operations, so the same bits.  The runs' sums and sweeps
    are one C loop each: a call per run from here cost more than its 16 or 64 values.  Cached stores
    even for outputs that others stream: streaming runs this short one by one was slower (bench/NOTES.md,
    "Batches of short rows")."""
    cdef double c2[BATCH_ROWS]
    cdef double c3[BATCH_ROWS]
    cdef floating mean_hi_v[BATCH_ROWS]
    cdef floating c2_v[BATCH_ROWS]
    cdef floating c3_v[BATCH_ROWS]
    cdef floating c1_v[BATCH_VALUES]  # one per run: rows * K <= rows * S <= BATCH_VALUES
    cdef Py_ssize_t K = S // a.sub
    cdef Py_ssize_t r, j, first
    if floating is float:
        fastnorm_backward_reduce_runs_f32(x + r0 * S, dy + r0 * S, r1 - r0, K, a.sub, mean + r0, rstd + r0,
                                          sum_dy + r0 * K, sum_dy_xhat + r0 * K, xhat_sums + 2 * r0)
    else:
        fastnorm_backward_reduce_runs_f64(x + r0 * S, dy + r0 * S, r1 - r0, K, a.sub, mean + r0, rstd + r0,
                                          sum_dy + r0 * K, sum_dy_xhat + r0 * K, xhat_sums + 2 * r0)
    first = (r0 % a.groups) * K  # the channel of the row's first sub-run
    for r in range(r0, r1):
        _backward_row_coefficients(a, first, K, S, mean[r] - <double><floating>mean[r], rstd[r], training,
                                   sum_dy + r * K, sum_dy_xhat + r * K, &c2[r - r0], &c3[r - r0])
        # the values _backward_elemt_span passes to each run's sweep
        mean_hi_v[r - r0] = <floating>mean[r]
        c2_v[r - r0] = <floating>c2[r - r0]
        c3_v[r - r0] = <floating>c3[r - r0]
        for j in range(K):
            c1_v[(r - r0) * K + j] = <floating>(rstd[r] * _at(a.weight, first + j, 1.0))
        first += K
        if first == a.groups * K:
            first = 0
    if floating is float:
        fastnorm_backward_elemt_runs_f32(x + r0 * S, dy + r0 * S, dx + r0 * S, r1 - r0, K, a.sub, mean_hi_v, c1_v,
                                         c2_v, c3_v)
    else:
        fastnorm_backward_elemt_runs_f64(x + r0 * S, dy + r0 * S, dx + r0 * S, r1 - r0, K, a.sub, mean_hi_v, c1_v,
                                         c2_v, c3_v)


cdef int _backward_rows(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t R,
                        Py_ssize_t S, const RowAffine* a, const double* mean, const double* rstd, bint training,
                        double* sum_dy, double* sum_dy_xhat, double* xhat_sums, int nthreads) noexcept nogil:
    """Backward of _forward_rows with a per-channel affine; sum_dy, sum_dy_xhat: [R, S // sub] sums per
    sub-run; xhat_sums: the rows' check sums, [R, 2]."""
    cdef Py_ssize_t K = S // a.sub
    cdef Py_ssize_t per_sub = (a.sub + SPLIT - 1) // SPLIT
    cdef Py_ssize_t per_row = N * K * per_sub
    cdef Py_ssize_t sweep_pieces = (S + SPLIT - 1) // SPLIT
    cdef Py_ssize_t r, t, j, start
    cdef double* partial
    cdef bint stream = _streams(3 * N * R * S * sizeof(floating))
    cdef Py_ssize_t rows = _batch_rows(N, R, S, nthreads, False)
    cdef Py_ssize_t batches = (R + rows - 1) // rows if rows else 0
    if rows:
        if nthreads <= 1 or batches < 2:
            for t in range(batches):
                _backward_row_batch(x, dy, dx, t * rows, min(R, (t + 1) * rows), R, S, a, mean, rstd, training,
                                    sum_dy, sum_dy_xhat, xhat_sums)
        else:
            for t in prange(batches, schedule="static", num_threads=nthreads):
                _backward_row_batch(x, dy, dx, t * rows, min(R, (t + 1) * rows), R, S, a, mean, rstd, training,
                                    sum_dy, sum_dy_xhat, xhat_sums)
        return 0
    if nthreads <= 1 or R >= 4 * nthreads:
        if nthreads <= 1:  # no thread team for one thread
            for r in range(R):
                _backward_row(x, dy, dx, N, R, S, a, r, mean, rstd, training, sum_dy, sum_dy_xhat, xhat_sums, stream)
        else:
            for r in prange(R, schedule="static", num_threads=nthreads):
                _backward_row(x, dy, dx, N, R, S, a, r, mean, rstd, training, sum_dy, sum_dy_xhat, xhat_sums, stream)
        _fence_streams(stream, nthreads)
        return 0
    # Few rows: the pieces' sums in parallel, folded in the canonical order of _backward_reduce_row.
    partial = <double*>_alloc(4 * R * per_row * sizeof(double))
    if partial == NULL:
        return -1
    for t in prange(R * per_row, schedule="static", num_threads=nthreads):
        _backward_reduce_split(x, dy, N, R, S, a.sub, t // per_row, t % per_row, mean[t // per_row],
                               rstd[t // per_row], partial + 4 * t)
    for r in range(R):
        for j in range(K):
            sum_dy[r * K + j] = 0.0
            sum_dy_xhat[r * K + j] = 0.0
        xhat_sums[2 * r] = 0.0
        xhat_sums[2 * r + 1] = 0.0
        for t in range(per_row):
            j = (t // per_sub) % K
            sum_dy[r * K + j] += partial[4 * (r * per_row + t)]
            sum_dy_xhat[r * K + j] += partial[4 * (r * per_row + t) + 1]
            xhat_sums[2 * r] += partial[4 * (r * per_row + t) + 2]
            xhat_sums[2 * r + 1] += partial[4 * (r * per_row + t) + 3]
        for j in range(K):
            sum_dy_xhat[r * K + j] *= rstd[r]
    free(partial)
    for t in prange(R * N * sweep_pieces, schedule="static", num_threads=nthreads):
        start = (t % sweep_pieces) * SPLIT
        _backward_elemt_row(x, dy, dx, N, R, S, a, t // (N * sweep_pieces), (t // sweep_pieces) % N, start,
                            min(<Py_ssize_t>SPLIT,
                                S - start), mean, rstd, training, sum_dy, sum_dy_xhat, N * S, stream)
    _fence_streams(stream, nthreads)
    return 0


cdef void _backward_per_element_chunk(const floating* x, const floating* dy, floating* dx, Py_ssize_t r0,
                                      Py_ssize_t r1,
                                      Py_ssize_t D, const floating* w, const double* mean, const double* rstd,
                                      bint training, bint rms, double* col_dy, double* col_dy_xhat, double* xhat_sums,
                                      bint stream) noexcept nogil:
    """Backward of rows r0 <= r < r1 with an elementwise weight; column sums into col_dy, col_dy_xhat, the
    rows' check sums into xhat_sums[2 r], xhat_sums[2 r + 1]."""
    cdef Py_ssize_t r, d
    cdef double sum_w_dy, sum_w_dy_xc, c2, c3
    cdef floating mean_hi
    for d in range(D):
        col_dy[d] = 0.0
        col_dy_xhat[d] = 0.0
    for r in range(r0, r1):
        if floating is float:
            fastnorm_backward_reduce_per_element_f32(x + r * D, dy + r * D, D, mean[r], rstd[r], w, &sum_w_dy,
                                                     &sum_w_dy_xc, xhat_sums + 2 * r,
                                                     xhat_sums + 2 * r + 1, col_dy, col_dy_xhat)
        else:
            fastnorm_backward_reduce_per_element_f64(x + r * D, dy + r * D, D, mean[r], rstd[r], w, &sum_w_dy,
                                                     &sum_w_dy_xc, xhat_sums + 2 * r,
                                                     xhat_sums + 2 * r + 1, col_dy, col_dy_xhat)
        mean_hi = <floating>mean[r]
        c2 = 0.0
        c3 = 0.0
        if training:
            _backward_coefficients(sum_w_dy, sum_w_dy_xc * rstd[r], <double>D, rstd[r], mean[r] - <double>mean_hi,
                                   rms, &c2, &c3)
        _backward_elemt_run(x + r * D, dy + r * D, dx + r * D, D, mean_hi, <floating>rstd[r], <floating>c2,
                            <floating>c3, w, stream)


cdef enum:
    ELEM_CHUNKS = 32   # row chunks of the elementwise backward (their column sums are merged in order)


cdef enum:
    MERGE_COLUMNS = 4096


cdef void _add_chunk_sums(const double* partial, Py_ssize_t nchunks, Py_ssize_t D, Py_ssize_t d0, Py_ssize_t d1,
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


cdef inline Py_ssize_t _per_element_chunks(Py_ssize_t R, Py_ssize_t itemsize) noexcept nogil:
    """The row chunks of _backward_per_element (see there): fixed by the shape, so are its sums' bits."""
    return max(min(R, <Py_ssize_t>2), min(min(R, <Py_ssize_t>ELEM_CHUNKS), 3 * R * itemsize // (16 * 8)))


cdef int _backward_per_element(const floating* x, const floating* dy, floating* dx, Py_ssize_t R, Py_ssize_t D,
                               const floating* w, const double* mean, const double* rstd, bint training, bint rms,
                               double* grad_w, double* grad_b, double* xhat_sums, int nthreads) noexcept nogil:
    # Few long rows get few chunks: each chunk's column sums are 16 bytes a column, zeroed, updated by every
    # row and merged, so 32 chunks of 2 rows of 14336 values moved more memory than the rows (bench/NOTES.md,
    # "Chunks of the per-element backward").  The chunks' sums are kept to an eighth of the bytes the call
    # moves (3 R D values), at least 2 chunks.
    cdef Py_ssize_t nchunks = _per_element_chunks(R, sizeof(floating))
    cdef Py_ssize_t per = (R + nchunks - 1) // nchunks
    cdef Py_ssize_t k
    cdef double* partial = <double*>_alloc(2 * nchunks * D * sizeof(double))
    cdef bint stream = _streams(3 * R * D * sizeof(floating))
    if partial == NULL:
        return -1
    if nthreads <= 1:  # no thread team for one thread
        for k in range(nchunks):
            _backward_per_element_chunk(x, dy, dx, min(R, k * per), min(R, (k + 1) * per), D, w, mean, rstd,
                                        training, rms,
                                        partial + 2 * k * D, partial + (2 * k + 1) * D, xhat_sums, stream)
    else:
        for k in prange(nchunks, schedule="static", num_threads=nthreads):
            _backward_per_element_chunk(x, dy, dx, min(R, k * per), min(R, (k + 1) * per), D, w, mean, rstd,
                                        training, rms,
                                        partial + 2 * k * D, partial + (2 * k + 1) * D, xhat_sums, stream)
    _fence_streams(stream, nthreads)
    if nthreads <= 1 or D < 2 * MERGE_COLUMNS:
        _add_chunk_sums(partial, nchunks, D, 0, D, grad_w, grad_b)
    else:
        for k in prange((D + MERGE_COLUMNS - 1) // MERGE_COLUMNS, schedule="static", num_threads=nthreads):
            _add_chunk_sums(partial, nchunks, D, k * MERGE_COLUMNS, min(D, (k + 1) * MERGE_COLUMNS), grad_w, grad_b)
    free(partial)
    return 0


cdef void _backward_reduce_channels(const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                    const double* mean, const double* rstd, double* sum_dy, double* sum_dy_xhat,
                                    int nthreads) noexcept nogil:
    cdef Py_ssize_t r
    if nthreads <= 1:  # no thread team for one thread
        for r in range(C):
            _backward_reduce_row(x, dy, N, C, S, S, r, mean[r], rstd[r], sum_dy + r, sum_dy_xhat + r, NULL)
    else:
        for r in prange(C, schedule="static", num_threads=nthreads):
            _backward_reduce_row(x, dy, N, C, S, S, r, mean[r], rstd[r], sum_dy + r, sum_dy_xhat + r, NULL)


cdef void _backward_elemt_channels(const floating* x, const floating* dy, floating* dx, Py_ssize_t N, Py_ssize_t C,
                                   Py_ssize_t S, const RowAffine* a, const double* mean, const double* rstd,
                                   const double* sum_dy, const double* sum_dy_xhat, double count,
                                   int nthreads) noexcept nogil:
    cdef Py_ssize_t t
    cdef bint stream = _streams(3 * N * C * S * sizeof(floating))
    if nthreads <= 1:  # no thread team for one thread
        for t in range(N * C):
            _backward_elemt_row(x, dy, dx, N, C, S, a, t % C, t // C, 0, S, mean, rstd, True, sum_dy, sum_dy_xhat,
                                count, stream)
    else:
        for t in prange(N * C, schedule="static", num_threads=nthreads):
            _backward_elemt_row(x, dy, dx, N, C, S, a, t % C, t // C, 0, S, mean, rstd, True, sum_dy, sum_dy_xhat,
                                count, stream)
    _fence_streams(stream, nthreads)
