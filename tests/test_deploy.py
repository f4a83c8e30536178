"""Inference pipelines: folding, the eval cache, state dicts, save/load, pickling, threads, zero copy."""
import copy
import io
import json
import os
import pickle
import re
import struct
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnorm
import reference
from conftest import requires_safetensors, requires_torch, torch


def _trained_bn(cls, C, rng, dtype=np.float64, **kwargs):
    bn = cls(C, dtype=dtype, **kwargs)
    bn.weight[:] = rng.normal(size=C)
    bn.bias[:] = rng.normal(size=C)
    bn.running_mean[:] = rng.normal(size=C) * 3
    bn.running_var[:] = rng.uniform(0.2, 3.0, C)
    return bn.eval()


def _conv2d(x, w, b):
    """Plain 'valid' cross-correlation, NCHW, stride 1."""
    N, _, H, W = x.shape
    O, I, kh, kw = w.shape
    out = np.zeros((N, O, H - kh + 1, W - kw + 1))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + H - kh + 1, j:j + W - kw + 1], w[:, :, i, j])
    return out + b[None, :, None, None]


def test_fold_into_conv_is_exact_in_float64(rng):
    bn = _trained_bn(fastnorm.BatchNorm2d, 5, rng)
    w, b = rng.normal(size=(5, 3, 3, 3)), rng.normal(size=5)
    x = rng.normal(size=(2, 3, 8, 8))
    fw, fb = fastnorm.fold_batch_norm(w, b, bn, layout="conv")
    np.testing.assert_allclose(_conv2d(x, fw, fb), bn(_conv2d(x, w, b)), rtol=1e-12, atol=1e-12)


def test_fold_into_linear_is_exact_in_float64(rng):
    bn = _trained_bn(fastnorm.BatchNorm1d, 6, rng)
    w = rng.normal(size=(6, 4))
    x = rng.normal(size=(10, 4))
    fw, fb = fastnorm.fold_batch_norm(w, None, bn, layout="linear")
    np.testing.assert_allclose(x @ fw.T + fb, bn(x @ w.T), rtol=1e-12, atol=1e-12)
    assert fw.dtype == np.float64


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_fold_keeps_a_half_weight_half(rng, half):
    """Half-precision weights (float16, ml_dtypes.bfloat16) fold in float64, rounded once to their dtype."""
    if half == "bfloat16":
        half = pytest.importorskip("ml_dtypes").bfloat16
    bn = _trained_bn(fastnorm.BatchNorm1d, 6, rng)
    w = rng.normal(size=(6, 4)).astype(half)
    fw, fb = fastnorm.fold_batch_norm(w, None, bn, layout="linear")
    want_w, want_b = fastnorm.fold_batch_norm(w.astype(np.float64), None, bn, layout="linear")
    assert fw.dtype == fb.dtype == np.dtype(half)
    np.testing.assert_array_equal(fw.astype(np.float64), want_w.astype(half).astype(np.float64))
    np.testing.assert_array_equal(fb.astype(np.float64), want_b.astype(half).astype(np.float64))
    with pytest.raises(TypeError, match="weight: expected a floating-point array"):
        fastnorm.fold_batch_norm(np.ones((6, 4), np.int32), None, bn, layout="linear")


def test_fold_errors(rng):
    bn = _trained_bn(fastnorm.BatchNorm1d, 6, rng)
    with pytest.raises(ValueError, match="weight: expected 6 output channels"):
        fastnorm.fold_batch_norm(np.ones((5, 4)), None, bn, layout="linear")
    with pytest.raises(ValueError, match="layout"):
        fastnorm.fold_batch_norm(np.ones((6, 4)), None, bn, layout="dense")
    with pytest.raises(ValueError, match="running statistics"):
        fastnorm.fold_batch_norm(np.ones((6, 4)), None, fastnorm.BatchNorm1d(6, track_running_stats=False),
                                 layout="linear")
    with pytest.raises(TypeError, match="bn: expected a fastnorm BatchNorm"):
        fastnorm.fold_batch_norm(np.ones((6, 4)), None, fastnorm.LayerNorm(6), layout="linear")


@requires_torch
def test_fold_matches_torch_fusion(rng):
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    bn = _trained_bn(fastnorm.BatchNorm2d, 4, rng)
    w, b = rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4)
    fw, fb = fastnorm.fold_batch_norm(w, b, bn)
    tw, tb = fuse_conv_bn_weights(*(torch.from_numpy(np.asarray(a)) for a in (
        w, b, bn.running_mean, bn.running_var)), bn.eps, torch.from_numpy(bn.weight), torch.from_numpy(bn.bias))
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-12)


# --------------------------------------------------------------------------------------------------------
# The eval cache never serves stale factors
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    lambda bn: setattr(bn, "weight", bn.weight * 2),
    lambda bn: bn.weight.__setitem__(slice(None), 3.0),
    lambda bn: bn.bias.__iadd__(1.0),
    lambda bn: bn.running_mean.__iadd__(0.5),
    lambda bn: np.multiply(bn.running_var, 4.0, out=bn.running_var),
    lambda bn: setattr(bn, "running_var", np.full(bn.num_features, 9.0, bn.dtype)),
    lambda bn: setattr(bn, "eps", 0.5),
    lambda bn: bn.load_state_dict({k: v * 1.5 for k, v in bn.state_dict().items()}),
], ids=["assign-weight", "inplace-weight", "inplace-bias", "inplace-mean", "ufunc-out-var", "assign-var",
        "eps", "load-state"])
@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (5, 4)])
def test_eval_sees_every_parameter_change(rng, change, shape):
    cls = fastnorm.BatchNorm2d if len(shape) == 4 else fastnorm.BatchNorm1d
    bn = _trained_bn(cls, 4, rng, dtype=np.float32)
    x = rng.normal(size=shape).astype(np.float32)
    bn(x)  # fill the cache
    change(bn)
    expected = reference.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    np.testing.assert_allclose(bn(x), expected, atol=1e-5)


def test_train_eval_switch_uses_the_right_statistics(rng):
    bn = fastnorm.BatchNorm2d(3)
    x = (rng.normal(size=(4, 3, 5, 5)) * 2 + 1).astype(np.float32)
    bn.eval()
    first = bn(x)
    bn.train()
    bn(x)  # updates the running statistics in place
    bn.eval()
    expected = reference.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias)
    np.testing.assert_allclose(bn(x), expected, atol=1e-5)
    assert not np.allclose(first, bn(x))


def test_eval_float32_and_float64_inputs_on_one_layer(rng):
    bn = _trained_bn(fastnorm.BatchNorm1d, 3, rng, dtype=np.float32)
    x = rng.normal(size=(6, 3))
    for _ in range(2):
        y64, y32 = bn(x), bn(x.astype(np.float32))
        assert y64.dtype == np.float64 and y32.dtype == np.float32
        np.testing.assert_allclose(y64, y32, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# State dicts, files, pickling
# --------------------------------------------------------------------------------------------------------

def _torch_model():
    """A trained torch model in evaluation mode with a BatchNorm2d at "1." and a LayerNorm(144) at "4."."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.LayerNorm(4 * 6 * 6))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(5, 3, 8, 8))
        model[1].weight.mul_(1.5)
        model[4].bias.add_(0.25)
    return model.eval()


@requires_torch
def test_state_dict_of_a_torch_model_with_prefix(rng):
    model = _torch_model()
    bn = fastnorm.BatchNorm2d(4)
    bn.load_state_dict(model.state_dict(), prefix="1.")
    ln = fastnorm.LayerNorm(4 * 6 * 6)
    ln.load_state_dict(model.state_dict(), prefix="4.")
    bn.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        conv_out = model[0](x)
        np.testing.assert_allclose(bn(conv_out.numpy()), model[1](conv_out).numpy(), atol=1e-5)
        flat = torch.relu(model[1](conv_out)).flatten(1)
        np.testing.assert_allclose(ln(flat.numpy()), model[4](flat).numpy(), atol=1e-5)
    with pytest.raises(RuntimeError, match="Missing key"):
        fastnorm.BatchNorm2d(4).load_state_dict(model.state_dict(), prefix="0.")


def _all_layers(rng):
    layers = {
        "bn": fastnorm.BatchNorm2d(4, momentum=None, channel_axis=-1, bessel=False),
        "ln": fastnorm.LayerNorm((3, 5), eps=1e-3, bias=False),
        "gn": fastnorm.GroupNorm(2, 4, affine=True, dtype=np.float64),
        "inorm": fastnorm.InstanceNorm1d(4, affine=True, track_running_stats=True),
        "rms": fastnorm.RMSNorm(5, eps=None),
    }
    layers["bn"](rng.normal(size=(3, 2, 2, 4)).astype(np.float32))
    layers["inorm"](rng.normal(size=(3, 4, 6)).astype(np.float32))
    for layer in layers.values():
        for key in ("weight", "bias"):
            value = getattr(layer, key, None)
            if value is not None:
                value[...] = rng.normal(size=value.shape)
    layers["bn"].eval()
    return layers


def _same_layer(a, b):
    assert type(a) is type(b) and repr(a) == repr(b) and a.training == b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype
        np.testing.assert_array_equal(sa[key], sb[key])


def test_npz_round_trip(rng, tmp_path):
    layers = _all_layers(rng)
    fastnorm.save(tmp_path / "model.npz", layers)
    loaded = fastnorm.load(tmp_path / "model.npz")
    assert loaded.keys() == layers.keys()
    for name in layers:
        _same_layer(layers[name], loaded[name])
    assert loaded["bn"].channel_axis == -1 and loaded["bn"].bessel is False and loaded["bn"].momentum is None
    fastnorm.save(tmp_path / "one.npz", layers["ln"])
    _same_layer(fastnorm.load(tmp_path / "one.npz"), layers["ln"])
    with np.load(tmp_path / "model.npz", allow_pickle=False) as data:  # no pickled objects inside
        assert "bn.running_mean" in data.files


def test_save_and_load_errors(tmp_path):
    with pytest.raises(TypeError, match="expected a fastnorm layer"):
        fastnorm.save(tmp_path / "x.npz", {"a": object()})
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a file written by fastnorm.save"):
        fastnorm.load(tmp_path / "other.npz")


def test_a_path_of_another_type_is_a_type_error_and_bytes_paths_work(tmp_path):
    for call in (lambda: fastnorm.save(3, fastnorm.LayerNorm(2)), lambda: fastnorm.load(3)):
        with pytest.raises(TypeError, match="path: expected a str, path-like or binary file object, got int"):
            call()
    path = os.fsencode(tmp_path / "ln.safetensors")
    fastnorm.save(path, fastnorm.LayerNorm(2, eps=1e-3))
    assert os.listdir(tmp_path) == ["ln.safetensors"]
    assert fastnorm.load(path).eps == 1e-3


@pytest.mark.parametrize("clone", [lambda layer: pickle.loads(pickle.dumps(layer)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_pickle_and_deepcopy(rng, clone):
    for layer in _all_layers(rng).values():
        twin = clone(layer)
        _same_layer(layer, twin)
        if getattr(twin, "running_mean", None) is not None:
            twin.running_mean += 1  # independent buffers
            assert not np.array_equal(twin.running_mean, layer.running_mean)
    bn = _all_layers(rng)["bn"]
    x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(clone(bn)(x), bn(x))


# --------------------------------------------------------------------------------------------------------
# Threads, zero copy
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, shape", [
    (lambda: fastnorm.BatchNorm2d(16).eval(), (4, 16, 14, 14)),
    (lambda: fastnorm.LayerNorm(64), (32, 64)),
    (lambda: fastnorm.GroupNorm(4, 16), (4, 16, 10, 10)),
])
def test_concurrent_eval_calls_equal_a_serial_run(rng, make, shape):
    layer = make()
    if getattr(layer, "running_mean", None) is not None:
        layer.running_mean[:] = rng.normal(size=16)
    inputs = [rng.normal(size=shape).astype(np.float32) for _ in range(16)]
    with fastnorm.no_grad():
        serial = [layer(x) for x in inputs]
    results = [None] * len(inputs)
    errors = []

    def work(k):
        try:
            with fastnorm.threads(1), fastnorm.no_grad():
                for _ in range(20):
                    results[k] = layer(inputs[k])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not errors
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


def test_memmap_and_read_only_inputs_work(rng, tmp_path):
    data = rng.normal(size=(4, 8, 5, 5)).astype(np.float32)
    path = tmp_path / "x.bin"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    bn = fastnorm.BatchNorm2d(8).eval()
    np.testing.assert_array_equal(bn(mapped), bn(data))
    frozen = np.frombuffer(data.tobytes(), dtype=np.float32).reshape(data.shape)
    assert not frozen.flags.writeable
    np.testing.assert_array_equal(fastnorm.layer_norm(frozen, 5), fastnorm.layer_norm(data, 5))
    np.testing.assert_array_equal(fastnorm.batch_norm(frozen, training=True), fastnorm.batch_norm(data, training=True))


@pytest.mark.parametrize("call", [
    lambda layer, x, out: layer(x, out=out),
])
def test_out_is_written_without_temporaries(rng, call):
    x = rng.normal(size=(8, 64, 32, 32)).astype(np.float32)
    out = np.empty_like(x)
    bn = fastnorm.BatchNorm2d(64)
    with fastnorm.no_grad():
        bn(x, out=out)  # warm up
        tracemalloc.start()
        bn(x, out=out)
        bn.eval()
        bn(x, out=out)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # a few per-channel vectors, never an array of x's size


def test_eval_call_allocates_only_its_output(rng):
    x = rng.normal(size=(8, 64, 32, 32)).astype(np.float32)
    layers = [fastnorm.BatchNorm2d(64).eval(), fastnorm.GroupNorm(8, 64), fastnorm.InstanceNorm2d(64)]
    with fastnorm.no_grad():
        for layer in layers:
            layer(x)
            tracemalloc.start()
            y = layer(x)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert y.nbytes <= peak < y.nbytes + 64 * 1024, (type(layer).__name__, peak)


# --------------------------------------------------------------------------------------------------------
# Files: any name round-trips; damaged or crafted files raise ValueError before allocating what they claim
# --------------------------------------------------------------------------------------------------------

def _file_bytes(layers):
    buffer = io.BytesIO()
    fastnorm.save(buffer, layers)
    return buffer.getvalue()


def _archive(document, arrays=()):
    """An .npz archive with ``document`` as its description (JSON text, or an object to encode)."""
    text = document if isinstance(document, str) else json.dumps(document)
    buffer = io.BytesIO()
    np.savez(buffer, __fastnorm__=np.array(text), **dict(arrays))
    return buffer.getvalue()


def _bounded(call, data):
    """``call(io.BytesIO(data))``: its result, or the ValueError it raised; never another exception, and
    never an allocation much larger than the file."""
    tracemalloc.start()
    try:
        return call(io.BytesIO(data))
    except ValueError as e:
        return e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 4 * len(data) + (1 << 20), (peak, len(data))


def _load_bounded(data):
    """load() of the bytes ``data``, as :func:`_bounded`."""
    return _bounded(fastnorm.load, data)


def _bn_document(cls="BatchNorm2d", **config):
    config = dict({"num_features": 4, "eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True,
                   "dtype": "float32", "channel_axis": 1, "bessel": True}, **config)
    return {"format": 1, "single": False, "layers": {"bn": {"class": cls, "config": config,
                                                             "training": False}}}


def _bn_arrays(C=4, dtype=np.float32):
    return {"bn.weight": np.ones(C, dtype), "bn.bias": np.zeros(C, dtype), "bn.running_mean": np.zeros(C, dtype),
            "bn.running_var": np.ones(C, dtype), "bn.num_batches_tracked": np.array(3)}


@pytest.mark.parametrize("name", ["model.bin", "model", "model.npz", "weights.v2.npz.tmp"])
def test_save_writes_exactly_the_path_given_and_load_reads_it_back(rng, tmp_path, name):
    layers = _all_layers(rng)
    fastnorm.save(tmp_path / name, layers)
    assert os.listdir(tmp_path) == [name]
    loaded = fastnorm.load(str(tmp_path / name))
    for key in layers:
        _same_layer(layers[key], loaded[key])
    buffer = io.BytesIO()  # and to and from a file object
    fastnorm.save(buffer, layers["bn"])
    buffer.seek(0)
    _same_layer(fastnorm.load(buffer), layers["bn"])


@pytest.mark.parametrize("name", ["model.bin", pytest.param("model.safetensors", marks=requires_safetensors)])
def test_a_save_that_fails_leaves_the_file_as_it_was(rng, tmp_path, name):
    path = tmp_path / name
    fastnorm.save(path, _all_layers(rng))
    before = path.read_bytes()
    bad = fastnorm.BatchNorm2d(4)
    bad.weight = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="'weight' is float32 of shape \\(5,\\)"):
        fastnorm.save(path, {"bn": bad})
    with pytest.raises(TypeError, match="names that are strings"):
        fastnorm.save(path, {1: fastnorm.LayerNorm(3)})
    assert path.read_bytes() == before and os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("spoil, message", [
    (lambda layer: setattr(layer, "weight", np.ones(5, np.float32)), "'weight' is float32 of shape \\(5,\\)"),
    (lambda layer: setattr(layer, "running_var", np.ones(4)), "'running_var' is float64"),
    (lambda layer: setattr(layer, "bias", None), "missing \\['bias'\\]"),
    (lambda layer: setattr(layer, "num_features", 5), "'weight' is float32 of shape \\(4,\\)"),
], ids=["weight-shape", "buffer-dtype", "no-bias", "num-features"])
def test_save_refuses_a_layer_whose_state_contradicts_its_config(tmp_path, spoil, message):
    layer = fastnorm.BatchNorm2d(4)
    spoil(layer)
    with pytest.raises(ValueError, match="layers: layer 'bn' \\(BatchNorm2d\\): .*" + message):
        fastnorm.save(tmp_path / "m.bin", {"bn": layer})
    ln = fastnorm.LayerNorm(3, elementwise_affine=False)
    ln.weight = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="unexpected \\['weight'\\]"):
        fastnorm.save(tmp_path / "m.bin", ln)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("size", [2 ** 28, 2 ** 40, 10 ** 30])
def test_a_size_the_arrays_do_not_have_is_refused_before_anything_is_allocated(size):
    for arrays, message in (({}, "missing"), (_bn_arrays(), "of shape \\(4,\\); its configuration gives")):
        data = _archive(_bn_document(num_features=size), arrays)
        error = _load_bounded(data)
        assert isinstance(error, ValueError) and re.search(message, str(error)), error
    # A header that claims more data than the member holds is refused before the data is read.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (size,)})
    buffer = io.BytesIO(_archive(_bn_document(num_features=size), {}))
    with zipfile.ZipFile(buffer, "a") as archive:
        for key in _bn_arrays():
            archive.writestr(key + ".npy", header.getvalue() + bytes(16))
    error = _load_bounded(buffer.getvalue())
    assert isinstance(error, ValueError) and re.search("member 'bn.*.npy': its header gives", str(error)), error


def _nested(depth):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("data, message", [
    (b"", "not a readable .npz archive"),
    (b"PK\x03\x04" + b"\x00" * 100, "not a readable .npz archive"),
    (_archive(_bn_document(), _bn_arrays())[:-30], "not a readable .npz archive"),
    (_archive(_bn_document(), _bn_arrays())[:300], "not a readable .npz archive"),
    (_archive("not json"), "not valid JSON"),
    (_archive('{"format": 1, "format": 1, "single": true, "layers": {}}'), "duplicate keys"),
    (_archive(_nested(100000)), "nested too deeply"),
    (_archive('{"format": 1, "single": false, "layers": {"a": %s}}' % _nested(50000)), "nested too deeply"),
    (_archive([1, 2]), "the description: expected the keys"),
    (_archive({"format": 1, "single": False}), "expected the keys \\['format', 'single', 'layers'\\]"),
    (_archive({"format": 2, "single": False, "layers": {}}), "unsupported fastnorm file format 2"),
    (_archive({"format": True, "single": False, "layers": {}}), "unsupported fastnorm file format True"),
    (_archive({"format": 1, "single": True, "layers": {}}), "'single' \\(True\\) and 'layers' disagree"),
    (_archive({"format": 1, "single": False, "layers": []}), "'layers' disagree"),
    (_archive(dict(_bn_document(), layers={"bn": [1]}), _bn_arrays()), "layer 'bn': expected the keys"),
    (_archive(dict(_bn_document(), layers={"bn": {"class": "Linear", "config": {}, "training": True}})),
     "class 'Linear'"),
    (_archive(dict(_bn_document(), layers={"bn": {"class": ["BatchNorm2d"], "config": {}, "training": 1}})),
     "class \\['BatchNorm2d'\\]"),
    (_archive(_bn_document(), dict(_bn_arrays(), **{"bn.extra": np.ones(4, np.float32)})),
     "unexpected \\['extra'\\]"),
    (_archive(_bn_document(), dict(_bn_arrays(), other=np.ones(1))), "array 'other' belongs to no layer"),
    (_archive(_bn_document(), dict(_bn_arrays(), **{"bn.weight": np.ones(4)})), "'weight' is float64"),
    (_archive(_bn_document(), dict(_bn_arrays(), **{"bn.weight": np.ones(4, bool)})), "'weight' is bool"),
    (_archive(_bn_document(), dict(_bn_arrays(), **{"bn.weight": np.array(list("abcd"))})), "'weight' is <U1"),
    (_archive(_bn_document(), dict(_bn_arrays(), **{"bn.num_batches_tracked": np.ones(3, np.int64)})),
     "'num_batches_tracked' is int64 of shape \\(3,\\)"),
    (_archive(_bn_document(num_features="4"), _bn_arrays()), "'weight' is float32 of shape \\(4,\\)"),
    (_archive(_bn_document(num_features=True), _bn_arrays(1)), "num_features: expected a positive integer"),
    (_archive(_bn_document(num_features=-1, affine=False, track_running_stats=False)),
     "num_features: expected a positive integer"),
    (_archive(_bn_document(eps="x"), _bn_arrays()), "eps: expected a real number"),
    (_archive(_bn_document(eps=10 ** 400), _bn_arrays()), "config"),
    (_archive(_bn_document(momentum=[0.1]), _bn_arrays()), "config: expected an object of numbers"),
    (_archive(_bn_document(momentum={"a": 1}), _bn_arrays()), "config: expected an object of numbers"),
    (_archive(_bn_document(dtype="object"), _bn_arrays()), "dtype: expected float32 or float64"),
    (_archive(_bn_document(dtype="no such dtype"), _bn_arrays()), "config: data type .no such dtype. not understood"),
    (_archive(_bn_document(channel_axis="1"), _bn_arrays()), "channel_axis"),
    (_archive(_bn_document("SyncBatchNorm", comm="COMM_WORLD"), _bn_arrays()), "unknown arguments \\['comm'\\]"),
    (_archive(_bn_document(kernel_size=3), _bn_arrays()), "kernel_size"),
], ids=lambda v: "file" if isinstance(v, bytes) else v[:30])
def test_every_malformed_file_raises_a_value_error_naming_what_is_wrong(data, message):
    error = _load_bounded(data)
    assert isinstance(error, ValueError), error
    assert re.search(message, str(error)), str(error)
    assert str(error).startswith("path: <_io.BytesIO")


def test_compressed_and_misdeclared_members_are_refused(tmp_path):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, __fastnorm__=np.array(json.dumps(_bn_document())), **_bn_arrays())
    assert "compressed or encrypted" in str(_load_bounded(buffer.getvalue()))
    data = _archive(_bn_document(), _bn_arrays())
    error = _load_bounded(data.replace(b"'descr': '<f4'", b"'descr': '|O8'", 1))  # an object array
    assert isinstance(error, ValueError) and "bn.weight.npy" in str(error), error
    central = data.index(b"PK\x01\x02")  # the first member's sizes in the zip directory: 2 GiB
    claimed = data[:central + 20] + struct.pack("<II", 1 << 31, 1 << 31) + data[central + 28:]
    error = _load_bounded(claimed)
    assert isinstance(error, ValueError) and "claim more bytes than the file's" in str(error), error
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a file written by fastnorm.save"):
        fastnorm.load(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        fastnorm.load(tmp_path / "absent.bin")


def test_big_endian_arrays_in_a_file_load_as_native():
    arrays = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in _bn_arrays().items()}
    arrays["bn.running_mean"][:] = [1.0, 2.0, 3.0, 4.0]
    layer = _load_bounded(_archive(_bn_document(), arrays))["bn"]
    assert layer.running_mean.dtype == np.float32 and layer.running_mean.dtype.isnative
    assert layer.running_mean.tolist() == [1.0, 2.0, 3.0, 4.0] and layer.num_batches_tracked == 3


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                     | st.sampled_from([1, -1, 0, 2 ** 28, 2 ** 63, 10 ** 30, "float32", "float64", "BatchNorm2d",
                                        "LayerNorm", "GroupNorm", "format", "layers", "config"]),
                     lambda inner: (st.lists(inner, max_size=3)
                                    | st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=8)


def _paths(value, path=()):
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from _paths(item, path + (key,))


def _replace(value, path, new):
    if not path:
        return new
    value = copy.deepcopy(value)
    target = value
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return value


def _mutated(data, blob, cut, within=None):
    """``blob`` with a few bytes changed (in its first ``within`` bytes if given, else anywhere or in the
    zip directory at its end), maybe cut short, maybe with bytes appended."""
    blob = bytearray(blob)
    start = 0 if within else data.draw(st.sampled_from([0, max(0, len(blob) - 400)]))
    end = min(within or len(blob), len(blob))
    for at, byte in data.draw(st.lists(st.tuples(st.integers(start, end - 1), st.integers(0, 255)), max_size=4)):
        blob[at] = byte
    if cut:
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    return bytes(blob) + data.draw(st.binary(max_size=8))


def _spoil_arrays(data, arrays, dtypes, new_names):
    """Drop one of ``arrays`` (a dict), replace it by zeros of a drawn shape and one of ``dtypes``, or add
    such zeros under one of ``new_names``."""
    key = data.draw(st.sampled_from(sorted(arrays)))
    shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=3)))
    dtype = data.draw(st.sampled_from(dtypes))
    action = data.draw(st.sampled_from(["drop", "replace", "add"]))
    if action == "drop":
        del arrays[key]
    else:
        arrays[key if action == "replace" else data.draw(st.sampled_from(new_names))] = np.zeros(shape, dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_files_raise_only_value_error_and_allocate_little(data):
    layers = {"bn": fastnorm.BatchNorm2d(3), "ln": fastnorm.LayerNorm((2, 3)), "gn": fastnorm.GroupNorm(2, 4),
              "rms": fastnorm.RMSNorm(3), "inorm": fastnorm.InstanceNorm1d(2, affine=True)}
    valid = _file_bytes(layers)
    kind = data.draw(st.sampled_from(["archive", "member", "document", "arrays"]))
    if kind == "archive":  # damage the zip structure: changed bytes, a cut, appended garbage
        blob = _mutated(data, valid, cut=data.draw(st.booleans()))
    elif kind == "member":  # damage one .npy member (its header, its data), with the zip kept valid
        source = zipfile.ZipFile(io.BytesIO(valid))
        victim = data.draw(st.sampled_from(source.namelist()))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in source.namelist():
                member = source.read(name)
                archive.writestr(name, _mutated(data, member, cut=True, within=128) if name == victim else member)
        blob = buffer.getvalue()
    else:
        with np.load(io.BytesIO(valid)) as archive:
            arrays = {k: archive[k] for k in archive.files}
        document = json.loads(str(arrays.pop("__fastnorm__")))
        if kind == "document":  # any part of the description replaced by any JSON value
            path = data.draw(st.sampled_from(list(_paths(document))))
            document = _replace(document, path, data.draw(_JSON))
        else:  # an array dropped, added, or of another shape or dtype
            _spoil_arrays(data, arrays, ["f4", "f8", ">f4", "i8", "u1", "?", "c8", "U3"],
                          ["bn.extra", "x", "ln.", ".w"])
        blob = _archive(document, arrays)
    result = _load_bounded(blob)
    if not isinstance(result, ValueError):
        assert isinstance(result, dict) and set(result) <= set(layers)
