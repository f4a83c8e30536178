"""fastnorm type-checks: ``mypy --strict`` on the package; a user's script on the public API
(tests/typing/user_script.py) under ``mypy --strict`` and pyright's strict mode, and it runs; the stub of
the compiled module (``_kernels.pyi``) matches the built module, name for name and parameter for
parameter (mypy's stubtest).

The checkers come with the ``typing`` extra; each check skips where its tool is not installed, and the
pyright check also where pyright cannot start (it runs on Node.js: ``pyright[nodejs]`` brings it).
"""
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TYPING = ROOT / "tests" / "typing"
SCRIPT = TYPING / "user_script.py"

requires_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                   reason="mypy is not installed (pip install fastnorm[typing])")


def _run(*args, timeout=600, imports_fastnorm=False):
    """Run ``python -m <args>`` from the repository root, in this interpreter's environment.  A checker
    that only reads files runs without LD_PRELOAD (the sanitizer runtimes of CI's sanitized build)."""
    env = dict(os.environ, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")
    if not imports_fastnorm:
        env.pop("LD_PRELOAD", None)
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mypy_cache")


def _assert_clean(result, tool):
    assert result.returncode == 0, f"{tool} found errors:\n{result.stdout}\n{result.stderr}"


def test_user_script_runs():
    spec = importlib.util.spec_from_file_location("fastnorm_user_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()


@requires_mypy
def test_package_is_mypy_strict_clean(mypy_cache):
    # The [tool.mypy] table of pyproject.toml: strict, files = src/fastnorm.
    result = _run("mypy", "--cache-dir", mypy_cache)
    _assert_clean(result, "mypy --strict src/fastnorm")
    assert "Success: no issues found" in result.stdout


@requires_mypy
def test_user_script_is_mypy_strict_clean(mypy_cache):
    # fastnorm is seen as a user sees an installed package: only the script's own errors are reported.
    result = _run("mypy", "--cache-dir", mypy_cache, "--strict", "--follow-imports=silent", SCRIPT)
    _assert_clean(result, "mypy --strict on the user script")
    assert "Success: no issues found in 1 source file" in result.stdout


@requires_mypy
def test_stub_matches_the_compiled_module():
    result = _run("mypy.stubtest", "fastnorm._kernels", "--allowlist", TYPING / "stubtest_allowlist.txt",
                  imports_fastnorm=True)
    _assert_clean(result, "stubtest (src/fastnorm/_kernels.pyi against the built module)")


def test_stub_is_packaged():
    # A checker finds the stub beside the built module, where an installed fastnorm has it.
    import fastnorm._kernels

    assert Path(fastnorm._kernels.__file__).with_name("_kernels.pyi").is_file()


@pytest.fixture(scope="module")
def pyright():
    if importlib.util.find_spec("pyright") is None:
        pytest.skip("pyright is not installed (pip install fastnorm[typing])")
    try:
        started = _run("pyright", "--version", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("pyright did not start within 2 minutes (it fetches Node.js where none is installed)")
    if started.returncode != 0:
        pytest.skip(f"pyright cannot start here: {started.stderr.strip()[-300:]}")


def test_user_script_is_pyright_strict_clean(pyright):
    if importlib.util.find_spec("dask") is None:
        pytest.skip("the script's Dask part needs dask to type-check (pip install fastnorm[dask])")
    result = _run("pyright", "--pythonpath", sys.executable, SCRIPT)
    _assert_clean(result, "pyright on the user script")
    assert "0 errors" in result.stdout


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.get_overloads needs Python 3.11")
@pytest.mark.parametrize("name", ["batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm",
                                  "batch_norm_backward", "group_norm_backward", "instance_norm_backward",
                                  "layer_norm_backward", "rms_norm_backward"])
def test_overloads_take_the_keywords_of_the_function(name):
    # An overload states the keyword-only arguments it splits on and takes the others as **options, a
    # TypedDict of fastnorm._options: they are the function's own, of the same types, and all of them.
    import typing

    from fastnorm import _options, functional

    function = getattr(functional, name)
    own = {n: p.annotation for n, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY}
    overloads = typing.get_overloads(function)
    assert len(overloads) >= 2
    seen = set()
    for overload in overloads:
        parameters = inspect.signature(overload).parameters
        stated = {n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
        options = getattr(_options, parameters["options"].annotation.removeprefix("Unpack[").removesuffix("]"))
        typed = {n: a.__forward_arg__ for n, a in options.__annotations__.items()}
        assert not stated & set(typed) and stated | set(typed) <= set(own)
        assert typed == {n: own[n] for n in typed}
        seen |= stated | set(typed)
    assert seen == set(own)
