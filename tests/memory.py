"""The same values in memory the kernels must not read as it is: the other byte order, misaligned, masked."""
import numpy as np


def swapped(a):
    """``a``'s values in the non-native byte order (``'>f4'`` on a little-endian machine), same layout."""
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("S"), order="K")


def misaligned(a):
    """``a``'s values in writable memory one byte off the item alignment, same layout."""
    dense = np.asarray(a).copy(order="K")  # positive strides over exactly nbytes
    raw = bytearray(dense.nbytes + 1)
    m = np.ndarray(dense.shape, dense.dtype, buffer=raw, offset=1, strides=dense.strides)
    m[...] = dense
    assert not m.flags.aligned or m.size == 0
    return m


def masked(a):
    """``a`` as a masked array with its first value masked (the kernels would read the value anyway)."""
    a = np.asarray(a)
    mask = np.zeros(a.shape, bool)
    if a.size:
        mask.flat[0] = True
    return np.ma.masked_array(a.copy(), mask=mask)


def in_memory(a, kind):
    """``a`` in memory of ``kind``: "native" (as is), "swapped" (the other byte order), "misaligned" or
    "masked"."""
    return {"native": lambda v: v, "swapped": swapped, "misaligned": misaligned, "masked": masked}[kind](a)
