"""Distillation loss: its two terms, its serialization, and a QAT fit that uses it."""

from __future__ import annotations

import numpy as np
import pytest

import tfqnet
from tfqnet._keras import keras, tf


def _ce(labels, logits):
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy()


def test_loss_is_cross_entropy_plus_scaled_kl():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 8)
    student = rng.normal(size=(8, 5)).astype(np.float32)
    teacher = rng.normal(size=(8, 5)).astype(np.float32)
    y = tfqnet.distillation_targets(labels, teacher)
    assert y.shape == (8, 6)
    ce = _ce(labels, student)
    hard_only = tfqnet.DistillationLoss(alpha=0.0, reduction="none")(y, student).numpy()
    np.testing.assert_allclose(hard_only, ce, rtol=1e-5)
    t = 2.0
    p = tf.nn.softmax(teacher / t).numpy()
    kl = np.sum(p * (np.log(p) - tf.nn.log_softmax(student / t).numpy()), axis=-1)
    mixed = tfqnet.DistillationLoss(temperature=t, alpha=0.25, reduction="none")(y, student)
    np.testing.assert_allclose(mixed.numpy(), 0.75 * ce + 0.25 * t * t * kl, rtol=1e-5)
    same = tfqnet.distillation_targets(labels, student)
    soft_only = tfqnet.DistillationLoss(alpha=1.0, reduction="none")(same, student).numpy()
    np.testing.assert_allclose(soft_only, 0.0, atol=1e-5)


def test_options_are_checked_and_serialized():
    with pytest.raises(ValueError, match="temperature"):
        tfqnet.DistillationLoss(temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        tfqnet.DistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match="teacher_logits must be"):
        tfqnet.distillation_targets(np.zeros(3), np.zeros((4, 2)))
    loss = keras.losses.deserialize(keras.losses.serialize(
        tfqnet.DistillationLoss(temperature=3.0, alpha=0.5)))
    assert (loss.temperature, loss.alpha) == (3.0, 0.5)


def test_a_qat_model_fits_on_distillation_targets(float_digits_model, digits):
    qat = tfqnet.quantize_model(float_digits_model, "uniform", 4)
    qat.compile(keras.optimizers.Adam(5e-4), tfqnet.DistillationLoss(),
                metrics=[tfqnet.DistillationAccuracy()])
    targets = tfqnet.distillation_targets(
        digits.y_train, float_digits_model.predict(digits.x_train, verbose=0))
    keras.utils.set_random_seed(1)
    history = qat.fit(digits.x_train, targets, epochs=1, batch_size=32, verbose=0,
                      callbacks=tfqnet.callbacks(qat, 1))
    accuracy = history.history["accuracy"][-1]
    predicted = qat.predict(digits.x_test, verbose=0).argmax(-1)
    assert accuracy > 0.9 and np.mean(predicted == digits.y_test) > 0.9
