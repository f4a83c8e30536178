/* The float32 activations of src/fastnorm/_simd_activation.h and their derivatives against float64 math,
 * over every STRIDE-th float32 bit pattern (1: all 2**32): the max error in ulps (derivatives: in 2**-24,
 * absolute), and any value that is NaN or infinite where float64 math is not, or the reverse.
 *
 *     gcc -O3 -ffp-contract=off -fno-math-errno -I src/fastnorm bench/activation_ulps.c -o /tmp/ulps -lm
 *     /tmp/ulps 1
 *
 * The float64 forms are the definitions written so that float64 loses nothing (sigmoid through
 * exp(-|w|), z Phi(z) through erfc). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_simd.h"

static double sigmoid(double w)
{
    double e = exp(-fabs(w));
    return w >= 0 ? 1 / (1 + e) : e / (1 + e);
}

static double sigmoid_grad(double w)
{
    double e = exp(-fabs(w));
    return e / ((1 + e) * (1 + e));
}

static double gelu_tanh_arg(double z)
{
    return 2 * sqrt(2 / M_PI) * (z + 0.044715 * z * z * z);
}

static double exact(int act, double z)
{
    switch (act) {
    case FASTNORM_ACT_SILU:
        return z * sigmoid(z);
    case FASTNORM_ACT_GELU:
        return z * 0.5 * erfc(-z / sqrt(2.0));
    case FASTNORM_ACT_GELU_TANH:
        return z * sigmoid(gelu_tanh_arg(z));
    case FASTNORM_ACT_SIGMOID:
        return sigmoid(z);
    default:
        return tanh(z);
    }
}

static double exact_grad(int act, double z)
{
    switch (act) {
    case FASTNORM_ACT_SILU:
        return sigmoid(z) + z * sigmoid_grad(z);
    case FASTNORM_ACT_GELU:
        return 0.5 * erfc(-z / sqrt(2.0)) + z * exp(-z * z / 2) / sqrt(2 * M_PI);
    case FASTNORM_ACT_GELU_TANH:
        return sigmoid(gelu_tanh_arg(z)) +
               z * sigmoid_grad(gelu_tanh_arg(z)) * 2 * sqrt(2 / M_PI) * (1 + 3 * 0.044715 * z * z);
    case FASTNORM_ACT_SIGMOID:
        return sigmoid_grad(z);
    default:
        return 1 - tanh(z) * tanh(z);
    }
}

static double ulp(double y) /* of y rounded to float32; 2**-149 below the normals */
{
    float f = fabsf((float)y);
    int e;
    if (f < 0x1p-126f)
        return 0x1p-149;
    if (isinf(f))
        return 0x1p104;
    frexpf(f, &e);
    return ldexp(1.0, e - 24);
}

int main(int argc, char **argv)
{
    enum { N = 1 << 16 };
    static const char *names[] = {"", "", "", "silu", "gelu", "gelu_tanh", "sigmoid", "tanh"};
    static float z[N], y[N], g[N], ones[N];
    uint64_t stride = argc > 1 ? strtoull(argv[1], NULL, 10) : 61;
    for (int i = 0; i < N; i++)
        ones[i] = 1.0f;
    for (int act = FASTNORM_ACT_SILU; act <= FASTNORM_ACT_TANH; act++) {
        double worst = 0, worst_z = 0, worst_g = 0, worst_gz = 0;
        long wrong = 0;
        for (uint64_t u = 0; u < (1ull << 32);) {
            int m = 0;
            for (; m < N && u < (1ull << 32); m++, u += stride) {
                uint32_t b = (uint32_t)u;
                memcpy(&z[m], &b, 4);
            }
            memcpy(y, z, sizeof z);
            memcpy(g, z, sizeof z);
            fastnorm_activate_f32(y, NULL, m, act);
            fastnorm_activation_grad_f32(g, ones, m, act);
            for (int i = 0; i < m; i++) {
                double r = exact(act, z[i]), rg = exact_grad(act, z[i]);
                if (!isfinite(z[i]))
                    continue; /* the infinities and NaN: tests/test_activation_accuracy.py */
                if (isnan(y[i]) || isinf(y[i]) != isinf((float)r) || isnan(g[i])) {
                    if (wrong++ < 5)
                        printf("  %s(%.9g) = %g, derivative %g\n", names[act], z[i], y[i], g[i]);
                    continue;
                }
                if (fabs(y[i] - r) / ulp(r) > worst)
                    worst = fabs(y[i] - r) / ulp(r), worst_z = z[i];
                if (fabs(g[i] - rg) / 0x1p-24 > worst_g)
                    worst_g = fabs(g[i] - rg) / 0x1p-24, worst_gz = z[i];
            }
        }
        printf("%-10s %.3f ulp (z = %.9g); derivative %.3f * 2**-24 (z = %.9g); wrong %ld\n", names[act], worst,
               worst_z, worst_g, worst_gz, wrong);
    }
    return 0;
}
