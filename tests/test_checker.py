"""The reference kernel checker: passes the digits model, fails what cannot run on a
board or disagrees with the Keras model, and reports resources that add up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.micro_helpers import (
    digits_qat_and_tflite,
    disagreeing_qat_model,
    unsupported_op_tflite,
)
from tfqnet.errors import InvalidModelFileError
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.micro.arena import with_margin
from tfqnet.micro.c_arrays import align_flatbuffer
from tfqnet.micro.checker import check_model


@pytest.fixture(scope="module")
def qat_and_tflite(float_digits_model, digits):
    return digits_qat_and_tflite(float_digits_model, digits)


@pytest.fixture(scope="module")
def report(qat_and_tflite, digits):
    qat, tflite = qat_and_tflite
    return check_model(tflite, data=digits.x_test, keras_model=qat, samples=48)


def test_digits_model_passes_every_check(report):
    assert report.passed, report.format_table()
    assert report.samples == 48
    assert report.layer_check == "passed"
    assert report.keras["passed"] and report.keras["top1_agreement"] >= 0.95
    assert report.format_table().rstrip().endswith("PASS")


def test_layer_statuses_are_exact_except_known_fc_rounding(report):
    by_op = {}
    for layer in report.layers:
        by_op.setdefault(layer.op, set()).add(layer.status)
        assert layer.isolated_samples > 0
    assert by_op["CONV_2D"] == {"exact"}  # BUILTIN_REF matches TFLM bit for bit
    assert by_op["FULLY_CONNECTED"] <= {"exact", "known rounding (+-1 LSB)", "propagated"}
    fc = [r for r in report.layers if r.op == "FULLY_CONNECTED"]
    assert all((r.isolated_max_diff or 0) <= 1 for r in fc)


def test_resources_add_up(report, qat_and_tflite):
    tflite = qat_and_tflite[1]
    graph = FlatbufferModel.from_bytes(tflite)
    assert report.flash_bytes == len(align_flatbuffer(tflite))
    assert report.arena_reported == with_margin(report.arena_minimum)
    rows = {r["index"]: r for r in report.resources}
    macs = 0
    for op in graph.operators:
        out = graph.tensors[op.outputs[0]].shape
        filt = graph.tensors[op.inputs[1]].shape if len(op.inputs) > 1 else ()
        if op.name == "CONV_2D":  # H*W*Cout * kh*kw*Cin
            macs += out[1] * out[2] * out[3] * filt[1] * filt[2] * filt[3]
        elif op.name == "FULLY_CONNECTED":
            macs += out[-1] * filt[-1]
        if op.name in ("CONV_2D", "FULLY_CONNECTED"):
            assert rows[op.index]["weight_bits"] == 4  # INT4 filters
            assert rows[op.index]["weight_bytes"] == graph.tensors[op.inputs[1]].buffer_bytes
    assert report.total_macs == macs > 0
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


def test_op_without_tflm_kernel_fails_naming_it():
    bad = check_model(unsupported_op_tflite())
    assert not bad.passed
    text = "\n".join(bad.failures)
    assert "TOPK_V2" in text
    # Not only the static table: the TFLM runtime itself refused to load the model.
    assert any("Didn't find op for builtin opcode 'TOPK_V2'" in e for e in bad.failures)
    assert bad.layer_check.startswith("skipped")


def test_keras_model_that_disagrees_fails(qat_and_tflite, float_digits_model, digits):
    other = disagreeing_qat_model(float_digits_model, digits)
    bad = check_model(qat_and_tflite[1], data=digits.x_test, keras_model=other, samples=32)
    assert bad.layer_check == "passed"  # the flatbuffer itself is fine ...
    assert not bad.passed  # ... but it is not the model that was trained
    assert bad.keras["top1_agreement"] < 0.5
    assert "top-1 agreement" in bad.failures[0]


def test_generated_inputs_when_no_data(qat_and_tflite):
    result = check_model(qat_and_tflite[1], samples=8)
    assert result.samples == 8 and result.layer_check == "passed"


def test_corrupt_bytes_raise_invalid_model_file():
    data = bytearray(b"\x18\x00\x00\x00TFL3" + bytes(40))
    with pytest.raises(InvalidModelFileError):
        check_model(bytes(data))
    with pytest.raises(InvalidModelFileError):
        check_model(np.zeros(3).tobytes())


def test_resources_count_a_compressed_filter_as_stored(qat_and_tflite):
    from tfqnet.export.compression import _compressed, _Filter, stored_weight_bytes
    from tfqnet.micro.resources import layer_resources
    from tfqnet.tflite_format import DECODE_OP

    tflite = qat_and_tflite[1]
    graph = FlatbufferModel.from_bytes(tflite)
    fc1 = next(op for op in graph.operators if op.name == "FULLY_CONNECTED")
    filter_params = int(np.prod(graph.tensors[fc1.inputs[1]].shape))
    # fc1's INT4 codes as 4-bit lookup-table indices (larger than INT4: header and table)
    compressed = _compressed(tflite, [_Filter(0, fc1.inputs[1], 4, None)])
    rows = layer_resources(FlatbufferModel.from_bytes(compressed))
    assert DECODE_OP not in {r["op"] for r in rows}  # counted where the filter is read
    fc_rows = [r for r in rows if r["op"] == "FULLY_CONNECTED"]
    lut = next(r for r in fc_rows if r["weight_type"] == "INT8 LUT")
    assert lut["weight_bits"] == 4 and lut["weight_params"] == filter_params
    assert lut["weight_bytes"] > filter_params // 2  # indices + 16-byte header + table
    assert lut["macs"] > 0 and lut["other_const_bytes"] > 0  # the bias
    filters = [r for r in rows if r["op"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert sum(r["weight_bytes"] for r in filters) == stored_weight_bytes(compressed)
    report = check_model(compressed, samples=4)
    assert report.weight_bytes == stored_weight_bytes(compressed)
    # TFLite cannot run TFLM_DECODE: the layer-by-layer check is skipped, and says so
    assert report.passed and report.skipped == [
        "layer-by-layer skipped: compressed model (TFLM_DECODE), which TFLite's interpreter "
        "cannot run"]
    assert report.format_table().rstrip().endswith(f"PASS ({report.skipped[0]})")
    assert report.verdict(strict=True).startswith("FAIL (strict: layer-by-layer skipped")
    assert report.to_dict()["skipped"] == report.skipped


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.1])
def test_check_model_refuses_a_min_agreement_that_is_no_fraction(qat_and_tflite, value):
    _, tflite = qat_and_tflite
    with pytest.raises(ValueError, match="min_agreement must be a fraction"):
        check_model(tflite, min_agreement=value)


def test_input_codes_round_half_away_from_zero_as_tflite_quantize():
    from tfqnet.micro.runtime import TensorDetails

    details = TensorDetails(np.int8, (1, 6), scale=0.5, zero_point=-3)
    x = np.array([[0.25, -0.25, 0.75, -0.75, 100.0, -100.0]], np.float32)
    # ties 0.5 / 1.5 round away from zero (np.round would give 0 and 2)
    np.testing.assert_array_equal(details.quantize(x), [[-2, -4, -1, -5, 127, -128]])


def test_a_model_tflm_refuses_is_a_tfqnet_error_that_names_the_fix():
    import tfqnet

    with pytest.raises(tfqnet.MicroRuntimeError, match="tfqnet check") as caught:
        tfqnet.run_tflm(unsupported_op_tflite(), np.zeros((1, 16), np.float32))
    assert isinstance(caught.value, RuntimeError)  # what the runtime raised before
