"""Bits a user asks for are the bits deployed: level sets and ternary methods decide the
weight bits, the layer policy keeps the first and last layer at 8 bits below 4-bit
models, and ``convert``'s ``compress="auto"`` stores sub-4-bit kernels as lookup-table
indices, as the bit-width report says."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tfqnet._keras import keras
from tfqnet.core.config import weight_quantizers
from tfqnet.export.compression import stored_weight_bytes
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.tflite_format import DECODE_OP

L = keras.layers


def _bits(qat) -> dict[str, tuple[int, str]]:
    return {name: (row["weight_bits"], row["bits_from"])
            for name, row in tfqnet.bit_width_report(qat).as_dict().items()}


def test_policy_keeps_first_and_last_layer_at_8_bits_below_4_bits(float_digits_model):
    two = _bits(tfqnet.quantize_model(float_digits_model, "uniform", 2))
    assert two == {
        "conv1": (8, "policy: first weighted layer"),
        "conv2": (2, "default"),
        "fc1": (2, "default"),
        "logits": (8, "policy: last weighted layer"),
    }
    four = _bits(tfqnet.quantize_model(float_digits_model, "uniform", 4))
    assert set(four.values()) == {(4, "default")}
    forced = _bits(tfqnet.quantize_model(float_digits_model, "uniform", 4, policy="first_last"))
    assert forced["conv1"] == (8, "policy: first weighted layer")
    none = _bits(tfqnet.quantize_model(float_digits_model, "uniform", 2, policy=None))
    assert set(none.values()) == {(2, "default")}


def test_overrides_win_over_the_policy(float_digits_model):
    bits = _bits(tfqnet.quantize_model(float_digits_model, "uniform", 2,
                                       overrides={"conv1": {"weight_bits": 4}}))
    assert bits["conv1"] == (4, "override")
    assert bits["logits"] == (8, "policy: last weighted layer")


def test_depthwise_policy_and_unknown_policy():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(8, 1, name="pw")(x)
    outputs = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    bits = _bits(tfqnet.quantize_model(model, "uniform", 2, policy="first_last_depthwise"))
    assert bits == {"stem": (8, "policy: first weighted layer"), "dw": (4, "policy: depthwise"),
                    "pw": (2, "default"), "head": (8, "policy: last weighted layer")}
    assert _bits(tfqnet.quantize_model(model, "uniform", 2)) == bits  # "auto" below 4 bits
    # a policy widens, never narrows
    wide = _bits(tfqnet.quantize_model(model, "uniform", 6, policy="first_last_depthwise"))
    assert wide["dw"] == (6, "policy: depthwise") and wide["stem"][0] == 8
    assert _bits(tfqnet.quantize_model(model, "uniform", 4))["dw"] == (4, "default")
    assert _bits(tfqnet.quantize_model(model, "uniform", 2, policy="first_last"))["dw"] == (
        2, "default")
    with pytest.raises(ValueError, match="unknown layer policy 'depthwise'"):
        tfqnet.quantize_model(model, "uniform", 2, policy="depthwise")


def test_a_level_set_decides_the_weight_bits(float_digits_model):
    ternary = tfqnet.quantize_model(float_digits_model, "qn", levels="ternary")
    kernels = weight_quantizers(ternary)
    assert [q.bits for q in kernels] == [8, 2, 2, 8]  # policy keeps conv1 and logits
    assert [len(q.levels) for q in kernels[1:3]] == [3, 3]
    pow2 = tfqnet.quantize_model(float_digits_model, "qn", levels="3bit_pow2", policy=None)
    assert {q.bits for q in weight_quantizers(pow2)} == {4}
    with pytest.raises(ValueError, match="weight_bits=8: 8-bit layers use the uniform"):
        tfqnet.quantize_model(float_digits_model, "qn", 8, levels="ternary")
    with pytest.raises(ValueError, match="need weight_bits >= 4"):
        tfqnet.quantize_model(float_digits_model, "qn", 2, levels="3bit_pow2")
    assert {q.bits for q in weight_quantizers(
        tfqnet.quantize_model(float_digits_model, "qn"))} == {8}


def test_crq_is_ternary_unless_told_otherwise_and_refuses_other_bits(float_digits_model):
    crq = tfqnet.quantize_model(float_digits_model, "crq")
    assert [q.kernel_bits() for q in weight_quantizers(crq)] == [8, 2, 2, 8]
    assert type(weight_quantizers(crq)[1]).__name__ == "CRQWeightQuantizer"
    for bits in (4, 8):
        with pytest.raises(ValueError, match="'crq' is ternary"):
            tfqnet.quantize_model(float_digits_model, "crq", bits)


@pytest.fixture(scope="module")
def ternary(float_digits_model, digits):
    """A qn ternary QAT model (default policy) after one epoch."""
    return fine_tune(tfqnet.quantize_model(float_digits_model, "qn", 2), digits, epochs=1)


def test_auto_compression_stores_ternary_kernels_as_2_bit_indices(ternary, digits):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flatbuffer = tfqnet.convert(ternary, digits.x_train[:100])
    said = [str(w.message) for w in caught if "lookup-table indices" in str(w.message)]
    assert len(said) == 1 and "quant_conv2 (2-bit)" in said[0] and "quant_fc1 (2-bit)" in said[0]
    assert "compress=False" in said[0]
    plain = tfqnet.convert(ternary, digits.x_train[:100], compress=False)
    assert DECODE_OP in {op.name for op in FlatbufferModel.from_bytes(flatbuffer).operators}
    assert DECODE_OP not in {op.name for op in FlatbufferModel.from_bytes(plain).operators}
    assert len(flatbuffer) < len(plain)
    stored = stored_weight_bytes(flatbuffer)
    assert stored <= tfqnet.bit_width_report(ternary).total_bytes
    assert stored < 0.6 * stored_weight_bytes(plain)
    assert top1_agreement(ternary, flatbuffer, digits.x_test) >= 0.99
    np.testing.assert_array_equal(tfqnet.run_tflm(flatbuffer, digits.x_test[:64]),
                                  tfqnet.run_tflm(plain, digits.x_test[:64]))


def test_auto_compression_leaves_4_bit_models_alone(float_digits_model, digits):
    qat = fine_tune(tfqnet.quantize_model(float_digits_model, "uniform", 4), digits, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flatbuffer = tfqnet.convert(qat, digits.x_train[:100])
    assert flatbuffer == tfqnet.convert(qat, digits.x_train[:100], compress=False)
    with pytest.raises(ValueError, match="compress must be 'auto'"):
        tfqnet.convert(qat, digits.x_train[:100], compress="yes")


def test_the_report_keeps_what_set_the_bits_through_save_and_load(ternary, tmp_path):
    path = str(tmp_path / "ternary.h5")
    ternary.save(path)
    assert _bits(tfqnet.load_model(path, compile=False)) == _bits(ternary)
