"""Save/load of QAT models: quantizer state survives; predictions are identical."""

import numpy as np
import pytest

import tfqnet
from tests.helpers import fine_tune
from tfqnet._keras import keras


@pytest.fixture(scope="module")
def qat_model(float_digits_model, digits):
    q = tfqnet.quantize_model(float_digits_model, weight_bits=4, activation_bits=4)
    return fine_tune(q, digits, epochs=1)


@pytest.mark.parametrize("filename", ["model.h5", "saved_model"])
def test_round_trip_gives_identical_predictions(qat_model, digits, tmp_path, filename):
    path = str(tmp_path / filename)
    qat_model.save(path)
    with tfqnet.quantize_scope():
        loaded = keras.models.load_model(path, compile=False)
    x = digits.x_test[:64]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat_model.predict(x, verbose=0))
    assert loaded.get_layer("quant_conv2").quantize_config == (
        qat_model.get_layer("quant_conv2").quantize_config
    )


def test_loaded_model_converts_to_the_same_flatbuffer(qat_model, digits, tmp_path):
    path = str(tmp_path / "model.h5")
    qat_model.save(path)
    with tfqnet.quantize_scope():
        loaded = keras.models.load_model(path, compile=False)
    a = tfqnet.run_tflm(tfqnet.convert(qat_model, digits.x_train[:50]), digits.x_test, raw=True)
    b = tfqnet.run_tflm(tfqnet.convert(loaded, digits.x_train[:50]), digits.x_test, raw=True)
    np.testing.assert_array_equal(a, b)
