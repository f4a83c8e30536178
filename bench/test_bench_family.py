"""pytest-benchmark comparisons for the rest of the family, the backward passes and tiny-input latency."""
import numpy as np
import pytest

import fastnorm
from fastnorm._bench import family_cases, latency_cases

FAMILY = list(family_cases())


@pytest.mark.parametrize("case", FAMILY, ids=[c.id for c in FAMILY])
@pytest.mark.parametrize("impl", ["fastnorm", "numpy", "torch"])
def test_norm(bench_call, case, impl):
    calls = case.build()
    bench_call(getattr(calls, impl), calls.moved, case.name)


LATENCY = list(latency_cases())


@pytest.mark.parametrize("case", range(len(LATENCY)), ids=[f"{c[0]}-{'x'.join(map(str, c[3]))}" for c in LATENCY])
@pytest.mark.parametrize("impl", ["fastnorm", "torch"])
def test_tiny(bench_call, case, impl):
    """One eval-mode layer call on a tiny input, one thread, as ``python -m fastnorm bench`` times it."""
    name, ours, theirs, shape = LATENCY[case]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    group = f"latency {name} {shape}"
    with fastnorm.threads(1), fastnorm.no_grad():
        if impl == "fastnorm":
            bench_call(ours, 2 * x.nbytes, group, x)
            return
        if theirs is None:
            pytest.skip("PyTorch is not installed")
        import torch

        with torch.no_grad():
            bench_call(theirs, 2 * x.nbytes, group, torch.from_numpy(x))
