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

Under ``tf.distribute`` (MirroredStrategy, MultiWorkerMirroredStrategy) the quantizers
run once per replica on its shard of the global batch. Three rules keep every replica's
state identical, and equal to a single-device run on the same global batch (up to
float summation order):

* state variables are made by :meth:`Quantizer.add_state`: ``ON_WRITE`` with
  ``ONLY_FIRST_REPLICA`` aggregation, so an assignment made in a training step stores
  the first replica's value on every replica, and one made by a callback (cross-replica
  context, once per epoch or batch) stores its value everywhere;
* statistics of data (activation ranges) are taken over the global batch
  (:meth:`Quantizer.initialize_from_batch` all-gathers each replica's min, max, mean
  and count), so initial values do not depend on the shard a replica saw;
* no synchronisation sits inside ``tf.cond``: MirroredStrategy cannot synchronise
  replicas inside control flow (``merge_call`` raises there), so the first-step branch
  only computes values; the statistics are gathered and the variables assigned outside
  it, at every training step (a few scalars per quantizer).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfqnet._keras import keras
from tfqnet.tflite_format import INT4_MAX_BITS

_TFMOT_QUANTIZER = tfmot.quantization.keras.quantizers.Quantizer


def register(cls: type) -> type:
    """Registers a tfqnet class as Keras serializable (`tfqnet>ClassName`)."""
    return keras.utils.register_keras_serializable(package="tfqnet")(cls)


class BatchStatistics(NamedTuple):
    """Scalar statistics of a data tensor over the global batch (every replica's shard)."""

    minimum: tf.Tensor
    maximum: tf.Tensor
    mean: tf.Tensor

    @classmethod
    def of(cls, x: tf.Tensor) -> BatchStatistics:
        """Statistics of ``x`` as this replica sees it (the global batch on one device)."""
        x = tf.cast(x, tf.float32)
        return cls(tf.reduce_min(x), tf.reduce_max(x), tf.reduce_mean(x))


def _local_statistics(x: tf.Tensor) -> tf.Tensor:
    """``[min, max, mean, count]`` of ``x`` on this replica (no gradient)."""
    x = tf.stop_gradient(tf.cast(x, tf.float32))
    return tf.stack([*BatchStatistics.of(x), tf.cast(tf.size(x), tf.float32)])


def _global_statistics(local: tf.Tensor) -> BatchStatistics:
    """Combines every replica's ``[min, max, mean, count]`` into the global batch's.

    With one replica (no strategy, or in cross-replica context) the local statistics
    are the global ones. Otherwise they are all-gathered (exact copies) and reduced in
    replica order on every replica, so every replica gets identical values: min and
    max as a single device computes them, the mean up to float summation order.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return BatchStatistics(local[0], local[1], local[2])
    rows = context.all_gather(local[None, :], axis=0)
    counts = rows[:, 3]
    # a replica with an empty shard (a last batch smaller than the replicas) has mean NaN
    weighted = tf.where(counts > 0, rows[:, 2] * counts, 0.0)
    mean = tf.reduce_sum(weighted) / tf.maximum(tf.reduce_sum(counts), 1.0)
    return BatchStatistics(tf.reduce_min(rows[:, 0]), tf.reduce_max(rows[:, 1]), mean)


def ordered_sum(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """``tensors[0] + tensors[1] + ...`` (same shapes), summed in the same order every run.

    Not ``tf.add_n``, whose CPU kernel orders its inputs by thread timing (seeded runs
    then differ in the last bits), and not a chain of binary adds, which Grappler folds
    into an AddN: a reduction over a stacked axis sums in index order.
    """
    tensors = list(tensors)
    if len(tensors) <= 2:  # a + b == b + a exactly: no order to fix
        return tensors[0] if len(tensors) == 1 else tensors[0] + tensors[1]
    return tf.reduce_sum(tf.stack(tensors), axis=0)


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

    # --- extension points: tfqnet calls these once per quantizer type in a model ---------

    @classmethod
    def callbacks(cls, model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
        """Keras callbacks this quantizer type needs for ``fit(..., epochs=epochs)``
        (schedules, model losses); :func:`tfqnet.callbacks` collects them. Default none."""
        return []

    @classmethod
    def prepare_export(cls, model: keras.Model, compress: bool | int = False) -> None:
        """Called by :func:`tfqnet.convert` before the converter traces ``model``, with
        its ``compress`` argument (``"auto"`` resolved to True or False for the model):
        refresh static choices made from variables, or raise
        :class:`~tfqnet.errors.ConversionError` for a model this type cannot export so.
        Default: nothing to do."""

    # --- the report protocol: what tfqnet.bit_width_report reads of a weight quantizer ---

    #: how the kernel's bytes are counted, one of ``tfqnet.tflite_format.STORAGES``
    storage: str = "int4"
    #: quantization channels of the kernel (1 per tensor): each may add a copy of its
    #: scale and zero point to a compressed, uncompacted file
    channels: int = 1

    @property
    def learns_width(self) -> bool:
        """Whether training learns the kernel's width (then :meth:`kernel_bits` reads it
        from the variables). Default False."""
        return False

    def kernel_bits(self) -> int:
        """The kernel's width now. Default: the configured ``bits`` (8 without one)."""
        return getattr(self, "bits", 8)

    def export_storage(self) -> str:
        """How ``tfqnet.convert``'s default (``compress="auto"``) stores the kernel:
        ``"compressed"`` for ``storage="compressed"`` and for a fixed width below 4 bits
        (learned widths follow ``storage``), else ``"int4"`` (its INT4/int8 container)."""
        if self.storage == "compressed" or (
                self.kernel_bits() < INT4_MAX_BITS and not self.learns_width):
            return "compressed"
        return "int4"

    def max_kernel_bits(self) -> int:
        """The widest the kernel can be. Default: :meth:`kernel_bits`."""
        return self.kernel_bits()

    def weight_budget_bytes(self) -> float | None:
        """The weight budget, in bytes, that a learned width trains for (the report's
        ``budget_bytes`` is the smallest of a model's). Default None: no budget."""
        return None

    # --- helpers for subclasses ------------------------------------------------------

    @staticmethod
    def add_state(
        layer: keras.layers.Layer,
        name: str,
        shape: Sequence[int] = (),
        initializer: keras.initializers.Initializer | str = "zeros",
        trainable: bool = False,
    ) -> tf.Variable:
        """Creates a quantizer state variable of ``layer`` (every tfqnet quantizer's way).

        ``ON_WRITE`` synchronisation with ``ONLY_FIRST_REPLICA`` aggregation: under a
        ``tf.distribute`` strategy an assignment in a training step (data-initialised
        step sizes, flags, CRQ's scale) stores the first replica's value on all
        replicas (identical values even if a kernel, e.g. a GPU segment sum, is not
        deterministic), and one in cross-replica context (callbacks: temperature, ramps,
        frozen widths) stores its value on all. Not ``MEAN``: means of integer-valued
        zero points or 0/1 flags are not what any replica computed. Trainable state
        (step sizes) is updated by the optimizer from all-reduced gradients as usual;
        the aggregation only decides replica-context assignments. Without a strategy
        this is a plain variable.
        """
        return layer.add_weight(
            name,
            shape=tuple(shape),
            initializer=initializer,
            trainable=trainable,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    @classmethod
    def add_initialized_flag(cls, layer: keras.layers.Layer, name: str) -> tf.Variable:
        return cls.add_state(layer, name + "_initialized")

    @staticmethod
    def initialize_once(
        weights: Mapping[str, tf.Variable],
        names: Sequence[str],
        initial_values: Callable[[], Mapping[str, tf.Tensor]],
        training: bool,
    ) -> dict[str, tf.Tensor]:
        """Reads the state variables ``names``, setting them from data once in training.

        ``initial_values`` runs only inside the branch taken on the first training step
        (a k-means of a kernel is not recomputed every step). It must give every
        replica the same values: compute them from weights (mirrored, identical on
        every replica) or from :class:`BatchStatistics` via
        :meth:`initialize_from_batch`, never from this replica's shard of the batch.
        The branch only computes; the variables are assigned after it at every
        training step (their own value once initialised), because a ``tf.distribute``
        strategy cannot synchronise the ``ONLY_FIRST_REPLICA`` assignment inside
        ``tf.cond``. In inference mode the variables are returned as they are.
        """
        if not training:
            return {k: tf.identity(weights[k]) for k in names}
        flag = weights["initialized"]

        def current() -> dict[str, tf.Tensor]:
            return {k: tf.identity(weights[k]) for k in names}

        def fresh() -> dict[str, tf.Tensor]:
            values = initial_values()
            return {k: tf.cast(tf.stop_gradient(values[k]), weights[k].dtype) for k in names}

        values = tf.cond(flag > 0.5, current, fresh)
        ops = [weights[k].assign(values[k]) for k in names] + [flag.assign(1.0)]
        with tf.control_dependencies(ops):
            return {k: tf.identity(weights[k]) for k in names}

    @classmethod
    def initialize_from_batch(
        cls,
        weights: Mapping[str, tf.Variable],
        names: Sequence[str],
        x: tf.Tensor,
        initial_values: Callable[[BatchStatistics], Mapping[str, tf.Tensor]],
        training: bool,
    ) -> dict[str, tf.Tensor]:
        """:meth:`initialize_once` from statistics of the data ``x`` (activations).

        ``initial_values`` receives the min, max and mean of ``x`` over the global batch:
        under a strategy each replica sees only its shard, so the per-replica
        ``[min, max, mean, count]`` (computed on the first step only) are all-gathered
        outside the ``tf.cond`` and combined (:func:`_global_statistics`).
        """
        if not training:
            return cls.initialize_once(weights, names, dict, training)
        flag = weights["initialized"]
        local = tf.cond(
            flag > 0.5, lambda: tf.zeros([4], tf.float32), lambda: _local_statistics(x)
        )
        statistics = _global_statistics(local)
        return cls.initialize_once(weights, names, lambda: initial_values(statistics), training)
