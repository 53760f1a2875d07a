"""``method="srq"``: the registered quantization method (options, per-layer quantizers)."""

from __future__ import annotations

from tfqnet.core.method import QuantizationMethod, register_method
from tfqnet.quantizers.srq.quantizers import (
    ACTIVATION_DROP_PROBABILITY,
    BUDGET_PENALTY,
    DROP_PROBABILITY,
    FREEZE_FRACTION,
    GATE_SPEED,
    SRQActivationQuantizer,
    SRQWeightQuantizer,
    check_probability,
    check_storage,
)


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
        check_probability(drop_probability, "drop_probability")
        check_probability(activation_drop_probability, "activation_drop_probability")
        if not float(bit_penalty) >= 0:
            raise ValueError(f"bit_penalty must be >= 0, got {bit_penalty!r}.")
        if target_weight_kb is not None and not float(target_weight_kb) > 0:
            raise ValueError(f"target_weight_kb must be > 0 (KB of 1024 bytes), "
                             f"got {target_weight_kb!r}.")
        if not float(budget_penalty) > 0:
            raise ValueError(f"budget_penalty must be > 0, got {budget_penalty!r}.")
        check_probability(freeze_fraction, "freeze_fraction")
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
            "storage": check_storage(storage),
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
