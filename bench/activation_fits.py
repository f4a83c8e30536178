"""The fitted polynomials of ``src/fastnorm/_simd_activation.h``, reproduced (needs mpmath).

    python bench/activation_fits.py

- erfc: h(t) = ln(erfc(x) / t) + x**2, t = 1 / (1 + x / 2), as a degree-10 polynomial in t - 0.58 over
  t in [0.16, 1] (x in [0, 10.5]), evaluated in double.
- tanh: (tanh(x) - x) / x**3 as a degree-4 polynomial in s = x**2 over x in [0, 0.625], weighted to the
  relative error of tanh (about s / (1 - s / 3)), rounded to float32.
Least squares on Chebyshev nodes, reweighted toward the minimax (iteratively, by the error); prints the
coefficients from the highest degree down and the maximum error in units of 2**-24.
"""
import numpy as np
from mpmath import mp

mp.dps = 40


def fit(f, a, b, degree, weight=lambda x: 1.0, nodes=3000, rounds=30):
    k = np.arange(nodes)
    xs = (a + b) / 2 + (b - a) / 2 * np.cos(np.pi * (k + 0.5) / nodes)
    ys = np.array([f(x) for x in xs])
    w = np.array([weight(x) for x in xs])
    V = np.vander(xs, degree + 1, increasing=True)
    c = np.linalg.lstsq(V * w[:, None], ys * w, rcond=None)[0]
    for _ in range(rounds):
        err = np.abs((V @ c - ys) * w)
        w2 = w * (err / err.max()) ** 0.5 + 1e-3 * w
        c = np.linalg.lstsq(V * w2[:, None], ys * w2, rcond=None)[0]
    return c, np.abs((V @ c - ys) * w).max()


def erfc_h(u):
    t = mp.mpf(u + 0.58)
    x = 2 / t - 2
    return float(mp.log(mp.erfc(x) / t) + x * x)


def tanh_p(s):
    if s == 0:
        return -1 / 3
    x = mp.sqrt(mp.mpf(s))
    return float((mp.tanh(x) - x) / (s * x))


def main():
    c, err = fit(erfc_h, 0.16 - 0.58, 1.0 - 0.58, 10)
    print(f"erfc h(t): max error {err / 2**-24:.3f} * 2**-24\n  " + ", ".join(f"{v:.17g}" for v in c[::-1]))
    c, err = fit(tanh_p, 1e-12, 0.625 ** 2, 4, weight=lambda s: s / (1 - s / 3), nodes=2000)
    print(f"tanh P(s): max error {err / 2**-24:.3f} * 2**-24\n  "
          + ", ".join(f"{v:.9e}" for v in c[::-1].astype(np.float32)))


if __name__ == "__main__":
    main()
