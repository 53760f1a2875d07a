"""Helpers shared by the tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import numpy as np

import tfqnet
from tfqnet._keras import keras
from tfqnet.models import compile_classifier


def fine_tune(qat_model, digits, epochs: int = 1, lr: float = 5e-4, callbacks=None):
    """Compiles and fine-tunes a QAT model on digits (seeded); returns it."""
    keras.utils.set_random_seed(1)
    compile_classifier(qat_model, lr)
    qat_model.fit(
        digits.x_train,
        digits.y_train,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=list(callbacks or []) + tfqnet.callbacks(qat_model, epochs),
    )
    return qat_model


def top1_agreement(qat_model, flatbuffer: bytes, x: np.ndarray) -> float:
    """Share of samples where the QAT model (inference mode) and TFLM pick the same class."""
    keras_top1 = qat_model.predict(x, verbose=0).argmax(-1)
    tflm_top1 = tfqnet.run_tflm(flatbuffer, x).argmax(-1)
    return float(np.mean(keras_top1 == tflm_top1))
