/* The innermost loops of the kernels, in C for what Cython cannot express:
 *
 * 1. gcc does not vectorize a floating-point reduction written in Cython.  Vectorizing a reduction means
 *    summing in SIMD lanes, a reassociation that the compiler makes only when told to.  "omp simd
 *    reduction" (and the fixed-width tile of accumulators below) tells it for these loops alone: never
 *    -ffast-math, which would also undo the compensated subtraction of the mean elsewhere.  The lane count
 *    is that of the ISA level in force, so results are the same on every call and for every thread count.
 * 2. Per-ISA code, one mechanism: an ISA level chosen once when the module is loaded, while the module
 *    itself stays built for the baseline ISA.  The levels are what the loops use:
 *      0 FASTNORM_ISA_GENERIC      the baseline (SSE2)
 *      1 FASTNORM_ISA_AVX2         AVX2, FMA, F16C
 *      2 FASTNORM_ISA_AVX512       level 1 and AVX-512 F, BW, VL, DQ
 *      3 FASTNORM_ISA_AVX512_BF16  level 2 and AVX512-BF16 (one instruction: float32 to bfloat16)
 *    fastnorm_select_isa(level) sets fastnorm_isa, the lower of `level` and the CPU's; the module selects
 *    3 when loaded, and tests select each lower level (_kernels.set_isa) to run every level's code on one
 *    machine.  Every loop with code per level is called through FASTNORM_BY_ISA, which names the variant
 *    that each level calls.  The variants come in two kinds, compiled with the same FASTNORM_TARGET_* per
 *    level:
 *    - FASTNORM_PLAIN: a plain C loop, written once, compiled for levels 0, 1 and 2 (NAME_generic,
 *      NAME_avx2, NAME_avx512).  gcc's target_clones would compile the same variants, but the loader would
 *      pick one by the CPU alone, beyond a test's reach: a machine with AVX-512 would never run the others.
 *    - hand-written twins with intrinsics (NAME_avx2, NAME_avx512, NAME_avx512bf16), where the plain loop
 *      is slower than the memory: the float32 statistics passes (bench/NOTES.md, "AVX2+FMA statistics
 *      passes") and the half-precision loops, which convert in registers.
 *    Elementwise sweeps give the same bits at every level (no contraction into FMA: -ffp-contract=off), and
 *    so do the twins of one loop at levels 1 to 3 (the same lanes summed in the same order); the plain
 *    reductions' bits depend on the level's lane count, and level 0's statistics passes sum in another
 *    order than the twins.
 *
 * The loops by concept: _simd_moments.h (shifted sums of blocks and columns), _simd_sweeps.h (the forward
 * sweeps, cached and streamed), _simd_backward.h (the backward's sums and dx sweeps, the in-place check),
 * _simd_activation.h (the activation and add of a fused sweep), _simd_convert.h (float16 and bfloat16).
 * Each loop's comment gives its plain scalar form. */
#ifndef FASTNORM_SIMD_H
#define FASTNORM_SIMD_H

#include <stddef.h>
#include <string.h>

enum { FASTNORM_ISA_GENERIC = 0, FASTNORM_ISA_AVX2 = 1, FASTNORM_ISA_AVX512 = 2, FASTNORM_ISA_AVX512_BF16 = 3 };

/* The level in force: set by fastnorm_select_isa, read by every FASTNORM_BY_ISA call. */
static int fastnorm_isa = FASTNORM_ISA_GENERIC;

/* FASTNORM_NO_ISA: level 0 only, for compilers without gcc's target attributes. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(FASTNORM_NO_ISA)
#define FASTNORM_X86 1
#include <immintrin.h>
#include <stdint.h>
#define FASTNORM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FASTNORM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define FASTNORM_TARGET_AVX512_BF16 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

/* The highest level this CPU (and its OS: __builtin_cpu_supports checks that the registers are saved) runs. */
static int fastnorm_cpu_isa(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
        return FASTNORM_ISA_GENERIC;
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq"))
        return FASTNORM_ISA_AVX2;
    return __builtin_cpu_supports("avx512bf16") ? FASTNORM_ISA_AVX512_BF16 : FASTNORM_ISA_AVX512;
}

/* NAME PARAMS calls NAME_L0, NAME_L1, NAME_L2 or NAME_L3 (ARGS), the variant of the level in force, through a
 * table indexed by the level; a loop without a variant of its own at a level gives the suffix of the one
 * below.  A caller holds one indirect call, as to a loader-resolved function: a switch inlined there took
 * registers from the caller's own loops with its four calls (bench/NOTES.md, "One ISA level for the C
 * loops"). */
#define FASTNORM_BY_ISA(NAME, PARAMS, ARGS, L0, L1, L2, L3)                                             \
    static void(*const NAME##_by_isa[4]) PARAMS = {NAME##_##L0, NAME##_##L1, NAME##_##L2, NAME##_##L3}; \
    static inline void NAME PARAMS                                                                      \
    {                                                                                                   \
        NAME##_by_isa[fastnorm_isa] ARGS;                                                               \
    }

/* A plain loop at levels 0 to 2: written after FASTNORM_PLAIN(NAME, PARAMS, ARGS) as the body of NAME_plain,
 * which each variant inlines (so that the compiler vectorizes it for that variant's target). */
#define FASTNORM_PLAIN(NAME, PARAMS, ARGS)                                            \
    static inline __attribute__((always_inline)) void NAME##_plain PARAMS;            \
    __attribute__((noinline)) static void NAME##_generic PARAMS                       \
    {                                                                                 \
        NAME##_plain ARGS;                                                            \
    }                                                                                 \
    FASTNORM_TARGET_AVX2 __attribute__((noinline)) static void NAME##_avx2 PARAMS     \
    {                                                                                 \
        NAME##_plain ARGS;                                                            \
    }                                                                                 \
    FASTNORM_TARGET_AVX512 __attribute__((noinline)) static void NAME##_avx512 PARAMS \
    {                                                                                 \
        NAME##_plain ARGS;                                                            \
    }                                                                                 \
    FASTNORM_BY_ISA(NAME, PARAMS, ARGS, generic, avx2, avx512, avx512)                \
    static inline __attribute__((always_inline)) void NAME##_plain PARAMS
/* The same loop at level 0 alone, NAME_generic: for the loops whose twins serve the other levels. */
#define FASTNORM_BASELINE(NAME, PARAMS, ARGS) __attribute__((noinline)) static void NAME##_generic PARAMS

#define FASTNORM_PREFETCH_BYTES 2048
#define FASTNORM_PREFETCH(p) _mm_prefetch((const char *)((uintptr_t)(p) + FASTNORM_PREFETCH_BYTES), _MM_HINT_T0)

FASTNORM_TARGET_AVX2 static inline double fastnorm_hsum4(__m256d v)
{
    double t[4];
    _mm256_storeu_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
}

FASTNORM_TARGET_AVX2 static inline void fastnorm_add_to_doubles(double *acc, __m256 v)
{
    _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}

/* The four fastnorm_hsum4 of a, b, c, d, as the four lanes of one vector: the same additions in the same
 * order, so the same bits, without a trip through memory for each. */
FASTNORM_TARGET_AVX2 static inline __m256d fastnorm_hsum4x4(__m256d a, __m256d b, __m256d c, __m256d d)
{
    __m256d ab = _mm256_hadd_pd(a, b), cd = _mm256_hadd_pd(c, d); /* a0+a1, b0+b1, a2+a3, b2+b3 */
    return _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20), _mm256_permute2f128_pd(ab, cd, 0x31));
}

/* The 8 float lanes of v widened to double and added pairwise into 4 lanes. */
FASTNORM_TARGET_AVX2 static inline __m256d fastnorm_widen_pairs(__m256 v)
{
    return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}
#else
#define FASTNORM_X86 0
static int fastnorm_cpu_isa(void)
{
    return FASTNORM_ISA_GENERIC;
}
#define FASTNORM_BY_ISA(NAME, PARAMS, ARGS, L0, L1, L2, L3) \
    static inline void NAME PARAMS                          \
    {                                                       \
        NAME##_##L0 ARGS;                                   \
    }
#define FASTNORM_PLAIN(NAME, PARAMS, ARGS) static void NAME PARAMS
#define FASTNORM_BASELINE(NAME, PARAMS, ARGS) static void NAME##_generic PARAMS
#endif

/* Sets the level in force to the lower of `level` and the CPU's (not while kernels run); returns it. */
static int fastnorm_select_isa(int level)
{
    int cpu = fastnorm_cpu_isa();
    fastnorm_isa = level < FASTNORM_ISA_GENERIC ? FASTNORM_ISA_GENERIC : level < cpu ? level : cpu;
    return fastnorm_isa;
}

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
