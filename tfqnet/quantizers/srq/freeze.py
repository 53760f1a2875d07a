"""SRQ at model level: the width/budget loss, freezing the learned widths onto the
budget (:func:`freeze_bit_widths`, :class:`BitWidthFreeze`), the widths a budget alone
decides, and the export check.

The learned layers are the quantizers that learn their width
(:attr:`tfqnet.core.quantizer.Quantizer.learns_width`: SRQ weight quantizers with
``learn_bits``); the allocation itself is :mod:`tfqnet.quantizers.srq.allocator`, over
the bytes each reports per width (``stored_bytes``) and its gate logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfqnet._keras import keras
from tfqnet.core.config import quantizers_of
from tfqnet.core.quantizer import Quantizer, ordered_sum
from tfqnet.errors import ConversionError
from tfqnet.quantizers.report import BitWidthReport, bit_width_report
from tfqnet.quantizers.srq import allocator
from tfqnet.quantizers.srq.allocator import BYTES_PER_KB, MIN_BITS


def _learned(model: keras.Model) -> list[Quantizer]:
    """The quantizers of ``model`` that learn their width, in model order."""
    return [q for q in quantizers_of(model) if q.learns_width]


def _settings(learned: Sequence[Quantizer]) -> tuple:
    settings = {q.loss_settings() for q in learned}
    if len(settings) > 1:
        raise ValueError(f"SRQ quantizers of one model disagree on their budget: {settings}")
    return settings.pop()


def _costs(learned: Sequence[Quantizer]) -> list[list[int]]:
    """Each layer's bytes at widths ``MIN_BITS..bits``."""
    return [[q.stored_bytes(b) for b in range(MIN_BITS, q.bits + 1)] for q in learned]


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
    """Raises ``ValueError`` for a budget below the all-2-bit model."""
    allocator.check_feasible(_fixed_bytes(model), _costs(_learned(model)), target_kb)


def widths_the_budget_decides(model: keras.Model) -> list[int] | None:
    """The widths of the learned layers (in :func:`_learned` order) when the budget
    leaves nothing to trade, else None.

    A layer's cap is its widest width that fits the budget with every other learned
    layer at its cheapest width. When all layers fit at their caps at once, no layer's
    bits can pay for another's: narrowing a layer frees bytes that no other layer can
    use (each is at its widest affordable width already), so the caps are the only
    allocation worth training (:func:`tfqnet.quantizers.srq.allocator.decided_widths`).
    INT4 storage at a budget of the all-4-bit bytes is the common case (every cap 4: a
    layer's next bytes are its 5th bit, which it can afford only if another layer drops
    below 4 bits, which saves nothing). None when a width is frozen already, with no
    budget, or with a ``bit_penalty`` (which prices every bit, so narrower widths can be
    worth their accuracy).
    """
    learned = _learned(model)
    if not learned or any(q.frozen_width() is not None for q in learned):
        return None
    bit_penalty, target_kb, *_ = _settings(learned)
    if target_kb is None or bit_penalty > 0:
        return None
    return allocator.decided_widths(
        _fixed_bytes(model), _costs(learned), target_kb * BYTES_PER_KB)


def freeze_bit_widths(model: keras.Model) -> BitWidthReport:
    """Freezes every learned width at its inference value, fitted to the budget.

    A projection of the learned widths onto ``target_weight_kb``, by the layers' bytes
    at each width (:meth:`SRQWeightQuantizer.stored_bytes`;
    :func:`tfqnet.quantizers.srq.allocator.project`). While they exceed the budget, one
    layer steps down to its next width that takes fewer bytes (INT4 storage: from any
    int8 width to 4 bits; compressed storage: usually one bit): the layer whose gate of
    the lowest dropped bit has the lowest logit (the bit training was closest to
    dropping). Then room is given back: layers whose next bit costs bytes get their
    wider width back (the gate of the next bit forced on, the ladder of kept gates above
    it), highest logit of that gate first, as wide as the budget allows, pass after pass
    until nothing changes. Widths frozen before are never changed (a traced graph may
    hold their container). Returns the report of the frozen widths.
    """
    learned = _learned(model)
    if not learned:
        return bit_width_report(model)
    widths = [q.width() for q in learned]
    target_kb = _settings(learned)[1]
    if target_kb is not None:
        _check_feasible(model, target_kb)
        widths = allocator.project(
            widths,
            _costs(learned),
            [[float(v) for v in q.gate_logits().numpy()] for q in learned],
            [q.frozen_width() is None for q in learned],  # frozen: never changed
            _fixed_bytes(model),
            target_kb * BYTES_PER_KB,
        )
    for quantizer, width in zip(learned, widths, strict=True):
        quantizer._state["frozen_bits"].assign(float(width))
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


def training_callbacks(model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
    """Attaches the bit/budget loss to ``model`` (once) and returns the freeze callback
    (:meth:`SRQWeightQuantizer.callbacks`).

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


def check_export(model: keras.Model, compress: bool | int = False) -> None:
    """Refuses (:class:`~tfqnet.errors.ConversionError`) learned widths that are not
    frozen (their container would be int8 whatever the width) or that exceed the budget
    (:meth:`SRQWeightQuantizer.prepare_export`).

    ``compress``: the ``compress`` argument of the conversion. A budget met only with
    ``storage="compressed"`` (some kernel counted as lookup-table indices) needs
    ``compress=True``: ``compress=False`` (or an index width, which does not follow the
    learned widths) is refused.
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
