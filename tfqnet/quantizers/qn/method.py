"""``method="qn"``: the QN quantizers of each layer, from the method's options."""

from __future__ import annotations

from collections.abc import Sequence

from tfqnet._keras import keras
from tfqnet.core.layer_kinds import weighted_layer_names
from tfqnet.core.method import QuantizationMethod, register_method
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
    weighted layer (Conv/Dense, in ``model.layers`` order) at ``bits`` weights and
    activations; the paper left them float, a microcontroller has no float.

    ``quantize_model(m, "qn", 2, 8, overrides=first_last_overrides(m))``.
    """
    weighted = weighted_layer_names(model)
    if not weighted:
        return {}
    ends = dict.fromkeys([weighted[0], weighted[-1]])
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
