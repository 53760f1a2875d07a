"""Converting models that take raw 8-bit pixels (a :class:`~tfqnet.layers.PixelEmbedding`
first layer) to integer flatbuffers whose input tensor is the raw image.

:func:`tfqnet.convert` calibrates with float samples, so it cannot convert a model with
an integer input, and the TF 2.21 converter has no TFLM-runnable way from a uint8
input to int32 table indices (it emits CAST uint8->int32, which TFLM lacks, or a
float DEQUANTIZE + CAST pair). This module therefore

1. rebuilds the QAT model on an int8 input (``pixel - 128``; the embedding indexes it
   with CAST int8->int32 + ADD 128), converts that with int8 calibration samples, and
2. for ``input_type="uint8"`` puts a QUANTIZE uint8 (scale 1, zero point 0) -> int8
   (scale 1, zero point -128) in front: exactly ``pixel - 128``, the op the converter
   itself emits for uint8 model inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import flatbuffers
import numpy as np
import tensorflow as tf
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet._keras import keras, require_tf_keras_model
from tfqnet.convert.flatbuffer import FlatbufferModel
from tfqnet.convert.tflite import IO_TYPES, MAX_REPRESENTATIVE_SAMPLES, _check_initialized
from tfqnet.errors import ConversionError


def _raw_input_model(qat_model: keras.Model) -> keras.Model:
    """``qat_model`` rebuilt on an int8 input (same layers' configs and weights)."""
    if len(qat_model.inputs) != 1:
        raise ValueError("convert_raw_input supports models with one (image) input.")
    consumers = [
        getattr(node.outbound_layer, "layer", node.outbound_layer)
        for layer in qat_model.layers
        if isinstance(layer, keras.layers.InputLayer)
        for node in layer._outbound_nodes
    ]
    if not consumers or not all(getattr(c, "takes_raw_input", False) for c in consumers):
        raise ValueError(
            "convert_raw_input needs a model whose input feeds only raw-pixel layers "
            "(tfqnet.layers.PixelEmbedding); use tfqnet.convert for other models."
        )
    if qat_model.inputs[0].dtype == tf.int8:
        return qat_model
    from tfqnet.quantize import quantize_scope

    image = keras.Input(qat_model.inputs[0].shape[1:], dtype="int8", name="image")
    with quantize_scope():
        rebuilt = keras.models.clone_model(qat_model, input_tensors=image)
    # by layer and variable name: a rebuilt QuantizeWrapper may order its weights
    # differently from the trained one
    for layer in rebuilt.layers[1:]:  # [0] is the new input layer
        source = {_short(v.name): v for v in qat_model.get_layer(layer.name).weights}
        targets = {_short(v.name): v for v in layer.weights}
        if source.keys() != targets.keys() or len(targets) != len(layer.weights):
            raise ConversionError(f"cannot rebuild layer {layer.name!r} on an int8 input.")
        for name, variable in targets.items():
            variable.assign(source[name])
    return rebuilt


def _short(name: str) -> str:
    """A variable's name inside its layer (the layer prefix differs after cloning)."""
    return name.rsplit("/", 1)[-1]


def prepend_uint8_input(flatbuffer: bytes) -> bytes:
    """Makes an int8-input (``pixel - 128``) model take uint8 pixels through QUANTIZE."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    graph = model.subgraphs[0]
    old_input = graph.inputs[0]
    int8_tensor = graph.tensors[old_input]
    if int8_tensor.type != schema.TensorType.INT8:
        raise ConversionError("prepend_uint8_input expects an int8 model input.")
    # QUANTIZE reads the two tensors' parameters: scale 1 both, zero points 0 and -128
    int8_tensor.quantization = _per_tensor(1.0, -128)
    uint8_tensor = schema.TensorT()
    uint8_tensor.name = b"image_uint8"
    uint8_tensor.type = schema.TensorType.UINT8
    uint8_tensor.shape = list(int8_tensor.shape)
    uint8_tensor.shapeSignature = (
        None if int8_tensor.shapeSignature is None else list(int8_tensor.shapeSignature)
    )
    empty = schema.BufferT()
    model.buffers.append(empty)
    uint8_tensor.buffer = len(model.buffers) - 1
    uint8_tensor.quantization = _per_tensor(1.0, 0)
    graph.tensors.append(uint8_tensor)
    new_input = len(graph.tensors) - 1

    code_index = next(
        (i for i, c in enumerate(model.operatorCodes)
         if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.QUANTIZE),
        None,
    )
    if code_index is None:
        code = schema.OperatorCodeT()
        code.builtinCode = schema.BuiltinOperator.QUANTIZE
        code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 1
        model.operatorCodes.append(code)
        code_index = len(model.operatorCodes) - 1
    quantize = schema.OperatorT()
    quantize.opcodeIndex = code_index
    quantize.inputs = [new_input]
    quantize.outputs = [old_input]
    graph.operators.insert(0, quantize)
    graph.inputs = [new_input] + list(graph.inputs[1:])
    # the serving signature (if any) names the input tensor by index
    for signature in model.signatureDefs or []:
        for item in signature.inputs or []:
            if item.tensorIndex == old_input:
                item.tensorIndex = new_input

    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _per_tensor(scale: float, zero_point: int) -> schema.QuantizationParametersT:
    params = schema.QuantizationParametersT()
    params.scale = [scale]
    params.zeroPoint = [zero_point]
    return params


def convert_raw_input(
    qat_model: keras.Model,
    representative_pixels: np.ndarray,
    input_type: str | None = None,
    output_type: str = "int8",
) -> bytes:
    """Converts a trained QAT model with a PixelEmbedding first layer (see module doc).

    Args:
      qat_model: a model from :func:`tfqnet.quantize_model` whose input feeds only
        PixelEmbedding layers (its Keras input may be uint8, int8 or float pixels).
      representative_pixels: raw pixel values 0..255 (any numeric dtype), N images;
        they only matter for layers that were skipped during QAT.
      input_type: "uint8" (raw pixels) or "int8" (``pixel - 128``); default: the
        embedding's ``input_dtype``.
      output_type: "int8", "uint8" or "float32".
    """
    require_tf_keras_model(qat_model, "qat_model")
    if input_type is None:
        embeddings = [getattr(lyr, "layer", lyr) for lyr in qat_model.layers]
        dtypes = {e.input_dtype for e in embeddings if getattr(e, "takes_raw_input", False)}
        input_type = dtypes.pop() if len(dtypes) == 1 else "uint8"
    if input_type not in ("uint8", "int8"):
        raise ValueError(f"input_type must be 'uint8' or 'int8', got {input_type!r}.")
    if output_type not in IO_TYPES:
        raise ValueError(f"output_type must be one of {sorted(IO_TYPES)}, got {output_type!r}.")
    pixels = np.asarray(representative_pixels)
    if pixels.size == 0 or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("representative_pixels must be raw pixel values in 0..255.")
    _check_initialized(qat_model)
    model = _raw_input_model(qat_model)
    codes = (np.round(pixels[:MAX_REPRESENTATIVE_SAMPLES]).astype(np.int32) - 128).astype(np.int8)

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(codes.shape[0]):
            yield [codes[i : i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = IO_TYPES[output_type]
    absl_level = logging.getLogger("absl").level
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        flatbuffer = converter.convert()
    except Exception as error:
        raise ConversionError(f"the TFLite converter failed: {error}") from error
    finally:
        logging.getLogger("absl").setLevel(absl_level)
    if input_type == "uint8":
        flatbuffer = prepend_uint8_input(flatbuffer)

    parsed = FlatbufferModel.from_bytes(flatbuffer)
    allowed = set(parsed.outputs) if output_type == "float32" else set()
    floats = [t.name for t in parsed.float_tensors() if t.index not in allowed]
    if floats:
        raise ConversionError(f"the converted model still computes in float: {floats[:3]}")
    return bytes(flatbuffer)
