"""Weights as bit-packed lookup-table indices: TFLM compression (``TFLM_DECODE``).

A weight tensor with few distinct values (a ternary kernel has 3 per channel) can
be stored as ``b``-bit indices into one small value table (or one per channel)
instead of 4-bit or 8-bit codes. tflite-micro's compression tool
(:mod:`tflite_micro.compression`) rewrites such tensors and inserts a ``TFLM_DECODE``
custom operator before each consumer; at run time it expands the indices back into
the int8 codes, so the consumer computes exactly what it computed before.

**The result runs on TensorFlow Lite Micro only** (with ``TFLM_DECODE`` in the op
resolver). TFLite's interpreter cannot run it, and the arena must hold the decoded
int8 weights of the largest layer.

TFLM compression does not read INT4 tensors, so packed INT4 filters are first
unpacked to INT8 (same codes, same scales) in the flatbuffer; their indices then
take ``b`` bits (2 for ternary weights) plus the value tables.

Sizes (ternary): 2 bits per weight plus a 16-byte decode header and one value table
of 3 int8 entries ({-7, 0, 7}: every channel's codes, its scale stays in the decoded
tensor's quantization), against 4 bits (INT4) or 8 bits (int8). Filters whose
header and table are equal share them (one ancillary tensor).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from tflite_micro.tensorflow.lite.micro.compression import (
    compress as tflm_compress,
)
from tflite_micro.tensorflow.lite.micro.compression import decode, model_editor, spec
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet.export.compact import compact
from tfqnet.export.flatbuffer import FlatbufferModel, op_layer
from tfqnet.tflite_format import (
    DECODE_HEADER_BYTES,
    DECODE_OP,
    ELEMENT_BITS,
    LUT_ONE_TABLE_AXIS,
    LUT_PARAMS_OFFSET,
    LUT_STRIDE_OFFSET,
    MAX_INDEX_BITS,
    WEIGHTED_OPS,
    lut_weight_bytes,
    unpack_int4,
)

_WEIGHTED_OPCODES = {getattr(schema.BuiltinOperator, name) for name in WEIGHTED_OPS}
_CONTAINER_BITS = {getattr(schema.TensorType, t): ELEMENT_BITS[t] for t in ("INT4", "INT8")}
TFLM_ONLY_WARNING = (
    "the compressed model stores weights as TFLM_DECODE lookup-table indices: it runs on "
    "TensorFlow Lite Micro only (register the TFLM_DECODE op); TFLite cannot run it."
)


def _codes(tensor: model_editor.Tensor) -> np.ndarray:
    """A filter's integer codes as int8 of its shape (INT4 unpacked)."""
    count = math.prod(tensor.shape)
    if tensor.dtype == schema.TensorType.INT4:
        return unpack_int4(tensor.buffer.data, count).reshape(tensor.shape)
    return np.frombuffer(tensor.buffer.data, dtype=np.int8)[:count].reshape(tensor.shape)


def _lut_axis(tensor: model_editor.Tensor) -> int | None:
    """The quantized (channel) axis of a per-channel tensor, None for per-tensor."""
    q = tensor.quantization
    if q is None or isinstance(q.scales, int | float) or len(q.scales) <= 1:
        return None
    return int(q.axis or 0)


def index_bits(codes: np.ndarray, axis: int | None) -> int:
    """Bits an index needs for the most distinct values of one table (at least 1)."""
    tables = [codes] if axis is None else list(np.moveaxis(codes, axis, 0))
    most = max(np.unique(t).size for t in tables)
    return max(1, (most - 1).bit_length())


def _compressed_size(codes: np.ndarray, width: int, axis: int | None) -> int:
    """Bytes of the packed indices, the 16-byte decode header and the value tables."""
    tables = [codes] if axis is None else list(np.moveaxis(codes, axis, 0))
    stride = max(np.unique(t).size for t in tables)
    return lut_weight_bytes(codes.size, width, len(tables), stride)


def _table_layout(codes: np.ndarray, channel_axis: int | None, container_bits: int,
                  bits: int | None, max_index_bits: int) -> tuple[int, int | None] | None:
    """(index width, table axis) of the fewest bytes for a filter's ``codes``: one value
    table for the whole tensor (axis None) or, for a per-channel filter, one per channel
    along ``channel_axis``; None when neither fits. Width: the narrowest that fits
    (``bits=None``; narrower than the container and at most ``max_index_bits``) or
    ``bits``. One table wins ties: a grid kernel's codes all fit one table of
    ``2**b - 1`` entries at its width ``b``, which costs ``C - 1`` fewer tables."""
    best: tuple[int, int, int | None] | None = None
    for axis in (None,) if channel_axis is None else (None, channel_axis):
        needed = index_bits(codes, axis)
        if bits is None:
            if needed >= container_bits or needed > max_index_bits:
                continue
            width = needed
        elif needed <= bits:
            width = bits
        else:
            continue
        size = _compressed_size(codes, width, axis)
        if best is None or size < best[0]:
            best = (size, width, axis)
    return None if best is None else best[1:]


def compress(flatbuffer: bytes, bits: int | None = None, compacted: bool = False) -> bytes:
    """Stores filters with few distinct values as bit-packed indices (TFLM only).

    Every constant filter (input 1 of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
    TRANSPOSE_CONV) stored as INT4 or INT8 is considered. With ``bits=None`` a filter
    is compressed when its values fit an index narrower than its container (INT4: at
    most 8 distinct values per table, INT8: at most 128), at the narrowest width that
    fits. With ``bits`` (1..7) the filters whose values fit ``bits``-bit indices are
    compressed at that width. Tables: one for the whole filter, or one per channel for
    a per-channel quantized filter when that takes fewer bytes (a narrower index); one
    table serves every channel with stride 0 (:func:`_one_table_stride_zero`). A filter
    stays as it is unless compressing it makes the flatbuffer smaller: its indices,
    decode header and tables must be smaller than its buffer, and filters are added,
    largest saving alone first, wherever the whole file shrinks (measured: each also
    adds a decoded tensor, decode-op inputs and an operator, ~0.2 KB compacted, more
    than a depthwise or small filter saves; filters sharing one table share its
    ancillary tensor). INT4 filters are unpacked to INT8 first (TFLM compression does
    not read INT4). ``compacted``: sizes are compared as the files will be stored after
    :func:`tfqnet.export.compact.compact` (which drops the encoded tensors' copy of
    the quantization and shortens the decoded tensors' zero points, so smaller filters
    pay). Raises ValueError if no filter qualifies or the result would not be smaller
    than ``flatbuffer``.

    **The returned model runs on TensorFlow Lite Micro only** (op ``TFLM_DECODE``);
    a warning says so.
    """
    if bits is not None and not (
        isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= MAX_INDEX_BITS
    ):
        raise ValueError(
            f"bits must be None or an integer from 1 to {MAX_INDEX_BITS}, got {bits!r}"
        )
    compressed, _ = _compress_where_smaller(flatbuffer, bits, MAX_INDEX_BITS, compacted)
    if compressed is None:
        limit = f"{bits}-bit" if bits is not None else "narrower-than-container"
        raise ValueError(
            f"no INT4/INT8 filter has few enough distinct values for {limit} indices "
            "and enough weights for compression to make the model smaller"
        )
    size = _stored_size(compacted)
    if size(compressed) >= size(flatbuffer):
        raise ValueError(
            f"compression would not make this model smaller ({size(compressed)} bytes "
            f"compressed vs {size(flatbuffer)}): its filters are too small for the value "
            "tables and per-tensor decode overhead to pay off; keep it uncompressed"
        )
    warnings.warn(TFLM_ONLY_WARNING, stacklevel=2)
    return compressed


def compress_narrow(flatbuffer: bytes, max_index_bits: int,
                    compacted: bool = False) -> tuple[bytes, list[str]]:
    """``flatbuffer`` with the filters whose values fit at most ``max_index_bits``-bit
    indices stored so, where that makes the file smaller (the rules of
    :func:`compress` with ``bits=None``), and the layers whose filters it compressed.
    Returns ``flatbuffer`` unchanged and ``[]`` when none qualifies; never raises for
    that. A compressed result runs on TFLM only."""
    compressed, layers = _compress_where_smaller(flatbuffer, None, max_index_bits, compacted)
    size = _stored_size(compacted)
    if compressed is None or size(compressed) >= size(flatbuffer):
        return bytes(flatbuffer), []
    return compressed, layers


def _stored_size(compacted: bool) -> Callable[[bytes], int]:
    """Bytes a flatbuffer will be stored in: as it is, or after compaction."""
    return (lambda data: len(compact(data))) if compacted else len


def _compress_where_smaller(
    flatbuffer: bytes, bits: int | None, max_index_bits: int, compacted: bool
) -> tuple[bytes | None, list[str]]:
    """The compressed flatbuffer and its compressed filters' layers (None, [] when no
    filter qualifies)."""
    graph = FlatbufferModel.from_bytes(flatbuffer)  # also: clear error for a non-TFLite input
    model = model_editor.read(bytes(flatbuffer))

    chosen: dict[int, tuple[_Filter, model_editor.Tensor]] = {}
    for sg_index, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            if op.opcode not in _WEIGHTED_OPCODES or len(op.inputs) < 2:
                continue
            tensor = op.inputs[1]
            if tensor is None or tensor.buffer is None or not tensor.buffer.data:
                continue
            if tensor.dtype not in _CONTAINER_BITS or id(tensor) in chosen:
                continue
            codes = _codes(tensor)
            layout = _table_layout(codes, _lut_axis(tensor), _CONTAINER_BITS[tensor.dtype],
                                   bits, max_index_bits)
            if layout is None:
                continue
            width, axis = layout
            if _compressed_size(codes, width, axis) >= len(tensor.buffer.data):
                continue  # too small a tensor: header and tables outweigh the savings
            chosen[id(tensor)] = (_Filter(sg_index, tensor.index, width, axis), tensor)

    # A buffer shared with a tensor left as it is must keep its bytes.
    users: dict[int, list[int]] = {}
    for tensor in model_editor.iter_tensors(model):
        if tensor.buffer is not None:
            users.setdefault(id(tensor.buffer), []).append(id(tensor))

    groups: dict[int, list[_Filter]] = {}  # filters by buffer; a buffer goes as a whole
    for f, tensor in chosen.values():
        groups.setdefault(id(tensor.buffer), []).append(f)
    # Sizes are measured, not estimated: flatbuffer alignment makes savings of several
    # filters not add up. Each whole-buffer group is tried alone, then added greedily,
    # largest saving first, wherever the file shrinks: also groups that grow it alone,
    # as filters sharing one value table share its ancillary tensor.
    size = _stored_size(compacted)
    smallest = size(_compressed(flatbuffer, []))  # rebuilt as the compressed ones are
    alone = {
        buffer: size(_compressed(flatbuffer, filters))
        for buffer, filters in groups.items()
        if len(filters) == len(users[buffer])
    }
    chosen_filters: list[_Filter] = []
    for buffer in sorted(alone, key=alone.get):
        total = size(_compressed(flatbuffer, chosen_filters + groups[buffer]))
        if total < smallest:
            chosen_filters, smallest = chosen_filters + groups[buffer], total
    if not chosen_filters:
        return None, []
    layers = []
    for f in chosen_filters:
        consumers = [op for op in graph.operators if len(op.inputs) > 1 and
                     op.inputs[1] == f.tensor and op.name in WEIGHTED_OPS]
        layers.extend(f"{op_layer(graph, op)} ({f.bits}-bit)" for op in consumers)
    return _compressed(flatbuffer, chosen_filters), layers


class _Filter(NamedTuple):
    """A filter to store as ``bits``-bit indices, tables along ``axis`` (None: one)."""

    subgraph: int
    tensor: int
    bits: int
    axis: int | None


def _compressed(flatbuffer: bytes, filters: Sequence[_Filter]) -> bytes:
    """``flatbuffer`` with ``filters`` stored as lookup-table indices (no filters: just
    rebuilt by the model editor, as the compression tool rebuilds it)."""
    model = model_editor.read(bytes(flatbuffer))
    tensors = [model.subgraphs[f.subgraph].tensors[f.tensor] for f in filters]
    codes = [_codes(t) for t in tensors]  # all read before a shared buffer is rewritten
    for tensor, values in zip(tensors, codes, strict=True):
        if tensor.dtype == schema.TensorType.INT4:
            tensor.dtype = schema.TensorType.INT8
            tensor.buffer.data = values.astype(np.int8).tobytes()
    specs = [
        spec.Tensor(
            subgraph=f.subgraph,
            tensor=f.tensor,
            compression=[spec.LookUpTableCompression(
                index_bitwidth=f.bits,
                mode=spec.PerTensor() if f.axis is None else spec.PerChannel(axis=f.axis),
            )],
        )
        for f in filters
    ]
    built = bytes(model.build())
    return _one_table_stride_zero(bytes(tflm_compress(built, specs))) if specs else built


def _one_table_stride_zero(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` with the stride of every single LUT value table set to 0, in place.

    TFLM's LUT decoder (``DecodeStateLut::Setup``/``DecompressToBuffer*``) counts
    channels by the decoded tensor's scales and advances ``stride`` entries per
    channel; the compression tool writes a single table with the stride of its length,
    so every channel after the first of a per-channel filter would read past it. With
    stride 0 every channel reads the one table (``tflite_format.LUT_STRIDE_OFFSET``).
    A per-tensor quantized filter has one channel: the stride is never applied."""
    data = bytearray(flatbuffer)
    model = schema.Model.GetRootAs(data, 0)
    decode_codes = {k for k in range(model.OperatorCodesLength())
                    if model.OperatorCodes(k).CustomCode() == DECODE_OP.encode()}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if op.OpcodeIndex() not in decode_codes:
                continue
            for k in range(1, op.InputsLength(), 2):  # (encoded, ancillary) pairs
                buffer = model.Buffers(graph.Tensors(op.Inputs(k)).Buffer())
                header = buffer.DataAsNumpy()  # a view into ``data`` (0 if it has none)
                if (isinstance(header, np.ndarray) and len(header) >= DECODE_HEADER_BYTES
                        and header[0] == int(decode.DecodeType.LUT)
                        and header[LUT_PARAMS_OFFSET] >> 4 == LUT_ONE_TABLE_AXIS):
                    header[LUT_STRIDE_OFFSET] = 0
    return bytes(data)


def compress_ternary(flatbuffer: bytes) -> bytes:
    """``compress(flatbuffer, bits=2)``: ternary filters as 2-bit indices (TFLM only)."""
    return compress(flatbuffer, bits=2)


def stored_weight_bytes(flatbuffer: bytes) -> int:
    """Bytes the model stores for its filters, compressed or not.

    A plain filter counts its buffer. A filter produced by ``TFLM_DECODE`` counts the
    encoded indices and the ancillary data (decode header and value tables) the
    decode reads for it; a buffer or ancillary tensor shared by several filters
    counts once.
    """
    model = FlatbufferModel.from_bytes(flatbuffer)
    produced_by = {out: (op, k) for op in model.operators for k, out in enumerate(op.outputs)}
    buffer_of = _buffer_indices(flatbuffer)
    counted: set[int] = set()
    total = 0
    for op in model.operators:
        if op.name not in WEIGHTED_OPS:
            continue
        if len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        sources = [op.inputs[1]]
        producer = produced_by.get(op.inputs[1])
        if producer is not None and producer[0].name == DECODE_OP:
            decode, k = producer
            sources = [decode.inputs[2 * k], decode.inputs[2 * k + 1]]
        for index in sources:
            buffer = buffer_of[index]
            if buffer and buffer not in counted:
                counted.add(buffer)
                total += model.tensors[index].buffer_bytes
    return total


def _buffer_indices(flatbuffer: bytes) -> list[int]:
    graph = schema.Model.GetRootAs(bytes(flatbuffer), 0).Subgraphs(0)
    return [graph.Tensors(i).Buffer() for i in range(graph.TensorsLength())]
