# ---------------------------------------------------------------------------------------------------------
# The per-element formulas, each written once: the group's center and rstd, the fold of the forward
# (mean_hi, scale, shift), the backward's dx coefficients (c1, c2, c3), and the sweeps that apply them.
# ---------------------------------------------------------------------------------------------------------

cdef inline void _fold(double center, double rstd, double weight, double bias, floating* mean_hi,
                       floating* scale, floating* shift) noexcept nogil:
    """Fold a group's statistics and its channel's affine into ``y = (x - mean_hi) * scale + shift``.

    Scalar form: ``y = (x - center) * rstd * weight + bias``.  ``mean_hi`` is the center rounded to the
    data's type; the rest, ``mean_lo = center - mean_hi``, goes into ``shift`` as ``-mean_lo * scale``.
    ``x - mean_hi`` is exact for data near its mean (Sterbenz), so no precision of a large mean is lost,
    and the remainder is added at the scale of the output, where its rounding is a fraction of an ulp of
    ``y``.
    """
    cdef double s = rstd * weight
    mean_hi[0] = <floating>center
    scale[0] = <floating>s
    shift[0] = <floating>(bias - (center - <double>mean_hi[0]) * s)


cdef inline void _backward_coefficients(double sum_w_dy, double sum_w_dy_xhat, double count, double rstd,
                                        double mean_lo, bint rms, double* c2, double* c3) noexcept nogil:
    """The terms of a training backward's ``dx = c1 * dy + c2 * (x - mean_hi) + c3`` that depend on the
    group's sums over its ``count`` values (c1 = rstd * w is per channel or element; frozen statistics:
    c2 = c3 = 0).

    Scalar form, with g = w * dy and xhat = (x - mean) * rstd:
    ``dx = rstd * (g - sum(g) / count - xhat * sum(g * xhat) / count)``, so
    ``c2 = -rstd**2 * sum(g * xhat) / count`` and ``c3 = -rstd * sum(g) / count - c2 * mean_lo`` (RMSNorm:
    no sum(g) term), ``mean_lo`` being the part of the mean below the data's precision.
    """
    c2[0] = -rstd * rstd * sum_w_dy_xhat / count
    c3[0] = (0.0 if rms else -rstd * sum_w_dy / count) - c2[0] * mean_lo


# A fused sweep (an Epilogue given) goes by chunks of CHUNK values: the plain cached sweep writes a chunk of
# y, and the epilogue adds and activates it in place while it is in L1, so y is still written to memory
# once.  relu and relu6 go in the sweep's own loop (fastnorm_sweep_clamp).  A fused output is not
# streamed: measured on (32, 64, 56, 56) float32, a chunk built in a buffer then stored non-temporally
# took twice the time of the plain sweep, the chunks written in place the time of the plain sweep
# (bench/NOTES.md, "Fused activation and add").  Without an Epilogue the plain sweeps run as they are.
cdef enum:
    CHUNK = 512


cdef inline const floating* _added(const Epilogue* ep, const floating* y) noexcept nogil:
    """The values of ``ep.add`` that go with ``y`` (NULL: no add)."""
    if ep.add == NULL:
        return NULL
    return <const floating*>ep.add + (y - <const floating*>ep.y0)


cdef inline void _epilogue(floating* y, Py_ssize_t n, const Epilogue* ep) noexcept nogil:
    """``y = act(y + add)`` in place over n values of y just written (ep may be NULL: nothing)."""
    if ep == NULL:
        return
    if floating is float:
        fastnorm_activate_f32(y, _added(ep, y), n, ep.act)
    else:
        fastnorm_activate_f64(y, _added(ep, y), n, ep.act)


cdef inline void _sweep(const floating* x, floating* y, Py_ssize_t n, const floating* mean_hi,
                        const floating* scale, const floating* shift, bint stream,
                        const Epilogue* ep) noexcept nogil:
    """One channel's run: ``y = (x - mean_hi[0]) * scale[0] + shift[0]`` (then ``ep``, if any).  The
    fused forms are out of line, so that the plain sweep inlines into its callers as it did."""
    if ep == NULL:
        _sweep_plain(x, y, n, mean_hi, scale, shift, stream)
    else:
        _sweep_fused(x, y, n, mean_hi, scale, shift, ep)


cdef void _sweep_fused(const floating* x, floating* y, Py_ssize_t n, const floating* mean_hi,
                       const floating* scale, const floating* shift, const Epilogue* ep) noexcept nogil:
    cdef Py_ssize_t i, k
    if ep.act == 1 or ep.act == 2:  # relu, relu6: in the sweep's own loop
        if floating is float:
            fastnorm_sweep_clamp_f32(x, y, n, mean_hi[0], scale[0], shift[0], _added(ep, y),
                                     6.0 if ep.act == 2 else INFINITY)
        else:
            fastnorm_sweep_clamp_f64(x, y, n, mean_hi[0], scale[0], shift[0], _added(ep, y),
                                     6.0 if ep.act == 2 else INFINITY)
        return
    for i in range(0, n, 512):  # CHUNK (a literal step: Cython's C loop)
        k = min(<Py_ssize_t>CHUNK, n - i)
        _sweep_plain(x + i, y + i, k, mean_hi, scale, shift, False)
        _epilogue(y + i, k, ep)


cdef inline void _sweep_plain(const floating* x, floating* y, Py_ssize_t n, const floating* mean_hi,
                              const floating* scale, const floating* shift, bint stream) noexcept nogil:
    if stream and _lands_ahead(y, x):
        stream = False  # see _lands_ahead
    if floating is float:
        if stream:
            fastnorm_sweep_stream_f32(x, y, n, mean_hi, scale, shift, 0)
        else:
            fastnorm_sweep_f32(x, y, n, mean_hi[0], scale[0], shift[0])
    else:
        if stream:
            fastnorm_sweep_stream_f64(x, y, n, mean_hi, scale, shift, 0)
        else:
            fastnorm_sweep_f64(x, y, n, mean_hi[0], scale[0], shift[0])


cdef inline void _sweep_affine(const floating* x, floating* y, Py_ssize_t n, floating mean_hi, floating scale,
                               floating shift, const floating* w, const floating* b, bint stream,
                               const Epilogue* ep) noexcept nogil:
    """``y = ((x - mean_hi) * scale + shift) * w + b`` with per-element ``w`` and ``b`` (b may be NULL)."""
    if ep == NULL:
        _sweep_affine_plain(x, y, n, mean_hi, scale, shift, w, b, stream)
    else:
        _sweep_affine_fused(x, y, n, mean_hi, scale, shift, w, b, ep)


cdef void _sweep_affine_fused(const floating* x, floating* y, Py_ssize_t n, floating mean_hi, floating scale,
                              floating shift, const floating* w, const floating* b, const Epilogue* ep) noexcept nogil:
    cdef Py_ssize_t i, k
    for i in range(0, n, 512):  # CHUNK
        k = min(<Py_ssize_t>CHUNK, n - i)
        _sweep_affine_plain(x + i, y + i, k, mean_hi, scale, shift, w + i, NULL if b == NULL else b + i, False)
        _epilogue(y + i, k, ep)


cdef inline void _sweep_affine_plain(const floating* x, floating* y, Py_ssize_t n, floating mean_hi,
                                     floating scale, floating shift, const floating* w, const floating* b,
                                     bint stream) noexcept nogil:
    if stream and _lands_ahead(y, x):  # not w, b: measured, they made no difference, and rows of
        stream = False                  # LayerNorm would then stream or not by turns (see _lands_ahead)
    if floating is float:
        if stream:
            fastnorm_sweep_affine_stream_f32(x, y, n, mean_hi, scale, shift, w, b)
        else:
            fastnorm_sweep_affine_f32(x, y, n, mean_hi, scale, shift, w, b)
    else:
        if stream:
            fastnorm_sweep_affine_stream_f64(x, y, n, mean_hi, scale, shift, w, b)
        else:
            fastnorm_sweep_affine_f64(x, y, n, mean_hi, scale, shift, w, b)


cdef inline void _sweep_columns(const floating* x, floating* y, Py_ssize_t rows, Py_ssize_t ncols,
                                const floating* p, Py_ssize_t plen, bint stream, const Epilogue* ep) noexcept nogil:
    """``rows`` rows of ``ncols`` values, column ``c`` with ``p[c], p[plen + c], p[2 * plen + c]``."""
    if ep == NULL:
        _sweep_columns_plain(x, y, rows, ncols, p, plen, stream)
    else:
        _sweep_columns_fused(x, y, rows, ncols, p, plen, ep)


cdef void _sweep_columns_fused(const floating* x, floating* y, Py_ssize_t rows, Py_ssize_t ncols,
                               const floating* p, Py_ssize_t plen, const Epilogue* ep) noexcept nogil:
    cdef Py_ssize_t r, c, k, per
    if ncols <= CHUNK:  # chunks of whole rows
        per = CHUNK // max(<Py_ssize_t>1, ncols)
        r = 0
        while r < rows:
            k = min(per, rows - r)
            _sweep_columns_plain(x + r * ncols, y + r * ncols, k, ncols, p, plen, False)
            _epilogue(y + r * ncols, k * ncols, ep)
            r += k
    else:  # chunks of a row: the factors from column c on
        for r in range(rows):
            for c in range(0, ncols, 512):  # CHUNK
                k = min(<Py_ssize_t>CHUNK, ncols - c)
                _sweep_columns_plain(x + r * ncols + c, y + r * ncols + c, 1, k, p + c, plen, False)
                _epilogue(y + r * ncols + c, k, ep)


cdef inline void _sweep_columns_plain(const floating* x, floating* y, Py_ssize_t rows, Py_ssize_t ncols,
                                      const floating* p, Py_ssize_t plen, bint stream) noexcept nogil:
    if stream and _lands_ahead(y, x):
        stream = False  # see _lands_ahead
    if stream:
        if floating is float:
            fastnorm_sweep_stream_f32(x, y, rows * ncols, p, p + plen, p + 2 * plen, ncols)
        else:
            fastnorm_sweep_stream_f64(x, y, rows * ncols, p, p + plen, p + 2 * plen, ncols)
    elif floating is float:
        fastnorm_sweep_columns_f32(x, y, rows, ncols, p, plen)
    else:
        fastnorm_sweep_columns_f64(x, y, rows, ncols, p, plen)


cdef inline void _center_and_rstd(double mean, double var, double eps, bint rms, double* center,
                                  double* inv) noexcept nogil:
    """The center and the inverse scale of a group: (mean, 1 / sqrt(var + eps)), or for RMSNorm
    (0, 1 / sqrt(mean(x**2) + eps)) with mean(x**2) = var + mean**2.  Branch-free but for rms, so that a loop of it over
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
