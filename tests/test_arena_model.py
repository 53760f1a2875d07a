"""The arena derived per kernel set and word size (tfqnet.micro.arena_model) against what
was measured: the TFLM Python runtime on this host (reference kernels, 64-bit), and the
Cortex-M figures of ../shared/tflm-facts.md (TFLM 90b983c2 on M4 and M55, measured
2026-12-01 outside this repository) for the digits example's architecture."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

import tfqnet
from tests.micro_helpers import digits_qat_and_tflite, unsupported_op_tflite
from tfqnet._keras import keras, tf
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.micro.arena import measure_arena, with_margin
from tfqnet.micro.arena_model import board_arenas, derive_arena, unmodelled_ops
from tfqnet.micro.c_arrays import align_flatbuffer
from tfqnet.micro.check_report import CheckReport
from tfqnet.models import compile_classifier

#: arena_used_bytes() on the boards (tflm-facts.md): model -> kernel set -> bytes
MEASURED_CORTEX_M = {
    "int8": {"reference": 4500, "cmsis_nn": 5156, "cmsis_nn_mve": 5460},
    "w4a8": {"reference": 34788, "cmsis_nn": 5156, "cmsis_nn_mve": 5156},
}
#: the smallest arena that ran was this much more than arena_used_bytes(), every time
BOARD_SLACK = 12


def _graph(flatbuffer: bytes) -> tuple[bytes, FlatbufferModel]:
    aligned = align_flatbuffer(flatbuffer)
    return aligned, FlatbufferModel.from_bytes(aligned)


def _tiny(build, shape, seed: int) -> bytes:
    """A small per-channel int8 flatbuffer straight from TFLite's converter (no tfqnet),
    so that the derivation meets the converter's defaults too (per-channel Dense);
    ``build`` maps the Keras input to the output."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, build(inputs))
    rng = np.random.default_rng(seed)

    def representative():
        for _ in range(8):
            yield [rng.random((1, *shape), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.fixture(scope="module")
def digits_models(float_digits_model, digits):
    """{"int8": ..., "w4a8": ...}: the digits CNN as examples/digits.py exports it."""
    _, w4a8 = digits_qat_and_tflite(float_digits_model, digits)
    qat = tfqnet.quantize_model(float_digits_model, weight_bits=8, activation_bits=8)
    compile_classifier(qat, 1e-4)
    qat.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, batch_size=32, verbose=0)
    int8 = tfqnet.convert(qat, digits.x_train[:64])
    return {"int8": _graph(int8), "w4a8": _graph(w4a8)}


@pytest.fixture(scope="module")
def host_models(digits_models):
    """Every model of this module, with the TFLM runtime's measured minimum."""
    L = keras.layers
    models = {name: aligned for name, (aligned, _) in digits_models.items()}

    def chain(*layers):
        def build(x):
            for layer in layers:
                x = layer(x)
            return x
        return build

    models["conv-dw-pool-fc"] = align_flatbuffer(_tiny(chain(
        L.Conv2D(8, 3, padding="same"), L.DepthwiseConv2D(3, strides=2, padding="same"),
        L.MaxPooling2D(), L.Flatten(), L.Dense(4)), (8, 8, 2), 0))
    models["fc-fc-fc"] = align_flatbuffer(_tiny(chain(L.Dense(8), L.Dense(8), L.Dense(3)),
                                                (16,), 1))
    models["conv-add-avgpool-mean-fc"] = align_flatbuffer(_tiny(
        lambda x: L.Dense(5)(L.GlobalAveragePooling2D()(L.AveragePooling2D()(
            L.Add()([L.Conv2D(3, 1)(x), x])))), (8, 8, 3), 2))
    return {name: (FlatbufferModel.from_bytes(m), measure_arena(m).minimum)
            for name, m in models.items()}


@pytest.mark.parametrize("model", sorted(MEASURED_CORTEX_M))
def test_cortex_m_figures_equal_the_boards_measurements(digits_models, model):
    _, graph = digits_models[model]
    derived = board_arenas(graph)
    assert {k: e.used for k, e in derived.items()} == MEASURED_CORTEX_M[model]
    for estimate in derived.values():
        assert estimate.minimum == estimate.used + BOARD_SLACK


def test_only_the_reference_kernels_pay_the_int4_unpack_scratch(digits_models):
    _, graph = digits_models["w4a8"]
    reference, cmsis = (derive_arena(graph, k) for k in ("reference", "cmsis_nn"))
    fc1 = 64 * 512  # one byte per weight of the largest INT4 filter
    assert reference.scratch >= fc1 and reference.head >= fc1
    assert cmsis.minimum < reference.minimum / 6  # the "7x what a CMSIS-NN board needs"


def test_host_derivation_equals_the_tflm_runtimes_minimum(host_models):
    for name, (graph, measured) in host_models.items():
        derived = derive_arena(graph, "reference", "host64")
        assert derived is not None, name
        # within the margin export-c adds, and on these models exact
        assert measured <= derived.minimum <= with_margin(measured), (name, measured, derived)
        assert derived.minimum == measured, (name, measured, derived)


def test_cmsis_nn_never_needs_more_than_reference_for_int4(digits_models):
    for aligned, graph in digits_models.values():
        if "INT4" not in {t.type for t in graph.tensors}:
            continue
        arenas = board_arenas(graph)
        assert arenas["cmsis_nn"].minimum <= arenas["reference"].minimum
        assert arenas["cmsis_nn_mve"].minimum <= arenas["reference"].minimum
        del aligned


def test_an_op_whose_allocations_are_unknown_gives_no_figure():
    _, graph = _graph(unsupported_op_tflite())
    assert derive_arena(graph, "reference") is None
    assert board_arenas(graph) == {}
    assert "TOPK_V2" in unmodelled_ops(graph)


def test_shapes_a_kernel_would_refuse_give_no_figure(digits_models):
    _, graph = digits_models["int8"]
    conv = next(op for op in graph.operators if op.name == "CONV_2D")
    broken = copy.copy(graph)
    broken.tensors = list(graph.tensors)
    broken.tensors[conv.inputs[1]] = dataclasses.replace(graph.tensors[conv.inputs[1]],
                                                          shape=(144,))
    assert derive_arena(broken, "cmsis_nn") is None
    assert "CONV_2D" in unmodelled_ops(broken, "cmsis_nn")


def test_check_names_the_kernel_set_of_every_arena_figure():
    report = CheckReport(model_bytes=10, arena_minimum=35792, arena_reported=37584,
                         arena_kernels={"reference": 34800, "cmsis_nn": 5168})
    lines = report.format_table().splitlines()
    assert ("arena, TFLM reference kernels on this 64-bit host (measured): 35792 bytes "
            "minimum, 37584 with margin") in lines
    assert "arena, TFLM reference kernels, 32-bit Cortex-M (derived): 34800 bytes minimum" in lines
    assert ("arena, CMSIS-NN kernels, 32-bit Cortex-M without MVE (derived): 5168 bytes "
            "minimum") in lines
    assert report.to_dict()["arena_kernels"] == {"reference": 34800, "cmsis_nn": 5168}
