"""Which Keras layers tfqnet quantizes, by kind: the tables every stage reads.

The registry (:mod:`tfqnet.quantize.registry`) turns them into QuantizeConfigs, the
layout transforms fold and fuse by them, and the bit-width report and layer policies
find kernels through them.
"""

from __future__ import annotations

from collections.abc import Callable

from tfqnet._keras import keras

L = keras.layers

#: layer type -> (kernel attribute, trailing kernel axes that form an output channel)
WEIGHTED_LAYERS = {
    L.Conv1D: ("kernel", 1),
    L.Conv2D: ("kernel", 1),
    L.DepthwiseConv2D: ("depthwise_kernel", 2),
    L.Dense: ("kernel", 1),
}
#: kernels quantized per tensor: TFLM's FULLY_CONNECTED has no per-channel INT4 filters,
#: so Dense kernels are per tensor unless the method's ``per_channel_dense`` keeps them
#: in int8 containers (tfqnet.grid); a per-channel Conv1D kernel fails in the converter
#: (its quantized axis cannot follow the [k, in, out] -> [out, 1, k, in] reshape/transpose
#: to CONV_2D).
PER_TENSOR_LAYERS = (L.Dense, L.Conv1D)
#: layers whose output gets its own grid
OUTPUT_QUANTIZED_LAYERS = (
    L.Add,
    L.Concatenate,
    L.ReLU,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
)
#: layers that keep their input's grid (TFLite runs them on the input's scale)
PASS_THROUGH_LAYERS = (
    L.InputLayer,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.Flatten,
    L.Reshape,
    L.Dropout,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.Softmax,
)
#: activations a weighted layer may fuse: TFLite fuses them into the op's clamp
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
#: layer type -> fn(layer, registry) -> LayerQuantizeConfig, for layers defined outside
#: tfqnet's tables (e.g. tfqnet.layers.PixelEmbedding); see register_layer_config
CUSTOM_LAYER_CONFIGS: dict[type, Callable] = {}


def register_layer_config(layer_type: type, config_fn: Callable) -> None:
    """Lets ``quantize_model`` accept ``layer_type``: ``config_fn(layer, registry)``
    returns its QuantizeConfig (a hook, so layer modules need not edit these tables)."""
    CUSTOM_LAYER_CONFIGS[layer_type] = config_fn


def activation_name(layer: keras.layers.Layer) -> str:
    return keras.activations.serialize(layer.activation)


def relu_kind(layer: keras.layers.Layer) -> str | None:
    """'relu' or 'relu6' if the layer is a plain ReLU/ReLU6 layer, else None."""
    if isinstance(layer, L.ReLU):
        cfg = layer.get_config()
        if float(cfg.get("negative_slope") or 0) != 0 or float(cfg.get("threshold") or 0) != 0:
            return None
        max_value = cfg.get("max_value")
        if max_value is None:
            return "relu"
        return "relu6" if float(max_value) == 6.0 else None
    if isinstance(layer, L.Activation):
        name = activation_name(layer)
        return name if name in ("relu", "relu6") else None
    return None


def weighted_layer_names(model: keras.Model) -> list[str]:
    """Names of the model's weighted layers (Conv/Dense), in ``model.layers`` order."""
    return [layer.name for layer in model.layers if type(layer) in WEIGHTED_LAYERS]
