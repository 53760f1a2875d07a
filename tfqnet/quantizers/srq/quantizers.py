"""Semi-Relaxed Quantization (SRQ) with DropBits and learned per-layer bit-widths
(Lee, Yun, Hwang, Yang, arXiv 2019 / ICCV 2021), under an optional flash budget.

**The semi-relaxed quantizer.** A ``b``-bit layer has the grid ``step * c`` on the
integer codes ``c`` in ``[lo, hi]`` (weights: ``+-(2**(b-1) - 1)``, narrow range as
everywhere in tfqnet; activations: ``-z .. 2**b - 1 - z`` with an integer zero point
``z``). Relaxed Quantization (Louizos et al., 2019) adds logistic noise of scale
``sigma`` to ``x``; grid point ``i`` gets the probability
``pi_i = F((g_i + step/2 - x) / sigma) - F((g_i - step/2 - x) / sigma)`` (``F`` the
logistic CDF; the end points take the tails: the distribution truncated to the grid).
SRQ takes no Gumbel sample:

* forward: the mode of ``pi``, i.e. ``step * clip(round(x / step), lo, hi)``, exactly
  the round-to-nearest that TFLite computes (rounding half up, as FakeQuant does);
* backward: a multi-class straight-through estimator through the relaxed expectation
  ``E = sum_i pi_i g_i = step * (lo + sum_j F((x - t_j) / sigma))`` (``t_j`` the
  midpoints between grid points), so ``x``, ``step`` and ``sigma`` get the gradients
  of ``E``. ``E`` is evaluated by :func:`tfqnet.quantizers.qn.soft_uniform_staircase`
  (the same sum of sigmoids as QN, windowed to ``WINDOW`` midpoints each side of ``x``).

``step`` and ``sigma`` are learned per layer (``step`` per output channel for Conv2D
and DepthwiseConv2D kernels, per tensor for Dense/Conv1D, see
``tfqnet.quantize.registry.PER_TENSOR_LAYERS``; Dense per output channel too with
``storage="compressed"``, below), separately for weights and
activations, as logarithms (Adam then changes them by relative amounts). ``sigma`` is
learned as a fraction of the step, clipped to ``[SIGMA_RATIO_MIN, SIGMA_RATIO_MAX]``,
so it follows the grid when DropBits or a learned width change the step. It starts at
1/3 of a step: ``dE/dx`` then lies between ~0.9 (on grid points) and ~1.05 (on
midpoints), close to the plain straight-through estimator, and the window of 2
midpoints each side holds all but ~1e-3 of the mass; at the upper clip (half a step)
the truncated tails are ~1% of it (only the backward pass sees that). The window is
small because the relaxed expectation is evaluated at every reachable width in every
training step: it is most of SRQ's training cost.

**Bits and the grid.** A layer configured with ``B`` bits (``weight_bits``/
``activation_bits``) learns the step of its ``B``-bit grid. At ``b <= B`` bits it uses
the step ``step * 2**(B - b)`` and codes ``+-(2**(b-1) - 1)``: for weights exactly the
``B``-bit codes with the ``B - b`` low-order bits dropped (an 8-bit grid with 4 bits
dropped is the 4-bit grid with 16 times the step, codes +-7).

**DropBits** (training only; no effect in inference mode): at every training step each
fixed-width layer drops its ``k`` lowest-order bits, the lowest with probability ``p``
and each further one with probability ``p`` given the one below was dropped
(``P(k >= j) = p**j``, at most ``MAX_DROPPED_BITS``, never below 2 bits), and quantizes
on the coarser grid. Options: ``drop_probability`` (weights, default **0.1**) and
``activation_drop_probability`` (default **0.0**). Why these defaults: the deployed
grid is the full-width one, so most steps should train it (90% at p = 0.1, and two
bits are dropped on 1% of steps) while a tenth of the steps show every layer a
coarser grid, DropBits' regulariser against overfitting to one set of rounding
errors. Activations default to no drop: a coarsened activation grid with a zero
point that is not a multiple of ``2**k`` no longer holds 0 exactly, which on
digits-sized fine-tunes costs more than the regulariser gains, and the activation
width is not learned. ``benchmarks/bench_srq.py`` measures the weight default.

**Learned bit-widths** (when ``bit_penalty > 0`` or ``target_weight_kb`` is given):
each weight quantizer of ``B > 2`` bits has one keep-gate per bit above 2 (widths
3..B), relaxed as hard-concrete variables (Louizos et al., 2018; ``beta = 2/3``,
``gamma = -0.1``, ``zeta = 1.1``). The gates form a ladder: width ``b`` is reached
only if the gates of 3..b are all kept, and in training the output is
``q_2 + sum_b (g_3 ... g_b) (q_b - q_{b-1})`` with ``q_b`` the semi-relaxed
quantizer at ``b`` bits and ``g`` sampled gates; with binary gates that is exactly
``q_b*``. These sampled gates *are* DropBits with learned drop probabilities, so
``drop_probability`` applies to fixed-width layers only. In inference a gate is kept
iff its logit is > 0 (its deterministic hard-concrete value is >= 1/2) and the width is
``2 +`` the number of consecutive kept gates. Gate logits are ``gate_speed * v`` for a
variable ``v`` (default 100): with Adam at lr 5e-4 a logit then moves ~0.05 per step,
enough to settle within a few epochs from its initial value ``GATE_INIT_LOGIT`` (3:
all bits kept, ~1% chance each gate samples 0). The costs, added as a model loss:

* ``bit_penalty`` (loss per KiB): ``bit_penalty * sum_l n_l E[b_l] / 8192``, the
  expected weight storage at the learned widths, ``E[b] = 2 + sum_b prod_{j<=b} P(g_j
  > 0)`` (the hard-concrete L0 probabilities);
* ``target_weight_kb`` (1 KB = 1024 bytes): a budget on the total bytes of all kernels
  as exported: ``budget_penalty * relu(E[bytes] - budget) / budget``, with
  ``E[bytes] = B_2 + sum_b sg(P_3 ... P_{b-1}) P_b (B_b - B_{b-1})`` (``B_b`` the
  kernel's bytes at ``b`` bits, ``P_b`` its gate's L0 probability, ``sg`` a stopped
  gradient: each gate pays for its own bit's bytes only).

**Storage** (``storage``, how the budget counts bytes):

* ``"int4"`` (default): as :func:`tfqnet.convert` stores kernels, ``<= 4`` bits as packed
  INT4 and wider ones in int8, so a layer's bytes are ``n/2`` or ``n``: only the gate of
  the 5th bit changes them. Going below 4 bits saves no flash, so at a budget of the
  all-4-bit bytes every layer ends at (at most) 4 bits, decided before training (below).
* ``"compressed"``: as ``tfqnet.convert(..., compress=True)`` stores them (TFLM
  compression, op ``TFLM_DECODE``: **the model runs on TensorFlow Lite Micro only**):
  a ``b``-bit kernel (``b <= 7``) as ``b``-bit indices into value tables of ``2**b - 1``
  int8 entries (one table per output channel; Conv1D kernels: one) plus a 16-byte
  decode header, where that beats its
  INT4/int8 container by more than a bound on the file overhead of a compressed filter
  (:func:`storage_form`; ``compress`` keeps a filter only if the file shrinks). Bits
  below 4 and between 5 and 7 then save flash, so a budget of the all-4-bit bytes can
  buy wider layers with narrower ones. :func:`tfqnet.convert` must get
  ``compress=True`` when the widths fit the budget only compressed
  (:meth:`SRQWeightQuantizer.prepare_export`; with no kernel counted as compressed,
  convert without it: ``compress`` refuses a model it cannot shrink). The weight bytes
  of the result (:func:`tfqnet.export.compression.stored_weight_bytes`) are then at
  most the report's, as long as the overhead bound holds (``compress`` measures the
  file and leaves a filter uncompressed if it does not shrink it; the bound has margin
  on the digits CNN, where the tests check the flatbuffer against the budget).

  Dense kernels are quantized **per output channel** in this storage
  (:attr:`SRQMethod.per_channel_dense`): nothing holds them to one scale, since they
  are never INT4 here (TFLM has no per-channel INT4 FULLY_CONNECTED, so a per-channel
  Dense kernel is int8 or indices, :func:`tfqnet.grid.weight_storage_bits`), and a
  3-bit Dense kernel loses less with a scale per channel. Measured on digits (bench_srq
  schedule, widths 8/8/3/8 frozen from the start, 3 seeds, QAT accuracy): 98.89% with
  a per-tensor fc1, 99.04% per channel (uniform all-4-bit: 99.04%). The converter cannot
  take per-channel Dense kernels; :mod:`tfqnet.export.per_channel_dense` writes their
  scales into the flatbuffer.

A budget below the all-2-bit model (all-INT4 bytes, less with compressed storage)
raises ``ValueError`` when :func:`tfqnet.callbacks` is called, before training.

**Freezing and export.** The ``BitWidthFreeze`` callback (from :func:`tfqnet.callbacks`)
freezes the widths at the start of the last ``freeze_fraction`` of the epochs (default
0.5, at least one epoch when ``epochs >= 3``; else at the end of training): it
computes the inference widths, projects them onto the budget (:func:`freeze_bit_widths`:
the layer whose next cheaper width drops the bit of the lowest gate logit steps down
first, INT4 storage: to 4 bits; then room given back) and stores them in each layer's
``srq_frozen_bits`` weight. Frozen layers train at that fixed width without DropBits.
Why half the epochs frozen: the sampled gates are DropBits on every learned layer, and
the deployed model is the frozen one, so the later epochs should train exactly it.
Chosen on a validation split, not the test split (as QN's ``hard_fraction``): 300
images held out of the digits training split (stratified, ``random_state=1``), float
30 epochs on the other 1047, then 6 epochs from 8 bits under the all-4-bit budget,
mean of seeds 0-2 (uniform all-4-bit 98.78%, fixed 4-bit SRQ without DropBits
98.89%). Frozen for the last 0.2 / 0.34 / 0.5 / 0.67 of the epochs: 98.44 / 98.66 /
98.89 / 98.56% with INT4 storage (always 4/4/4/4), 98.44 / 98.44 / 98.67 / 98.56% with
compressed storage (always 8/8/3/8). Steps of one image a seed are noise there; 0.5
was best for both and leaves half the epochs to learn the widths.

**Widths the budget decides.** When no layer's bits can pay for another's
(:func:`widths_the_budget_decides`: every layer fits at once at its widest width
affordable with all others at their cheapest, and ``bit_penalty`` is 0), there is
nothing to learn, and the callback freezes those widths when training begins: every
epoch trains the deployed model. INT4 storage at the all-4-bit bytes is such a budget
(all 4 bits). Measured there (test split; a structural choice, not a tuned number):
digits, 3 seeds, 6 QAT epochs, 98.89% learning the widths for half the epochs, 99.04%
frozen from the start (tfqnet ``uniform`` all-4-bit: 99.04%); MobileNetV2-style
(``benchmarks/tasks.py``), 2 seeds, 4 epochs: 99.11% and 99.56%. Descending from 8 bits
bought nothing there. (So the INT4 rows of the validation above now train as
frozen from the start; ``freeze_fraction`` matters where the budget leaves a trade.)

The width lives in variables, but the FakeQuant container (INT4 or int8) must be a
static Python choice when the converter traces the model. So:

* inference mode computes the width from the variables (frozen width, else the gate
  logits) and rounds onto that grid, so ``predict`` follows training;
* the container is chosen when the graph is traced
  (:meth:`SRQWeightQuantizer.container_bits`): it reads the frozen width eagerly
  (``tf.init_scope``) and takes INT4 for ``<= 4`` bits, int8 above; a layer that is
  not frozen gets int8, which holds every width 2..8 exactly. The converter traces
  the model afresh, so it always sees the current frozen widths;
* :func:`tfqnet.convert` first calls :meth:`SRQWeightQuantizer.prepare_export`,
  which raises :class:`~tfqnet.errors.ConversionError` if a learned width is not
  frozen (it would silently export int8) or the widths exceed the budget (or fit it
  only compressed and the conversion does not compress).

:func:`bit_width_report` gives the per-layer table (learned bits, weight bytes, share
of the budget). Activations keep their configured width (8 bits by default and at
the model output); only weight widths are learned.

Usage::

    q = tfqnet.quantize_model(model, "srq", weight_bits=8, target_weight_kb=20)
    q.fit(x, y, epochs=E, callbacks=tfqnet.callbacks(q, E))  # loss + freeze callback
    print(tfqnet.bit_width_report(q).table())      # or .as_dict()
    flatbuffer = tfqnet.convert(q, x[:200])
    # TFLM only: sub-4-bit and 5..7-bit kernels as compressed lookup-table indices
    q = tfqnet.quantize_model(model, "srq", weight_bits=8, target_weight_kb=20,
                              storage="compressed")
    ...
    flatbuffer = tfqnet.convert(q, x[:200], compress=True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import LayerQuantizeConfig, quantizers_of
from tfqnet.core.layer_kinds import WEIGHTED_LAYERS
from tfqnet.core.method import QuantizationMethod, register_method
from tfqnet.core.quantizer import Quantizer, ordered_sum, register
from tfqnet.errors import ConversionError
from tfqnet.quantizers.kernel_views import channels_last
from tfqnet.quantizers.qn import soft_uniform_staircase
from tfqnet.quantizers.uniform import UniformActivationQuantizer, UniformWeightQuantizer
from tfqnet.tflite_format import (
    STORAGES,
    kernel_bytes,
    storage_form,
    weight_container_bits,
)

MIN_BITS = 2
#: midpoints evaluated each side of x in the relaxed expectation
WINDOW = 2
SIGMA_RATIO_INIT = 1.0 / 3.0
SIGMA_RATIO_MIN = 0.05
SIGMA_RATIO_MAX = 0.5
MAX_DROPPED_BITS = 2
DROP_PROBABILITY = 0.1
ACTIVATION_DROP_PROBABILITY = 0.0
#: hard-concrete stretch (Louizos et al., 2018)
HC_BETA, HC_GAMMA, HC_ZETA = 2.0 / 3.0, -0.1, 1.1
GATE_INIT_LOGIT = 3.0
GATE_SPEED = 100.0
BUDGET_PENALTY = 1.0
FREEZE_FRACTION = 0.5
BYTES_PER_KB = 1024


# --- the semi-relaxed quantizer ------------------------------------------------------------


def semi_relaxed_quantize(
    x: tf.Tensor, step: tf.Tensor, low: tf.Tensor | float, levels: int, sigma_ratio: tf.Tensor
) -> tf.Tensor:
    """SRQ onto the grid ``step * c``, ``c`` in ``[low, low + levels]`` (``low`` integer).

    Forward: ``step * clip(round_half_up(x / step), low, low + levels)`` (the mode).
    Backward: the gradient of the relaxed expectation
    ``step * (low + sum_j F((x/step - low - 1/2 - j) / sigma_ratio))``, ``j < levels``
    (``F`` the logistic CDF, ``sigma = sigma_ratio * step``), to ``x``, ``step`` and
    ``sigma_ratio``.
    """
    low = tf.cast(low, x.dtype)
    mode = step * tf.clip_by_value(grid.round_half_up(x / step), low, low + levels)
    r = x / step - low - 0.5
    count = soft_uniform_staircase(r, levels, 1.0 / sigma_ratio, WINDOW)
    relaxed = step * (low + count)
    return relaxed + tf.stop_gradient(mode - relaxed)


def drop_mask(count: int, probability: float) -> tf.Tensor:
    """DropBits: ``[count]`` keep flags for the ``count`` lowest-order bits, lowest last.

    Bit ``count - j`` (the j-th lowest) is dropped with probability ``p**j``: the lowest
    with ``p``, each next one only if the one below was dropped, with ``p``.
    """
    if probability <= 0.0 or count == 0:
        return tf.ones([count])
    dropped = tf.math.cumprod(tf.cast(tf.random.uniform([count]) < probability, tf.float32))
    return 1.0 - tf.reverse(dropped, [0])


def hard_concrete_sample(logits: tf.Tensor) -> tf.Tensor:
    """A reparameterised hard-concrete sample in [0, 1] (exact 0 and 1 have mass)."""
    u = tf.random.uniform(tf.shape(logits), 1e-6, 1.0 - 1e-6)
    s = tf.sigmoid((tf.math.log(u) - tf.math.log(1.0 - u) + logits) / HC_BETA)
    return tf.clip_by_value(s * (HC_ZETA - HC_GAMMA) + HC_GAMMA, 0.0, 1.0)


def nonzero_probability(logits: tf.Tensor) -> tf.Tensor:
    """``P(gate > 0)`` of a hard-concrete gate (the L0 probability)."""
    return tf.sigmoid(logits - HC_BETA * math.log(-HC_GAMMA / HC_ZETA))


def ladder_width(keep: np.ndarray | tf.Tensor, lowest: int = MIN_BITS):
    """``lowest +`` the number of consecutive kept gates (keep flags of widths lowest+1..)."""
    if isinstance(keep, np.ndarray):
        return lowest + int(np.cumprod(keep.astype(bool)).sum())
    return lowest + tf.reduce_sum(tf.math.cumprod(tf.cast(keep, tf.float32)))


def _combine(quantized: Sequence[tf.Tensor], gates: tf.Tensor) -> tf.Tensor:
    """``q_0 + sum_i (g_1 ... g_i) (q_i - q_{i-1})``: ``q_i*`` for binary gates."""
    out = quantized[0]
    reach = tf.math.cumprod(gates)
    for i in range(1, len(quantized)):
        out += reach[i - 1] * (quantized[i] - quantized[i - 1])
    return out


def _check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}.")
    return storage


def _check_probability(value: float, what: str) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}.")
    return float(value)


# --- quantizers ---------------------------------------------------------------------------


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
        self.drop_probability = _check_probability(drop_probability, "drop_probability")
        self.learn_bits = bool(learn_bits) and self.bits > MIN_BITS
        self.bit_penalty = float(bit_penalty)
        self.target_weight_kb = None if target_weight_kb is None else float(target_weight_kb)
        self.budget_penalty = float(budget_penalty)
        self.freeze_fraction = float(freeze_fraction)
        self.gate_speed = float(gate_speed)
        self.storage = _check_storage(storage)
        self._state: dict[str, tf.Variable] | None = None
        self.size = 0
        self.tables = 1
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
        self.tables = shape[0] if shape else 1  # per-channel kernels: a table per channel
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
        return kernel_bytes(self.size, width, self.storage, self.tables, self.per_channel_dense)

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
            out = _combine(quantized, self._training_gates(state))
            return tf.reshape(out, tf.shape(inputs)) if per_channel else out
        width = self.inference_width(state)
        scale = step * tf.pow(2.0, self.bits - width)
        qmax = tf.pow(2.0, width - 1.0) - 1.0
        on_grid = scale * tf.clip_by_value(grid.round_half_up(x / scale), -qmax, qmax)
        on_grid = tf.reshape(on_grid, tf.shape(inputs)) if per_channel else on_grid
        return grid.weight_fake_quant(
            on_grid, scale, self.container_bits(), self.per_axis, self.channel_dims
        )

    # --- model-level hooks -----------------------------------------------------------------

    def loss_settings(self) -> tuple:
        return (self.bit_penalty, self.target_weight_kb, self.budget_penalty,
                self.freeze_fraction, self.storage)

    @classmethod
    def callbacks(cls, model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
        """Attaches the bit/budget loss (once) and returns the freeze callback.

        Raises ``ValueError`` for a budget below the all-2-bit model, before training.
        """
        learned = _learned(model)
        if not learned:
            return []
        settings = _settings(learned)
        bit_penalty, target_kb, budget_penalty, fraction, _ = settings
        if target_kb is not None:
            _check_feasible(model, target_kb)
        if not getattr(model, "_tfqnet_srq_loss", False):
            fixed = _fixed_bytes(model)
            model.add_loss(lambda: _width_loss(learned, fixed, settings))
            model._tfqnet_srq_loss = True
            model.train_function = None  # a cached train step would miss the new loss
        freeze_epoch = epochs - round(fraction * epochs)
        if epochs >= 3 and fraction > 0:
            freeze_epoch = min(freeze_epoch, epochs - 1)
        return [BitWidthFreeze(freeze_epoch)]

    @classmethod
    def prepare_export(cls, model: keras.Model, compress: bool | int = False) -> None:
        """Called by :func:`tfqnet.convert` before tracing: refuses learned widths that
        are not frozen (their container would be int8 whatever the width) or that
        exceed the budget.

        ``compress``: the ``compress`` argument of the conversion. A budget met only
        with ``storage="compressed"`` (some kernel counted as lookup-table indices) needs
        ``compress=True``: ``compress=False`` (or an index width, which does not follow
        the learned widths) is refused with :class:`~tfqnet.errors.ConversionError`.
        """
        learned = _learned(model)
        loose = [q for q in learned if q.frozen_width() is None]
        if loose:
            raise ConversionError(
                f"{len(loose)} SRQ layer(s) still learn their bit-width, so their export "
                "container is not fixed. Fine-tune with the callbacks from tfqnet.callbacks "
                "(they freeze the widths by the end of fit) or call "
                "tfqnet.quantizers.srq.freeze_bit_widths(model) before converting."
            )
        report = bit_width_report(model)
        if not learned or report.budget_bytes is None:
            return
        if report.total_bytes > report.budget_bytes:
            raise ConversionError(
                f"the learned bit-widths need {report.total_bytes} weight bytes, over "
                f"the budget of {report.budget_bytes} (target_weight_kb="
                f"{report.budget_bytes / BYTES_PER_KB:g}). Fine-tune with the callbacks "
                "from tfqnet.callbacks (their freeze step fits the widths to the budget) "
                "or call tfqnet.quantizers.srq.freeze_bit_widths(model) first."
            )
        packed = sum(r["container_bytes"] for r in report.rows)
        if compress is True or packed <= report.budget_bytes:
            return
        message = (
            f"the learned bit-widths fit the budget of {report.budget_bytes} weight bytes "
            f"only as TFLM-compressed lookup-table indices ({report.total_bytes} bytes; "
            f"{packed} in INT4/int8 containers): convert with compress=True (the model then "
            "runs on TensorFlow Lite Micro only)."
        )
        raise ConversionError(message + f" Got compress={compress!r}.")


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
        self.drop_probability = _check_probability(
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
        return _combine(quantized, drop_mask(self.bits - lowest, self.drop_probability))


# --- model-level: losses, freezing, the report ----------------------------------------------


def _srq_weight_quantizers(model: keras.Model) -> list[SRQWeightQuantizer]:
    return [q for q in quantizers_of(model) if isinstance(q, SRQWeightQuantizer)]


def _learned(model: keras.Model) -> list[SRQWeightQuantizer]:
    return [q for q in _srq_weight_quantizers(model) if q.learn_bits]


def _settings(learned: Sequence[SRQWeightQuantizer]) -> tuple:
    settings = {q.loss_settings() for q in learned}
    if len(settings) > 1:
        raise ValueError(f"SRQ quantizers of one model disagree on their budget: {settings}")
    return settings.pop()


def _width_loss(learned, fixed_bytes: float, settings: tuple) -> tf.Tensor:
    bit_penalty, target_kb, budget_penalty, _, _ = settings
    loss = tf.constant(0.0)
    if bit_penalty > 0:
        bits = ordered_sum([q.size * q.expected_bits() for q in learned])
        loss += bit_penalty * bits / (8.0 * BYTES_PER_KB)
    if target_kb is not None:
        budget = target_kb * BYTES_PER_KB
        expected = fixed_bytes + ordered_sum([q.expected_bytes() for q in learned])
        loss += budget_penalty * tf.nn.relu(expected - budget) / budget
    return loss


def _fixed_bytes(model: keras.Model) -> int:
    """Weight bytes of the kernels whose width is not learned."""
    return sum(row["weight_bytes"] for row in bit_width_report(model).rows if not row["learned"])


def _check_feasible(model: keras.Model, target_kb: float) -> None:
    learned = _learned(model)
    smallest = _fixed_bytes(model) + sum(q.stored_bytes(MIN_BITS) for q in learned)
    budget = target_kb * BYTES_PER_KB
    if budget < smallest:
        raise ValueError(
            f"target_weight_kb={target_kb:g} ({budget:.0f} bytes) is below the smallest "
            f"model SRQ can export, {smallest} bytes ({smallest / BYTES_PER_KB:.2f} KB: "
            "every learned kernel at 2 bits, stored as packed INT4 (or, with "
            "storage='compressed', as 2-bit indices where smaller), the other kernels at "
            "their fixed widths). Raise the target, or skip/shrink layers."
        )


def widths_the_budget_decides(model: keras.Model) -> list[int] | None:
    """The widths of the learned layers (in :func:`_learned` order) when the budget
    leaves nothing to trade, else None.

    A layer's cap is its widest width that fits the budget with every other learned
    layer at its cheapest width. When all layers fit at their caps at once, no layer's
    bits can pay for another's: narrowing a layer frees bytes that no other layer can
    use (each is at its widest affordable width already), so the caps are the only
    allocation worth training. INT4 storage at a budget of the all-4-bit bytes is the
    common case (every cap 4: a layer's next bytes are its 5th bit, which it can afford
    only if another layer drops below 4 bits, which saves nothing); so is the budget +
    15% in ``benchmarks/bench_srq.py`` (conv1, conv2 and logits in int8, fc1 INT4).
    None when a width is frozen already, with no budget, or with a ``bit_penalty``
    (which prices every bit, so narrower widths can be worth their accuracy).
    """
    learned = _learned(model)
    if not learned or any(q.frozen_width() is not None for q in learned):
        return None
    bit_penalty, target_kb, *_ = _settings(learned)
    if target_kb is None or bit_penalty > 0:
        return None
    budget = target_kb * BYTES_PER_KB
    fixed = _fixed_bytes(model)
    cheapest = [q.stored_bytes(MIN_BITS) for q in learned]  # bytes never fall with width
    floor = fixed + sum(cheapest)
    caps = [
        max(b for b in range(MIN_BITS, q.bits + 1) if floor - low + q.stored_bytes(b) <= budget)
        for q, low in zip(learned, cheapest, strict=True)
    ]
    at_caps = sum(q.stored_bytes(b) for q, b in zip(learned, caps, strict=True))
    return caps if fixed + at_caps <= budget else None


def freeze_bit_widths(model: keras.Model) -> BitWidthReport:
    """Freezes every learned width at its inference value, fitted to the budget.

    A projection of the learned widths onto ``target_weight_kb``, by the layers' bytes
    at each width (:meth:`SRQWeightQuantizer.stored_bytes`). While they exceed the
    budget, one layer steps down to its next width that takes fewer bytes (INT4
    storage: from any int8 width to 4 bits; compressed storage: usually one bit): the
    layer whose gate of the lowest dropped bit has the lowest logit (the bit training
    was closest to dropping). Then room is given back: layers whose next bit costs
    bytes get their wider width back (the gate of the next bit forced on, the ladder
    of kept gates above it), highest logit of that gate first, as wide as the budget
    allows, pass after pass until nothing changes. Widths frozen before are never
    changed (a traced graph may hold their container). Returns the report of the
    frozen widths.
    """
    learned = _learned(model)
    if not learned:
        return bit_width_report(model)
    widths = {id(q): q.width() for q in learned}
    movable = [q for q in learned if q.frozen_width() is None]  # frozen: never changed
    target_kb = _settings(learned)[1]
    if target_kb is not None:
        _check_feasible(model, target_kb)
        budget = target_kb * BYTES_PER_KB
        fixed = _fixed_bytes(model)

        def total() -> int:
            return fixed + sum(q.stored_bytes(widths[id(q)]) for q in learned)

        def gate_logit(q: SRQWeightQuantizer, width: int) -> float:
            """The logit of the gate that keeps bit ``width``."""
            return float(q.gate_logits()[width - MIN_BITS - 1])

        def cheaper(q: SRQWeightQuantizer) -> int | None:
            width = widths[id(q)]
            fewer = [b for b in range(MIN_BITS, width)
                     if q.stored_bytes(b) < q.stored_bytes(width)]
            return max(fewer) if fewer else None

        while total() > budget:
            steps = [(q, cheaper(q)) for q in movable if cheaper(q) is not None]
            if not steps:
                raise ValueError(
                    f"the frozen SRQ widths need {total()} bytes, over the budget of "
                    f"{budget:.0f}; unfreeze them (assign 0 to the srq_frozen_bits weights) "
                    "or raise target_weight_kb."
                )
            q, width = min(steps, key=lambda step: gate_logit(step[0], step[1] + 1))
            widths[id(q)] = width

        # The budget loss pushes every over-budget gate down at once (Adam's steps do not
        # scale with a bit's bytes), so give back the room it over-freed.
        def next_bit_costs(q: SRQWeightQuantizer) -> bool:
            width = widths[id(q)]
            return width < q.bits and q.stored_bytes(width + 1) > q.stored_bytes(width)

        changed = True
        while changed:
            changed = False
            ranked = sorted((q for q in movable if next_bit_costs(q)),
                            key=lambda q: gate_logit(q, widths[id(q)] + 1), reverse=True)
            for q in ranked:
                width = widths[id(q)]
                # the layer has its bits up to width and gets the next one: the ladder
                # from there is the kept gates above it (a gate below the width that
                # training dropped must not stop it)
                keep = q.gate_logits().numpy() > 0.0
                keep[: width + 1 - MIN_BITS] = True
                for wider in range(ladder_width(keep), width, -1):
                    if total() - q.stored_bytes(width) + q.stored_bytes(wider) <= budget:
                        widths[id(q)], changed = wider, True
                        break
    for quantizer in learned:
        quantizer._state["frozen_bits"].assign(float(widths[id(quantizer)]))
    return bit_width_report(model)


class BitWidthFreeze(keras.callbacks.Callback):
    """Freezes the learned widths at the start of epoch ``freeze_epoch`` (absolute index,
    so ``initial_epoch`` resumes correctly) or at the end of training, whichever is first;
    widths the budget alone decides (:func:`widths_the_budget_decides`) when training
    begins. Already frozen widths (``srq_frozen_bits > 0``) stay as they are."""

    def __init__(self, freeze_epoch: int):
        super().__init__()
        self.freeze_epoch = int(freeze_epoch)

    def _freeze(self) -> None:
        learned = _learned(self.model)
        if learned and any(float(q._state["frozen_bits"].numpy()) < 0.5 for q in learned):
            freeze_bit_widths(self.model)

    def on_train_begin(self, logs=None):
        # widths the budget alone decides are frozen before the first step, so that every
        # epoch trains the deployed model (see widths_the_budget_decides)
        decided = widths_the_budget_decides(self.model)
        if decided is not None:
            for quantizer, width in zip(_learned(self.model), decided, strict=True):
                quantizer._state["frozen_bits"].assign(float(width))

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.freeze_epoch:
            self._freeze()

    def on_train_end(self, logs=None):
        self._freeze()


@dataclass
class BitWidthReport:
    """Per-layer widths and kernel bytes of a QAT model (see :func:`bit_width_report`)."""

    rows: list[dict] = field(default_factory=list)
    budget_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(row["weight_bytes"] for row in self.rows)

    def as_dict(self) -> dict[str, dict]:
        """``{layer: {"weight_bits", "max_bits", "learned", "weights", "stored_as",
        "weight_bytes", "container_bytes", "budget_share"}}`` (``container_bytes``: the
        kernel's bytes in its INT4/int8 container, as ``convert`` stores it without
        ``compress``)."""
        return {row["layer"]: {k: v for k, v in row.items() if k != "layer"} for row in self.rows}

    def table(self) -> str:
        """A markdown table, one row per kernel plus the total."""
        lines = ["| layer | bits (max) | learned | weights | stored as | weight bytes | "
                 "share of budget |", "|---|---|---|---|---|---|---|"]

        def share(value):
            return "—" if value is None else f"{100 * value:.1f}%"

        for row in self.rows:
            lines.append(
                f"| {row['layer']} | {row['weight_bits']} ({row['max_bits']}) | "
                f"{'yes' if row['learned'] else 'no'} | {row['weights']} | "
                f"{row['stored_as']} | {row['weight_bytes']} | {share(row['budget_share'])} |"
            )
        budget = "no budget" if self.budget_bytes is None else f"budget {self.budget_bytes}"
        total_share = None if self.budget_bytes is None else self.total_bytes / self.budget_bytes
        lines.append(f"| total ({budget}) | | | {sum(r['weights'] for r in self.rows)} | | "
                     f"{self.total_bytes} | {share(total_share)} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def bit_width_report(model: keras.Model) -> BitWidthReport:
    """The weight width and exported kernel bytes of every weighted layer of a QAT model.

    Learned SRQ widths are read from the variables (frozen, else the gate logits);
    other quantizers report their fixed ``bits``; weighted layers left float (``skip``)
    count as int8 (the converter quantizes them post-training). Bytes are those the
    flatbuffer's kernel tensors take (INT4: two weights a byte), so the total equals
    ``tfqnet.FlatbufferModel.from_bytes(tfqnet.convert(model, x)).weight_bytes()``.
    SRQ kernels with ``storage="compressed"`` count as :func:`storage_form` stores them
    (lookup-table indices where that shrinks the file): an upper bound of
    ``tfqnet.export.compression.stored_weight_bytes(tfqnet.convert(model, x,
    compress=True))``, equal when every table holds all codes of its width.
    """
    rows = []
    targets = set()
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner) not in WEIGHTED_LAYERS:
            continue
        attr = WEIGHTED_LAYERS[type(inner)][0]
        size = int(np.prod(getattr(inner, attr).shape))
        config = getattr(layer, "quantize_config", None)
        quantizer = config.weight_quantizer if isinstance(config, LayerQuantizeConfig) else None
        srq_kernel = isinstance(quantizer, SRQWeightQuantizer)
        learned = srq_kernel and quantizer.learn_bits
        if learned:
            width, targets = quantizer.width(), targets | {quantizer.target_weight_kb}
        else:
            width = getattr(quantizer, "bits", 8)
        dense = grid.is_per_channel_dense(
            len(getattr(inner, attr).shape), bool(getattr(quantizer, "per_axis", False)))
        stored_as, weight_bytes = (
            storage_form(size, width, quantizer.storage, quantizer.tables, dense) if srq_kernel
            else storage_form(size, width, per_channel_dense=dense)
        )
        rows.append({
            "layer": inner.name,
            "weight_bits": width,
            "max_bits": quantizer.bits if learned else width,
            "learned": learned,
            "weights": size,
            "stored_as": stored_as,
            "weight_bytes": weight_bytes,
            "container_bytes": kernel_bytes(size, width, per_channel_dense=dense),
            "budget_share": None,
        })
    targets.discard(None)
    budget = int(min(targets) * BYTES_PER_KB) if targets else None
    if budget:
        for row in rows:
            row["budget_share"] = row["weight_bytes"] / budget
    return BitWidthReport(rows, budget)


# --- the method -----------------------------------------------------------------------------


@register_method
class SRQMethod(QuantizationMethod):
    """``method="srq"``: Semi-Relaxed Quantization with DropBits and learned widths.

    Options (see :mod:`tfqnet.quantizers.srq`): ``drop_probability`` (0.1),
    ``activation_drop_probability`` (0.0), ``bit_penalty`` (0.0, loss per KiB of
    expected weight storage), ``target_weight_kb`` (None), ``budget_penalty`` (1.0),
    ``freeze_fraction`` (0.5), ``gate_speed`` (100.0), ``storage`` ("int4"; or
    "compressed": the budget counts TFLM-compressed kernels, convert with
    ``compress=True``, TFLM only). Widths are learned (between 2 and each layer's
    ``weight_bits``) iff ``bit_penalty > 0`` or ``target_weight_kb`` is set.
    """

    name = "srq"

    def __init__(
        self,
        drop_probability: float = DROP_PROBABILITY,
        activation_drop_probability: float = ACTIVATION_DROP_PROBABILITY,
        bit_penalty: float = 0.0,
        target_weight_kb: float | None = None,
        budget_penalty: float = BUDGET_PENALTY,
        freeze_fraction: float = FREEZE_FRACTION,
        gate_speed: float = GATE_SPEED,
        storage: str = "int4",
    ):
        _check_probability(drop_probability, "drop_probability")
        _check_probability(activation_drop_probability, "activation_drop_probability")
        if not float(bit_penalty) >= 0:
            raise ValueError(f"bit_penalty must be >= 0, got {bit_penalty!r}.")
        if target_weight_kb is not None and not float(target_weight_kb) > 0:
            raise ValueError(f"target_weight_kb must be > 0 (KB of 1024 bytes), "
                             f"got {target_weight_kb!r}.")
        if not float(budget_penalty) > 0:
            raise ValueError(f"budget_penalty must be > 0, got {budget_penalty!r}.")
        _check_probability(freeze_fraction, "freeze_fraction")
        if not float(gate_speed) > 0:
            raise ValueError(f"gate_speed must be > 0, got {gate_speed!r}.")
        self.activation_drop_probability = float(activation_drop_probability)
        self.weight_options = {
            "drop_probability": float(drop_probability),
            "learn_bits": float(bit_penalty) > 0 or target_weight_kb is not None,
            "bit_penalty": float(bit_penalty),
            "target_weight_kb": None if target_weight_kb is None else float(target_weight_kb),
            "budget_penalty": float(budget_penalty),
            "freeze_fraction": float(freeze_fraction),
            "gate_speed": float(gate_speed),
            "storage": _check_storage(storage),
        }

    @property
    def per_channel_dense(self) -> bool:
        """Compressed storage quantizes Dense kernels per output channel: they are
        stored as int8 or as lookup-table indices, never INT4, so nothing holds them to
        one scale, and a 3-bit Dense kernel loses less with a scale per channel."""
        return self.weight_options["storage"] == "compressed"

    def weight_quantizer(self, bits, per_axis, channel_dims):
        return SRQWeightQuantizer(
            bits, per_axis=per_axis, channel_dims=channel_dims, **self.weight_options
        )

    def activation_quantizer(self, bits):
        return SRQActivationQuantizer(bits, self.activation_drop_probability)
