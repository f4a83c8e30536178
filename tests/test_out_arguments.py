"""Every argument that names where a result goes (``out=``, ``residual_out=``), of every public function
and layer, refuses anything but a writable ndarray of the result's shape and dtype with a TypeError or
ValueError that names it, before anything is written: the inputs, the residual and the other output
keep their values."""
import inspect

import numpy as np
import pytest

import fastnorm
from fastnorm import functional as F
from test_half import HALVES

SHAPE = (4, 6, 8)

# label: (call of (x, r, **outputs), the output arguments it takes); r is a residual of x's shape and dtype.
CALLS = {
    "batch_norm": (lambda x, r, **o: F.batch_norm(x, None, None, training=True, **o), ("out",)),
    "batch_norm, eval": (lambda x, r, **o: F.batch_norm(x, np.zeros(6), np.ones(6), **o), ("out",)),
    "batch_norm, activation and add": (
        lambda x, r, **o: F.batch_norm(x, None, None, training=True, activation="relu", add=r, **o), ("out",)),
    "batch_norm, mask": (lambda x, r, **o: F.batch_norm(x, None, None, training=True, mask=x > 0, **o), ("out",)),
    "batch_norm, two channel axes": (
        lambda x, r, **o: F.batch_norm(x, None, None, training=True, channel_axis=(1, 2), **o), ("out",)),
    "group_norm": (lambda x, r, **o: F.group_norm(x, 2, **o), ("out",)),
    "group_norm, mask": (lambda x, r, **o: F.group_norm(x, 2, mask=x > 0, activation="silu", **o), ("out",)),
    "instance_norm": (lambda x, r, **o: F.instance_norm(x, **o), ("out",)),
    "layer_norm": (lambda x, r, **o: F.layer_norm(x, 8, **o), ("out",)),
    "layer_norm, axes": (lambda x, r, **o: F.layer_norm(x, None, axes=(0, 2), activation="gelu", **o), ("out",)),
    "layer_norm, mask": (lambda x, r, **o: F.layer_norm(x, 8, mask=x > 0, **o), ("out",)),
    "layer_norm, residual": (lambda x, r, **o: F.layer_norm(x, 8, residual=r, **o), ("out", "residual_out")),
    "layer_norm, residual and mask": (
        lambda x, r, **o: F.layer_norm(x, 8, residual=r, mask=x > 0, **o), ("out", "residual_out")),
    "rms_norm": (lambda x, r, **o: F.rms_norm(x, 8, **o), ("out",)),
    "rms_norm, residual": (
        lambda x, r, **o: F.rms_norm(x, 8, residual=r, activation="relu", **o), ("out", "residual_out")),
    "local_response_norm": (lambda x, r, **o: F.local_response_norm(x, 2, **o), ("out",)),
    "normalize": (lambda x, r, **o: F.normalize(x, **o), ("out",)),
    "batch_norm_elemt": (lambda x, r, **o: F.batch_norm_elemt(x, None, None, np.zeros(6), np.ones(6), 1e-5, **o),
                         ("out",)),
    "BatchNorm1d": (lambda x, r, **o: fastnorm.BatchNorm1d(6)(x, **o), ("out",)),
    "BatchNorm1d, eval": (lambda x, r, **o: fastnorm.BatchNorm1d(6).eval()(x, **o), ("out",)),
    "LazyBatchNorm1d": (lambda x, r, **o: fastnorm.LazyBatchNorm1d()(x, **o), ("out",)),
    "LazyInstanceNorm1d": (lambda x, r, **o: fastnorm.LazyInstanceNorm1d()(x, **o), ("out",)),
    "SyncBatchNorm": (lambda x, r, **o: fastnorm.SyncBatchNorm(6)(x, **o), ("out",)),
    "GroupNorm": (lambda x, r, **o: fastnorm.GroupNorm(2, 6)(x, **o), ("out",)),
    "InstanceNorm1d": (lambda x, r, **o: fastnorm.InstanceNorm1d(6)(x, **o), ("out",)),
    "LocalResponseNorm": (lambda x, r, **o: fastnorm.LocalResponseNorm(2)(x, **o), ("out",)),
    "LayerNorm": (lambda x, r, **o: fastnorm.LayerNorm(8)(x, **o), ("out",)),
    "LayerNorm, residual": (lambda x, r, **o: fastnorm.LayerNorm(8)(x, residual=r, **o), ("out", "residual_out")),
    "RMSNorm, residual": (lambda x, r, **o: fastnorm.RMSNorm(8)(x, residual=r, **o), ("out", "residual_out")),
}

# label: (what is passed, a maker of it given the input, the exception); the message names the argument.
BAD = {
    "a list": (lambda x: x.tolist(), TypeError),
    "a tuple of arrays": (lambda x: (np.empty_like(x), np.empty_like(x)), TypeError),
    "a scalar": (lambda x: 1.0, TypeError),
    "a masked array": (lambda x: np.ma.masked_array(np.empty_like(x)), TypeError),
    "another float dtype": (lambda x: np.empty(x.shape, np.float64 if x.dtype == np.float32 else np.float32),
                            TypeError),
    "another 2-byte dtype": (lambda x: np.empty(x.shape, np.int16 if x.dtype == np.float16 else np.float16),
                             TypeError),  # a float16 out for a bfloat16 input among them
    "an integer dtype": (lambda x: np.empty(x.shape, np.int32), TypeError),
    "another shape": (lambda x: np.empty(x.shape[:-1] + (9,), x.dtype), ValueError),
    "a read-only array": (lambda x: np.broadcast_to(np.empty(x.shape[-1:], x.dtype), x.shape), ValueError),
}


def _cases():
    for label, (_, outputs) in CALLS.items():
        for name in outputs:
            yield label, name


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), *HALVES])
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("label, name", list(_cases()))
def test_bad_output_argument_is_refused_before_anything_is_written(label, name, bad, dtype):
    call, outputs = CALLS[label]
    if label == "SyncBatchNorm":
        pytest.importorskip("mpi4py")  # the mpi extra: without it the layer raises ModuleNotFoundError
    rng = np.random.default_rng(7)
    x = rng.standard_normal(SHAPE).astype(dtype)
    r = rng.standard_normal(SHAPE).astype(dtype)
    others = {other: np.full(SHAPE, 5.0, dtype) for other in outputs if other != name}
    kept = [a.copy() for a in (x, r, *others.values())]
    make, error = BAD[bad]
    with pytest.raises(error, match=f"^{name}: "):
        call(x, r, **{name: make(x)}, **others)
    for before, after in zip(kept, (x, r, *others.values())):
        np.testing.assert_array_equal(after, before)


def _output_arguments(function):
    return {p for p in inspect.signature(function).parameters if p == "out" or p.endswith("_out")}


def test_every_output_argument_is_covered():
    """A public function or layer that takes an output argument has a case above for each one (a layer
    through its class or one that shares its forward: BatchNorm2d's is BatchNorm1d's)."""
    public = {name: getattr(F, name) for name in F.__all__}
    public.update({name: getattr(fastnorm, name).forward for name in fastnorm.__all__
                   if inspect.isclass(getattr(fastnorm, name)) and hasattr(getattr(fastnorm, name), "forward")})
    covered = {}
    for label, (_, outputs) in CALLS.items():
        covered.setdefault(public[label.split(",")[0]], set()).update(outputs)
    missing = {name: _output_arguments(f) - covered.get(f, set()) for name, f in public.items()}
    assert {name: args for name, args in missing.items() if args} == {}
