"""The examples in the public docstrings run and print what they show."""
import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import fastnorm

MODULES = sorted(m.name for m in pkgutil.iter_modules(fastnorm.__path__, "fastnorm.")
                 if m.name not in ("fastnorm.__main__",))


# Modules whose examples use an optional dependency (an extra of pyproject.toml).
NEEDS = {"fastnorm.dask": "dask", "fastnorm.distributed": "mpi4py", "fastnorm.onnx": "onnx"}


@pytest.mark.parametrize("name", ["fastnorm"] + MODULES)
def test_docstring_examples(name):
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{name}'s examples need {NEEDS[name]}, which is not installed")
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # an optional dependency (dask, mpi4py, scikit-learn) is missing
        pytest.skip(f"{name}: {error}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output above)"
