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


# A fused sweep (an Epilogue given) goes by chunks of CHUNK values: the plain cached sweep writes a chunk
# into a buffer on the stack (in L1), the epilogue adds and activates it there, and the chunk is stored to
# y as the plain sweep would store it (streamed or cached), so y is still written once.  Without an
# Epilogue the plain sweeps run as they are.
cdef enum:
    CHUNK = 512


cdef inline const floating* _added(const Epilogue* ep, const floating* y) noexcept nogil:
    """The values of ``ep.add`` that go with ``y`` (NULL: no add)."""
    if ep.add == NULL:
        return NULL
    return <const floating*>ep.add + (y - <const floating*>ep.y0)


cdef inline void _activate(floating* v, const floating* add, Py_ssize_t n, int act) noexcept nogil:
    """``v = act(v + add)`` in place over n values (add may be NULL)."""
    if floating is float:
        fastnorm_activate_f32(v, add, n, act)
    else:
        fastnorm_activate_f64(v, add, n, act)


cdef inline void _epilogue(floating* y, Py_ssize_t n, const Epilogue* ep) noexcept nogil:
    """The epilogue in place over n values of y just written (short runs written inline, in cache)."""
    if ep != NULL:
        _activate(y, _added(ep, y), n, ep.act)


cdef inline void _store_chunk(floating* buf, floating* y, Py_ssize_t n, const Epilogue* ep, bint stream) noexcept nogil:
    """A chunk of the plain sweep's values in ``buf``: the epilogue there, then the store to ``y``."""
    _activate(buf, _added(ep, y), n, ep.act)
    if stream:
        fastnorm_copy_stream(<char*>y, <const char*>buf, n * sizeof(floating))
    else:
        memcpy(y, buf, n * sizeof(floating))


cdef inline void _sweep(const floating* x, floating* y, Py_ssize_t n, const floating* mean_hi,
                        const floating* scale, const floating* shift, bint stream,
                        const Epilogue* ep) noexcept nogil:
    """One channel's run: ``y = (x - mean_hi[0]) * scale[0] + shift[0]`` (then ``ep``, if any)."""
    cdef floating buf[CHUNK]
    cdef Py_ssize_t i, k
    if stream and _lands_ahead(y, x):
        stream = False  # see _lands_ahead
    if ep != NULL:
        for i in range(0, n, 512):  # CHUNK (a literal step: Cython's C loop)
            k = min(<Py_ssize_t>CHUNK, n - i)
            if floating is float:
                fastnorm_sweep_f32(x + i, buf, k, mean_hi[0], scale[0], shift[0])
            else:
                fastnorm_sweep_f64(x + i, buf, k, mean_hi[0], scale[0], shift[0])
            _store_chunk(buf, y + i, k, ep, stream)
        return
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
    cdef floating buf[CHUNK]
    cdef Py_ssize_t i, k
    if stream and _lands_ahead(y, x):  # not w, b: measured, they made no difference, and rows of
        stream = False                  # LayerNorm would then stream or not by turns (see _lands_ahead)
    if ep != NULL:
        for i in range(0, n, 512):  # CHUNK (a literal step: Cython's C loop)
            k = min(<Py_ssize_t>CHUNK, n - i)
            if floating is float:
                fastnorm_sweep_affine_f32(x + i, buf, k, mean_hi, scale, shift, w + i, NULL if b == NULL else b + i)
            else:
                fastnorm_sweep_affine_f64(x + i, buf, k, mean_hi, scale, shift, w + i, NULL if b == NULL else b + i)
            _store_chunk(buf, y + i, k, ep, stream)
        return
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


cdef inline void _sweep_columns_plain(const floating* x, floating* y, Py_ssize_t rows, Py_ssize_t ncols,
                                      const floating* p, Py_ssize_t plen) noexcept nogil:
    if floating is float:
        fastnorm_sweep_columns_f32(x, y, rows, ncols, p, plen)
    else:
        fastnorm_sweep_columns_f64(x, y, rows, ncols, p, plen)


cdef inline void _sweep_columns(const floating* x, floating* y, Py_ssize_t rows, Py_ssize_t ncols,
                                const floating* p, Py_ssize_t plen, bint stream, const Epilogue* ep) noexcept nogil:
    """``rows`` rows of ``ncols`` values, column ``c`` with ``p[c], p[plen + c], p[2 * plen + c]``."""
    cdef floating buf[CHUNK]
    cdef Py_ssize_t r, c, k, per
    if stream and _lands_ahead(y, x):
        stream = False  # see _lands_ahead
    if ep != NULL:
        if ncols <= CHUNK:  # chunks of whole rows
            if ncols <= 0:
                return
            per = CHUNK // ncols
            r = 0
            while r < rows:
                k = min(per, rows - r)
                _sweep_columns_plain(x + r * ncols, buf, k, ncols, p, plen)
                _store_chunk(buf, y + r * ncols, k * ncols, ep, stream)
                r += k
        else:  # chunks of a row: the factors from column c on
            for r in range(rows):
                for c in range(0, ncols, 512):  # CHUNK
                    k = min(<Py_ssize_t>CHUNK, ncols - c)
                    _sweep_columns_plain(x + r * ncols + c, buf, 1, k, p + c, plen)
                    _store_chunk(buf, y + r * ncols + c, k, ep, stream)
        return
    if stream:
        if floating is float:
            fastnorm_sweep_stream_f32(x, y, rows * ncols, p, p + plen, p + 2 * plen, ncols)
        else:
            fastnorm_sweep_stream_f64(x, y, rows * ncols, p, p + plen, p + 2 * plen, ncols)
    else:
        _sweep_columns_plain(x, y, rows, ncols, p, plen)


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
