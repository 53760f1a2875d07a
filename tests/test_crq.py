"""CRQ: the cluster regularizer, the soft/hard schedule, ternary export, 2-bit compression."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tests.micro_helpers import compact_exactly
from tfqnet._keras import keras
from tfqnet.export.compression import compress, compress_ternary, stored_weight_bytes
from tfqnet.micro.checker import check_model
from tfqnet.micro.resources import layer_resources
from tfqnet.quantizers.crq import (
    ClusterRegularizer,
    CRQSchedule,
    CRQWeightQuantizer,
    clustered_share,
    crq_kernels,
    ternary_codes,
    twn_alpha,
)
from tfqnet.tflite_format import (
    DECODE_HEADER_BYTES,
    DECODE_OP,
    LUT_ONE_TABLE_AXIS,
    LUT_PARAMS_OFFSET,
    LUT_STRIDE_OFFSET,
    unpack_int4,
)

EPOCHS = 4


def _expected(w: np.ndarray, strength: float):
    """numpy reference: TWN alpha, value min over targets, gradient to the argmin."""
    absw = np.abs(w)
    delta = 0.7 * absw.mean()
    alpha = absw[absw > delta].mean()
    targets = np.array([-alpha, 0.0, alpha])
    sq = (w[:, None] - targets[None, :]) ** 2
    nearest = targets[sq.argmin(axis=1)]
    return alpha, strength * sq.min(axis=1).sum(), 2 * strength * (w - nearest)


def test_regularizer_value_and_gradient_on_known_weights():
    w = np.array([0.9, -1.1, 0.05, 1.0, -0.02, 0.3, -0.45, 0.6], np.float32)
    strength = 0.01
    alpha, value, grad = _expected(w.astype(np.float64), strength)
    var = tf.Variable(w)
    reg = ClusterRegularizer(strength)
    with tf.GradientTape() as tape:
        out = reg(var)
    assert float(twn_alpha(var)) == pytest.approx(alpha, rel=1e-6)
    assert float(out) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(tape.gradient(out, var).numpy(), grad, rtol=1e-5, atol=1e-8)


def test_regularizer_per_channel_uses_each_channels_targets():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, size=(3, 3, 2, 4)).astype(np.float32)
    kernel[..., 1] *= 10.0  # a channel of another scale: its own alpha
    reg = ClusterRegularizer(0.5, per_axis=True, channel_dims=1)
    var = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        out = reg(var)
    grad = tape.gradient(out, var).numpy().reshape(-1, 4)
    flat = kernel.reshape(-1, 4).astype(np.float64)
    total = 0.0
    for c in range(4):
        alpha, value, g = _expected(flat[:, c], 0.5)
        assert float(twn_alpha(var, True)[c]) == pytest.approx(alpha, rel=1e-5)
        np.testing.assert_allclose(grad[:, c], g, rtol=1e-4, atol=1e-6)
        total += value
    assert float(out) == pytest.approx(total, rel=1e-5)


def test_regularizer_is_zero_on_targets_and_serializes():
    codes = np.array([[1, 0, -1], [0, 1, 1], [-1, 0, 0], [1, -1, 0]], np.float32)
    alpha = np.array([0.2, 0.05, 1.5], np.float32)
    var = tf.Variable(codes * alpha)
    reg = ClusterRegularizer(3.0, per_axis=True)
    with tf.GradientTape() as tape:
        out = reg(var)
    assert float(out) == 0.0
    np.testing.assert_array_equal(tape.gradient(out, var).numpy(), 0.0)
    np.testing.assert_allclose(twn_alpha(var, True).numpy(), alpha, rtol=1e-6)
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
    assert isinstance(restored, ClusterRegularizer)
    assert restored.get_config() == reg.get_config()


def test_quantizer_is_soft_then_hard_and_always_ternary_in_inference():
    w = tf.Variable(np.array([[0.9, -0.2], [-1.1, 0.01], [0.3, 0.4]], np.float32))
    state = {
        "alpha": tf.Variable(np.ones(2, np.float32)),
        "ramp": tf.Variable(0.0),
        "hard": tf.Variable(0.0),
        "initialized": tf.Variable(0.0),
    }
    quantizer = CRQWeightQuantizer(per_axis=True)
    alpha = twn_alpha(w, True).numpy()
    ternary = ternary_codes(w, alpha).numpy() * alpha
    with tf.GradientTape() as tape:
        soft = quantizer(w, True, state)
    np.testing.assert_array_equal(soft.numpy(), w.numpy())
    np.testing.assert_array_equal(tape.gradient(soft, w).numpy(), 1.0)
    np.testing.assert_allclose(state["alpha"].numpy(), alpha)
    assert float(state["initialized"]) == 1.0
    state["hard"].assign(1.0)
    with tf.GradientTape() as tape:
        hard = quantizer(w, True, state)
    np.testing.assert_allclose(hard.numpy(), ternary, rtol=1e-6)
    np.testing.assert_array_equal(tape.gradient(hard, w).numpy(), 1.0)  # straight through
    state["hard"].assign(0.0)  # inference ignores the phase
    inference = quantizer(w, False, state).numpy()
    np.testing.assert_allclose(inference, ternary, rtol=1e-6)
    assert set(np.round(inference / alpha).ravel()) <= {-1.0, 0.0, 1.0}


def test_schedule_ramps_then_switches_to_hard():
    schedule = CRQSchedule(epochs=4, hard_fraction=0.25)
    assert schedule.values_at(0.0) == (0.0, 0.0)
    assert schedule.values_at(1.5) == (0.5, 0.0)
    assert schedule.values_at(3.0) == (1.0, 1.0)
    one_epoch = CRQSchedule(epochs=1, hard_fraction=0.25)
    assert one_epoch.values_at(0.5) == (pytest.approx(2 / 3), 0.0)
    assert one_epoch.values_at(0.8)[1] == 1.0


@pytest.fixture(scope="module")
def crq_model(float_digits_model, digits):
    # no layer policy: every kernel ternary, none on the uniform quantizer
    qat = tfqnet.quantize_model(float_digits_model, method="crq", policy=None)
    before = clustered_share(qat)
    fine_tune(qat, digits, epochs=EPOCHS)
    return qat, before


@pytest.fixture(scope="module")
def int4_model(crq_model, digits):
    return tfqnet.convert(crq_model[0], digits.x_train[:100], compress=False, compact=False)


def test_callbacks_provide_the_schedule_and_it_ends_hard(crq_model):
    qat, _ = crq_model
    assert [type(c) for c in tfqnet.callbacks(qat, EPOCHS)] == [CRQSchedule]
    flags = [float(v) for v in qat.variables if v.name.endswith(("_crq_hard:0", "_crq_ramp:0"))]
    assert len(flags) == 2 * len(crq_kernels(qat)) == 8
    assert flags == [1.0] * 8
    assert len(qat.losses) == 4  # one cluster loss per ternary layer


def test_clustering_grows_during_retraining(crq_model):
    qat, before = crq_model
    after = clustered_share(qat)
    assert after > before + 0.1, (before, after)


def test_exported_weights_are_exactly_ternary_per_channel(crq_model, int4_model):
    qat, _ = crq_model
    model = tfqnet.FlatbufferModel.from_bytes(int4_model)
    filters = model.weight_tensors()
    assert [t.type for t in filters] == ["INT4"] * 4
    assert len(filters) == len(crq_kernels(qat))
    for tensor in filters:
        layer = next(layer for layer in qat.layers if f"/{layer.name}/" in tensor.name)
        ((kernel, quantizer, state),) = layer._weight_vars
        data = _buffer(int4_model, tensor.index)
        codes = unpack_int4(data, int(np.prod(tensor.shape))).reshape(tensor.shape)
        assert set(np.unique(codes)) <= {-7, 0, 7}  # ternary codes spread over INT4
        # Keras kernels keep output channels last, TFLite filters first.
        keras_codes = np.moveaxis(codes, 0, -1) if len(tensor.shape) == 4 else codes.T
        alpha = np.atleast_1d(state["alpha"].numpy())
        expected = ternary_codes(kernel, alpha).numpy()
        np.testing.assert_array_equal(keras_codes, 7 * expected)
        assert len(tensor.scales) == (alpha.size if quantizer.per_axis else 1)
        np.testing.assert_allclose(np.asarray(tensor.scales) * 7, alpha, rtol=1e-6)
        per_channel = codes.reshape(codes.shape[0], -1) if quantizer.per_axis else codes
        assert all(np.abs(row).max() == 7 for row in per_channel)  # every channel uses alpha


def test_compressed_model_is_bit_identical_and_smaller(int4_model, digits):
    with pytest.warns(UserWarning, match="TensorFlow Lite Micro only"):
        compressed = compress_ternary(int4_model)
    model = tfqnet.FlatbufferModel.from_bytes(compressed)
    decoded = [t for op in model.operators if op.name == DECODE_OP for t in op.outputs]
    # conv1 (144 weights) stays INT4: its 16-byte header and tables would outweigh
    # the 36 bytes saved; logits (640) too: its indices save 141 bytes, less than the
    # decoded tensor and decode inputs add to the file. conv2 and fc1 become 2-bit
    # indices decoded to int8.
    assert sorted(model.tensors[i].shape for i in decoded) == [(32, 3, 3, 16), (64, 512)]
    assert {model.tensors[i].type for i in decoded} == {"INT8"}
    assert sorted(t.shape for t in model.tensors if t.type == "INT4") == [(10, 64), (16, 3, 3, 1)]
    x = digits.x_test
    reference = tfqnet.run_tflm(int4_model, x, raw=True)
    out = tfqnet.run_tflm(compressed, x, raw=True)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, reference)

    # the check's resources table: 2-bit LUT rows and INT4 rows, all with 3 values at most
    rows = layer_resources(model)
    lut = [r for r in rows if r["weight_type"] == "INT8 LUT"]
    int4 = [r for r in rows if r["weight_type"] == "INT4"]
    assert len(lut) == 2 and {r["weight_bits"] for r in lut} == {2}
    assert len(int4) == 2 and {r["weight_bits"] for r in int4} == {4}
    assert all(r["weight_values"] in (2, 3) for r in lut + int4), rows

    int4_bytes = stored_weight_bytes(int4_model)
    compressed_bytes = stored_weight_bytes(compressed)
    filters = tfqnet.FlatbufferModel.from_bytes(int4_model).weight_tensors()
    elements = sum(int(np.prod(t.shape)) for t in filters)
    assert int4_bytes == sum(t.buffer_bytes for t in filters)
    assert compressed_bytes < int4_bytes
    assert compressed_bytes <= 0.3 * elements  # int8 would take one byte per weight
    assert len(compressed) < len(int4_model)


def _decodes(flatbuffer: bytes):
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    return graph, [op for op in graph.operators if op.name == DECODE_OP]


def test_channels_sharing_their_codes_share_one_value_table(int4_model, digits):
    """conv2's 32 channels all use {-7, 0, 7} (ternary codes spread over INT4): one
    table of 3 entries (not 32), read by every channel (stride 0), and TFLM computes
    exactly what the INT4 model computes."""
    with pytest.warns(UserWarning, match="TensorFlow Lite Micro only"):
        compressed = compress_ternary(int4_model)
    graph, decodes = _decodes(compressed)
    (conv2,) = [op for op in decodes if len(graph.tensors[op.outputs[0]].scales) == 32]
    header = graph.buffers[graph.tensor_buffers[conv2.inputs[1]]]
    assert len(header) == DECODE_HEADER_BYTES + 3
    assert header[LUT_PARAMS_OFFSET] >> 4 == LUT_ONE_TABLE_AXIS
    assert header[LUT_STRIDE_OFFSET] == 0
    assert list(np.frombuffer(header[DECODE_HEADER_BYTES:], np.int8)) == [-7, 0, 7]
    # every compressed filter has the same header and table: one ancillary tensor
    assert len({op.inputs[1] for op in decodes}) == 1 < len(decodes)
    x = digits.x_test
    reference = tfqnet.run_tflm(int4_model, x, raw=True)
    np.testing.assert_array_equal(tfqnet.run_tflm(compressed, x, raw=True), reference)
    # TFLM steps `stride` table entries per channel of the decoded tensor's scales: with
    # the table's length there (what TFLM's compression tool writes), channels 1..31
    # read past the table
    at = compressed.find(header)
    tool_stride = bytearray(compressed)
    tool_stride[at + LUT_STRIDE_OFFSET] = 3
    assert not np.array_equal(tfqnet.run_tflm(bytes(tool_stride), x, raw=True), reference)


def test_compaction_drops_the_quantization_of_decode_inputs(int4_model, digits):
    """The encoded indices keep a copy of the filter's per-channel quantization, which
    TFLM never reads (TFLM_DECODE reads bytes; it and the convolution read the decoded
    tensor's): compaction drops it, and TFLM's outputs stay bit-identical."""
    with pytest.warns(UserWarning, match="TensorFlow Lite Micro only"):
        compressed = compress_ternary(int4_model)
    graph, decodes = _decodes(compressed)
    assert max(len(graph.tensors[op.inputs[0]].scales) for op in decodes) == 32
    compacted = compact_exactly(compressed, digits.x_test)
    small, small_decodes = _decodes(compacted)
    for op in small_decodes:
        assert all(small.tensors[i].scales == () for i in op.inputs)
        decoded = small.tensors[op.outputs[0]]
        (before,) = [graph.tensors[o.outputs[0]] for o in decodes
                     if graph.tensors[o.outputs[0]].shape == decoded.shape]
        assert decoded.scales == before.scales and decoded.zero_points == (0,)
    assert tfqnet.flash_breakdown(compacted)["quantization"] < \
        tfqnet.flash_breakdown(compressed)["quantization"] - 12 * 32


def test_qat_model_agrees_with_tflm(crq_model, int4_model, float_digits_model, digits):
    qat, _ = crq_model
    assert top1_agreement(qat, int4_model, digits.x_test) >= 0.99
    float_accuracy = np.mean(
        float_digits_model.predict(digits.x_test, verbose=0).argmax(-1) == digits.y_test
    )
    tflm_accuracy = np.mean(tfqnet.run_tflm(int4_model, digits.x_test).argmax(-1) == digits.y_test)
    assert tflm_accuracy >= float_accuracy - 0.03, (float_accuracy, tflm_accuracy)


def _buffer(flatbuffer: bytes, index: int) -> bytes:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    tensor = model.Subgraphs(0).Tensors(index)
    return model.Buffers(tensor.Buffer()).DataAsNumpy().tobytes()



def test_depthwise_kernel_exports_ternary_and_compresses(digits):
    """Per-channel ternary on a depthwise kernel (channel = C_in * multiplier, last axis)."""
    layers = keras.layers
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(x)
    outputs = layers.Dense(10)(layers.Flatten()(x))
    qat = tfqnet.quantize_model(keras.Model(inputs, outputs), method="crq", policy=None)
    fine_tune(qat, digits, epochs=2, lr=2e-3)
    flatbuffer = tfqnet.convert(qat, digits.x_train[:50], compress=False, compact=False)
    (depthwise,) = [
        t for t in tfqnet.FlatbufferModel.from_bytes(flatbuffer).weight_tensors()
        if "depthwise" in t.name
    ]
    assert depthwise.type == "INT4" and depthwise.shape == (1, 3, 3, 8)
    assert depthwise.quantized_dimension == 3 and len(depthwise.scales) == 8
    codes = unpack_int4(_buffer(flatbuffer, depthwise.index), 72).reshape(depthwise.shape)
    assert set(np.unique(codes)) <= {-7, 0, 7}
    x = digits.x_test[:100]
    assert top1_agreement(qat, flatbuffer, x) >= 0.99
    # TFLite's reference kernels have no INT4 depthwise: checked on its int8 codes instead
    report = check_model(flatbuffer, data=x[:16], samples=16)
    assert report.passed and report.layer_check == "passed" and not report.skipped
    assert "DEPTHWISE_CONV_2D" in {r.op for r in report.layers}
    with pytest.warns(UserWarning, match="TensorFlow Lite Micro only"):
        compressed = compress_ternary(flatbuffer)
    np.testing.assert_array_equal(
        tfqnet.run_tflm(compressed, x, raw=True), tfqnet.run_tflm(flatbuffer, x, raw=True)
    )
    assert len(compressed) < len(flatbuffer)
    compact_exactly(compressed, x)
    with pytest.raises(ValueError, match="1-bit"):
        compress(flatbuffer, bits=1)  # ternary needs 2-bit indices


def test_compression_that_would_grow_the_file_is_refused(digits):
    """Ternary filters too small to pay for their tables and decode tensors (36 and 40
    weights): compressing cannot shrink the file, so it is refused, not done."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    qat = tfqnet.quantize_model(keras.Model(inputs, outputs), method="crq", policy=None)
    fine_tune(qat, digits, epochs=1)
    plain = tfqnet.convert(qat, digits.x_train[:50], compress=False)
    with pytest.raises(ValueError, match="smaller"):
        compress_ternary(plain)
    assert tfqnet.convert(qat, digits.x_train[:50]) == plain  # "auto" leaves it as it is
