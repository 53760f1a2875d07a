"""``tfqnet.convert``: a trained QAT model to a full-integer TFLite flatbuffer.

The steps every conversion takes, in order: check the model and the data, let each
quantizer type prepare the export, trace and convert (the plain TFLite target,
:mod:`tfqnet.export.tflite`, with the raw-pixel input and per-channel Dense kernels
handled around it), then, with ``compress``, the TFLM-compressed target
(:mod:`tfqnet.export.compression`), and last, with ``compact``, the pass that drops
what TFLM never reads (:mod:`tfqnet.export.compact`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfqnet._keras import keras
from tfqnet.core.config import quantizer_states, quantizers_of, weight_quantizers
from tfqnet.errors import ConversionError
from tfqnet.export import compact as compaction
from tfqnet.export import compression, raw_input, tflite
from tfqnet.export.per_channel_dense import per_channel_dense_export, restore_channel_scales
from tfqnet.keras3 import as_tf_keras_model
from tfqnet.layers import dtype_name
from tfqnet.tflite_format import INT4_MAX_BITS, MAX_INDEX_BITS

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
        if None in expected:
            fixed = ", ".join(str(a) for a in array.shape[1:]) if array.ndim > 1 else "..."
            raise ValueError(
                f"input {model_input.name!r} has shape (None, "
                f"{', '.join(str(e) for e in expected)}): TFLite Micro needs every size but "
                f"the batch fixed; build the model on keras.Input(shape=({fixed})) (the "
                "shape of your samples) and copy the weights over with set_weights."
            )
        if array.ndim != len(expected) + 1 or any(
            e is not None and e != a for e, a in zip(expected, array.shape[1:], strict=True)
        ):
            raise ValueError(
                f"representative_data for input {model_input.name!r} has shape {array.shape}; "
                f"expected (N, {', '.join(str(e) for e in expected)})."
            )
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
            array.dtype, np.complexfloating
        ):
            raise ValueError(
                f"representative_data for input {model_input.name!r} must hold real numbers, "
                f"got dtype {array.dtype}; pass the float samples the Keras model takes."
            )
        if array.shape[0] == 0:
            raise ValueError("representative_data is empty; give at least one sample.")
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            bad = int(np.sum(~np.isfinite(array).reshape(len(array), -1).all(axis=1)))
            raise ValueError(
                f"representative_data for input {model_input.name!r} contains NaN or infinite "
                f"values ({bad} of {len(array)} samples); drop or repair those samples."
            )
        checked.append(array[:MAX_REPRESENTATIVE_SAMPLES])
    return checked


def _check_initialized(model: keras.Model) -> None:
    # .numpy(): a MirroredVariable (model built in a tf.distribute scope) has no __float__
    pending = [
        state["initialized"].name
        for _, state in quantizer_states(model)
        if "initialized" in state and float(state["initialized"].numpy()) < 0.5
    ]
    if pending:
        raise ConversionError(
            f"{len(pending)} quantizer(s) have not seen data yet (e.g. {pending[0]}): their "
            "ranges are unset. Train the QAT model for at least one step (model.fit) before "
            "converting."
        )


def _prepare_export(model: keras.Model, compress: bool | int) -> None:
    """Runs each quantizer type's ``prepare_export(model, compress=...)`` hook, if it has
    one, before the converter traces the model: static choices made from variables (SRQ's
    learned bit-widths pick the INT4 or int8 container) are refreshed from the trained
    state, and a hook can refuse a storage its budget was not computed for."""

    for quantizer_type in dict.fromkeys(type(q) for q in quantizers_of(model)):
        hook = getattr(quantizer_type, "prepare_export", None)
        if hook is not None:
            hook(model, compress=compress)


def convert(
    qat_model: keras.Model,
    representative_data: np.ndarray | Sequence[np.ndarray],
    input_type: str | type | None = None,
    output_type: str | type = "int8",
    compress: bool | int | str = "auto",
    compact: bool = True,
) -> bytes:
    """Converts a trained tfqnet QAT model to a full-integer TFLite flatbuffer.

    ``qat_model`` is the tf-keras model ``quantize_model`` returned (a Keras 3 model is
    translated by :func:`tfqnet.to_tf_keras` first; without tfqnet quantizers it is
    converted as plain post-training int8, with a warning).

    Weights are stored exactly as trained: kernels of <= 4 bits as packed INT4, the
    rest int8 (Dense kernels quantized per channel always int8, their channel scales
    written in by :mod:`tfqnet.export.per_channel_dense`); activations in int8 tensors
    on their trained grids. The
    ``representative_data`` (float inputs as the Keras model takes them, at most
    200 samples used) lets the converter quantize any layer that was skipped during
    QAT. ``input_type``/``output_type``: "int8" (default), "uint8" or "float32"
    (names or dtypes such as ``np.uint8``).

    A model whose input feeds :class:`~tfqnet.PixelEmbedding` layers (e.g. from
    ``quantize_model(..., pixel_embedding=...)``) takes raw pixels: its flatbuffer
    input is the raw image, ``input_type`` "uint8" or "int8" (``pixel - 128``; default:
    the embedding's ``input_dtype``), and ``representative_data`` holds pixels as
    the Keras model takes them (see :mod:`tfqnet.export.raw_input`).

    ``compress``: ``"auto"`` (default) stores the kernels of a model with weights
    below 4 bits (ternary, 3-bit) as bit-packed lookup-table indices of at most 3 bits
    (2 for ternary) wherever that makes the file smaller, and warns naming them; a
    model whose kernels are all 4 bits or wider is left as it is; one whose budget
    counts compressed kernels (SRQ ``storage="compressed"``) is compressed at every
    index width, as with True, but not refused. True (or an index width 1..7)
    compresses every filter with few distinct values
    (:func:`tfqnet.export.compression.compress`); False keeps INT4/int8 containers.
    **A compressed model runs on TFLM only** (TFLM_DECODE op); TFLite's interpreter
    cannot run it.

    ``compact`` (default True): drop what TFLM never reads (names but the layers',
    bias quantization of convolutions, repeated zero points, signatures; see
    :mod:`tfqnet.export.compact`). The operators and every weight byte are unchanged,
    but TFLite's interpreter refuses the shortened zero-point arrays: for a
    flatbuffer that TFLite runs, pass ``compress=False, compact=False``.

    Raises :class:`~tfqnet.errors.ConversionError` if a float operator or float weight
    remains (other than float model I/O when requested).
    """
    if isinstance(compress, str) and compress != "auto":
        raise ValueError(f"compress must be 'auto', True, False or 1..7, got {compress!r}.")
    if not isinstance(compact, bool):
        raise ValueError(f"compact must be True or False, got {compact!r}.")
    qat_model = as_tf_keras_model(qat_model, "qat_model", paths=False)

    raw_pixels = raw_input.takes_raw_pixels(qat_model)
    if input_type is None:
        input_type = raw_input.default_input_type(qat_model) if raw_pixels else "int8"
    input_type, output_type = dtype_name(input_type), dtype_name(output_type)
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in tflite.IO_TYPES:
            raise ValueError(f"{name} must be one of {sorted(tflite.IO_TYPES)}, got {value!r}.")
    samples = _as_input_list(qat_model, representative_data)
    auto_bits = _auto_index_bits(qat_model) if compress == "auto" else None
    _check_initialized(qat_model)
    if not quantizers_of(qat_model):
        warnings.warn(
            "tfqnet.convert got a model without tfqnet quantizers: it is converted as plain "
            "post-training int8, its ranges taken from representative_data. For learned "
            "low-bit grids, convert the model tfqnet.quantize_model returns, after training.",
            stacklevel=2,
        )
    # the hooks get what "auto" decided: whether the conversion compresses
    _prepare_export(qat_model, (auto_bits is not None) if compress == "auto" else compress)
    keras_model = qat_model
    if raw_pixels:
        keras_model, samples = raw_input.int8_input_model(qat_model, samples, input_type)

    # Per-channel Dense kernels go through the converter per tensor; one eager call
    # records their codes and channel scales for restore_channel_scales.
    with per_channel_dense_export() as dense_kernels:
        keras_model([tf.constant(s[:1]) for s in samples], training=False)
        flatbuffer = tflite.convert_keras(keras_model, samples, input_type, output_type,
                                          raw_pixels)
    flatbuffer = restore_channel_scales(flatbuffer, dense_kernels)
    flatbuffer = tflite.keras_io_order(flatbuffer, list(keras_model.input_names),
                                       list(keras_model.output_names))
    if raw_pixels and input_type == "uint8":
        flatbuffer = raw_input.prepend_uint8_input(flatbuffer)

    tflite.check_integer_only(flatbuffer, input_type, output_type)
    if compress == "auto":
        if auto_bits is not None:
            flatbuffer = _compress_auto(flatbuffer, auto_bits, compact)
    elif compress:
        flatbuffer = compression.compress(flatbuffer,
                                          bits=None if compress is True else int(compress),
                                          compacted=compact)
    return compaction.compact(flatbuffer) if compact else bytes(flatbuffer)


def _auto_index_bits(model: keras.Model) -> int | None:
    """The widest index ``compress="auto"`` stores for ``model``: every width
    (``MAX_INDEX_BITS``) for a model whose kernels count as compressed (SRQ
    ``storage="compressed"``), 3 bits for one with a fixed-width kernel below 4 bits
    (learned SRQ widths follow SRQ's ``storage`` option), else None (no compression)."""
    kernels = weight_quantizers(model)
    if any(q.storage == "compressed" for q in kernels):
        return MAX_INDEX_BITS
    if any(q.export_storage() == "compressed" for q in kernels):
        return INT4_MAX_BITS - 1
    return None


def _compress_auto(flatbuffer: bytes, max_index_bits: int, compacted: bool) -> bytes:
    compressed, layers = compression.compress_narrow(flatbuffer, max_index_bits, compacted)
    if layers:
        warnings.warn(
            f"tfqnet.convert stored {len(layers)} kernel(s) as TFLM lookup-table indices "
            f"({', '.join(layers)}): the model runs on TensorFlow Lite Micro only (op "
            "TFLM_DECODE); pass compress=False, compact=False to keep INT4/int8 for TFLite's "
            "interpreter.",
            stacklevel=3,
        )
    return compressed
