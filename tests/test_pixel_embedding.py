"""Pixel embedding (issue 6): exact int8 table, integer indices, TFLM-only graph."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

import tfqnet
from tests.helpers import fine_tune
from tests.micro_helpers import compact_exactly
from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.errors import UnsupportedLayerError
from tfqnet.layers import PixelEmbedding, add_pixel_embedding
from tfqnet.micro.op_resolver import resolver_method
from tfqnet.models import compile_classifier, digits_cnn

L = keras.layers
EDGE_PIXELS = np.array([0, 127, 128, 255])
#: every op the raw-pixel digits model may contain; all are TFLM reference kernels
TFLM_OPS = {"QUANTIZE", "CAST", "ADD", "GATHER", "RESHAPE", "CONV_2D", "MINIMUM",
            "MAX_POOL_2D", "FULLY_CONNECTED"}


def to_pixels(x: np.ndarray) -> np.ndarray:
    """digits (pixel/16 in [0, 1]) -> raw 8-bit pixels: value * 16, clipped to 255."""
    return np.clip(np.round(x * 16.0) * 16, 0, 255).astype(np.uint8)


def as_int8(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.int32) - 128).astype(np.int8)


def quantized_table(layer: PixelEmbedding) -> tuple[np.ndarray, float]:
    """The inference-mode table Q(E) and its step."""
    return layer.quantized_table(False).numpy(), float(layer.scale.numpy())


def gather_table(flatbuffer: bytes) -> tuple[np.ndarray, float, int]:
    """(int8 codes, scale, zero point) of the GATHER params in a flatbuffer."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    graph = model.subgraphs[0]
    names = {i: c for i, c in enumerate(model.operatorCodes)}
    (op,) = [o for o in graph.operators
             if max(names[o.opcodeIndex].builtinCode,
                    names[o.opcodeIndex].deprecatedBuiltinCode) == schema.BuiltinOperator.GATHER]
    tensor = graph.tensors[op.inputs[0]]
    assert tensor.type == schema.TensorType.INT8
    data = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8)
    return data.reshape(tensor.shape), float(tensor.quantization.scale[0]), int(
        tensor.quantization.zeroPoint[0])


def test_indices_are_integer_and_hit_first_and_last_row():
    layer = PixelEmbedding(dim=2, bits=4)
    layer.build((None, 1, 1, 1))
    rows = EDGE_PIXELS
    assert layer.indices(tf.constant(rows.astype(np.uint8))).numpy().tolist() == [
        0, 127, 128, 255]
    assert layer.indices(tf.constant(as_int8(rows))).numpy().tolist() == [0, 127, 128, 255]
    # a float tensor holding whole pixels is rounded, never truncated
    assert layer.indices(tf.constant([0.0, 126.6, 128.4, 255.0])).numpy().tolist() == [
        0, 127, 128, 255]
    int8_layer = PixelEmbedding(dim=2, bits=4, input_dtype="int8")
    assert int8_layer.indices(tf.constant([-128.0, -1.0, 0.0, 127.0])).numpy().tolist() == [
        0, 127, 128, 255]


def test_layer_serializes():
    layer = PixelEmbedding(dim=3, bits=2, input_dtype="int8")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert (clone.dim, clone.bits, clone.input_dtype) == (3, 2, "int8")


def test_straight_through_gradient_reaches_the_table():
    layer = PixelEmbedding(dim=2, bits=2)
    x = tf.constant(np.array([[[[3]]]], np.uint8))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(x, training=True))
    grads = tape.gradient(y, [layer.embeddings, layer.scale])
    table_grad = tf.convert_to_tensor(grads[0]).numpy()
    assert np.count_nonzero(table_grad.any(axis=1)) == 1 and table_grad[3].any()
    assert grads[1] is not None


@pytest.mark.parametrize("input_type", ["uint8", "int8"])
def test_table_exact_and_edge_pixels_on_tflm(input_type):
    """A model that outputs the embedding: TFLM returns exactly the trained table rows."""
    keras.utils.set_random_seed(3)
    image = keras.Input((1, 1, 1), dtype=input_type)
    out = L.Flatten()(PixelEmbedding(dim=4, bits=3, input_dtype=input_type, name="embed")(image))
    qat = tfqnet.quantize_model(keras.Model(image, out))
    embed = qat.get_layer("quant_embed").layer
    # move the table off its initial grid so the test is not trivially about the init
    embed.embeddings.assign(np.random.RandomState(0).normal(0, 0.05, (256, 4)))
    embed.scale.assign(0.02)
    table, scale = quantized_table(embed)

    pixels = EDGE_PIXELS.reshape(-1, 1, 1, 1).astype(np.uint8)
    x = pixels if input_type == "uint8" else as_int8(pixels)
    flatbuffer = tfqnet.convert(qat, x)  # input type: the embedding's input_dtype
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert graph.tensors[graph.inputs[0]].type == input_type.upper()
    codes, stored_scale, zero_point = gather_table(flatbuffer)
    assert zero_point == 0 and stored_scale == pytest.approx(scale, rel=1e-6)
    np.testing.assert_array_equal(codes, np.round(table / scale).astype(np.int8))
    assert np.abs(codes).max() <= grid.weight_qmax(3)

    raw = tfqnet.run_tflm(flatbuffer, x, raw=True)
    np.testing.assert_array_equal(raw, codes[EDGE_PIXELS])
    np.testing.assert_allclose(qat.predict(x, verbose=0), table[EDGE_PIXELS], atol=1e-6)


@pytest.fixture(scope="module")
def raw_pixel_qat(digits):
    """Digits CNN on raw uint8 pixels: float training, then 4-bit QAT (one epoch)."""
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), dtype="uint8", name="image")
    x = PixelEmbedding(dim=4, bits=4, name="embed")(image)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    logits = L.Dense(10, name="logits")(x)
    model = keras.Model(image, logits)
    pixels = digits._replace(x_train=to_pixels(digits.x_train), x_test=to_pixels(digits.x_test))
    compile_classifier(model, 2e-3)
    model.fit(pixels.x_train, pixels.y_train, epochs=5, batch_size=32, verbose=0)
    qat = tfqnet.quantize_model(model, weight_bits=4, activation_bits=4)
    return fine_tune(qat, pixels), pixels


def test_quantize_model_puts_no_quantizer_on_raw_pixels(raw_pixel_qat):
    qat, _ = raw_pixel_qat
    assert not [layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer"]


@pytest.mark.parametrize("input_type", ["uint8", "int8"])
def test_raw_pixel_model_runs_on_tflm_and_agrees(raw_pixel_qat, input_type):
    qat, pixels = raw_pixel_qat
    plain = tfqnet.convert(qat, pixels.x_train, input_type=input_type, compact=False)
    x = pixels.x_test if input_type == "uint8" else as_int8(pixels.x_test)
    flatbuffer = compact_exactly(plain, x)
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert set(graph.op_names) <= TFLM_OPS
    assert ("QUANTIZE" in graph.op_names) == (input_type == "uint8")
    assert graph.tensors[graph.inputs[0]].type == input_type.upper()
    assert not graph.float_tensors()

    tflm_top1 = tfqnet.run_tflm(flatbuffer, x).argmax(-1)  # loads: every op resolved
    keras_top1 = qat.predict(pixels.x_test, verbose=0).argmax(-1)
    assert np.mean(tflm_top1 == keras_top1) >= 0.99
    assert np.mean(tflm_top1 == pixels.y_test) >= 0.9


# --- quantize_model(model, pixel_embedding=...) ----------------------------------------

#: digits are value/16 and the raw pixels value*16: normalised = pixel / 256
DIGITS_PIXEL_SCALE = 1 / 256


@pytest.fixture(scope="module")
def option_qat(digits, float_digits_model):
    """The session's float digits CNN, given a pixel-embedding input by quantize_model."""
    pixels = digits._replace(x_train=to_pixels(digits.x_train), x_test=to_pixels(digits.x_test))
    qat = tfqnet.quantize_model(
        float_digits_model, weight_bits=4, activation_bits=4,
        pixel_embedding={"input_scale": DIGITS_PIXEL_SCALE},
    )
    return fine_tune(qat, pixels), pixels


def test_option_replaces_the_input_of_the_first_conv(option_qat):
    qat, _ = option_qat
    assert qat.inputs[0].dtype == tf.uint8
    embed = qat.get_layer("quant_pixel_embedding")
    assert isinstance(embed.layer, PixelEmbedding) and (embed.layer.dim, embed.layer.bits) == (4, 4)
    assert embed._inbound_nodes[0].inbound_layers.name == "image"
    assert qat.get_layer("quant_conv1").layer.kernel.shape == (3, 3, 4, 16)  # 1 channel * dim
    assert not [layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer"]


def test_option_starts_from_the_float_model(digits, float_digits_model):
    """The derived table and first-conv kernel reproduce the float model before any QAT."""
    embedded = add_pixel_embedding(float_digits_model, input_scale=DIGITS_PIXEL_SCALE)
    float_top1 = float_digits_model.predict(digits.x_test, verbose=0).argmax(-1)
    embedded_top1 = embedded.predict(to_pixels(digits.x_test), verbose=0).argmax(-1)
    assert np.mean(float_top1 == embedded_top1) >= 0.97


def test_option_reads_per_channel_normalization_and_drops_it():
    """Normalization (mean 50/100/150) on 3 channels: scales go to the kernel, offsets to
    the bias; with padding="valid" the derived model matches the float one closely."""
    keras.utils.set_random_seed(5)
    image = keras.Input((6, 6, 3), name="image")
    norm = L.Normalization(axis=-1, mean=[50.0, 100.0, 150.0], variance=[400.0, 900.0, 2500.0])
    x = L.Conv2D(8, 3, padding="valid", use_bias=False, name="conv")(norm(image))
    model = keras.Model(image, L.Dense(3)(L.Flatten()(x)))
    embedded = add_pixel_embedding(model, dim=4, bits=8)
    assert not [layer for layer in embedded.layers if isinstance(layer, L.Normalization)]
    assert embedded.get_layer("conv").use_bias  # the offsets' share moved into a bias
    pixels = np.random.RandomState(0).randint(0, 256, (16, 6, 6, 3))
    want = model.predict(pixels.astype(np.float32), verbose=0)
    got = embedded.predict(pixels.astype(np.uint8), verbose=0)
    assert np.abs(got - want).max() <= 0.005 * np.abs(want).max()


@pytest.mark.parametrize("input_type", [np.uint8, np.int8])
def test_option_converts_in_one_call_and_agrees_on_tflm(option_qat, input_type):
    qat, pixels = option_qat
    flatbuffer = tfqnet.convert(qat, representative_data=pixels.x_train, input_type=input_type)
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert graph.tensors[graph.inputs[0]].type == np.dtype(input_type).name.upper()
    for op in graph.op_names:
        resolver_method(op)  # raises for an op TFLM has no kernel for
    assert "GATHER" in graph.op_names and not graph.float_tensors()
    codes, scale, _ = gather_table(flatbuffer)
    table, trained_scale = quantized_table(qat.get_layer("quant_pixel_embedding").layer)
    assert scale == pytest.approx(trained_scale, rel=1e-6)
    np.testing.assert_array_equal(codes, np.round(table / trained_scale))

    x = pixels.x_test if input_type == np.uint8 else as_int8(pixels.x_test)
    tflm_top1 = tfqnet.run_tflm(flatbuffer, x).argmax(-1)
    keras_top1 = qat.predict(pixels.x_test, verbose=0).argmax(-1)
    assert np.mean(tflm_top1 == keras_top1) >= 0.99
    assert np.mean(tflm_top1 == pixels.y_test) >= 0.9


def test_option_with_int8_input(digits, float_digits_model):
    """input_dtype="int8": the Keras model and the flatbuffer take pixel - 128."""
    qat = tfqnet.quantize_model(
        float_digits_model, weight_bits=4, activation_bits=8,
        pixel_embedding={"input_dtype": np.int8, "input_scale": DIGITS_PIXEL_SCALE, "dim": 2},
    )
    codes = as_int8(to_pixels(digits.x_train[:256]))
    compile_classifier(qat, 5e-4)
    qat.fit(codes, digits.y_train[:256], epochs=1, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match=r"int8 pixels in -128\.\.127"):
        tfqnet.convert(qat, to_pixels(digits.x_train[:64]).astype(np.float32) + 1)
    flatbuffer = tfqnet.convert(qat, codes)
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert graph.tensors[graph.inputs[0]].type == "INT8" and "QUANTIZE" not in graph.op_names
    x = as_int8(to_pixels(digits.x_test))
    agreement = np.mean(tfqnet.run_tflm(flatbuffer, x).argmax(-1)
                        == qat.predict(x, verbose=0).argmax(-1))
    assert agreement >= 0.99


def _flatten_first():
    image = keras.Input((8, 8, 1), name="image")
    return keras.Model(image, L.Dense(10, name="logits")(L.Flatten(name="flatten")(image)))


def _two_branches():
    image = keras.Input((8, 8, 1), name="image")
    a = L.Conv2D(4, 3, name="conv_a")(image)
    b = L.Conv2D(4, 3, name="conv_b")(image)
    return keras.Model(image, L.Add()([a, b]))


def _depthwise_first():
    return keras.Sequential([keras.Input((8, 8, 3)), L.Rescaling(1 / 255),
                             L.DepthwiseConv2D(3, name="dw")])


@pytest.mark.parametrize("build, spec, error, match", [
    (_flatten_first, {"input_scale": 0.1}, UnsupportedLayerError, "'flatten' is a Flatten"),
    (_two_branches, {"input_scale": 0.1}, UnsupportedLayerError, r"feeds 2 layer calls"),
    (_depthwise_first, True, UnsupportedLayerError, "'dw' is a DepthwiseConv2D"),
    (digits_cnn, True, ValueError, "pass pixel_embedding=.*input_scale"),
    (digits_cnn, {"scale": 0.1}, ValueError, r"unknown option.*'scale'"),
])
def test_option_errors_name_the_problem(build, spec, error, match):
    with pytest.raises(error, match=match):
        tfqnet.quantize_model(build(), pixel_embedding=spec)
