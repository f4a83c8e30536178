"""pytest-benchmark comparisons of BatchNorm, grouped per case: ``python -m pytest bench``."""
import pytest

from fastnorm._bench import batch_norm_cases

CASES = list(batch_norm_cases())


@pytest.mark.parametrize("case", CASES, ids=[c.id.replace("batch_norm-", "") for c in CASES])
@pytest.mark.parametrize("impl", ["fastnorm", "numpy", "torch"])
def test_bn(bench_call, case, impl):
    calls = case.build()
    bench_call(getattr(calls, impl), calls.moved, case.name)
