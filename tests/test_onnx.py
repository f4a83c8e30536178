"""fastnorm.onnx: the ONNX backend's node test cases of the eight normalization operators run through
reference_ops() (fastnorm computing every node) and give the expected outputs; layers_from_model gives
layers whose outputs are the nodes'; GroupNormalization's opset 18 and 21, LayerNormalization's Mean and
InvStdDev and LRN's even windows against onnx's own evaluator or the operator's definition; onnx stays
optional."""
import warnings

import numpy as np
import pytest

import fastnorm
import fastnorm.onnx
from conftest import fresh_python

onnx = pytest.importorskip("onnx")
from onnx import TensorProto  # noqa: E402
from onnx import helper as oh  # noqa: E402
from onnx import numpy_helper as onh  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

OPS = {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
       "RMSNormalization", "LpNormalization", "MeanVarianceNormalization", "LRN"}
LAYER_OPS = OPS - {"LpNormalization", "MeanVarianceNormalization"}


def _node_cases():
    """The onnx package's node test cases (its generators, as they write the backend's test data) whose
    graph holds one of the operators."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators of other operators warn about their own data
        cases = collect_testcases(None)  # None: every operator (the argument is required before onnx 1.20)
    return [c for c in cases if any(n.op_type in OPS for n in c.model.graph.node)]


CASES = _node_cases()


def test_every_operator_has_node_test_cases():
    assert {n.op_type for c in CASES for n in c.model.graph.node} == OPS
    assert len(CASES) >= 55


def _feeds(case, inputs):
    return {i.name: v for i, v in zip(case.model.graph.input, inputs)}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_test_cases_through_reference_ops(case):
    session = ReferenceEvaluator(case.model, new_ops=fastnorm.onnx.reference_ops())
    assert all(type(node).__module__ == "fastnorm.onnx" for node in session.rt_nodes_)  # fastnorm computed it
    for inputs, expected in case.data_sets:
        got = session.run(None, _feeds(case, inputs))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and g.shape == e.shape
            if case.model.graph.node[0].op_type == "LpNormalization" and np.isnan(e).any():
                pytest.skip("this onnx's case expects 0 / 0 = NaN for a zero vector; onnx 1.20 and later expect 0, "
                            "which fastnorm gives")
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)


def _with_initializers(case, inputs):
    """The case's model with every input but the first made an initializer of its data."""
    graph = case.model.graph
    initializers = [onh.from_array(v, i.name) for i, v in zip(graph.input[1:], inputs[1:])]
    new_graph = oh.make_graph(graph.node, graph.name, graph.input[:1], graph.output, initializers)
    return oh.make_model(new_graph, opset_imports=case.model.opset_import)


LAYER_CASES = [c for c in CASES if c.model.graph.node[0].op_type in LAYER_OPS
               and not any(a.name == "training_mode" and a.i for a in c.model.graph.node[0].attribute)]


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c.name for c in LAYER_CASES])
def test_layers_from_model_give_the_nodes_outputs(case):
    for inputs, expected in case.data_sets:
        layers = fastnorm.onnx.layers_from_model(_with_initializers(case, inputs))
        assert len(layers) == 1
        (name, layer), = layers.items()
        assert name == (case.model.graph.node[0].name or f"{case.model.graph.node[0].op_type}_0")
        assert not layer.training
        np.testing.assert_allclose(layer(inputs[0]), expected[0], rtol=case.rtol, atol=case.atol)


def _model(node, inputs, outputs, opset, initializers=()):
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], list(initializers))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_per_group_in_opset_18_and_per_channel_in_21(opset, rng):
    x = rng.normal(3.0, 2.0, (2, 6, 5)).astype(np.float32)
    size = 3 if opset == 18 else 6
    scale, bias = rng.normal(size=size).astype(np.float32), rng.normal(size=size).astype(np.float32)
    node = oh.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=3, epsilon=1e-3)
    model = _model(node, [("x", x.shape), ("scale", (size,)), ("bias", (size,))], ["y"], opset)
    feeds = {"x": x, "scale": scale, "bias": bias}
    expected = ReferenceEvaluator(model).run(None, feeds)[0]  # onnx's function body for the opset
    got = ReferenceEvaluator(model, new_ops=fastnorm.onnx.reference_ops()).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with_params = _model(node, [("x", x.shape)], ["y"], opset, [onh.from_array(scale, "scale"),
                                                                  onh.from_array(bias, "bias")])
    layer = fastnorm.onnx.layers_from_model(with_params)["GroupNormalization_0"]
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1, -2])
def test_layer_normalization_mean_and_inv_std_dev_outputs(axis, rng):
    x = rng.normal(100.0, 2.0, (3, 4, 5)).astype(np.float32)
    w_shape = x.shape[axis % 3:]
    w, b = rng.normal(size=w_shape).astype(np.float32), rng.normal(size=w_shape).astype(np.float32)
    node = oh.make_node("LayerNormalization", ["x", "w", "b"], ["y", "mean", "rstd"], axis=axis)
    model = _model(node, [("x", x.shape), ("w", w_shape), ("b", w_shape)], ["y", "mean", "rstd"], 17)
    feeds = {"x": x, "w": w, "b": b}
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = ReferenceEvaluator(model, new_ops=fastnorm.onnx.reference_ops()).run(None, feeds)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32 and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def _onnx_lrn(x, size, alpha, beta, bias):
    """ONNX's LRN definition: the window floor((size - 1) / 2) before and ceil((size - 1) / 2) after."""
    before, after = (size - 1) // 2, size // 2
    square_sum = np.zeros_like(x, dtype=np.float64)
    for c in range(x.shape[1]):
        square_sum[:, c] = np.sum(x[:, max(0, c - before):c + after + 1].astype(np.float64) ** 2, axis=1)
    return x / (bias + alpha / size * square_sum) ** beta


@pytest.mark.parametrize("size", [1, 2, 3, 4, 6])
def test_lrn_window_of_every_size_is_onnxs(size, rng):
    x = rng.normal(size=(2, 7, 3, 2)).astype(np.float32)
    node = oh.make_node("LRN", ["x"], ["y"], size=size, alpha=0.5, beta=0.75, bias=2.0)
    model = _model(node, [("x", x.shape)], ["y"], 13)
    got = ReferenceEvaluator(model, new_ops=fastnorm.onnx.reference_ops()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _onnx_lrn(x, size, 0.5, 0.75, 2.0), rtol=1e-6)
    if size % 2:  # the same window as PyTorch's: a LocalResponseNorm layer
        layer = fastnorm.onnx.layers_from_model(model)["LRN_0"]
        np.testing.assert_allclose(layer(x), got, rtol=1e-6)
    else:
        with pytest.raises(ValueError, match="even size"):
            fastnorm.onnx.layers_from_model(model)


def test_batch_normalization_layer_momentum_and_running_statistics(rng):
    C = 3
    params = {"scale": rng.normal(size=C), "bias": rng.normal(size=C), "mean": rng.normal(size=C),
              "var": rng.uniform(0.5, 2.0, C)}
    node = oh.make_node("BatchNormalization", ["x", *params], ["y"], name="bn", momentum=0.8, epsilon=1e-3)
    model = _model(node, [("x", (4, C, 5))], ["y"], 15,
                   [onh.from_array(v.astype(np.float32), k) for k, v in params.items()])
    bn = fastnorm.onnx.layers_from_model(model)["bn"]
    assert isinstance(bn, fastnorm.BatchNorm1d) and bn.momentum == pytest.approx(0.2) and bn.eps == pytest.approx(1e-3)
    np.testing.assert_array_equal(bn.running_var, params["var"].astype(np.float32))
    assert not bn.bessel


def test_layers_from_model_errors():
    with pytest.raises(TypeError, match="model"):
        fastnorm.onnx.layers_from_model(b"not a model")
    node = oh.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])
    model = _model(node, [("x", (2, 3, 4)), ("s", (3,)), ("b", (3,))], ["y"], 22)
    with pytest.raises(ValueError, match="'s' is not an initializer"):
        fastnorm.onnx.layers_from_model(model)


def test_onnx_stays_optional():
    assert fresh_python("import sys, fastnorm, fastnorm.onnx; print('onnx' in sys.modules)").strip() == "False"
    # With onnx unimportable: a clear ImportError naming the package.
    message = fresh_python("import sys; sys.modules['onnx'] = None\n"
                           "import fastnorm.onnx\n"
                           "try:\n    fastnorm.onnx.reference_ops()\nexcept ImportError as e:\n    print(e)")
    assert "needs the onnx package" in message and "pip install onnx" in message


def test_instance_normalization_of_one_spatial_element_is_the_bias(rng):
    # ONNX normalizes over whatever spatial size there is: one element gives 0 * scale + bias, not an error.
    x = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    scale, bias = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    node = oh.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], epsilon=1e-3)
    model = _model(node, [("x", x.shape), ("scale", (3,)), ("bias", (3,))], ["y"], 6)
    feeds = {"x": x, "scale": scale, "bias": bias}
    got = ReferenceEvaluator(model, new_ops=fastnorm.onnx.reference_ops()).run(None, feeds)[0]
    np.testing.assert_array_equal(got, np.broadcast_to(bias[:, None, None], x.shape))
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, feeds)[0], atol=1e-6)


def test_batch_normalization_training_on_one_value_per_channel(rng):
    # ONNX's training uses the biased variance, 0 for one value: y is the bias, the running variance decays.
    x = rng.normal(size=(1, 3)).astype(np.float32)
    scale, bias = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    mean, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    node = oh.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"],
                        ["y", "running_mean", "running_var"], epsilon=1e-3, momentum=0.9, training_mode=1)
    model = _model(node, [("x", x.shape)] + [(k, (3,)) for k in ("scale", "bias", "mean", "var")],
                   ["y", "running_mean", "running_var"], 15)
    feeds = {"x": x, "scale": scale, "bias": bias, "mean": mean, "var": var}
    y, running_mean, running_var = ReferenceEvaluator(model, new_ops=fastnorm.onnx.reference_ops()).run(None, feeds)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, x.shape))
    for got, expected in zip((y, running_mean, running_var), ReferenceEvaluator(model).run(None, feeds)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
