"""``tfqnet.callbacks``: the Keras callbacks a QAT model's quantizers need."""

from __future__ import annotations

from tfqnet._keras import keras
from tfqnet.quantize.api import quantizers_of


def callbacks(qat_model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
    """Callbacks for ``qat_model.fit(..., epochs=epochs)``.

    Each quantizer type in the model contributes its schedules (temperature annealing,
    bit-width freezing, regularizer ramps, ...) once; the uniform method needs none.

    Under a ``tf.distribute`` strategy Keras runs callbacks once per epoch or batch in
    cross-replica context (on every worker with MultiWorkerMirroredStrategy, each
    computing the same value), so a schedule sets its state variables once on every
    replica. Schedules set absolute values from the epoch index (never ``assign_add``),
    so they cannot drift between replicas or workers.
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    found: list[keras.callbacks.Callback] = []
    seen: set[type] = set()
    for quantizer in quantizers_of(qat_model):
        if type(quantizer) not in seen:
            seen.add(type(quantizer))
            found.extend(type(quantizer).callbacks(qat_model, int(epochs)))
    return found
