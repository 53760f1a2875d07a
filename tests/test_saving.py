"""Save/load of QAT models: quantizer state survives; predictions are identical."""

import subprocess
import sys

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


def test_load_model_in_a_fresh_process_needs_only_import_tfqnet(qat_model, digits, tmp_path):
    # `import tfqnet` is lazy: a process that only loads a model has registered none of
    # tfqnet's classes and entered no TFMOT scope (plain tf_keras load_model fails there)
    path, x = tmp_path / "model.h5", digits.x_test[:32]
    qat_model.save(str(path))
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, tfqnet\n"
              "model = tfqnet.load_model(sys.argv[1], compile=False)\n"
              "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n")
    subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, capture_output=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), qat_model.predict(x, verbose=0),
                               atol=1e-6)
