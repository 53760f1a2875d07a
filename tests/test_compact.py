"""Compaction (tfqnet.export.compact): what is dropped, what stays, and that TFLM
computes exactly what it did. The other forms (int8, compressed, raw-pixel input,
per-channel Dense, multi-input/output) are compacted and compared on TFLM where their
own tests convert them (``tests.micro_helpers.compact_exactly``)."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

import tfqnet
from tests.micro_helpers import digits_qat_and_tflite, digits_uncompacted_tflite
from tfqnet.cli import main
from tfqnet.errors import InvalidModelFileError
from tfqnet.export.compact import BUFFER_ALIGNMENT, expand_for_tflite
from tfqnet.export.flatbuffer import FLASH_PARTS, op_layer
from tfqnet.micro.checker import check_model


@pytest.fixture(scope="module")
def models(float_digits_model, digits):
    """(plain, compacted) flatbuffers of the digits W4A8 model."""
    compacted = digits_qat_and_tflite(float_digits_model, digits)[1]
    return digits_uncompacted_tflite(float_digits_model, digits), compacted


def _model(data: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))


def test_operators_and_constant_data_are_unchanged(models):
    plain, compacted = (tfqnet.FlatbufferModel.from_bytes(m) for m in models)
    assert [(o.name, o.inputs, o.outputs) for o in compacted.operators] == \
        [(o.name, o.inputs, o.outputs) for o in plain.operators]
    assert (compacted.inputs, compacted.outputs) == (plain.inputs, plain.outputs)
    for before, after in zip(plain.tensors, compacted.tensors, strict=True):
        assert (after.type, after.shape) == (before.type, before.shape)
        assert after.scales in (before.scales, ())  # () only for convolution biases
        if before.is_constant:
            assert plain.buffers[plain.tensor_buffers[before.index]] == \
                compacted.buffers[compacted.tensor_buffers[after.index]]


def test_what_tflm_never_reads_is_gone(models):
    plain, compacted = models
    graph = tfqnet.FlatbufferModel.from_bytes(plain)
    model = _model(compacted)
    tensors = model.subgraphs[0].tensors
    conv_biases = {op.inputs[2] for op in graph.operators if op.name == "CONV_2D"}
    dense_biases = {op.inputs[2] for op in graph.operators if op.name == "FULLY_CONNECTED"}
    assert conv_biases and dense_biases
    assert all(tensors[i].quantization is None for i in conv_biases)
    assert all(tensors[i].quantization is not None for i in dense_biases)  # its scale is read
    per_channel = [t for t in tensors if t.quantization is not None
                   and t.quantization.scale is not None and len(t.quantization.scale) > 1]
    assert per_channel and all(len(t.quantization.zeroPoint) == 1 for t in per_channel)
    assert all(t.shapeSignature is None for t in tensors)
    assert not model.signatureDefs and model.description is None
    assert not [m for m in model.metadata or [] if m.name == b"min_runtime_version"]
    # each op's output keeps its layer's name, nothing else has one
    named = {i: t.name.decode() for i, t in enumerate(tensors) if t.name}
    assert named == {op.outputs[0]: op_layer(graph, op) for op in graph.operators}
    assert "quant_fc1" in named.values()
    # data-less tensors share buffer 0; no two buffers hold the same bytes
    assert {t.buffer for t in tensors if t.buffer == 0 or model.buffers[t.buffer].data is None} \
        == {0}
    stored = [bytes(b.data) for b in model.buffers if b.data is not None and len(b.data)]
    assert len(stored) == len(set(stored))


def test_every_buffer_starts_at_an_aligned_offset(models):
    _, compacted = models
    model = schema.Model.GetRootAs(compacted, 0)
    for k in range(model.BuffersLength()):
        buffer = model.Buffers(k)
        if buffer.DataLength():
            start = buffer._tab.Vector(buffer._tab.Offset(4))
            assert start % BUFFER_ALIGNMENT == 0, k


def test_compaction_is_idempotent_and_shrinks_metadata(models):
    plain, compacted = models
    assert tfqnet.compact(compacted) == compacted
    before, after = tfqnet.flash_breakdown(plain), tfqnet.flash_breakdown(compacted)
    assert list(after) == list(FLASH_PARTS)
    assert sum(after.values()) == len(compacted) and sum(before.values()) == len(plain)
    assert after["weights"] == before["weights"] and after["biases"] == before["biases"]
    assert after["quantization"] < before["quantization"] / 2
    assert after["names"] < before["names"] / 4


def test_tflite_refuses_the_compacted_model_and_runs_its_expansion(models, digits):
    plain, compacted = models
    with pytest.raises(Exception, match="zero_point"):
        Interpreter(model_content=compacted).allocate_tensors()

    def tflite_outputs(data: bytes) -> np.ndarray:
        lite = Interpreter(model_content=data,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        lite.allocate_tensors()
        (inp,), (out,) = lite.get_input_details(), lite.get_output_details()
        scale, zero = inp["quantization"]
        results = []
        for x in digits.x_test[:16]:
            codes = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
            lite.set_tensor(inp["index"], codes[None])
            lite.invoke()
            results.append(lite.get_tensor(out["index"]))
        return np.concatenate(results)

    np.testing.assert_array_equal(tflite_outputs(expand_for_tflite(compacted)),
                                  tflite_outputs(plain))
    assert expand_for_tflite(plain) == plain


def test_check_passes_on_the_compacted_model_layer_by_layer(models, digits):
    report = check_model(models[1], data=digits.x_test[:16], samples=16)
    assert report.passed, report.failures
    assert report.layer_check == "passed"
    assert "quant_fc1" in {r.layer for r in report.layers}
    assert list(report.flash) == list(FLASH_PARTS)
    assert sum(report.flash.values()) == report.model_bytes == len(models[1])
    assert "flash by part: weights " in report.format_table()


def test_corrupt_input_is_refused():
    with pytest.raises(InvalidModelFileError):
        tfqnet.compact(b"not a model at all")


def test_cli_compacts_compares_and_refuses_to_overwrite(models, tmp_path, capsys):
    plain, compacted = models
    source, target = tmp_path / "in.tflite", tmp_path / "out.tflite"
    source.write_bytes(plain)
    assert main(["compact", str(source), str(target)]) == 0
    assert target.read_bytes() == compacted
    printed = capsys.readouterr().out
    assert "bit-identical on 8 random inputs" in printed and "quantization" in printed
    assert main(["compact", str(source), str(target)]) == 2  # exists: --force needed
    assert main(["compact", str(source), str(source), "--force"]) == 2  # never the input
    assert source.read_bytes() == plain
    assert main(["compact", str(source), str(target), "--force", "--no-layer-names"]) == 0
    assert not [t for t in _model(target.read_bytes()).subgraphs[0].tensors if t.name]


def test_convert_refuses_a_compact_that_is_not_a_bool(models):
    with pytest.raises(ValueError, match="compact must be True or False"):
        tfqnet.convert(None, None, compact="yes")
