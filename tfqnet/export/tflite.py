"""The plain TFLite target: the TF 2.21 converter, full-integer, on the trained grids.

Every tfqnet model goes through it; the TFLM-compressed target
(:mod:`tfqnet.export.compression`) rewrites its result.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
from tensorflow.lite.python.conversion_metadata_schema_py_generated import ModelType
from tf_keras.src.saving.legacy import saving_utils  # private, but tf-keras is pinned
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet._keras import keras
from tfqnet.errors import ConversionError
from tfqnet.export.flatbuffer import FlatbufferModel

IO_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}


def convert_keras(
    keras_model: keras.Model,
    samples: list[np.ndarray],
    input_type: str,
    output_type: str,
    raw_pixels: bool,
) -> bytes:
    """``keras_model`` (inference mode) converted with full-integer optimizations,
    calibrated on ``samples`` (one array per input) for the layers QAT left float."""
    # With several inputs the converter orders its input tensors its own way (not as
    # model.inputs; a list then feeds the wrong tensors and calibration fails with a
    # shape error): samples keyed by input name reach the right tensor.
    input_names = list(keras_model.input_names)

    def representative() -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
        for i in range(samples[0].shape[0]):
            batch = [s[i : i + 1] for s in samples]
            yield dict(zip(input_names, batch, strict=True)) if len(batch) > 1 else batch

    def configure(converter: tf.lite.TFLiteConverter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8 if raw_pixels else IO_TYPES[input_type]
        converter.inference_output_type = IO_TYPES[output_type]

    absl_level = logging.getLogger("absl").level
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The input's range comes from the QAT model's input quantizer, not from
            # statistics; the converter warns about the latter needlessly.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return keras_to_tflite(keras_model, configure)
    except Exception as error:
        raise ConversionError(f"the TFLite converter failed: {error}") from error
    finally:
        logging.getLogger("absl").setLevel(absl_level)


def keras_to_tflite(
    keras_model: keras.Model, configure: Callable[[tf.lite.TFLiteConverter], None]
) -> bytes:
    """``TFLiteConverter.from_keras_model(keras_model)``, set up by ``configure``, converted:
    the same bytes in a fraction of the time.

    ``from_keras_model`` first exports the model as a Keras SavedModel, which traces the
    call of every layer in both training modes: about 85% of a conversion (measured: 8.5
    of 10 s for a qn 4-bit digits CNN). The converter reads only the serving signature,
    so this exports that signature (Keras's own ``trace_model_call``, the function
    ``from_keras_model`` exports) with the model's variables and nothing else, and the
    converter takes the same SavedModel route to the same flatbuffer. Should that export
    fail (a signature that captures state other than variables), the converter would
    freeze the graph instead (which, for one, cannot calibrate inputs by name), so the
    model is then converted by ``from_keras_model``.
    """
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [saving_utils.trace_model_call(keras_model)], _variables_of(keras_model))
    # the conversion metadata names the model's format, as from_keras_model's does
    converter._metadata.environment.modelType = ModelType.KERAS_MODEL
    configure(converter)
    try:
        flatbuffer = converter.convert()
    except Exception:
        if converter.saved_model_dir is not None:  # set only on the SavedModel route
            raise
    if converter.saved_model_dir is None:  # the frozen graph's result, or its failure
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        configure(converter)
        flatbuffer = converter.convert()
    return flatbuffer


def _variables_of(keras_model: keras.Model) -> tf.Module:
    holder = tf.Module()
    holder.tracked = list(keras_model.variables)
    return holder


def check_integer_only(flatbuffer: bytes, input_type: str, output_type: str) -> None:
    """Raises :class:`ConversionError` if a float tensor remains (float model I/O only
    where ``input_type``/``output_type`` asked for it)."""
    model = FlatbufferModel.from_bytes(flatbuffer)
    allowed = set()
    if input_type == "float32":
        allowed.update(model.inputs)
    if output_type == "float32":
        allowed.update(model.outputs)
    floats = [t for t in model.float_tensors() if t.index not in allowed]
    if floats:
        users = sorted(
            {op.name for op in model.operators for t in floats if t.index in op.inputs + op.outputs}
        )
        raise ConversionError(
            f"the converted model still computes in float: tensor {floats[0].name!r} "
            f"({floats[0].type}) and {len(floats) - 1} more, used by {users}."
        )


def keras_io_order(flatbuffer: bytes, input_names: list[str], output_names: list[str]) -> bytes:
    """``flatbuffer`` with its graph inputs and outputs in the Keras model's order.

    The converter orders several inputs or outputs its own way (by name, not as
    ``model.inputs``/``model.outputs``); its signature maps each Keras name to a tensor.
    The index vectors are permuted in place, so every other byte stays; a model whose
    order already matches (or that has no signature) is returned unchanged.
    """
    data = bytearray(flatbuffer)
    model = schema.Model.GetRootAs(data, 0)
    if model.SignatureDefsLength() == 0 or model.SubgraphsLength() == 0:
        return bytes(flatbuffer)
    signature = model.SignatureDefs(0)
    graph = model.Subgraphs(0)
    for names, entries, length, vector_field in (
        (input_names, signature.Inputs, signature.InputsLength(), 6),
        (output_names, signature.Outputs, signature.OutputsLength(), 8),
    ):
        by_name = {entries(k).Name().decode(): entries(k).TensorIndex() for k in range(length)}
        offset = graph._tab.Offset(vector_field)  # SubGraph.inputs / .outputs
        if not offset or sorted(by_name) != sorted(names):
            continue
        start = graph._tab.Vector(offset)
        current = np.frombuffer(bytes(data[start:start + 4 * len(names)]), "<i4")
        wanted = np.array([by_name[n] for n in names], "<i4")
        if sorted(current) == sorted(wanted):
            data[start:start + 4 * len(names)] = wanted.tobytes()
    return bytes(data)
