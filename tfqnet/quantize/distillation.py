"""Knowledge distillation for QAT: the float model teaches its quantized copy.

The teacher's logits are computed once, before fine-tuning (``teacher.predict(x)``),
and packed beside the labels (:func:`distillation_targets`), so ``fit`` and the QAT
model's callbacks stay as they are: only the loss changes.

Loss, with student logits ``s``, teacher logits ``t``, label ``y``, temperature ``T``
and weight ``alpha`` (Hinton et al., 2015)::

    (1 - alpha) * CE(y, softmax(s)) + alpha * T**2 * KL(softmax(t / T) || softmax(s / T))

The ``T**2`` keeps the soft term's gradient on the scale of the hard one's. Gradients
reach the student only; the teacher's logits are constants. Labels are integer class
indices (a sparse classification head on logits).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfqnet._keras import keras


def distillation_targets(labels: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
    """``[label, teacher logits...]`` per sample, float32 ``(N, 1 + classes)``: the
    ``y`` of ``fit`` with :class:`DistillationLoss`."""
    labels = np.asarray(labels).reshape(-1, 1)
    teacher_logits = np.asarray(teacher_logits, np.float32)
    if teacher_logits.ndim != 2 or len(teacher_logits) != len(labels):
        raise ValueError(
            f"teacher_logits must be (N, classes) for N = {len(labels)} labels, got shape "
            f"{teacher_logits.shape}."
        )
    return np.concatenate([labels.astype(np.float32), teacher_logits], axis=1)


@keras.utils.register_keras_serializable(package="tfqnet")
class DistillationLoss(keras.losses.Loss):
    """The distillation loss of the module docstring on targets from
    :func:`distillation_targets` (``temperature`` T > 0, ``alpha`` in [0, 1])."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9,
                 name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        labels = tf.cast(y_true[:, 0], tf.int32)
        teacher = tf.stop_gradient(y_true[:, 1:])
        hard = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
        t = self.temperature
        soft_teacher = tf.nn.softmax(teacher / t)
        log_student = tf.nn.log_softmax(y_pred / t)
        log_teacher = tf.nn.log_softmax(teacher / t)
        kl = tf.reduce_sum(soft_teacher * (log_teacher - log_student), axis=-1)
        return (1.0 - self.alpha) * hard + self.alpha * t * t * kl

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "alpha": self.alpha}


@keras.utils.register_keras_serializable(package="tfqnet")
class DistillationAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-1 accuracy of the student against the labels in :func:`distillation_targets`."""

    def __init__(self, name: str = "accuracy", dtype=None):
        super().__init__(_label_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _label_accuracy(y_true, y_pred):
    labels = tf.cast(y_true[:, 0], tf.int64)
    return tf.cast(tf.equal(tf.argmax(y_pred, axis=-1), labels), tf.float32)
