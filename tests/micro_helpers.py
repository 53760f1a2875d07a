"""Models shared by the micro tool tests, built once per session (conversion is slow).

Cached at module level rather than as a fixture so every test file reuses one QAT
model and one flatbuffer: a session fixture imported into several modules would be
rebuilt per module.
"""

from __future__ import annotations

import numpy as np

import tfqnet
from tests.helpers import fine_tune

_CACHE: dict[str, object] = {}


def compact_exactly(flatbuffer: bytes, x) -> bytes:
    """``tfqnet.compact(flatbuffer)``, after asserting that it is smaller and that TFLM
    gives bit-identical raw outputs for both models on ``x`` (one array per input)."""
    compacted = tfqnet.compact(flatbuffer)
    assert len(compacted) < len(flatbuffer)
    plain, small = tfqnet.MicroInterpreter(flatbuffer), tfqnet.MicroInterpreter(compacted)
    expected = plain.predict(x, raw=True)
    got = small.predict(x, raw=True)
    for e, g in zip(*(v if isinstance(v, list) else [v] for v in (expected, got)), strict=True):
        np.testing.assert_array_equal(g, e)
    return compacted


def digits_qat_and_tflite(float_digits_model, digits):
    """(QAT model, its converted flatbuffer): 4-bit weights, 8-bit activations; the
    flatbuffer compacted as by default, checked against the uncompacted one."""
    if "digits" not in _CACHE:
        qat = tfqnet.quantize_model(float_digits_model, weight_bits=4, activation_bits=8)
        fine_tune(qat, digits, epochs=1)
        plain = tfqnet.convert(qat, digits.x_train, compact=False)
        _CACHE["digits_plain"] = plain
        _CACHE["digits"] = (qat, compact_exactly(plain, digits.x_test))
    return _CACHE["digits"]


def digits_uncompacted_tflite(float_digits_model, digits) -> bytes:
    """The flatbuffer of :func:`digits_qat_and_tflite` before compaction."""
    digits_qat_and_tflite(float_digits_model, digits)
    return _CACHE["digits_plain"]


def unsupported_op_tflite() -> bytes:
    """A float model whose TOPK_V2 op has no TFLM kernel (TFLite runs it fine)."""
    if "topk" not in _CACHE:
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32)])
        def top3(x):
            return tf.math.top_k(tf.nn.relu(x), k=3).values

        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [top3.get_concrete_function()], top3)
        _CACHE["topk"] = converter.convert()
    return _CACHE["topk"]


def disagreeing_qat_model(float_digits_model, digits):
    """The digits QAT model with its class order rolled: a real QAT model whose top-1
    disagrees with the flatbuffer on (almost) every sample."""
    if "disagree" not in _CACHE:
        qat, _ = digits_qat_and_tflite(float_digits_model, digits)
        other = tfqnet.quantize_model(float_digits_model, weight_bits=4, activation_bits=8)
        other.set_weights(qat.get_weights())
        layer = other.get_layer("quant_logits")
        weights = layer.get_weights()
        names = [w.name for w in layer.weights]
        for i, name in enumerate(names):
            if name.endswith("kernel:0") or name.endswith("bias:0"):
                weights[i] = np.roll(weights[i], 3, axis=-1)
        layer.set_weights(weights)
        _CACHE["disagree"] = other
    return _CACHE["disagree"]
