"""layer_norm / rms_norm with ``residual=``: h = x + residual normalized, in one pass where the rows allow.

The fused pass must give the bits of the composition ``layer_norm(np.add(x, residual))`` (it runs the same
moments and sweeps on the same sums), h must be ``x + residual`` in the input's dtype, and every other
case (float16, broadcast residuals, axes=, mask=) must equal the composition too."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
import fastnorm.functional as F
import memory
import reference
from fastnorm._threads import threads

OPS = {"layer_norm": (F.layer_norm, True), "rms_norm": (F.rms_norm, False)}
try:
    import ml_dtypes
    HALVES = [np.float16, ml_dtypes.bfloat16]
except ImportError:  # bfloat16 cases left out: ml_dtypes is optional
    HALVES = [np.float16]


def _same(a, b):
    """Bit for bit, in any float dtype (float16 and bfloat16 by their bits)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.itemsize == 2:
        a, b = a.view(np.uint16), b.view(np.uint16)
    return a.dtype == b.dtype and np.array_equal(a, b)


def _call(name, x, D, w, b, **kwargs):
    op, has_bias = OPS[name]
    return op(x, D, w, b, **kwargs) if has_bias else op(x, D, w, **kwargs)


def _data(rng, shape, dtype, offset=0.0):
    return (rng.standard_normal(shape) * 3 + offset).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), D=st.sampled_from([1, 3, 64, 768, 2049, 5000, 16385]),
       dtype=st.sampled_from([np.float32, np.float64, *HALVES]), name=st.sampled_from(sorted(OPS)),
       affine=st.booleans(), offset=st.sampled_from([0.0, 1e4]), seed=st.integers(0, 2**16))
def test_fused_pass_has_the_bits_of_the_composition(rows, D, dtype, name, affine, offset, seed):
    rng = np.random.default_rng(seed)
    x, r = _data(rng, (rows, D), dtype, offset), _data(rng, (rows, D), dtype)
    w = _data(rng, D, np.float32 if dtype in HALVES else dtype) if affine else None
    b = _data(rng, D, np.float32 if dtype in HALVES else dtype) if affine else None
    y, h = _call(name, x, D, w, b, residual=r)
    assert h.dtype == x.dtype and _same(h, x + r)  # half: NumPy's addition, the float32 sum rounded
    assert _same(y, _call(name, x + r, D, w, b))


@pytest.mark.parametrize("name", sorted(OPS))
def test_same_bits_for_every_thread_count(name):
    rng = np.random.default_rng(1)
    for shape, dtype in itertools.product([(4096, 96), (3, 40000), (64, 768)], [np.float32, *HALVES]):
        x, r = _data(rng, shape, dtype, 100.0), _data(rng, shape, dtype)
        results = []
        for n in (1, 2, 3):
            with threads(n):
                results.append(_call(name, x, shape[1], None, None, residual=r, activation="silu"))
        for y, h in results[1:]:
            assert _same(y, results[0][0]) and _same(h, results[0][1])


def _at(values, offset):
    """A copy of ``values`` starting ``offset`` bytes past a 4 KiB boundary."""
    raw = np.empty(values.nbytes + 8192, np.uint8)
    start = (-raw.ctypes.data) % 4096 + offset
    view = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    view[...] = values
    return view


@settings(max_examples=30, deadline=None)
@given(offsets=st.lists(st.integers(0, 1023).map(lambda k: 4 * k), min_size=4, max_size=4),
       D=st.sampled_from([96, 768, 1000]), dtype=st.sampled_from([np.float32, np.float64]),
       name=st.sampled_from(sorted(OPS)), nthreads=st.sampled_from([1, 2]))
def test_streamed_pass_has_the_bits_of_the_composition_wherever_the_arrays_lie(offsets, D, dtype, name, nthreads):
    # Streamed outputs (forced here on small arrays) with x, the residual, y and h at any distance from one
    # another modulo 4 KiB: which stores stream depends on those distances, the values never do.
    from fastnorm import _kernels
    rng = np.random.default_rng(D)
    x, r = (_at(_data(rng, (9, D), dtype, 50.0), offset) for offset in offsets[:2])
    w, b = _data(rng, D, dtype), _data(rng, D, dtype)
    y, h = (_at(np.full_like(x, np.nan), offset) for offset in offsets[2:])
    expected = _call(name, x + r, D, w, b)
    previous = _kernels.set_stream_bytes(0)
    try:
        with threads(nthreads):
            _call(name, x, D, w, b, residual=r, out=y, residual_out=h)
    finally:
        _kernels.set_stream_bytes(previous)
    assert _same(h, x + r) and _same(y, expected)


@pytest.mark.parametrize("case", ["float16", "broadcast", "axes", "mask", "strided"])
def test_other_layouts_equal_the_composition(case):
    rng = np.random.default_rng(2)
    x, r = _data(rng, (6, 5, 8), np.float32), _data(rng, (6, 5, 8), np.float32)
    kwargs, D = {}, 8
    if case == "float16":
        x, r = x.astype(np.float16), r.astype(np.float16)
    elif case == "broadcast":
        r = r[0, 0]
    elif case == "axes":
        kwargs, D = {"axes": (0, 2)}, None
    elif case == "mask":
        kwargs = {"mask": rng.random((6, 5, 8)) < 0.7}
    else:
        x, r = x[:, ::-1], r[::2].repeat(2, axis=0)
    y, h, mean, rstd = F.layer_norm(x, D, None, None, residual=r, return_stats=True, **kwargs)
    y0, mean0, rstd0 = F.layer_norm(np.add(x, r), D, None, None, return_stats=True, **kwargs)
    assert np.array_equal(h, np.add(x, r)) and h.dtype == x.dtype
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(mean, mean0)
    np.testing.assert_array_equal(rstd, rstd0)
    expected = reference.layer_norm(x, D, residual=r, **kwargs)
    np.testing.assert_allclose(y, expected[0], rtol=0, atol=4e-3 if case == "float16" else 1e-5)


@pytest.mark.parametrize("dtype", [np.float64, *HALVES])
@pytest.mark.parametrize("target", ["x", "residual", "new"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_residual_out_may_be_an_input(target, name, dtype):
    rng = np.random.default_rng(3)
    x, r = _data(rng, (50, 300), dtype), _data(rng, (50, 300), dtype)
    y0, h0 = _call(name, x, 300, None, None, residual=r)
    into = {"x": x, "residual": r, "new": np.empty_like(x)}[target]
    out = np.empty_like(x) if target != "x" else r
    y, h = _call(name, x, 300, None, None, residual=r, residual_out=into, out=out)
    assert h is into and y is out
    assert _same(h, h0) and _same(y, y0)


def test_rms_norm_returns_h_then_rstd():
    x = np.array([[3.0, 1.0]])
    y, h, rstd = F.rms_norm(x, 2, eps=0.0, residual=np.array([[0.0, 3.0]]), return_stats=True)
    assert h.tolist() == [[3.0, 4.0]] and rstd.tolist() == [1 / np.sqrt(12.5)]


def test_errors_name_the_argument_and_change_nothing():
    x = np.ones((4, 8), np.float32)
    r = np.ones((4, 8), np.float32)
    h = np.full((4, 8), 7.0, np.float32)
    with pytest.raises(TypeError, match="residual: expected dtype float32"):
        F.layer_norm(x, 8, residual=r.astype(np.float64))
    with pytest.raises(ValueError, match="residual: expected a shape that broadcasts"):
        F.layer_norm(x, 8, residual=np.ones((3, 8), np.float32))
    with pytest.raises(ValueError, match="residual_out: given without residual"):
        F.layer_norm(x, 8, residual_out=h)
    with pytest.raises(ValueError, match="out, residual_out"):
        F.layer_norm(x, 8, residual=r, out=h, residual_out=h)
    with pytest.raises(TypeError, match="residual_out: expected dtype"):
        F.layer_norm(x, 8, residual=r, residual_out=h.astype(np.float64))
    for bad in [dict(normalized_shape=7), dict(normalized_shape=8, eps=-1.0)]:
        with pytest.raises(ValueError):
            kwargs = {"eps": 1e-5, **bad}
            F.layer_norm(x, kwargs.pop("normalized_shape"), residual=r, residual_out=h, **kwargs)
        assert (h == 7.0).all()
    ln = fastnorm.LayerNorm(8)
    ln(x)
    with pytest.raises(ValueError, match="grad_residual_out: the last forward had no residual"):
        ln.backward(x, grad_residual_out=x)


@pytest.mark.parametrize("cls", [fastnorm.LayerNorm, fastnorm.RMSNorm])
def test_layer_backward_is_that_of_h_plus_the_stream(cls):
    rng = np.random.default_rng(4)
    x, r = _data(rng, (16, 32), np.float64), _data(rng, (16, 32), np.float64)
    g, g_h = _data(rng, (16, 32), np.float64), _data(rng, (16, 32), np.float64)
    layer = cls(32, dtype=np.float64)
    layer.weight[:] = rng.uniform(0.5, 2, 32)
    y, h = layer(x, residual=r)
    assert np.array_equal(h, x + r)
    dx = layer.backward(g, grad_residual_out=g_h)
    plain = cls(32, dtype=np.float64)
    plain.weight[:] = layer.weight
    assert np.array_equal(plain(x + r), y)
    np.testing.assert_allclose(dx, plain.backward(g) + g_h, rtol=1e-12, atol=1e-12)

    # Finite differences of L = sum(y * g) + sum(h * g_h) with respect to x (equal to that of r).
    def loss(xv):
        yv, hv = plain(xv, residual=r)
        return float((yv * g).sum() + (hv * g_h).sum())
    step = 1e-6
    for i, j in [(0, 0), (5, 17), (15, 31)]:
        e = np.zeros_like(x)
        e[i, j] = step
        numeric = (loss(x + e) - loss(x - e)) / (2 * step)
        assert abs(numeric - dx[i, j]) < 1e-5 * max(1.0, abs(numeric))


def test_layer_matches_torch_autograd_of_the_composition():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x, r = _data(rng, (8, 64), np.float32), _data(rng, (8, 64), np.float32)
    g, g_h = _data(rng, (8, 64), np.float32), _data(rng, (8, 64), np.float32)
    ln = fastnorm.LayerNorm(64)
    y, h = ln(x, residual=r)
    dx = ln.backward(g, grad_residual_out=g_h)
    tx, tr = torch.tensor(x, requires_grad=True), torch.tensor(r, requires_grad=True)
    th = tx + tr
    ty = torch.nn.functional.layer_norm(th, (64,))
    ((ty * torch.tensor(g)).sum() + (th * torch.tensor(g_h)).sum()).backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(dx, tr.grad.numpy(), atol=1e-4)


@pytest.mark.parametrize("dtype", HALVES)
def test_a_half_residual_call_allocates_only_its_outputs(dtype):
    import tracemalloc
    rng = np.random.default_rng(4)
    x, r = _data(rng, (4096, 768), dtype), _data(rng, (4096, 768), dtype)
    F.layer_norm(x, 768, residual=r)
    tracemalloc.start()
    try:
        y, h = F.layer_norm(x, 768, residual=r, activation="gelu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert y.dtype == h.dtype == dtype and peak < y.nbytes + h.nbytes + 256 * 1024, peak


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_misaligned_inputs_give_the_aligned_bits(dtype):
    # Arrays in memory not aligned to their item size (np.frombuffer at an odd offset) are read through an
    # aligned copy: the sanitized build of .ci/run reports any misaligned load.
    rng = np.random.default_rng(11)
    x, r = _data(rng, (5, 1000), dtype, 10.0), _data(rng, (5, 1000), dtype)
    w, b = _data(rng, 1000, dtype), _data(rng, 1000, dtype)
    misaligned = [memory.misaligned(a) for a in (x, r, w, b)]
    for name in OPS:
        y, h = _call(name, x, 1000, w, b, residual=r)
        y2, h2 = _call(name, *misaligned[:1], 1000, *misaligned[2:], residual=misaligned[1])
        assert _same(y2, y) and _same(h2, h)
