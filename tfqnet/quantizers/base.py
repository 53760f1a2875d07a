"""The contract every tfqnet quantizer follows.

A tfqnet quantizer is a TFMOT :class:`~tfmot.quantization.keras.quantizers.Quantizer`:
its state lives in variables of the wrapping layer, so it is saved with the model.

* ``training=True``: a differentiable forward pass of the method (straight-through
  rounding, a sigmoid sum, a relaxed distribution, ...).
* ``training=False``: values ``scale * code`` on integer codes, emitted through
  :mod:`tfqnet.grid` so the TFLite converter stores exactly those values.

Quantizers whose state depends on data (step sizes, zero points, thresholds) set it
from the first training batch they see (``initialized`` flag), as LSQ does; until then
:func:`tfqnet.convert` refuses the model.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfqnet._keras import keras

_TFMOT_QUANTIZER = tfmot.quantization.keras.quantizers.Quantizer


def register(cls: type) -> type:
    """Registers a tfqnet class as Keras serializable (`tfqnet>ClassName`)."""
    return keras.utils.register_keras_serializable(package="tfqnet")(cls)


class Quantizer(_TFMOT_QUANTIZER, abc.ABC):
    """Base class of tfqnet quantizers (see the module docstring for the contract)."""

    #: Whether the quantizer learns state from data at the first training step.
    data_initialized: bool = True

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: Mapping) -> Quantizer:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    @classmethod
    def callbacks(cls, model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
        """Keras callbacks this quantizer type needs during QAT (schedules). Default none."""
        return []

    # --- helpers for subclasses ------------------------------------------------------

    @staticmethod
    def add_initialized_flag(layer: keras.layers.Layer, name: str) -> tf.Variable:
        return layer.add_weight(
            name + "_initialized",
            shape=(),
            initializer=keras.initializers.Zeros(),
            trainable=False,
        )

    @staticmethod
    def initialize_once(
        weights: Mapping[str, tf.Variable],
        names: Sequence[str],
        initial_values: Callable[[], Mapping[str, tf.Tensor]],
        training: bool,
    ) -> dict[str, tf.Tensor]:
        """Reads the state variables ``names``, setting them from data once in training.

        ``initial_values`` runs only inside the branch taken on the first training step
        (a k-means of a kernel is not recomputed every step). In inference mode the
        variables are returned as they are.
        """
        if not training:
            return {k: tf.identity(weights[k]) for k in names}
        flag = weights["initialized"]

        def assign() -> tf.Tensor:
            fresh = {k: tf.stop_gradient(v) for k, v in initial_values().items()}
            ops = [weights[k].assign(fresh[k]) for k in names] + [flag.assign(1.0)]
            with tf.control_dependencies(ops):
                return tf.constant(True)

        done = tf.cond(flag > 0.5, lambda: tf.constant(True), assign)
        with tf.control_dependencies([done]):
            return {k: tf.identity(weights[k]) for k in names}
