"""The README's Python blocks run as pasted, in order, in one namespace; a block whose first line is
``# needs: module ...`` runs where those optional modules are installed."""
import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    if not README.exists():  # an installed copy of the tests without the README
        return []
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.mark.skipif(not python_blocks(), reason="README.md is not beside the tests")
def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block may write files (fastnorm.save)
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks()):
        needs = re.match(r"# needs: ([\w ]+)\n", block)  # one or more modules, separated by spaces
        if needs and any(importlib.util.find_spec(name) is None for name in needs.group(1).split()):
            continue
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as error:  # name the block in the failure
            raise AssertionError(f"README python block {i + 1} failed: {error!r}\n{block}") from error
    assert "fastnorm" in namespace  # the blocks did run
