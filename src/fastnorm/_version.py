"""The version of fastnorm, read by the build (pyproject's dynamic version) and by ``fastnorm.__version__``."""
__version__ = "0.1.0"
