"""TFMOT QuantizeConfigs: which tensors of a layer get which tfqnet quantizer."""

from __future__ import annotations

import tensorflow_model_optimization as tfmot

from tfqnet._keras import keras
from tfqnet.core.quantizer import Quantizer, register

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


# Quantizers are stored by their registered name ("tfqnet>ClassName") and resolved from
# Keras' registry, the same way in the h5, SavedModel and in-memory clone paths
# (Keras' own serializer writes a different format in each).
def _serialize(quantizer: Quantizer | None):
    if quantizer is None:
        return None
    return {
        "class_name": keras.saving.get_registered_name(type(quantizer)),
        "config": quantizer.get_config(),
    }


def _deserialize(config):
    if config is None:
        return None
    cls = keras.saving.get_registered_object(config["class_name"])
    if cls is None:
        raise ValueError(
            f"unknown quantizer {config['class_name']!r}: import the module that defines it "
            "(tfqnet's own are registered by `import tfqnet`)."
        )
    return cls.from_config(config["config"])


@register
class LayerQuantizeConfig(_QuantizeConfig):
    """Quantizes named weight attributes, the fused activation and/or the output.

    ``weight_attrs`` (e.g. ``["kernel"]``) get ``weight_quantizer``; when
    ``quantize_activation`` the layer's ``activation`` attribute is wrapped so its
    result gets ``activation_quantizer``; when ``quantize_output`` the layer's output
    does (layers without an activation attribute: Add, pooling, ReLU layers).
    A config with nothing to quantize is a pass-through (Flatten, MaxPool, ...).
    ``bits_from`` says what chose the layer's bits (``"default"``, ``"override"``, or
    the layer policy's reason), for the bit-width report.
    """

    def __init__(
        self,
        weight_attrs: list[str] | None = None,
        weight_quantizer: Quantizer | None = None,
        activation_quantizer: Quantizer | None = None,
        quantize_activation: bool = False,
        quantize_output: bool = False,
        bits_from: str = "default",
    ):
        self.weight_attrs = list(weight_attrs or [])
        self.weight_quantizer = weight_quantizer
        self.activation_quantizer = activation_quantizer
        self.quantize_activation = quantize_activation
        self.quantize_output = quantize_output
        self.bits_from = bits_from

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, attr), self.weight_quantizer) for attr in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        if not self.quantize_activation:
            return []
        return [(layer.activation, self.activation_quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        for attr, value in zip(self.weight_attrs, quantize_weights, strict=True):
            setattr(layer, attr, value)

    def set_quantize_activations(self, layer, quantize_activations):
        if self.quantize_activation:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return [self.activation_quantizer] if self.quantize_output else []

    def quantizers(self) -> list[Quantizer]:
        """The distinct quantizers this config uses (for schedules and reports)."""
        found = []
        if self.weight_attrs:
            found.append(self.weight_quantizer)
        if self.quantize_activation or self.quantize_output:
            found.append(self.activation_quantizer)
        return found

    def get_config(self):
        return {
            "weight_attrs": self.weight_attrs,
            "weight_quantizer": _serialize(self.weight_quantizer),
            "activation_quantizer": _serialize(self.activation_quantizer),
            "quantize_activation": self.quantize_activation,
            "quantize_output": self.quantize_output,
            "bits_from": self.bits_from,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["weight_quantizer"] = _deserialize(config["weight_quantizer"])
        config["activation_quantizer"] = _deserialize(config["activation_quantizer"])
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


def pass_through_config() -> LayerQuantizeConfig:
    """A config that quantizes nothing: the layer keeps its input's grid."""
    return LayerQuantizeConfig()


def quantizer_states(model: keras.Model) -> list[tuple[Quantizer, dict]]:
    """Every tfqnet quantizer of a built QAT model with the state its ``build`` returned.

    The state is the dict of variables TFMOT passes back to the quantizer at each call
    (``weights=``): kept by the QuantizeWrapper for kernels and outputs, by TFMOT's
    QuantizeAwareActivation for fused activations and by the QuantizeLayer for inputs.
    Schedules and checks reach quantizer state through it, never by variable names.
    """
    found = []
    for layer in model.layers:
        for _, quantizer, state in getattr(layer, "_weight_vars", ()):
            found.append((quantizer, state))
        activation = getattr(getattr(layer, "layer", None), "activation", None)
        for attr in ("_pre_activation_vars", "_post_activation_vars"):
            state = getattr(activation, attr, None)
            if state is not None:
                found.append((activation.quantizer, state))
        state = getattr(layer, "_output_quantizer_vars", None)
        if state is not None:
            found.append((layer._output_quantizers[0], state))
        state = getattr(layer, "quantizer_vars", None)
        if state is not None:
            found.append((layer.quantizer, state))
    return [(quantizer, state) for quantizer, state in found if isinstance(quantizer, Quantizer)]


def quantizers_of(model: keras.Model) -> list[Quantizer]:
    """All tfqnet quantizers in a QAT model (weights, activations, inputs)."""
    found = []
    for layer in model.layers:
        config = getattr(layer, "quantize_config", None)
        if isinstance(config, LayerQuantizeConfig):
            found.extend(config.quantizers())
        quantizer = getattr(layer, "quantizer", None)
        if quantizer is not None:
            found.append(quantizer)
    return found


def weight_quantizers(model: keras.Model) -> list[Quantizer]:
    """The kernel quantizers of a QAT model's weighted layers, in layer order."""
    return [
        layer.quantize_config.weight_quantizer
        for layer in model.layers
        if isinstance(getattr(layer, "quantize_config", None), LayerQuantizeConfig)
        and layer.quantize_config.weight_attrs
    ]
