"""Per-layer resources of a flatbuffer: which Keras layer each op came from, and its
weight storage (bits, bytes, parameters) and MACs, as the checker reports them.

Pure Python over :class:`~tfqnet.export.flatbuffer.FlatbufferModel`: no TensorFlow,
no native code.
"""

from __future__ import annotations

import numpy as np

from tfqnet.export.flatbuffer import FlatbufferModel, Operator, element_count
from tfqnet.tflite_format import DECODE_OP, ELEMENT_BITS, WEIGHTED_OPS


def layer_name(tensor_name: str) -> str:
    """The Keras layer an op came from, from its output tensor's name.

    ``digits_cnn/quant_conv1/Relu;digits_cnn/...`` -> ``quant_conv1``.
    """
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def op_layer(graph: FlatbufferModel, op: Operator) -> str:
    """The layer name of an op: from its output tensor, else from a constant input
    (the model's last op often outputs 'StatefulPartitionedCall:0')."""
    names = [graph.tensors[i].name for i in op.outputs if i >= 0]
    names += [graph.tensors[i].name for i in op.inputs if i >= 0 and graph.tensors[i].is_constant]
    for name in names:
        if "/" in name.split(";")[0]:
            return layer_name(name)
    return layer_name(names[0]) if names else f"op{op.index}"


def layer_resources(graph: FlatbufferModel) -> list[dict]:
    """Per op with constant weights: storage bits, bytes, parameters and MACs (batch 1).

    A filter that a ``TFLM_DECODE`` op expands from lookup-table indices counts at the
    op that reads it, as stored: its bits are the index width, its bytes the indices
    plus the decode header and value tables (``stored_weight_bytes``); the decode op
    gets no row of its own.
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
            rows.append(_resource_row(graph, op, macs, f"{weight.type} LUT",
                                      round(8 * indices.buffer_bytes / params),
                                      indices.buffer_bytes + tables.buffer_bytes, params,
                                      sum(t.buffer_bytes for t in consts)))
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
