/* The innermost loops of the kernels, in C for two reasons Cython cannot express.
 *
 * 1. gcc does not vectorize a floating-point reduction written in Cython.  Vectorizing a reduction means summing in SIMD lanes, a reassociation that the compiler makes only when
 * told to.  "omp simd reduction" (and the fixed-width tile of accumulators below) tells it for these loops
 * alone: never -ffast-math, which would also undo the compensated subtraction of the mean elsewhere.
 * The lane count is fixed when the module is loaded, so results are the same on every call and for every
 * thread count.
 * 2. Function multiversioning: on x86-64 an AVX2 clone of each loop is selected at load time where the
 *    CPU has it, while the module itself stays built for the baseline ISA.  Elementwise sweeps give the
 *    same bits in either clone (no contraction into FMA: -ffp-contract=off). */
#ifndef FASTNORM_SIMD_H
#define FASTNORM_SIMD_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(FASTNORM_NO_CLONES)
#define FASTNORM_CLONES __attribute__((target_clones("avx512f", "avx2", "default"))) __attribute__((noinline))
#else
#define FASTNORM_CLONES
#endif

/* Sums of d and d*d, d = x[i] - shift, over n contiguous values. */
#define FASTNORM_SHIFTED_SUMS(NAME, T)                                                        \
    FASTNORM_CLONES static void NAME(const T *x, ptrdiff_t n, double shift, double *s1, double *s2) \
    {                                                                                         \
        double a = 0.0, b = 0.0;                                                              \
        _Pragma("omp simd reduction(+:a,b)")                                                  \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            double d = (double)x[i] - shift;                                                  \
            a += d;                                                                           \
            b += d * d;                                                                       \
        }                                                                                     \
        *s1 = a;                                                                              \
        *s2 = b;                                                                              \
    }

/* Per-column sums of d and d*d, d = x[r, c] - base[c], over the rows of an [rows, ncols] block with
 * row stride ld.  The loop runs along the contiguous columns: each column is its own lane, and the
 * accumulators (2 * ncols doubles) stay in L1. */
#define FASTNORM_COLUMN_SUMS(NAME, T)                                                         \
    FASTNORM_CLONES static void NAME(const T *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, \
                                     const T *base, double *restrict s1, double *restrict s2) \
    {                                                                                         \
        for (ptrdiff_t c = 0; c < ncols; c++) {                                               \
            s1[c] = 0.0;                                                                      \
            s2[c] = 0.0;                                                                      \
        }                                                                                     \
        ptrdiff_t r = 1;                                                                      \
        /* Four rows per update of the accumulators: their loads and stores, not the          \
         * arithmetic, bound this loop. */                                                    \
        for (; r + 4 <= rows; r += 4) {                                                       \
            const T *r0 = x + r * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;            \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                           \
                double b = (double)base[c];                                                   \
                double d0 = (double)r0[c] - b, d1 = (double)r1[c] - b;                        \
                double d2 = (double)r2[c] - b, d3 = (double)r3[c] - b;                        \
                s1[c] += (d0 + d1) + (d2 + d3);                                               \
                s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                           \
            }                                                                                 \
        }                                                                                     \
        for (; r < rows; r++) {                                                               \
            const T *row = x + r * ld;                                                        \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                           \
                double d = (double)row[c] - (double)base[c];                                  \
                s1[c] += d;                                                                   \
                s2[c] += d * d;                                                               \
            }                                                                                 \
        }                                                                                     \
    }

/* y = (x - hi) * scale + shift over n contiguous values (one channel's run). */
#define FASTNORM_SWEEP(NAME, T)                                                               \
    FASTNORM_CLONES static void NAME(const T *x, T *y, ptrdiff_t n, T hi, T scale, T shift)    \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            y[i] = (x[i] - hi) * scale + shift;                                               \
    }

/* The same per column of [rows, ncols] (channels last).  p holds hi, scale and shift as three arrays of
 * plen >= ncols values each (the Cython side tiles the per-channel values so that a row can span several
 * rows of the tensor, and the per-row loop overhead is paid once per ~1000 values). */
#define FASTNORM_SWEEP_ROWS(NAME, T)                                                          \
    FASTNORM_CLONES static void NAME(const T *x, T *y, ptrdiff_t rows, ptrdiff_t ncols, const T *p, \
                                     ptrdiff_t plen)                                          \
    {                                                                                         \
        const T *restrict hi = p, *restrict scale = p + plen, *restrict shift = p + 2 * plen; \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                \
            const T *xr = x + r * ncols;                                                      \
            T *yr = y + r * ncols;                                                            \
            for (ptrdiff_t c = 0; c < ncols; c++)                                             \
                yr[c] = (xr[c] - hi[c]) * scale[c] + shift[c];                                \
        }                                                                                     \
    }

/* Elementwise affine after the normalization (LayerNorm, RMSNorm):
 * y = ((x - hi) * scale + shift) * w[i] (+ b[i]). */
#define FASTNORM_SWEEP_AFFINE(NAME, T)                                                        \
    FASTNORM_CLONES static void NAME(const T *x, T *y, ptrdiff_t n, T hi, T scale, T shift,   \
                                     const T *restrict w, const T *restrict b)                \
    {                                                                                         \
        if (b) {                                                                              \
            for (ptrdiff_t i = 0; i < n; i++)                                                 \
                y[i] = ((x[i] - hi) * scale + shift) * w[i] + b[i];                           \
        } else {                                                                              \
            for (ptrdiff_t i = 0; i < n; i++)                                                 \
                y[i] = ((x[i] - hi) * scale + shift) * w[i];                                  \
        }                                                                                     \
    }

/* ---- Backward ------------------------------------------------------------------------------------------
 * With xhat = (x - mean) * rstd, the gradients need, per normalization group, sum(dy) and sum(dy * xhat);
 * these are taken in double as sum(dy) and sum(dy * (x - mean)), rstd applied once at the end. */

/* Sums of dy and dy * (x - mean) over n contiguous values, and the check sums of xhat = (x - mean) * rstd
 * and xhat**2 (the backward reads x anyway: they tell whether x still has the statistics the forward
 * computed, see the kernels' _check_unmodified).  The terms are formed and summed in T over blocks of
 * FASTNORM_GRAD_BLOCK values (a few terms per SIMD lane, so within a few ulps), and the blocks in double;
 * x - hi, with hi the mean rounded to T, is exact near the mean, and the rest of the mean (lo) enters once
 * at the end.  The check terms are (x - hi) * rstd, which cannot overflow where the data's squares
 * would (float32 at 1e20). */
#define FASTNORM_GRAD_BLOCK 64
#define FASTNORM_GRAD_SUMS(NAME, T)                                                           \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, ptrdiff_t n, double mean, double rstd, \
                                     double *s_dy, double *s_dyx, double *s_xhat, double *s_xhat2) \
    {                                                                                         \
        T hi = (T)mean, r = (T)rstd;                                                          \
        double a = 0.0, b = 0.0, c = 0.0, d = 0.0;                                            \
        /* the last block may be short: a short row is one vector loop, not a scalar chain */ \
        for (ptrdiff_t i = 0; i < n; i += FASTNORM_GRAD_BLOCK) {                              \
            ptrdiff_t end = n - i < FASTNORM_GRAD_BLOCK ? n : i + FASTNORM_GRAD_BLOCK;        \
            T ba = 0, bb = 0, bc = 0, bd = 0;                                                 \
            _Pragma("omp simd reduction(+:ba,bb,bc,bd)")                                      \
            for (ptrdiff_t k = i; k < end; k++) {                                             \
                T xc = x[k] - hi, t = xc * r;                                                 \
                ba += dy[k];                                                                  \
                bb += dy[k] * xc;                                                             \
                bc += t;                                                                      \
                bd += t * t;                                                                  \
            }                                                                                 \
            a += (double)ba;                                                                  \
            b += (double)bb;                                                                  \
            c += (double)bc;                                                                  \
            d += (double)bd;                                                                  \
        }                                                                                     \
        *s_dy = a;                                                                            \
        *s_dyx = b - (mean - (double)hi) * a;                                                 \
        fastnorm_xhat_sums(c, d, (double)n, (mean - (double)hi) * (double)r, s_xhat, s_xhat2); \
    }

/* Sum(xhat) and sum(xhat**2) from the sums c, d of t = (x - hi) * r, xhat = t - lo_r (lo_r: the part of
 * the mean below the data's precision, times r). */
static inline void fastnorm_xhat_sums(double c, double d, double n, double lo_r, double *s1, double *s2)
{
    *s1 = c - n * lo_r;
    *s2 = d - 2.0 * lo_r * c + n * (lo_r * lo_r);
}

/* A row with an elementwise weight (LayerNorm, RMSNorm): the row's sums of w*dy and w*dy*(x - mean), its
 * check sums of xhat and xhat**2 (see FASTNORM_GRAD_SUMS), and the column sums of dy and dy*xhat added to
 * col_dy, col_dyx (the weight and bias gradients). */
#define FASTNORM_GRAD_ROW_ELEM(NAME, T)                                                       \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, ptrdiff_t n, double mean, double rstd, \
                                     const T *w, double *s_wdy, double *s_wdyx, double *s_xhat, \
                                     double *s_xhat2, double *restrict col_dy, double *restrict col_dyx) \
    {                                                                                         \
        double a = 0.0, b = 0.0, c = 0.0, e = 0.0;                                            \
        _Pragma("omp simd reduction(+:a,b,c,e)")                                              \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            double g = (double)dy[i], d = (double)x[i] - mean;                                \
            double wg = w ? (double)w[i] * g : g, xh = d * rstd;                              \
            a += wg;                                                                          \
            b += wg * d;                                                                      \
            c += xh;                                                                          \
            e += xh * xh;                                                                     \
            col_dy[i] += g;                                                                   \
            col_dyx[i] += g * xh;                                                             \
        }                                                                                     \
        *s_wdy = a;                                                                           \
        *s_wdyx = b;                                                                          \
        *s_xhat = c;                                                                          \
        *s_xhat2 = e;                                                                         \
    }

/* dx = alpha * dy + beta * (x - hi) + gamma over n contiguous values. */
#define FASTNORM_GRAD_SWEEP(NAME, T)                                                          \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t n, T hi, T alpha, T beta, \
                                     T gamma)                                                 \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            dx[i] = dy[i] * alpha + beta * (x[i] - hi) + gamma;                               \
    }

/* dx = (w[i] * dy) * alpha + beta * (x - hi) + gamma (elementwise weight; w may be NULL). */
#define FASTNORM_GRAD_SWEEP_ELEM(NAME, T)                                                     \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t n, T hi, T alpha, T beta, \
                                     T gamma, const T *restrict w)                            \
    {                                                                                         \
        if (w) {                                                                              \
            for (ptrdiff_t i = 0; i < n; i++)                                                 \
                dx[i] = (w[i] * dy[i]) * alpha + beta * (x[i] - hi) + gamma;                  \
        } else {                                                                              \
            for (ptrdiff_t i = 0; i < n; i++)                                                 \
                dx[i] = dy[i] * alpha + beta * (x[i] - hi) + gamma;                           \
        }                                                                                     \
    }

/* Channels last, [rows, ncols]: column sums of dy, dy * (x - mean[c]), xhat and xhat**2 (xhat =
 * (x - mean[c]) * rstd[c], the check sums of FASTNORM_GRAD_SUMS) added to s_dy, s_dyx, s_xhat, s_xhat2.
 * Four rows per update of the accumulators, as FASTNORM_COLUMN_SUMS: their loads and stores bound it. */
#define FASTNORM_GRAD_COLUMN_SUMS(NAME, T)                                                    \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, ptrdiff_t rows, ptrdiff_t ncols, \
                                     ptrdiff_t ld, const double *restrict mean, const double *restrict rstd, \
                                     double *restrict s_dy, double *restrict s_dyx,           \
                                     double *restrict s_xhat, double *restrict s_xhat2)       \
    {                                                                                         \
        ptrdiff_t r = 0;                                                                      \
        for (; r + 4 <= rows; r += 4) {                                                       \
            const T *x0 = x + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;            \
            const T *g0 = dy + r * ld, *g1 = g0 + ld, *g2 = g1 + ld, *g3 = g2 + ld;           \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                           \
                double m = mean[c], rs = rstd[c];                                             \
                double d0 = (double)x0[c] - m, d1 = (double)x1[c] - m;                        \
                double d2 = (double)x2[c] - m, d3 = (double)x3[c] - m;                        \
                double e0 = (double)g0[c], e1 = (double)g1[c], e2 = (double)g2[c], e3 = (double)g3[c]; \
                double h0 = d0 * rs, h1 = d1 * rs, h2 = d2 * rs, h3 = d3 * rs;                \
                s_dy[c] += (e0 + e1) + (e2 + e3);                                             \
                s_dyx[c] += (e0 * d0 + e1 * d1) + (e2 * d2 + e3 * d3);                        \
                s_xhat[c] += (h0 + h1) + (h2 + h3);                                           \
                s_xhat2[c] += (h0 * h0 + h1 * h1) + (h2 * h2 + h3 * h3);                      \
            }                                                                                 \
        }                                                                                     \
        for (; r < rows; r++) {                                                               \
            const T *xr = x + r * ld, *gr = dy + r * ld;                                      \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                           \
                double g = (double)gr[c], d = (double)xr[c] - mean[c], xh = d * rstd[c];      \
                s_dy[c] += g;                                                                 \
                s_dyx[c] += g * d;                                                            \
                s_xhat[c] += xh;                                                              \
                s_xhat2[c] += xh * xh;                                                        \
            }                                                                                 \
        }                                                                                     \
    }

/* Channels last: dx = alpha[c] * dy + beta[c] * (x - hi[c]) + gamma[c] on rows ld apart; p holds hi,
 * alpha, beta, gamma as four arrays plen apart. */
#define FASTNORM_GRAD_SWEEP_ROWS(NAME, T)                                                     \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t rows, ptrdiff_t ncols, \
                                     ptrdiff_t ld, const T *p, ptrdiff_t plen)                \
    {                                                                                         \
        const T *restrict hi = p, *restrict alpha = p + plen, *restrict beta = p + 2 * plen;  \
        const T *restrict gamma = p + 3 * plen;                                               \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                \
            const T *xr = x + r * ld, *gr = dy + r * ld;                                      \
            T *o = dx + r * ld;                                                               \
            for (ptrdiff_t c = 0; c < ncols; c++)                                             \
                o[c] = alpha[c] * gr[c] + beta[c] * (xr[c] - hi[c]) + gamma[c];               \
        }                                                                                     \
    }

/* The check of the kernels' _first_modified for group g: X[2 g], X[2 g + 1] the sums of xhat, xhat**2 over
 * count = 1 / inv values; branch-free. */
static inline int fastnorm_group_modified(const double *X, ptrdiff_t g, double inv, const double *mean,
                                          const double *rstd, double tol, double per_mean, double top, double eps,
                                          const double *eps_r2, int rms)
{
    double r = rstd[g], drift = tol + per_mean * __builtin_fabs(mean[g]) * r;
    double a = rms ? 0.0 : X[2 * g] * inv, b = X[2 * g + 1] * inv - a * a;
    double lower = 1.0 - (eps_r2 ? eps_r2[g] : eps * r * r) - drift;
    return (0.0 < r) & (r <= top) & ((__builtin_fabs(a) > drift) | (b > 1.0 + drift) | (b < lower));
}

/* The first of G groups that fails it, or -1: a vector pass over all of them first (a backward of many
 * short rows has a group per row). */
FASTNORM_CLONES static ptrdiff_t fastnorm_first_modified(const double *X, ptrdiff_t G, double inv,
                                                         const double *mean, const double *rstd, double tol,
                                                         double per_mean, double top, double eps,
                                                         const double *eps_r2, int rms)
{
    int bad = 0;
    _Pragma("omp simd reduction(|:bad)")
    for (ptrdiff_t g = 0; g < G; g++)
        bad |= fastnorm_group_modified(X, g, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms);
    for (ptrdiff_t g = 0; bad && g < G; g++)
        if (fastnorm_group_modified(X, g, inv, mean, rstd, tol, per_mean, top, eps, eps_r2, rms))
            return g;
    return -1;
}

FASTNORM_GRAD_SUMS(fastnorm_grad_sums_f32_generic, float)
FASTNORM_GRAD_SUMS(fastnorm_grad_sums_f64_loop, double)
FASTNORM_GRAD_ROW_ELEM(fastnorm_grad_row_elem_f32_generic, float)
FASTNORM_GRAD_ROW_ELEM(fastnorm_grad_row_elem_f64, double)
FASTNORM_GRAD_SWEEP(fastnorm_grad_sweep_f32, float)
FASTNORM_GRAD_SWEEP(fastnorm_grad_sweep_f64, double)
FASTNORM_GRAD_SWEEP_ELEM(fastnorm_grad_sweep_elem_f32, float)
FASTNORM_GRAD_SWEEP_ELEM(fastnorm_grad_sweep_elem_f64, double)
FASTNORM_GRAD_COLUMN_SUMS(fastnorm_grad_column_sums_f32, float)
FASTNORM_GRAD_COLUMN_SUMS(fastnorm_grad_column_sums_f64, double)
/* The gradient sweep over rows of K runs of len values each (many short runs, InstanceNorm and GroupNorm
 * on small maps): run j of row r has its own alpha[r * K + j], the row its hi, beta and gamma.  The
 * operations of FASTNORM_GRAD_SWEEP, without a call per run. */
#define FASTNORM_GRAD_SWEEP_RUNS(NAME, T)                                                     \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t rows, ptrdiff_t K, \
                                     ptrdiff_t len, const T *hi, const T *alpha, const T *beta, const T *gamma) \
    {                                                                                         \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                \
            T h = hi[r], b = beta[r], g = gamma[r];                                           \
            for (ptrdiff_t j = 0; j < K; j++) {                                               \
                ptrdiff_t q = r * K + j;                                                      \
                const T *xq = x + q * len, *dyq = dy + q * len;                               \
                T *dxq = dx + q * len, a = alpha[q];                                          \
                for (ptrdiff_t i = 0; i < len; i++)                                           \
                    dxq[i] = dyq[i] * a + b * (xq[i] - h) + g;                                \
            }                                                                                 \
        }                                                                                     \
    }
FASTNORM_GRAD_SWEEP_RUNS(fastnorm_grad_sweep_runs_f32, float)
FASTNORM_GRAD_SWEEP_RUNS(fastnorm_grad_sweep_runs_f64, double)
FASTNORM_GRAD_SWEEP_ROWS(fastnorm_grad_sweep_rows_f32, float)
FASTNORM_GRAD_SWEEP_ROWS(fastnorm_grad_sweep_rows_f64, double)

/* Streaming variants for outputs larger than the caches: non-temporal stores write y without first
 * reading its lines into the cache (a third of the memory traffic of a normalization).  The arithmetic
 * is the same IEEE operations in the same order, so the bits are those of the cached sweeps.  The
 * stores are weakly ordered: the kernel that made them calls fastnorm_store_fence() on each of its
 * threads before it returns. */
#if defined(__SSE2__)
#include <emmintrin.h>
#include <stdint.h>
#define FASTNORM_HAVE_STREAM 1
static void fastnorm_store_fence(void) { _mm_sfence(); }
/* Every store to a streamed output is non-temporal, the unaligned ends of a run included, 4 bytes at a
 * time: a line written partly by non-temporal and partly by ordinary stores (the end of one run, the
 * start of the next) is flushed to memory and read back for each, which made BatchNorm on 7x7 maps
 * 17x slower streamed than cached. */
static inline void fastnorm_stream_words(void *dst, const void *value, size_t n)
{
    for (size_t k = 0; k < n; k += 4) {
        int w;
        memcpy(&w, (const char *)value + k, 4);
        _mm_stream_si32((int *)((char *)dst + k), w);
    }
}
/* dst[0:n] = src[0:n] with non-temporal stores: the bench's copy, storing as the kernels store a streamed
 * output, so that it moves the same bytes the same way (memcpy on a thread's share of a large copy can
 * fall below glibc's own non-temporal threshold and read the destination's lines first). */
static void fastnorm_copy_stream(char *dst, const char *src, size_t n)
{
    size_t i = 0;
    if ((uintptr_t)dst & 3) {
        memcpy(dst, src, n);
        return;
    }
    for (; i + 4 <= n && ((uintptr_t)(dst + i) & 15); i += 4)
        fastnorm_stream_words(dst + i, src + i, 4);
    for (; i + 16 <= n; i += 16)
        _mm_stream_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
    for (; i + 4 <= n; i += 4)
        fastnorm_stream_words(dst + i, src + i, 4);
    memcpy(dst + i, src + i, n - i);
}
#define FASTNORM_STREAM1(T, P, VALUE)                                                         \
    do {                                                                                      \
        T v_ = (VALUE);                                                                       \
        fastnorm_stream_words((P), &v_, sizeof v_);                                           \
    } while (0)
#define FASTNORM_SWEEP_STREAM(NAME, T, V, SET1, LOADU, SUB, MUL, ADD, STREAM, W)              \
    static void NAME(const T *x, T *y, ptrdiff_t n, const T *hi, const T *scale, const T *shift, \
                     ptrdiff_t period)                                                        \
    {                                                                                         \
        /* period 0: one channel (hi[0], scale[0], shift[0]); otherwise x[i] is in column      \
         * i % period of per-column values. */                                                \
        ptrdiff_t i = 0;                                                                      \
        if (period && period % W == 0 && n % period == 0 && !((uintptr_t)y & 15)) {          \
            /* whole aligned rows: the common channels-last case */                           \
            for (; i < n; i += period)                                                        \
                for (ptrdiff_t c = 0; c < period; c += W)                                     \
                    STREAM(y + i + c, ADD(MUL(SUB(LOADU(x + i + c), LOADU(hi + c)),           \
                                              LOADU(scale + c)), LOADU(shift + c)));          \
            return;                                                                           \
        }                                                                                     \
        for (; i < n && ((uintptr_t)(y + i) & 15); i++) {                                     \
            ptrdiff_t c = period ? i % period : 0;                                            \
            FASTNORM_STREAM1(T, y + i, (x[i] - hi[c]) * scale[c] + shift[c]);                  \
        }                                                                                     \
        if (!period) {                                                                        \
            V h = SET1(hi[0]), s = SET1(scale[0]), t = SET1(shift[0]);                        \
            for (; i + W <= n; i += W)                                                        \
                STREAM(y + i, ADD(MUL(SUB(LOADU(x + i), h), s), t));                          \
        } else {                                                                              \
            ptrdiff_t c = i % period;                                                         \
            for (; i + W <= n; i += W) {                                                      \
                if (c + W <= period) {                                                        \
                    STREAM(y + i, ADD(MUL(SUB(LOADU(x + i), LOADU(hi + c)), LOADU(scale + c)), \
                                      LOADU(shift + c)));                                     \
                    c += W;                                                                   \
                    if (c == period) c = 0;                                                   \
                } else { /* the values wrap around the period inside this vector */           \
                    for (int k = 0; k < W; k++) {                                             \
                        FASTNORM_STREAM1(T, y + i + k, (x[i + k] - hi[c]) * scale[c] + shift[c]); \
                        if (++c == period) c = 0;                                             \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (; i < n; i++) {                                                                  \
            ptrdiff_t c = period ? i % period : 0;                                            \
            FASTNORM_STREAM1(T, y + i, (x[i] - hi[c]) * scale[c] + shift[c]);                  \
        }                                                                                     \
    }
/* dx = (w[i] * dy) * alpha + beta * (x - hi) + gamma with non-temporal stores (w NULL: w = 1); the same
 * operations in the same order as the cached gradient sweeps. */
#define FASTNORM_GRAD_SWEEP_STREAM(NAME, T, V, SET1, LOADU, SUB, MUL, ADD, STREAM, W)         \
    static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t n, T hi, T alpha, T beta, T gamma, \
                     const T *w)                                                              \
    {                                                                                         \
        ptrdiff_t i = 0;                                                                      \
        for (; i < n && ((uintptr_t)(dx + i) & 15); i++)                                      \
            FASTNORM_STREAM1(T, dx + i, (w ? w[i] * dy[i] : dy[i]) * alpha + beta * (x[i] - hi) + gamma); \
        V a = SET1(alpha), b = SET1(beta), g = SET1(gamma), h = SET1(hi);                     \
        if (w) {                                                                              \
            for (; i + W <= n; i += W)                                                        \
                STREAM(dx + i, ADD(ADD(MUL(MUL(LOADU(w + i), LOADU(dy + i)), a),              \
                                       MUL(b, SUB(LOADU(x + i), h))), g));                    \
        } else {                                                                              \
            for (; i + W <= n; i += W)                                                        \
                STREAM(dx + i, ADD(ADD(MUL(LOADU(dy + i), a), MUL(b, SUB(LOADU(x + i), h))), g)); \
        }                                                                                     \
        for (; i < n; i++)                                                                    \
            FASTNORM_STREAM1(T, dx + i, (w ? w[i] * dy[i] : dy[i]) * alpha + beta * (x[i] - hi) + gamma); \
    }
/* y = ((x - hi) * scale + shift) * w[i] (+ b[i]) with non-temporal stores (b NULL: no bias); the
 * operations of FASTNORM_SWEEP_AFFINE in the same order. */
#define FASTNORM_SWEEP_AFFINE_STREAM(NAME, T, V, SET1, LOADU, SUB, MUL, ADD, STREAM, W)       \
    static void NAME(const T *x, T *y, ptrdiff_t n, T hi, T scale, T shift, const T *w, const T *b) \
    {                                                                                         \
        ptrdiff_t i = 0;                                                                      \
        for (; i < n && ((uintptr_t)(y + i) & 15); i++)                                       \
            FASTNORM_STREAM1(T, y + i, b ? ((x[i] - hi) * scale + shift) * w[i] + b[i]           \
                                          : ((x[i] - hi) * scale + shift) * w[i]);             \
        V h = SET1(hi), s = SET1(scale), t = SET1(shift);                                     \
        if (b) {                                                                              \
            for (; i + W <= n; i += W)                                                        \
                STREAM(y + i, ADD(MUL(ADD(MUL(SUB(LOADU(x + i), h), s), t), LOADU(w + i)), LOADU(b + i))); \
        } else {                                                                              \
            for (; i + W <= n; i += W)                                                        \
                STREAM(y + i, MUL(ADD(MUL(SUB(LOADU(x + i), h), s), t), LOADU(w + i)));       \
        }                                                                                     \
        for (; i < n; i++)                                                                    \
            FASTNORM_STREAM1(T, y + i, b ? ((x[i] - hi) * scale + shift) * w[i] + b[i]           \
                                          : ((x[i] - hi) * scale + shift) * w[i]);             \
    }
FASTNORM_SWEEP_AFFINE_STREAM(fastnorm_sweep_affine_stream_f32, float, __m128, _mm_set1_ps, _mm_loadu_ps,
                             _mm_sub_ps, _mm_mul_ps, _mm_add_ps, _mm_stream_ps, 4)
FASTNORM_SWEEP_AFFINE_STREAM(fastnorm_sweep_affine_stream_f64, double, __m128d, _mm_set1_pd, _mm_loadu_pd,
                             _mm_sub_pd, _mm_mul_pd, _mm_add_pd, _mm_stream_pd, 2)
FASTNORM_GRAD_SWEEP_STREAM(fastnorm_grad_sweep_stream_f32, float, __m128, _mm_set1_ps, _mm_loadu_ps,
                           _mm_sub_ps, _mm_mul_ps, _mm_add_ps, _mm_stream_ps, 4)
FASTNORM_GRAD_SWEEP_STREAM(fastnorm_grad_sweep_stream_f64, double, __m128d, _mm_set1_pd, _mm_loadu_pd,
                           _mm_sub_pd, _mm_mul_pd, _mm_add_pd, _mm_stream_pd, 2)
FASTNORM_SWEEP_STREAM(fastnorm_sweep_stream_f32, float, __m128, _mm_set1_ps, _mm_loadu_ps, _mm_sub_ps,
                      _mm_mul_ps, _mm_add_ps, _mm_stream_ps, 4)
FASTNORM_SWEEP_STREAM(fastnorm_sweep_stream_f64, double, __m128d, _mm_set1_pd, _mm_loadu_pd, _mm_sub_pd,
                      _mm_mul_pd, _mm_add_pd, _mm_stream_pd, 2)
#else
#define FASTNORM_HAVE_STREAM 0
static void fastnorm_store_fence(void) {}
static void fastnorm_copy_stream(char *dst, const char *src, size_t n) { memcpy(dst, src, n); }
#define FASTNORM_SWEEP_PLAIN(NAME, T)                                                         \
    static void NAME(const T *x, T *y, ptrdiff_t n, const T *hi, const T *scale, const T *shift, \
                     ptrdiff_t period)                                                        \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            ptrdiff_t c = period ? i % period : 0;                                            \
            y[i] = (x[i] - hi[c]) * scale[c] + shift[c];                                      \
        }                                                                                     \
    }
FASTNORM_SWEEP_PLAIN(fastnorm_sweep_stream_f32, float)
FASTNORM_SWEEP_PLAIN(fastnorm_sweep_stream_f64, double)
#define FASTNORM_GRAD_SWEEP_PLAIN(NAME, T)                                                    \
    static void NAME(const T *x, const T *dy, T *dx, ptrdiff_t n, T hi, T alpha, T beta, T gamma, \
                     const T *w)                                                              \
    {                                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            dx[i] = (w ? w[i] * dy[i] : dy[i]) * alpha + beta * (x[i] - hi) + gamma;          \
    }
#define fastnorm_sweep_affine_stream_f32 fastnorm_sweep_affine_f32
#define fastnorm_sweep_affine_stream_f64 fastnorm_sweep_affine_f64
FASTNORM_GRAD_SWEEP_PLAIN(fastnorm_grad_sweep_stream_f32, float)
FASTNORM_GRAD_SWEEP_PLAIN(fastnorm_grad_sweep_stream_f64, double)
#endif

FASTNORM_SHIFTED_SUMS(fastnorm_shifted_sums_f32_generic, float)
FASTNORM_SHIFTED_SUMS(fastnorm_shifted_sums_f64, double)
FASTNORM_COLUMN_SUMS(fastnorm_column_sums_f32_generic, float)
FASTNORM_COLUMN_SUMS(fastnorm_column_sums_f64, double)

/* ---- float32 statistics passes for CPUs with AVX2 and FMA ------------------------------------------------
 * The statistics pass reads x from memory with little arithmetic per load, and written as plain C it runs
 * at about 60% of the read bandwidth: two accumulator chains per sum (their latency), the float -> double
 * conversions and the unfused d*d leave too few loads in flight.  Here: four independent chains per sum,
 * d*d fused into the sum of squares, and a software prefetch 2 KiB ahead (measured on a 2-core AMD EPYC:
 * 0.38-0.44 -> 0.27-0.30 ns per value from memory, a plain float sum being 0.25).
 * Chosen once at load time, so every call on a machine takes the same path and gives the same bits. */
static int fastnorm_avx2_fma = 0;

#if defined(__GNUC__) && defined(__x86_64__) && !defined(FASTNORM_NO_CLONES)
#include <immintrin.h>
#include <stdint.h>
#define FASTNORM_PREFETCH_BYTES 2048
#define FASTNORM_PREFETCH(p) _mm_prefetch((const char *)((uintptr_t)(p) + FASTNORM_PREFETCH_BYTES), _MM_HINT_T0)

__attribute__((target("avx2,fma"))) static inline __m256d fastnorm_load4_minus(const float *p, __m256d b)
{
    return _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p)), b);
}

__attribute__((target("avx2,fma"))) static inline double fastnorm_hsum4(__m256d v)
{
    double t[4];
    _mm256_storeu_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
}

__attribute__((target("avx2,fma"), noinline)) static void fastnorm_shifted_sums_f32_avx2(
    const float *x, ptrdiff_t n, double shift, double *s1, double *s2)
{
    __m256d s = _mm256_set1_pd(shift);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        FASTNORM_PREFETCH(x + i);
        __m256d d0 = fastnorm_load4_minus(x + i, s), d1 = fastnorm_load4_minus(x + i + 4, s);
        __m256d d2 = fastnorm_load4_minus(x + i + 8, s), d3 = fastnorm_load4_minus(x + i + 12, s);
        a0 = _mm256_add_pd(a0, d0);
        a1 = _mm256_add_pd(a1, d1);
        a2 = _mm256_add_pd(a2, d2);
        a3 = _mm256_add_pd(a3, d3);
        b0 = _mm256_fmadd_pd(d0, d0, b0);
        b1 = _mm256_fmadd_pd(d1, d1, b1);
        b2 = _mm256_fmadd_pd(d2, d2, b2);
        b3 = _mm256_fmadd_pd(d3, d3, b3);
    }
    double a = fastnorm_hsum4(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
    double b = fastnorm_hsum4(_mm256_add_pd(_mm256_add_pd(b0, b1), _mm256_add_pd(b2, b3)));
    for (; i < n; i++) {
        double d = (double)x[i] - shift;
        a += d;
        b += d * d;
    }
    *s1 = a;
    *s2 = b;
}

/* Column sums as FASTNORM_COLUMN_SUMS: four rows per update of the accumulators, which stay in L1. */
__attribute__((target("avx2,fma"), noinline)) static void fastnorm_column_sums_f32_avx2(
    const float *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const float *base, double *restrict s1,
    double *restrict s2)
{
    ptrdiff_t vcols = ncols & ~(ptrdiff_t)3;
    for (ptrdiff_t c = 0; c < ncols; c++) {
        s1[c] = 0.0;
        s2[c] = 0.0;
    }
    ptrdiff_t r = 1;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = x + r * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
        for (ptrdiff_t c = 0; c < ncols; c += 16) {
            FASTNORM_PREFETCH(r0 + c);
            FASTNORM_PREFETCH(r1 + c);
            FASTNORM_PREFETCH(r2 + c);
            FASTNORM_PREFETCH(r3 + c);
        }
        for (ptrdiff_t c = 0; c < vcols; c += 4) {
            __m256d b = _mm256_cvtps_pd(_mm_loadu_ps(base + c));
            __m256d d0 = fastnorm_load4_minus(r0 + c, b), d1 = fastnorm_load4_minus(r1 + c, b);
            __m256d d2 = fastnorm_load4_minus(r2 + c, b), d3 = fastnorm_load4_minus(r3 + c, b);
            __m256d sum = _mm256_add_pd(_mm256_add_pd(d0, d1), _mm256_add_pd(d2, d3));
            __m256d sq = _mm256_fmadd_pd(d0, d0, _mm256_fmadd_pd(d1, d1, _mm256_fmadd_pd(d2, d2, _mm256_mul_pd(d3, d3))));
            _mm256_storeu_pd(s1 + c, _mm256_add_pd(_mm256_loadu_pd(s1 + c), sum));
            _mm256_storeu_pd(s2 + c, _mm256_add_pd(_mm256_loadu_pd(s2 + c), sq));
        }
        for (ptrdiff_t c = vcols; c < ncols; c++) {
            double b = (double)base[c];
            double d0 = (double)r0[c] - b, d1 = (double)r1[c] - b, d2 = (double)r2[c] - b, d3 = (double)r3[c] - b;
            s1[c] += (d0 + d1) + (d2 + d3);
            s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    }
    for (; r < rows; r++) {
        const float *row = x + r * ld;
        for (ptrdiff_t c = 0; c < ncols; c++) {
            double d = (double)row[c] - (double)base[c];
            s1[c] += d;
            s2[c] += d * d;
        }
    }
}

__attribute__((target("avx2,fma"))) static inline void fastnorm_add_to_doubles(double *acc, __m256 v)
{
    _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}

/* The four fastnorm_hsum4 of a, b, c, d, as the four lanes of one vector: the same additions in the same
 * order, so the same bits, without a trip through memory for each. */
__attribute__((target("avx2,fma"))) static inline __m256d fastnorm_hsum4x4(__m256d a, __m256d b, __m256d c,
                                                                          __m256d d)
{
    __m256d ab = _mm256_hadd_pd(a, b), cd = _mm256_hadd_pd(c, d); /* a0+a1, b0+b1, a2+a3, b2+b3 */
    return _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20), _mm256_permute2f128_pd(ab, cd, 0x31));
}

/* The 8 float lanes of v widened to double and added pairwise into 4 lanes. */
__attribute__((target("avx2,fma"))) static inline __m256d fastnorm_widen_pairs(__m256 v)
{
    return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* FASTNORM_GRAD_ROW_ELEM for float32.  The terms are formed in float, as the generic loop's are in double:
 * xc = (x - hi) - lo with hi + lo the mean (x - hi is exact near the mean), xhat = xc * rstd.  The row sums
 * (and the check sums of xhat, xhat**2) run in float over blocks of 64 values (8 terms per lane) and in
 * double across blocks, as FASTNORM_GRAD_SUMS; the column sums (the weight and bias gradients, over every
 * row) stay in double. */
__attribute__((target("avx2,fma"), noinline)) static void fastnorm_grad_row_elem_f32_avx2(
    const float *x, const float *dy, ptrdiff_t n, double mean, double rstd, const float *w, double *s_wdy,
    double *s_wdyx, double *s_xhat, double *s_xhat2, double *restrict col_dy, double *restrict col_dyx)
{
    float hi_s = (float)mean;
    __m256 hi = _mm256_set1_ps(hi_s), lo = _mm256_set1_ps((float)(mean - (double)hi_s));
    __m256 rs = _mm256_set1_ps((float)rstd), one = _mm256_set1_ps(1.0f);
    __m256d sums = _mm256_setzero_pd();  /* a, b, c, e below */
    ptrdiff_t i = 0;
    while (i + 8 <= n) {
        ptrdiff_t end = i + 64 <= n ? i + 64 : n - n % 8;
        __m256 fa = _mm256_setzero_ps(), fb = fa, fc = fa, fe = fa;
        for (; i < end; i += 8) {
            if (!(i & 15)) {
                FASTNORM_PREFETCH(x + i);
                FASTNORM_PREFETCH(dy + i);
            }
            __m256 g = _mm256_loadu_ps(dy + i);
            __m256 xc = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), hi), lo);
            __m256 wg = _mm256_mul_ps(w ? _mm256_loadu_ps(w + i) : one, g);
            __m256 xh = _mm256_mul_ps(xc, rs);
            fa = _mm256_add_ps(fa, wg);
            fb = _mm256_fmadd_ps(wg, xc, fb);
            fc = _mm256_add_ps(fc, xh);
            fe = _mm256_fmadd_ps(xh, xh, fe);
            fastnorm_add_to_doubles(col_dy + i, g);
            fastnorm_add_to_doubles(col_dyx + i, _mm256_mul_ps(g, xh));
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
        col_dyx[i] += g * xh;
    }
    *s_wdy = a;
    *s_wdyx = b;
    *s_xhat = c;
    *s_xhat2 = e;
}

/* FASTNORM_GRAD_SUMS for float32: the same float blocks of 64 values, but each block's 8 lanes are added
 * to 8 double lanes instead of being summed across (the generic loop's reduction ends every block with a
 * chain of scalar additions), and x, dy are prefetched. */
__attribute__((target("avx2,fma"), noinline)) static void fastnorm_grad_sums_f32_avx2(
    const float *x, const float *dy, ptrdiff_t n, double mean, double rstd, double *s_dy, double *s_dyx,
    double *s_xhat, double *s_xhat2)
{
    float hi_s = (float)mean, r_s = (float)rstd;
    __m256 hi = _mm256_set1_ps(hi_s), r = _mm256_set1_ps(r_s);
    __m256d a_lo = _mm256_setzero_pd(), a_hi = a_lo, b_lo = a_lo, b_hi = a_lo, c_acc = a_lo, d_acc = a_lo;
    ptrdiff_t vn = n - n % 8, i = 0;
    while (i < vn) {
        ptrdiff_t end = i + 64 <= vn ? i + 64 : vn;
        __m256 fa = _mm256_setzero_ps(), fb = fa, fc = fa, fd = fa;
        for (; i < end; i += 8) {
            if (!(i & 15)) {
                FASTNORM_PREFETCH(x + i);
                FASTNORM_PREFETCH(dy + i);
            }
            __m256 g = _mm256_loadu_ps(dy + i);
            __m256 xc = _mm256_sub_ps(_mm256_loadu_ps(x + i), hi);
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
        double t = ((double)x[i] - (double)hi_s) * (double)r_s;
        a += (double)dy[i];
        b += (double)dy[i] * ((double)x[i] - (double)hi_s);
        c += t;
        d += t * t;
    }
    *s_dy = a;
    *s_dyx = b - (mean - (double)hi_s) * a;
    fastnorm_xhat_sums(c, d, (double)n, (mean - (double)hi_s) * (double)r_s, s_xhat, s_xhat2);
}

static inline void fastnorm_grad_sums_f32_loop(const float *x, const float *dy, ptrdiff_t n, double mean,
                                               double rstd, double *s_dy, double *s_dyx, double *s_xhat,
                                               double *s_xhat2)
{
    if (fastnorm_avx2_fma)
        fastnorm_grad_sums_f32_avx2(x, dy, n, mean, rstd, s_dy, s_dyx, s_xhat, s_xhat2);
    else
        fastnorm_grad_sums_f32_generic(x, dy, n, mean, rstd, s_dy, s_dyx, s_xhat, s_xhat2);
}

static inline void fastnorm_grad_row_elem_f32(const float *x, const float *dy, ptrdiff_t n, double mean,
                                              double rstd, const float *w, double *s_wdy, double *s_wdyx,
                                              double *s_xhat, double *s_xhat2, double *col_dy, double *col_dyx)
{
    if (fastnorm_avx2_fma)
        fastnorm_grad_row_elem_f32_avx2(x, dy, n, mean, rstd, w, s_wdy, s_wdyx, s_xhat, s_xhat2, col_dy, col_dyx);
    else
        fastnorm_grad_row_elem_f32_generic(x, dy, n, mean, rstd, w, s_wdy, s_wdyx, s_xhat, s_xhat2, col_dy,
                                           col_dyx);
}

/* Enables the AVX2+FMA passes where the CPU has both (on = 0 forces the generic ones, for measurements
 * and tests; not while kernels run).  Returns whether they are in use. */
static int fastnorm_select_isa(int on)
{
    __builtin_cpu_init();
    fastnorm_avx2_fma = on && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return fastnorm_avx2_fma;
}

static inline void fastnorm_shifted_sums_f32(const float *x, ptrdiff_t n, double shift, double *s1, double *s2)
{
    if (fastnorm_avx2_fma)
        fastnorm_shifted_sums_f32_avx2(x, n, shift, s1, s2);
    else
        fastnorm_shifted_sums_f32_generic(x, n, shift, s1, s2);
}

static inline void fastnorm_column_sums_f32(const float *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld,
                                            const float *base, double *s1, double *s2)
{
    if (fastnorm_avx2_fma)
        fastnorm_column_sums_f32_avx2(x, rows, ncols, ld, base, s1, s2);
    else
        fastnorm_column_sums_f32_generic(x, rows, ncols, ld, base, s1, s2);
}
#else
static int fastnorm_select_isa(int on)
{
    (void)on;
    return 0;
}
#define fastnorm_shifted_sums_f32 fastnorm_shifted_sums_f32_generic
#define fastnorm_column_sums_f32 fastnorm_column_sums_f32_generic
#define fastnorm_grad_row_elem_f32 fastnorm_grad_row_elem_f32_generic
#define fastnorm_grad_sums_f32_loop fastnorm_grad_sums_f32_generic
#endif
/* sum(dy), sum(dy * (x - mean)) and the check sums of a run, for every path of the kernels.  A lone value
 * (GroupNorm with one value per channel) is summed here: a call per value cost more than the value
 * (16 ns). */
#define FASTNORM_GRAD_SUMS_OF_RUN(NAME, T, LOOP)                                              \
    static inline void NAME(const T *x, const T *dy, ptrdiff_t n, double mean, double rstd, double *s_dy, \
                            double *s_dyx, double *s_xhat, double *s_xhat2)                   \
    {                                                                                         \
        if (n == 1) {                                                                         \
            double hi = (double)(T)mean, a = (double)dy[0], t = ((double)x[0] - hi) * (double)(T)rstd; \
            *s_dy = a;                                                                        \
            *s_dyx = a * ((double)x[0] - hi) - (mean - hi) * a;                               \
            fastnorm_xhat_sums(t, t * t, 1.0, (mean - hi) * (double)(T)rstd, s_xhat, s_xhat2); \
            return;                                                                           \
        }                                                                                     \
        LOOP(x, dy, n, mean, rstd, s_dy, s_dyx, s_xhat, s_xhat2);                             \
    }
FASTNORM_GRAD_SUMS_OF_RUN(fastnorm_grad_sums_f32, float, fastnorm_grad_sums_f32_loop)
FASTNORM_GRAD_SUMS_OF_RUN(fastnorm_grad_sums_f64, double, fastnorm_grad_sums_f64_loop)
/* P1[q] = sum(dy), P2[q] = rstd[r] * sum(dy * (x - mean[r])) for run q = r * K + j of rows of K runs of len
 * values, and per row the check sums X[2 r] = sum(xhat), X[2 r + 1] = sum(xhat**2) over its runs: each run
 * summed by fastnorm_grad_sums_* as a lone run is (the same bits), without a call from the kernels per run. */
#define FASTNORM_GRAD_RUN_SUMS(NAME, T, SUMS)                                                 \
    static void NAME(const T *x, const T *dy, ptrdiff_t rows, ptrdiff_t K, ptrdiff_t len, const double *mean, \
                     const double *rstd, double *P1, double *P2, double *X)                   \
    {                                                                                         \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                \
            X[2 * r] = 0.0;                                                                   \
            X[2 * r + 1] = 0.0;                                                               \
            for (ptrdiff_t j = 0; j < K; j++) {                                               \
                ptrdiff_t q = r * K + j;                                                      \
                double a, b, c, d;                                                            \
                SUMS(x + q * len, dy + q * len, len, mean[r], rstd[r], &a, &b, &c, &d);       \
                P1[q] = 0.0 + a;                                                              \
                P2[q] = (0.0 + b) * rstd[r];                                                  \
                X[2 * r] += c;                                                                \
                X[2 * r + 1] += d;                                                            \
            }                                                                                 \
        }                                                                                     \
    }
FASTNORM_GRAD_RUN_SUMS(fastnorm_grad_run_sums_f32, float, fastnorm_grad_sums_f32)
FASTNORM_GRAD_RUN_SUMS(fastnorm_grad_run_sums_f64, double, fastnorm_grad_sums_f64)
FASTNORM_SWEEP(fastnorm_sweep_f32, float)
FASTNORM_SWEEP(fastnorm_sweep_f64, double)
FASTNORM_SWEEP_ROWS(fastnorm_sweep_rows_f32, float)
FASTNORM_SWEEP_ROWS(fastnorm_sweep_rows_f64, double)
FASTNORM_SWEEP_AFFINE(fastnorm_sweep_affine_f32, float)
FASTNORM_SWEEP_AFFINE(fastnorm_sweep_affine_f64, double)

#endif
