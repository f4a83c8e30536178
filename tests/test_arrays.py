"""Arrays the kernels must not misread: every array argument of every entry point (functions, backward
functions, the steps of a batch split across processes, moments, layers with their eval fast path and their
buffers, state dicts, calibration,
SyncBatchNorm, fold_batch_norm), given in the other byte order or misaligned, gives the bits of the
native call and writes nothing but what that call writes (in the argument's own form); given as a masked
array, raises a TypeError naming it and writes nothing, except the input of the functions that take a
``mask=`` (MASKED_INPUT): there the values masked out reach no statistic; and the input of the layers,
which take it with its mask (LAYER_MASKED_INPUT), or refuse it naming ``mask`` (MASKED_REFUSED).

The misaligned arguments are what the sanitizer run of .ci/run needs: a kernel that read them as they
are would do misaligned loads, which UBSan reports."""
import re

import numpy as np
import pytest

import fastnorm
import memory
from fastnorm import functional as F

X = (4, 3, 5)          # (N, C, S): C = 3 channels
C = 3
CASES = {}


def entry(written=(), errors=None, **shapes):
    """Register ``call(args)`` as an entry point whose array arguments have ``shapes``; it returns the
    arrays to compare.  ``written``: the arguments the call writes (out=, running statistics);
    ``errors``: the name a TypeError gives for an argument, where it is not the argument's own."""
    def register(call):
        CASES[call.__name__] = (shapes, set(written), errors or {}, call)
        return call
    return register


def _args(shapes, dtype, seed=0):
    """Fresh native arguments: positive values for variances and counts, normal ones otherwise."""
    rng = np.random.default_rng(seed)
    args = {}
    for name, shape in shapes.items():
        positive = any(k in name for k in ("var", "std", "count", "m2"))
        values = rng.uniform(0.5, 2.0, shape) if positive else rng.normal(1.0, 2.0, shape)
        args[name] = values.astype(dtype)
    return args


# --- functions -------------------------------------------------------------------------------------------

@entry(input=X, running_mean=(C,), running_var=(C,), weight=(C,), bias=(C,), out=X,
       written=("out", "running_mean", "running_var"))
def batch_norm_train(a):
    y = fastnorm.batch_norm(a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"], training=True,
                            out=a["out"])
    return y, a["running_mean"], a["running_var"]


@entry(input=(6, C), running_mean=(C,), running_var=(C,), weight=(C,), bias=(C,),
       written=("running_mean", "running_var"))
def batch_norm_train_channels_last(a):
    return (*fastnorm.batch_norm(a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                 training=True, momentum=None, num_batches_tracked=3, return_stats=True),
            a["running_mean"], a["running_var"])


@entry(input=X, running_mean=(C,), running_var=(C,), weight=(C,), bias=(C,), out=X, written=("out",))
def batch_norm_eval(a):
    return fastnorm.batch_norm(a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"], out=a["out"]),


@entry(input=(4, 6), weight=(6,), bias=(6,), out=(4, 6), written=("out",))
def layer_norm(a):
    return fastnorm.layer_norm(a["input"], 6, a["weight"], a["bias"], out=a["out"], return_stats=True)


@entry(input=(2, 3, 4), weight=(3, 4), bias=(3, 4))
def layer_norm_2d(a):
    return fastnorm.layer_norm(a["input"], (3, 4), a["weight"], a["bias"]),


@entry(input=(4, 6), weight=(6,), out=(4, 6), written=("out",))
def rms_norm(a):
    return fastnorm.rms_norm(a["input"], 6, a["weight"], out=a["out"], return_stats=True)


@entry(input=(2, 4, 3), weight=(4,), bias=(4,), out=(2, 4, 3), written=("out",))
def group_norm(a):
    return fastnorm.group_norm(a["input"], 2, a["weight"], a["bias"], out=a["out"], return_stats=True)


@entry(input=(2, 3, 4), weight=(4,), bias=(4,), out=(2, 3, 4), written=("out",))
def group_norm_channels_last(a):
    return fastnorm.group_norm(a["input"], 2, a["weight"], a["bias"], channel_axis=-1, out=a["out"],
                               return_stats=True)


@entry(input=X, running_mean=(C,), running_var=(C,), weight=(C,), bias=(C,), out=X,
       written=("out", "running_mean", "running_var"))
def instance_norm_train(a):
    y = fastnorm.instance_norm(a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                               out=a["out"], return_stats=True)
    return (*y, a["running_mean"], a["running_var"])


@entry(input=X, running_mean=(C,), running_var=(C,), weight=(C,), bias=(C,))
def instance_norm_eval(a):
    return fastnorm.instance_norm(a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                  use_input_stats=False)


@entry(x=X)
def moments(a):
    return fastnorm.moments(a["x"], axes=(0, 2))


@entry(x=X, mean=(1, C, 1), variance=(1, C, 1), offset=(1, C, 1), scale=(1, C, 1))
def batch_normalization(a):
    return fastnorm.batch_normalization(a["x"], a["mean"], a["variance"], a["offset"], a["scale"], 1e-3),


@entry(grad_output=X, input=X, mean=(C,), invstd=(C,), weight=(C,))
def batch_norm_backward(a):
    return fastnorm.batch_norm_backward(a["grad_output"], a["input"], a["mean"], a["invstd"],
                                        a["weight"], mask=a.get("mask"))


@entry(grad_output=(4, 6), input=(4, 6), mean=(4,), rstd=(4,), weight=(6,), bias=(6,))
def layer_norm_backward(a):
    return fastnorm.layer_norm_backward(a["grad_output"], a["input"], 6, a["mean"], a["rstd"], a["weight"],
                                        a["bias"], mask=a.get("mask"))


@entry(grad_output=(4, 6), input=(4, 6), rstd=(4,), weight=(6,))
def rms_norm_backward(a):
    return fastnorm.rms_norm_backward(a["grad_output"], a["input"], 6, a["rstd"], a["weight"], mask=a.get("mask"))[:2]


@entry(grad_output=(2, 4, 3), input=(2, 4, 3), mean=(2, 2), rstd=(2, 2), weight=(4,))
def group_norm_backward(a):
    return fastnorm.group_norm_backward(a["grad_output"], a["input"], 2, a["mean"], a["rstd"],
                                        a["weight"], mask=a.get("mask"))


@entry(grad_output=X, input=X, mean=(4, C), rstd=(4, C), weight=(C,))
def instance_norm_backward(a):
    return fastnorm.instance_norm_backward(a["grad_output"], a["input"], a["mean"], a["rstd"],
                                           a["weight"], mask=a.get("mask"))


@entry(input=X, out=X, written=("out",))
def local_response_norm(a):
    return fastnorm.local_response_norm(a["input"], 2, out=a["out"]),


@entry(grad_output=X, input=X)
def local_response_norm_backward(a):
    return fastnorm.local_response_norm_backward(a["grad_output"], a["input"], 3),


@entry(input=X, out=X, written=("out",))
def normalize(a):
    return fastnorm.normalize(a["input"], 3.0, out=a["out"]),


@entry(grad_output=X, input=X)
def normalize_backward(a):
    return fastnorm.normalize_backward(a["grad_output"], a["input"], 2.0, -1),


@entry(input=X)
def batch_norm_stats(a):
    return F.batch_norm_stats(a["input"], 1e-5)


@entry(input=X, weight=(C,), bias=(C,), mean=(C,), invstd=(C,), out=X, written=("out",))
def batch_norm_elemt(a):
    return F.batch_norm_elemt(a["input"], a["weight"], a["bias"], a["mean"], a["invstd"], 1e-5, out=a["out"]),


@entry(input=X, mean=(2, C), invstd=(2, C), running_mean=(C,), running_var=(C,), counts=(2,),
       written=("running_mean", "running_var"))
def batch_norm_gather_stats_with_counts(a):
    return (*F.batch_norm_gather_stats_with_counts(a["input"], a["mean"], a["invstd"], a["running_mean"],
                                                   a["running_var"], 0.1, 1e-5, a["counts"]),
            a["running_mean"], a["running_var"])


@entry(grad_output=X, input=X, mean=(C,), invstd=(C,), weight=(C,))
def batch_norm_backward_reduce(a):
    return F.batch_norm_backward_reduce(a["grad_output"], a["input"], a["mean"], a["invstd"], a["weight"], True,
                                        True, True)


@entry(grad_output=X, input=X, mean=(C,), invstd=(C,), weight=(C,), sum_dy=(C,), sum_dy_xmu=(C,), count=(2,))
def batch_norm_backward_elemt(a):
    return F.batch_norm_backward_elemt(a["grad_output"], a["input"], a["mean"], a["invstd"], a["weight"],
                                       a["sum_dy"], a["sum_dy_xmu"], a["count"]),


@entry(x=X)
def moments_of(a):
    m = fastnorm.Moments.of(a["x"], axes=(0, 2))
    return m.count, m.mean, m.m2


@entry(count=(C,), mean=(C,), m2=(C,))
def moments_from_arrays(a):
    m = fastnorm.Moments(a["count"], a["mean"], a["m2"]) + fastnorm.Moments(2.0, np.ones(C), np.ones(C))
    return m.count, m.mean, m.m2


# --- layers: inputs, gradients and the layer's own buffers ---------------------------------------------

def _with_buffers(layer, a):
    for key in ("weight", "bias", "running_mean", "running_var"):
        if key in a:
            setattr(layer, key, a[key])
    return layer


def _train_and_backward(layer, a):
    y = layer(a["input"], out=a.get("out"))
    dx = layer.backward(a["grad_output"])
    return tuple(v for v in (y, dx, layer.grad_weight, layer.grad_bias, getattr(layer, "running_mean", None),
                             getattr(layer, "running_var", None)) if v is not None)


_BUFFERS = dict(weight=(C,), bias=(C,), running_mean=(C,), running_var=(C,))


@entry(input=(4, C, 2, 2), grad_output=(4, C, 2, 2), out=(4, C, 2, 2), **_BUFFERS,
       written=("out", "running_mean", "running_var"))
def batch_norm_layer_train(a):
    return _train_and_backward(_with_buffers(fastnorm.BatchNorm2d(C, momentum=None), a), a)


@entry(input=(4, C, 2, 2), grad_output=(4, C, 2, 2), **_BUFFERS)
def batch_norm_layer_eval(a):
    # No out=: the eval fast path (the factors folded once, kept in the layer's cache), called twice.
    bn = _with_buffers(fastnorm.BatchNorm2d(C), a).eval()
    bn(a["input"])
    return _train_and_backward(bn, a)


@entry(input=(6, C), grad_output=(6, C), **_BUFFERS, written=("running_mean", "running_var"))
def sync_batch_norm_train(a):
    class OneProcess:
        def Get_size(self):
            return 1

        def Allgather(self, sendbuf, recvbuf):
            recvbuf[...] = sendbuf
    return _train_and_backward(_with_buffers(fastnorm.SyncBatchNorm(C, comm=OneProcess()), a), a)


@entry(input=(2, 3, 4), grad_output=(2, 3, 4), weight=(3, 4), bias=(3, 4), out=(2, 3, 4), written=("out",))
def layer_norm_layer(a):
    return _train_and_backward(_with_buffers(fastnorm.LayerNorm((3, 4)), a), a)


@entry(input=(2, 3, 4), grad_output=(2, 3, 4), weight=(4,))
def rms_norm_layer(a):
    return _train_and_backward(_with_buffers(fastnorm.RMSNorm(4), a), a)


@entry(input=(2, 4, 3), grad_output=(2, 4, 3), weight=(4,), bias=(4,))
def group_norm_layer(a):
    return _train_and_backward(_with_buffers(fastnorm.GroupNorm(2, 4), a), a)


@entry(input=X, grad_output=X, **_BUFFERS, written=("running_mean", "running_var"))
def instance_norm_layer_train(a):
    layer = fastnorm.InstanceNorm1d(C, affine=True, track_running_stats=True)
    return _train_and_backward(_with_buffers(layer, a), a)


@entry(input=(4, C, 2, 2), grad_output=(4, C, 2, 2), out=(4, C, 2, 2), written=("out",))
def lazy_batch_norm_layer_train(a):
    # The first call: num_features from the input (in any memory), then BatchNorm2d's call.
    return _train_and_backward(fastnorm.LazyBatchNorm2d(momentum=None), a)


@entry(input=(C, 5), grad_output=(C, 5))
def lazy_instance_norm_layer_unbatched(a):
    return _train_and_backward(fastnorm.LazyInstanceNorm1d(affine=True, track_running_stats=True), a)


@entry(input=(C, 5), grad_output=(C, 5), **_BUFFERS)
def instance_norm_layer_eval_unbatched(a):
    layer = fastnorm.InstanceNorm1d(C, affine=True, track_running_stats=True).eval()
    return _train_and_backward(_with_buffers(layer, a), a)


@entry(input=X, grad_output=X, out=X, written=("out",))
def local_response_norm_layer(a):
    return _train_and_backward(fastnorm.LocalResponseNorm(2, alpha=0.5), a)


@entry(**_BUFFERS, errors={k: f"state_dict['{k}']" for k in _BUFFERS})
def load_state_dict(a):
    bn = fastnorm.BatchNorm1d(C, dtype=np.float64)
    bn.load_state_dict(dict(a, num_batches_tracked=np.array(2)))
    assert all(getattr(bn, k).dtype == np.float64 for k in _BUFFERS)  # the layer's own dtype, native
    return bn.eval()(np.linspace(-1.0, 1.0, 2 * C).reshape(2, C)), bn.running_mean, bn.running_var


@entry(batch0=(4, C), batch1=(5, C), errors={"batch0": "batches", "batch1": "batches"})
def calibrate(a):
    bn = fastnorm.BatchNorm1d(C).calibrate([a["batch0"], a["batch1"]])
    return bn.running_mean, bn.running_var


@entry(batch=(4, C), errors={"batch": "input"})
def calibrate_batch_norms(a):
    bn = fastnorm.BatchNorm1d(C)
    fastnorm.calibrate_batch_norms([bn], bn, [a["batch"]])
    return bn.running_mean, bn.running_var


@entry(weight=(C, 2, 1, 1), bias=(C,), running_mean=(C,), running_var=(C,), bn_weight=(C,), bn_bias=(C,),
       errors={"running_mean": "bn.running_mean", "running_var": "bn.running_var", "bn_weight": "bn.weight",
               "bn_bias": "bn.bias"})
def fold_batch_norm(a):
    bn = fastnorm.BatchNorm2d(C, dtype=np.float64).eval()
    bn.running_mean, bn.running_var, bn.weight, bn.bias = (a[k] for k in ("running_mean", "running_var",
                                                                          "bn_weight", "bn_bias"))
    return fastnorm.fold_batch_norm(a["weight"], a["bias"], bn)


@entry(gamma=(C,), beta=(C,), moving_mean=(C,), moving_variance=(C,),
       errors={"gamma": "weights[0]", "beta": "weights[1]", "moving_mean": "weights[2]",
               "moving_variance": "weights[3]"})
def from_keras(a):
    config = {"class_name": "BatchNormalization", "config": {"axis": 1}, "build_config": {"input_shape": [4, C, 2]}}
    bn = fastnorm.from_keras(config, [a[k] for k in ("gamma", "beta", "moving_mean", "moving_variance")])
    return bn.weight, bn.bias, bn.running_mean, bn.running_var


# The functions whose input may be a numpy.ma array (its mask is the function's mask=)
MASKED_INPUT = {"batch_norm_train", "batch_norm_train_channels_last", "batch_norm_eval", "layer_norm", "layer_norm_2d",
                "rms_norm", "group_norm", "group_norm_channels_last", "instance_norm_train", "instance_norm_eval",
                "moments"}
# The layers, whose call takes mask= too: a numpy.ma input is its data with that mask (their backward's
# gradients depend on every output, masked-out values included: test_layer_masks.py checks the results).
LAYER_MASKED_INPUT = {"batch_norm_layer_train", "batch_norm_layer_eval", "layer_norm_layer", "rms_norm_layer",
                      "group_norm_layer", "instance_norm_layer_train", "instance_norm_layer_eval_unbatched",
                      "lazy_batch_norm_layer_train", "lazy_instance_norm_layer_unbatched"}
# Where a numpy.ma input reaches a layer that cannot take a mask: a ValueError naming mask.
MASKED_REFUSED = {"sync_batch_norm_train": "mask: not supported by SyncBatchNorm in training",
                  "calibrate_batch_norms": "mask: not supported while calibrate_batch_norms records"}
BACKWARD_MASKED_INPUT = {"batch_norm_backward", "layer_norm_backward", "rms_norm_backward", "group_norm_backward",
                         "instance_norm_backward"}


def _check_masked_input(call, shapes, dtype, name):
    """Another value under the mask changes no statistic and no output but its own."""
    results = []
    for hidden in (0.0, 1e6):
        args = _args(shapes, dtype)
        args[name] = memory.masked(args[name])
        args[name].data.flat[0] = hidden
        got = call(args)
        results.append((got,) if isinstance(got, np.ndarray) else got)
    for a, b in zip(*results):
        if a.shape == shapes[name]:
            a, b = a.reshape(-1)[1:], b.reshape(-1)[1:]
        assert type(a) is np.ndarray
        np.testing.assert_array_equal(a, b)


# --- the test --------------------------------------------------------------------------------------------

ARGUMENTS = [(case, name) for case, (shapes, _, _, _) in CASES.items() for name in shapes]


@pytest.mark.parametrize("kind", ["swapped", "misaligned", "masked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case, name", ARGUMENTS, ids=[f"{c}-{n}" for c, n in ARGUMENTS])
def test_every_array_argument_in_unusual_memory(case, name, dtype, kind):
    shapes, written, errors, call = CASES[case]
    expected = call(_args(shapes, dtype))
    args = _args(shapes, dtype)
    args[name] = memory.in_memory(args[name], kind)
    before = {k: np.asarray(v).tobytes() for k, v in args.items()}
    if kind == "masked" and case in MASKED_INPUT and name in ("input", "x"):
        _check_masked_input(call, shapes, dtype, name)
        return
    if kind == "masked" and case in MASKED_REFUSED and name in ("input", "batch"):
        with pytest.raises(ValueError, match=MASKED_REFUSED[case]):
            call(args)
        assert all(np.asarray(args[k]).tobytes() == before[k] for k in args), "a failed call wrote"
        return
    if kind == "masked" and case in LAYER_MASKED_INPUT and name == "input":
        assert all(type(g) is np.ndarray for g in call(args))
        assert all(np.asarray(args[k]).tobytes() == before[k] for k in args if k not in written), "it wrote"
        return
    if kind == "masked" and case in BACKWARD_MASKED_INPUT and name == "input":
        # the gradient of every output reaches the statistics: the masked input is its data with mask=
        data = _args(shapes, dtype)
        data["mask"] = ~np.ma.getmaskarray(args[name])
        for g, e in zip(call(args), call(data)):
            np.testing.assert_array_equal(g, e)
        return
    if kind == "masked":
        with pytest.raises(TypeError, match=re.escape(errors.get(name, name)) + ": masked arrays are not supported"):
            call(args)
        # grad_output is refused by backward, after a forward that wrote what it writes.
        kept = [k for k in args if name != "grad_output" or k not in written]
        assert all(np.asarray(args[k]).tobytes() == before[k] for k in kept), "a failed call wrote"
        return
    got = call(args)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert np.array_equal(g, e, equal_nan=True), f"{case}: {name} {kind} changed a result"
        if not any(g is v for v in args.values()):  # a new array: native byte order, the native call's dtype
            assert g.dtype == e.dtype and g.dtype.isnative
    for k, v in args.items():
        if k not in written:
            assert np.asarray(v).tobytes() == before[k], f"{case}: wrote into {k}"


def test_every_entry_point_is_covered():
    """A new public function or layer needs a case here."""
    covered = {c.split("_layer")[0] for c in CASES} | set(CASES)
    public = [n for n in fastnorm.__all__ if callable(getattr(fastnorm, n)) and not n.startswith(("get_", "set_"))
              and n not in ("threads", "show_config", "no_grad", "save", "load")]
    names = {"BatchNorm1d": "batch_norm_layer_train", "BatchNorm2d": "batch_norm_layer_train",
             "BatchNorm3d": "batch_norm_layer_train", "LayerNorm": "layer_norm_layer", "RMSNorm": "rms_norm_layer",
             "GroupNorm": "group_norm_layer", "InstanceNorm1d": "instance_norm_layer_train",
             "InstanceNorm2d": "instance_norm_layer_train", "InstanceNorm3d": "instance_norm_layer_train",
             "LocalResponseNorm": "local_response_norm_layer", "Moments": "moments_of",
             "SyncBatchNorm": "sync_batch_norm_train",
             **{f"Lazy{kind}Norm{d}d": f"lazy_{kind.lower()}_norm" for kind in ("Batch", "Instance")
                for d in (1, 2, 3)}}
    missing = [n for n in public if names.get(n, n) not in covered and n + "_train" not in covered]
    assert not missing


@pytest.mark.parametrize("kind", ["swapped", "misaligned"])
def test_float16_input_in_unusual_memory(kind):
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float16)
    y = fastnorm.layer_norm(memory.in_memory(x, kind), 8)
    assert y.dtype == np.float16 and y.dtype.isnative
    np.testing.assert_array_equal(y, fastnorm.layer_norm(x, 8))


def test_running_statistics_in_the_other_byte_order_are_updated_in_it():
    """The documented choice: a running statistic in the other byte order is updated in place, correctly,
    in its own byte order (a big-endian model read from a file keeps training)."""
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, C))
    rm, rv = memory.swapped(np.zeros(C)), memory.swapped(np.ones(C))
    fastnorm.batch_norm(x, rm, rv, training=True, momentum=1.0)
    assert not rm.dtype.isnative
    np.testing.assert_allclose(rm, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv, x.var(axis=0, ddof=1), rtol=1e-12)


def test_frombuffer_big_endian_data():
    """Data read from a big-endian file, e.g. FITS: ``np.frombuffer(raw, '>f4')`` (read-only)."""
    x = np.random.default_rng(0).normal(size=(8, C)).astype(np.float32)
    raw = x.astype(">f4").tobytes()
    data = np.frombuffer(raw, ">f4").reshape(8, C)
    np.testing.assert_array_equal(fastnorm.batch_norm(data, training=True), fastnorm.batch_norm(x, training=True))
    np.testing.assert_array_equal(fastnorm.BatchNorm1d(C).eval()(data), fastnorm.BatchNorm1d(C).eval()(x))
