"""How :func:`tfqnet.convert` deploys a model that takes raw 8-bit pixels (its input
feeds :class:`~tfqnet.layers.PixelEmbedding` layers): the flatbuffer's input tensor is
the raw image, uint8 or int8 (``pixel - 128``).

The TF 2.21 converter has no TFLM-runnable way from a uint8 input to int32 table
indices (it emits CAST uint8->int32, which TFLM lacks, or a float DEQUANTIZE + CAST
pair). So ``convert``

1. converts the QAT model rebuilt on an int8 input (``pixel - 128``; the embedding
   indexes it with CAST int8->int32 + ADD 128), calibrated with int8 codes
   (:func:`int8_input_model`), and
2. for ``input_type="uint8"`` puts a QUANTIZE uint8 (scale 1, zero point 0) -> int8
   (scale 1, zero point -128) in front: exactly ``pixel - 128``, the op the converter
   itself emits for uint8 model inputs (:func:`prepend_uint8_input`).
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import tensorflow as tf
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet._keras import keras
from tfqnet.errors import ConversionError
from tfqnet.layers import INT8_OFFSET, TABLE_ROWS
from tfqnet.quantize.api import quantize_scope


def _raw_pixel_layers(model: keras.Model) -> list[keras.layers.Layer] | None:
    """The layers reading the model input if all take raw pixels (else None)."""
    consumers = [
        getattr(node.outbound_layer, "layer", node.outbound_layer)
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
        for node in layer._outbound_nodes
    ]
    if consumers and all(getattr(c, "takes_raw_input", False) for c in consumers):
        return consumers
    return None


def takes_raw_pixels(model: keras.Model) -> bool:
    """True if the model's input feeds only raw-pixel layers (PixelEmbedding)."""
    return _raw_pixel_layers(model) is not None


def default_input_type(model: keras.Model) -> str:
    """The embedding's ``input_dtype`` (uint8 if the model mixes them)."""
    dtypes = {layer.input_dtype for layer in _raw_pixel_layers(model) or []}
    return dtypes.pop() if len(dtypes) == 1 else "uint8"


def int8_input_model(
    qat_model: keras.Model, samples: list[np.ndarray], input_type: str
) -> tuple[keras.Model, list[np.ndarray]]:
    """``qat_model`` on an int8 (``pixel - 128``) input, and ``samples`` as int8 codes.

    ``samples`` are what the Keras model takes: uint8-encoded pixels 0..255 or int8
    codes -128..127, by the Keras input's dtype (for a float input: the embedding's
    ``input_dtype``).
    """
    if input_type not in ("uint8", "int8"):
        raise ValueError(
            "this model takes raw pixels (tfqnet.PixelEmbedding): convert it with "
            f"input_type 'uint8' (pixels) or 'int8' (pixel - 128), not {input_type!r}."
        )
    if len(qat_model.inputs) != 1:
        raise ValueError("a raw-pixel model must have one (image) input.")
    keras_dtype = qat_model.inputs[0].dtype
    encoding = keras_dtype.name if keras_dtype.is_integer else default_input_type(qat_model)
    low = -INT8_OFFSET if encoding == "int8" else 0
    values = np.round(samples[0])
    if values.min() < low or values.max() > low + TABLE_ROWS - 1:
        raise ValueError(
            f"representative_data must be what the model takes: {encoding} pixels in "
            f"{low}..{low + TABLE_ROWS - 1}, got values in {values.min():g}..{values.max():g}."
        )
    codes = (values - low - INT8_OFFSET).astype(np.int8)
    return _int8_input_model(qat_model), [codes]


def _int8_input_model(qat_model: keras.Model) -> keras.Model:
    """``qat_model`` rebuilt on an int8 input (same layers' configs and weights)."""
    if qat_model.inputs[0].dtype == tf.int8:
        return qat_model
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

