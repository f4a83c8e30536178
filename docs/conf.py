"""Sphinx configuration: the user guide is the README's sections (one source), the API reference the
docstrings (numpydoc form, rendered by napoleon)."""
import fastnorm

project = "fastnorm"
author = "The fastnorm developers"
copyright = "2026, The fastnorm developers"
release = version = fastnorm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Shape", "params_style")]  # a layer's input and output shapes, as PyTorch's docs
autodoc_member_order = "bysource"
# The docstrings state every type in numpydoc form; annotations in the signatures would repeat them, and an
# overloaded function (``return_stats``, ``SyncBatchNorm.convert``) would be shown once per overload with
# every annotation spelled out (Sphinx 9 also prints aliases nested in them as ``TypeAliasForwardRef(...)``).
autodoc_typehints = "none"
autodoc_mock_imports = ["mpi4py"]
myst_heading_anchors = 3
html_theme = "alabaster"
exclude_patterns = ["_build"]
