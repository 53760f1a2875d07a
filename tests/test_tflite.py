"""tfqnet.export.tflite.keras_to_tflite: from_keras_model's bytes without its full
Keras SavedModel export, and from_keras_model itself where the light export fails."""

from __future__ import annotations

import numpy as np
import pytest

import tfqnet
from tfqnet._keras import keras, tf
from tfqnet.export import tflite

L = keras.layers


@pytest.fixture(scope="module")
def two_way_qat_model():
    """Two inputs, two outputs (the converter orders both by name), 4-bit weights."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    right, left = keras.Input((6,), name="right"), keras.Input((4,), name="left")
    x = L.Concatenate()([L.Dense(5, activation="relu")(right), left])
    model = keras.Model([right, left], [L.Dense(3, name="b_out")(x), L.Dense(2, name="a_out")(x)])
    q = tfqnet.quantize_model(model, weight_bits=4, activation_bits=8)
    q.compile(keras.optimizers.Adam(1e-3), "mse")
    xs = [rng.random((32, 6), dtype=np.float32), rng.random((32, 4), dtype=np.float32)]
    q.fit(xs, [rng.random((32, 3), dtype=np.float32), rng.random((32, 2), dtype=np.float32)],
          epochs=1, batch_size=16, verbose=0)
    return q, xs


def _int8(xs):
    def representative():
        for i in range(8):
            yield {"right": xs[0][i:i + 1], "left": xs[1][i:i + 1]}

    def configure(converter):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8

    return configure


def _from_keras_model(model, configure) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    configure(converter)
    return converter.convert()


def test_the_signature_export_gives_from_keras_models_bytes(two_way_qat_model):
    q, xs = two_way_qat_model
    flatbuffer = tflite.keras_to_tflite(q, _int8(xs))
    assert len(flatbuffer) > 1000
    assert flatbuffer == _from_keras_model(q, _int8(xs))


def test_a_signature_that_does_not_export_alone_is_converted_by_from_keras_model(
    two_way_qat_model, monkeypatch
):
    """The variables left untracked, the light SavedModel cannot be written and the
    converter would freeze the graph: keras_to_tflite converts by from_keras_model."""
    q, xs = two_way_qat_model
    calls = []
    from_keras_model = tf.lite.TFLiteConverter.from_keras_model

    def counted(model):
        calls.append(model)
        return from_keras_model(model)

    monkeypatch.setattr(tflite, "_variables_of", lambda model: tf.Module())
    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", staticmethod(counted))
    flatbuffer = tflite.keras_to_tflite(q, _int8(xs))
    assert calls == [q]
    monkeypatch.undo()
    assert flatbuffer == _from_keras_model(q, _int8(xs))
