"""Keras 2 (tf-keras) for TFMOT, and the errors that say so.

TFMOT 0.8 builds its QAT models with tf-keras. TensorFlow decides at import time
whether ``tf.keras`` is Keras 2 or Keras 3 from ``TF_USE_LEGACY_KERAS``, so
``import tfqnet`` sets it when TensorFlow has not been imported yet. When it is too
late, tfqnet still works with ``tf_keras`` models; a Keras 3 model is refused at the
API boundary with an error that says what to do.
"""

from __future__ import annotations

import os
import sys
import warnings

from tfqnet.errors import Keras3ModelError

_TOO_LATE = "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1"
if not _TOO_LATE:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

KERAS3_HINT = (
    "tfqnet (like TensorFlow Model Optimization) needs a Keras 2 model from tf-keras. "
    "Build the model with `import tf_keras as keras` instead of `keras`/`tf.keras`, or "
    "`import tfqnet` (or set TF_USE_LEGACY_KERAS=1) before TensorFlow is imported so that "
    "`tf.keras` is tf-keras."
)

if _TOO_LATE and not tf.keras.__name__.startswith("tf_keras"):
    warnings.warn(
        "tfqnet was imported after TensorFlow, so `tf.keras` is Keras 3 in this process. "
        + KERAS3_HINT,
        stacklevel=2,
    )


def is_keras3_model(obj: object) -> bool:
    """True for a Keras 3 model or layer (the `keras` package, not `tf_keras`)."""
    module = type(obj).__module__ or ""
    return module == "keras" or module.startswith(("keras.", "keras.src"))


def require_tf_keras_model(model: object, argument: str = "model") -> keras.Model:
    """Returns `model` if it is a tf-keras model, else raises a clear error."""
    if is_keras3_model(model):
        raise Keras3ModelError(
            f"`{argument}` is a Keras 3 model ({type(model).__module__}.{type(model).__name__}). "
            + KERAS3_HINT
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{argument}` must be a tf_keras.Model, got {type(model).__name__}."
        )
    return model


__all__ = ["tf", "keras", "is_keras3_model", "require_tf_keras_model", "KERAS3_HINT"]
