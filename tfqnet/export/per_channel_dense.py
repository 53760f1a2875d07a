"""Per-channel Dense kernels: their channel scales, written into the flatbuffer.

The TFLite converter stores a Dense kernel transposed ([out, in]) and fails on a
per-output-channel FakeQuant before that transpose ("'tfl.transpose' op has mismatched
quantized axes"), although TFLM's FULLY_CONNECTED computes per-channel int8 filters
exactly (one requantization multiplier per output channel, as CONV_2D).
:func:`tfqnet.convert` therefore traces such a kernel as its integer codes on one
per-tensor step, the smallest channel scale (:func:`per_channel_dense_export`), and
:func:`restore_channel_scales` then gives the tensor its trained scales:

* the filter keeps its int8 codes and gets ``scales[c]`` on axis 0;
* the int32 bias, stored on the step ``s_in * step``, is requantized onto the
  per-channel steps ``s_in * scales[c]`` that TFLite and TFLM expect. Its first
  rounding is on the finer of the two steps (``step <= scales[c]``), so the stored
  bias is within one code of the float bias rounded directly onto its channel's step.

The codes decide which FULLY_CONNECTED belongs to which recorded kernel: a filter
matches when its shape, its codes and its traced step are those of the kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tflite_micro.tensorflow.lite.micro.compression import model_editor
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet import grid
from tfqnet.errors import ConversionError

_INT32 = np.iinfo(np.int32)


class ChannelScaledKernel(NamedTuple):
    """A per-channel Dense kernel as the converter cannot take it: ``codes`` [in, out]
    (int8) and one ``scales`` entry per output channel (float32)."""

    codes: np.ndarray
    scales: np.ndarray


class _PerTensorTrace:
    """The :class:`tfqnet.grid.ExportMode` of :func:`per_channel_dense_export`."""

    def __init__(self) -> None:
        self.kernels: list[ChannelScaledKernel] = []

    def per_channel_dense_kernel(
        self, values: tf.Tensor, scale: tf.Tensor, storage_bits: int
    ) -> tf.Tensor:
        codes = tf.round(values / scale)
        step = tf.reduce_min(scale)
        if tf.executing_eagerly():
            self.kernels.append(ChannelScaledKernel(
                codes.numpy().astype(np.int8), scale.numpy().astype(np.float32)))
        limit = grid.weight_qmax(storage_bits) * step
        return tf.quantization.fake_quant_with_min_max_vars(
            codes * step, -limit, limit, num_bits=storage_bits, narrow_range=True
        )


@contextlib.contextmanager
def per_channel_dense_export() -> Iterator[list[ChannelScaledKernel]]:
    """While active, :func:`tfqnet.grid.weight_fake_quant` emits each per-channel Dense
    kernel as its integer codes on one per-tensor grid (step: the smallest channel
    scale), which the converter takes, and records, when run eagerly, the codes and the
    channel scales into the yielded list, for :func:`restore_channel_scales`.

    Outside this context the kernel keeps its per-channel FakeQuant, so the QAT model
    computes the deployed values.
    """
    trace = _PerTensorTrace()
    with grid.export_mode(trace):
        yield trace.kernels


def _scales(tensor: model_editor.Tensor) -> np.ndarray:
    q = tensor.quantization
    if q is None:
        return np.zeros(0, np.float32)
    return np.atleast_1d(np.asarray(q.scales, np.float32))


def _matches(filter_tensor: model_editor.Tensor, kernel: ChannelScaledKernel) -> bool:
    if filter_tensor.dtype != schema.TensorType.INT8 or filter_tensor.buffer is None:
        return False
    codes = kernel.codes.T
    if tuple(int(d) for d in filter_tensor.shape) != codes.shape:
        return False
    scales = _scales(filter_tensor)
    if scales.size != 1 or not np.isclose(scales[0], kernel.scales.min(), rtol=1e-6, atol=0):
        return False
    return np.array_equal(filter_tensor.array, codes)


def _per_channel(scales: np.ndarray) -> model_editor.Quantization:
    return model_editor.Quantization(
        scales=[np.float32(s) for s in scales], zero_points=[0] * len(scales), axis=0
    )


def restore_channel_scales(
    flatbuffer: bytes, kernels: Sequence[ChannelScaledKernel]
) -> bytes:
    """``flatbuffer`` with each of ``kernels`` (traced per tensor) quantized per channel.

    Raises :class:`~tfqnet.errors.ConversionError` when a kernel has no
    FULLY_CONNECTED filter with its codes: its channel scales could not be restored.
    That happens to a Dense layer called more than once: the converter requantizes a
    kernel read by two ops itself (int8, ignoring its FakeQuant).
    """
    if not kernels:
        return bytes(flatbuffer)
    model = model_editor.read(bytes(flatbuffer))
    pending = list(kernels)
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if op.opcode != schema.BuiltinOperator.FULLY_CONNECTED or len(op.inputs) < 2:
                continue
            filter_tensor = op.inputs[1]
            found = None if filter_tensor is None else next(
                (i for i, k in enumerate(pending) if _matches(filter_tensor, k)), None)
            if found is None:
                continue
            kernel = pending.pop(found)  # by position: == on arrays is elementwise
            filter_tensor.quantization = _per_channel(kernel.scales)
            bias = op.inputs[2] if len(op.inputs) > 2 else None
            if bias is not None and bias.buffer is not None:
                op.inputs[2] = _requantized_bias(bias, op.inputs[0], kernel.scales)
    if pending:
        raise ConversionError(
            f"per-channel Dense kernel(s) of shape {sorted({k.codes.shape for k in pending})} "
            "have no FULLY_CONNECTED filter with their codes in the converted model, so "
            "their channel scales cannot be written. The usual cause is a Dense layer "
            "called more than once: the converter requantizes a kernel that two ops read. "
            "Give each call its own Dense layer, or quantize Dense kernels per tensor (srq: "
            "storage='int4')."
        )
    return bytes(model.build())


def _requantized_bias(
    bias: model_editor.Tensor,
    layer_input: model_editor.Tensor,
    scales: np.ndarray,
) -> model_editor.Tensor:
    """A new bias tensor (its own buffer: the converter shares equal constants) on the
    per-channel steps ``s_in * scales``."""
    input_scale = np.float32(_scales(layer_input)[0])
    traced = bias.array.astype(np.float64) * float(_scales(bias)[0])
    steps = (input_scale * scales.astype(np.float32)).astype(np.float32)
    codes = np.clip(np.round(traced / steps.astype(np.float64)), _INT32.min, _INT32.max)
    new = bias.copy()
    new.buffer = model_editor.Buffer(data=codes.astype(np.int32).tobytes())
    new.quantization = _per_channel(steps)
    return new
