/* Moments: shifted sums of contiguous blocks and of the columns of a channels-last block (included by
 * _simd.h).  The Cython side (_moments.pxi) turns them into (count, mean, M2) and merges with Chan. */
/* Sums of d and d*d, d = x[i] - shift, over n contiguous values. */
#define FASTNORM_SHIFTED_SUMS(DEFINE, NAME, T)                                                           \
    DEFINE(NAME, (const T *x, ptrdiff_t n, double shift, double *s1, double *s2), (x, n, shift, s1, s2)) \
    {                                                                                                    \
        double a = 0.0, b = 0.0;                                                                         \
        _Pragma("omp simd reduction(+:a,b)") for (ptrdiff_t i = 0; i < n; i++)                           \
        {                                                                                                \
            double d = (double)x[i] - shift;                                                             \
            a += d;                                                                                      \
            b += d * d;                                                                                  \
        }                                                                                                \
        *s1 = a;                                                                                         \
        *s2 = b;                                                                                         \
    }

/* The mean and biased variance of n values from their shifted sums: s1 = sum(d), s2 = sum(d * d),
 * d = x - shift.  Written once here; _moments.pxi's _block_moments and the loop below use it. */
static inline void fastnorm_shifted_moments(double shift, double s1, double s2, double n, double *mean, double *var)
{
    double dm = s1 / n;
    double v = (s2 - s1 * dm) / n;
    *mean = shift + dm;
    *var = v < 0.0 ? 0.0 : v;
}

/* fastnorm_shifted_moments of `count` groups of n values each, in place: s1[i], s2[i] (the sums) become the
 * mean and variance; group i was shifted by shift[i * stride].  A loop of its own, so that its divisions
 * go by whole vectors (one at a time they were most of a short row's fixed cost). */
FASTNORM_PLAIN(fastnorm_shifted_moments_f32,
               (const float *shift, ptrdiff_t stride, double n, ptrdiff_t count, double *restrict s1,
                double *restrict s2),
               (shift, stride, n, count, s1, s2))
{
    for (ptrdiff_t i = 0; i < count; i++)
        fastnorm_shifted_moments((double)shift[i * stride], s1[i], s2[i], n, &s1[i], &s2[i]);
}

/* Chan's merge of the moments (mb, vb) of nb values into (ma, va) of na values, with wa = na / (na + nb),
 * wb = nb / (na + nb): in terms of variances, the squared difference of the means taken as
 * (delta * wa) * (delta * wb), so that nothing overflows unless the variance does; the mean is
 * ma + delta * wb (exactly ma when the means are equal), or ma * wa + mb * wb where the difference of the
 * means overflows (means near +-1.8e308).  Written once here: _moments.pxi's _chan_merge and the loop
 * below. */
static inline void fastnorm_chan_merge(double *ma, double *va, double mb, double vb, double wa, double wb)
{
    double delta = mb - *ma;
    *va = *va * wa + vb * wb + (delta * wa) * (delta * wb);
    *ma = delta - delta == 0.0 ? *ma + delta * wb : *ma * wa + mb * wb;
}

/* fastnorm_chan_merge of n columns, all of the same counts: a loop of its own, which vectorizes. */
FASTNORM_PLAIN(fastnorm_chan_merge_columns,
               (double *restrict mean, double *restrict var, const double *restrict bmean, const double *restrict bvar,
                ptrdiff_t n, double wa, double wb),
               (mean, var, bmean, bvar, n, wa, wb))
{
    for (ptrdiff_t c = 0; c < n; c++)
        fastnorm_chan_merge(&mean[c], &var[c], bmean[c], bvar[c], wa, wb);
}

/* Per-column sums of d and d*d, d = x[r, c] - base[c], over the rows of an [rows, ncols] block with
 * row stride ld.  The loop runs along the contiguous columns: each column is its own lane, and the
 * accumulators (2 * ncols doubles) stay in L1.  The body of every variant, on values read as
 * (double)VALUE(v): VECTOR4 sums the first columns of four rows r0..r3 (advancing c), the scalar steps the
 * rest. */
#define FASTNORM_COLUMN_SUMS_BODY(T, VALUE, VECTOR4)                                                      \
    for (ptrdiff_t c = 0; c < ncols; c++) {                                                               \
        s1[c] = 0.0;                                                                                      \
        s2[c] = 0.0;                                                                                      \
    }                                                                                                     \
    ptrdiff_t r = 1;                                                                                      \
    /* Four rows per update of the accumulators: their loads and stores, not the arithmetic, bound this \
     * loop. */ \
    for (; r + 4 <= rows; r += 4) {                                                                       \
        const T *r0 = x + r * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;                            \
        ptrdiff_t c = 0;                                                                                  \
        VECTOR4                                                                                           \
        for (; c < ncols; c++) {                                                                          \
            double b = (double)base[c];                                                                   \
            double d0 = (double)VALUE(r0[c]) - b, d1 = (double)VALUE(r1[c]) - b;                          \
            double d2 = (double)VALUE(r2[c]) - b, d3 = (double)VALUE(r3[c]) - b;                          \
            s1[c] += (d0 + d1) + (d2 + d3);                                                               \
            s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                                           \
        }                                                                                                 \
    }                                                                                                     \
    for (; r < rows; r++) {                                                                               \
        const T *row = x + r * ld;                                                                        \
        for (ptrdiff_t c = 0; c < ncols; c++) {                                                           \
            double d = (double)VALUE(row[c]) - (double)base[c];                                           \
            s1[c] += d;                                                                                   \
            s2[c] += d * d;                                                                               \
        }                                                                                                 \
    }
#define FASTNORM_COLUMN_SUMS(DEFINE, NAME, T)                                                              \
    DEFINE(NAME,                                                                                           \
           (const T *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const T *base, double *restrict s1, \
            double *restrict s2),                                                                          \
           (x, rows, ncols, ld, base, s1, s2))                                                             \
    {                                                                                                      \
        FASTNORM_COLUMN_SUMS_BODY(T, , )                                                                   \
    }

FASTNORM_SHIFTED_SUMS(FASTNORM_BASELINE, fastnorm_shifted_sums_f32, float)
FASTNORM_SHIFTED_SUMS(FASTNORM_PLAIN, fastnorm_shifted_sums_f64, double)
FASTNORM_COLUMN_SUMS(FASTNORM_BASELINE, fastnorm_column_sums_f32, float)
FASTNORM_COLUMN_SUMS(FASTNORM_PLAIN, fastnorm_column_sums_f64, double)

#if FASTNORM_X86
/* ---- The float32 statistics passes at level 1: four chains per sum ----------------------------------------
 * The statistics pass reads x from memory with little arithmetic per load, and written as plain C it runs
 * at about 60% of the read bandwidth: two accumulator chains per sum (their latency), the float -> double
 * conversions and the unfused d*d leave too few loads in flight.  Here: four independent chains per sum,
 * d*d fused into the sum of squares, and a software prefetch 2 KiB ahead (bench/NOTES.md, "AVX2+FMA
 * statistics passes").  Written once for float32 and the half types (_simd_convert.h): LOAD8X2 reads 8
 * values as two vectors of 4 floats, LOAD4 4 values as 4 floats, VALUE one value (empty for float32). */
FASTNORM_TARGET_AVX2 static inline void fastnorm_load8x2_f32(const float *p, __m128 *lo, __m128 *hi)
{
    *lo = _mm_loadu_ps(p);
    *hi = _mm_loadu_ps(p + 4);
}

/* Sums of d and d*d, d = x[i] - shift, over n contiguous values (FASTNORM_SHIFTED_SUMS). */
#define FASTNORM_SHIFTED_SUMS_AVX2(NAME, T, LOAD8X2, VALUE)                                                            \
    FASTNORM_TARGET_AVX2 __attribute__((noinline)) static void NAME(const T *x, ptrdiff_t n, double shift, double *s1, \
                                                                    double *s2)                                        \
    {                                                                                                                  \
        __m256d s = _mm256_set1_pd(shift);                                                                             \
        __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;               \
        ptrdiff_t i = 0;                                                                                               \
        for (; i + 16 <= n; i += 16) {                                                                                 \
            __m128 f0, f1, f2, f3;                                                                                     \
            FASTNORM_PREFETCH(x + i);                                                                                  \
            LOAD8X2(x + i, &f0, &f1);                                                                                  \
            LOAD8X2(x + i + 8, &f2, &f3);                                                                              \
            __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(f0), s), d1 = _mm256_sub_pd(_mm256_cvtps_pd(f1), s);            \
            __m256d d2 = _mm256_sub_pd(_mm256_cvtps_pd(f2), s), d3 = _mm256_sub_pd(_mm256_cvtps_pd(f3), s);            \
            a0 = _mm256_add_pd(a0, d0);                                                                                \
            a1 = _mm256_add_pd(a1, d1);                                                                                \
            a2 = _mm256_add_pd(a2, d2);                                                                                \
            a3 = _mm256_add_pd(a3, d3);                                                                                \
            b0 = _mm256_fmadd_pd(d0, d0, b0);                                                                          \
            b1 = _mm256_fmadd_pd(d1, d1, b1);                                                                          \
            b2 = _mm256_fmadd_pd(d2, d2, b2);                                                                          \
            b3 = _mm256_fmadd_pd(d3, d3, b3);                                                                          \
        }                                                                                                              \
        double a = fastnorm_hsum4(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));                        \
        double b = fastnorm_hsum4(_mm256_add_pd(_mm256_add_pd(b0, b1), _mm256_add_pd(b2, b3)));                        \
        for (; i < n; i++) {                                                                                           \
            double d = (double)VALUE(x[i]) - shift;                                                                    \
            a += d;                                                                                                    \
            b += d * d;                                                                                                \
        }                                                                                                              \
        *s1 = a;                                                                                                       \
        *s2 = b;                                                                                                       \
    }

/* Column sums as FASTNORM_COLUMN_SUMS, the columns of four rows up to the last multiple of 4 in vectors
 * (``base``: the block's first row, as floats). */
#define FASTNORM_COLUMN_SUMS_AVX2_4(T, LOAD4)                                                                          \
    for (ptrdiff_t p = 0; p < ncols; p += 64 / (ptrdiff_t)sizeof(T)) {                                                 \
        FASTNORM_PREFETCH(r0 + p);                                                                                     \
        FASTNORM_PREFETCH(r1 + p);                                                                                     \
        FASTNORM_PREFETCH(r2 + p);                                                                                     \
        FASTNORM_PREFETCH(r3 + p);                                                                                     \
    }                                                                                                                  \
    for (; c < (ncols & ~(ptrdiff_t)3); c += 4) {                                                                      \
        __m256d b = _mm256_cvtps_pd(_mm_loadu_ps(base + c));                                                           \
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(LOAD4(r0 + c)), b);                                                 \
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(LOAD4(r1 + c)), b);                                                 \
        __m256d d2 = _mm256_sub_pd(_mm256_cvtps_pd(LOAD4(r2 + c)), b);                                                 \
        __m256d d3 = _mm256_sub_pd(_mm256_cvtps_pd(LOAD4(r3 + c)), b);                                                 \
        __m256d sum = _mm256_add_pd(_mm256_add_pd(d0, d1), _mm256_add_pd(d2, d3));                                     \
        __m256d sq = _mm256_fmadd_pd(d0, d0, _mm256_fmadd_pd(d1, d1, _mm256_fmadd_pd(d2, d2, _mm256_mul_pd(d3, d3)))); \
        _mm256_storeu_pd(s1 + c, _mm256_add_pd(_mm256_loadu_pd(s1 + c), sum));                                         \
        _mm256_storeu_pd(s2 + c, _mm256_add_pd(_mm256_loadu_pd(s2 + c), sq));                                          \
    }
#define FASTNORM_COLUMN_SUMS_AVX2(NAME, T, LOAD4, VALUE)                                                         \
    FASTNORM_TARGET_AVX2 __attribute__((noinline)) static void NAME(const T *x, ptrdiff_t rows, ptrdiff_t ncols, \
                                                                    ptrdiff_t ld, const float *base,             \
                                                                    double *restrict s1, double *restrict s2)    \
    {                                                                                                            \
        FASTNORM_COLUMN_SUMS_BODY(T, VALUE, FASTNORM_COLUMN_SUMS_AVX2_4(T, LOAD4))                               \
    }

FASTNORM_SHIFTED_SUMS_AVX2(fastnorm_shifted_sums_f32_avx2, float, fastnorm_load8x2_f32, )
FASTNORM_COLUMN_SUMS_AVX2(fastnorm_column_sums_f32_avx2, float, _mm_loadu_ps, )

/* ---- AVX-512 twins: the lanes of the AVX2 passes above, two ymm accumulators to a zmm ----------------------
 * Each lane sums the same values in the same order as in the AVX2 pass, and the lanes are added up in the
 * same order, so the bits are those of the AVX2 pass.  What they gain (bench/NOTES.md, "Small tensors"):
 * - shifted sums of two rows at once: a row's sums are one chain of fused multiply-adds per lane, whose
 *   latency, not the loads, bounds a row alone (cached); two rows side by side keep the units busy;
 * - column sums with the accumulators of a strip of columns in registers over a block's rows, instead of
 *   a load and a store of them for every four rows. */
FASTNORM_TARGET_AVX512 static inline __m512d fastnorm_load8_minus(const float *p, __m512d b)
{
    return _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(p)), b);
}

/* fastnorm_hsum4((a0 + a1) + (a2 + a3)) of the AVX2 pass's accumulators a0..a3, held as lo = [a0 a1] and
 * hi = [a2 a3]. */
FASTNORM_TARGET_AVX512 static inline double fastnorm_hsum8x2(__m512d lo, __m512d hi)
{
    __m256d a01 = _mm256_add_pd(_mm512_castpd512_pd256(lo), _mm512_extractf64x4_pd(lo, 1));
    __m256d a23 = _mm256_add_pd(_mm512_castpd512_pd256(hi), _mm512_extractf64x4_pd(hi, 1));
    return fastnorm_hsum4(_mm256_add_pd(a01, a23));
}

/* fastnorm_shifted_sums_f32_avx2 of K (1 or 2) contiguous rows of n values, each shifted by its first value;
 * prefetching a line for each line read, in one sequential walk from FASTNORM_PREFETCH_BYTES past these rows
 * (a prefetch at the same place in the rows after these was up to 10% slower from memory). */
FASTNORM_TARGET_AVX512 __attribute__((always_inline)) static inline void
fastnorm_shifted_sums_k_avx512(const float *x, const int K, ptrdiff_t n, double *s1, double *s2)
{
    const ptrdiff_t ld = n;
    __m512d shift[2], a_lo[2], a_hi[2], b_lo[2], b_hi[2];
    for (int k = 0; k < K; k++) {
        shift[k] = _mm512_set1_pd((double)x[k * ld]);
        a_lo[k] = a_hi[k] = b_lo[k] = b_hi[k] = _mm512_setzero_pd();
    }
    ptrdiff_t i = 0;
    const float *ahead = x + K * ld + FASTNORM_PREFETCH_BYTES / sizeof(float);
    for (; i + 16 <= n; i += 16) {
        for (int k = 0; k < K; k++) {
            const float *p = x + k * ld + i;
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            ahead += 16;
            __m512d d0 = fastnorm_load8_minus(p, shift[k]), d1 = fastnorm_load8_minus(p + 8, shift[k]);
            a_lo[k] = _mm512_add_pd(a_lo[k], d0);
            a_hi[k] = _mm512_add_pd(a_hi[k], d1);
            b_lo[k] = _mm512_fmadd_pd(d0, d0, b_lo[k]);
            b_hi[k] = _mm512_fmadd_pd(d1, d1, b_hi[k]);
        }
    }
    for (int k = 0; k < K; k++) {
        double a = fastnorm_hsum8x2(a_lo[k], a_hi[k]), b = fastnorm_hsum8x2(b_lo[k], b_hi[k]);
        double sh = (double)x[k * ld];
        for (ptrdiff_t j = i; j < n; j++) {
            double d = (double)x[k * ld + j] - sh;
            a += d;
            b += d * d;
        }
        s1[k] = a;
        s2[k] = b;
    }
}

/* Sums of each of `rows` contiguous rows of n values, shifted by its first value; rows of fewer than 256
 * values one at a time (fastnorm_row_sums_f32_one): two at a time they were up to 6% slower from memory and
 * no faster cached (bench/NOTES.md, "Small tensors"); longer ones two at a time (four were no faster cached
 * and slower from memory). */
static void fastnorm_row_sums_f32_one(const float *x, ptrdiff_t rows, ptrdiff_t n, double *s1, double *s2);
FASTNORM_TARGET_AVX512 __attribute__((noinline)) static void
fastnorm_row_sums_f32_avx512(const float *x, ptrdiff_t rows, ptrdiff_t n, double *s1, double *s2)
{
    if (n < 256) {
        fastnorm_row_sums_f32_one(x, rows, n, s1, s2);
        return;
    }
    ptrdiff_t r = 0;
    for (; r + 2 <= rows; r += 2)
        fastnorm_shifted_sums_k_avx512(x + r * n, 2, n, s1 + r, s2 + r);
    if (r < rows)
        fastnorm_shifted_sums_k_avx512(x + r * n, 1, n, s1 + r, s2 + r);
}

/* fastnorm_column_sums_f32_avx2 on a strip of 8 * V columns (V zmm of accumulators) starting at column c. */
FASTNORM_TARGET_AVX512 __attribute__((always_inline)) static inline void
fastnorm_column_strip_avx512(const float *x, ptrdiff_t rows, const int V, ptrdiff_t ld, const float *base, double *s1,
                             double *s2)
{
    __m512d b[4], a1[4], a2[4];
    for (int v = 0; v < V; v++) {
        b[v] = _mm512_cvtps_pd(_mm256_loadu_ps(base + 8 * v));
        a1[v] = a2[v] = _mm512_setzero_pd();
    }
    ptrdiff_t r = 1;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = x + r * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
        for (int v = 0; v < V; v++) {
            __m512d d0 = fastnorm_load8_minus(r0 + 8 * v, b[v]), d1 = fastnorm_load8_minus(r1 + 8 * v, b[v]);
            __m512d d2 = fastnorm_load8_minus(r2 + 8 * v, b[v]), d3 = fastnorm_load8_minus(r3 + 8 * v, b[v]);
            __m512d sum = _mm512_add_pd(_mm512_add_pd(d0, d1), _mm512_add_pd(d2, d3));
            __m512d sq =
                _mm512_fmadd_pd(d0, d0, _mm512_fmadd_pd(d1, d1, _mm512_fmadd_pd(d2, d2, _mm512_mul_pd(d3, d3))));
            a1[v] = _mm512_add_pd(a1[v], sum);
            a2[v] = _mm512_add_pd(a2[v], sq);
        }
    }
    for (; r < rows; r++) { /* the AVX2 pass's scalar loop: s2 += d * d unfused */
        for (int v = 0; v < V; v++) {
            __m512d d = fastnorm_load8_minus(x + r * ld + 8 * v, b[v]);
            a1[v] = _mm512_add_pd(a1[v], d);
            a2[v] = _mm512_add_pd(a2[v], _mm512_mul_pd(d, d));
        }
    }
    for (int v = 0; v < V; v++) {
        _mm512_storeu_pd(s1 + 8 * v, a1[v]);
        _mm512_storeu_pd(s2 + 8 * v, a2[v]);
    }
}

FASTNORM_TARGET_AVX512 __attribute__((noinline)) static void
fastnorm_column_sums_f32_avx512(const float *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const float *base,
                                double *restrict s1, double *restrict s2)
{
    /* The AVX2 pass's vector columns (the first multiple of 4) in strips of 32 and 8; the rest by it, on
     * the same columns as there (its scalar form rounds the squares otherwise). */
    ptrdiff_t vcols = ncols & ~(ptrdiff_t)3, c = 0;
    for (; c + 32 <= vcols; c += 32)
        fastnorm_column_strip_avx512(x + c, rows, 4, ld, base + c, s1 + c, s2 + c);
    for (; c + 8 <= vcols; c += 8)
        fastnorm_column_strip_avx512(x + c, rows, 1, ld, base + c, s1 + c, s2 + c);
    if (c < ncols)
        fastnorm_column_sums_f32_avx2(x + c, rows, ncols - c, ld, base + c, s1 + c, s2 + c);
}
#endif

FASTNORM_BY_ISA(fastnorm_shifted_sums_f32, (const float *x, ptrdiff_t n, double shift, double *s1, double *s2),
                (x, n, shift, s1, s2), generic, avx2, avx2, avx2)
FASTNORM_BY_ISA(fastnorm_column_sums_f32,
                (const float *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, const float *base, double *s1,
                 double *s2),
                (x, rows, ncols, ld, base, s1, s2), generic, avx2, avx512, avx512)

static void fastnorm_row_sums_f32_one(const float *x, ptrdiff_t rows, ptrdiff_t n, double *s1, double *s2)
{
    for (ptrdiff_t r = 0; r < rows; r++)
        fastnorm_shifted_sums_f32(x + r * n, n, (double)x[r * n], s1 + r, s2 + r);
}
FASTNORM_BY_ISA(fastnorm_row_sums_f32, (const float *x, ptrdiff_t rows, ptrdiff_t n, double *s1, double *s2),
                (x, rows, n, s1, s2), one, one, avx512, avx512)

/* The moments of `rows` contiguous rows of n values (each a block: shifted by its first value), as
 * _block_moments gives them: mean[r], var[r]. */
static void fastnorm_row_moments_f32(const float *x, ptrdiff_t rows, ptrdiff_t n, double *mean, double *var)
{
    fastnorm_row_sums_f32(x, rows, n, mean, var);
    fastnorm_shifted_moments_f32(x, n, (double)n, rows, mean, var);
}
