# What a training backward checks besides its gradient: that its input still has the statistics of its
# forward (from the xhat sums that the sums pass adds up anyway), and the rescaling of float64 groups
# whose rstd squared would under- or overflow.

cdef Py_ssize_t _first_modified(const double* xhat_sums, Py_ssize_t G, double count, const double* mean,
                                const double* rstd, double eps, const double* eps_r2, bint rms, bint f64, double* m1,
                                double* q) noexcept nogil:
    """The first of G normalization groups whose check sums cannot come from the input the statistics
    were computed from, or -1; m1 and q are then its mean and variance in units of the forward's.

    xhat_sums[2 g], xhat_sums[2 g + 1] are sum(xhat) and sum(xhat**2) over the group's ``count`` values, xhat = (x -
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
    cdef Py_ssize_t g = fastnorm_first_modified(xhat_sums, G, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms)
    if g >= 0:
        m1[0] = 0.0 if rms else xhat_sums[2 * g] * inv
        q[0] = xhat_sums[2 * g + 1] * inv - m1[0] * m1[0]
    return g


cdef int _check_unmodified(const double* xhat_sums, Py_ssize_t G, double count, const double* mean,
                           const double* rstd, object check, bint rms, bint f64) except -1:
    """Raise RuntimeError (PyTorch's words) when a group of a training backward's input no longer has
    the statistics given for it: modified in place after its forward, or not the input they came from.
    ``check``: the forward's eps, or eps * rstd**2 per group (an array)."""
    cdef double m1, q, eps = 0.0
    cdef const double* eps_r2 = NULL
    if isinstance(check, np.ndarray):
        eps_r2 = <const double*>cnp.PyArray_DATA(<cnp.ndarray>check)
    else:
        eps = check
    cdef Py_ssize_t g = _first_modified(xhat_sums, G, count, mean, rstd, eps, eps_r2, rms, f64, &m1, &q)
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
    cdef double* pr = _doubles(rstd)
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
