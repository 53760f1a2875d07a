"""Per-channel Dense kernels: traced per tensor, their channel scales written back
(tfqnet.export.per_channel_dense)."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.compression import model_editor
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tests.micro_helpers import compact_exactly
from tfqnet import grid
from tfqnet._keras import keras, tf
from tfqnet.core.config import quantizers_of
from tfqnet.errors import ConversionError
from tfqnet.export.per_channel_dense import (
    ChannelScaledKernel,
    per_channel_dense_export,
    restore_channel_scales,
)
from tfqnet.quantizers import srq


@pytest.fixture(scope="module")
def per_channel_srq(float_digits_model, digits):
    """SRQ with compressed storage (Dense per channel), fixed 4-bit kernels: the Dense
    ones in int8 (TFLM has no per-channel INT4 FULLY_CONNECTED), the Conv2D ones INT4."""
    qat = tfqnet.quantize_model(float_digits_model, "srq", 4, 8, storage="compressed")
    fine_tune(qat, digits, epochs=1)
    plain = tfqnet.convert(qat, digits.x_train, compress=False, compact=False)
    return qat, compact_exactly(plain, digits.x_test)


def _fully_connected(flatbuffer):
    model = model_editor.read(flatbuffer)
    return [op for op in model.subgraphs[0].operators
            if op.opcode == schema.BuiltinOperator.FULLY_CONNECTED]


def _dense_quantizers(qat):
    return [q for q in quantizers_of(qat)
            if isinstance(q, srq.SRQWeightQuantizer) and q.per_channel_dense]


def test_compressed_storage_quantizes_dense_per_channel(per_channel_srq):
    qat, _ = per_channel_srq
    dense = _dense_quantizers(qat)
    assert len(dense) == 2  # fc1 and logits; conv1/conv2 were per channel already
    assert all(q.per_axis and q.container_bits() == 8 for q in dense)
    # int4 storage keeps Dense per tensor (INT4 filters must be)
    int4 = srq.SRQMethod(storage="int4")
    assert not int4.per_channel_dense and srq.SRQMethod(storage="compressed").per_channel_dense


def test_flatbuffer_holds_the_trained_channel_scales(per_channel_srq):
    qat, flatbuffer = per_channel_srq
    scales_by_shape = {}
    for q in _dense_quantizers(qat):
        step = np.exp(q._state["log_alpha"].numpy()) * 2.0 ** (q.bits - q.width())
        scales_by_shape[q.size] = step
    ops = _fully_connected(flatbuffer)
    assert len(ops) == 2
    for op in ops:
        kernel, bias, layer_input = op.inputs[1], op.inputs[2], op.inputs[0]
        scales = np.asarray(kernel.quantization.scales, np.float32)
        expected = scales_by_shape[int(np.prod(kernel.shape))]
        assert kernel.dtype == schema.TensorType.INT8 and kernel.quantization.axis == 0
        np.testing.assert_allclose(scales, expected, rtol=1e-6)
        assert scales.min() < 0.9 * scales.max()  # really one scale per channel
        assert np.abs(kernel.array).max() <= grid.weight_qmax(4)  # 4-bit codes in int8
        input_scale = np.float32(layer_input.quantization.scales[0])
        np.testing.assert_allclose(bias.quantization.scales, input_scale * scales, rtol=1e-6)


def test_per_channel_dense_model_agrees_with_tflm(per_channel_srq, digits):
    qat, flatbuffer = per_channel_srq
    assert top1_agreement(qat, flatbuffer, digits.x_test) >= 0.99
    # the logits themselves: within one output step of the QAT model's
    model = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    step = model.tensors[model.outputs[0]].scales[0]
    keras_logits = qat.predict(digits.x_test[:200], verbose=0)
    tflm_logits = tfqnet.run_tflm(flatbuffer, digits.x_test[:200])
    assert np.mean(np.abs(tflm_logits - keras_logits) <= 1.01 * step) >= 0.99


def test_qat_model_keeps_per_channel_values_outside_the_export(per_channel_srq, digits):
    qat, _ = per_channel_srq
    x = tf.constant(digits.x_test[:8])
    before = qat(x, training=False).numpy()
    with per_channel_dense_export() as kernels:
        qat(x, training=False)
        with pytest.raises(RuntimeError, match="nest"), per_channel_dense_export():
            pass
    assert len(kernels) == 2
    for kernel in kernels:
        assert kernel.codes.dtype == np.int8 and kernel.scales.shape == kernel.codes.shape[1:]
    np.testing.assert_array_equal(qat(x, training=False).numpy(), before)


def test_a_kernel_the_converter_changed_is_an_error(per_channel_srq):
    _, flatbuffer = per_channel_srq
    codes = np.ones((4, 3), np.int8)
    stray = ChannelScaledKernel(codes, np.array([0.1, 0.2, 0.3], np.float32))
    with pytest.raises(ConversionError, match="no FULLY_CONNECTED filter"):
        restore_channel_scales(flatbuffer, [stray])
    assert restore_channel_scales(flatbuffer, []) == flatbuffer


def test_a_dense_layer_called_twice_is_a_clear_error():
    """The converter requantizes a kernel that two FULLY_CONNECTED ops read (int8, from
    the float values, ignoring the FakeQuant), so the trained codes are not in the file."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    left, right = layers.Input((8,), name="left"), layers.Input((8,), name="right")
    shared = layers.Dense(8, activation="relu", name="shared")
    joined = layers.Concatenate()([shared(left), shared(right)])
    model = keras.Model([left, right], layers.Dense(2, name="out")(joined))
    qat = tfqnet.quantize_model(model, "srq", 4, 8, storage="compressed")
    qat.compile("adam", "mse")
    xs = [np.random.default_rng(0).random((16, 8), np.float32)] * 2
    qat.fit(xs, np.zeros((16, 2), np.float32), epochs=1, verbose=0)
    with pytest.raises(ConversionError, match="Dense layer called more than once"):
        tfqnet.convert(qat, xs)
