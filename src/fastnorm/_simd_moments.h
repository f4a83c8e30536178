/* Moments: shifted sums of contiguous blocks and of the columns of a channels-last block (included by
 * _simd.h).  The Cython side (_moments.pxi) turns them into (count, mean, M2) and merges with Chan. */
/* Sums of d and d*d, d = x[i] - shift, over n contiguous values. */
#define FASTNORM_SHIFTED_SUMS(NAME, T)                                                              \
    FASTNORM_CLONES static void NAME(const T *x, ptrdiff_t n, double shift, double *s1, double *s2) \
    {                                                                                               \
        double a = 0.0, b = 0.0;                                                                    \
        _Pragma("omp simd reduction(+:a,b)") for (ptrdiff_t i = 0; i < n; i++)                      \
        {                                                                                           \
            double d = (double)x[i] - shift;                                                        \
            a += d;                                                                                 \
            b += d * d;                                                                             \
        }                                                                                           \
        *s1 = a;                                                                                    \
        *s2 = b;                                                                                    \
    }

/* Per-column sums of d and d*d, d = x[r, c] - base[c], over the rows of an [rows, ncols] block with
 * row stride ld.  The loop runs along the contiguous columns: each column is its own lane, and the
 * accumulators (2 * ncols doubles) stay in L1. */
#define FASTNORM_COLUMN_SUMS(NAME, T)                                                                          \
    FASTNORM_CLONES static void NAME(const T *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const T *base, \
                                     double *restrict s1, double *restrict s2)                                 \
    {                                                                                                          \
        for (ptrdiff_t c = 0; c < ncols; c++) {                                                                \
            s1[c] = 0.0;                                                                                       \
            s2[c] = 0.0;                                                                                       \
        }                                                                                                      \
        ptrdiff_t r = 1;                                                                                       \
        /* Four rows per update of the accumulators: their loads and stores, not the          \
         * arithmetic, bound this loop. */                \
        for (; r + 4 <= rows; r += 4) {                                                                        \
            const T *r0 = x + r * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;                             \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                                            \
                double b = (double)base[c];                                                                    \
                double d0 = (double)r0[c] - b, d1 = (double)r1[c] - b;                                         \
                double d2 = (double)r2[c] - b, d3 = (double)r3[c] - b;                                         \
                s1[c] += (d0 + d1) + (d2 + d3);                                                                \
                s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                                            \
            }                                                                                                  \
        }                                                                                                      \
        for (; r < rows; r++) {                                                                                \
            const T *row = x + r * ld;                                                                         \
            for (ptrdiff_t c = 0; c < ncols; c++) {                                                            \
                double d = (double)row[c] - (double)base[c];                                                   \
                s1[c] += d;                                                                                    \
                s2[c] += d * d;                                                                                \
            }                                                                                                  \
        }                                                                                                      \
    }

FASTNORM_SHIFTED_SUMS(fastnorm_shifted_sums_f32_generic, float)
FASTNORM_SHIFTED_SUMS(fastnorm_shifted_sums_f64, double)
FASTNORM_COLUMN_SUMS(fastnorm_column_sums_f32_generic, float)
FASTNORM_COLUMN_SUMS(fastnorm_column_sums_f64, double)

#if FASTNORM_AVX2
__attribute__((target("avx2,fma"), noinline)) static void
fastnorm_shifted_sums_f32_avx2(const float *x, ptrdiff_t n, double shift, double *s1, double *s2)
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
__attribute__((target("avx2,fma"), noinline)) static void
fastnorm_column_sums_f32_avx2(const float *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const float *base,
                              double *restrict s1, double *restrict s2)
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
            __m256d sq =
                _mm256_fmadd_pd(d0, d0, _mm256_fmadd_pd(d1, d1, _mm256_fmadd_pd(d2, d2, _mm256_mul_pd(d3, d3))));
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
#endif

FASTNORM_BY_ISA(fastnorm_shifted_sums_f32, (const float *x, ptrdiff_t n, double shift, double *s1, double *s2),
                (x, n, shift, s1, s2))
FASTNORM_BY_ISA(fastnorm_column_sums_f32,
                (const float *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const float *base, double *s1,
                 double *s2),
                (x, rows, ncols, ld, base, s1, s2))
