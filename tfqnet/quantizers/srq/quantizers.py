"""The SRQ quantizers: :class:`SRQWeightQuantizer` (fixed width with DropBits, or a
learned width on the gate ladder) and :class:`SRQActivationQuantizer` (fixed width).

Forward, gradients and options: :mod:`tfqnet.quantizers.srq`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.quantizer import Quantizer, register
from tfqnet.quantizers.kernel_views import channels_last
from tfqnet.quantizers.srq.allocator import BYTES_PER_KB, MIN_BITS
from tfqnet.quantizers.srq.freeze import check_export, training_callbacks
from tfqnet.quantizers.srq.relaxed import (
    MAX_DROPPED_BITS,
    SIGMA_RATIO_INIT,
    SIGMA_RATIO_MAX,
    SIGMA_RATIO_MIN,
    combine_ladder,
    drop_mask,
    hard_concrete_sample,
    ladder_width,
    nonzero_probability,
    semi_relaxed_quantize,
)
from tfqnet.quantizers.uniform import UniformActivationQuantizer, UniformWeightQuantizer
from tfqnet.tflite_format import STORAGES, kernel_bytes, weight_container_bits

#: DropBits of fixed-width kernels: most steps train the deployed full-width grid
DROP_PROBABILITY = 0.1
#: no DropBits on activations: a coarsened grid no longer holds the zero point exactly
ACTIVATION_DROP_PROBABILITY = 0.0
#: every bit kept at the start (~1% chance each gate samples 0)
GATE_INIT_LOGIT = 3.0
#: a logit moves ~0.05 per Adam step at lr 5e-4: settles within a few epochs
GATE_SPEED = 100.0
BUDGET_PENALTY = 1.0
#: the later half of the epochs trains the deployed (frozen) model
FREEZE_FRACTION = 0.5


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}.")
    return storage


def check_probability(value: float, what: str) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}.")
    return float(value)


class _SRQQuantizer(Quantizer):
    """Shared: the log sigma ratio and the per-width semi-relaxed quantizers."""

    def _sigma_weight(self, layer, name: str) -> tf.Variable:
        return self.add_state(
            layer, name + "_srq_log_sigma",
            initializer=keras.initializers.Constant(math.log(SIGMA_RATIO_INIT)), trainable=True,
        )

    @staticmethod
    def _sigma_ratio(log_sigma: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(tf.exp(log_sigma), SIGMA_RATIO_MIN, SIGMA_RATIO_MAX)


@register
class SRQWeightQuantizer(_SRQQuantizer):
    """SRQ kernel quantizer: ``B`` configured bits, fixed (DropBits) or learned width.

    Forward (training), fixed width: the semi-relaxed quantizer at the width left after
    DropBits; learned width: the gate ladder over widths 2..B (module docstring).
    Inference: round-to-nearest at the inference width, through
    :func:`tfqnet.grid.weight_fake_quant` with scale ``step * 2**(B - b)`` in the static
    container ``container_bits()``. Gradients: ``x``, ``step``, ``sigma`` through the
    relaxed expectation; gate logits through the hard-concrete samples and the loss.

    Initialisation on the first training step: ``step`` as
    :class:`~tfqnet.quantizers.uniform.UniformWeightQuantizer` at ``B`` bits.
    """

    def __init__(
        self,
        bits: int = 8,
        per_axis: bool = True,
        channel_dims: int = 1,
        drop_probability: float = DROP_PROBABILITY,
        learn_bits: bool = False,
        bit_penalty: float = 0.0,
        target_weight_kb: float | None = None,
        budget_penalty: float = BUDGET_PENALTY,
        freeze_fraction: float = FREEZE_FRACTION,
        gate_speed: float = GATE_SPEED,
        storage: str = "int4",
    ):
        self.bits = grid.check_bits(bits, "weight bits")
        self.per_axis = bool(per_axis)
        self.channel_dims = int(channel_dims)
        self.drop_probability = check_probability(drop_probability, "drop_probability")
        self.learn_bits = bool(learn_bits) and self.bits > MIN_BITS
        self.bit_penalty = float(bit_penalty)
        self.target_weight_kb = None if target_weight_kb is None else float(target_weight_kb)
        self.budget_penalty = float(budget_penalty)
        self.freeze_fraction = float(freeze_fraction)
        self.gate_speed = float(gate_speed)
        self.storage = check_storage(storage)
        self._state: dict[str, tf.Variable] | None = None
        self.size = 0
        self.channels = 1
        self.per_channel_dense = False

    def get_config(self) -> dict:
        return {
            "bits": self.bits,
            "per_axis": self.per_axis,
            "channel_dims": self.channel_dims,
            "drop_probability": self.drop_probability,
            "learn_bits": self.learn_bits,
            "bit_penalty": self.bit_penalty,
            "target_weight_kb": self.target_weight_kb,
            "budget_penalty": self.budget_penalty,
            "freeze_fraction": self.freeze_fraction,
            "gate_speed": self.gate_speed,
            "storage": self.storage,
        }

    @property
    def lowest_width(self) -> int:
        """The lowest width the training forward pass can reach."""
        if self.learn_bits:
            return MIN_BITS
        drops = MAX_DROPPED_BITS if self.drop_probability > 0 else 0
        return max(MIN_BITS, self.bits - drops)

    def build(self, tensor_shape, name, layer):
        shape = (math.prod(tensor_shape[-self.channel_dims :]),) if self.per_axis else ()
        state = {
            "log_alpha": self.add_state(layer, name + "_srq_log_alpha", shape, trainable=True),
            "log_sigma": self._sigma_weight(layer, name),
            "initialized": self.add_initialized_flag(layer, name),
        }
        if self.learn_bits:
            state["gate_v"] = self.add_state(
                layer, name + "_srq_keep_gates", shape=(self.bits - MIN_BITS,),
                initializer=keras.initializers.Constant(GATE_INIT_LOGIT / self.gate_speed),
                trainable=True,
            )
            state["frozen_bits"] = self.add_state(layer, name + "_srq_frozen_bits")
        self._state = state
        self.size = math.prod(int(d) for d in tensor_shape)
        self.channels = shape[0] if shape else 1
        self.per_channel_dense = grid.is_per_channel_dense(len(tensor_shape), self.per_axis)
        return state

    # --- widths (graph and numpy) --------------------------------------------------------

    def gate_logits(self, state=None) -> tf.Tensor:
        return self.gate_speed * (state or self._state)["gate_v"]

    def inference_width(self, state=None) -> tf.Tensor:
        """The width in inference mode, a float tensor: frozen, else from the logits."""
        if not self.learn_bits:
            return tf.constant(float(self.bits))
        state = state or self._state
        from_logits = ladder_width(self.gate_logits(state) > 0.0)
        frozen = state["frozen_bits"]
        return tf.where(frozen > 0.5, frozen, from_logits)

    def width(self) -> int:
        """The current inference width as a Python int (reads the variables)."""
        return int(round(float(self.inference_width())))

    def frozen_width(self) -> int | None:
        """The frozen width as a Python int (None while the width is still learned).

        Read eagerly (``tf.init_scope``) so it also works while a graph is traced."""
        if not self.learn_bits:
            return self.bits
        with tf.init_scope():
            frozen = int(round(float(self._state["frozen_bits"].numpy())))
        return frozen if frozen >= MIN_BITS else None

    def container_bits(self) -> int:
        """The static container of the inference graph: that of the frozen width, read
        when the graph is traced; int8 (the configured width's) while not frozen, which
        holds every width exactly."""
        frozen = self.frozen_width()
        return weight_container_bits(
            self.bits if frozen is None else frozen, self.per_channel_dense)

    def expected_bits(self) -> tf.Tensor:
        """``E[b] = 2 + sum_b prod_{j<=b} P(g_j > 0)`` (learned widths only; the width
        once frozen)."""
        keep = nonzero_probability(self.gate_logits())
        widths = np.arange(MIN_BITS, self.bits + 1, dtype=np.float32)
        return self._unless_frozen(widths, MIN_BITS + tf.reduce_sum(tf.math.cumprod(keep)))

    def stored_bytes(self, width: int) -> int:
        """Weight bytes of this kernel at ``width`` bits in its ``storage``."""
        return kernel_bytes(self.size, width, self.storage,
                            per_channel_dense=self.per_channel_dense, channels=self.channels)

    def expected_bytes(self) -> tf.Tensor:
        """Expected exported bytes ``B_2 + sum_b sg(P_3 ... P_{b-1}) P_b (B_b - B_{b-1})``
        (``B_b`` = :meth:`stored_bytes` of width ``b``, ``P_b = P(g_b > 0)``, ``sg`` the
        stopped gradient). Each gate gets the gradient of the bytes of its own bit only,
        not of the bits above it: pushing a low gate for the bytes of the high bits would
        drop the most useful bits first. INT4 storage: only the 5th-bit gate costs bytes.
        Once frozen: the bytes at the frozen width."""
        if not self.learn_bits:
            return tf.constant(float(self.stored_bytes(self.bits)))
        costs = np.array([self.stored_bytes(b) for b in range(MIN_BITS, self.bits + 1)],
                         np.float32)
        keep = nonzero_probability(self.gate_logits())
        below = tf.stop_gradient(tf.math.cumprod(keep, exclusive=True))
        expected = costs[0] + tf.reduce_sum(below * keep * np.diff(costs))
        return self._unless_frozen(costs, expected)

    def _unless_frozen(self, per_width: np.ndarray, expected: tf.Tensor) -> tf.Tensor:
        """``expected``, or once the width is frozen ``per_width`` at that width: a frozen
        layer's loss term is a constant, so its ignored gates get no gradient and the
        reported loss is the deployed model's."""
        frozen = self._state["frozen_bits"]
        index = tf.cast(tf.round(tf.maximum(frozen - MIN_BITS, 0.0)), tf.int32)
        return tf.where(frozen > 0.5, tf.gather(per_width, index), expected)

    # --- forward ---------------------------------------------------------------------------

    def _training_gates(self, state) -> tf.Tensor:
        """Gates of widths lowest+1..B for this step."""
        if not self.learn_bits:
            return drop_mask(self.bits - self.lowest_width, self.drop_probability)
        frozen = state["frozen_bits"]
        fixed = tf.cast(tf.range(MIN_BITS + 1, self.bits + 1, dtype=tf.float32) <= frozen,
                        tf.float32)
        sampled = hard_concrete_sample(self.gate_logits(state))
        return tf.where(frozen > 0.5, fixed, sampled)

    def __call__(self, inputs, training, weights, **kwargs):
        initial = UniformWeightQuantizer(self.bits, self.per_axis, self.channel_dims)
        state = self.initialize_once(
            weights, ["log_alpha"],
            lambda: {"log_alpha": tf.math.log(initial.initial_scale(inputs))}, training,
        )
        state = dict(weights, log_alpha=state["log_alpha"])
        per_channel = self.per_axis and self.channel_dims > 1
        x = channels_last(inputs, self.channel_dims) if per_channel else inputs
        step = tf.exp(state["log_alpha"])
        if training:
            ratio = self._sigma_ratio(state["log_sigma"])
            quantized = []
            for b in range(self.lowest_width, self.bits + 1):
                qmax = grid.weight_qmax(b)
                scale = step * 2.0 ** (self.bits - b)
                quantized.append(semi_relaxed_quantize(x, scale, -qmax, 2 * qmax, ratio))
            out = combine_ladder(quantized, self._training_gates(state))
            return tf.reshape(out, tf.shape(inputs)) if per_channel else out
        width = self.inference_width(state)
        scale = step * tf.pow(2.0, self.bits - width)
        qmax = tf.pow(2.0, width - 1.0) - 1.0
        on_grid = scale * tf.clip_by_value(grid.round_half_up(x / scale), -qmax, qmax)
        on_grid = tf.reshape(on_grid, tf.shape(inputs)) if per_channel else on_grid
        return grid.weight_fake_quant(
            on_grid, scale, self.container_bits(), self.per_axis, self.channel_dims
        )

    # --- model-level hooks, and what the bit-width report reads ---------------------------

    def loss_settings(self) -> tuple:
        return (self.bit_penalty, self.target_weight_kb, self.budget_penalty,
                self.freeze_fraction, self.storage)

    @property
    def learns_width(self) -> bool:
        return self.learn_bits

    def kernel_bits(self) -> int:
        return self.width() if self.learn_bits else self.bits

    def max_kernel_bits(self) -> int:
        return self.bits

    def weight_budget_bytes(self) -> float | None:
        if not self.learn_bits or self.target_weight_kb is None:
            return None
        return self.target_weight_kb * BYTES_PER_KB

    @classmethod
    def callbacks(cls, model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
        """Attaches the bit/budget loss (once) and returns the freeze callback
        (:func:`tfqnet.quantizers.srq.freeze.training_callbacks`).

        Raises ``ValueError`` for a budget below the all-2-bit model, before training.
        """
        return training_callbacks(model, epochs)

    @classmethod
    def prepare_export(cls, model: keras.Model, compress: bool | int = False) -> None:
        """Called by :func:`tfqnet.convert` before tracing: refuses learned widths that
        are not frozen or that exceed the budget, and a budget met only compressed when
        ``compress`` is not True (:func:`tfqnet.quantizers.srq.freeze.check_export`)."""
        check_export(model, compress)


@register
class SRQActivationQuantizer(_SRQQuantizer):
    """SRQ activation quantizer on ``step * (q - z)``, ``q`` in ``0 .. 2**bits - 1``.

    Forward (training): the semi-relaxed quantizer (DropBits: ``k`` low bits dropped
    means step ``step * 2**k``, zero point ``round(z / 2**k)``); inference:
    :func:`tfqnet.grid.activation_fake_quant` at ``bits`` (no DropBits). Gradients to
    ``x``, ``step`` and ``sigma`` through the relaxed expectation; ``z`` is an integer
    fixed on the first batch, as
    :class:`~tfqnet.quantizers.uniform.UniformActivationQuantizer` sets it (0 after ReLU).
    """

    def __init__(self, bits: int = 8, drop_probability: float = ACTIVATION_DROP_PROBABILITY):
        self.bits = grid.check_bits(bits, "activation bits", grid.ACTIVATION_BITS)
        self.drop_probability = check_probability(
            drop_probability, "activation_drop_probability"
        )

    def get_config(self) -> dict:
        return {"bits": self.bits, "drop_probability": self.drop_probability}

    def build(self, tensor_shape, name, layer):
        zeros = keras.initializers.Zeros()
        return {
            "log_alpha": self.add_state(layer, name + "_srq_log_alpha", (), zeros, True),
            "log_sigma": self._sigma_weight(layer, name),
            "zero_point": self.add_state(layer, name + "_srq_zero_point", (), zeros),
            "initialized": self.add_initialized_flag(layer, name),
        }

    def initial_state(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        state = UniformActivationQuantizer(self.bits).initial_state(x)
        return {"log_alpha": state["log_scale"], "zero_point": state["zero_point"]}

    def __call__(self, inputs, training, weights, **kwargs):
        # global-batch statistics: every tf.distribute replica gets the same range
        state = self.initialize_from_batch(
            weights, ["log_alpha", "zero_point"], inputs, self.initial_state, training
        )
        step = tf.exp(state["log_alpha"])
        zero_point = tf.stop_gradient(state["zero_point"])
        if not training:
            return grid.activation_fake_quant(inputs, step, zero_point, self.bits)
        ratio = self._sigma_ratio(weights["log_sigma"])
        drops = MAX_DROPPED_BITS if self.drop_probability > 0 else 0
        lowest = max(MIN_BITS, self.bits - drops)
        quantized = []
        for b in range(lowest, self.bits + 1):
            factor = 2.0 ** (self.bits - b)
            low = -tf.round(zero_point / factor)
            quantized.append(
                semi_relaxed_quantize(inputs, step * factor, low, 2**b - 1, ratio)
            )
        return combine_ladder(quantized, drop_mask(self.bits - lowest, self.drop_probability))
