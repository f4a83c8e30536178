"""The sources stay one room per idea: every native part is included by the one extension module (one
thread pool and one output cache per process), every file (the package's, the tests' and the
benchmarks') is small enough to read, and the sdist ships the native parts."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "fastnorm"
NATIVE = sorted([*PACKAGE.glob("*.pyx"), *PACKAGE.glob("*.pxi"), *PACKAGE.glob("*.pxd"), *PACKAGE.glob("*.h")])
# The tests and benchmarks are code to read too (tests/reference.py above all: the twins are trusted by reading).
SOURCES = NATIVE + sorted(PACKAGE.glob("*.py")) + sorted(
    p for folder in ("tests", "bench") for pattern in ("*.py", "*.c", "*.h") for p in (ROOT / folder).rglob(pattern))


@pytest.mark.skipif(not (PACKAGE / "_kernels.pyx").exists(), reason="needs the source tree")
def test_every_part_is_included_by_the_one_extension_module():
    pyx = sorted(p.name for p in PACKAGE.glob("*.pyx"))
    assert pyx == ["_kernels.pyx"], "one extension module: a second would compile its own pool and cache"
    included = set(re.findall(r'^include "(\w+\.pxi)"', (PACKAGE / "_kernels.pyx").read_text(), re.M))
    assert included == {p.name for p in PACKAGE.glob("*.pxi")}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_files_stay_under_700_lines(path):
    assert len(path.read_text().splitlines()) <= 700


@pytest.mark.skipif(not (ROOT / "MANIFEST.in").exists(), reason="needs the source tree")
def test_the_sdist_and_wheel_carry_every_native_part():
    manifest = (ROOT / "MANIFEST.in").read_text()
    for pattern in ("src/fastnorm/*.pyx", "src/fastnorm/*.pxi", "src/fastnorm/*.pxd", "src/fastnorm/*.h"):
        assert pattern in manifest
    package_data = re.search(r"^fastnorm = \[(.*)\]", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for pattern in ('"*.pyx"', '"*.pxi"', '"*.pxd"'):
        assert pattern in package_data
