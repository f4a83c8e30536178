"""fastnorm.from_keras: Keras layers (config and weights) as fastnorm layers, checked against Keras 3 on its
PyTorch backend where it is installed (those tests skip without it), and on hand-written configs."""
import json

import numpy as np
import pytest

import fastnorm
from conftest import keras_or_skip, keras_renorm_or_skip


def _round_trip(keras, layer, shape, rng, **kwargs):
    """The fastnorm layer of a built Keras layer with random weights, through JSON, and the input."""
    layer.build(shape)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    converted = fastnorm.from_keras(serialized, layer.get_weights(), **kwargs)
    return converted, rng.normal(1.0, 2.0, size=shape).astype(np.float32)


def _keras_out(layer, x, **kwargs):
    return np.asarray(layer(x, **kwargs).detach().cpu())


BATCH_NORM = [  # (Keras arguments, input shape, fastnorm class, channel_axis)
    ({}, (8, 3), fastnorm.BatchNorm1d, -1), ({"axis": 1}, (6, 3, 5), fastnorm.BatchNorm1d, 1),
    ({"axis": 1, "momentum": 0.9, "epsilon": 1e-5}, (4, 3, 2, 5), fastnorm.BatchNorm2d, 1),
    ({"axis": -1, "center": False}, (4, 2, 3, 3), fastnorm.BatchNorm2d, -1),
    ({"axis": 2, "scale": False}, (3, 2, 3, 2, 2), fastnorm.BatchNorm3d, 2),
    ({"renorm": True, "renorm_clipping": {"rmax": 1.5, "rmin": 0.7, "dmax": 0.4}, "renorm_momentum": 0.8,
      "momentum": 0.95}, (8, 3), fastnorm.BatchNorm1d, -1),
]


@pytest.mark.parametrize("kwargs, shape, cls, channel_axis", BATCH_NORM)
def test_batch_normalization_round_trip(rng, kwargs, shape, cls, channel_axis):
    keras = keras_renorm_or_skip() if "renorm" in kwargs else keras_or_skip()
    layer = keras.layers.BatchNormalization(**kwargs)
    bn, x = _round_trip(keras, layer, shape, rng)
    assert type(bn) is cls and bn.channel_axis == channel_axis and bn.bessel is False
    assert bn.momentum == round(1 - kwargs.get("momentum", 0.99), 12) and bn.renorm == kwargs.get("renorm", False)
    np.testing.assert_allclose(bn.eval()(x), _keras_out(layer, x, training=False), atol=1e-5, rtol=1e-5)
    # One training step: outputs and the moving statistics, with the momentum mapped.
    bn.train()
    np.testing.assert_allclose(bn(x), _keras_out(layer, x, training=True), atol=1e-5, rtol=1e-5)
    moving = dict(zip([w.path.split("/")[-1] for w in layer.weights], layer.get_weights()))
    np.testing.assert_allclose(bn.running_mean, moving["moving_mean"], atol=1e-6, rtol=1e-6)
    if bn.renorm:  # Keras derives moving_variance from an average of standard deviations: see the docs
        np.testing.assert_allclose(bn.renorm_mean, moving["renorm_mean"], atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(bn.renorm_stddev, moving["renorm_stddev"], atol=1e-6, rtol=1e-6)
    else:
        np.testing.assert_allclose(bn.running_var, moving["moving_variance"], atol=1e-6, rtol=1e-6)
        x2 = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(bn.eval()(x2), _keras_out(layer, x2, training=False), atol=1e-5, rtol=1e-5)


ROWS = [  # (Keras class, its arguments, input shape, fastnorm class, attributes expected)
    ("LayerNormalization", {}, (4, 6), fastnorm.LayerNorm, {"normalized_shape": (6,)}),
    ("LayerNormalization", {"axis": [-2, -1], "epsilon": 1e-5}, (2, 3, 4), fastnorm.LayerNorm,
     {"normalized_shape": (3, 4)}),
    ("LayerNormalization", {"axis": [1, 2, 3], "center": False}, (2, 2, 3, 4), fastnorm.LayerNorm,
     {"normalized_shape": (2, 3, 4)}),
    ("LayerNormalization", {"scale": False}, (3, 5), fastnorm.LayerNorm, {"normalized_shape": (5,)}),
    ("LayerNormalization", {"center": False, "scale": False}, (3, 5), fastnorm.LayerNorm,
     {"elementwise_affine": False}),
    ("LayerNormalization", {"axis": [1, 3]}, (2, 3, 4, 5), fastnorm.LayerNorm,
     {"normalized_shape": (3, 5), "axes": (1, 3)}),
    ("LayerNormalization", {"axis": [3, 1], "center": False}, (2, 3, 4, 5), fastnorm.LayerNorm,
     {"normalized_shape": (3, 5), "axes": (1, 3)}),
    ("LayerNormalization", {"axis": [-1, 1]}, (2, 3, 4, 5), fastnorm.LayerNorm,  # Keras' weights: (5, 3)
     {"normalized_shape": (3, 5), "axes": (1, 3)}),
    ("LayerNormalization", {"axis": [0, 2]}, (2, 3, 4), fastnorm.LayerNorm,
     {"normalized_shape": (2, 4), "axes": (0, 2)}),
    ("RMSNormalization", {}, (4, 6), fastnorm.RMSNorm, {"normalized_shape": (6,)}),
    ("RMSNormalization", {"axis": [-2, -1], "epsilon": 1e-4}, (2, 3, 4), fastnorm.RMSNorm, {"eps": 1e-4}),
    ("GroupNormalization", {"groups": 2}, (2, 3, 3, 4), fastnorm.GroupNorm, {"channel_axis": -1}),
    ("GroupNormalization", {"groups": 3, "axis": 1, "epsilon": 1e-5}, (2, 6, 5), fastnorm.GroupNorm,
     {"channel_axis": 1}),
    ("GroupNormalization", {"groups": -1, "center": False}, (2, 4, 4), fastnorm.GroupNorm, {"num_groups": 4}),
    ("GroupNormalization", {"groups": 2, "axis": 3, "scale": False}, (2, 2, 2, 4), fastnorm.GroupNorm,
     {"channel_axis": -1}),
]


@pytest.mark.parametrize("name, kwargs, shape, cls, attributes", ROWS)
def test_layer_rms_and_group_normalization_round_trip(rng, name, kwargs, shape, cls, attributes):
    keras = keras_or_skip()
    if not hasattr(keras.layers, name):
        pytest.skip(f"Keras {keras.__version__} has no {name}")
    layer = getattr(keras.layers, name)(**kwargs)
    converted, x = _round_trip(keras, layer, shape, rng)
    assert type(converted) is cls
    assert {key: getattr(converted, key) for key in attributes} == attributes
    np.testing.assert_allclose(converted(x), _keras_out(layer, x), atol=1e-5, rtol=1e-5)


def test_bare_config_with_class_name_and_ndim(rng):
    keras = keras_or_skip()
    layer = keras.layers.BatchNormalization(axis=1)
    layer.build((4, 3, 2, 2))
    layer.set_weights([rng.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4)])
    bn = fastnorm.from_keras(layer.get_config(), layer.get_weights(), class_name="BatchNormalization", ndim=4)
    x = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(bn.eval()(x), _keras_out(layer, x, training=False), atol=1e-5)
    with pytest.raises(ValueError, match="ndim: the input's number of dimensions is needed"):
        fastnorm.from_keras(layer.get_config(), layer.get_weights(), class_name="BatchNormalization")
    with pytest.warns(UserWarning, match="deprecated"):
        rms_scaling = keras.layers.LayerNormalization(rms_scaling=True)
    rms_scaling.build((2, 3))
    with pytest.raises(ValueError, match="rms_scaling=True: Keras then divides the uncentred input"):
        fastnorm.from_keras(keras.saving.serialize_keras_object(rms_scaling), rms_scaling.get_weights())


# Hand-written configs: no Keras needed.

def _bn(**config):
    return {"class_name": "BatchNormalization", "config": config, "build_config": {"input_shape": [None, 3]}}


def test_hand_written_configs_without_keras():
    w = [np.ones(3), np.zeros(3), np.arange(3.0), np.full(3, 2.0)]
    bn = fastnorm.from_keras(_bn(momentum=0.9, epsilon=1e-3, dtype="float64"), w, bessel=True)
    assert bn.momentum == 0.1 and bn.bessel and bn.dtype == np.float64 and bn.channel_axis == -1
    np.testing.assert_array_equal(bn.running_var, [2.0, 2.0, 2.0])
    renorm = fastnorm.from_keras(_bn(renorm=True, renorm_momentum=0.99, renorm_clipping={"rmax": 3.0},
                                     dtype={"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}),
                                 w + [np.full(3, 1.5), np.ones(3), np.full(3, 1.25)])
    assert renorm.renorm_momentum == 0.01 and renorm.renorm_clipping == {"rmax": 3.0} and renorm.dtype == np.float32
    np.testing.assert_array_equal(renorm.renorm_stddev, [1.25] * 3)
    ghost = fastnorm.from_keras(_bn(virtual_batch_size=4), w)  # tf.keras 2's argument
    assert ghost.virtual_batch_size == 4
    ln = fastnorm.from_keras({"class_name": "LayerNormalization", "config": {"axis": [2, 3], "scale": False},
                              "build_config": {"input_shape": [None, 2, 3, 4]}}, [np.full((3, 4), 0.5)])
    assert ln.normalized_shape == (3, 4) and ln.weight.min() == 1 and ln.bias.max() == 0.5
    scale = np.arange(6.0).reshape(2, 3)  # Keras 3 on PyTorch runs RMSNormalization over trailing axes only
    rms = fastnorm.from_keras({"class_name": "RMSNormalization", "config": {"axis": [0, 1], "epsilon": 1e-6}},
                              [scale], ndim=3)
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    assert rms.axes == (0, 1) and rms.normalized_shape == (2, 3)
    np.testing.assert_array_equal(rms(x), fastnorm.rms_norm(x, None, scale, 1e-6, axes=(0, 1)))
    gn = fastnorm.from_keras({"class_name": "GroupNormalization", "config": {"groups": -1, "axis": 1, "center": False,
                                                                             "scale": False},
                              "build_config": {"input_shape": [None, 4, 7]}}, [])
    assert gn.num_groups == 4 and gn.num_channels == 4 and not gn.affine and gn.channel_axis == 1


@pytest.mark.parametrize("config, weights, kwargs, error, match", [
    ({"class_name": "Dense", "config": {}}, [], {}, ValueError, "class_name 'Dense': expected one of"),
    (_bn(), [np.ones(3)], {}, ValueError, r"weights: this BatchNormalization config has 4 weights \(gamma, beta"),
    (_bn(), [np.ones(3)] * 3 + [np.ones(4)], {}, ValueError, "weights: expected arrays of one shape"),
    (_bn(), [np.ones((3, 1))] * 4, {}, ValueError, "weights: expected 1-D arrays"),
    (_bn(), [np.array(["a"] * 3)] * 4, {}, TypeError, r"weights\[0\]: expected real numbers"),
    (_bn(beta_regularizer=None, new_thing=1), [np.ones(3)] * 4, {}, ValueError, r"does not know: \['new_thing'\]"),
    (_bn(synchronized=True), [np.ones(3)] * 4, {}, ValueError, "synchronized=True"),
    (_bn(axis=[0, 1]), [np.ones(3)] * 4, {}, ValueError, "other than the batch axis 0"),
    (_bn(axis=[1, -1]), [np.ones(3)] * 4, {}, ValueError, "expected distinct channel axes"),
    (_bn(axis=[1, 3]), [np.ones((1, 3, 1, 4))] * 3 + [np.ones((1, 3, 1, 5))], {"ndim": 4}, ValueError,
     "weights: expected arrays of one shape"),
    (_bn(axis=[1, 3]), [np.ones((1, 3, 2, 4))] * 4, {"ndim": 4}, ValueError,
     r"weights: expected arrays of the sizes of axis=\[1, 3\]"),
    (_bn(axis=0), [np.ones(3)] * 4, {}, ValueError, "other than the batch axis 0"),
    (_bn(axis=5), [np.ones(3)] * 4, {}, ValueError, r"axis=5: out of range for a 2-D input"),
    (_bn(axis=-3), [np.ones(3)] * 4, {}, ValueError, r"axis=-3: out of range for a 2-D input"),
    ({"class_name": "LayerNormalization", "config": {"axis": 5}}, [np.ones(3)] * 2, {"ndim": 2}, ValueError,
     r"axis=5: out of range for a 2-D input"),
    ({"class_name": "GroupNormalization", "config": {"axis": 7}}, [np.ones(4)] * 2, {"ndim": 2}, ValueError,
     r"axis=7: out of range for a 2-D input"),
    (_bn(), [np.ones(3)] * 4, {"ndim": 6}, ValueError, "ndim: expected 2 to 5"),
    (_bn(), [np.ones(3)] * 4, {"class_name": "LayerNormalization"}, ValueError, "class_name: 'LayerNormalization' "
                                                                                "given"),
    ({"axis": -1}, [], {}, ValueError, "class_name: required with a bare config"),
    ([1, 2], [], {}, TypeError, "config: expected a mapping"),
    ({"class_name": "LayerNormalization", "config": {"axis": [1, -2]}}, [np.ones((3, 3))] * 2, {"ndim": 3},
     ValueError, "expected distinct axes"),
    ({"class_name": "LayerNormalization", "config": {"axis": [1, 2]}}, [np.ones(3)] * 2, {"ndim": 3}, ValueError,
     "weights: expected 2-D arrays"),
    ({"class_name": "LayerNormalization", "config": {"axis": 1}}, [np.ones(3)] * 2, {}, ValueError,
     "ndim: the input's number of dimensions is needed to place axis"),
    ({"class_name": "LayerNormalization", "config": {"center": False, "scale": False}}, [], {}, ValueError,
     "needs a build_config"),
    ({"class_name": "GroupNormalization", "config": {"axis": 2}}, [np.ones(4)] * 2, {"ndim": 4}, ValueError,
     "axis 1 or the last axis"),
    ({"class_name": "GroupNormalization", "config": {"groups": 3}}, [np.ones(4)] * 2, {}, ValueError,
     "num_groups: expected a divisor"),
])
def test_what_fastnorm_cannot_represent_raises_naming_it(config, weights, kwargs, error, match):
    with pytest.raises(error, match=match):
        fastnorm.from_keras(config, weights, **kwargs)
