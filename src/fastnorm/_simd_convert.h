/* Conversions between the half-precision types and float32, and the loops of the kernels that read and
 * write float16 or bfloat16 and compute in float32 (_half.pxi).  Each conversion rounds as NumPy's astype
 * (and ml_dtypes') does: to nearest, ties to even, so a half result is the float32 result rounded once.
 *
 * bfloat16 is the top half of a float32: widening is a shift; narrowing adds the rounding bias
 * 0x7FFF + (the lowest kept bit) and drops the low half (a carry into the exponent gives the next binade,
 * or inf), a NaN kept a NaN (quiet, sign kept: the bias could carry a NaN's payload into inf).
 * float16: F16C's vcvtph2ps and vcvtps2ph (round to nearest even) from ISA level 1 on, IEEE casts at
 * level 0.  Every loop here is chosen by the ISA level (_simd.h); the register paths give the bits of the
 * plain ones. */
#ifndef FASTNORM_SIMD_CONVERT_H
#define FASTNORM_SIMD_CONVERT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_simd.h"

static inline float fastnorm_bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t fastnorm_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? (u >> 16) | 0x0040u : rounded);
}

/* Scalar math: dst[i] = (float)src[i] */
FASTNORM_PLAIN(fastnorm_bf16_to_f32, (const uint16_t *src, float *dst, ptrdiff_t n), (src, dst, n))
{
    for (ptrdiff_t i = 0; i < n; i++)
        dst[i] = fastnorm_bf16_value(src[i]);
}

/* Scalar math: dst[i] = (bfloat16)src[i], rounded to nearest even */
FASTNORM_PLAIN(fastnorm_f32_to_bf16, (const float *src, uint16_t *dst, ptrdiff_t n), (src, dst, n))
{
    for (ptrdiff_t i = 0; i < n; i++)
        dst[i] = fastnorm_bf16_bits(src[i]);
}

/* The sweep of fastnorm_sweep_half on bfloat16, its conversions in registers: a plain loop that every
 * level vectorizes, the float32 operations of fastnorm_sweep_affine_f32 and fastnorm_sweep_f32. */
FASTNORM_PLAIN(fastnorm_sweep_bf16,
               (const uint16_t *x, uint16_t *y, ptrdiff_t n, float mean_hi, float scale, float shift,
                const float *restrict w, const float *restrict b),
               (x, y, n, mean_hi, scale, shift, w, b))
{
    if (!w) {
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] = fastnorm_bf16_bits((fastnorm_bf16_value(x[i]) - mean_hi) * scale + shift);
    } else if (!b) {
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] = fastnorm_bf16_bits(((fastnorm_bf16_value(x[i]) - mean_hi) * scale + shift) * w[i]);
    } else {
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] = fastnorm_bf16_bits(((fastnorm_bf16_value(x[i]) - mean_hi) * scale + shift) * w[i] + b[i]);
    }
}

/* float16 one value at a time: the _Float16 casts (IEEE, round to nearest even), or NumPy's own
 * (npy_half_to_float, npy_float_to_half) where the compiler has no _Float16. */
#if defined(__FLT16_MAX__)
static inline float fastnorm_f16_value(uint16_t h)
{
    _Float16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
}
static inline uint16_t fastnorm_f16_bits(float f)
{
    _Float16 v = (_Float16)f;
    uint16_t h;
    memcpy(&h, &v, sizeof h);
    return h;
}
#else
#include <numpy/halffloat.h>
#define fastnorm_f16_value npy_half_to_float
#define fastnorm_f16_bits npy_float_to_half
#endif

/* F16C converts 8 values an instruction (gcc does not vectorize the _Float16 casts): level 1 on; the last
 * n % 8 values through an 8-lane buffer (the libgcc routines of the _Float16 casts cost more than the run's
 * vector part for a short run). */
#if FASTNORM_X86
FASTNORM_TARGET_AVX2 static void fastnorm_f16_to_f32_avx2(const uint16_t *src, float *dst, ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    if (i < n) {
        uint16_t h[8] = {0};
        float f[8];
        memcpy(h, src + i, (size_t)(n - i) * sizeof *h);
        _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
        memcpy(dst + i, f, (size_t)(n - i) * sizeof *f);
    }
}
FASTNORM_TARGET_AVX2 static void fastnorm_f32_to_f16_avx2(const float *src, uint16_t *dst, ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        float f[8] = {0};
        uint16_t h[8];
        memcpy(f, src + i, (size_t)(n - i) * sizeof *f);
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(_mm256_loadu_ps(f), _MM_FROUND_TO_NEAREST_INT));
        memcpy(dst + i, h, (size_t)(n - i) * sizeof *h);
    }
}
#endif

static void fastnorm_f16_to_f32_generic(const uint16_t *src, float *dst, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        dst[i] = fastnorm_f16_value(src[i]);
}

static void fastnorm_f32_to_f16_generic(const float *src, uint16_t *dst, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        dst[i] = fastnorm_f16_bits(src[i]);
}

/* Scalar math: dst[i] = (float)src[i] */
FASTNORM_BY_ISA(fastnorm_f16_to_f32, (const uint16_t *src, float *dst, ptrdiff_t n), (src, dst, n), generic, avx2, avx2,
                avx2)
/* Scalar math: dst[i] = (float16)src[i], rounded to nearest even */
FASTNORM_BY_ISA(fastnorm_f32_to_f16, (const float *src, uint16_t *dst, ptrdiff_t n), (src, dst, n), generic, avx2, avx2,
                avx2)

static inline void fastnorm_widen(const uint16_t *src, float *dst, ptrdiff_t n, int bf16)
{
    if (bf16)
        fastnorm_bf16_to_f32(src, dst, n);
    else
        fastnorm_f16_to_f32(src, dst, n);
}

static inline void fastnorm_narrow(const float *src, uint16_t *dst, ptrdiff_t n, int bf16)
{
    if (bf16)
        fastnorm_f32_to_bf16(src, dst, n);
    else
        fastnorm_f32_to_f16(src, dst, n);
}

/* ---- The loops of half-precision rows: the float32 loops on a small float32 buffer in L1 -----------------
 * The half values of a run are widened into the buffer, the float32 loop runs on it, its result is narrowed
 * from it: the same float32 operations in the same order as on a float32 array, so the same bits, and no
 * float32 copy larger than the buffer. */
#define FASTNORM_HALF_RUN 512 /* values a sweep widens, computes and narrows at a time */

/* ---- The same loops with the conversions in registers, from level 1 on ------------------------------------
 * The statistics passes are the float32 ones of _simd_moments.h loading half values (the same accumulators,
 * the same operations in the same order); the sweeps are the plain loops' float32 operations 8 or 16 lanes
 * at a time (no contraction into FMA: -ffp-contract=off). */
#if FASTNORM_X86
/* 8 half values as two vectors of 4 floats: bfloat16 by interleaving zeros below each value, float16 by
 * vcvtph2ps. */
FASTNORM_TARGET_AVX2 static inline void fastnorm_load8x2_bf16(const uint16_t *p, __m128 *lo, __m128 *hi)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p), zero = _mm_setzero_si128();
    *lo = _mm_castsi128_ps(_mm_unpacklo_epi16(zero, h));
    *hi = _mm_castsi128_ps(_mm_unpackhi_epi16(zero, h));
}
FASTNORM_TARGET_AVX2 static inline void fastnorm_load8x2_f16(const uint16_t *p, __m128 *lo, __m128 *hi)
{
    *lo = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p));
    *hi = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(p + 4)));
}
FASTNORM_TARGET_AVX2 static inline __m256 fastnorm_load8_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
FASTNORM_TARGET_AVX2 static inline void fastnorm_store8_f16(uint16_t *p, __m256 v)
{
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

FASTNORM_SHIFTED_SUMS_AVX2(fastnorm_shifted_sums_bf16_avx2, uint16_t, fastnorm_load8x2_bf16, fastnorm_bf16_value)
FASTNORM_SHIFTED_SUMS_AVX2(fastnorm_shifted_sums_f16_avx2, uint16_t, fastnorm_load8x2_f16, fastnorm_f16_value)

/* 4 half values as 4 floats. */
FASTNORM_TARGET_AVX2 static inline __m128 fastnorm_load4_bf16(const uint16_t *p)
{
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)p)));
}
FASTNORM_TARGET_AVX2 static inline __m128 fastnorm_load4_f16(const uint16_t *p)
{
    return _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p));
}

FASTNORM_COLUMN_SUMS_AVX2(fastnorm_column_sums_bf16_avx2, uint16_t, fastnorm_load4_bf16, fastnorm_bf16_value)
FASTNORM_COLUMN_SUMS_AVX2(fastnorm_column_sums_f16_avx2, uint16_t, fastnorm_load4_f16, fastnorm_f16_value)

/* The sweep of fastnorm_sweep_half, 8 lanes at a time; returns the values done (the rest: the plain path). */
#define FASTNORM_SWEEP_HALF_AVX2(NAME, LOAD8, STORE8)                                                                 \
    FASTNORM_TARGET_AVX2 static inline ptrdiff_t NAME(const uint16_t *x, uint16_t *y, ptrdiff_t n, float mean_hi,     \
                                                      float scale, float shift, const float *w, const float *b)       \
    {                                                                                                                 \
        __m256 m = _mm256_set1_ps(mean_hi), sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift);                   \
        ptrdiff_t i = 0;                                                                                              \
        if (!w) {                                                                                                     \
            for (; i + 8 <= n; i += 8)                                                                                \
                STORE8(y + i, _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(LOAD8(x + i), m), sc), sh));                  \
        } else if (!b) {                                                                                              \
            for (; i + 8 <= n; i += 8)                                                                                \
                STORE8(y + i, _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(LOAD8(x + i), m), sc), sh),     \
                                            _mm256_loadu_ps(w + i)));                                                 \
        } else {                                                                                                      \
            for (; i + 8 <= n; i += 8)                                                                                \
                STORE8(y + i, _mm256_add_ps(                                                                          \
                                  _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(LOAD8(x + i), m), sc), sh), \
                                                _mm256_loadu_ps(w + i)),                                              \
                                  _mm256_loadu_ps(b + i)));                                                           \
        }                                                                                                             \
        return i;                                                                                                     \
    }
FASTNORM_SWEEP_HALF_AVX2(fastnorm_sweep_f16_avx2, fastnorm_load8_f16, fastnorm_store8_f16)

FASTNORM_TARGET_AVX512 static inline __m512 fastnorm_load16_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
FASTNORM_TARGET_AVX512 static inline __mmask16 fastnorm_store16_f16(uint16_t *p, __m512 v)
{
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    return 0;
}
FASTNORM_TARGET_AVX512 static inline __m512 fastnorm_load16_bf16(const uint16_t *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
/* vcvtneps2bf16 rounds to nearest even and quiets a NaN as fastnorm_f32_to_bf16, but reads a subnormal float
 * as zero: returns the lanes that held one (rare: results below 1.2e-38), for the caller to redo. */
FASTNORM_TARGET_AVX512_BF16 static inline __mmask16 fastnorm_store16_bf16(uint16_t *p, __m512 v)
{
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
    return _mm512_fpclass_ps_mask(v, 0x20); /* the subnormal class */
}
/* The same sweep 16 lanes at a time with AVX-512; 0 values done where a lane's store was not exact (the
 * caller then redoes the run the plain way). */
#define FASTNORM_SWEEP_HALF_AVX512(NAME, TARGET, LOAD16, STORE16)                                                      \
    TARGET static inline ptrdiff_t NAME(const uint16_t *x, uint16_t *y, ptrdiff_t n, float mean_hi, float scale,       \
                                        float shift, const float *w, const float *b)                                   \
    {                                                                                                                  \
        __m512 m = _mm512_set1_ps(mean_hi), sc = _mm512_set1_ps(scale), sh = _mm512_set1_ps(shift);                    \
        __mmask16 inexact = 0;                                                                                         \
        ptrdiff_t i = 0;                                                                                               \
        if (!w) {                                                                                                      \
            for (; i + 16 <= n; i += 16)                                                                               \
                inexact |= STORE16(y + i, _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(LOAD16(x + i), m), sc), sh));      \
        } else if (!b) {                                                                                               \
            for (; i + 16 <= n; i += 16)                                                                               \
                inexact |= STORE16(                                                                                    \
                    y + i, _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(LOAD16(x + i), m), sc), sh),        \
                                         _mm512_loadu_ps(w + i)));                                                     \
        } else {                                                                                                       \
            for (; i + 16 <= n; i += 16)                                                                               \
                inexact |= STORE16(                                                                                    \
                    y + i,                                                                                             \
                    _mm512_add_ps(_mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(LOAD16(x + i), m), sc), sh), \
                                                _mm512_loadu_ps(w + i)),                                               \
                                  _mm512_loadu_ps(b + i)));                                                            \
        }                                                                                                              \
        return inexact ? 0 : i;                                                                                        \
    }
FASTNORM_SWEEP_HALF_AVX512(fastnorm_sweep_f16_avx512, FASTNORM_TARGET_AVX512, fastnorm_load16_f16, fastnorm_store16_f16)

/* fastnorm_sweep_columns_f32's operations on half values, 16 columns at a time (ncols a multiple of 16);
 * returns whether every store was exact (otherwise the caller redoes the rows the plain way). */
#define FASTNORM_SWEEP_COLUMNS_HALF_AVX512(NAME, TARGET, LOAD16, STORE16)                                          \
    TARGET static inline int NAME(const uint16_t *x, uint16_t *y, ptrdiff_t rows, ptrdiff_t ncols, const float *p, \
                                  ptrdiff_t plen)                                                                  \
    {                                                                                                              \
        __mmask16 inexact = 0;                                                                                     \
        for (ptrdiff_t r = 0; r < rows; r++)                                                                       \
            for (ptrdiff_t c = 0; c < ncols; c += 16)                                                              \
                inexact |= STORE16(                                                                                \
                    y + r * ncols + c,                                                                             \
                    _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(LOAD16(x + r * ncols + c), _mm512_loadu_ps(p + c)),  \
                                                _mm512_loadu_ps(p + plen + c)),                                    \
                                  _mm512_loadu_ps(p + 2 * plen + c)));                                             \
        return !inexact;                                                                                           \
    }
FASTNORM_SWEEP_COLUMNS_HALF_AVX512(fastnorm_sweep_columns_f16_avx512, FASTNORM_TARGET_AVX512, fastnorm_load16_f16,
                                   fastnorm_store16_f16)
FASTNORM_SWEEP_COLUMNS_HALF_AVX512(fastnorm_sweep_columns_bf16_avx512bf16, FASTNORM_TARGET_AVX512_BF16,
                                   fastnorm_load16_bf16, fastnorm_store16_bf16)

/* fastnorm_shifted_sums_f32_avx2's accumulators two to a register: a01 holds a0 and a1 side by side (the
 * same lanes, the same additions), 16 values converted by one instruction; split at the end into the four
 * chains that the float32 pass sums in its order.  NAME_k sums K (1 or 2) rows of n values, ld apart, side
 * by side (as fastnorm_shifted_sums_k_avx512 for float32: a row alone is bound by its chains' latency),
 * prefetching as it does for K = 2: a line for each line read, in one walk past these rows, so that both
 * rows of the next pair come from the cache (a prefetch a fixed distance ahead of each row reaches only the
 * start of the next pair's second row: bench/NOTES.md, "Half precision"). */
#define FASTNORM_HALF_SUMS_AVX512(NAME, LOAD16, VALUE)                                                           \
    FASTNORM_TARGET_AVX512 __attribute__((always_inline)) static inline void NAME##_k(                           \
        const uint16_t *x, const int K, ptrdiff_t ld, ptrdiff_t n, const double *shift, double *s1, double *s2)  \
    {                                                                                                            \
        __m512d s[2], a01[2], a23[2], b01[2], b23[2];                                                            \
        for (int k = 0; k < K; k++) {                                                                            \
            s[k] = _mm512_set1_pd(shift[k]);                                                                     \
            a01[k] = a23[k] = b01[k] = b23[k] = _mm512_setzero_pd();                                             \
        }                                                                                                        \
        ptrdiff_t i = 0;                                                                                         \
        const uint16_t *ahead = x + K * ld + FASTNORM_PREFETCH_BYTES / sizeof(uint16_t);                         \
        for (; i + 16 <= n; i += 16) {                                                                           \
            for (int k = 0; k < K; k++) {                                                                        \
                if (K == 1)                                                                                      \
                    FASTNORM_PREFETCH(x + i);                                                                    \
                else                                                                                             \
                    _mm_prefetch((const char *)ahead, _MM_HINT_T0);                                              \
                ahead += 16;                                                                                     \
                __m512 f = LOAD16(x + k * ld + i);                                                               \
                __m512d d01 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(f)), s[k]);                   \
                __m512d d23 = _mm512_sub_pd(                                                                     \
                    _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1))), s[k]);    \
                a01[k] = _mm512_add_pd(a01[k], d01);                                                             \
                a23[k] = _mm512_add_pd(a23[k], d23);                                                             \
                b01[k] = _mm512_fmadd_pd(d01, d01, b01[k]);                                                      \
                b23[k] = _mm512_fmadd_pd(d23, d23, b23[k]);                                                      \
            }                                                                                                    \
        }                                                                                                        \
        for (int k = 0; k < K; k++) {                                                                            \
            __m256d a =                                                                                          \
                _mm256_add_pd(_mm256_add_pd(_mm512_castpd512_pd256(a01[k]), _mm512_extractf64x4_pd(a01[k], 1)),  \
                              _mm256_add_pd(_mm512_castpd512_pd256(a23[k]), _mm512_extractf64x4_pd(a23[k], 1))); \
            __m256d b =                                                                                          \
                _mm256_add_pd(_mm256_add_pd(_mm512_castpd512_pd256(b01[k]), _mm512_extractf64x4_pd(b01[k], 1)),  \
                              _mm256_add_pd(_mm512_castpd512_pd256(b23[k]), _mm512_extractf64x4_pd(b23[k], 1))); \
            double sa = fastnorm_hsum4(a), sb = fastnorm_hsum4(b);                                               \
            for (ptrdiff_t j = i; j < n; j++) {                                                                  \
                double d = (double)VALUE(x[k * ld + j]) - shift[k];                                              \
                sa += d;                                                                                         \
                sb += d * d;                                                                                     \
            }                                                                                                    \
            s1[k] = sa;                                                                                          \
            s2[k] = sb;                                                                                          \
        }                                                                                                        \
    }                                                                                                            \
    FASTNORM_TARGET_AVX512 static inline void NAME(const uint16_t *x, ptrdiff_t n, double shift, double *s1,     \
                                                   double *s2)                                                   \
    {                                                                                                            \
        NAME##_k(x, 1, n, n, &shift, s1, s2);                                                                    \
    }
FASTNORM_HALF_SUMS_AVX512(fastnorm_shifted_sums_f16_avx512, fastnorm_load16_f16, fastnorm_f16_value)
FASTNORM_HALF_SUMS_AVX512(fastnorm_shifted_sums_bf16_avx512, fastnorm_load16_bf16, fastnorm_bf16_value)
FASTNORM_SWEEP_HALF_AVX512(fastnorm_sweep_bf16_avx512bf16, FASTNORM_TARGET_AVX512_BF16, fastnorm_load16_bf16,
                           fastnorm_store16_bf16)

/* Per level, the register paths above for either half type (bf16: bfloat16, else float16), inlined into one
 * function a level: a short run (InstanceNorm on 8x8 maps) pays one call from the dispatch, as before it. */
FASTNORM_TARGET_AVX2 static void fastnorm_shifted_sums_half_avx2(const uint16_t *x, ptrdiff_t n, double shift, int bf16,
                                                                 double *s1, double *s2)
{
    (bf16 ? fastnorm_shifted_sums_bf16_avx2 : fastnorm_shifted_sums_f16_avx2)(x, n, shift, s1, s2);
}
FASTNORM_TARGET_AVX512 static void fastnorm_shifted_sums_half_avx512(const uint16_t *x, ptrdiff_t n, double shift,
                                                                     int bf16, double *s1, double *s2)
{
    (bf16 ? fastnorm_shifted_sums_bf16_avx512 : fastnorm_shifted_sums_f16_avx512)(x, n, shift, s1, s2);
}
FASTNORM_TARGET_AVX2 static void fastnorm_column_sums_half_avx2(const uint16_t *x, ptrdiff_t rows, ptrdiff_t ncols,
                                                                ptrdiff_t ld, float *scratch, double *s1, double *s2,
                                                                int bf16)
{
    (bf16 ? fastnorm_column_sums_bf16_avx2 : fastnorm_column_sums_f16_avx2)(x, rows, ncols, ld, scratch, s1, s2);
}
#endif

/* fastnorm_shifted_sums_f32 of n <= 2048 (BLOCK) half values. */
static void fastnorm_shifted_sums_half_generic(const uint16_t *x, ptrdiff_t n, double shift, int bf16, double *s1,
                                               double *s2)
{
    float buf[2048];
    fastnorm_widen(x, buf, n, bf16);
    fastnorm_shifted_sums_f32(buf, n, shift, s1, s2);
}
FASTNORM_BY_ISA(fastnorm_shifted_sums_half,
                (const uint16_t *x, ptrdiff_t n, double shift, int bf16, double *s1, double *s2),
                (x, n, shift, bf16, s1, s2), generic, avx2, avx512, avx512)

static inline double fastnorm_half_value(uint16_t h, int bf16)
{
    return bf16 ? fastnorm_bf16_value(h) : fastnorm_f16_value(h);
}

/* The sums of each of `rows` contiguous rows of n <= 2048 half values, shifted by its first value (as
 * fastnorm_row_sums_f32: rows of 256 values or more two at a time at level 2). */
static void fastnorm_row_sums_half_one(const uint16_t *x, ptrdiff_t rows, ptrdiff_t n, int bf16, double *s1, double *s2)
{
    for (ptrdiff_t r = 0; r < rows; r++)
        fastnorm_shifted_sums_half(x + r * n, n, fastnorm_half_value(x[r * n], bf16), bf16, s1 + r, s2 + r);
}
#if FASTNORM_X86
FASTNORM_TARGET_AVX512
__attribute__((noinline)) static void fastnorm_row_sums_half_avx512(const uint16_t *x, ptrdiff_t rows, ptrdiff_t n,
                                                                    int bf16, double *s1, double *s2)
{
    if (n < 256) {
        fastnorm_row_sums_half_one(x, rows, n, bf16, s1, s2);
        return;
    }
    ptrdiff_t r = 0;
    for (; r + 2 <= rows; r += 2) {
        const uint16_t *p = x + r * n;
        double shift[2] = {fastnorm_half_value(p[0], bf16), fastnorm_half_value(p[n], bf16)};
        if (bf16)
            fastnorm_shifted_sums_bf16_avx512_k(p, 2, n, n, shift, s1 + r, s2 + r);
        else
            fastnorm_shifted_sums_f16_avx512_k(p, 2, n, n, shift, s1 + r, s2 + r);
    }
    if (r < rows)
        fastnorm_row_sums_half_one(x + r * n, rows - r, n, bf16, s1 + r, s2 + r);
}
#endif
FASTNORM_BY_ISA(fastnorm_row_sums_half,
                (const uint16_t *x, ptrdiff_t rows, ptrdiff_t n, int bf16, double *s1, double *s2),
                (x, rows, n, bf16, s1, s2), one, one, avx512, avx512)

/* The moments of `rows` contiguous rows of n <= 2048 half values (each a block: shifted by its first value),
 * as fastnorm_row_moments_f32 gives them for the same values in float32: mean[r], var[r]. */
static void fastnorm_row_moments_half(const uint16_t *x, ptrdiff_t rows, ptrdiff_t n, int bf16, double *mean,
                                      double *var)
{
    float shift[64];
    fastnorm_row_sums_half(x, rows, n, bf16, mean, var);
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += 64) {
        ptrdiff_t count = rows - r0 < 64 ? rows - r0 : 64;
        for (ptrdiff_t r = 0; r < count; r++)
            shift[r] = (float)fastnorm_half_value(x[(r0 + r) * n], bf16);
        fastnorm_shifted_moments_f32(shift, 1, (double)n, count, mean + r0, var + r0);
    }
}

/* fastnorm_column_sums_f32 of the half values of a block of `rows` rows of ncols values, ld apart; `scratch`
 * holds the block's first row widened (the shift of the sums), and room for the whole block. */
static void fastnorm_column_sums_half_generic(const uint16_t *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld,
                                              float *scratch, double *s1, double *s2, int bf16)
{
    if (ld == ncols) /* whole rows: one block of memory */
        fastnorm_widen(x, scratch, rows * ncols, bf16);
    else
        for (ptrdiff_t i = 0; i < rows; i++)
            fastnorm_widen(x + i * ld, scratch + i * ncols, ncols, bf16);
    fastnorm_column_sums_f32(scratch, rows, ncols, ncols, scratch, s1, s2);
}
FASTNORM_BY_ISA(fastnorm_column_sums_half,
                (const uint16_t *x, ptrdiff_t rows, ptrdiff_t ncols, ptrdiff_t ld, float *scratch, double *s1,
                 double *s2, int bf16),
                (x, rows, ncols, ld, scratch, s1, s2, bf16), generic, avx2, avx2, avx2)

/* Requests the lines of p[0, bytes) into the cache (a hint: nothing where the compiler has no prefetch). */
static inline void fastnorm_prefetch_range(const void *p, ptrdiff_t bytes)
{
#if defined(__GNUC__)
    for (ptrdiff_t o = 0; o < bytes; o += 64)
        __builtin_prefetch((const char *)p + o);
#else
    (void)p, (void)bytes;
#endif
}

/* h = x + r in the half type, and t its values as float32 (what the normalization reads next), over n
 * values: the float32 sum rounded once, as NumPy adds half arrays.  h may be x or r (value i is read before
 * it is written, so the loops carry no dependence: ivdep keeps them vectorized for that case too). */
FASTNORM_PLAIN(fastnorm_add_bf16, (const uint16_t *x, const uint16_t *r, uint16_t *h, float *t, ptrdiff_t n),
               (x, r, h, t, n))
{
#pragma GCC ivdep
    for (ptrdiff_t i = 0; i < n; i++) {
        uint16_t s = fastnorm_bf16_bits(fastnorm_bf16_value(x[i]) + fastnorm_bf16_value(r[i]));
        h[i] = s;
        t[i] = fastnorm_bf16_value(s);
    }
}

static void fastnorm_add_half(const uint16_t *x, const uint16_t *r, uint16_t *h, float *t, ptrdiff_t n, int bf16)
{
    float b[FASTNORM_HALF_RUN];
    if (bf16) {
        fastnorm_add_bf16(x, r, h, t, n);
        return;
    }
    for (ptrdiff_t i = 0; i < n; i += FASTNORM_HALF_RUN) { /* float16: the conversions' F16C loops */
        ptrdiff_t m = n - i < FASTNORM_HALF_RUN ? n - i : FASTNORM_HALF_RUN;
        fastnorm_widen(x + i, t + i, m, 0);
        fastnorm_widen(r + i, b, m, 0);
        for (ptrdiff_t k = 0; k < m; k++)
            t[i + k] += b[k];
        fastnorm_narrow(t + i, h + i, m, 0);
        fastnorm_widen(h + i, t + i, m, 0);
    }
}

/* The fused sweep's epilogue (fastnorm_activate_f32: v = act(v + add)) on n float32 values of a half output
 * y, then their narrowing into y: ``add`` (or NULL) holds half values in y's layout, widened a run at a
 * time.  The float32 call's operations on the same values, so its bits, rounded once. */
static void fastnorm_narrow_fused(float *v, uint16_t *y, ptrdiff_t n, int bf16, int act, const uint16_t *add)
{
    float a[FASTNORM_HALF_RUN];
    for (ptrdiff_t i = 0; i < n; i += FASTNORM_HALF_RUN) {
        ptrdiff_t m = n - i < FASTNORM_HALF_RUN ? n - i : FASTNORM_HALF_RUN;
        if (add)
            fastnorm_widen(add + i, a, m, bf16);
        fastnorm_activate_f32(v + i, add ? a : NULL, m, act);
    }
    fastnorm_narrow(v, y, n, bf16);
}

/* y = ((x - mean_hi) * scale + shift) * w[i] (+ b[i]), or without w (NULL) y = (x - mean_hi) * scale + shift:
 * fastnorm_sweep_affine_f32 and fastnorm_sweep_f32 on half x and y; then act(y + add) where ``act`` or
 * ``add`` is given (fastnorm_narrow_fused; ``add``: half values in y's layout, or NULL).  The plain path:
 * bfloat16 by the plain loop, float16 and a fused sweep through a float32 buffer (the epilogue runs there). */
static void fastnorm_sweep_half_generic(const uint16_t *x, uint16_t *y, ptrdiff_t n, float mean_hi, float scale,
                                        float shift, const float *w, const float *b, int bf16, int act,
                                        const uint16_t *add)
{
    float buf[FASTNORM_HALF_RUN];
    int fused = act || add;
    if (bf16 && !fused) {
        fastnorm_sweep_bf16(x, y, n, mean_hi, scale, shift, w, b);
        return;
    }
    for (ptrdiff_t i = 0; i < n; i += FASTNORM_HALF_RUN) {
        ptrdiff_t m = n - i < FASTNORM_HALF_RUN ? n - i : FASTNORM_HALF_RUN;
        fastnorm_widen(x + i, buf, m, bf16);
        if (w)
            fastnorm_sweep_affine_f32(buf, buf, m, mean_hi, scale, shift, w + i, b ? b + i : NULL);
        else
            fastnorm_sweep_f32(buf, buf, m, mean_hi, scale, shift);
        if (fused)
            fastnorm_narrow_fused(buf, y + i, m, bf16, act, add ? add + i : NULL);
        else
            fastnorm_narrow(buf, y + i, m, bf16);
    }
}
#if FASTNORM_X86
/* The values from `done` on by the plain path, after a register path that did the first `done` (none for a
 * fused sweep). */
static inline void fastnorm_sweep_half_from(ptrdiff_t done, const uint16_t *x, uint16_t *y, ptrdiff_t n, float mean_hi,
                                            float scale, float shift, const float *w, const float *b, int bf16, int act,
                                            const uint16_t *add)
{
    if (done < n)
        fastnorm_sweep_half_generic(x + done, y + done, n - done, mean_hi, scale, shift, w ? w + done : NULL,
                                    b ? b + done : NULL, bf16, act, add);
}
FASTNORM_TARGET_AVX2 static void fastnorm_sweep_half_avx2(const uint16_t *x, uint16_t *y, ptrdiff_t n, float mean_hi,
                                                          float scale, float shift, const float *w, const float *b,
                                                          int bf16, int act, const uint16_t *add)
{
    ptrdiff_t done = bf16 || act || add ? 0 : fastnorm_sweep_f16_avx2(x, y, n, mean_hi, scale, shift, w, b);
    fastnorm_sweep_half_from(done, x, y, n, mean_hi, scale, shift, w, b, bf16, act, add);
}
FASTNORM_TARGET_AVX512 static void fastnorm_sweep_half_avx512(const uint16_t *x, uint16_t *y, ptrdiff_t n,
                                                              float mean_hi, float scale, float shift, const float *w,
                                                              const float *b, int bf16, int act, const uint16_t *add)
{
    ptrdiff_t done = bf16 || act || add ? 0 : fastnorm_sweep_f16_avx512(x, y, n, mean_hi, scale, shift, w, b);
    fastnorm_sweep_half_from(done, x, y, n, mean_hi, scale, shift, w, b, bf16, act, add);
}
FASTNORM_TARGET_AVX512_BF16 static void fastnorm_sweep_half_avx512bf16(const uint16_t *x, uint16_t *y, ptrdiff_t n,
                                                                       float mean_hi, float scale, float shift,
                                                                       const float *w, const float *b, int bf16,
                                                                       int act, const uint16_t *add)
{
    ptrdiff_t done = 0;
    if (!act && !add)
        done =
            (bf16 ? fastnorm_sweep_bf16_avx512bf16 : fastnorm_sweep_f16_avx512)(x, y, n, mean_hi, scale, shift, w, b);
    fastnorm_sweep_half_from(done, x, y, n, mean_hi, scale, shift, w, b, bf16, act, add);
}
#endif
FASTNORM_BY_ISA(fastnorm_sweep_half,
                (const uint16_t *x, uint16_t *y, ptrdiff_t n, float mean_hi, float scale, float shift, const float *w,
                 const float *b, int bf16, int act, const uint16_t *add),
                (x, y, n, mean_hi, scale, shift, w, b, bf16, act, add), generic, avx2, avx512, avx512bf16)

/* The columns of [rows, ncols] with per-column factors (fastnorm_sweep_columns_f32, p of 3 * plen) on half
 * values: rows widened into ``scratch`` (rows * ncols floats), swept there, narrowed (through the epilogue
 * where ``act`` or ``add`` is given, as fastnorm_sweep_half); or, without an epilogue, 16 columns at a time
 * in registers where ncols is a multiple of 16 (float16 from level 2, bfloat16 at level 3). */
static void fastnorm_sweep_columns_half_generic(const uint16_t *x, uint16_t *y, ptrdiff_t rows, ptrdiff_t ncols,
                                                const float *p, ptrdiff_t plen, float *scratch, int bf16, int act,
                                                const uint16_t *add)
{
    fastnorm_widen(x, scratch, rows * ncols, bf16);
    fastnorm_sweep_columns_f32(scratch, scratch, rows, ncols, p, plen);
    if (act || add)
        fastnorm_narrow_fused(scratch, y, rows * ncols, bf16, act, add);
    else
        fastnorm_narrow(scratch, y, rows * ncols, bf16);
}
#if FASTNORM_X86
FASTNORM_TARGET_AVX512 static void fastnorm_sweep_columns_half_avx512(const uint16_t *x, uint16_t *y, ptrdiff_t rows,
                                                                      ptrdiff_t ncols, const float *p, ptrdiff_t plen,
                                                                      float *scratch, int bf16, int act,
                                                                      const uint16_t *add)
{
    if (act || add || bf16 || ncols % 16 || !fastnorm_sweep_columns_f16_avx512(x, y, rows, ncols, p, plen))
        fastnorm_sweep_columns_half_generic(x, y, rows, ncols, p, plen, scratch, bf16, act, add);
}
FASTNORM_TARGET_AVX512_BF16 static void
fastnorm_sweep_columns_half_avx512bf16(const uint16_t *x, uint16_t *y, ptrdiff_t rows, ptrdiff_t ncols, const float *p,
                                       ptrdiff_t plen, float *scratch, int bf16, int act, const uint16_t *add)
{
    if (act || add || ncols % 16 ||
        !(bf16 ? fastnorm_sweep_columns_bf16_avx512bf16 : fastnorm_sweep_columns_f16_avx512)(x, y, rows, ncols, p,
                                                                                             plen))
        fastnorm_sweep_columns_half_generic(x, y, rows, ncols, p, plen, scratch, bf16, act, add);
}
#endif
FASTNORM_BY_ISA(fastnorm_sweep_columns_half,
                (const uint16_t *x, uint16_t *y, ptrdiff_t rows, ptrdiff_t ncols, const float *p, ptrdiff_t plen,
                 float *scratch, int bf16, int act, const uint16_t *add),
                (x, y, rows, ncols, p, plen, scratch, bf16, act, add), generic, generic, avx512, avx512bf16)

#endif
