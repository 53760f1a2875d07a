"""Keras 2 (tf-keras) for TFMOT.

TFMOT 0.8 builds its QAT models with tf-keras. TensorFlow decides at import time
whether ``tf.keras`` is Keras 2 or Keras 3 from ``TF_USE_LEGACY_KERAS``, so
``import tfqnet`` sets it when TensorFlow has not been imported yet (``tf.keras`` is
then tf-keras). The order does not matter to tfqnet itself: it (and TFMOT, see
``tensorflow_model_optimization/python/core/keras/compat.py``) uses ``tf_keras``
directly, and :mod:`tfqnet.keras3` translates Keras 3 models.
"""

from __future__ import annotations

import os
import sys

if "tensorflow" not in sys.modules:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


def is_keras3_model(obj: object) -> bool:
    """True for a Keras 3 model or layer, or an instance of a subclass of one (the `keras`
    package, not `tf_keras`)."""
    return any((cls.__module__ or "") == "keras" or (cls.__module__ or "").startswith("keras.")
               for cls in type(obj).__mro__)


__all__ = ["tf", "keras", "is_keras3_model"]
