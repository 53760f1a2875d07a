"""quantize_model: supported layers, folding, overrides, skip list and clear errors."""

import numpy as np
import pytest

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tfqnet._keras import keras
from tfqnet.core.config import LayerQuantizeConfig
from tfqnet.quantizers import UniformActivationQuantizer, UniformWeightQuantizer

L = keras.layers


def _wrapper(qat_model, name):
    return qat_model.get_layer("quant_" + name)


def test_batch_norm_is_folded_and_relu_gets_the_only_grid(float_digits_model):
    q = tfqnet.quantize_model(float_digits_model, weight_bits=8, activation_bits=8)
    names = [layer.name for layer in q.layers]
    assert not any("bn1" in n for n in names)
    wrapper = _wrapper(q, "conv1")
    conv1 = wrapper.layer
    assert conv1.use_bias
    assert not wrapper.quantize_config.quantize_activation  # no grid between conv and ReLU
    assert _wrapper(q, "relu1").quantize_config.quantize_output
    kernel = next(w for w in wrapper.weights if w.name.endswith("/kernel:0"))
    # Folding happened with the moving statistics: the folded conv equals conv -> BN.
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    bn = float_digits_model.get_layer("bn1")
    original = bn(float_digits_model.get_layer("conv1")(x), training=False).numpy()
    folded = keras.backend.conv2d(x, kernel, padding="same").numpy() + conv1.bias.numpy()
    np.testing.assert_allclose(folded, original, rtol=1e-4, atol=1e-4)


def test_quantize_model_leaves_the_float_model_untouched(float_digits_model, digits):
    before = float_digits_model.predict(digits.x_test[:16], verbose=0)
    tfqnet.quantize_model(float_digits_model, weight_bits=4)
    after = float_digits_model.predict(digits.x_test[:16], verbose=0)
    np.testing.assert_array_equal(before, after)


def test_configs_follow_bits_overrides_and_output_rule(float_digits_model):
    q = tfqnet.quantize_model(
        float_digits_model, weight_bits=3, activation_bits=4,
        overrides={"conv1": {"weight_bits": 8}}, policy=None,
    )
    conv1 = _wrapper(q, "conv1").quantize_config
    conv2 = _wrapper(q, "conv2").quantize_config
    logits = _wrapper(q, "logits").quantize_config
    assert isinstance(conv2, LayerQuantizeConfig)
    assert conv1.weight_quantizer == UniformWeightQuantizer(8, per_axis=True)
    assert conv2.weight_quantizer == UniformWeightQuantizer(3, per_axis=True)
    assert conv2.activation_quantizer == UniformActivationQuantizer(4)
    # Dense kernels are per tensor; the model output keeps an 8-bit grid.
    assert logits.weight_quantizer == UniformWeightQuantizer(3, per_axis=False)
    assert logits.activation_quantizer == UniformActivationQuantizer(8)


def test_unsupported_layer_error_names_layer_and_skip_option():
    inputs = keras.Input((8,))
    x = L.Dense(4, name="dense_a")(inputs)
    x = L.LayerNormalization(name="norm_b")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    with pytest.raises(tfqnet.UnsupportedLayerError, match=r"'norm_b'.*skip=\['norm_b'\]"):
        tfqnet.quantize_model(model)
    q = tfqnet.quantize_model(model, skip=["norm_b"])
    assert "norm_b" in [layer.name for layer in q.layers]  # left float, unwrapped


def test_unsupported_activation_says_how_to_fix():
    model = keras.Sequential([keras.Input((8,)), L.Dense(3, activation="tanh", name="d")])
    with pytest.raises(tfqnet.UnsupportedLayerError, match="'d'.*tanh"):
        tfqnet.quantize_model(model)


def test_nested_model_error_says_flatten():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4)], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2)(inner(inputs)))
    with pytest.raises(tfqnet.UnsupportedLayerError, match="'inner'.*nested model.*flatten"):
        tfqnet.quantize_model(model)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "nope"}, "unknown quantization method 'nope'"),
        ({"weight_bits": 1}, "weight_bits must be an integer from 2 to 8"),
        ({"activation_bits": 9}, "activation_bits must be an integer from 2 to 8"),
        ({"skip": ["missing"]}, "does not have: \\['missing'\\]"),
        ({"overrides": {"conv1": {"weight_bits": 12}}}, "weight_bits of layer 'conv1'"),
        ({"temperature": 3}, "takes no option"),
    ],
)
def test_bad_options_fail_before_work(float_digits_model, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tfqnet.quantize_model(float_digits_model, **kwargs)


def _mixed_model() -> keras.Model:
    """Conv1D, DepthwiseConv2D, residual Add->ReLU, Concatenate, GAP1D, Flatten, ReLU6.

    BatchNorm momentum 0.9: at the default 0.99 the moving statistics are still far off
    after a few epochs on digits and the model predicts at chance, where nearly tied
    logits make the agreement check meaningless."""
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU(6.0)(x)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1)(x)
    y = L.BatchNormalization(momentum=0.9)(y)
    x = L.ReLU()(L.Add()([x, y]))
    z = L.Reshape((64, 8))(x)
    z = L.Conv1D(8, 3, padding="same", activation="relu")(z)
    z = L.GlobalAveragePooling1D()(z)
    w = L.Flatten()(x)  # spatial detail: global pooling alone leaves digits at chance
    x = L.Concatenate()([z, w])
    x = L.Dropout(0.1)(x)
    return keras.Model(inputs, L.Dense(10)(x))


@pytest.fixture(scope="module")
def float_mixed_model(digits):
    keras.utils.set_random_seed(0)
    model = _mixed_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
    return model


# Every method on depthwise, Conv1D, residual and concatenated layers: a per-channel
# FakeQuant on a reshaped depthwise kernel converts for one method and not another.
@pytest.mark.parametrize("method, weight_bits", [
    ("uniform", 4), ("qn", 2), ("qn", 4), ("crq", 2), ("srq", 4),
])
def test_mixed_layers_train_convert_and_agree_on_tflm(
    float_mixed_model, digits, method, weight_bits
):
    q = tfqnet.quantize_model(
        float_mixed_model, method=method, weight_bits=weight_bits, activation_bits=8
    )
    q = fine_tune(q, digits, 2)
    flatbuffer = tfqnet.convert(q, digits.x_train)
    ops = tfqnet.FlatbufferModel.from_bytes(flatbuffer).op_names
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION"} <= set(ops)
    assert top1_agreement(q, flatbuffer, digits.x_test) >= 0.99


def test_mobilenet_v2_quantizes():
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
        classifier_activation=None,
    )
    q = tfqnet.quantize_model(model, weight_bits=4)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in q.layers)
    out = q(np.zeros((1, 32, 32, 3), np.float32), training=True)
    assert out.shape == (1, 10)
