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
from tfqnet.export.flatbuffer import FlatbufferModel, element_count
from tfqnet.export.tflite import keras_to_tflite
from tfqnet.layers import PixelEmbedding
from tfqnet.micro.arena import measure_arena, with_margin
from tfqnet.micro.arena_model import KERNEL_SETS, board_arenas, derive_arena, unmodelled_ops
from tfqnet.micro.c_arrays import align_flatbuffer
from tfqnet.micro.check_report import CheckReport
from tfqnet.micro.cmsis_nn_buffers import Window, avgpool_buffer, depthwise_buffer
from tfqnet.micro.kernel_plans import ABIS, cmsis_plan
from tfqnet.models import compile_classifier, mobilenet_v2_tiny

#: arena_used_bytes() on the boards (tflm-facts.md): model -> kernel set -> bytes
MEASURED_CORTEX_M = {
    "int8": {"reference": 4500, "cmsis_nn": 5156, "cmsis_nn_mve": 5460},
    "w4a8": {"reference": 34788, "cmsis_nn": 5156, "cmsis_nn_mve": 5156},
}
#: the smallest arena that ran was this much more than arena_used_bytes(), every time
BOARD_SLACK = 12
#: derived minus measured host minimum where it is not 0 (bytes; arena_model's docstring
#: says why): the int32 ADD and float CONCATENATION Prepare peaks are modelled a little
#: high, the MobileNet's per-channel FULLY_CONNECTED after MEAN likewise. The two
#: compressed models: the replay allocates in exactly the measured size, but the tail's
#: alignment depends on the arena size mod 16 and the derived minimum is floored at
#: ``used`` rounded up to 16 (as on the boards), 8 bytes above.
HOST_OFFSETS = {"mobilenet_v2_tiny": (0, 8, 16), "pixel-embedding-gather": (-8, 0, 8),
                "concat-float": (24,), "ternary-decode-conv-fc": (8,),
                "ternary-mobilenet_v2_tiny": (8,)}


def _graph(flatbuffer: bytes) -> tuple[bytes, FlatbufferModel]:
    aligned = align_flatbuffer(flatbuffer)
    return aligned, FlatbufferModel.from_bytes(aligned)


def _tiny(build, shape, seed: int) -> bytes:
    """A small per-channel int8 flatbuffer straight from TFLite's converter (the bytes of
    ``from_keras_model``; no tfqnet quantizer), so that the derivation meets the
    converter's defaults too (per-channel Dense); ``build`` maps the Keras input to the
    output."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, build(inputs))
    rng = np.random.default_rng(seed)

    def representative():
        for _ in range(8):
            yield [rng.random((1, *shape), dtype=np.float32)]

    def configure(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8

    return keras_to_tflite(model, configure)


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
    models["mobilenet_v2_tiny"] = align_flatbuffer(_tiny(mobilenet_v2_tiny(), (16, 16, 1), 3))
    models.update(_qat_models())
    models.update(_function_models())
    models.update(_compressed_models())
    return {name: (FlatbufferModel.from_bytes(m), measure_arena(m).minimum)
            for name, m in models.items()}


def _qat_fit_convert(model, xs, **options) -> bytes:
    qat = tfqnet.quantize_model(model, weight_bits=options.pop("weight_bits", 8),
                                activation_bits=8)
    qat.compile("adam", "mse")
    targets = [np.zeros((16, *shape[1:]), np.float32) for shape in
               (model.output_shape if isinstance(model.output_shape, list)
                else [model.output_shape])]
    qat.fit(xs, targets, epochs=1, batch_size=16, verbose=0)
    return align_flatbuffer(tfqnet.convert(qat, xs, **options))


def _qat_models() -> dict[str, bytes]:
    """Untrained tfqnet exports, one fitting step each (the converter needs ranges):
    INT4 depthwise with average pooling and a requantizing QUANTIZE, raw uint8 pixels
    through GATHER (QUANTIZE, CAST, int32 ADD), float input and output around SOFTMAX,
    and two inputs and outputs joined by CONCATENATION."""
    L, rng = keras.layers, np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    x = L.DepthwiseConv2D(3, padding="same")(L.Conv2D(8, 1)(image))
    x = L.AveragePooling2D()(L.DepthwiseConv2D(5, strides=2, padding="valid")(x))
    dw4 = keras.Model(image, L.Dense(3)(L.Flatten()(x)))
    pixels = keras.Input((6, 6, 1), dtype="uint8")
    x = L.Conv2D(4, 3, padding="same")(PixelEmbedding(dim=4, bits=4)(pixels))
    pixel = keras.Model(pixels, L.Dense(3)(L.Flatten()(L.MaxPooling2D()(x))))
    vector = keras.Input((12,))
    softmax = keras.Model(vector, L.Softmax()(L.Dense(5)(L.Dense(8, activation="relu")(vector))))
    a, b = keras.Input((6,)), keras.Input((4,))
    joined = L.Concatenate()([L.Dense(5)(a), L.Dense(3)(b)])
    multi = keras.Model([a, b], [L.Dense(2)(joined), L.Dense(4)(joined)])
    return {
        "int4-depthwise-avgpool": _qat_fit_convert(
            dw4, rng.random((16, 8, 8, 3), dtype=np.float32), weight_bits=4),
        "pixel-embedding-gather": _qat_fit_convert(
            pixel, rng.integers(0, 256, (16, 6, 6, 1)).astype(np.uint8), weight_bits=4,
            input_type="uint8"),
        "float-io-softmax": _qat_fit_convert(
            softmax, rng.random((16, 12), dtype=np.float32), input_type="float32",
            output_type="float32"),
        "two-in-two-out-concat": _qat_fit_convert(
            multi, [rng.random((16, 6), dtype=np.float32),
                    rng.random((16, 4), dtype=np.float32)]),
    }


def _ternary_fit_convert(model, xs, **options) -> bytes:
    qat = tfqnet.quantize_model(model, "crq", 2, 8)
    qat.compile("adam", "mse")
    qat.fit(xs, np.zeros((len(xs), *model.output_shape[1:]), np.float32), epochs=1,
            batch_size=16, verbose=0, callbacks=tfqnet.callbacks(qat, 1))
    with pytest.warns(UserWarning, match="TFLM_DECODE"):
        return align_flatbuffer(tfqnet.convert(qat, xs[:16], **options))


def _compressed_models() -> dict[str, bytes]:
    """Ternary (CRQ, 2-bit) exports whose kernels tfqnet.convert stores as TFLM_DECODE
    lookup-table indices: two per-channel 3x3 convolutions and two Dense layers with
    compression forced (two decode ops sharing one ancillary tensor: a per-channel
    convolution filter and a FULLY_CONNECTED one), and the benchmarks' MobileNetV2 with
    the default ``compress="auto"``."""
    L, rng = keras.layers, np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    image = keras.Input((12, 12, 8))
    x = L.Conv2D(48, 3, padding="same", activation="relu")(image)
    x = L.Conv2D(48, 3, padding="same", activation="relu")(x)
    convs = keras.Model(image, L.Dense(4)(L.Dense(32)(L.Flatten()(L.MaxPooling2D()(x)))))
    return {
        "ternary-decode-conv-fc": _ternary_fit_convert(
            convs, rng.random((16, 12, 12, 8), dtype=np.float32), compress=True),
        "ternary-mobilenet_v2_tiny": _ternary_fit_convert(
            mobilenet_v2_tiny(), rng.random((16, 16, 16, 1), dtype=np.float32)),
    }


def _function_models() -> dict[str, bytes]:
    """Float graphs straight from tf.functions: GATHER of a 5-D output, float
    CONCATENATION, MINIMUM."""
    spec, table = tf.TensorSpec, tf.constant(np.linspace(0, 1, 1024, dtype=np.float32)
                                             .reshape(256, 4))

    def convert(fn, specs):
        function = tf.function(fn, input_signature=specs)
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function()], function)
        return align_flatbuffer(converter.convert())

    return {
        "gather-5d": convert(lambda i: tf.gather(table, i), [spec([1, 6, 6, 1], tf.int32)]),
        "concat-float": convert(lambda a, b: tf.concat([a, b], 1),
                                [spec([1, 5], tf.float32), spec([1, 3], tf.float32)]),
        "minimum": convert(lambda a: tf.minimum(a, 3.0), [spec([1, 5], tf.float32)]),
    }


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
        # within the margin export-c adds either way; exact on most (see EXACT_HOST)
        assert derived.minimum <= with_margin(measured), (name, measured, derived)
        assert measured <= with_margin(derived.minimum), (name, measured, derived)
        assert (derived.minimum - measured) in HOST_OFFSETS.get(name, (0,)), (
            name, measured, derived)


def test_cmsis_nn_never_needs_more_than_reference_for_int4(digits_models, host_models):
    """INT4 conv and FULLY_CONNECTED filters cost the reference kernels an unpack buffer
    CMSIS-NN does not need. (Not so for INT4 depthwise filters: CMSIS-NN's s4 depthwise
    buffer is two bytes per weight, twice the reference unpack; the small
    int4-depthwise-avgpool model needs more with CMSIS-NN.)"""
    graphs = [digits_models["w4a8"][1], host_models["pixel-embedding-gather"][0]]
    for graph in graphs:
        assert "INT4" in {t.type for t in graph.tensors}
        arenas = board_arenas(graph)
        assert arenas["cmsis_nn"].minimum <= arenas["reference"].minimum
        assert arenas["cmsis_nn_mve"].minimum <= arenas["reference"].minimum


def test_every_kernel_set_has_a_figure_for_the_suites_models(host_models):
    for name, (graph, _) in host_models.items():
        assert set(board_arenas(graph)) == {k.key for k in KERNEL_SETS}, (
            name, unmodelled_ops(graph, "cmsis_nn"))


def test_cmsis_nn_depthwise_and_average_pool_buffers():
    """arm_depthwise_conv_wrapper_s8/s4_get_buffer_size and arm_avgpool_s8_get_buffer_size
    on MobileNet-style shapes."""
    same3x3 = Window(8, 8, 48, 3, 3, 8, 8, 48, 1, 1)
    assert (same3x3.pad_h, same3x3.pad_w) == (1, 1)
    assert depthwise_buffer(same3x3, int4=False, mve=False) == 0  # arm_depthwise_conv_3x3_s8
    assert depthwise_buffer(same3x3, int4=False, mve=True) == 4 * 124 * 9
    assert depthwise_buffer(same3x3, int4=True, mve=False) == 48 * 9 * 2
    assert depthwise_buffer(same3x3, int4=True, mve=True) == 48 * 9 * 2
    valid5x5 = Window(8, 8, 8, 5, 5, 2, 2, 8, 2, 2)
    assert depthwise_buffer(valid5x5, int4=False, mve=False) == 8 * 25 * 2
    multiplier2 = Window(8, 8, 8, 3, 3, 8, 8, 16, 1, 1)
    assert depthwise_buffer(multiplier2, int4=False, mve=True) == 0  # the generic kernel
    assert depthwise_buffer(Window(8, 8, 8, 3, 3, 4, 4, 8, 1, 1, 2, 2), False, False) is None
    assert avgpool_buffer(valid5x5, mve=False) == 4 * 8
    assert avgpool_buffer(valid5x5, mve=True) == 0


def test_compressed_models_get_a_figure_for_every_kernel_set(host_models):
    """TFLM_DECODE: the decoded int8 weights are planned in the head (alive from the
    decode op to its consumer), its DecodeState pointers and DecodeStateLut objects sit
    in the tail; the host figure is checked against the TFLM runtime by
    test_host_derivation_equals_the_tflm_runtimes_minimum."""
    for name in ("ternary-decode-conv-fc", "ternary-mobilenet_v2_tiny"):
        graph, measured = host_models[name]
        decodes = [op for op in graph.operators if op.name == "TFLM_DECODE"]
        assert decodes, name
        decoded = max(element_count(graph.tensors[op.outputs[0]].shape) for op in decodes)
        host = derive_arena(graph, "reference", "host64")
        assert host.head >= decoded and measured > decoded
        arenas = board_arenas(graph)
        assert set(arenas) == {k.key for k in KERNEL_SETS}, name
        assert all(e.head >= decoded for e in arenas.values())
    graph, _ = host_models["ternary-decode-conv-fc"]
    assert len(_ancillary(graph)) == 1  # both decode ops read one ancillary tensor
    # the exact figures, pinned: every allocation is a replay of the sources
    assert {k: e.used for k, e in board_arenas(graph).items()} == {
        "reference": 59092, "cmsis_nn": 59172, "cmsis_nn_mve": 59316}
    # CMSIS-NN MVE computes a constant filter's kernel sums in Prepare; a decoded filter
    # has no data then, so FULLY_CONNECTED asks for them as scratch (4 bytes a unit)
    fc1 = next(op for op in graph.operators if op.name == "FULLY_CONNECTED")
    assert not graph.tensors[fc1.inputs[1]].is_constant
    assert cmsis_plan(graph, fc1, ABIS["cortex_m32"], mve=True).scratch == [4 * 32]
    assert cmsis_plan(graph, fc1, ABIS["cortex_m32"], mve=False).scratch == []


def _ancillary(graph: FlatbufferModel) -> set[int]:
    return {op.inputs[1] for op in graph.operators if op.name == "TFLM_DECODE"}


def test_a_decode_type_other_than_lut_gets_no_figure(host_models):
    graph = copy.copy(host_models["ternary-decode-conv-fc"][0])
    graph.buffers = list(graph.buffers)
    (index,) = _ancillary(graph)
    ancillary = graph.tensor_buffers[index]
    graph.buffers[ancillary] = bytes([2]) + graph.buffers[ancillary][1:]  # kDcmTypePrune
    assert derive_arena(graph, "reference", "host64") is None
    assert board_arenas(graph) == {}
    assert unmodelled_ops(graph, "cmsis_nn") == ["TFLM_DECODE"]


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
