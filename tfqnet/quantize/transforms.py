"""Layout transforms applied before quantization (TFMOT graph transformations).

They make the Keras graph look like the TFLite graph it will become, so the grid a
quantizer learns is the grid that is deployed:

* a BatchNormalization after a convolution or Dense layer is folded into its kernel
  and bias *before* QAT (with the moving statistics), so the quantizer sees the
  folded kernel the converter stores; TFMOT's default keeps BN separate during
  training and lets the converter fold it after fake-quant, which moves weights
  off the trained grid;
* a ReLU/ReLU6 layer after a convolution, Dense or Add disables that layer's own
  output grid, so the converter fuses the ReLU into the TFLite op;
* the model input gets an 8-bit activation quantizer (the int8 input tensor), and so
  does the output of every skipped layer TFMOT leaves without one: the converter
  makes that tensor int8 too, and without a FakeQuant there it folds a layer such as
  a constant multiply into the next layer's already quantized kernel.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer,
    transforms,
)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
    QuantizeLayer,
)

from tfqnet._keras import keras
from tfqnet.core.layer_kinds import relu_kind
from tfqnet.core.method import QuantizationMethod
from tfqnet.core.quantizer import register
from tfqnet.quantize.registry import QuantizeRegistry

LayerNode = transforms.LayerNode
LayerPattern = transforms.LayerPattern

_WEIGHTED = "Conv1D|Conv2D|DepthwiseConv2D|Dense"
_RELU_LAYERS = "ReLU|Activation"
# channels-last axis of each weighted layer's output (Dense: rank-2 outputs)
_CHANNEL_AXIS = {"Conv1D": 2, "Conv2D": 3, "DepthwiseConv2D": 3, "Dense": 1}


def _kernel_key(node: LayerNode) -> str:
    return "depthwise_kernel:0" if node.layer["class_name"] == "DepthwiseConv2D" else "kernel:0"


class FoldBatchNorm(transforms.Transform):
    """``Conv/Dense -> BatchNormalization`` becomes one Conv/Dense with a bias.

    ``k' = k * gamma / sqrt(var + eps)`` per output channel and
    ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
    """

    def pattern(self):
        return LayerPattern(
            "BatchNormalization",
            inputs=[LayerPattern(_WEIGHTED, config={"activation": "linear"})],
        )

    def replacement(self, match_layer):
        bn_node, conv_node = match_layer, match_layer.input_layers[0]
        bn_cfg = bn_node.layer["config"]
        axis = bn_cfg["axis"]
        axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
        if axis not in (-1, _CHANNEL_AXIS[conv_node.layer["class_name"]]):
            return match_layer  # not a per-channel BN of this layer: left unfolded
        bn = bn_node.weights
        variance = bn["moving_variance:0"]
        gamma = bn.get("gamma:0", np.ones_like(variance))
        beta = bn.get("beta:0", np.zeros_like(variance))
        factor = gamma / np.sqrt(variance + bn_cfg["epsilon"])

        key = _kernel_key(conv_node)
        kernel = conv_node.weights[key]
        if key == "depthwise_kernel:0":
            folded = kernel * factor.reshape(kernel.shape[-2:])
        else:
            folded = kernel * factor
        bias = conv_node.weights.get("bias:0", np.zeros_like(variance))
        weights = collections.OrderedDict(
            [(key, folded.astype(kernel.dtype)),
             ("bias:0", ((bias - bn["moving_mean:0"]) * factor + beta).astype(kernel.dtype))]
        )
        layer = dict(conv_node.layer)
        layer["config"] = dict(conv_node.layer["config"], use_bias=True)
        return LayerNode(layer, weights, metadata=conv_node.metadata)


class ReLUOutputGrid(transforms.Transform):
    """``Conv/Dense/Add -> ReLU|ReLU6``: only the ReLU's output gets a grid.

    The producer keeps its weight quantizer but loses its own output grid, so no
    FakeQuant sits between it and the ReLU and the converter fuses the ReLU into
    the TFLite op, as it will run on the board.
    """

    def __init__(self, registry: QuantizeRegistry):
        self.registry = registry

    def pattern(self):
        return LayerPattern(_RELU_LAYERS, inputs=[LayerPattern(_WEIGHTED + "|Add")])

    def replacement(self, match_layer):
        producer = match_layer.input_layers[0]
        if relu_kind(keras.layers.deserialize(match_layer.layer)) is None:
            return match_layer
        if producer.layer["config"].get("activation", "linear") != "linear":
            return match_layer
        config = self.registry.get_quantize_config(keras.layers.deserialize(producer.layer))
        config.quantize_activation = False
        config.quantize_output = False
        producer.metadata["quantize_config"] = config
        return match_layer


def _with_8_bit_grid(node: LayerNode, method: QuantizationMethod) -> LayerNode:
    """``node`` followed by a TFMOT QuantizeLayer with ``method``'s 8-bit activation
    quantizer."""
    quant_layer = QuantizeLayer(method.activation_quantizer(8))
    config = keras.layers.serialize(quant_layer)
    config["name"] = quant_layer.name
    return LayerNode(config, input_layers=[node])


@register
class InputQuantizeLayer(QuantizeLayer):
    """TFMOT's QuantizeLayer, built once.

    TFMOT's layer creates its quantizer's variables again when a model is rebuilt from
    its config (build_from_config, then build on the first call), which leaves
    duplicate variables that break h5 saving. quantize_model swaps it in for TFMOT's
    (quantize_apply always recreates plain QuantizeLayers).
    """

    def build(self, input_shape):
        if getattr(self, "_quantizer_built", False):
            return
        super().build(input_shape)
        self._quantizer_built = True
        self.built = True


class InputLayerQuantize(transforms.Transform):
    """Adds a TFMOT QuantizeLayer with an 8-bit tfqnet activation quantizer after inputs."""

    def __init__(self, method: QuantizationMethod, raw_inputs: frozenset[str] = frozenset()):
        self.method = method
        self.raw_inputs = raw_inputs

    def pattern(self):
        return LayerPattern("InputLayer")

    def replacement(self, match_layer):
        # Integer inputs and inputs read only by layers that index with the raw values
        # (`takes_raw_input`, e.g. PixelEmbedding) must reach them unquantized.
        config = match_layer.layer["config"]
        if config["name"] in self.raw_inputs or not tf.as_dtype(config["dtype"]).is_floating:
            return match_layer
        return _with_8_bit_grid(match_layer, self.method)

    def custom_objects(self):
        return {"QuantizeLayer": QuantizeLayer}


class SkippedLayerOutputQuantize(transforms.Transform):
    """Adds an 8-bit activation quantizer after each layer in ``layers`` (names)."""

    def __init__(self, method: QuantizationMethod, layers: frozenset[str]):
        self.method = method
        self.layers = layers

    def pattern(self):
        return LayerPattern(".*")

    def replacement(self, match_layer):
        if match_layer.layer["config"]["name"] not in self.layers:
            return match_layer
        return _with_8_bit_grid(match_layer, self.method)

    def custom_objects(self):
        return {"QuantizeLayer": QuantizeLayer}


def _skipped_without_grid(model: keras.Model, layer_quantize_map, registry) -> frozenset[str]:
    """Skipped layers with one float output that TFMOT would leave without a grid.

    TFMOT gives a skipped layer an output grid only when the registry supports it and
    it is the single input of a quantized layer. Inputs of a Concatenate are left
    alone: they take the concat's grid.
    """
    names = set()
    for layer in model.layers:
        if (layer.name in layer_quantize_map or isinstance(layer, keras.layers.InputLayer)
                or layer.name in registry.no_output_grid):
            continue
        outputs = tf.nest.flatten(layer.output)
        if len(outputs) != 1 or not outputs[0].dtype.is_floating:
            continue
        tfmot_grid = registry.supports(layer) and any(
            node.outbound_layer.name in layer_quantize_map
            and len(tf.nest.flatten(node.inbound_layers)) == 1
            for node in layer._outbound_nodes)
        if not tfmot_grid:
            names.add(layer.name)
    return frozenset(names)


def _raw_inputs(model: keras.Model) -> frozenset[str]:
    """Names of input layers whose every consumer has ``takes_raw_input = True``."""
    raw = set()
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer) or not layer._outbound_nodes:
            continue
        consumers = [getattr(n.outbound_layer, "layer", n.outbound_layer)
                     for n in layer._outbound_nodes]
        if all(getattr(c, "takes_raw_input", False) for c in consumers):
            raw.add(layer.name)
    return frozenset(raw)


class LayoutTransform(tfmot.quantization.keras.QuantizeLayoutTransform):
    """tfqnet's layout transforms, in order (BN folding before the ReLU rule)."""

    def __init__(self, registry: QuantizeRegistry):
        self.registry = registry

    def apply(self, model, layer_quantize_map):
        steps = [
            InputLayerQuantize(self.registry.method, _raw_inputs(model)),
            FoldBatchNorm(),
            ReLUOutputGrid(self.registry),
        ]
        skipped = _skipped_without_grid(model, layer_quantize_map, self.registry)
        model, layer_quantize_map = model_transformer.ModelTransformer(
            model, steps, set(layer_quantize_map.keys()), layer_quantize_map
        ).transform()
        if not skipped:
            return model, layer_quantize_map
        # A pass of its own: with the skipped layers among the candidates, the steps
        # above would also rewrite them.
        return model_transformer.ModelTransformer(
            model, [SkippedLayerOutputQuantize(self.registry.method, skipped)],
            set(skipped), layer_quantize_map,
        ).transform()
