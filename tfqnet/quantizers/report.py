"""The bit-width report: per weighted layer, its kernel's width and exported bytes, for
a QAT model of any method.

It reads each weight quantizer through the report protocol of
:class:`tfqnet.core.quantizer.Quantizer` (``kernel_bits``, ``learns_width``,
``max_kernel_bits``, ``storage``, ``tables``, ``weight_budget_bytes``) and counts bytes
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

    Widths are the quantizers' :meth:`~tfqnet.core.quantizer.Quantizer.kernel_bits`
    (learned SRQ widths read from the variables: frozen, else the gate logits; other
    quantizers their fixed ``bits``); weighted layers left float (``skip``) count as
    int8 (the converter quantizes them post-training). Bytes are those the flatbuffer's
    kernel tensors take (INT4: two weights a byte), so the total equals
    ``tfqnet.FlatbufferModel.from_bytes(tfqnet.convert(model, x)).weight_bytes()``.
    Kernels with ``storage="compressed"`` (SRQ) count as
    :func:`tfqnet.tflite_format.storage_form` stores them (lookup-table indices where
    that shrinks the file): an upper bound of
    ``tfqnet.export.compression.stored_weight_bytes(tfqnet.convert(model, x,
    compress=True))``, equal when every table holds all codes of its width. The budget
    is the smallest ``weight_budget_bytes`` of a learned width.
    """
    rows = []
    budgets = set()
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if type(inner) not in WEIGHTED_LAYERS:
            continue
        attr = WEIGHTED_LAYERS[type(inner)][0]
        size = int(np.prod(getattr(inner, attr).shape))
        config = getattr(layer, "quantize_config", None)
        quantizer = config.weight_quantizer if isinstance(config, LayerQuantizeConfig) else None
        if quantizer is None:  # left float: the converter stores it in int8
            width = max_bits = 8
            learned, storage, tables = False, "int4", 1
        else:
            width, max_bits = quantizer.kernel_bits(), quantizer.max_kernel_bits()
            learned, storage, tables = (quantizer.learns_width, quantizer.storage,
                                        quantizer.tables)
            budgets.add(quantizer.weight_budget_bytes())
        dense = grid.is_per_channel_dense(
            len(getattr(inner, attr).shape), bool(getattr(quantizer, "per_axis", False)))
        stored_as, weight_bytes = storage_form(size, width, storage, tables, dense)
        rows.append({
            "layer": inner.name,
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
