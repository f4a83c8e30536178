"""pytest-benchmark comparisons for the rest of the family, the backward passes and tiny-input latency."""
import numpy as np
import pytest

from fastnorm._bench import family_cases, latency_cases

FAMILY = list(family_cases())


@pytest.mark.parametrize("name, shape, make", FAMILY, ids=[c[0] for c in FAMILY])
@pytest.mark.parametrize("impl", ["fastnorm", "numpy", "torch"])
def test_family(benchmark, name, shape, make, impl):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    func = dict(zip(["fastnorm", "numpy", "torch"], make(x)))[impl]
    if func is None:
        pytest.skip("PyTorch is not installed")
    benchmark.group = name
    benchmark(func)


LATENCY = list(latency_cases())


@pytest.mark.parametrize("case", range(len(LATENCY)), ids=[f"{c[0]}{c[3]}" for c in LATENCY])
@pytest.mark.parametrize("impl", ["fastnorm", "torch"])
def test_tiny_eval_latency(benchmark, case, impl):
    import fastnorm

    name, ours, theirs, shape = LATENCY[case]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    benchmark.group = f"latency {name} {shape}"
    if impl == "fastnorm":
        with fastnorm.no_grad():
            benchmark(ours, x)
        return
    if theirs is None:
        pytest.skip("PyTorch is not installed")
    import torch

    xt = torch.from_numpy(x)
    with torch.no_grad():
        benchmark(theirs, xt)
