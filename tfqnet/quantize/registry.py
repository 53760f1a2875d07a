"""Which layers tfqnet quantizes, and how: the TFMOT QuantizeRegistry of tfqnet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import tensorflow_model_optimization as tfmot

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import LayerQuantizeConfig, pass_through_config
from tfqnet.core.layer_kinds import (
    CUSTOM_LAYER_CONFIGS,
    FUSED_ACTIVATIONS,
    OUTPUT_QUANTIZED_LAYERS,
    PASS_THROUGH_LAYERS,
    PER_TENSOR_LAYERS,
    WEIGHTED_LAYERS,
    activation_name,
    relu_kind,
)
from tfqnet.core.method import QuantizationMethod
from tfqnet.core.policy import PolicyLayer

L = keras.layers

_ACTIVATION_HINT = (
    "tfqnet quantizes linear/relu/relu6 layer activations (fused into the TFLite op); "
    "for softmax put it in a separate `Softmax()` layer or train on logits "
    "(from_logits=True)."
)


def unsupported_reason(layer: keras.layers.Layer) -> str | None:
    """Why tfqnet cannot quantize ``layer`` (None when it can)."""
    if isinstance(layer, keras.Model):
        return (
            "it is a nested model (a model used as a layer); flatten it into the outer "
            "model, e.g. build the outer model on `inner.output` instead of `inner(x)`"
        )
    for cls in WEIGHTED_LAYERS:
        if type(layer) is cls:
            if activation_name(layer) not in FUSED_ACTIVATIONS:
                return f"its activation {activation_name(layer)!r} is not supported. " + (
                    _ACTIVATION_HINT
                )
            return None
    if isinstance(layer, L.Activation):
        if activation_name(layer) in ("relu", "relu6", "linear", "softmax"):
            return None
        return f"activation {activation_name(layer)!r} is not supported. " + _ACTIVATION_HINT
    if isinstance(layer, L.ReLU):
        return None if relu_kind(layer) else "only plain ReLU and ReLU6 (max_value=6) fuse"
    if isinstance(layer, L.BatchNormalization):
        return (
            "a BatchNormalization is folded only directly after a Conv1D/Conv2D/"
            "DepthwiseConv2D/Dense whose only consumer it is"
        )
    if type(layer) in OUTPUT_QUANTIZED_LAYERS or type(layer) in PASS_THROUGH_LAYERS:
        return None
    if type(layer) in CUSTOM_LAYER_CONFIGS:
        return None
    if not type(layer).__module__.startswith("tf_keras."):
        return (
            f"{type(layer).__name__} is a custom layer, for which tfqnet has no quantization "
            "rule; give it one with tfqnet.core.layer_kinds.register_layer_config("
            f"{type(layer).__name__}, config_fn) (see tfqnet.layers.PixelEmbedding)"
        )
    return f"tfqnet has no quantization rule for {type(layer).__name__} layers"


def skip_refused(layer: keras.layers.Layer) -> str | None:
    """Why ``skip=[layer.name]`` would not get ``layer`` to a flatbuffer either, and
    what does (None when leaving it float and quantizing it post-training works)."""
    if isinstance(layer, L.Lambda):
        return (
            "skip= does not help here: quantize_model clones the model, and tf_keras' safe "
            "mode refuses to rebuild a Lambda's Python function. Move the computation into "
            "a keras.layers.Layer subclass (then pass skip=["
            f"{layer.name!r}], or give it a rule with "
            "tfqnet.core.layer_kinds.register_layer_config) or into built-in layers"
        )
    if isinstance(layer, L.RNN | L.Bidirectional):
        return (
            "tfqnet cannot deploy recurrent layers, and skip= does not help: TFLite "
            "converts them to TensorList ops (TensorListReserve) that its int8 conversion "
            "and TFLite Micro do not support. Replace it, e.g. with Conv1D layers over "
            "the time axis"
        )
    return None


#: the keys of one layer's entry in ``quantize_model(overrides=...)``
OVERRIDE_KEYS = ("weight_bits", "activation_bits")
_OVERRIDES_FORM = "{'conv1': {'weight_bits': 8}} (keys: weight_bits, activation_bits)"


def check_overrides(overrides: object) -> dict[str, dict[str, int]]:
    """``overrides`` as ``{layer name: {key: bits}}`` (None: no overrides), each key one
    of :data:`OVERRIDE_KEYS` and each value valid bits; else a one-line TypeError or
    ValueError naming the entry, the value and the accepted form (a misspelled key
    would otherwise be ignored)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict of layer name -> bits, like "
                        f"{_OVERRIDES_FORM}; got {type(overrides).__name__} {overrides!r:.80}")
    checked = {}
    for name, bits in overrides.items():
        if not isinstance(name, str):
            raise TypeError(f"overrides are keyed by layer name (a string), got {name!r}; "
                            f"give e.g. {_OVERRIDES_FORM}")
        if not isinstance(bits, Mapping) or not bits:
            raise TypeError(f"overrides[{name!r}] must be a non-empty dict of bits, like "
                            f"{{'weight_bits': 8}}; got {bits!r:.80}")
        unknown = [key for key in bits if key not in OVERRIDE_KEYS]
        if unknown:
            raise ValueError(f"overrides[{name!r}] has unknown key {unknown[0]!r}; the keys "
                             f"are {', '.join(OVERRIDE_KEYS)}, e.g. {{'weight_bits': 8}}")
        checked[name] = {
            key: grid.check_bits(value, f"{key} of layer {name!r}",
                                 grid.ACTIVATION_BITS if key == "activation_bits"
                                 else grid.WEIGHT_BITS)
            for key, value in bits.items()}
    return checked


@dataclass(frozen=True)
class LayerBits:
    weight_bits: int
    activation_bits: int


class QuantizeRegistry(tfmot.quantization.keras.QuantizeRegistry):
    """Maps each supported layer to a :class:`LayerQuantizeConfig` of ``method``.

    Bits come from ``weight_bits``/``activation_bits``, except that layers named in
    ``overrides`` use theirs, layers named in ``policy`` (from
    :func:`tfqnet.core.policy.policy_layers`) get the policy's weight bits unless
    overridden, and the model's output layers keep 8-bit outputs (the logits a
    user reads should not lose resolution to a low-bit activation grid).
    Dense and Conv1D kernels are quantized per tensor (see ``PER_TENSOR_LAYERS``;
    Dense per channel if ``method.per_channel_dense``), Conv2D and DepthwiseConv2D
    kernels per output channel.
    """

    def __init__(
        self,
        method: QuantizationMethod,
        weight_bits: int,
        activation_bits: int,
        overrides: Mapping[str, Mapping[str, int]] | None = None,
        output_layers: frozenset[str] = frozenset(),
        no_output_grid: frozenset[str] = frozenset(),
        policy: Mapping[str, PolicyLayer] | None = None,
    ):
        self.method = method
        self.default_bits = LayerBits(weight_bits, activation_bits)
        self.overrides = check_overrides(overrides)
        self.output_layers = output_layers
        self.no_output_grid = no_output_grid
        self.policy = dict(policy or {})

    def bits_from(self, layer_name: str) -> str:
        """What chose the layer's weight bits: "override", the policy's reason, or
        "default"."""
        if "weight_bits" in self.overrides.get(layer_name, {}):
            return "override"
        return self.policy[layer_name].why if layer_name in self.policy else "default"

    def bits_for(self, layer_name: str) -> LayerBits:
        override = self.overrides.get(layer_name, {})
        weight_default = self.policy[layer_name].weight_bits if layer_name in self.policy else (
            self.default_bits.weight_bits
        )
        activation_default = 8 if layer_name in self.output_layers else (
            self.default_bits.activation_bits
        )
        return LayerBits(
            grid.check_bits(
                override.get("weight_bits", weight_default),
                f"weight_bits of layer {layer_name!r}",
            ),
            grid.check_bits(
                override.get("activation_bits", activation_default),
                f"activation_bits of layer {layer_name!r}",
                grid.ACTIVATION_BITS,
            ),
        )

    def supports(self, layer) -> bool:
        return unsupported_reason(layer) is None and not isinstance(layer, L.BatchNormalization)

    def get_quantize_config(self, layer) -> LayerQuantizeConfig:
        reason = unsupported_reason(layer)
        if reason is not None:
            raise ValueError(f"layer {layer.name!r}: {reason}")
        bits = self.bits_for(layer.name)
        activation = self.method.activation_quantizer(bits.activation_bits)
        own_grid = layer.name not in self.no_output_grid
        layer_type = type(layer)
        if layer_type in CUSTOM_LAYER_CONFIGS:
            return CUSTOM_LAYER_CONFIGS[layer_type](layer, self)
        if layer_type in WEIGHTED_LAYERS:
            attr, channel_dims = WEIGHTED_LAYERS[layer_type]
            per_axis = layer_type not in PER_TENSOR_LAYERS or (
                layer_type is L.Dense and self.method.per_channel_dense
            )
            return LayerQuantizeConfig(
                weight_attrs=[attr],
                weight_quantizer=self.method.weight_quantizer(
                    bits.weight_bits, per_axis=per_axis, channel_dims=channel_dims
                ),
                activation_quantizer=activation,
                quantize_activation=own_grid,
                bits_from=self.bits_from(layer.name),
            )
        if layer_type in OUTPUT_QUANTIZED_LAYERS or relu_kind(layer):
            return LayerQuantizeConfig(activation_quantizer=activation, quantize_output=own_grid)
        return pass_through_config()
