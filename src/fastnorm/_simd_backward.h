/* The backward: the sums of each normalization group and the dx sweeps (included by _simd.h). */
/* ---- Backward ------------------------------------------------------------------------------------------
 * With xhat = (x - mean) * rstd, the gradients need, per normalization group, sum(dy) and sum(dy * xhat);
 * these are taken in double as sum(dy) and sum(dy * (x - mean)), rstd applied once at the end. */

/* Sums of dy and dy * (x - mean) over n contiguous values, and the check sums of xhat = (x - mean) * rstd and
 * xhat**2 (the backward reads x anyway: they tell whether x still has the statistics the forward computed, see
 * the kernels' _check_unmodified).  The terms are formed and summed in T over blocks of FASTNORM_BACKWARD_BLOCK
 * values (a few terms per SIMD lane, so within a few ulps), and the blocks in double; x - mean_hi, with mean_hi
 * the mean rounded to T, is exact near the mean, and the rest of the mean (mean_lo) enters once at the end.
 * The check terms are (x - mean_hi) * rstd, which cannot overflow where the data's squares would (float32 at
 * 1e20). */
#define FASTNORM_BACKWARD_BLOCK 64
#define FASTNORM_BACKWARD_REDUCE(DEFINE, NAME, T)                                                              \
    DEFINE(NAME,                                                                                               \
           (const T *x, const T *dy, ptrdiff_t n, double mean, double rstd, double *sum_dy, double *sum_dy_xc, \
            double *sum_xhat, double *sum_xhat2),                                                              \
           (x, dy, n, mean, rstd, sum_dy, sum_dy_xc, sum_xhat, sum_xhat2))                                     \
    {                                                                                                          \
        T mean_hi = (T)mean, r = (T)rstd;                                                                      \
        double a = 0.0, b = 0.0, c = 0.0, d = 0.0;                                                             \
        /* the last block may be short: a short row is one vector loop, not a scalar chain */                  \
        for (ptrdiff_t i = 0; i < n; i += FASTNORM_BACKWARD_BLOCK) {                                           \
            ptrdiff_t end = n - i < FASTNORM_BACKWARD_BLOCK ? n : i + FASTNORM_BACKWARD_BLOCK;                 \
            T ba = 0, bb = 0, bc = 0, bd = 0;                                                                  \
            _Pragma("omp simd reduction(+:ba,bb,bc,bd)") for (ptrdiff_t k = i; k < end; k++)                   \
            {                                                                                                  \
                T xc = x[k] - mean_hi, t = xc * r;                                                             \
                ba += dy[k];                                                                                   \
                bb += dy[k] * xc;                                                                              \
                bc += t;                                                                                       \
                bd += t * t;                                                                                   \
            }                                                                                                  \
            a += (double)ba;                                                                                   \
            b += (double)bb;                                                                                   \
            c += (double)bc;                                                                                   \
            d += (double)bd;                                                                                   \
        }                                                                                                      \
        *sum_dy = a;                                                                                           \
        *sum_dy_xc = b - (mean - (double)mean_hi) * a;                                                         \
        fastnorm_xhat_sums(c, d, (double)n, (mean - (double)mean_hi) * (double)r, sum_xhat, sum_xhat2);        \
    }

/* Sum(xhat) and sum(xhat**2) from the sums c, d of t = (x - mean_hi) * r, xhat = t - lo_r (lo_r: the part of
 * the mean below the data's precision, times r). */
static inline void fastnorm_xhat_sums(double c, double d, double n, double lo_r, double *s1, double *s2)
{
    *s1 = c - n * lo_r;
    *s2 = d - 2.0 * lo_r * c + n * (lo_r * lo_r);
}

/* A row with an elementwise weight (LayerNorm, RMSNorm): the row's sums of w*dy and w*dy*(x - mean), its
 * check sums of xhat and xhat**2 (see FASTNORM_BACKWARD_REDUCE), and the column sums of dy and dy*xhat added to
 * col_dy, col_dy_xhat (the weight and bias gradients). */
#define FASTNORM_BACKWARD_REDUCE_PER_ELEMENT(DEFINE, NAME, T)                                             \
    DEFINE(NAME,                                                                                          \
           (const T *x, const T *dy, ptrdiff_t n, double mean, double rstd, const T *w, double *sum_w_dy, \
            double *sum_w_dy_xc, double *sum_xhat, double *sum_xhat2, double *restrict col_dy,            \
            double *restrict col_dy_xhat),                                                                \
           (x, dy, n, mean, rstd, w, sum_w_dy, sum_w_dy_xc, sum_xhat, sum_xhat2, col_dy, col_dy_xhat))    \
    {                                                                                                     \
        double a = 0.0, b = 0.0, c = 0.0, e = 0.0;                                                        \
        _Pragma("omp simd reduction(+:a,b,c,e)") for (ptrdiff_t i = 0; i < n; i++)                        \
        {                                                                                                 \
            double g = (double)dy[i], d = (double)x[i] - mean;                                            \
            double wg = w ? (double)w[i] * g : g, xh = d * rstd;                                          \
            a += wg;                                                                                      \
            b += wg * d;                                                                                  \
            c += xh;                                                                                      \
            e += xh * xh;                                                                                 \
            col_dy[i] += g;                                                                               \
            col_dy_xhat[i] += g * xh;                                                                     \
        }                                                                                                 \
        *sum_w_dy = a;                                                                                    \
        *sum_w_dy_xc = b;                                                                                 \
        *sum_xhat = c;                                                                                    \
        *sum_xhat2 = e;                                                                                   \
    }

/* dx = c1 * dy + c2 * (x - mean_hi) + c3 over n contiguous values. */
#define FASTNORM_BACKWARD_ELEMT(NAME, T)                                                             \
    FASTNORM_PLAIN(NAME, (const T *x, const T *dy, T *dx, ptrdiff_t n, T mean_hi, T c1, T c2, T c3), \
                   (x, dy, dx, n, mean_hi, c1, c2, c3))                                              \
    {                                                                                                \
        for (ptrdiff_t i = 0; i < n; i++)                                                            \
            dx[i] = dy[i] * c1 + c2 * (x[i] - mean_hi) + c3;                                         \
    }

/* dx = (w[i] * dy) * c1 + c2 * (x - mean_hi) + c3 (elementwise weight; w may be NULL). */
#define FASTNORM_BACKWARD_ELEMT_PER_ELEMENT(NAME, T)                                                                \
    FASTNORM_PLAIN(NAME,                                                                                            \
                   (const T *x, const T *dy, T *dx, ptrdiff_t n, T mean_hi, T c1, T c2, T c3, const T *restrict w), \
                   (x, dy, dx, n, mean_hi, c1, c2, c3, w))                                                          \
    {                                                                                                               \
        if (w) {                                                                                                    \
            for (ptrdiff_t i = 0; i < n; i++)                                                                       \
                dx[i] = (w[i] * dy[i]) * c1 + c2 * (x[i] - mean_hi) + c3;                                           \
        } else {                                                                                                    \
            for (ptrdiff_t i = 0; i < n; i++)                                                                       \
                dx[i] = dy[i] * c1 + c2 * (x[i] - mean_hi) + c3;                                                    \
        }                                                                                                           \
    }

/* Channels last, [rows, ncols]: column sums of dy, dy * (x - mean[c]), xhat and xhat**2 (xhat =
 * (x - mean[c]) * rstd[c], the check sums of FASTNORM_BACKWARD_REDUCE) added to sum_dy, sum_dy_xc, sum_xhat, sum_xhat2.
 * Four rows per update of the accumulators, as FASTNORM_COLUMN_SUMS: their loads and stores bound it. */
#define FASTNORM_BACKWARD_REDUCE_COLUMNS(NAME, T)                                                       \
    FASTNORM_PLAIN(NAME,                                                                                \
                   (const T *x, const T *dy, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld,             \
                    const double *restrict mean, const double *restrict rstd, double *restrict sum_dy,  \
                    double *restrict sum_dy_xc, double *restrict sum_xhat, double *restrict sum_xhat2), \
                   (x, dy, rows, ncols, ld, mean, rstd, sum_dy, sum_dy_xc, sum_xhat, sum_xhat2))        \
    {                                                                                                   \
        ptrdiff_t r = 0;                                                                                \
        for (; r + 4 <= rows; r += 4) {                                                                 \
            const T *x0 = x + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;                      \
            const T *g0 = dy + r * ld, *g1 = g0 + ld, *g2 = g1 + ld, *g3 = g2 + ld;                     \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                                     \
                double m = mean[c], rs = rstd[c];                                                       \
                double d0 = (double)x0[c] - m, d1 = (double)x1[c] - m;                                  \
                double d2 = (double)x2[c] - m, d3 = (double)x3[c] - m;                                  \
                double e0 = (double)g0[c], e1 = (double)g1[c], e2 = (double)g2[c], e3 = (double)g3[c];  \
                double h0 = d0 * rs, h1 = d1 * rs, h2 = d2 * rs, h3 = d3 * rs;                          \
                sum_dy[c] += (e0 + e1) + (e2 + e3);                                                     \
                sum_dy_xc[c] += (e0 * d0 + e1 * d1) + (e2 * d2 + e3 * d3);                              \
                sum_xhat[c] += (h0 + h1) + (h2 + h3);                                                   \
                sum_xhat2[c] += (h0 * h0 + h1 * h1) + (h2 * h2 + h3 * h3);                              \
            }                                                                                           \
        }                                                                                               \
        for (; r < rows; r++) {                                                                         \
            const T *xr = x + r * ld, *gr = dy + r * ld;                                                \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                                     \
                double g = (double)gr[c], d = (double)xr[c] - mean[c], xh = d * rstd[c];                \
                sum_dy[c] += g;                                                                         \
                sum_dy_xc[c] += g * d;                                                                  \
                sum_xhat[c] += xh;                                                                      \
                sum_xhat2[c] += xh * xh;                                                                \
            }                                                                                           \
        }                                                                                               \
    }

/* Channels last: dx = c1[c] * dy + c2[c] * (x - mean_hi[c]) + c3[c] on rows ld apart; p holds mean_hi,
 * c1, c2, c3 as four arrays plen apart. */
#define FASTNORM_BACKWARD_ELEMT_COLUMNS(NAME, T)                                                                     \
    FASTNORM_PLAIN(                                                                                                  \
        NAME,                                                                                                        \
        (const T *x, const T *dy, T *dx, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const T *p, ptrdiff_t plen), \
        (x, dy, dx, rows, ncols, ld, p, plen))                                                                       \
    {                                                                                                                \
        const T *restrict mean_hi = p, *restrict c1 = p + plen, *restrict c2 = p + 2 * plen;                         \
        const T *restrict c3 = p + 3 * plen;                                                                         \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                                       \
            const T *xr = x + r * ld, *gr = dy + r * ld;                                                             \
            T *o = dx + r * ld;                                                                                      \
            for (ptrdiff_t c = 0; c < ncols; c++)                                                                    \
                o[c] = c1[c] * gr[c] + c2[c] * (xr[c] - mean_hi[c]) + c3[c];                                         \
        }                                                                                                            \
    }

/* The check of the kernels' _first_modified for group g: xhat_sums[2 g], xhat_sums[2 g + 1] the sums of xhat,
 * xhat**2 over count = 1 / inv values; branch-free. */
static inline int fastnorm_group_modified(const double *xhat_sums, ptrdiff_t g, double inv, const double *mean,
                                          const double *rstd, double tol, double per_mean, double top, double eps,
                                          const double *eps_r2, int rms)
{
    double r = rstd[g], drift = tol + per_mean * __builtin_fabs(mean[g]) * r;
    double a = rms ? 0.0 : xhat_sums[2 * g] * inv, b = xhat_sums[2 * g + 1] * inv - a * a;
    double lower = 1.0 - (eps_r2 ? eps_r2[g] : eps * r * r) - drift;
    return (0.0 < r) & (r <= top) & ((__builtin_fabs(a) > drift) | (b > 1.0 + drift) | (b < lower));
}

/* *any = whether any of G groups fails it: a vector pass over all of them (a backward of many short rows has a
 * group per row). */
FASTNORM_PLAIN(fastnorm_any_modified,
               (const double *xhat_sums, ptrdiff_t G, double inv, const double *mean, const double *rstd, double tol,
                double per_mean, double top, double eps, const double *eps_r2, int rms, int *any),
               (xhat_sums, G, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms, any))
{
    int bad = 0;
    _Pragma("omp simd reduction(|:bad)") for (ptrdiff_t g = 0; g < G; g++) bad |=
        fastnorm_group_modified(xhat_sums, g, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms);
    *any = bad;
}

/* The first of G groups that fails it, or -1. */
static ptrdiff_t fastnorm_first_modified(const double *xhat_sums, ptrdiff_t G, double inv, const double *mean,
                                         const double *rstd, double tol, double per_mean, double top, double eps,
                                         const double *eps_r2, int rms)
{
    int bad;
    fastnorm_any_modified(xhat_sums, G, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms, &bad);
    for (ptrdiff_t g = 0; bad && g < G; g++)
        if (fastnorm_group_modified(xhat_sums, g, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms))
            return g;
    return -1;
}

FASTNORM_BACKWARD_REDUCE(FASTNORM_BASELINE, fastnorm_backward_reduce_loop_f32, float)
FASTNORM_BACKWARD_REDUCE(FASTNORM_PLAIN, fastnorm_backward_reduce_loop_f64, double)
FASTNORM_BACKWARD_REDUCE_PER_ELEMENT(FASTNORM_BASELINE, fastnorm_backward_reduce_per_element_f32, float)
FASTNORM_BACKWARD_REDUCE_PER_ELEMENT(FASTNORM_PLAIN, fastnorm_backward_reduce_per_element_f64, double)
FASTNORM_BACKWARD_ELEMT(fastnorm_backward_elemt_f32, float)
FASTNORM_BACKWARD_ELEMT(fastnorm_backward_elemt_f64, double)
FASTNORM_BACKWARD_ELEMT_PER_ELEMENT(fastnorm_backward_elemt_per_element_f32, float)
FASTNORM_BACKWARD_ELEMT_PER_ELEMENT(fastnorm_backward_elemt_per_element_f64, double)
FASTNORM_BACKWARD_REDUCE_COLUMNS(fastnorm_backward_reduce_columns_f32, float)
FASTNORM_BACKWARD_REDUCE_COLUMNS(fastnorm_backward_reduce_columns_f64, double)
/* The gradient sweep over rows of K runs of len values each (many short runs, InstanceNorm and GroupNorm
 * on small maps): run j of row r has its own c1[r * K + j], the row its mean_hi, c2 and c3.  The
 * operations of FASTNORM_BACKWARD_ELEMT, without a call per run. */
#define FASTNORM_BACKWARD_ELEMT_RUNS(NAME, T)                                                                     \
    FASTNORM_PLAIN(NAME,                                                                                          \
                   (const T *x, const T *dy, T *dx, ptrdiff_t rows, ptrdiff_t K, ptrdiff_t len, const T *mean_hi, \
                    const T *c1, const T *c2, const T *c3),                                                       \
                   (x, dy, dx, rows, K, len, mean_hi, c1, c2, c3))                                                \
    {                                                                                                             \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                                    \
            T h = mean_hi[r], b = c2[r], g = c3[r];                                                               \
            for (ptrdiff_t j = 0; j < K; j++) {                                                                   \
                ptrdiff_t q = r * K + j;                                                                          \
                const T *xq = x + q * len, *dyq = dy + q * len;                                                   \
                T *dxq = dx + q * len, a = c1[q];                                                                 \
                for (ptrdiff_t i = 0; i < len; i++)                                                               \
                    dxq[i] = dyq[i] * a + b * (xq[i] - h) + g;                                                    \
            }                                                                                                     \
        }                                                                                                         \
    }
FASTNORM_BACKWARD_ELEMT_RUNS(fastnorm_backward_elemt_runs_f32, float)
FASTNORM_BACKWARD_ELEMT_RUNS(fastnorm_backward_elemt_runs_f64, double)
FASTNORM_BACKWARD_ELEMT_COLUMNS(fastnorm_backward_elemt_columns_f32, float)
FASTNORM_BACKWARD_ELEMT_COLUMNS(fastnorm_backward_elemt_columns_f64, double)

#if FASTNORM_HAVE_STREAM
/* dx = (w[i] * dy) * c1 + c2 * (x - mean_hi) + c3 with non-temporal stores (w NULL: w = 1); the same
 * operations in the same order as the cached gradient sweeps. */
#define FASTNORM_BACKWARD_ELEMT_STREAM(NAME, T, V, SET1, LOADU, SUB, MUL, ADD, STREAM, W)                            \
    static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t n, T mean_hi, T c1, T c2, T c3, const T *w)           \
    {                                                                                                                \
        ptrdiff_t i = 0;                                                                                             \
        for (; i < n && ((uintptr_t)(dx + i) & 15); i++)                                                             \
            FASTNORM_STREAM1(T, dx + i, (w ? w[i] * dy[i] : dy[i]) * c1 + c2 * (x[i] - mean_hi) + c3);               \
        V a = SET1(c1), b = SET1(c2), g = SET1(c3), h = SET1(mean_hi);                                               \
        if (w) {                                                                                                     \
            for (; i + W <= n; i += W)                                                                               \
                STREAM(dx + i, ADD(ADD(MUL(MUL(LOADU(w + i), LOADU(dy + i)), a), MUL(b, SUB(LOADU(x + i), h))), g)); \
        } else {                                                                                                     \
            for (; i + W <= n; i += W)                                                                               \
                STREAM(dx + i, ADD(ADD(MUL(LOADU(dy + i), a), MUL(b, SUB(LOADU(x + i), h))), g));                    \
        }                                                                                                            \
        for (; i < n; i++)                                                                                           \
            FASTNORM_STREAM1(T, dx + i, (w ? w[i] * dy[i] : dy[i]) * c1 + c2 * (x[i] - mean_hi) + c3);               \
    }
FASTNORM_BACKWARD_ELEMT_STREAM(fastnorm_backward_elemt_stream_f32, float, __m128, _mm_set1_ps, _mm_loadu_ps, _mm_sub_ps,
                               _mm_mul_ps, _mm_add_ps, _mm_stream_ps, 4)
FASTNORM_BACKWARD_ELEMT_STREAM(fastnorm_backward_elemt_stream_f64, double, __m128d, _mm_set1_pd, _mm_loadu_pd,
                               _mm_sub_pd, _mm_mul_pd, _mm_add_pd, _mm_stream_pd, 2)
#else
#define FASTNORM_BACKWARD_ELEMT_PLAIN(NAME, T)                                                             \
    static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t n, T mean_hi, T c1, T c2, T c3, const T *w) \
    {                                                                                                      \
        for (ptrdiff_t i = 0; i < n; i++)                                                                  \
            dx[i] = (w ? w[i] * dy[i] : dy[i]) * c1 + c2 * (x[i] - mean_hi) + c3;                          \
    }
FASTNORM_BACKWARD_ELEMT_PLAIN(fastnorm_backward_elemt_stream_f32, float)
FASTNORM_BACKWARD_ELEMT_PLAIN(fastnorm_backward_elemt_stream_f64, double)
#endif

#if FASTNORM_X86
/* x and dy 2 KiB ahead of value i, once per 16 values (a cache line of each) */
#define FASTNORM_PREFETCH_XDY(i)         \
    do {                                 \
        if (!((i) & 15)) {               \
            FASTNORM_PREFETCH(x + (i));  \
            FASTNORM_PREFETCH(dy + (i)); \
        }                                \
    } while (0)
/* FASTNORM_BACKWARD_REDUCE_PER_ELEMENT for float32.  The terms are formed in float, as the generic loop's are
 * in double: xc = (x - mean_hi) - mean_lo with mean_hi + mean_lo the mean (x - mean_hi is exact near the mean),
 * xhat = xc * rstd.  The row sums (and the check sums of xhat, xhat**2) run in float over blocks of 64 values
 * (8 terms per lane) and in double across blocks, as FASTNORM_BACKWARD_REDUCE; the column sums (the weight and
 * bias gradients, over every row) stay in double. */
FASTNORM_TARGET_AVX2 __attribute__((noinline)) static void
fastnorm_backward_reduce_per_element_f32_avx2(const float *x, const float *dy, ptrdiff_t n, double mean, double rstd,
                                              const float *w, double *sum_w_dy, double *sum_w_dy_xc, double *sum_xhat,
                                              double *sum_xhat2, double *restrict col_dy, double *restrict col_dy_xhat)
{
    float mean_hi_s = (float)mean;
    __m256 mean_hi = _mm256_set1_ps(mean_hi_s), mean_lo = _mm256_set1_ps((float)(mean - (double)mean_hi_s));
    __m256 rs = _mm256_set1_ps((float)rstd), one = _mm256_set1_ps(1.0f);
    __m256d sums = _mm256_setzero_pd(); /* a, b, c, e below */
    ptrdiff_t i = 0;
    while (i + 8 <= n) {
        ptrdiff_t end = i + 64 <= n ? i + 64 : n - n % 8;
        __m256 fa = _mm256_setzero_ps(), fb = fa, fc = fa, fe = fa;
        for (; i < end; i += 8) {
            FASTNORM_PREFETCH_XDY(i);
            __m256 g = _mm256_loadu_ps(dy + i);
            __m256 xc = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mean_hi), mean_lo);
            __m256 wg = _mm256_mul_ps(w ? _mm256_loadu_ps(w + i) : one, g);
            __m256 xh = _mm256_mul_ps(xc, rs);
            fa = _mm256_add_ps(fa, wg);
            fb = _mm256_fmadd_ps(wg, xc, fb);
            fc = _mm256_add_ps(fc, xh);
            fe = _mm256_fmadd_ps(xh, xh, fe);
            fastnorm_add_to_doubles(col_dy + i, g);
            fastnorm_add_to_doubles(col_dy_xhat + i, _mm256_mul_ps(g, xh));
        }
        sums = _mm256_add_pd(sums, fastnorm_hsum4x4(fastnorm_widen_pairs(fa), fastnorm_widen_pairs(fb),
                                                    fastnorm_widen_pairs(fc), fastnorm_widen_pairs(fe)));
    }
    double t[4];
    _mm256_storeu_pd(t, sums);
    double a = t[0], b = t[1], c = t[2], e = t[3];
    for (; i < n; i++) {
        double g = (double)dy[i], d = (double)x[i] - mean;
        double wg = w ? (double)w[i] * g : g, xh = d * rstd;
        a += wg;
        b += wg * d;
        c += xh;
        e += xh * xh;
        col_dy[i] += g;
        col_dy_xhat[i] += g * xh;
    }
    *sum_w_dy = a;
    *sum_w_dy_xc = b;
    *sum_xhat = c;
    *sum_xhat2 = e;
}

/* FASTNORM_BACKWARD_REDUCE for float32: the same float blocks of 64 values, but each block's 8 lanes are added
 * to 8 double lanes instead of being summed across (the generic loop's reduction ends every block with a
 * chain of scalar additions), and x, dy are prefetched. */
FASTNORM_TARGET_AVX2 __attribute__((noinline)) static void
fastnorm_backward_reduce_loop_f32_avx2(const float *x, const float *dy, ptrdiff_t n, double mean, double rstd,
                                       double *sum_dy, double *sum_dy_xc, double *sum_xhat, double *sum_xhat2)
{
    float mean_hi_s = (float)mean, r_s = (float)rstd;
    __m256 mean_hi = _mm256_set1_ps(mean_hi_s), r = _mm256_set1_ps(r_s);
    __m256d a_lo = _mm256_setzero_pd(), a_hi = a_lo, b_lo = a_lo, b_hi = a_lo, c_acc = a_lo, d_acc = a_lo;
    ptrdiff_t vn = n - n % 8, i = 0;
    while (i < vn) {
        ptrdiff_t end = i + 64 <= vn ? i + 64 : vn;
        __m256 fa = _mm256_setzero_ps(), fb = fa, fc = fa, fd = fa;
        for (; i < end; i += 8) {
            FASTNORM_PREFETCH_XDY(i);
            __m256 g = _mm256_loadu_ps(dy + i);
            __m256 xc = _mm256_sub_ps(_mm256_loadu_ps(x + i), mean_hi);
            __m256 t = _mm256_mul_ps(xc, r);
            fa = _mm256_add_ps(fa, g);
            fb = _mm256_fmadd_ps(g, xc, fb);
            fc = _mm256_add_ps(fc, t);
            fd = _mm256_fmadd_ps(t, t, fd);
        }
        a_lo = _mm256_add_pd(a_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(fa)));
        a_hi = _mm256_add_pd(a_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(fa, 1)));
        b_lo = _mm256_add_pd(b_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(fb)));
        b_hi = _mm256_add_pd(b_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(fb, 1)));
        c_acc = _mm256_add_pd(c_acc, fastnorm_widen_pairs(fc));
        d_acc = _mm256_add_pd(d_acc, fastnorm_widen_pairs(fd));
    }
    double a = fastnorm_hsum4(_mm256_add_pd(a_lo, a_hi)), b = fastnorm_hsum4(_mm256_add_pd(b_lo, b_hi));
    double c = fastnorm_hsum4(c_acc), d = fastnorm_hsum4(d_acc);
    for (; i < n; i++) {
        double t = ((double)x[i] - (double)mean_hi_s) * (double)r_s;
        a += (double)dy[i];
        b += (double)dy[i] * ((double)x[i] - (double)mean_hi_s);
        c += t;
        d += t * t;
    }
    *sum_dy = a;
    *sum_dy_xc = b - (mean - (double)mean_hi_s) * a;
    fastnorm_xhat_sums(c, d, (double)n, (mean - (double)mean_hi_s) * (double)r_s, sum_xhat, sum_xhat2);
}
#endif
FASTNORM_BY_ISA(fastnorm_backward_reduce_loop_f32,
                (const float *x, const float *dy, ptrdiff_t n, double mean, double rstd, double *sum_dy,
                 double *sum_dy_xc, double *sum_xhat, double *sum_xhat2),
                (x, dy, n, mean, rstd, sum_dy, sum_dy_xc, sum_xhat, sum_xhat2), generic, avx2, avx2, avx2)
FASTNORM_BY_ISA(fastnorm_backward_reduce_per_element_f32,
                (const float *x, const float *dy, ptrdiff_t n, double mean, double rstd, const float *w,
                 double *sum_w_dy, double *sum_w_dy_xc, double *sum_xhat, double *sum_xhat2, double *col_dy,
                 double *col_dy_xhat),
                (x, dy, n, mean, rstd, w, sum_w_dy, sum_w_dy_xc, sum_xhat, sum_xhat2, col_dy, col_dy_xhat), generic,
                avx2, avx2, avx2)
/* sum(dy), sum(dy * (x - mean)) and the check sums of a run, for every path of the kernels.  A lone value
 * (GroupNorm with one value per channel) is summed here: a call per value cost more than the value. */
#define FASTNORM_BACKWARD_REDUCE_RUN(NAME, T, LOOP)                                                              \
    static inline void NAME(const T *x, const T *dy, ptrdiff_t n, double mean, double rstd, double *sum_dy,      \
                            double *sum_dy_xc, double *sum_xhat, double *sum_xhat2)                              \
    {                                                                                                            \
        if (n == 1) {                                                                                            \
            double mean_hi = (double)(T)mean, a = (double)dy[0], t = ((double)x[0] - mean_hi) * (double)(T)rstd; \
            *sum_dy = a;                                                                                         \
            *sum_dy_xc = a * ((double)x[0] - mean_hi) - (mean - mean_hi) * a;                                    \
            fastnorm_xhat_sums(t, t * t, 1.0, (mean - mean_hi) * (double)(T)rstd, sum_xhat, sum_xhat2);          \
            return;                                                                                              \
        }                                                                                                        \
        LOOP(x, dy, n, mean, rstd, sum_dy, sum_dy_xc, sum_xhat, sum_xhat2);                                      \
    }
FASTNORM_BACKWARD_REDUCE_RUN(fastnorm_backward_reduce_run_f32, float, fastnorm_backward_reduce_loop_f32)
FASTNORM_BACKWARD_REDUCE_RUN(fastnorm_backward_reduce_run_f64, double, fastnorm_backward_reduce_loop_f64)
/* sum_dy[q] = sum(dy), sum_dy_xhat[q] = rstd[r] * sum(dy * (x - mean[r])) for run q = r * K + j of rows of K
 * runs of len values, and per row the check sums xhat_sums[2 r] = sum(xhat), xhat_sums[2 r + 1] = sum(xhat**2)
 * over its runs: each run summed by fastnorm_backward_reduce_run_* as a lone run is (the same bits), without a
 * call from the kernels per run. */
#define FASTNORM_BACKWARD_REDUCE_RUNS(NAME, T, SUMS)                                                          \
    static void NAME(const T *x, const T *dy, ptrdiff_t rows, ptrdiff_t K, ptrdiff_t len, const double *mean, \
                     const double *rstd, double *sum_dy, double *sum_dy_xhat, double *xhat_sums)              \
    {                                                                                                         \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                                \
            xhat_sums[2 * r] = 0.0;                                                                           \
            xhat_sums[2 * r + 1] = 0.0;                                                                       \
            for (ptrdiff_t j = 0; j < K; j++) {                                                               \
                ptrdiff_t q = r * K + j;                                                                      \
                double a, b, c, d;                                                                            \
                SUMS(x + q * len, dy + q * len, len, mean[r], rstd[r], &a, &b, &c, &d);                       \
                sum_dy[q] = 0.0 + a;                                                                          \
                sum_dy_xhat[q] = (0.0 + b) * rstd[r];                                                         \
                xhat_sums[2 * r] += c;                                                                        \
                xhat_sums[2 * r + 1] += d;                                                                    \
            }                                                                                                 \
        }                                                                                                     \
    }
FASTNORM_BACKWARD_REDUCE_RUNS(fastnorm_backward_reduce_runs_f32, float, fastnorm_backward_reduce_run_f32)
FASTNORM_BACKWARD_REDUCE_RUNS(fastnorm_backward_reduce_runs_f64, double, fastnorm_backward_reduce_run_f64)
