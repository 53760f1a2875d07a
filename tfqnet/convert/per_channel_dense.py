"""Per-channel Dense kernels: their channel scales, written into the flatbuffer.

The TFLite converter stores a Dense kernel transposed ([out, in]) and fails on a
per-output-channel FakeQuant before that transpose ("'tfl.transpose' op has mismatched
quantized axes"), although TFLM's FULLY_CONNECTED computes per-channel int8 filters
exactly (one requantization multiplier per output channel, as CONV_2D).
:func:`tfqnet.convert` therefore traces such a kernel as its integer codes on one
per-tensor step, the smallest channel scale (:func:`tfqnet.grid.per_channel_dense_export`),
and :func:`restore_channel_scales` then gives the tensor its trained scales:

* the filter keeps its int8 codes and gets ``scales[c]`` on axis 0;
* the int32 bias, stored on the step ``s_in * step``, is requantized onto the
  per-channel steps ``s_in * scales[c]`` that TFLite and TFLM expect. Its first
  rounding is on the finer of the two steps (``step <= scales[c]``), so the stored
  bias is within one code of the float bias rounded directly onto its channel's step.

The codes decide which FULLY_CONNECTED belongs to which recorded kernel: a filter
matches when its shape, its codes and its traced step are those of the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tflite_micro.tensorflow.lite.micro.compression import model_editor
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet.errors import ConversionError
from tfqnet.grid import ChannelScaledKernel

_INT32 = np.iinfo(np.int32)


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
