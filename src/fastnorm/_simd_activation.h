/* The epilogue of a fused sweep (included by _simd.h): v = act(v + add) over a chunk of normalized values
 * that the sweep has just written (in L1), and the backward's dz = dy * act'(z).  Each activation is
 * written once per precision as a function of one value (its scalar formula beside it), the loops once for
 * both precisions.  relu and relu6 are compares.  float32 (and float16/bfloat16, computed in float32): the
 * others are built from the branch-free exp below, so that gcc vectorizes the chunk loops at every level
 * (libm's expf, erff and tanhf are a call per value, dearer than the whole sweep: bench/NOTES.md
 * "Vectorized activations").  float64 calls libm (exp, erf, tanh).  NaN stays NaN.
 * The codes are those of fastnorm._validation.ACTIVATIONS (1-based; 0: none). */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum {
    FASTNORM_ACT_NONE = 0,
    FASTNORM_ACT_RELU = 1,      /* max(z, 0) */
    FASTNORM_ACT_RELU6 = 2,     /* min(max(z, 0), 6) */
    FASTNORM_ACT_SILU = 3,      /* z / (1 + exp(-z)) */
    FASTNORM_ACT_GELU = 4,      /* z / 2 * (1 + erf(z / sqrt(2))) */
    FASTNORM_ACT_GELU_TANH = 5, /* z / 2 * (1 + tanh(sqrt(2 / pi) * (z + 0.044715 z**3))) */
    FASTNORM_ACT_SIGMOID = 6,   /* 1 / (1 + exp(-z)) */
    FASTNORM_ACT_TANH = 7       /* tanh(z) */
};

#if defined(__GNUC__)
#define FASTNORM_INLINE __attribute__((always_inline)) static inline
#else
#define FASTNORM_INLINE static inline
#endif

/* ---- float32 ------------------------------------------------------------------------------------------
 * Written so that gcc vectorizes them once inlined into a loop: IEEE operations, clamps and selects (no
 * branch, no table, no call; copysignf and fabsf are bit masks), the power of two built from the bits.
 * Every ISA level does the same operations (no FMA: -ffp-contract=off), so every level gives the same bits.
 * Each activation is written through e = exp(-|w|) <= 1, the symmetric forms (sigmoid(w) = 1 / (1 + e) for
 * w >= 0, e / (1 + e) below, and z Phi(z) through erfc), so nothing cancels and nothing overflows; e is
 * kept as a mantissa m and a power 2**k until the last multiply, so tails that end in the subnormals are
 * rounded once.  Measured max error against float64 math over every float32 (subnormals, +-inf and NaN
 * included): silu 3.19, gelu 3.32, gelu_tanh 3.35, sigmoid 2.40, tanh 1.51 ulp; the derivatives within
 * 3.85 * 2**-24 (absolute: they cross 0).  tests/test_activation_accuracy.py holds the bounds (3.5 ulp,
 * 4 * 2**-24). */

FASTNORM_INLINE uint32_t fastnorm_bits_f32(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

FASTNORM_INLINE float fastnorm_from_bits_f32(uint32_t u)
{
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* c ? a : b by the bits.  gcc keeps a select whose arms compute as a branch (their operations might trap,
 * -ftrapping-math), which stops the vectorizer; a select of bits is plain arithmetic. */
FASTNORM_INLINE float fastnorm_pick_f32(int c, float a, float b)
{
    uint32_t m = (uint32_t)0 - (uint32_t)(c != 0);
    return fastnorm_from_bits_f32((fastnorm_bits_f32(a) & m) | (fastnorm_bits_f32(b) & ~m));
}

/* v clamped to [-c, c]; NaN stays NaN */
FASTNORM_INLINE float fastnorm_clamp_f32(float v, float c)
{
    return fastnorm_pick_f32(v < -c, -c, fastnorm_pick_f32(v > c, c, v));
}

/* v * 2**k for k in [-252, 254], by two normal powers of two: v * 2**h is exact for the v it gets (|v| well
 * above 2**-46), so the product is rounded once, also into the subnormals. */
FASTNORM_INLINE float fastnorm_ldexp_f32(float v, int32_t k)
{
    int32_t h = k >> 1;
    return v * fastnorm_from_bits_f32((uint32_t)(h + 127) << 23) *
           fastnorm_from_bits_f32((uint32_t)(k - h + 127) << 23);
}

/* exp(hi + lo) = m * 2**k (Cephes' expf): k = round((hi + lo) / ln 2) by the shifter (adding 1.5 * 2**23
 * rounds to an integer, which then lies in the low bits), r = hi + lo - k ln 2 in [-ln 2 / 2, ln 2 / 2] with
 * ln 2 in two parts (k * 0.693359375 and hi - that are exact) and lo added last, where it is exact enough:
 * so hi + lo may be an argument that float32 cannot hold (-z**2 / 2 in gelu).  m = 0 below -110, where
 * every product it enters underflows (so no clamped argument leaves a trace); hi + lo above 88 overflows
 * (m * 2**k = inf); NaN gives NaN. */
FASTNORM_INLINE float fastnorm_exp_parts_f32(float hi, float lo, int32_t *k)
{
    const float shifter = 12582912.0f;
    float x = hi + lo;
    float c = fastnorm_pick_f32(x < -110.0f, -110.0f, fastnorm_pick_f32(x > 88.0f, 88.0f, x)); /* NaN stays */
    float t = c * 1.44269504088896341f + shifter;
    float n = t - shifter;
    *k = (int32_t)(fastnorm_bits_f32(t) - fastnorm_bits_f32(shifter));
    float r = ((hi - n * 0.693359375f) - n * -2.12194440e-4f) + lo;
    /* clang-format off */
    float p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r + 1.0f;
    /* clang-format on */
    return fastnorm_pick_f32(x < -110.0f, 0.0f, p);
}

/* sigmoid(wh + wl) = q * 2**k (the return value q); *e = exp(-|w|) = m 2**j rounded.  w >= 0: q = 1 / (1 + e),
 * k = 0; below: q = m / (1 + e), k = j. */
FASTNORM_INLINE float fastnorm_sigmoid_parts_f32(float wh, float wl, int32_t *k, float *e)
{
    int32_t j;
    int below = wh < 0.0f;
    float m = fastnorm_exp_parts_f32(-fabsf(wh), fastnorm_pick_f32(below, wl, -wl), &j);
    *e = fastnorm_ldexp_f32(m, j);
    *k = (int32_t)((uint32_t)j & ((uint32_t)0 - (uint32_t)below));
    return fastnorm_pick_f32(below, m, 1.0f) / (1.0f + *e);
}

/* The argument of gelu_tanh's sigmoid, 2 sqrt(2 / pi) (z + 0.044715 z**3), in double (exact to far below a
 * float's ulp, which the exponential of a large argument would magnify), split into a float pair; z clamped
 * to 1e4, where the sigmoid is already 0 or 1 and the cube does not overflow. */
FASTNORM_INLINE float fastnorm_gelu_tanh_arg_f32(float z, float *lo)
{
    double d = fastnorm_clamp_f32(z, 1e4f);
    d = d * (1.5957691216057308 + 0.07135481627260025 * d * d);
    float hi = (float)d;
    *lo = (float)(d - hi);
    return hi;
}

/* Phi(-|z|) = erfc(x) / 2 = q * 2**k (the normal distribution's tail), x = |z| / sqrt 2:
 * erfc(x) = t exp(-x**2 + h(t)), t = 1 / (1 + x / 2) (the form of Numerical Recipes' erfcc), h a polynomial
 * in t - 0.58 fitted to ln(erfc(x) / t) + x**2 on t in [0.16, 1] (x up to 10.5, beyond which Phi underflows
 * in every use: m = 0 there), fit error 2**-27 (bench/activation_fits.py).  t and the exponent in double,
 * passed to the exp as a float pair: a float t would carry its rounding into h (up to 4 ulp), and -x**2 its
 * own, magnified by the exponential (200 ulp at x = 10).  *g = exp(-z**2 / 2) (for the density) when g is
 * not NULL. */
FASTNORM_INLINE float fastnorm_normal_tail_f32(float z, int32_t *k, float *g)
{
    float a = fabsf(z);
    a = fastnorm_pick_f32(a > 16.0f, 16.0f, a);
    double t = 1.0 / (1.0 + a * 0.35355339059327376), u = t - 0.58;
    /* clang-format off */
    double h = (((((((((-0.14024397612093234 * u + 0.14883038263704476) * u + 0.13668730263469617) * u -
                      0.24849729907065521) * u - 0.046721906525485003) * u + 0.29617349011005978) * u -
                   0.039631572353095113) * u - 0.40690110190118828) * u + 0.094763451439488167) * u +
                1.3681188459900762) * u - 0.56315678858717233;
    /* clang-format on */
    double d = -0.5 * (double)a * (double)a, e = d + h;
    float hi = (float)e, lo = (float)(e - hi);
    if (g) {
        int32_t j;
        float dh = (float)d, m = fastnorm_exp_parts_f32(dh, (float)(d - dh), &j);
        *g = fastnorm_ldexp_f32(m, j);
    }
    return 0.5f * (float)t * fastnorm_exp_parts_f32(hi, lo, k);
}

/* silu(z) = z sigmoid(z) */
FASTNORM_INLINE float fastnorm_silu_f32(float z)
{
    int32_t k;
    float e, q = fastnorm_sigmoid_parts_f32(z, 0.0f, &k, &e);
    return fastnorm_ldexp_f32(z * q, k);
}

/* gelu(z) = z Phi(z): z Phi(-|z|) below 0, z (1 - Phi(-|z|)) above */
FASTNORM_INLINE float fastnorm_gelu_f32(float z)
{
    int32_t k;
    float q = fastnorm_normal_tail_f32(z, &k, NULL);
    return fastnorm_pick_f32(z < 0.0f, fastnorm_ldexp_f32(z * q, k), z * (1.0f - fastnorm_ldexp_f32(q, k)));
}

/* gelu_tanh(z) = z (1 + tanh(w / 2)) / 2 = z sigmoid(w), w = 2 sqrt(2 / pi) (z + 0.044715 z**3) */
FASTNORM_INLINE float fastnorm_gelu_tanh_f32(float z)
{
    int32_t k;
    float lo, hi = fastnorm_gelu_tanh_arg_f32(z, &lo);
    float e, q = fastnorm_sigmoid_parts_f32(hi, lo, &k, &e);
    return fastnorm_ldexp_f32(z * q, k);
}

FASTNORM_INLINE float fastnorm_sigmoid_f32(float z)
{
    int32_t k;
    float e, q = fastnorm_sigmoid_parts_f32(z, 0.0f, &k, &e);
    return fastnorm_ldexp_f32(q, k);
}

/* tanh(|z|): below 0.625 |z| + |z|**3 P(z**2) (P fitted as Cephes' tanhf's, bench/activation_fits.py),
 * above (1 - e) / (1 + e), e = exp(-2 |z|); z's sign put back (so -0.0 stays -0.0). */
FASTNORM_INLINE float fastnorm_tanh_f32(float z)
{
    int32_t k;
    float a = fabsf(z), s = a * a;
    /* clang-format off */
    float small = a + a * s * ((((-5.690127611e-03f * s + 2.062455751e-02f) * s - 5.373476446e-02f) * s +
                                1.333137453e-01f) * s - 3.333327770e-01f);
    /* clang-format on */
    float m = fastnorm_exp_parts_f32(-2.0f * a, 0.0f, &k), e = fastnorm_ldexp_f32(m, k);
    return copysignf(fastnorm_pick_f32(a < 0.625f, small, (1.0f - e) / (1.0f + e)), z);
}

/* The derivatives, each from the same parts as its activation.  sigmoid'(w) = e / (1 + e)**2 for
 * either sign of w (no 1 - s to cancel). */
FASTNORM_INLINE float fastnorm_silu_grad_f32(float z) /* sigmoid(z) + z sigmoid'(z) */
{
    int32_t k;
    float e, q = fastnorm_sigmoid_parts_f32(z, 0.0f, &k, &e), a = 1.0f / (1.0f + e);
    return fastnorm_ldexp_f32(q, k) + z * (e * a * a);
}

FASTNORM_INLINE float fastnorm_gelu_grad_f32(float z) /* Phi(z) + z phi(z), phi(z) = exp(-z**2 / 2) / sqrt(2 pi) */
{
    int32_t k;
    float g, q = fastnorm_normal_tail_f32(z, &k, &g), p = fastnorm_ldexp_f32(q, k);
    return fastnorm_pick_f32(z < 0.0f, p, 1.0f - p) + z * (g * 0.398942280401432678f);
}

/* sigmoid(w) + z sigmoid'(w) w'(z), w'(z) = 2 sqrt(2 / pi) (1 + 3 * 0.044715 z**2), z clamped to 1e4 in w'
 * (sigmoid'(w) is 0 there, and w' would overflow) */
FASTNORM_INLINE float fastnorm_gelu_tanh_grad_f32(float z)
{
    int32_t k;
    float lo, hi = fastnorm_gelu_tanh_arg_f32(z, &lo);
    float e, q = fastnorm_sigmoid_parts_f32(hi, lo, &k, &e), a = 1.0f / (1.0f + e);
    float c = fastnorm_clamp_f32(z, 1e4f);
    return fastnorm_ldexp_f32(q, k) + z * (e * a * a) * (1.5957691216057308f * (1.0f + 0.134145f * c * c));
}

FASTNORM_INLINE float fastnorm_sigmoid_grad_f32(float z)
{
    int32_t k;
    float e, a;
    fastnorm_sigmoid_parts_f32(z, 0.0f, &k, &e);
    a = 1.0f / (1.0f + e);
    return e * a * a;
}

FASTNORM_INLINE float fastnorm_tanh_grad_f32(float z) /* 1 - tanh(z)**2 = 4 e / (1 + e)**2, e = exp(-2 |z|) */
{
    int32_t k;
    float m = fastnorm_exp_parts_f32(-2.0f * fabsf(z), 0.0f, &k), e = fastnorm_ldexp_f32(m, k), a = 1.0f / (1.0f + e);
    return 4.0f * e * a * a;
}

/* ---- float64: libm ------------------------------------------------------------------------------------- */
#define FASTNORM_K0 0.79788456080286535588 /* sqrt(2 / pi) */
#define FASTNORM_K1 0.044715
FASTNORM_INLINE double fastnorm_silu_f64(double z)
{
    return z / (1.0 + exp(-z));
}
FASTNORM_INLINE double fastnorm_gelu_f64(double z)
{
    return 0.5 * z * (1.0 + erf(z * 0.70710678118654752440));
}
FASTNORM_INLINE double fastnorm_gelu_tanh_f64(double z)
{
    return 0.5 * z * (1.0 + tanh(FASTNORM_K0 * (z + FASTNORM_K1 * z * z * z)));
}
FASTNORM_INLINE double fastnorm_sigmoid_f64(double z)
{
    return 1.0 / (1.0 + exp(-z));
}
FASTNORM_INLINE double fastnorm_tanh_f64(double z)
{
    return tanh(z);
}
/* s (1 + z (1 - s)), s = sigmoid(z) */
FASTNORM_INLINE double fastnorm_silu_grad_f64(double z)
{
    double s = 1.0 / (1.0 + exp(-z));
    return s * (1.0 + z * (1.0 - s));
}
FASTNORM_INLINE double fastnorm_gelu_grad_f64(double z)
{
    return 0.5 * (1.0 + erf(z * 0.70710678118654752440)) + z * 0.39894228040143267794 * exp(-0.5 * z * z);
}
/* (1 + t) / 2 + z / 2 (1 - t**2) sqrt(2 / pi) (1 + 3 * 0.044715 z**2), t = tanh(sqrt(2 / pi) (z + 0.044715 z**3)) */
FASTNORM_INLINE double fastnorm_gelu_tanh_grad_f64(double z)
{
    double t = tanh(FASTNORM_K0 * (z + FASTNORM_K1 * z * z * z));
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * FASTNORM_K0 * (1.0 + 3.0 * FASTNORM_K1 * z * z);
}
FASTNORM_INLINE double fastnorm_sigmoid_grad_f64(double z)
{
    double s = 1.0 / (1.0 + exp(-z));
    return s * (1.0 - s);
}
FASTNORM_INLINE double fastnorm_tanh_grad_f64(double z)
{
    double t = tanh(z);
    return 1.0 - t * t;
}

/* The loops, one per activation so that each vectorizes; S: f32 or f64. */
#define FASTNORM_EACH(CODE, STMT)         \
    case CODE:                            \
        for (ptrdiff_t i = 0; i < n; i++) \
            STMT;                         \
        break;

#define FASTNORM_ACTIVATE(NAME, T, S)                                                                \
    FASTNORM_PLAIN(NAME, (T * v, const T *add, ptrdiff_t n, int act), (v, add, n, act))              \
    {                                                                                                \
        const T zero = (T)0, six = (T)6;                                                             \
        if (add)                                                                                     \
            for (ptrdiff_t i = 0; i < n; i++)                                                        \
                v[i] = v[i] + add[i];                                                                \
        switch (act) {                                                                               \
            FASTNORM_EACH(FASTNORM_ACT_RELU, v[i] = v[i] < zero ? zero : v[i])                       \
            FASTNORM_EACH(FASTNORM_ACT_RELU6, v[i] = v[i] < zero ? zero : (v[i] > six ? six : v[i])) \
            FASTNORM_EACH(FASTNORM_ACT_SILU, v[i] = fastnorm_silu_##S(v[i]))                         \
            FASTNORM_EACH(FASTNORM_ACT_GELU, v[i] = fastnorm_gelu_##S(v[i]))                         \
            FASTNORM_EACH(FASTNORM_ACT_GELU_TANH, v[i] = fastnorm_gelu_tanh_##S(v[i]))               \
            FASTNORM_EACH(FASTNORM_ACT_SIGMOID, v[i] = fastnorm_sigmoid_##S(v[i]))                   \
            FASTNORM_EACH(FASTNORM_ACT_TANH, v[i] = fastnorm_tanh_##S(v[i]))                         \
        default:                                                                                     \
            break;                                                                                   \
        }                                                                                            \
    }
FASTNORM_ACTIVATE(fastnorm_activate_f32, float, f32)
FASTNORM_ACTIVATE(fastnorm_activate_f64, double, f64)

/* z = dy * act'(z) in place over n values (the backward through the activation, z the pre-activation
 * recomputed from x and the statistics); relu: z > 0, relu6: 0 < z < 6. */
#define FASTNORM_ACTIVATION_GRAD(NAME, T, S)                                                        \
    FASTNORM_PLAIN(NAME, (T * z, const T *dy, ptrdiff_t n, int act), (z, dy, n, act))               \
    {                                                                                               \
        const T zero = (T)0, six = (T)6;                                                            \
        switch (act) {                                                                              \
            FASTNORM_EACH(FASTNORM_ACT_RELU, z[i] = z[i] > zero ? dy[i] : zero)                     \
            FASTNORM_EACH(FASTNORM_ACT_RELU6, z[i] = z[i] > zero && z[i] < six ? dy[i] : zero)      \
            FASTNORM_EACH(FASTNORM_ACT_SILU, z[i] = dy[i] * fastnorm_silu_grad_##S(z[i]))           \
            FASTNORM_EACH(FASTNORM_ACT_GELU, z[i] = dy[i] * fastnorm_gelu_grad_##S(z[i]))           \
            FASTNORM_EACH(FASTNORM_ACT_GELU_TANH, z[i] = dy[i] * fastnorm_gelu_tanh_grad_##S(z[i])) \
            FASTNORM_EACH(FASTNORM_ACT_SIGMOID, z[i] = dy[i] * fastnorm_sigmoid_grad_##S(z[i]))     \
            FASTNORM_EACH(FASTNORM_ACT_TANH, z[i] = dy[i] * fastnorm_tanh_grad_##S(z[i]))           \
        default:                                                                                    \
            for (ptrdiff_t i = 0; i < n; i++)                                                       \
                z[i] = dy[i];                                                                       \
            break;                                                                                  \
        }                                                                                           \
    }
FASTNORM_ACTIVATION_GRAD(fastnorm_activation_grad_f32, float, f32)
FASTNORM_ACTIVATION_GRAD(fastnorm_activation_grad_f64, double, f64)

/* relu and relu6 in the sweep's own loop: y = min(max(z, 0), hi), z = (x - mean_hi) * scale + shift (+ add[i]),
 * hi = 6 for relu6 and +inf for relu (z > inf is never true).  The operations of the sweep then of
 * fastnorm_activate, so the same bits, in one loop that vectorizes: no buffer, no second pass. */
#define FASTNORM_SWEEP_CLAMP(NAME, T)                                                                      \
    FASTNORM_PLAIN(NAME, (const T *x, T *y, ptrdiff_t n, T mean_hi, T scale, T shift, const T *add, T hi), \
                   (x, y, n, mean_hi, scale, shift, add, hi))                                              \
    {                                                                                                      \
        const T zero = (T)0;                                                                               \
        if (add) {                                                                                         \
            for (ptrdiff_t i = 0; i < n; i++) {                                                            \
                T v = (x[i] - mean_hi) * scale + shift;                                                    \
                v = v + add[i];                                                                            \
                v = v < zero ? zero : v;                                                                   \
                y[i] = v > hi ? hi : v;                                                                    \
            }                                                                                              \
        } else {                                                                                           \
            for (ptrdiff_t i = 0; i < n; i++) {                                                            \
                T v = (x[i] - mean_hi) * scale + shift;                                                    \
                v = v < zero ? zero : v;                                                                   \
                y[i] = v > hi ? hi : v;                                                                    \
            }                                                                                              \
        }                                                                                                  \
    }
FASTNORM_SWEEP_CLAMP(fastnorm_sweep_clamp_f32, float)
FASTNORM_SWEEP_CLAMP(fastnorm_sweep_clamp_f64, double)

/* The backward of relu and relu6 in one loop: dz = 0 < z (< 6) ? dy : 0, z = (x - mean_hi) * scale + shift
 * (+ add[i]) recomputed as the forward's sweep computes it (so its bits), the derivative's operations
 * those of fastnorm_activation_grad; no pass over a buffer of z. */
#define FASTNORM_CLAMP_GRAD_LOOP(T, ADD, TEST)  \
    for (ptrdiff_t i = 0; i < n; i++) {         \
        T v = (x[i] - mean_hi) * scale + shift; \
        v = ADD;                                \
        T g = dy[i];                            \
        dz[i] = TEST ? g : zero;                \
    }
#define FASTNORM_CLAMP_GRAD(NAME, T)                                                                               \
    FASTNORM_PLAIN(                                                                                                \
        NAME, (const T *x, const T *dy, T *dz, ptrdiff_t n, T mean_hi, T scale, T shift, const T *add, int relu6), \
        (x, dy, dz, n, mean_hi, scale, shift, add, relu6))                                                         \
    {                                                                                                              \
        const T zero = (T)0, six = (T)6;                                                                           \
        if (add && relu6)                                                                                          \
            FASTNORM_CLAMP_GRAD_LOOP(T, v + add[i], v > zero && v < six)                                           \
        else if (add)                                                                                              \
            FASTNORM_CLAMP_GRAD_LOOP(T, v + add[i], v > zero)                                                      \
        else if (relu6)                                                                                            \
            FASTNORM_CLAMP_GRAD_LOOP(T, v, v > zero && v < six)                                                    \
        else                                                                                                       \
            FASTNORM_CLAMP_GRAD_LOOP(T, v, v > zero)                                                               \
    }
FASTNORM_CLAMP_GRAD(fastnorm_clamp_grad_f32, float)
FASTNORM_CLAMP_GRAD(fastnorm_clamp_grad_f64, double)
