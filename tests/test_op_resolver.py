"""NAME_op_resolver.h registers exactly the model's ops, with TFLM's method names."""

from __future__ import annotations

import re

import pytest

from tests.micro_helpers import digits_qat_and_tflite, unsupported_op_tflite
from tfqnet.export.flatbuffer import FlatbufferModel, Operator
from tfqnet.micro.op_resolver import (
    TFLM_BUILTINS,
    UnsupportedOpError,
    op_resolver_header,
    resolver_method,
)

# Names as declared in tensorflow/lite/micro/micro_mutable_op_resolver.h.
KNOWN = {
    "CONV_2D": "AddConv2D",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "FULLY_CONNECTED": "AddFullyConnected",
    "MAX_POOL_2D": "AddMaxPool2D",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "L2_POOL_2D": "AddL2Pool2D",
    "L2_NORMALIZATION": "AddL2Normalization",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "PADV2": "AddPadV2",
    "SPLIT_V": "AddSplitV",
    "CUMSUM": "AddCumSum",
    "ADD_N": "AddAddN",
    "RELU6": "AddRelu6",
    "HARD_SWISH": "AddHardSwish",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "TFLM_DECODE": "AddDecode",
}


@pytest.mark.parametrize("op", sorted(KNOWN))
def test_method_names_match_tflm(op):
    assert resolver_method(op) == KNOWN[op]


def test_every_builtin_maps_to_a_distinct_method():
    methods = [resolver_method(op) for op in TFLM_BUILTINS]
    assert len(set(methods)) == len(methods)
    assert all(re.fullmatch(r"Add[A-Z][A-Za-z0-9]*", m) for m in methods)


def _registered(header: str) -> list[str]:
    return re.findall(r"resolver\.(Add\w+)\(\)", header)


def test_resolver_lists_exactly_the_model_ops(float_digits_model, digits):
    tflite = digits_qat_and_tflite(float_digits_model, digits)[1]
    graph = FlatbufferModel.from_bytes(tflite)
    header = op_resolver_header(graph, "digits")
    registered = _registered(header)
    expected = {resolver_method(op.name) for op in graph.operators}
    assert sorted(registered) == sorted(expected)  # each once, none missing, none extra
    assert f"MicroMutableOpResolver<{len(expected)}>" in header
    assert f"#define DIGITS_OP_COUNT {len(expected)}" in header
    assert "AddConv2D" in registered and "AddFullyConnected" in registered


def test_compressed_model_registers_the_decode_op():
    ops = [Operator(0, "TFLM_DECODE", 1, (0, 1), (2,)), Operator(1, "FULLY_CONNECTED", 9,
           (3, 2), (4,)), Operator(2, "TFLM_DECODE", 1, (5, 6), (7,))]
    graph = FlatbufferModel(data=b"", operators=ops)
    header = op_resolver_header(graph, "tiny")
    assert _registered(header) == ["AddDecode", "AddFullyConnected"]
    assert "MicroMutableOpResolver<2>" in header


def test_op_without_tflm_kernel_is_refused_by_name():
    graph = FlatbufferModel.from_bytes(unsupported_op_tflite())
    with pytest.raises(UnsupportedOpError, match="TOPK_V2"):
        op_resolver_header(graph, "topk")
