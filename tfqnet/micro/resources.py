"""Per-layer resources of a flatbuffer: which Keras layer each op came from, and its
weight storage (bits, bytes, parameters) and MACs, as the checker reports them.

Pure Python over :class:`~tfqnet.export.flatbuffer.FlatbufferModel`: no TensorFlow,
no native code.
"""

from __future__ import annotations

import numpy as np

from tfqnet.export.flatbuffer import FlatbufferModel, Operator, element_count, op_layer
from tfqnet.tflite_format import DECODE_HEADER_BYTES, DECODE_OP, ELEMENT_BITS, WEIGHTED_OPS


def layer_resources(graph: FlatbufferModel) -> list[dict]:
    """Per op with constant weights: storage bits, bytes, parameters and MACs (batch 1).

    A filter that a ``TFLM_DECODE`` op expands from lookup-table indices counts at the
    op that reads it, as stored: its bits are the index width, its bytes the indices
    plus the decode header and value tables (``stored_weight_bytes``); the decode op
    gets no row of its own. ``weight_values``: the distinct integer codes of a filter
    (of its value tables when compressed), so a ternary kernel in an INT4 container
    shows 3 beside its 4 stored bits.
    """
    decoded = {out: (op, k) for op in graph.operators if op.name == DECODE_OP
               for k, out in enumerate(op.outputs)}
    rows = []
    for op in graph.operators:
        if op.name == DECODE_OP:
            continue
        consts = [graph.tensors[i] for i in op.inputs if i >= 0 and graph.tensors[i].is_constant]
        if op.name not in WEIGHTED_OPS:  # skip shape/axis operands (RESHAPE, MEAN, ...)
            consts = [t for t in consts if t.type != "INT32"]
        macs = _macs(graph, op)
        weight = None
        if op.name in WEIGHTED_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
            weight = graph.tensors[op.inputs[1]]
        if weight is not None and weight.index in decoded:
            decode, k = decoded[weight.index]
            indices, tables = (graph.tensors[decode.inputs[2 * k + j]] for j in (0, 1))
            params = element_count(weight.shape)
            row = _resource_row(graph, op, macs, f"{weight.type} LUT",
                                round(8 * indices.buffer_bytes / params),
                                indices.buffer_bytes + tables.buffer_bytes, params,
                                sum(t.buffer_bytes for t in consts))
            table_bytes = graph.buffers[graph.tensor_buffers[tables.index]][DECODE_HEADER_BYTES:]
            row["weight_values"] = int(np.unique(np.frombuffer(table_bytes, np.int8)).size)
            rows.append(row)
            continue
        if not consts and not macs:
            continue
        if weight is None or not weight.is_constant:
            weight = consts[0] if consts else None
        rows.append(_resource_row(
            graph, op, macs,
            weight.type if weight is not None else None,
            ELEMENT_BITS.get(weight.type) if weight is not None else None,
            weight.buffer_bytes if weight is not None else 0,
            element_count(weight.shape) if weight is not None else 0,
            sum(t.buffer_bytes for t in consts if t is not weight),
        ))
        if weight is not None and weight.type in ("INT4", "INT8") and op.name in WEIGHTED_OPS:
            rows[-1]["weight_values"] = int(np.unique(graph.constant_values(weight)).size)
    return rows


def _resource_row(graph: FlatbufferModel, op: Operator, macs: int, weight_type: str | None,
                  bits: int | None, weight_bytes: int, params: int, other: int) -> dict:
    return {
        "index": op.index,
        "op": op.name,
        "layer": op_layer(graph, op),
        "weight_type": weight_type,
        "weight_bits": bits,
        "weight_bytes": weight_bytes,
        "weight_params": params,
        "other_const_bytes": other,
        "macs": macs,
        "weight_values": None,
    }


def _macs(graph: FlatbufferModel, op: Operator) -> int:
    if op.name not in WEIGHTED_OPS or len(op.inputs) < 2 or not op.outputs:
        return 0
    out = graph.tensors[op.outputs[0]].shape
    filt = graph.tensors[op.inputs[1]].shape
    if not out or not filt:
        return 0
    if op.name == "CONV_2D":  # filter (Cout, kh, kw, Cin)
        return element_count(out) * int(np.prod(filt[1:]))
    if op.name == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, Cout)
        return element_count(out) * int(filt[1] * filt[2])
    if op.name == "FULLY_CONNECTED":  # filter (units, in)
        return element_count(out) * int(filt[-1])
    if op.name == "TRANSPOSE_CONV":  # filter (Cout, kh, kw, Cin); work per input pixel
        return element_count(graph.tensors[op.inputs[2]].shape) * int(np.prod(filt[:3]))
    return 0
