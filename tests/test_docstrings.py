"""The public docstrings of the layers, SyncBatchNorm and deployment in numpydoc form: each says what it
takes, returns and raises, and shows an example (tests/test_doctests.py runs the examples)."""
import inspect
import re

import pytest

import fastnorm
from fastnorm import layers

LAYERS = [getattr(fastnorm, name) for name in layers.__all__ if name != "no_grad"] + [fastnorm.SyncBatchNorm]
METHODS = ["forward", "backward", "train", "eval", "state_dict", "load_state_dict", "reset_parameters",
           "reset_running_stats", "calibrate", "convert"]
FUNCTIONS = [fastnorm.no_grad, fastnorm.save, fastnorm.load, fastnorm.fold_batch_norm,
             fastnorm.calibrate_batch_norms, fastnorm.show_config, fastnorm.from_keras]
# The callables whose errors are part of their contract (the others raise only what Python would).
RAISES = {"forward", "backward", "load_state_dict", "calibrate", "convert", "save", "load", "fold_batch_norm",
          "calibrate_batch_norms", "from_keras"}


def sections(doc):
    """The numpydoc section titles of a docstring, with the text of each."""
    parts = re.split(r"^[ \t]*(\w[\w ]*)\n[ \t]*-{3,}[ \t]*$", inspect.cleandoc(doc), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def documented(section):
    """The names a Parameters-style section describes (``a, b : type`` describes a and b)."""
    return {name for line in section.splitlines() if line and not line[0].isspace() and " : " in f"{line} "
            for name in line.split(" : ")[0].split(", ")}


def public_methods():
    for cls in LAYERS:
        for name in METHODS:
            if hasattr(cls, name):
                yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")


@pytest.mark.parametrize("cls", LAYERS, ids=lambda cls: cls.__name__)
def test_layer_docstring_lists_parameters_shape_attributes_formula_and_source(cls):
    found = sections(cls.__doc__)
    assert {"Parameters", "Shape", "Attributes", "Notes", "References", "Examples"} <= set(found)
    assert set(inspect.signature(cls).parameters) <= documented(found["Parameters"])
    assert {"input", "output"} <= documented(found["Shape"])
    expected = {"weight", "grad_weight", "training"} | (set() if cls is fastnorm.RMSNorm else {"bias", "grad_bias"})
    if issubclass(cls, layers._NormBase):
        expected |= {"running_mean", "running_var", "num_batches_tracked"}
    assert expected <= documented(found["Attributes"])
    assert ".. math::" in found["Notes"]
    # The paper (LRN's, AlexNet, is in the NeurIPS proceedings rather than on arXiv) and PyTorch's class.
    assert any(site in found["References"] for site in ("arxiv.org", "papers.nips.cc"))
    assert "pytorch.org/docs" in found["References"]
    assert ">>> " in found["Examples"]


@pytest.mark.parametrize("cls, name", public_methods())
def test_method_docstrings_say_what_they_take_return_and_raise(cls, name):
    _check_callable(getattr(cls, name), name)


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_function_docstrings_say_what_they_take_return_and_raise(function):
    _check_callable(function, function.__name__)


def _check_callable(function, name):
    found = sections(function.__doc__)
    signature = inspect.signature(function)
    parameters = set(signature.parameters) - {"self", "cls"}
    if parameters:
        assert parameters <= documented(found.get("Parameters", "")), f"{name}: parameters not described"
    if signature.return_annotation not in (None, "None"):
        assert "Returns" in found, f"{name}: no Returns section"
    if name in RAISES:
        assert "Raises" in found, f"{name}: no Raises section"
    assert ">>> " in found.get("Examples", ""), f"{name}: no example"
