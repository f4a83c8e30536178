"""The package's namespace: every name in ``fastnorm.__all__`` is there, and the submodules imported on
first use (``onnx``, ``preprocessing``) are the modules of those names however they are reached, and are
not imported by ``import fastnorm``."""
import pytest

import fastnorm
from conftest import fresh_python


def _run(code):
    return fresh_python(code).split()


LAZY = ("onnx", "preprocessing")


@pytest.mark.parametrize("reach", ["import fastnorm; m = fastnorm.{name}",
                                   "from fastnorm import {name} as m",
                                   "import fastnorm; m = getattr(fastnorm, '{name}')",
                                   "import fastnorm.{name}; import fastnorm; m = fastnorm.{name}"])
@pytest.mark.parametrize("first", LAZY)
def test_a_lazy_submodule_is_the_module_of_its_name(reach, first):
    # In a new process, so that neither is imported yet; each reached first, then the other.
    order = [first, *(name for name in LAZY if name != first)]
    code = "".join(f"{reach.format(name=name)}; print(m.__name__)\n" for name in order)
    assert _run(code) == [f"fastnorm.{name}" for name in order]


def test_import_fastnorm_imports_no_lazy_submodule():
    assert _run("import sys, fastnorm; print(*(f'fastnorm.{n}' in sys.modules for n in %r))" % (LAZY,)) \
        == ["False"] * len(LAZY)


def test_every_public_name_is_there_and_others_are_an_attribute_error():
    for name in fastnorm.__all__:
        value = getattr(fastnorm, name)
        if name in LAZY or name == "functional":
            assert value.__name__ == f"fastnorm.{name}"
    with pytest.raises(AttributeError, match="'fastnorm' has no attribute 'onnxx'"):
        _ = fastnorm.onnxx
