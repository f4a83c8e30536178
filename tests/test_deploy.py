"""Inference pipelines: folding, the eval cache, state dicts, save/load, pickling, threads, zero copy."""
import copy
import pickle
import threading
import tracemalloc

import numpy as np
import pytest

import fastnorm
import reference
from conftest import requires_torch, torch


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
    expected = reference.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)[0]
    np.testing.assert_allclose(bn(x), expected, atol=1e-5)


def test_train_eval_switch_uses_the_right_statistics(rng):
    bn = fastnorm.BatchNorm2d(3)
    x = (rng.normal(size=(4, 3, 5, 5)) * 2 + 1).astype(np.float32)
    bn.eval()
    first = bn(x)
    bn.train()
    bn(x)  # updates the running statistics in place
    bn.eval()
    expected = reference.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias)[0]
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

@requires_torch
def test_state_dict_of_a_torch_model_with_prefix(rng):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.LayerNorm(4 * 6 * 6))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(5, 3, 8, 8))
        model[1].weight.mul_(1.5)
        model[4].bias.add_(0.25)
    model.eval()
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
