"""The contract every registered method keeps, checked for each name in ``method_names()``:
a method added with ``register_method`` is tested here without a line of its own.

For each method at its default options, 2-bit weights and 8-bit activations: one
fine-tuning epoch with its callbacks initialises every quantizer; the model saved as h5 and
loaded with :func:`tfqnet.load_model` predicts exactly what it did and converts to the
same flatbuffer bytes; the flatbuffer holds no float op, and TFLM picks the QAT model's
class (inference mode) on at least 99% of the test images.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tfqnet.core import quantizer_states
from tfqnet.export.flatbuffer import FlatbufferModel

#: ternary where a method has a ternary form (qn, crq), the 2-bit grid elsewhere
WEIGHT_BITS = 2
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module", params=tfqnet.method_names())
def trained(request, float_digits_model, digits):
    """(method name, its QAT model after one short epoch, its flatbuffer)."""
    qat = fine_tune(tfqnet.quantize_model(float_digits_model, request.param, WEIGHT_BITS, 8),
                    digits, epochs=1)
    return request.param, qat, tfqnet.convert(qat, digits.x_train[:100])


def test_every_quantizer_has_seen_data(trained):
    name, qat, _ = trained
    flags = [state["initialized"] for _, state in quantizer_states(qat) if "initialized" in state]
    assert flags, f"{name}: no quantizer state found"
    assert all(float(flag.numpy()) == 1.0 for flag in flags), name


def test_the_flatbuffer_is_integer_only_and_agrees_with_the_qat_model(trained, digits):
    name, qat, flatbuffer = trained
    model = FlatbufferModel.from_bytes(flatbuffer)
    assert not model.float_tensors(), name
    assert {t.type for t in model.weight_tensors()} <= {"INT4", "INT8"}, name
    assert top1_agreement(qat, flatbuffer, digits.x_test) >= MIN_AGREEMENT, name


def test_save_and_load_keep_predictions_and_bytes(trained, digits, tmp_path):
    name, qat, flatbuffer = trained
    path = str(tmp_path / f"{name}.h5")
    qat.save(path)
    loaded = tfqnet.load_model(path, compile=False)
    x = digits.x_test[:64]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert tfqnet.convert(loaded, digits.x_train[:100]) == flatbuffer, name
