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
  of ``E``. ``E`` is evaluated by :func:`tfqnet.quantizers.staircase.soft_uniform_staircase`
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
``activation_drop_probability`` (default **0.0**). Why: 0.1 trains the deployed
full-width grid on 90% of the steps and shows a coarser one on the rest (the
regulariser); activations 0, since a coarsened activation grid no longer holds the zero
point exactly. Measurements: ``docs/defaults.md``.

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
  a ``b``-bit kernel (``b <= 7``) as ``b``-bit indices into one value table of ``2**b - 1``
  int8 entries (every code of the grid: TFLM reads one table for every channel) plus a
  16-byte decode header, where that beats its
  INT4/int8 container by more than a bound on the file overhead of a compressed filter
  (:func:`tfqnet.tflite_format.storage_form`; ``compress`` keeps a filter only if the
  file shrinks). Bits
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
  Dense kernel is int8 or indices, :func:`tfqnet.tflite_format.weight_container_bits`), and a
  3-bit Dense kernel loses less with a scale per channel. The converter cannot
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
Why half the epochs frozen: the deployed model is the frozen one, so the later epochs
train exactly it, and half the epochs are left to learn the widths (chosen on a
validation split: ``docs/defaults.md``).

**Widths the budget decides.** When no layer's bits can pay for another's
(:func:`widths_the_budget_decides`: every layer fits at once at its widest width
affordable with all others at their cheapest, and ``bit_penalty`` is 0), there is
nothing to learn, and the callback freezes those widths when training begins: every
epoch trains the deployed model. INT4 storage at the all-4-bit bytes is such a budget
(all 4 bits); ``freeze_fraction`` matters only where the budget leaves a trade.

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

:func:`tfqnet.bit_width_report` (:mod:`tfqnet.quantizers.report`) gives the per-layer
table (learned bits, weight bytes, share of the budget). Activations keep their
configured width (8 bits by default and at the model output); only weight widths are
learned.

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

The package: :mod:`~tfqnet.quantizers.srq.relaxed` (the quantizer and gate math),
:mod:`~tfqnet.quantizers.srq.quantizers` (the Keras quantizers),
:mod:`~tfqnet.quantizers.srq.allocator` (the budget allocation, plain Python),
:mod:`~tfqnet.quantizers.srq.freeze` (losses, freezing, the export check),
:mod:`~tfqnet.quantizers.srq.method` (``method="srq"``; importing this package
registers it); the report is :mod:`tfqnet.quantizers.report`.
"""

from tfqnet.quantizers.report import BitWidthReport, bit_width_report
from tfqnet.quantizers.srq.allocator import BYTES_PER_KB, MIN_BITS
from tfqnet.quantizers.srq.freeze import (
    BitWidthFreeze,
    _learned,
    freeze_bit_widths,
    widths_the_budget_decides,
)
from tfqnet.quantizers.srq.method import SRQMethod
from tfqnet.quantizers.srq.quantizers import (
    ACTIVATION_DROP_PROBABILITY,
    BUDGET_PENALTY,
    DROP_PROBABILITY,
    FREEZE_FRACTION,
    GATE_INIT_LOGIT,
    GATE_SPEED,
    SRQActivationQuantizer,
    SRQWeightQuantizer,
    _SRQQuantizer,
)
from tfqnet.quantizers.srq.relaxed import (
    HC_BETA,
    HC_GAMMA,
    HC_ZETA,
    MAX_DROPPED_BITS,
    SIGMA_RATIO_INIT,
    SIGMA_RATIO_MAX,
    SIGMA_RATIO_MIN,
    WINDOW,
    drop_mask,
    hard_concrete_sample,
    ladder_width,
    nonzero_probability,
    semi_relaxed_quantize,
)

__all__ = [
    "ACTIVATION_DROP_PROBABILITY", "BUDGET_PENALTY", "BYTES_PER_KB", "DROP_PROBABILITY",
    "FREEZE_FRACTION", "GATE_INIT_LOGIT", "GATE_SPEED", "HC_BETA", "HC_GAMMA", "HC_ZETA",
    "MAX_DROPPED_BITS", "MIN_BITS", "SIGMA_RATIO_INIT", "SIGMA_RATIO_MAX", "SIGMA_RATIO_MIN",
    "WINDOW", "BitWidthFreeze", "BitWidthReport", "SRQActivationQuantizer", "SRQMethod",
    "SRQWeightQuantizer", "_SRQQuantizer", "_learned", "bit_width_report", "drop_mask",
    "freeze_bit_widths", "hard_concrete_sample", "ladder_width", "nonzero_probability",
    "semi_relaxed_quantize", "widths_the_budget_decides",
]
