"""Reading the safetensors format without dependencies: the header is checked in full before any tensor
is read, and then only the tensors asked for are read.

The format (https://github.com/huggingface/safetensors): 8 bytes, the header's length N (little-endian
unsigned); N bytes of JSON, ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` and an optional
``"__metadata__"`` of strings to strings; then the tensors' bytes, little-endian, C order, which the
offsets (relative to the end of the header) must cover exactly, without holes or overlaps.  What the
safetensors library refuses is refused here too (tests/test_safetensors.py holds the two side by side),
with a ``ValueError`` that names what is wrong; nothing is allocated for a size the file does not hold.
Refused here and not by the library: duplicate keys and keys other than the three in a tensor's entry
(the library keeps the last and ignores the others).

Reading here rather than with ``safetensors.safe_open``: NumPy has no bfloat16, the dtype PyTorch models
are most often saved in, and loading should not need the package.
"""
from __future__ import annotations

import io
import json
from typing import Any, BinaryIO, Dict, Iterator, List, Mapping, Tuple

import numpy as np
from numpy.typing import NDArray

MAX_HEADER = 100_000_000  # the safetensors library's limit on the header's length
_MAX_SIZE = 1 << 64  # shapes and offsets are 64-bit unsigned in the format

# Bits per element of each dtype the format names; those NumPy has, as NumPy dtypes.
_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
         "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
         "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64,
         "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
_NUMPY = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
          "U32": "<u4", "F32": "<f4", "F64": "<f8", "I64": "<i8", "U64": "<u8", "C64": "<c8"}
# Floats that are the top bits of a wider NumPy float (bfloat16 of float32, float8 e5m2 of float16): the
# bits shifted up are the same number, exactly.
_TOP_BITS = {"BF16": ("<u2", np.uint32, 16, np.float32), "F8_E5M2": ("u1", np.uint16, 8, np.float16)}


class SafetensorsFile(Mapping[str, NDArray[Any]]):
    """The tensors of a safetensors file open for reading, by name; each is read when asked for.

    Parameters
    ----------
    f : binary file object
        Seekable; it must stay open while tensors are read.
    widen : bool
        Read BF16 tensors as float32 and F8_E5M2 as float16 (exactly); otherwise they are refused.

    Attributes
    ----------
    metadata : dict of str to str
        The header's ``"__metadata__"`` (empty when it has none).

    Raises
    ------
    ValueError
        The file is not a safetensors file, or is damaged; the message says what is wrong.

    Examples
    --------
    >>> import io, json, numpy as np
    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> tensors = SafetensorsFile(io.BytesIO(len(header).to_bytes(8, "little") + header + np.ones(2, "<f4").tobytes()))
    >>> list(tensors), tensors.dtype("w"), tensors["w"]
    (['w'], 'F32', array([1., 1.], dtype=float32))
    """

    def __init__(self, f: BinaryIO, *, widen: bool = True) -> None:
        self._f, self._widen = f, widen
        size = f.seek(0, io.SEEK_END)
        if size < 8:
            raise ValueError(f"not a safetensors file: {size} bytes, fewer than the 8 of the header's length")
        f.seek(0)
        n = int.from_bytes(f.read(8), "little")
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"the header's length {n} is more than the {size - 8} bytes after it"
                             if n <= MAX_HEADER else f"the header's length {n} is more than the format's "
                             f"limit of {MAX_HEADER}")
        self._start = 8 + n
        header = _json_object(f.read(n))
        metadata = header.pop("__metadata__", None)
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError(f"'__metadata__': expected an object of strings, got {metadata!r:.200}")
        self.metadata: Dict[str, str] = metadata
        self._tensors = {key: _tensor_info(key, info) for key, info in header.items()}
        end = 0  # the tensors in the order of their offsets must tile the data
        for key, (_, _, begin, stop) in sorted(self._tensors.items(), key=lambda item: item[1][2:]):
            if begin != end:
                raise ValueError(f"tensor {key!r}: its data begins at byte {begin} of the data; the tensor "
                                 f"before it ends at byte {end}")
            end = stop
        if end != size - self._start:
            raise ValueError(f"the tensors' data ends at byte {end}; the file holds {size - self._start} "
                             "bytes of data")

    def __getitem__(self, key: str) -> NDArray[Any]:
        dtype, shape, begin, end = self._tensors[key]
        if dtype in _TOP_BITS and self._widen:
            stored, wide, shift, wide_float = _TOP_BITS[dtype]
            return (self._read(begin, end, stored).astype(wide) << shift).view(wide_float).reshape(shape)
        if dtype not in _NUMPY:
            raise ValueError(f"tensor {key!r}: dtype {dtype} is not one that can be read here")
        return self._read(begin, end, _NUMPY[dtype]).astype(np.dtype(_NUMPY[dtype]).newbyteorder("=")).reshape(shape)

    def _read(self, begin: int, end: int, dtype: str) -> NDArray[Any]:
        self._f.seek(self._start + begin)
        data = self._f.read(end - begin)
        if len(data) != end - begin:  # the file shrank since it was opened
            raise ValueError(f"truncated: {len(data)} of the {end - begin} bytes at byte {self._start + begin}")
        return np.frombuffer(data, dtype)

    def dtype(self, key: str) -> str:
        """The dtype of a tensor, as the format names it (``"F32"``, ``"BF16"``...)."""
        return self._tensors[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _json_object(data: bytes) -> Dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the header is not UTF-8 ({e})") from None
    if not text.startswith("{"):
        raise ValueError(f"the header does not begin with '{{': {text[:40]!r}")
    header = strict_json(text, "the header")
    if not isinstance(header, dict):
        raise ValueError(f"the header is not a JSON object: {text[:40]!r}")
    return header


def strict_json(text: str, what: str) -> Any:
    """``json.loads`` of a file's description (``what`` names it in the errors), refusing duplicate keys;
    ValueError for anything that is not JSON, nested too deeply included."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"{what} is not valid JSON ({e})") from None


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {keys!r:.200}")
    return dict(pairs)


def _tensor_info(key: str, info: Any) -> Tuple[str, Tuple[int, ...], int, int]:
    """``(dtype, shape, begin, end)`` of a tensor's header entry, its size checked against its offsets."""
    where = f"tensor {key!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        got = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"{where}: expected the keys ['data_offsets', 'dtype', 'shape'], got {got}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _BITS:
        raise ValueError(f"{where}: unknown dtype {dtype!r:.40}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < _MAX_SIZE for d in shape):
        raise ValueError(f"{where}: shape: expected a list of sizes, got {shape!r:.200}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < _MAX_SIZE for o in offsets) or offsets[0] > offsets[1]):
        raise ValueError(f"{where}: data_offsets: expected [begin, end] with 0 <= begin <= end, got "
                         f"{offsets!r:.200}")
    count = 1
    for d in shape:  # as the library counts: a product that overflows 64 bits on the way is refused
        count *= d
        if count >= _MAX_SIZE:
            raise ValueError(f"{where}: shape {shape} overflows 64 bits")
    bits = count * _BITS[dtype]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise ValueError(f"{where}: {dtype} of shape {tuple(shape)} is {bits / 8:g} bytes; its data_offsets "
                         f"{offsets} hold {offsets[1] - offsets[0]}")
    return dtype, tuple(shape), offsets[0], offsets[1]
