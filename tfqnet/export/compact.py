"""Compaction: a flatbuffer that carries only what TensorFlow Lite Micro reads.

The converter writes, beside the weights, metadata no TFLM kernel or allocator reads.
:func:`compact` rewrites the flatbuffer without it; every item below was found in
TFLM's sources and is proven by running the compacted model on the TFLM runtime
(outputs bit-identical to the original: ``tests/test_compact.py``):

- **per-channel zero points** (int64, one per output channel) that are all equal are
  stored once: TFLM's allocator reads ``zero_point[0]`` for every channel when the
  array is shorter than the scales (weights are symmetric, so all are 0);
- **quantization of int32 biases of CONV_2D and DEPTHWISE_CONV_2D** (a float32 scale
  and an int64 zero point per channel) is dropped: those kernels derive their
  per-channel multipliers from the input, filter and output scales only.
  FULLY_CONNECTED checks its bias scale, so its biases keep theirs;
- **quantization of the inputs of** ``TFLM_DECODE`` (a compressed filter's encoded
  indices carry a copy of its per-channel scales and zero points, which the
  compression tool means to drop) is dropped: the decode kernel reads those inputs as
  bytes, and it and the filter's consumer read the quantization of the decoded tensor,
  which keeps it;
- ``min``/``max`` arrays, ``shape_signature``, signature defs, the description and
  the ``min_runtime_version``/``CONVERSION_METADATA`` metadata, none of which TFLM
  reads (other metadata, e.g. TFLM compression's, is kept);
- **tensor names**: each operator's first output keeps only the Keras layer it came
  from (what ``tfqnet check`` and ``export-c`` show), every other name is dropped
  (``keep_layer_names=False`` drops all);
- duplicate buffers are stored once, and every tensor without data shares buffer 0.

Buffers are written 16-byte aligned (as TFLM's ``tflite_flatbuffer_align`` does).
The result runs on TFLM only: TFLite's interpreter refuses a zero-point array shorter
than its scales (:func:`expand_for_tflite` restores them for a reference run).
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet.export.flatbuffer import BUILTIN_OPS, FlatbufferModel, op_layer
from tfqnet.tflite_format import DECODE_OP, unpack_int4

#: metadata entries the converter writes and TFLM never reads
UNREAD_METADATA = frozenset({"min_runtime_version", "CONVERSION_METADATA"})
#: ops whose int32 bias (input 2) is read as data only, never its quantization
BIAS_SCALE_FREE_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})
#: alignment of every buffer's data, as TFLM's flatbuffer aligner writes it
BUFFER_ALIGNMENT = 16
#: the newest DEPTHWISE_CONV_2D version with int8 filters (7 reads INT4 filters)
INT8_DEPTHWISE_VERSION = 6

class _AlignedBuffer(schema.BufferT):
    """A buffer packed with its data at a ``BUFFER_ALIGNMENT`` boundary."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (schema API)
        data = None
        if self.data is not None and len(self.data):
            payload = np.asarray(self.data, np.uint8).tobytes()
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.offset)
        schema.BufferAddSize(builder, self.size)
        return schema.BufferEnd(builder)


def _read(flatbuffer: bytes) -> tuple[FlatbufferModel, schema.ModelT]:
    """The parsed model and its schema object (which the caller may rewrite: the
    parsed tensors and operators are copies)."""
    graph = FlatbufferModel.from_bytes(flatbuffer)  # raises InvalidModelFileError
    return graph, graph.schema_model


def _pack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _op_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    """The builtin operator's name, or a custom operator's code (``TFLM_DECODE``)."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM and code.customCode is not None:
        custom = code.customCode
        return custom.decode("utf-8", "replace") if isinstance(custom, bytes) else str(custom)
    return BUILTIN_OPS.get(builtin, "")


def _quantization_unread(model: schema.ModelT, graph: schema.SubGraphT) -> set[int]:
    """Tensors read only as the bias of ``BIAS_SCALE_FREE_OPS`` or as inputs of
    ``TFLM_DECODE``: no reader uses their quantization."""
    uses: dict[int, set[bool]] = {}
    for op in graph.operators or []:
        name = _op_name(model, op)
        for position, index in enumerate(op.inputs if op.inputs is not None else []):
            unread = name == DECODE_OP or (name in BIAS_SCALE_FREE_OPS and position == 2)
            uses.setdefault(int(index), set()).add(unread)
    return {index for index, kinds in uses.items() if kinds == {True}}


def _compact_quantization(q: schema.QuantizationParametersT | None):
    if q is None:
        return None
    q.min = q.max = None
    if q.zeroPoint is not None and len(q.zeroPoint) > 1 and len(set(q.zeroPoint)) == 1:
        q.zeroPoint = [int(q.zeroPoint[0])]
    return q


def _layer_names(graph: FlatbufferModel) -> dict[int, str]:
    names: dict[int, str] = {}
    for op in graph.operators:
        if op.outputs and op.outputs[0] >= 0:
            names.setdefault(op.outputs[0], op_layer(graph, op))
    return names


def _share_buffers(model: schema.ModelT) -> None:
    """Stores identical buffers once, points data-less tensors at buffer 0 and drops
    the buffers nothing references."""
    buffers = model.buffers or []
    empty = buffers[0] if buffers and (buffers[0].data is None or not len(buffers[0].data)) \
        else None
    kept: list[schema.BufferT] = [empty if empty is not None else schema.BufferT()]
    by_content: dict[bytes, int] = {}
    remap: dict[int, int] = {}

    def place(index: int) -> int:
        if index in remap:
            return remap[index]
        buffer = buffers[index] if 0 <= index < len(buffers) else None
        if buffer is None or ((buffer.data is None or not len(buffer.data)) and not buffer.size):
            remap[index] = 0
            return 0
        key = b"" if buffer.data is None else np.asarray(buffer.data, np.uint8).tobytes()
        key += f"|{buffer.offset}|{buffer.size}".encode()
        if key not in by_content:
            by_content[key] = len(kept)
            kept.append(buffer)
        remap[index] = by_content[key]
        return remap[index]

    for graph in model.subgraphs or []:
        for tensor in graph.tensors or []:
            tensor.buffer = place(int(tensor.buffer))
    for entry in model.metadata or []:
        # metadata is never shared: TFLM finds it by name, content must stay distinct
        buffer = buffers[entry.buffer]
        entry.buffer = len(kept)
        kept.append(buffer)
    model.buffers = [_aligned(b) for b in kept]


def _aligned(buffer: schema.BufferT) -> _AlignedBuffer:
    aligned = _AlignedBuffer()
    aligned.data, aligned.offset, aligned.size = buffer.data, buffer.offset, buffer.size
    return aligned


def compact(flatbuffer: bytes, keep_layer_names: bool = True) -> bytes:
    """``flatbuffer`` without what TFLM never reads (see the module docstring).

    Idempotent; the operators, tensors, their order and every byte of constant data
    are unchanged. Raises :class:`~tfqnet.errors.InvalidModelFileError` if
    ``flatbuffer`` is not a readable TFLite model.
    """
    graph, model = _read(flatbuffer)
    layer_names = _layer_names(graph) if keep_layer_names else {}
    for index, subgraph in enumerate(model.subgraphs or []):
        free = _quantization_unread(model, subgraph)
        subgraph.name = None
        for k, tensor in enumerate(subgraph.tensors or []):
            name = layer_names.get(k) if index == 0 else None
            tensor.name = name.encode() if name else None
            tensor.shapeSignature = None
            tensor.quantization = None if k in free else _compact_quantization(
                tensor.quantization)
    model.signatureDefs = None
    model.description = None
    model.metadata = [m for m in model.metadata or []
                      if (m.name or b"").decode("utf-8", "replace") not in UNREAD_METADATA]
    _share_buffers(model)
    return _pack(model)


def expand_for_tflite(flatbuffer: bytes) -> bytes:
    """A model TFLite's reference interpreter loads and that computes what TFLM computes
    on ``flatbuffer``: every zero-point array as long as its scales again, and INT4
    depthwise filters (TFLite's BUILTIN_REF has no DEPTHWISE_CONV_2D v7) unpacked to
    int8 codes (the values TFLM unpacks them to) under an int8 version of the op.
    Unchanged when neither applies."""
    _, model = _read(flatbuffer)
    changed = False
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            q = tensor.quantization
            if q is not None and q.scale is not None and q.zeroPoint is not None \
                    and 0 < len(q.zeroPoint) < len(q.scale):
                q.zeroPoint = [int(q.zeroPoint[0])] * len(q.scale)
                changed = True
        for op in subgraph.operators or []:
            if _op_name(model, op) != "DEPTHWISE_CONV_2D" or len(op.inputs) < 2:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            buffer = model.buffers[tensor.buffer]
            if tensor.type != schema.TensorType.INT4 or buffer.data is None:
                continue
            count = int(np.prod(tensor.shape)) if tensor.shape is not None else 1
            codes = unpack_int4(np.asarray(buffer.data, np.uint8).tobytes(), count)
            replacement = schema.BufferT()
            replacement.data = codes.view(np.uint8)
            tensor.buffer = len(model.buffers)
            model.buffers.append(replacement)
            tensor.type = schema.TensorType.INT8
            code = model.operatorCodes[op.opcodeIndex]
            code.version = min(code.version, INT8_DEPTHWISE_VERSION)
            changed = True
    if not changed:
        return bytes(flatbuffer)
    model.buffers = [_aligned(b) for b in model.buffers or []]
    return _pack(model)
