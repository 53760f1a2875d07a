"""``method="qn"``: the QN quantizers of each layer, from the method's options."""

from __future__ import annotations

from collections.abc import Sequence

from tfqnet._keras import keras
from tfqnet.core.method import QuantizationMethod, register_method
from tfqnet.core.policy import policy_layers
from tfqnet.quantizers.qn.levels import parse_levels, required_bits, uniform_levels
from tfqnet.quantizers.qn.quantizers import (
    HARD_FRACTION,
    QNActivationQuantizer,
    QNWeightQuantizer,
    _check_alpha_init,
    _check_schedule,
    _check_ternary_threshold,
)


def first_last_overrides(model: keras.Model, bits: int = 8) -> dict[str, dict[str, int]]:
    """``overrides`` for :func:`tfqnet.quantize_model` keeping the first and the last
    weighted layer (Conv/Dense, in ``model.layers`` order) at ``bits`` weights *and*
    activations, as the paper kept them float. (``quantize_model``'s default layer
    policy, :mod:`tfqnet.core.policy`, keeps their weights at 8 bits below 4-bit
    models; this also widens their activations.)

    ``quantize_model(m, "qn", 2, 8, overrides=first_last_overrides(m))``.
    """
    ends = policy_layers(model, "first_last", bits)
    return {name: {"weight_bits": bits, "activation_bits": bits} for name in ends}


@register_method
class QNMethod(QuantizationMethod):
    """``method="qn"``: Quantization Networks (options in :mod:`tfqnet.quantizers.qn`)."""

    name = "qn"

    def __init__(
        self,
        levels: str | int | Sequence[int] | None = None,
        learn_thresholds: bool = False,
        learn_activation_thresholds: bool = False,
        temperature_step: float = 10.0,
        max_temperature: float = 2000.0,
        ternary_threshold: float | None = None,
        alpha_init: str = "fit",
        hard_fraction: float = HARD_FRACTION,
    ):
        self.levels = None if levels is None else parse_levels(levels)
        self.ternary_threshold = _check_ternary_threshold(ternary_threshold)
        self.alpha_init = _check_alpha_init(alpha_init)
        self.learn_thresholds = bool(learn_thresholds)
        self.learn_activation_thresholds = bool(learn_activation_thresholds)
        self.schedule = {
            "temperature_step": temperature_step,
            "max_temperature": max_temperature,
            "hard_fraction": hard_fraction,
        }
        _check_schedule(temperature_step, max_temperature, hard_fraction)  # now, not per layer

    def resolve_weight_bits(self, requested: int | None) -> int:
        """A level set decides the bits: ``required_bits(levels)`` for None. With an
        explicit 8 the set would reach no layer (8-bit layers use the uniform set), and
        fewer bits than the set needs cannot hold it: both raise."""
        if self.levels is None:
            return super().resolve_weight_bits(requested)
        needed = required_bits(self.levels)
        if requested is None:
            return needed
        if requested == 8:
            raise ValueError(
                f"QN levels {list(self.levels)} with weight_bits=8: 8-bit layers use the "
                f"uniform 8-bit set, so the level set would be dropped. Leave weight_bits "
                f"out (the set needs {needed} bits) or drop levels."
            )
        if requested < needed:
            raise ValueError(
                f"QN levels {list(self.levels)} need weight_bits >= {needed}, got {requested}."
            )
        return requested

    def weight_levels(self, bits: int) -> tuple[int, ...]:
        """The level set of a layer with ``bits`` weight bits (see the module docstring)."""
        if self.levels is None or bits == 8:
            return uniform_levels(bits)
        if required_bits(self.levels) > bits:
            raise ValueError(
                f"QN levels {list(self.levels)} need weight_bits >= "
                f"{required_bits(self.levels)}, got {bits}."
            )
        return self.levels

    def weight_quantizer(self, bits, per_axis, channel_dims):
        return QNWeightQuantizer(
            self.weight_levels(bits),
            per_axis=per_axis,
            channel_dims=channel_dims,
            learn_thresholds=self.learn_thresholds,
            ternary_threshold=self.ternary_threshold,
            alpha_init=self.alpha_init,
            **self.schedule,
        )

    def activation_quantizer(self, bits):
        return QNActivationQuantizer(
            bits, learn_thresholds=self.learn_activation_thresholds, **self.schedule
        )
