"""The examples in the public docstrings run and print what they show."""
import doctest
import importlib
import pkgutil

import pytest

import fastnorm

MODULES = sorted(m.name for m in pkgutil.iter_modules(fastnorm.__path__, "fastnorm.")
                 if m.name not in ("fastnorm.__main__",))


@pytest.mark.parametrize("name", ["fastnorm"] + MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # an optional dependency (dask, mpi4py, scikit-learn) is missing
        pytest.skip(f"{name}: {error}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output above)"
