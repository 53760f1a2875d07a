"""The bit-width report: per weighted layer, its kernel's width and exported bytes, for
a QAT model of any method.

It reads each weight quantizer through the report protocol of
:class:`tfqnet.core.quantizer.Quantizer` (``kernel_bits``, ``learns_width``,
``max_kernel_bits``, ``storage``, ``channels``, ``weight_budget_bytes``) and counts bytes
by the rules of :mod:`tfqnet.tflite_format`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import LayerQuantizeConfig
from tfqnet.core.layer_kinds import WEIGHTED_LAYERS
from tfqnet.tflite_format import kernel_bytes, storage_form


@dataclass
class BitWidthReport:
    """Per-layer widths and kernel bytes of a QAT model (see :func:`bit_width_report`)."""

    rows: list[dict] = field(default_factory=list)
    budget_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(row["weight_bytes"] for row in self.rows)

    def as_dict(self) -> dict[str, dict]:
        """``{layer: {"bits_from", "weight_bits", "max_bits", "learned", "weights", "stored_as",
        "weight_bytes", "container_bytes", "budget_share"}}`` (``container_bytes``: the
        kernel's bytes in its INT4/int8 container, as ``convert`` stores it without
        ``compress``)."""
        return {row["layer"]: {k: v for k, v in row.items() if k != "layer"} for row in self.rows}

    def table(self) -> str:
        """A markdown table, one row per kernel plus the total."""
        lines = ["| layer | bits (max) | set by | learned | weights | stored as | weight bytes | "
                 "share of budget |", "|---|---|---|---|---|---|---|---|"]

        def share(value):
            return "—" if value is None else f"{100 * value:.1f}%"

        for row in self.rows:
            lines.append(
                f"| {row['layer']} | {row['weight_bits']} ({row['max_bits']}) | "
                f"{row['bits_from']} | {'yes' if row['learned'] else 'no'} | {row['weights']} | "
                f"{row['stored_as']} | {row['weight_bytes']} | {share(row['budget_share'])} |"
            )
        budget = "no budget" if self.budget_bytes is None else f"budget {self.budget_bytes}"
        total_share = None if self.budget_bytes is None else self.total_bytes / self.budget_bytes
        lines.append(f"| total ({budget}) | | | | {sum(r['weights'] for r in self.rows)} | | "
                     f"{self.total_bytes} | {share(total_share)} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def bit_width_report(model: keras.Model) -> BitWidthReport:
    """The weight width and exported kernel bytes of every weighted layer of a QAT model.

    Widths are the quantizers' :meth:`~tfqnet.core.quantizer.Quantizer.kernel_bits`
    (learned SRQ widths read from the variables: frozen, else the gate logits; other
    quantizers their fixed ``bits``); weighted layers left float (``skip``) count as
    int8 (the converter quantizes them post-training). Bytes are those the flatbuffer's
    kernel tensors take as ``tfqnet.convert(model, x)`` stores them: INT4 two weights a
    byte, int8 one; fixed-width kernels below 4 bits (``compress="auto"``: one value
    table per kernel) and those with ``storage="compressed"`` (SRQ) as
    :func:`tfqnet.tflite_format.storage_form` stores them (lookup-table indices where
    that shrinks the file). With no compressed kernel
    the total equals ``FlatbufferModel.from_bytes(flatbuffer).weight_bytes()``, else it
    bounds ``tfqnet.export.compression.stored_weight_bytes(flatbuffer)`` from above,
    equal when every table holds all codes of its width. ``bits_from`` says what set a
    layer's bits (``"default"``, ``"override"``, the layer policy's reason, ``"skip"``).
    The budget is the smallest ``weight_budget_bytes`` of a learned width.
    """
    rows = []
    budgets = set()
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner) not in WEIGHTED_LAYERS:
            continue
        attr, _ = WEIGHTED_LAYERS[type(inner)]
        shape = tuple(getattr(inner, attr).shape)
        size = int(np.prod(shape))
        config = getattr(layer, "quantize_config", None)
        quantizer = config.weight_quantizer if isinstance(config, LayerQuantizeConfig) else None
        per_axis = bool(getattr(quantizer, "per_axis", False))
        if quantizer is None:  # left float: the converter stores it in int8
            width = max_bits = 8
            learned, storage, channels, bits_from = False, "int4", 1, "skip"
        else:
            width, max_bits = quantizer.kernel_bits(), quantizer.max_kernel_bits()
            learned, storage = quantizer.learns_width, quantizer.export_storage()
            channels = quantizer.channels if quantizer.storage == "compressed" else 1
            bits_from = config.bits_from
            budgets.add(quantizer.weight_budget_bytes())
        dense = grid.is_per_channel_dense(len(shape), per_axis)
        # a kernel's codes at its width all fit one table, and convert stores one
        # table wherever that is not larger than a table per channel
        stored_as, weight_bytes = storage_form(size, width, storage, per_channel_dense=dense,
                                                channels=channels)
        rows.append({
            "layer": inner.name,
            "bits_from": bits_from,
            "weight_bits": width,
            "max_bits": max_bits,
            "learned": learned,
            "weights": size,
            "stored_as": stored_as,
            "weight_bytes": weight_bytes,
            "container_bytes": kernel_bytes(size, width, per_channel_dense=dense),
            "budget_share": None,
        })
    budgets.discard(None)
    budget = int(min(budgets)) if budgets else None
    if budget:
        for row in rows:
            row["budget_share"] = row["weight_bytes"] / budget
    return BitWidthReport(rows, budget)
