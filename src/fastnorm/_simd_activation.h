/* The epilogue of a fused sweep (included by _simd.h): v = act(v + add) over a chunk of normalized values
 * that the sweep has just written (in L1).  Each activation is written once, its scalar
 * formula beside it; relu and relu6 vectorize, the others call libm per value (expf, erff, tanhf; exp,
 * erf, tanh for float64), which costs more than the memory traffic they ride on.  NaN stays NaN.
 * The codes are those of fastnorm._validation.ACTIVATIONS (1-based; 0: none). */
#include <math.h>

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

#define FASTNORM_ACTIVATE(NAME, T, EXP, ERF, TANH)                                                    \
    FASTNORM_CLONES static void NAME(T *v, const T *add, ptrdiff_t n, int act)                        \
    {                                                                                                 \
        const T half = (T)0.5, one = (T)1, zero = (T)0, six = (T)6;                                   \
        const T rsqrt2 = (T)0.70710678118654752440, k0 = (T)0.79788456080286535588, k1 = (T)0.044715; \
        if (add)                                                                                      \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = v[i] + add[i];                                                                 \
        switch (act) {                                                                                \
        case FASTNORM_ACT_RELU:                                                                       \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = v[i] < zero ? zero : v[i];                                                     \
            break;                                                                                    \
        case FASTNORM_ACT_RELU6:                                                                      \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = v[i] < zero ? zero : (v[i] > six ? six : v[i]);                                \
            break;                                                                                    \
        case FASTNORM_ACT_SILU:                                                                       \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = v[i] / (one + EXP(-v[i]));                                                     \
            break;                                                                                    \
        case FASTNORM_ACT_GELU:                                                                       \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = half * v[i] * (one + ERF(v[i] * rsqrt2));                                      \
            break;                                                                                    \
        case FASTNORM_ACT_GELU_TANH:                                                                  \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = half * v[i] * (one + TANH(k0 * (v[i] + k1 * v[i] * v[i] * v[i])));             \
            break;                                                                                    \
        case FASTNORM_ACT_SIGMOID:                                                                    \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = one / (one + EXP(-v[i]));                                                      \
            break;                                                                                    \
        case FASTNORM_ACT_TANH:                                                                       \
            for (ptrdiff_t i = 0; i < n; i++)                                                         \
                v[i] = TANH(v[i]);                                                                    \
            break;                                                                                    \
        default:                                                                                      \
            break;                                                                                    \
        }                                                                                             \
    }
FASTNORM_ACTIVATE(fastnorm_activate_f32, float, expf, erff, tanhf)
FASTNORM_ACTIVATE(fastnorm_activate_f64, double, exp, erf, tanh)

/* z = dy * act'(z) in place over n values (the backward through the activation, z the pre-activation
 * recomputed from x and the statistics).  The scalar derivatives:
 * relu: z > 0;  relu6: 0 < z < 6;  silu: s (1 + z (1 - s)), s = sigmoid(z);
 * gelu: Phi(z) + z phi(z) (the normal distribution and density);
 * gelu_tanh: (1 + t) / 2 + z / 2 (1 - t**2) sqrt(2 / pi) (1 + 3 * 0.044715 z**2), t = tanh(sqrt(2 / pi) (z + 0.044715 z**3));
 * sigmoid: s (1 - s);  tanh: 1 - tanh(z)**2. */
#define FASTNORM_ACTIVATION_GRAD(NAME, T, EXP, ERF, TANH)                                                       \
    FASTNORM_CLONES static void NAME(T *z, const T *dy, ptrdiff_t n, int act)                                   \
    {                                                                                                           \
        const T half = (T)0.5, one = (T)1, zero = (T)0, six = (T)6, three = (T)3;                               \
        const T rsqrt2 = (T)0.70710678118654752440, rsqrt2pi = (T)0.39894228040143267794;                       \
        const T k0 = (T)0.79788456080286535588, k1 = (T)0.044715;                                               \
        switch (act) {                                                                                          \
        case FASTNORM_ACT_RELU:                                                                                 \
            for (ptrdiff_t i = 0; i < n; i++)                                                                   \
                z[i] = z[i] > zero ? dy[i] : zero;                                                              \
            break;                                                                                              \
        case FASTNORM_ACT_RELU6:                                                                                \
            for (ptrdiff_t i = 0; i < n; i++)                                                                   \
                z[i] = z[i] > zero && z[i] < six ? dy[i] : zero;                                                \
            break;                                                                                              \
        case FASTNORM_ACT_SILU:                                                                                 \
            for (ptrdiff_t i = 0; i < n; i++) {                                                                 \
                T v = z[i], s = one / (one + EXP(-v));                                                          \
                z[i] = dy[i] * (s * (one + v * (one - s)));                                                     \
            }                                                                                                   \
            break;                                                                                              \
        case FASTNORM_ACT_GELU:                                                                                 \
            for (ptrdiff_t i = 0; i < n; i++) {                                                                 \
                T v = z[i];                                                                                     \
                z[i] = dy[i] * (half * (one + ERF(v * rsqrt2)) + v * rsqrt2pi * EXP(-half * v * v));            \
            }                                                                                                   \
            break;                                                                                              \
        case FASTNORM_ACT_GELU_TANH:                                                                            \
            for (ptrdiff_t i = 0; i < n; i++) {                                                                 \
                T v = z[i], t = TANH(k0 * (v + k1 * v * v * v));                                                \
                z[i] = dy[i] * (half * (one + t) + half * v * (one - t * t) * k0 * (one + three * k1 * v * v)); \
            }                                                                                                   \
            break;                                                                                              \
        case FASTNORM_ACT_SIGMOID:                                                                              \
            for (ptrdiff_t i = 0; i < n; i++) {                                                                 \
                T s = one / (one + EXP(-z[i]));                                                                 \
                z[i] = dy[i] * (s * (one - s));                                                                 \
            }                                                                                                   \
            break;                                                                                              \
        case FASTNORM_ACT_TANH:                                                                                 \
            for (ptrdiff_t i = 0; i < n; i++) {                                                                 \
                T t = TANH(z[i]);                                                                               \
                z[i] = dy[i] * (one - t * t);                                                                   \
            }                                                                                                   \
            break;                                                                                              \
        default:                                                                                                \
            for (ptrdiff_t i = 0; i < n; i++)                                                                   \
                z[i] = dy[i];                                                                                   \
            break;                                                                                              \
        }                                                                                                       \
    }
FASTNORM_ACTIVATION_GRAD(fastnorm_activation_grad_f32, float, expf, erff, tanhf)
FASTNORM_ACTIVATION_GRAD(fastnorm_activation_grad_f64, double, exp, erf, tanh)

/* relu and relu6 in the sweep's own loop: y = min(max(z, 0), hi), z = (x - mean_hi) * scale + shift (+ add[i]),
 * hi = 6 for relu6 and +inf for relu (z > inf is never true).  The operations of the sweep then of
 * fastnorm_activate, so the same bits, in one loop that vectorizes: no buffer, no second pass. */
#define FASTNORM_SWEEP_CLAMP(NAME, T)                                                                                \
    FASTNORM_CLONES static void NAME(const T *x, T *y, ptrdiff_t n, T mean_hi, T scale, T shift, const T *add, T hi) \
    {                                                                                                                \
        const T zero = (T)0;                                                                                         \
        if (add) {                                                                                                   \
            for (ptrdiff_t i = 0; i < n; i++) {                                                                      \
                T v = (x[i] - mean_hi) * scale + shift;                                                              \
                v = v + add[i];                                                                                      \
                v = v < zero ? zero : v;                                                                             \
                y[i] = v > hi ? hi : v;                                                                              \
            }                                                                                                        \
        } else {                                                                                                     \
            for (ptrdiff_t i = 0; i < n; i++) {                                                                      \
                T v = (x[i] - mean_hi) * scale + shift;                                                              \
                v = v < zero ? zero : v;                                                                             \
                y[i] = v > hi ? hi : v;                                                                              \
            }                                                                                                        \
        }                                                                                                            \
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
#define FASTNORM_CLAMP_GRAD(NAME, T)                                                                           \
    FASTNORM_CLONES static void NAME(const T *x, const T *dy, T *dz, ptrdiff_t n, T mean_hi, T scale, T shift, \
                                     const T *add, int relu6)                                                  \
    {                                                                                                          \
        const T zero = (T)0, six = (T)6;                                                                       \
        if (add && relu6)                                                                                      \
            FASTNORM_CLAMP_GRAD_LOOP(T, v + add[i], v > zero && v < six)                                       \
        else if (add)                                                                                          \
            FASTNORM_CLAMP_GRAD_LOOP(T, v + add[i], v > zero)                                                  \
        else if (relu6)                                                                                        \
            FASTNORM_CLAMP_GRAD_LOOP(T, v, v > zero && v < six)                                                \
        else                                                                                                   \
            FASTNORM_CLAMP_GRAD_LOOP(T, v, v > zero)                                                           \
    }
FASTNORM_CLAMP_GRAD(fastnorm_clamp_grad_f32, float)
FASTNORM_CLAMP_GRAD(fastnorm_clamp_grad_f64, double)
