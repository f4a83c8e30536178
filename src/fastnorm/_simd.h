/* The innermost loops of the kernels, in C for what Cython cannot express:
 *
 * 1. gcc does not vectorize a floating-point reduction written in Cython.  Vectorizing a reduction means
 *    summing in SIMD lanes, a reassociation that the compiler makes only when told to.  "omp simd
 *    reduction" (and the fixed-width tile of accumulators below) tells it for these loops alone: never
 *    -ffast-math, which would also undo the compensated subtraction of the mean elsewhere.  The lane count
 *    is fixed when the module is loaded, so results are the same on every call and for every thread count.
 * 2. Per-ISA code, chosen once when the module is loaded, while the module itself stays built for the
 *    baseline ISA.  Two forms of one idea remain, for a reason each:
 *    - FASTNORM_CLONES (gcc's target_clones): a plain C loop compiled once per ISA (AVX-512, AVX2,
 *      baseline) from one source, the loader picking the clone.  Every loop has this form.
 *    - FASTNORM_BY_ISA: the four float32 statistics passes whose plain loops run at about 60% of the read
 *      bandwidth have a hand-written AVX2+FMA twin (intrinsics, which cannot be cloned from a plain
 *      source), picked by a flag that fastnorm_select_isa sets at load time; tests turn the flag off to
 *      check the plain loops on the same machine, which a loader's choice could not allow.
 *    Elementwise sweeps give the same bits in every variant (no contraction into FMA: -ffp-contract=off).
 *
 * The loops by concept: _simd_moments.h (shifted sums of blocks and columns), _simd_sweeps.h (the forward
 * sweeps, cached and streamed), _simd_backward.h (the backward's sums and dx sweeps, the in-place check),
 * _simd_activation.h (the activation and add of a fused sweep).
 * Each loop's comment gives its plain scalar form. */
#ifndef FASTNORM_SIMD_H
#define FASTNORM_SIMD_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(FASTNORM_NO_CLONES)
#define FASTNORM_CLONES __attribute__((target_clones("avx512f", "avx2", "default"))) __attribute__((noinline))
#else
#define FASTNORM_CLONES
#endif

/* ---- float32 statistics passes for CPUs with AVX2 and FMA ------------------------------------------------
 * The statistics pass reads x from memory with little arithmetic per load, and written as plain C it runs
 * at about 60% of the read bandwidth: two accumulator chains per sum (their latency), the float -> double
 * conversions and the unfused d*d leave too few loads in flight.  Here: four independent chains per sum,
 * d*d fused into the sum of squares, and a software prefetch 2 KiB ahead (bench/NOTES.md, "AVX2+FMA
 * statistics passes").
 * Chosen once at load time, so every call on a machine takes the same path and gives the same bits. */
static int fastnorm_avx2_fma = 0;
/* The AVX-512 twins of some of those passes (_simd_moments.h): the same lanes summed in the same order, so
 * the same bits, with half the instructions; used where the CPU has AVX-512F and the AVX2+FMA passes are
 * on (fastnorm_select_isa's `wide`, for tests that compare the two on one machine). */
static int fastnorm_avx512 = 0;

#if defined(__GNUC__) && defined(__x86_64__) && !defined(FASTNORM_NO_CLONES)
#define FASTNORM_AVX2 1
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

__attribute__((target("avx2,fma"))) static inline void fastnorm_add_to_doubles(double *acc, __m256 v)
{
    _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}

/* The four fastnorm_hsum4 of a, b, c, d, as the four lanes of one vector: the same additions in the same
 * order, so the same bits, without a trip through memory for each. */
__attribute__((target("avx2,fma"))) static inline __m256d fastnorm_hsum4x4(__m256d a, __m256d b, __m256d c, __m256d d)
{
    __m256d ab = _mm256_hadd_pd(a, b), cd = _mm256_hadd_pd(c, d); /* a0+a1, b0+b1, a2+a3, b2+b3 */
    return _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20), _mm256_permute2f128_pd(ab, cd, 0x31));
}

/* The 8 float lanes of v widened to double and added pairwise into 4 lanes. */
__attribute__((target("avx2,fma"))) static inline __m256d fastnorm_widen_pairs(__m256 v)
{
    return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}
/* Enables the AVX2+FMA passes where the CPU has both (on = 0 forces the generic ones, for measurements
 * and tests; not while kernels run), and their AVX-512 twins where it also has AVX-512F and `wide` is set.
 * Returns whether the AVX2+FMA passes are in use. */
static int fastnorm_select_isa(int on, int wide)
{
    __builtin_cpu_init();
    fastnorm_avx2_fma = on && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    fastnorm_avx512 = fastnorm_avx2_fma && wide && __builtin_cpu_supports("avx512f");
    return fastnorm_avx2_fma;
}

/* NAME(PARAMS) calls NAME_avx2 where fastnorm_select_isa enabled the AVX2+FMA passes, NAME_generic
 * otherwise. */
#define FASTNORM_BY_ISA(NAME, PARAMS, ARGS) \
    static inline void NAME PARAMS          \
    {                                       \
        if (fastnorm_avx2_fma)              \
            NAME##_avx2 ARGS;               \
        else                                \
            NAME##_generic ARGS;            \
    }
#else
#define FASTNORM_AVX2 0
static int fastnorm_select_isa(int on, int wide)
{
    (void)on;
    (void)wide;
    return 0;
}
#define FASTNORM_BY_ISA(NAME, PARAMS, ARGS) \
    static inline void NAME PARAMS          \
    {                                       \
        NAME##_generic ARGS;                \
    }
#endif

/* Streaming variants for outputs larger than the caches: non-temporal stores write y without first
 * reading its lines into the cache (a third of the memory traffic of a normalization).  The arithmetic
 * is the same IEEE operations in the same order, so the bits are those of the cached sweeps.  The
 * stores are weakly ordered: the kernel that made them calls fastnorm_store_fence() on each of its
 * threads before it returns. */
#if defined(__SSE2__)
#include <emmintrin.h>
#include <stdint.h>
#define FASTNORM_HAVE_STREAM 1
static void fastnorm_store_fence(void)
{
    _mm_sfence();
}
/* Every store to a streamed output is non-temporal, the unaligned ends of a run included, 4 bytes at a
 * time: a line written partly by non-temporal and partly by ordinary stores (the end of one run, the
 * start of the next) is flushed to memory and read back for each (bench/NOTES.md, "Streamed stores"). */
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
#define FASTNORM_STREAM1(T, P, VALUE)               \
    do {                                            \
        T v_ = (VALUE);                             \
        fastnorm_stream_words((P), &v_, sizeof v_); \
    } while (0)
#else
#define FASTNORM_HAVE_STREAM 0
static void fastnorm_store_fence(void)
{
}
static void fastnorm_copy_stream(char *dst, const char *src, size_t n)
{
    memcpy(dst, src, n);
}
#endif

#include "_simd_moments.h"
#include "_simd_sweeps.h"
#include "_simd_backward.h"
#include "_simd_activation.h"

#endif
