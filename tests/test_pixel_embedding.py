"""Pixel embedding (issue 6): exact int8 table, integer indices, TFLM-only graph."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

import tfqnet
from tests.helpers import fine_tune
from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.convert.raw_input import convert_raw_input
from tfqnet.layers import PixelEmbedding
from tfqnet.models import compile_classifier

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

    flatbuffer = convert_raw_input(qat, EDGE_PIXELS.reshape(-1, 1, 1, 1))
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert graph.tensors[graph.inputs[0]].type == input_type.upper()
    codes, stored_scale, zero_point = gather_table(flatbuffer)
    assert zero_point == 0 and stored_scale == pytest.approx(scale, rel=1e-6)
    np.testing.assert_array_equal(codes, np.round(table / scale).astype(np.int8))
    assert np.abs(codes).max() <= grid.weight_qmax(3)

    pixels = EDGE_PIXELS.reshape(-1, 1, 1, 1).astype(np.uint8)
    x = pixels if input_type == "uint8" else as_int8(pixels)
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
    flatbuffer = convert_raw_input(qat, pixels.x_train, input_type=input_type)
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert set(graph.op_names) <= TFLM_OPS
    assert ("QUANTIZE" in graph.op_names) == (input_type == "uint8")
    assert graph.tensors[graph.inputs[0]].type == input_type.upper()
    assert not graph.float_tensors()

    x = pixels.x_test if input_type == "uint8" else as_int8(pixels.x_test)
    tflm_top1 = tfqnet.run_tflm(flatbuffer, x).argmax(-1)  # loads: every op resolved
    keras_top1 = qat.predict(pixels.x_test, verbose=0).argmax(-1)
    assert np.mean(tflm_top1 == keras_top1) >= 0.99
    assert np.mean(tflm_top1 == pixels.y_test) >= 0.9
