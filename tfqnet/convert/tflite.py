"""``tfqnet.convert``: a trained QAT model to a full-integer TFLite flatbuffer."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from tfqnet._keras import keras, require_tf_keras_model
from tfqnet.convert.flatbuffer import FlatbufferModel
from tfqnet.errors import ConversionError

IO_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
MAX_REPRESENTATIVE_SAMPLES = 200


def _as_input_list(model: keras.Model, data) -> list[np.ndarray]:
    arrays = list(data) if isinstance(data, list | tuple) else [data]
    if len(arrays) != len(model.inputs):
        raise ValueError(
            f"representative_data has {len(arrays)} array(s) but the model has "
            f"{len(model.inputs)} input(s); pass a list with one array per input."
        )
    checked = []
    for array, model_input in zip(arrays, model.inputs, strict=True):
        array = np.asarray(array)
        expected = tuple(model_input.shape[1:])
        if array.ndim != len(expected) + 1 or any(
            e is not None and e != a for e, a in zip(expected, array.shape[1:], strict=True)
        ):
            raise ValueError(
                f"representative_data for input {model_input.name!r} has shape {array.shape}; "
                f"expected (N, {', '.join(str(e) for e in expected)})."
            )
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"representative_data must be numeric, got dtype {array.dtype}.")
        if array.shape[0] == 0:
            raise ValueError("representative_data is empty; give at least one sample.")
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError("representative_data contains NaN or infinite values.")
        checked.append(array[:MAX_REPRESENTATIVE_SAMPLES])
    return checked


def _check_initialized(model: keras.Model) -> None:
    pending = [
        v.name for v in model.variables if v.name.endswith("_initialized:0") and float(v) < 0.5
    ]
    if pending:
        raise ConversionError(
            f"{len(pending)} quantizer(s) have not seen data yet (e.g. {pending[0]}): their "
            "ranges are unset. Train the QAT model for at least one step (model.fit) before "
            "converting."
        )


def convert(
    qat_model: keras.Model,
    representative_data: np.ndarray | Sequence[np.ndarray],
    input_type: str = "int8",
    output_type: str = "int8",
    compress: bool | int = False,
) -> bytes:
    """Converts a trained tfqnet QAT model to a full-integer TFLite flatbuffer.

    Weights are stored exactly as trained: kernels of <= 4 bits as packed INT4, the
    rest int8; activations in int8 tensors on their trained grids. The
    ``representative_data`` (float inputs as the Keras model takes them, at most
    200 samples used) lets the converter quantize any layer that was skipped during
    QAT. ``input_type``/``output_type``: "int8" (default), "uint8" or "float32".

    ``compress``: True (or an index width 1..7) stores filters with few distinct values
    as bit-packed lookup-table indices (2 bits for ternary weights) via
    :func:`tfqnet.convert.compression.compress`. **Such a model runs on TFLM only**
    (TFLM_DECODE op); TFLite's interpreter cannot run it.

    Raises :class:`~tfqnet.errors.ConversionError` if a float operator or float weight
    remains (other than float model I/O when requested).
    """
    require_tf_keras_model(qat_model, "qat_model")
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise ValueError(f"{name} must be one of {sorted(IO_TYPES)}, got {value!r}.")
    samples = _as_input_list(qat_model, representative_data)
    _check_initialized(qat_model)

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(samples[0].shape[0]):
            yield [s[i : i + 1] for s in samples]

    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = IO_TYPES[input_type]
    converter.inference_output_type = IO_TYPES[output_type]
    absl_level = logging.getLogger("absl").level
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The input's range comes from the QAT model's input quantizer, not from
            # statistics; the converter warns about the latter needlessly.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            flatbuffer = converter.convert()
    except Exception as error:
        raise ConversionError(f"the TFLite converter failed: {error}") from error
    finally:
        logging.getLogger("absl").setLevel(absl_level)

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
    if compress:
        from tfqnet.convert.compression import compress as compress_weights

        return compress_weights(flatbuffer, bits=None if compress is True else int(compress))
    return bytes(flatbuffer)
