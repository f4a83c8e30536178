"""The safetensors format: fastnorm.save/load, load_state_dict of PyTorch's files, and crafted files."""
import io
import json
import os
import re
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnorm
from conftest import requires_safetensors, requires_torch, safetensors, torch
from fastnorm._safetensors import MAX_HEADER, SafetensorsFile
from test_deploy import _JSON, _all_layers, _bounded, _paths, _replace, _same_layer, _spoil_arrays, _torch_model


def _file(tensors, metadata=None, header=None):
    """The bytes of a safetensors file of ``tensors`` (name -> little-endian ndarray, laid out in order),
    or with ``header`` (an object to encode as JSON, or bytes) in place of the one they give."""
    entries, data = {}, b""
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        dtype = {"f4": "F32", "f8": "F64", "i8": "I64", "u2": "BF16"}[array.dtype.str[1:]]
        entries[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        entries["__metadata__"] = metadata
    header = header if header is not None else entries
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _load(f):
    return fastnorm.load(f, format="safetensors")


def _read(f):
    tensors = SafetensorsFile(f)
    return {key: tensors[key] for key in tensors}


def _description(cls="BatchNorm2d", single=False, **config):
    config = dict({"num_features": 4, "eps": 1e-5, "momentum": 0.1, "affine": True, "bias": True,
                   "track_running_stats": True, "dtype": "float32", "channel_axis": 1, "bessel": True}, **config)
    layers = {"" if single else "bn": {"class": cls, "config": config, "training": False}}
    return {"__fastnorm__": json.dumps({"format": 1, "single": single, "layers": layers})}


def _bn_tensors(prefix="bn.", C=4):
    return {prefix + "weight": np.ones(C, "<f4"), prefix + "bias": np.zeros(C, "<f4"),
            prefix + "running_mean": np.zeros(C, "<f4"), prefix + "running_var": np.ones(C, "<f4"),
            prefix + "num_batches_tracked": np.array(3, "<i8")}


# --------------------------------------------------------------------------------------------------------
# fastnorm.save / fastnorm.load
# --------------------------------------------------------------------------------------------------------

@requires_safetensors
@pytest.mark.parametrize("name, format", [("model.safetensors", None), ("MODEL.SafeTensors", None),
                                          ("model.bin", "safetensors")])
def test_safetensors_round_trip_with_the_description_in_the_metadata(rng, tmp_path, name, format):
    layers = _all_layers(rng)
    fastnorm.save(tmp_path / name, layers, format=format)
    assert os.listdir(tmp_path) == [name]
    loaded = fastnorm.load(tmp_path / name, format=format)
    assert loaded.keys() == layers.keys()
    for key in layers:
        _same_layer(layers[key], loaded[key])
    # A plain safetensors file: PyTorch's keys, the configuration as JSON in the metadata.
    with safetensors.safe_open(tmp_path / name, framework="numpy") as f:
        description = json.loads(f.metadata()["__fastnorm__"])
        assert description["layers"]["bn"]["config"]["channel_axis"] == -1
        assert "bn.running_mean" in f.keys() and "ln.weight" in f.keys()
    arrays = safetensors.numpy.load_file(tmp_path / name)
    np.testing.assert_array_equal(arrays["gn.weight"], layers["gn"].weight)
    assert arrays["bn.num_batches_tracked"].shape == () and arrays["gn.weight"].dtype == np.float64
    buffer = io.BytesIO()  # a file object: format= says which
    fastnorm.save(buffer, layers["ln"], format="safetensors")
    assert set(safetensors.numpy.load(buffer.getvalue())) == {"weight"}  # one layer: the bare keys
    buffer.seek(0)
    _same_layer(fastnorm.load(buffer, format="safetensors"), layers["ln"])


@requires_safetensors
def test_safetensors_saves_any_memory_layout_and_byte_order(tmp_path):
    ln = fastnorm.LayerNorm((3, 4), dtype=np.float64)
    ln.weight = np.asfortranarray(np.arange(12.0).reshape(3, 4)).astype(">f8")
    fastnorm.save(tmp_path / "m.safetensors", ln)
    np.testing.assert_array_equal(safetensors.numpy.load_file(tmp_path / "m.safetensors")["weight"],
                                  np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(fastnorm.load(tmp_path / "m.safetensors").weight, ln.weight)


@requires_safetensors
@requires_torch
def test_a_saved_file_loads_into_a_torch_model(rng, tmp_path):
    from safetensors.torch import load_file
    layers = {"0": fastnorm.BatchNorm2d(4), "1": fastnorm.GroupNorm(2, 4), "2": fastnorm.LayerNorm((4, 3, 3))}
    layers["0"](rng.normal(size=(5, 4, 3, 3)).astype(np.float32))
    for layer in layers.values():
        layer.weight[...] = rng.normal(size=layer.weight.shape)
    fastnorm.save(tmp_path / "m.safetensors", layers)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.GroupNorm(2, 4), torch.nn.LayerNorm((4, 3, 3)))
    result = model.load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    layers["0"].eval()
    x = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    expected = layers["2"](layers["1"](layers["0"](x)))
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), expected, atol=1e-5)


def test_save_format_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="format: expected 'npz', 'safetensors' or None, got 'h5'"):
        fastnorm.save(tmp_path / "m.h5", fastnorm.LayerNorm(3), format="h5")
    with pytest.raises(ValueError, match="format: expected"):
        fastnorm.load(tmp_path / "m.h5", format="pt")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match="pip install 'fastnorm\\[safetensors\\]'"):
        fastnorm.save(tmp_path / "m.safetensors", fastnorm.LayerNorm(3))
    assert not os.listdir(tmp_path)
    # Reading needs no package.
    data = _file(_bn_tensors(), _description())
    assert fastnorm.load(io.BytesIO(data), format="safetensors")["bn"].num_batches_tracked == 3


# --------------------------------------------------------------------------------------------------------
# layer.load_state_dict of a safetensors file written by PyTorch
# --------------------------------------------------------------------------------------------------------

@requires_safetensors
@requires_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_load_state_dict_reads_a_torch_safetensors_file(tmp_path, dtype):
    from safetensors.torch import save_file
    model = _torch_model().to(getattr(torch, dtype))
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    for cls, prefix, key in ((fastnorm.BatchNorm2d, "1.", 4), (fastnorm.LayerNorm, "4.", 4 * 6 * 6)):
        for layer_dtype in (np.float32, np.float64):
            from_file, from_dict = cls(key, dtype=layer_dtype), cls(key, dtype=layer_dtype)
            result = from_file.load_state_dict(tmp_path / "model.safetensors", prefix=prefix)
            assert result == from_dict.load_state_dict(model.state_dict(), prefix=prefix)
            assert result.missing_keys == [] and result.unexpected_keys == []
            for name, value in from_dict.state_dict().items():  # bfloat16: exactly its value
                np.testing.assert_array_equal(from_file.state_dict()[name], value)
                assert from_file.state_dict()[name].dtype == value.dtype
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "0.running_mean"'):
        fastnorm.BatchNorm2d(4).load_state_dict(str(tmp_path / "model.safetensors"), prefix="0.")
    with open(tmp_path / "model.safetensors", "rb") as f:  # a file object too
        assert fastnorm.LayerNorm(144).load_state_dict(f, prefix="4.").missing_keys == []


@requires_safetensors
@requires_torch
def test_bfloat16_and_float8_bits_widen_exactly(tmp_path):
    from safetensors.torch import save_file
    bits = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)  # every bfloat16
    tensors = {"bf16": bits.view(torch.bfloat16), "f8": torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2)}
    save_file(tensors, tmp_path / "all.safetensors")
    with open(tmp_path / "all.safetensors", "rb") as f:
        read = SafetensorsFile(f)
        for key, tensor in tensors.items():
            expected = tensor.float().numpy()
            np.testing.assert_array_equal(read[key].astype(np.float32), expected)  # NaNs where NaNs
            same_bits = read[key].astype(np.float32).view(np.uint32) == expected.view(np.uint32)
            assert same_bits[~np.isnan(expected)].all()


def test_bfloat16_bits_are_the_top_half_of_float32s():
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x4049], "<u2")  # without PyTorch
    expected = np.array([1.0, -2.0, np.inf, -np.inf, 2.0 ** -133, -0.0, 3.140625], np.float32)
    ln = fastnorm.LayerNorm(7, elementwise_affine=True, bias=False, dtype=np.float64)
    ln.load_state_dict(io.BytesIO(_file({"weight": bits})))
    np.testing.assert_array_equal(ln.weight, expected)
    assert np.signbit(ln.weight[5])


class _CountingFile(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_load_state_dict_reads_only_the_header_and_the_layer_tensors():
    big = {f"blocks.{i}.weight": np.zeros(1 << 16, "<f4") for i in range(8)}  # 2 MiB of other tensors
    data = _file({**big, **_bn_tensors("norm.")})
    f = _CountingFile(data)
    bn = fastnorm.BatchNorm1d(4)
    assert bn.load_state_dict(f, prefix="norm.") == ([], [])
    header = 8 + struct.unpack("<Q", data[:8])[0]
    assert bn.num_batches_tracked == 3 and f.bytes_read == header + 4 * 4 * 4 + 8
    # With no prefix every key is compared, and the tensors of no other layer are read either.
    f = _CountingFile(data)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fastnorm.BatchNorm1d(4).load_state_dict(f)
    assert f.bytes_read == header


def test_load_state_dict_errors_name_the_file_and_change_nothing(tmp_path):
    path = tmp_path / "m.safetensors"
    bn = fastnorm.BatchNorm1d(4)
    before = bn.state_dict()
    tensors = dict(_bn_tensors(""), running_var=np.ones(5, "<f4"))
    path.write_bytes(_file(tensors))
    with pytest.raises(ValueError, match=re.escape(f"state_dict: {str(path)!r}: state_dict['running_var']: "
                                                   "expected shape (4,), got (5,)")):
        bn.load_state_dict(path)
    path.write_bytes(_file(_bn_tensors(""))[:-3])
    with pytest.raises(ValueError, match="state_dict: .*: the tensors. data ends at byte 72; the file holds 69 bytes"):
        bn.load_state_dict(path)
    for key, value in before.items():
        np.testing.assert_array_equal(bn.state_dict()[key], value)
    with pytest.raises(TypeError, match="state_dict: expected a mapping of keys to arrays or a safetensors file"):
        bn.load_state_dict([("weight", np.ones(4))])
    with pytest.raises(FileNotFoundError):
        bn.load_state_dict(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------------------------------------
# Damaged or crafted files: ValueError naming what is wrong, before anything of a size they claim
# --------------------------------------------------------------------------------------------------------

_VALID = _file(_bn_tensors(), _description())
fastnorm.load(io.BytesIO(_VALID), format="safetensors")  # what a first load imports (numpy.ma), unmeasured
_ONE = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}


def _with_header(header, data=bytes(16)):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("data, message", [
    (b"", "not a safetensors file: 0 bytes, fewer than the 8"),
    (b"\x10\x00\x00", "fewer than the 8"),
    (struct.pack("<Q", 2 ** 63) + b"{}", "the header's length 9223372036854775808 is more than the format's limit"),
    (struct.pack("<Q", MAX_HEADER + 1) + b"{}", "more than the format's limit of 100000000"),
    (struct.pack("<Q", 1000) + b"{}" + bytes(90), "the header's length 1000 is more than the 92 bytes after it"),
    (_VALID[:40], "the header's length .* is more than the 32 bytes after it"),
    (_VALID[:-1], "the tensors' data ends at byte 72; the file holds 71 bytes of data"),
    (_VALID + b"\x00", "the tensors' data ends at byte 72; the file holds 73 bytes of data"),
    (_with_header(b"\xff{}"), "the header is not UTF-8"),
    (_with_header(b" {}"), "the header does not begin with '{'"),
    (_with_header([1]), "does not begin with '{'"),
    (_with_header(b"{\"w\": "), "the header is not valid JSON"),
    (_with_header(b'{"w": {}, "w": {}}'), "duplicate keys"),
    (_with_header(b'{"w": ' + b"[" * 100000 + b"]" * 100000 + b"}"), "nested too deeply"),
    (_with_header({"w": [0, 16]}), "tensor 'w': expected the keys \\['data_offsets', 'dtype', 'shape'\\], got list"),
    (_with_header({"w": dict(_ONE["w"], extra=1)}), "tensor 'w': expected the keys"),
    (_with_header({"w": dict(_ONE["w"], dtype="F128")}), "tensor 'w': unknown dtype 'F128'"),
    (_with_header({"w": dict(_ONE["w"], dtype=["F32"])}), "tensor 'w': unknown dtype \\['F32'\\]"),
    (_with_header({"w": dict(_ONE["w"], shape=[-4])}), "tensor 'w': shape: expected a list of sizes, got \\[-4\\]"),
    (_with_header({"w": dict(_ONE["w"], shape=[4.0])}), "tensor 'w': shape: expected a list of sizes"),
    (_with_header({"w": dict(_ONE["w"], shape=[2 ** 64, 0])}), "shape: expected a list of sizes"),
    (_with_header({"w": dict(_ONE["w"], shape=[2 ** 40, 2 ** 40, 0], data_offsets=[0, 0])}, b""),
     "shape \\[1099511627776, 1099511627776, 0\\] overflows 64 bits"),
    (_with_header({"w": dict(_ONE["w"], shape=[5])}),
     "F32 of shape \\(5,\\) is 20 bytes; its data_offsets \\[0, 16\\] hold 16"),
    (_with_header({"w": dict(_ONE["w"], dtype="F64")}), "F64 of shape \\(4,\\) is 32 bytes"),
    (_with_header({"w": dict(_ONE["w"], dtype="F4", shape=[3], data_offsets=[0, 1])}, b"\x00"),
     "F4 of shape \\(3,\\) is 1.5 bytes"),
    (_with_header({"w": dict(_ONE["w"], data_offsets=[16, 0])}), "data_offsets: expected \\[begin, end\\]"),
    (_with_header({"w": dict(_ONE["w"], data_offsets=[0, 16, 32])}), "data_offsets: expected"),
    (_with_header({"w": dict(_ONE["w"], data_offsets=[-16, 0])}), "data_offsets: expected"),
    (_with_header({"w": dict(_ONE["w"], shape=[2 ** 40], data_offsets=[0, 2 ** 42])}),
     "the tensors' data ends at byte 4398046511104; the file holds 16"),
    (_with_header({"w": dict(_ONE["w"], data_offsets=[8, 24])}, bytes(24)),
     "tensor 'w': its data begins at byte 8 of the data; the tensor before it ends at byte 0"),
    (_with_header({**_ONE, "v": dict(_ONE["w"], data_offsets=[8, 24])}, bytes(24)),
     "tensor 'v': its data begins at byte 8 .* ends at byte 16"),
    (_with_header({**_ONE, "__metadata__": {"a": 1}}), "'__metadata__': expected an object of strings"),
    (_with_header({**_ONE, "__metadata__": ["a"]}), "'__metadata__': expected an object of strings"),
], ids=lambda v: v[:25].hex() if isinstance(v, bytes) else v[:30])
def test_every_malformed_safetensors_file_raises_a_value_error_naming_what_is_wrong(data, message):
    for call, prefix in ((_load, "path: <_io.BytesIO"), (fastnorm.BatchNorm1d(4).load_state_dict, "state_dict: <_io")):
        error = _bounded(call, data)
        assert isinstance(error, ValueError), error
        assert re.search(message, str(error)), str(error)
        assert str(error).startswith(prefix), str(error)


@pytest.mark.parametrize("tensors, description, message", [
    (_bn_tensors(), {}, "not a file written by fastnorm.save \\(no '__fastnorm__' in its metadata; "
                        "layer.load_state_dict reads a PyTorch state dict\\)"),
    (_bn_tensors(), {"__fastnorm__": "{"}, "the description is not valid JSON"),
    (_bn_tensors(), _description(num_features=2 ** 40), "'weight' is float32 of shape \\(4,\\); its configuration"),
    ({}, _description(num_features=2 ** 40), "missing \\["),
    (dict(_bn_tensors(), **{"bn.weight": np.ones(4, "<u2")}), _description(), "tensor 'bn.weight': dtype BF16"),
    (dict(_bn_tensors(), **{"bn.weight": np.ones(4, "<f8")}), _description(), "'weight' is float64"),
    (_bn_tensors(""), _description(), "array 'weight' belongs to no layer"),
    (_bn_tensors(), _description(single=True), "layer '' \\(BatchNorm2d\\): .* unexpected \\['bn.bias'"),
    (_bn_tensors(""), _description(single=True, num_features=5), "'weight' is float32 of shape \\(4,\\)"),
], ids=["torch-file", "bad-json", "size", "size-no-arrays", "bf16", "float64", "bare-keys", "prefixed-single",
        "single-size"])
def test_a_safetensors_file_whose_description_and_tensors_disagree_is_refused(tensors, description, message):
    error = _bounded(_load, _file(tensors, description))
    assert isinstance(error, ValueError) and re.search(message, str(error)), error


_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U8": "u1", "BOOL": "?", "F16": "<f2", "BF16": "<u2"}


@st.composite
def _valid_files(draw):
    """A safetensors file as the library writes it: some tensors of various dtypes and shapes, maybe
    metadata; and its header as an object."""
    header, data = {}, b""
    for name in draw(st.lists(st.sampled_from(["a", "b.weight", "c", "d.bias", ""]), unique=True, max_size=4)):
        dtype = draw(st.sampled_from(sorted(_DTYPES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        raw = draw(st.binary(min_size=int(np.prod(shape)) * np.dtype(_DTYPES[dtype]).itemsize,
                             max_size=int(np.prod(shape)) * np.dtype(_DTYPES[dtype]).itemsize))
        if dtype == "BOOL":
            raw = bytes(b & 1 for b in raw)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    return header, data


@requires_safetensors
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=_valid_files(), data=st.data())
def test_fuzzed_safetensors_files_are_read_as_the_library_reads_them_or_refused(file, data):
    """What the reader accepts the safetensors library accepts, with the same tensors; what the library
    refuses the reader refuses, with a ValueError, never allocating much more than the file."""
    header, tensor_bytes = file
    kind = data.draw(st.sampled_from(["valid", "header", "bytes", "length"]))
    if kind == "header":  # any part of the header replaced by any JSON value
        path = data.draw(st.sampled_from(list(_paths(header))))
        header = _replace(header, path, data.draw(_JSON | st.integers(-2, 40)))
    blob = bytearray(_with_header(header, tensor_bytes))
    if kind == "bytes":  # a few bytes changed, maybe cut short or lengthened
        for at, byte in data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=3)):
            blob[at] = byte
        blob = blob[:data.draw(st.integers(0, len(blob)))] + data.draw(st.binary(max_size=8))
    elif kind == "length":
        blob[:8] = struct.pack("<Q", data.draw(st.integers(0, 2 ** 64 - 1) | st.integers(0, len(blob))))
    blob = bytes(blob)
    ours = _bounded(_read, blob)
    try:
        theirs = {name: (view["dtype"], view["shape"], bytes(view["data"]))
                  for name, view in safetensors.deserialize(blob)}
    except Exception:  # noqa: BLE001 - the library's own error types
        theirs = None
    if kind == "valid":
        assert not isinstance(ours, ValueError), ours
    if isinstance(ours, ValueError):
        return
    assert theirs is not None and set(ours) == set(theirs)
    for name, (dtype, shape, raw) in theirs.items():
        array = ours[name]
        assert array.shape == tuple(shape) and array.dtype.isnative
        if dtype == "BF16":  # widened: the top 16 bits of float32 are the stored ones
            assert (array.view(np.uint32) >> 16).astype("<u2").tobytes() == raw
        else:
            assert array.astype(_DTYPES[dtype]).tobytes() == raw and array.dtype == np.dtype(_DTYPES[dtype])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_fastnorm_safetensors_files_raise_only_value_error(data):
    text = _description()["__fastnorm__"]
    document = json.loads(text)
    tensors = _bn_tensors()
    kind = data.draw(st.sampled_from(["document", "tensors"]))
    if kind == "document":
        path = data.draw(st.sampled_from(list(_paths(document))))
        document = _replace(document, path, data.draw(_JSON))
    else:
        _spoil_arrays(data, tensors, ["<f4", "<f8", "<i8", "<u2"], ["bn.extra", "x", "bn.", ".w"])
    result = _bounded(_load, _file(tensors, {"__fastnorm__": json.dumps(document)}))
    assert isinstance(result, (ValueError, dict)), result
