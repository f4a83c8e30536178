"""``activation=`` and ``add=`` fused into the sweep that writes the output: every activation, with and
without ``add``, channels first and channels last (the rows and the columns of the kernels), training and
frozen statistics, float16/32/64, against the float64 twin (tests/reference.py); the fused output is the
plain one followed by the same epilogue, bit for bit, streamed or not, at any thread count; the backwards
against finite differences (float64) and PyTorch's autograd of the composition (float32); the layers; the
errors, and that a failed call changes nothing."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm
import memory
import reference
import reference_steps
from fastnorm import _kernels
from fastnorm._epilogue import _activate_after
from fastnorm._validation import ACTIVATIONS, _check_activation
from test_activation_accuracy import ULP, ulp_error

ACTS = [None, *ACTIVATIONS]
TOL = {np.dtype(np.float16): 3e-3, np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-10}
try:
    import ml_dtypes
    BFLOAT16 = [ml_dtypes.bfloat16]
except ImportError:  # bfloat16 cases left out: ml_dtypes is optional
    BFLOAT16 = []


def channels_last(x):
    """x with the same values, its memory channels last (an NCHW view of NHWC memory)."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)


# Each op as f(module, x, params, activation, add): module is fastnorm or the twin.  The rows-family ops
# take no add (their residual= is another feature).
def _bn_train(m, x, p, act, add):
    return m.batch_norm(x, p["rm"].copy(), p["rv"].copy(), p["w"], p["b"], True, activation=act, add=add)


def _bn_eval(m, x, p, act, add):
    return m.batch_norm(x, p["rm"], p["rv"], p["w"], p["b"], False, activation=act, add=add)


def _gn(m, x, p, act, add):
    return m.group_norm(x, 2, p["w"], p["b"], activation=act, add=add)


def _in_train(m, x, p, act, add):
    return m.instance_norm(x, None, None, p["w"], p["b"], activation=act, add=add)


def _in_eval(m, x, p, act, add):
    return m.instance_norm(x, p["rm"], p["rv"], p["w"], p["b"], False, activation=act, add=add)


def _ln(m, x, p, act, add):
    return m.layer_norm(x, x.shape[-1], p["wl"], p["bl"], activation=act)


def _rms(m, x, p, act, add):
    return m.rms_norm(x, x.shape[-1], p["wl"], activation=act)


OPS = {"batch_norm train": _bn_train, "batch_norm eval": _bn_eval, "group_norm": _gn,
       "instance_norm train": _in_train, "instance_norm eval": _in_eval, "layer_norm": _ln, "rms_norm": _rms}
WITH_ADD = {"batch_norm train", "batch_norm eval", "group_norm", "instance_norm train", "instance_norm eval"}


def _params(rng, x, dtype):
    C, D = x.shape[1], x.shape[-1]
    return {"rm": rng.normal(size=C).astype(dtype), "rv": rng.uniform(0.5, 2, C).astype(dtype),
            "w": rng.normal(size=C).astype(dtype), "b": rng.normal(size=C).astype(dtype),
            "wl": rng.normal(size=D).astype(dtype), "bl": rng.normal(size=D).astype(dtype)}


@st.composite
def cases(draw):
    op = draw(st.sampled_from(sorted(OPS)))
    ndim = draw(st.integers(3 if op.startswith("instance") else 2, 4))
    shape = (draw(st.integers(2, 4)), draw(st.sampled_from([2, 4, 6])),
             *[draw(st.integers(2, 9)) for _ in range(ndim - 2)])
    return (op, shape, draw(st.sampled_from(ACTS)), draw(st.sampled_from(["none", "same", "broadcast"])),
            draw(st.booleans()), np.dtype(draw(st.sampled_from([np.float16, np.float32, np.float64]))),
            draw(st.integers(0, 2**32 - 1)))


def _add_for(kind, shape, rng, dtype):
    if kind == "none":
        return None
    return rng.normal(size=shape if kind == "same" else shape[1:2] + (1,) * (len(shape) - 2)).astype(dtype)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_fused_ops_equal_the_float64_composition(case):
    op, shape, act, add_kind, last, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    x = channels_last(x) if last else x
    p = _params(rng, x, dtype)
    add = _add_for(add_kind, shape, rng, dtype) if op in WITH_ADD else None
    y = OPS[op](fastnorm, x, p, act, add)
    expected = OPS[op](reference, x, p, act, add)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=TOL[dtype], atol=TOL[dtype] * 10)


# Shapes over the kernels' paths: [N, C, S] rows (long and short runs, one value per channel), [M, C]
# columns (narrow and wide rows of the channels-last tile), runs longer than a chunk of the epilogue.
PATH_SHAPES = [(4, 6, 33, 29), (16, 4, 3), (40, 6), (3, 600, 2), (2, 6, 700), (5, 2, 2, 2)]


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("shape", PATH_SHAPES, ids=str)
@pytest.mark.parametrize("last", [False, True], ids=["first", "last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_output_is_the_plain_output_then_the_epilogue_bit_for_bit(op, shape, last, dtype):
    if op.startswith("instance") and len(shape) < 3 or op == "group_norm" and shape[1] % 2:
        pytest.skip("not an input of this op")
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(dtype)
    x = channels_last(x) if last else x
    p = _params(rng, x, dtype)
    add = rng.normal(size=shape).astype(dtype) if op in WITH_ADD else None
    plain = OPS[op](fastnorm, x, p, None, None)
    for act in ACTIVATIONS:
        expected = _activate_after(np.array(plain, order="C"), _check_activation(act), add)
        previous = _kernels.set_stream_bytes(0)  # every output streamed
        try:
            streamed = OPS[op](fastnorm, x, p, act, add)
        finally:
            _kernels.set_stream_bytes(previous)
        for threads in (1, 2):
            with fastnorm.threads(threads):
                y = OPS[op](fastnorm, x, p, act, add)
            np.testing.assert_array_equal(y, expected, err_msg=f"{act}, {threads} threads")
        np.testing.assert_array_equal(streamed, expected, err_msg=f"{act}, streamed")


def test_relu_add_on_a_large_input_across_threads():
    # Large enough for several threads, a streamed output and runs of many chunks.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 64, 64)).astype(np.float32)
    add = rng.normal(size=x.shape).astype(np.float32)
    rm, rv, w, b = (rng.uniform(0.5, 2, 16).astype(np.float32) for _ in range(4))
    ys = []
    for threads in (1, 2):
        with fastnorm.threads(threads):
            ys.append(fastnorm.batch_norm(x, rm, rv, w, b, activation="relu", add=add))
    np.testing.assert_array_equal(ys[0], ys[1])
    expected = np.maximum(fastnorm.batch_norm(x, rm, rv, w, b) + add, 0)
    np.testing.assert_array_equal(ys[0], expected)


def test_add_may_be_the_output_or_overlap_it():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 10)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    expected = np.maximum(fastnorm.batch_norm(x, rm, rv) + x, 0)
    y = x.copy()
    fastnorm.batch_norm(y, rm, rv, activation="relu", add=y, out=y)  # a residual block written in place
    np.testing.assert_array_equal(y, expected)
    buf = np.zeros(x.size + 5, np.float32)
    out, add = buf[5:].reshape(x.shape), buf[:-5].reshape(x.shape)  # add one chunk behind out
    add[...] = rng.normal(size=x.shape)
    expected = np.tanh((fastnorm.batch_norm(x, rm, rv) + add).astype(np.float64))
    fastnorm.batch_norm(x, rm, rv, activation="tanh", add=add, out=out)
    assert ulp_error(out, expected).max() <= ULP


# --------------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------------

def _forward_and_backward(op, x, p, act, add, training=True):
    """(forward(x, w, b, add), grads(dy) -> (dx, dw, db[, dadd])) of one op, its weight and bias those of
    the forward."""
    rows = op in ("layer_norm", "rms_norm")
    forward = {
        "batch_norm": lambda x, w, b, add, **k: fastnorm.batch_norm(x, p["rm"].copy(), p["rv"].copy(), w, b,
                                                                    training, activation=act, add=add, **k),
        "group_norm": lambda x, w, b, add, **k: fastnorm.group_norm(x, 2, w, b, activation=act, add=add, **k),
        "instance_norm": lambda x, w, b, add, **k: fastnorm.instance_norm(x, p["rm"].copy(), p["rv"].copy(), w, b,
                                                                          training, activation=act, add=add, **k),
        "layer_norm": lambda x, w, b, add, **k: fastnorm.layer_norm(x, x.shape[-1], w, b, activation=act, **k),
        "rms_norm": lambda x, w, b, add, **k: fastnorm.rms_norm(x, x.shape[-1], w, activation=act, **k),
    }[op]
    w, b = (p["wl"], p["bl"]) if rows else (p["w"], p["b"])
    stats = forward(x, w, b, add, return_stats=True)[1:]
    before = {"group_norm": (2,), "layer_norm": (x.shape[-1],), "rms_norm": (x.shape[-1],)}.get(op, ())
    after = {"batch_norm": (training,), "instance_norm": (training,), "layer_norm": (b,)}.get(op, ())
    extra = {} if rows else {"add": add, "bias": b}
    backward = getattr(fastnorm, op + "_backward")
    return forward, lambda dy: backward(dy, x, *before, *stats, w, *after, activation=act, **extra)


BACKWARD_OPS = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm"]


def _numerical(f, a, r, h=1e-6):
    """d sum(f(a) * r) / da by central differences."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        keep = a[i]
        a[i] = keep + h
        up = np.sum(f() * r)
        a[i] = keep - h
        down = np.sum(f() * r)
        a[i] = keep
        g[i] = (up - down) / (2 * h)
    return g


@pytest.mark.parametrize("op, training", [(op, True) for op in BACKWARD_OPS]
                         + [("batch_norm", False), ("instance_norm", False)])  # frozen statistics
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("last", [False, True], ids=["first", "last"])
def test_backward_matches_finite_differences_in_float64(op, act, training, last):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 4, 5)) * 1.5
    x = channels_last(x) if last else x
    p = _params(rng, x, np.float64)
    add = rng.normal(size=x.shape) if op in ("batch_norm", "group_norm", "instance_norm") else None
    r = rng.normal(size=x.shape)
    forward, backward = _forward_and_backward(op, x, p, act, add, training)
    grads = backward(r)
    w, b = (p["wl"], p["bl"]) if op in ("layer_norm", "rms_norm") else (p["w"], p["b"])
    xs = x.copy()
    np.testing.assert_allclose(grads[0], _numerical(lambda: forward(xs, w, b, add), xs, r), atol=2e-6)
    np.testing.assert_allclose(grads[1], _numerical(lambda: forward(x, w, b, add), w, r), atol=2e-6)
    if op != "rms_norm":
        np.testing.assert_allclose(grads[2], _numerical(lambda: forward(x, w, b, add), b, r), atol=2e-6)
    if add is not None:
        assert len(grads) == 4
        np.testing.assert_allclose(grads[3], _numerical(lambda: forward(x, w, b, add), add, r), atol=2e-6)
    else:
        assert len(grads) == 3


@pytest.mark.parametrize("op", BACKWARD_OPS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, *BFLOAT16], ids=lambda d: np.dtype(d).name)
@settings(max_examples=12, deadline=None)
@given(shape=st.sampled_from([(2, 4, 3), (3, 4, 70), (40, 4, 2)]), last=st.booleans(), offset=st.sampled_from([0, 300]),
       seed=st.integers(0, 2**16))
def test_relu_backward_recomputes_the_forwards_pre_activation_bit_for_bit(op, dtype, shape, last, offset, seed):
    """dy passes where the forward's fused output is positive, and exactly there: the pre-activation
    recomputed in the backward (rows of the view long or short, channels first or last, a mean far from 0)
    has the forward's bits, its sign included."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2 + offset).astype(dtype)
    x = channels_last(x) if last else x
    p = _params(rng, x, dtype)
    add = rng.normal(size=x.shape).astype(dtype) if op in ("batch_norm", "group_norm", "instance_norm") else None
    dy = rng.normal(size=x.shape).astype(dtype)
    forward, through_relu = _forward_and_backward(op, x, p, "relu", add)
    _, plain = _forward_and_backward(op, x, p, None, add)
    w, b = (p["wl"], p["bl"]) if op in ("layer_norm", "rms_norm") else (p["w"], p["b"])
    y = forward(x, w, b, add)
    for got, want in zip(through_relu(dy), plain(np.where(y > 0, dy, 0).astype(dtype))):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", BACKWARD_OPS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_backward_matches_the_twin(op, act):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 4, 6)).astype(np.float32)
    p = _params(rng, x, np.float32)
    add = rng.normal(size=x.shape).astype(np.float32) if op not in ("layer_norm", "rms_norm") else None
    dy = rng.normal(size=x.shape).astype(np.float32)
    if op in ("layer_norm", "rms_norm"):
        params = (p["wl"], p["bl"]) if op == "layer_norm" else (p["wl"],)
        stats = getattr(fastnorm, op)(x, 6, *params, activation=act, return_stats=True)[1:]
        args = (dy, x, 6, *stats, *params)
        kw = {"activation": act}
    else:
        extra = (2,) if op == "group_norm" else ()
        running = (None, None) if op != "group_norm" else ()
        mode = {"training": True} if op == "batch_norm" else {}
        stats = getattr(fastnorm, op)(x, *extra, *running, p["w"], p["b"], activation=act, add=add,
                                      return_stats=True, **mode)[1:]
        args = (dy, x, *extra, *stats, p["w"])
        kw = {"activation": act, "add": add, "bias": p["b"]}
    got = getattr(fastnorm, op + "_backward")(*args, **kw)
    want = getattr(reference, op + "_backward")(*args, **kw)
    assert len(got) == len(want)
    for g, e in zip(got, want):
        if e is None:
            assert g is None
        else:
            np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-4)


def _torch_activation(tF, act):
    return (lambda z: tF.gelu(z, approximate="tanh")) if act == "gelu_tanh" else getattr(tF, act)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_backward_matches_torch_autograd_in_float32(act, training):
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    p = _params(rng, x, np.float32)
    add = rng.normal(size=x.shape).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    apply = _torch_activation(tF, act)
    tx, tw, tb, ta = (torch.tensor(v, requires_grad=True) for v in (x, p["w"], p["b"], add))
    z = tF.batch_norm(tx, torch.tensor(p["rm"]), torch.tensor(p["rv"]), tw, tb, training) + ta
    apply(z).backward(torch.tensor(dy))
    bn = fastnorm.BatchNorm2d(3, activation=act)
    bn.weight[...], bn.bias[...], bn.running_mean[...], bn.running_var[...] = p["w"], p["b"], p["rm"], p["rv"]
    bn.train(training)
    y = bn(x, add=add)
    np.testing.assert_allclose(y, apply(z).detach().numpy(), rtol=1e-5, atol=1e-5)
    dx = bn.backward(dy)
    for got, want in ((dx, tx), (bn.grad_weight, tw), (bn.grad_bias, tb), (bn.grad_add, ta)):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_layer_norm_backward_matches_torch_autograd_in_float32(act):
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    rng = np.random.default_rng(6)
    x = rng.normal(size=(6, 8)).astype(np.float32)
    w, b, dy = (rng.normal(size=s).astype(np.float32) for s in (8, 8, x.shape))
    apply = _torch_activation(tF, act)
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    apply(tF.layer_norm(tx, (8,), tw, tb)).backward(torch.tensor(dy))
    ln = fastnorm.LayerNorm(8, activation=act)
    ln.weight[...], ln.bias[...] = w, b
    ln(x)
    np.testing.assert_allclose(ln.backward(dy), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ln.grad_weight, tw.grad.numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------

LAYERS = [lambda **k: fastnorm.BatchNorm1d(4, **k), lambda **k: fastnorm.BatchNorm2d(4, **k),
          lambda **k: fastnorm.LazyBatchNorm2d(**k), lambda **k: fastnorm.GroupNorm(2, 4, **k),
          lambda **k: fastnorm.InstanceNorm2d(4, affine=True, track_running_stats=True, **k),
          lambda **k: fastnorm.LazyInstanceNorm2d(**k), lambda **k: fastnorm.LayerNorm(5, **k),
          lambda **k: fastnorm.RMSNorm(5, **k)]


def _input_for(layer):
    shape = (3, 4) if isinstance(layer, fastnorm.BatchNorm1d) else (3, 4, 6, 5)
    return np.random.default_rng(2).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("act", ["relu", "gelu_tanh"])
def test_layers_keep_the_activation_in_repr_config_and_saved_files(make, act):
    layer = make(activation=act)
    assert layer.activation == act
    assert f"activation={act!r}" in repr(layer)
    assert "activation" not in repr(make())
    x = _input_for(layer)
    layer(x)  # a lazy layer becomes its class
    f = io.BytesIO()
    fastnorm.save(f, {"layer": layer})
    f.seek(0)
    loaded = fastnorm.load(f)["layer"]
    assert loaded.activation == act and type(loaded) is type(layer)
    loaded.train(layer.training)
    np.testing.assert_array_equal(loaded(x), layer(x))


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layers_apply_and_differentiate_the_activation_and_add(make, training):
    plain, fused = make(), make(activation="silu")
    x = _input_for(plain)
    plain(x), fused(x)  # lazy layers take their size
    plain.train(training), fused.train(training)
    takes_add = not isinstance(plain, (fastnorm.LayerNorm, fastnorm.RMSNorm))
    add = np.random.default_rng(4).normal(size=x.shape).astype(np.float32) if takes_add else None
    kw = {"add": add} if takes_add else {}
    z = plain(x) + (0 if add is None else add)
    y = fused(x, **kw)
    assert ulp_error(y, z / (1 + np.exp(-z.astype(np.float64)))).max() <= ULP  # the float32 silu's bound
    dy = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
    s = 1 / (1 + np.exp(-z.astype(np.float64)))
    dz = (dy * s * (1 + z * (1 - s))).astype(np.float32)
    plain(x)
    np.testing.assert_allclose(fused.backward(dy), plain.backward(dz), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused.grad_weight, plain.grad_weight, rtol=1e-4, atol=1e-4)
    if takes_add:
        np.testing.assert_allclose(fused.grad_add, dz, rtol=1e-5, atol=1e-6)
    else:
        assert fused.grad_add is None


@pytest.mark.parametrize("make", LAYERS[:6])  # the layers whose call takes add=
@pytest.mark.parametrize("kind", ["channel", "channel without the batch axis", "last axis", "scalar"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_grad_add_of_a_broadcast_add_has_the_add_s_shape_as_autograd_gives(make, kind, dtype):
    # A per-channel (or scalar) add is an operand broadcast to the input: its gradient sums over the
    # axes it was broadcast along, as PyTorch's autograd gives it, not the gradient at every element.
    layer, full = make(activation="silu"), make(activation="silu")
    x = _input_for(full).astype(dtype)
    shape = {"channel": (1, 4) + (1,) * (x.ndim - 2), "channel without the batch axis": (4,) + (1,) * (x.ndim - 2),
             "last axis": x.shape[-1:], "scalar": ()}[kind]
    add = np.random.default_rng(6).normal(size=shape).astype(dtype)
    dy = np.random.default_rng(7).normal(size=x.shape).astype(dtype)
    np.testing.assert_array_equal(layer(x, add=add), full(x, add=np.broadcast_to(add, x.shape).copy()))
    np.testing.assert_array_equal(layer.backward(dy), full.backward(dy))
    assert layer.grad_add.shape == add.shape and layer.grad_add.dtype == x.dtype
    lead = x.ndim - add.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(add.shape) if n == 1 and x.shape[lead + i] != 1)
    expected = full.grad_add.astype(np.float64).sum(axis=axes).reshape(add.shape)
    np.testing.assert_allclose(layer.grad_add.astype(np.float64), expected, rtol=1e-3 if dtype == np.float16 else 1e-6)


def _sync_batch_norm(**k):
    return fastnorm.SyncBatchNorm(4, comm=pytest.importorskip("mpi4py.MPI").COMM_SELF, **k)


@pytest.mark.parametrize("make", LAYERS[:6] + [_sync_batch_norm])  # the layers whose call takes add=
@pytest.mark.parametrize("written", ["add", "input"])
def test_a_layer_call_writing_out_over_its_add_differentiates_the_add_it_was_given(make, written):
    # The residual block written in place: out= is add (or the input); backward needs the add as given.
    rng = np.random.default_rng(5)
    layer, twin = make(activation="tanh"), make(activation="tanh")
    x = _input_for(twin)
    add, dy = rng.normal(size=x.shape).astype(np.float32), rng.normal(size=x.shape).astype(np.float32)
    expected = twin(x, add=add)
    x_, add_ = x.copy(), add.copy()
    out = add_ if written == "add" else x_
    np.testing.assert_array_equal(layer(x_, add=add_, out=out), expected)
    np.testing.assert_array_equal(layer.backward(dy), twin.backward(dy))
    np.testing.assert_array_equal(layer.grad_add, twin.grad_add)
    np.testing.assert_array_equal(layer.grad_weight, twin.grad_weight)


def test_sync_batch_norm_with_one_process_is_batch_norm_with_the_activation_and_add():
    MPI = pytest.importorskip("mpi4py.MPI")
    rng = np.random.default_rng(9)
    x, add, dy = (rng.normal(size=(4, 3, 5)).astype(np.float32) for _ in range(3))
    sync = fastnorm.SyncBatchNorm(3, comm=MPI.COMM_SELF, activation="gelu")
    local = fastnorm.BatchNorm1d(3, activation="gelu")
    np.testing.assert_allclose(sync(x, add=add), local(x, add=add), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sync.backward(dy), local.backward(dy), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sync.grad_add, local.grad_add, rtol=1e-6)
    np.testing.assert_array_equal(sync.running_mean, local.running_mean)


def test_fold_batch_norm_refuses_a_layer_with_an_activation():
    bn = fastnorm.BatchNorm2d(2, activation="relu").eval()
    with pytest.raises(ValueError, match="activation"):
        fastnorm.fold_batch_norm(np.ones((2, 1, 1, 1)), None, bn)


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda **k: fastnorm.batch_norm(np.ones((2, 3, 4)), np.zeros(3), np.ones(3), **k),
    lambda **k: fastnorm.group_norm(np.ones((2, 4, 3)), 2, **k),
    lambda **k: fastnorm.instance_norm(np.ones((2, 3, 4)), **k),
    lambda **k: fastnorm.layer_norm(np.ones((2, 3)), 3, **k),
    lambda **k: fastnorm.rms_norm(np.ones((2, 3)), 3, **k),
    lambda **k: fastnorm.BatchNorm1d(3, **k),
    lambda **k: fastnorm.LayerNorm(3, **k),
    lambda **k: fastnorm.batch_norm_backward(np.ones((2, 3)), np.ones((2, 3)), np.zeros(3), np.ones(3), **k),
])
def test_an_unknown_activation_is_refused_naming_the_choices(call):
    with pytest.raises(ValueError, match=r"activation: expected None or one of 'relu', 'relu6', .*'tanh', got 'swish'"):
        call(activation="swish")
    with pytest.raises(TypeError, match="activation"):
        call(activation=1)


@pytest.mark.parametrize("add, error", [(np.ones((2, 4)), ValueError), (np.ones((3, 3, 4)), ValueError),
                                        (np.ones((2, 3, 4), np.int64), TypeError), ("x", TypeError),
                                        (np.ma.masked_array(np.ones((2, 3, 4))), TypeError)])
@pytest.mark.parametrize("op", ["batch_norm train", "batch_norm eval", "group_norm", "instance_norm eval"])
def test_a_bad_add_is_refused_and_changes_nothing(add, error, op):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.full(x.shape, 7, np.float32)
    calls = {"batch_norm train": lambda: fastnorm.batch_norm(x, rm, rv, training=True, add=add, out=out),
             "batch_norm eval": lambda: fastnorm.batch_norm(x, rm, rv, add=add, out=out),
             "group_norm": lambda: fastnorm.group_norm(x, 3, add=add, out=out),
             "instance_norm eval": lambda: fastnorm.instance_norm(x, rm, rv, use_input_stats=False, add=add,
                                                                  out=out)}
    with pytest.raises(error, match="add"):
        calls[op]()
    assert (out == 7).all() and (rm == 0).all() and (rv == 1).all()


def test_a_layer_call_with_a_bad_add_changes_nothing():
    bn = fastnorm.BatchNorm2d(3, activation="relu")
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    before = bn.state_dict()
    with pytest.raises(ValueError, match="add"):
        bn(x, add=np.ones((5,), np.float32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(RuntimeError):
        bn.backward(np.ones_like(x))  # nothing kept
    bn.eval()
    with pytest.raises(ValueError, match="add"):
        bn(x, add=np.ones((5,), np.float32))  # the eval cache's path too


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_the_activation_follows_a_residual(op, act):
    rng = np.random.default_rng(12)
    x, r, dy = (rng.normal(size=(6, 40)).astype(np.float32) for _ in range(3))
    w = rng.normal(size=40).astype(np.float32)
    fn = getattr(fastnorm, op)
    y, h = fn(x, 40, w, activation=act, residual=r)
    np.testing.assert_array_equal(h, x + r)
    expected = _activate_after(np.array(fn(x + r, 40, w), order="C"), _check_activation(act), None)
    np.testing.assert_array_equal(y, expected)
    layer, plain = (getattr(fastnorm, "LayerNorm" if op == "layer_norm" else "RMSNorm")(40, **k)
                    for k in ({"activation": act}, {}))
    layer(x, residual=r)
    plain(x + r)
    z = plain(x + r).astype(np.float64)
    dz = dy * (z > 0) if act == "relu" else dy * reference_steps._ACTIVATIONS["gelu"][1](z)
    np.testing.assert_allclose(layer.backward(dy), plain.backward(dz.astype(np.float32)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sizes", [(4, 4), (5, 0, 3)], ids=str)
def test_sync_batch_norm_over_processes_equals_batch_norm_on_the_whole_batch(sizes):
    from conftest import assert_sync_matches_whole
    from test_distributed import ThreadComm, _run_ranks

    rng = np.random.default_rng(13)
    x, add, dy = (rng.normal(size=(sum(sizes), 3, 5)) for _ in range(3))
    whole = fastnorm.BatchNorm1d(3, dtype=np.float64, activation="gelu")
    y_all = whole(x, add=add)
    dx_all = whole.backward(dy)
    bounds = np.cumsum((0,) + sizes)

    def work(rank, comm):
        layer = fastnorm.SyncBatchNorm(3, dtype=np.float64, comm=comm, activation="gelu")
        mine = slice(bounds[rank], bounds[rank + 1])
        return layer, layer(x[mine], add=add[mine]), layer.backward(dy[mine])

    for rank, (layer, y, dx) in enumerate(_run_ranks(ThreadComm.world(len(sizes)), work)):
        mine = slice(bounds[rank], bounds[rank + 1])
        np.testing.assert_allclose(y, y_all[mine], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, dx_all[mine], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.grad_add, whole.grad_add[mine], rtol=1e-12, atol=1e-12)
        assert_sync_matches_whole(layer, whole)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_backward_through_the_activation_reads_misaligned_arrays_as_aligned(dtype):
    # Arrays not aligned to their item size are read through an aligned copy (the sanitized build of
    # .ci/run reports any misaligned load); the gradients have the aligned arrays' bits.
    rng = np.random.default_rng(12)
    x, g, add = (rng.standard_normal((4, 8, 5, 5)).astype(dtype) for _ in range(3))
    w, b = rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype)
    _, mean, invstd = fastnorm.batch_norm(x, None, None, w, b, training=True, return_stats=True, add=add,
                                          activation="gelu")
    expected = fastnorm.batch_norm_backward(g, x, mean, invstd, w, activation="gelu", bias=b, add=add)
    got = fastnorm.batch_norm_backward(*(memory.misaligned(a) for a in (g, x, mean, invstd, w)), activation="gelu",
                                       bias=memory.misaligned(b), add=memory.misaligned(add))
    for e, a in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(e).view(np.uint8))
