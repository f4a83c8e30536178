"""pytest-benchmark comparisons, grouped per case: ``python -m pytest bench --benchmark-group-by=group``."""
import pytest

from fastnorm._bench import batch_norm_cases, make_batch_norm_case

CASES = list(batch_norm_cases())


@pytest.mark.parametrize("name, shape, axis, training", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("impl", ["fastnorm", "numpy", "torch"])
def test_batch_norm(benchmark, name, shape, axis, training, impl):
    _, ours, baseline, theirs = make_batch_norm_case(shape, axis, training)
    func = {"fastnorm": ours, "numpy": baseline, "torch": theirs}[impl]
    if func is None:
        pytest.skip("PyTorch is not installed")
    benchmark.group = name
    benchmark(func)
