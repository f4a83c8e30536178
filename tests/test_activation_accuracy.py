"""The float32 activations of the fused sweeps (``_simd_activation.h``: branch-free exp, erfc and tanh forms
that vectorize) against float64 math, over the whole float32 range: a dense sweep of the bit patterns,
hypothesis, and the edges (subnormals, -0.0, +-inf, NaN, the saturation of silu and sigmoid); their
derivatives (the backward's ``act'``) to an absolute bound; the same bits for every thread count and call,
and at every ISA level (the header compiled for the baseline, AVX2 and AVX-512, where a C compiler and the
CPU allow, and the module at each level the CPU has).

The float64 reference computes each definition (tests/reference_steps.py) in a form that loses nothing in float64
where the literal one cancels (z Phi(z) through erfc, sigmoid through exp(-|z|)); equal as mathematics.
Measured over every float32 (all 2**32 bit patterns, a C loop against libm's double functions): silu 3.19,
gelu 3.32, gelu_tanh 3.35, sigmoid 2.40, tanh 1.51 ulp; derivatives within 3.85 * 2**-24."""
import math
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastnorm
import reference_steps
from fastnorm import _kernels
from fastnorm._validation import ACTIVATIONS, _check_activation

SMOOTH = ["silu", "gelu", "gelu_tanh", "sigmoid", "tanh"]
ULP = 3.5  # the bound on the forward's error (max over every float32: 3.35, gelu_tanh)
GRAD = 4 * 2.0 ** -24  # the bound on a derivative's absolute error (max over every float32: 3.85 * 2**-24)
K0, K1 = math.sqrt(2 / math.pi), 0.044715
_ERFC = np.frompyfunc(math.erfc, 1, 1)


def _sigmoid(w):
    e = np.exp(-np.abs(w))
    return np.where(w >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_grad(w):
    e = np.exp(-np.abs(w))
    return e / (1 + e) ** 2


def _phi_cdf(z):
    return _ERFC(-z / math.sqrt(2)).astype(np.float64) / 2


def _gelu_tanh_arg(z):
    return 2 * K0 * (z + K1 * z ** 3)


# Each activation and its derivative in float64, finite z (specials: the twins' formulas, below).
EXACT = {
    "silu": (lambda z: z * _sigmoid(z), lambda z: _sigmoid(z) + z * _sigmoid_grad(z)),
    "gelu": (lambda z: z * _phi_cdf(z), lambda z: _phi_cdf(z) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (lambda z: z * _sigmoid(_gelu_tanh_arg(z)),
                  lambda z: _sigmoid(_gelu_tanh_arg(z))
                  + z * _sigmoid_grad(_gelu_tanh_arg(z)) * 2 * K0 * (1 + 3 * K1 * z * z)),
    "sigmoid": (_sigmoid, _sigmoid_grad),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
}


def activate(z, act, threads=1):
    y = np.array(z, dtype=np.float32)
    _kernels.activate(y, None, _check_activation(act), threads)
    return y


def derivative(z, act, threads=1):
    z = np.ascontiguousarray(z, dtype=np.float32)
    return _kernels.activation_grad(z, np.ones_like(z), None, _check_activation(act), None, False, None, None,
                                    z.size, threads)


def ulp_error(got, exact):
    """|got - exact| in ulps of exact rounded to float32 (2**-149 below the normals)."""
    top = np.float32(2.0 ** 127)  # the spacing of the last binade (np.spacing of FLT_MAX overflows)
    ulp = np.spacing(np.minimum(np.abs(exact).astype(np.float32), top)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / ulp


def check(z, act):
    """The forward within ULP and the derivative within GRAD of float64 math at float32 values z; NaN
    exactly where the definition gives NaN; the infinities as the twins' formulas give them."""
    z = np.asarray(z, dtype=np.float32)
    y, dz, finite = activate(z, act), derivative(z, act), np.isfinite(z)
    with np.errstate(all="ignore"):  # signalling NaNs among the bit patterns; exp overflows
        z64 = z.astype(np.float64)
        exact = EXACT[act][0](z64[finite])
        special = reference_steps._ACTIVATIONS[act][0](z64[~finite])
        exact_grad = EXACT[act][1](z64[finite])
    err = ulp_error(y[finite], exact)
    assert err.max(initial=0) <= ULP, (act, z[finite][np.argmax(err)], y[finite][np.argmax(err)])
    np.testing.assert_array_equal(y[~finite], special.astype(np.float32))
    gerr = np.abs(dz[finite] - exact_grad)
    assert gerr.max(initial=0) <= GRAD, (act, z[finite][np.argmax(gerr)])
    assert np.isnan(dz[np.isnan(z)]).all()


def sweep(stride):
    """Every ``stride``-th float32 bit pattern, both signs: normals, subnormals, +-0, +-inf and NaNs."""
    bits = np.arange(0, 2 ** 31, stride, dtype=np.uint32)
    edges = np.array([0, 1, 2, 0x7FFFFF, 0x800000, 0x7F7FFFFF, 0x7F800000, 0x7FC00000], np.uint32)
    bits = np.concatenate([bits, edges])
    return np.concatenate([bits, bits | np.uint32(0x80000000)]).view(np.float32)


@pytest.mark.parametrize("act", SMOOTH)
def test_a_dense_sweep_of_float32_is_within_the_bound(act):
    check(sweep(2039), act)


@pytest.mark.parametrize("act", SMOOTH)
def test_where_the_values_turn_is_within_the_bound(act):
    """Densely over [-20, 20], where the functions bend and gelu's tail is still normal."""
    check(np.linspace(-20, 20, 400_001, dtype=np.float32), act)


@pytest.mark.parametrize("act", SMOOTH)
@settings(max_examples=60, deadline=None)
@given(z=hnp.arrays(np.float32, st.integers(1, 600), elements=st.floats(width=32, allow_subnormal=True)))
def test_any_float32_is_within_the_bound(act, z):
    check(z, act)


@pytest.mark.parametrize("act", ["silu", "sigmoid"])
def test_silu_and_sigmoid_saturate_without_nan(act):
    z = np.array([-1e30, -3e38, -1000, -100, -88.8, -87, 87, 88.8, 100, 1000, 3e38], np.float32)
    y, dz = activate(z, act), derivative(z, act)
    assert not np.isnan(y).any() and not np.isnan(dz).any()
    check(z, act)
    if act == "silu":
        assert -1.2e-38 < y[3] < 0  # -100 exp(-100), a subnormal, not 0 (check: to the bound)
        np.testing.assert_array_equal(y[-3:], z[-3:])
    else:
        np.testing.assert_array_equal(y[-3:], 1)


def test_signed_zero_subnormals_and_nan():
    tiny = np.array([-0.0, 0.0, 1e-45, -1e-45, 3e-39, -3e-39], np.float32)
    for act in SMOOTH:
        y = activate(tiny, act)
        if act == "sigmoid":
            np.testing.assert_array_equal(y, 0.5)
        else:
            assert np.signbit(y[0]) and not np.signbit(y[1]), act  # -0.0 stays -0.0
            np.testing.assert_array_equal(y[2:], (tiny[2:] if act == "tanh" else tiny[2:] * np.float32(0.5)))
        assert np.isnan(activate(np.float32([np.nan]), act)).all()


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_the_same_bits_at_any_thread_count_and_call(act):
    z = (np.random.default_rng(0).normal(size=100_003) * 8).astype(np.float32)
    one = activate(z, act, 1)
    np.testing.assert_array_equal(activate(z, act, 2), one)
    np.testing.assert_array_equal(activate(z, act, 1), one)
    np.testing.assert_array_equal(derivative(z, act, 2), derivative(z, act, 1))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_the_same_bits_at_every_isa_level(act, isa_level):
    """The module's loops at each ISA level the CPU has (_kernels.set_isa) give the bits of the highest."""
    z = sweep(4099)
    with np.errstate(all="ignore"):
        mine = activate(z, act), derivative(z, act)
        top = _kernels.set_isa()
        try:
            best = activate(z, act), derivative(z, act)
        finally:
            _kernels.set_isa(isa_level)
    assert top >= isa_level
    for a, b in zip(mine, best):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


_HARNESS = r"""
#include <stdio.h>
#include <string.h>
#include "_simd.h"
enum { N = 1024 };
#define STEP 16777259ul
int main(void)
{
    static float v[N], w[N], g[N], dy[N];
    for (unsigned long u = 0; u < (1ul << 32); u += STEP) {
        for (int i = 0; i < N; i++) {
            unsigned int b = (unsigned int)(u + (unsigned long)i * 2039u);
            memcpy(&v[i], &b, 4);
            dy[i] = 1.0f;
        }
        for (int act = 1; act <= 7; act++) {
            memcpy(w, v, sizeof v);
            memcpy(g, v, sizeof v);
            fastnorm_activate_f32(w, NULL, N, act);
            fastnorm_activation_grad_f32(g, dy, N, act);
            fwrite(w, 4, N, stdout);
            fwrite(g, 4, N, stdout);
        }
    }
    return 0;
}
"""


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return set()


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("cc") is None, reason="needs cc on x86_64")
def test_every_isa_level_gives_the_loaded_modules_bits(tmp_path):
    """The header compiled as the baseline (scalar at -O0, vectorized at -O3), AVX2 and AVX-512 (those the
    CPU runs), -ffp-contract=off as setup.py builds: the same bits as the loaded module's variant."""
    src = os.path.dirname(fastnorm.__file__)
    (tmp_path / "h.c").write_text(_HARNESS)
    flags = _cpu_flags()
    variants = [["-O0"], ["-O3"]] + [["-O3", f"-m{isa}"] for isa in ("avx2", "avx512f") if isa in flags]
    outputs = []
    for extra in variants:
        exe = tmp_path / ("h" + "".join(extra))
        subprocess.run(["cc", *extra, "-ffp-contract=off", "-fno-math-errno", "-DFASTNORM_NO_ISA", "-I", src,
                        str(tmp_path / "h.c"), "-o", str(exe), "-lm"], check=True)
        outputs.append(np.frombuffer(subprocess.run([str(exe)], check=True, capture_output=True).stdout, np.float32))
    chunks = outputs[0].reshape(-1, 7, 2, 1024)
    z = np.concatenate([np.arange(1024, dtype=np.uint64) * 2039 + u
                        for u in range(0, 2 ** 32, 16777259)]).astype(np.uint32).view(np.float32)
    for act in range(1, 8):
        name = ACTIVATIONS[act - 1]
        mine = chunks[:, act - 1, 0].reshape(-1)
        np.testing.assert_array_equal(mine, activate(z, name), err_msg=name)
        np.testing.assert_array_equal(chunks[:, act - 1, 1].reshape(-1), derivative(z, name), err_msg=name)
    for extra, out in zip(variants[1:], outputs[1:]):
        np.testing.assert_array_equal(out, outputs[0], err_msg=" ".join(extra))
