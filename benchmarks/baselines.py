"""The baselines a user would pick instead of tfqnet, shared by the benchmark scripts.

* :func:`tflite_int8`: TensorFlow's own full-integer conversion (TFLiteConverter with
  a representative dataset, int8 I/O). On a float model it is post-training int8; on
  a TFMOT QAT model it is TFMOT's documented deployment path.
* :func:`tflite_float`: the float model as a float32 flatbuffer (no optimizations).
* :func:`tfmot_default`: TFMOT's default 8-bit QAT (``quantize_model``).
* :func:`tfmot_n_bit`: TFMOT's experimental n-bit scheme
  (``tfmot.quantization.keras.experimental.default_n_bit``), e.g. 4-bit weights.
* :func:`tfmot_ternary`: TFMOT's straight-through ternary baseline for the digits CNN
  (2-bit narrow-range ``LastValueQuantizer`` kernels, 8-bit activations).
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import tensorflow_model_optimization as tfmot

from tfqnet._keras import keras, tf
from tfqnet.core.policy import policy_layers
from tfqnet.export.tflite import keras_to_tflite

_tfmot_q = tfmot.quantization.keras
#: samples the converter calibrates with (tfqnet.convert uses the same number)
REPRESENTATIVE_SAMPLES = 200


def _convert(model: keras.Model, configure=lambda converter: None) -> bytes:
    """``TFLiteConverter.from_keras_model(model)``, set up by ``configure``, converted
    (by :func:`tfqnet.export.tflite.keras_to_tflite`: the same bytes, faster)."""
    absl_level = logging.getLogger("absl").level
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return bytes(keras_to_tflite(model, configure))
    finally:
        logging.getLogger("absl").setLevel(absl_level)


def tflite_int8(model: keras.Model, representative: np.ndarray) -> bytes:
    """Full-integer flatbuffer (int8 I/O) from TFLiteConverter with representative data."""
    samples = np.asarray(representative, np.float32)[:REPRESENTATIVE_SAMPLES]

    def dataset() -> Iterator[list[np.ndarray]]:
        for i in range(samples.shape[0]):
            yield [samples[i : i + 1]]

    def configure(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    return _convert(model, configure)


def tflite_float(model: keras.Model) -> bytes:
    """Float32 flatbuffer of a float Keras model (BatchNormalization folded by the converter)."""
    return _convert(model)


def tfmot_default(model: keras.Model) -> keras.Model:
    """TFMOT's default 8-bit QAT model of ``model``."""
    return _tfmot_q.quantize_model(model)


def policy_bits(model: keras.Model, policy: str | None = "auto",
                weight_bits: int = 2) -> dict[str, int]:
    """``{layer: weight bits}`` of the layers tfqnet's layer policy widens, so that
    TFMOT's rows get the same policy as tfqnet's."""
    return {name: layer.weight_bits
            for name, layer in policy_layers(model, policy, weight_bits).items()}


def tfmot_n_bit(model: keras.Model, weight_bits: int = 4, activation_bits: int = 8,
                keep_8_bit: Iterable[str] | Mapping[str, int] = ()) -> keras.Model:
    """TFMOT's experimental n-bit QAT scheme (weights/activations at the given bits).

    Weights of <= 4 bits convert to packed INT4; 4-bit activations do not convert
    (the TFLite kernels take int8 activations only). ``keep_8_bit``: layers whose
    kernels get 8 bits instead (a layer policy; TFMOT has none): their wrappers get
    8-bit copies of their kernel quantizers before the first trace
    (``LastValueQuantizer`` reads ``num_bits`` when called); a mapping
    ``{layer: bits}`` gives each its own width.
    """
    scheme = _tfmot_q.experimental.default_n_bit.DefaultNBitQuantizeScheme(
        num_bits_weight=weight_bits, num_bits_activation=activation_bits
    )
    annotated = _tfmot_q.quantize_annotate_model(model)
    qat = _tfmot_q.quantize_apply(annotated, scheme)
    widths = dict(keep_8_bit) if isinstance(keep_8_bit, Mapping) else dict.fromkeys(keep_8_bit, 8)
    keep = set(widths)
    found = set()
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and inner.name in keep:
            # TFMOT's registry shares one quantizer object between all layers of a type:
            # the kept layer gets an 8-bit copy of its own
            widened = []
            for weight, quantizer, variables in getattr(layer, "_weight_vars", ()):
                quantizer = copy.copy(quantizer)
                quantizer.num_bits = widths[inner.name]
                widened.append((weight, quantizer, variables))
                found.add(inner.name)
            layer._weight_vars = widened
    if found != keep:
        raise ValueError(f"no TFMOT kernel quantizer found for {sorted(keep - found)}")
    return qat


class _TernaryConfig(_tfmot_q.QuantizeConfig):
    """TFMOT's straight-through baseline: 2-bit narrow-range kernels (``bits``), 8-bit
    outputs."""

    def __init__(self, attr: str = "kernel", bits: int = 2):
        self.attr = attr
        self.bits = bits

    def get_weights_and_quantizers(self, layer):
        weight = _tfmot_q.quantizers.LastValueQuantizer(
            num_bits=self.bits, per_axis=False, symmetric=True, narrow_range=True
        )
        return [(getattr(layer, self.attr), weight)]

    def get_activations_and_quantizers(self, layer):
        activation = _tfmot_q.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False
        )
        return [(layer.activation, activation)]

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.attr, quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"attr": self.attr, "bits": self.bits}


def _fold_bn1(model: keras.Model) -> keras.Model:
    """The digits CNN with ``bn1`` folded into ``conv1`` (same function in inference).

    TFMOT folds Conv-BN only under its default config; with a custom kernel quantizer
    it rejects the BatchNormalization, so the baseline gets the folded kernel, as
    tfqnet's own layout transform does before QAT.
    """
    conv, bn = model.get_layer("conv1"), model.get_layer("bn1")
    gamma, beta, mean, variance = bn.get_weights()
    factor = gamma / np.sqrt(variance + bn.epsilon)
    inputs = keras.Input(model.input_shape[1:])
    folded = keras.layers.Conv2D(16, 3, padding="same", name="conv1")
    x = folded(inputs)
    after = False
    for layer in model.layers:
        if after:
            x = layer(x)
        after = after or layer.name == "bn1"
    result = keras.Model(inputs, x)
    folded.set_weights([conv.get_weights()[0] * factor, beta - mean * factor])
    return result


def tfmot_ternary(model: keras.Model,
                  keep_8_bit: Iterable[str] | Mapping[str, int] = ()) -> keras.Model:
    """TFMOT straight-through ternary QAT model of the digits CNN (``conv1``/``bn1``);
    the layers in ``keep_8_bit`` (a layer policy) get 8-bit kernels, or their own
    widths if it maps layers to bits."""
    model = _fold_bn1(model)
    widths = dict(keep_8_bit) if isinstance(keep_8_bit, Mapping) else dict.fromkeys(keep_8_bit, 8)

    def annotate(layer):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            bits = widths.get(layer.name, 2)
            return _tfmot_q.quantize_annotate_layer(layer, _TernaryConfig(bits=bits))
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return _tfmot_q.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with _tfmot_q.quantize_scope({"_TernaryConfig": _TernaryConfig}):
        return _tfmot_q.quantize_apply(annotated)


def step_time(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int = 60) -> float:
    """Median seconds per ``train_on_batch`` (batch 32) after 10 warm-up steps."""
    x, y = x[:32], y[:32]
    for _ in range(10):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
