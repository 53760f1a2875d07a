"""What each TFLM kernel allocates in the tensor arena, per kernel set and build: the
structure sizes of one TFLM build (:data:`ABIS`) and, per op, an :class:`OpPlan` (OpData
in Init, persistent arrays and scratch requests in Prepare, the temporary TfLiteTensors
Prepare holds). :mod:`tfqnet.micro.arena_model` replays them in TFLM's order.

Kernels modelled (TFLM's kernels/*.cc and kernels/cmsis_nn/*.cc Init and Prepare):

* reference: CONV_2D, DEPTHWISE_CONV_2D (an INT4 filter unpacked into scratch, one byte a
  weight), FULLY_CONNECTED (likewise), MAX_POOL_2D, AVERAGE_POOL_2D, ADD, int8/int16
  MEAN, RESHAPE, SOFTMAX (int8 and float), QUANTIZE, DEQUANTIZE, GATHER, CAST,
  CONCATENATION, MINIMUM and MAXIMUM (no Init, no Prepare), and TFLM_DECODE (LUT
  decoding, :func:`decode_plan`);
* CMSIS-NN (DSP and MVE builds): its own CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
  MAX_POOL_2D, AVERAGE_POOL_2D, ADD, SOFTMAX, MINIMUM and MAXIMUM, with the scratch
  buffers of :mod:`tfqnet.micro.cmsis_nn_buffers`; the other ops above run TFLM's
  reference kernel in a CMSIS-NN build (OPTIMIZED_KERNEL_DIR replaces only the kernels
  it has; CMSIS-NN has no decode kernel, so TFLM_DECODE is TFLM's in both).

Not modelled (no figure): TFLM_DECODE tables other than LUT (pruning, Huffman), int16
SOFTMAX (lookup tables), batched FULLY_CONNECTED under CMSIS-NN, dilated CMSIS-NN
convolutions, and every other op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tfqnet.export.flatbuffer import FlatbufferModel, Operator, Tensor, element_count
from tfqnet.micro.cmsis_nn_buffers import avgpool_buffer, conv_buffer, depthwise_buffer, window
from tfqnet.tflite_format import DECODE_OP


@dataclass(frozen=True)
class Abi:
    """Sizes (bytes) of the TFLM structures the arena holds, for one build of TFLM."""

    pointer: int
    allocator_objects: tuple[int, ...]  # SingleArenaBufferAllocator, GreedyMemoryPlanner,
    #                                     MicroAllocator (or their recording variants)
    eval_tensor: int  # TfLiteEvalTensor
    node_and_registration: int
    tflite_tensor: int  # TfLiteTensor (TF_LITE_STATIC_MEMORY)
    affine_quantization: int  # TfLiteAffineQuantization
    scratch_request: int  # internal::ScratchBufferRequest
    allocation_info: int  # AllocationInfo (planning only)
    calibration: int = 0  # fitted per-interpreter bytes; see ABIS
    op_data: dict[str, int] = field(default_factory=dict)  # the kernels' OpData structs


#: OpData sizes: OpDataConv and OpDataFullyConnected as in TFLM's conv.h and
#: fully_connected.h (the host build has USE_TFLM_COMPRESSION: two more ints each),
#: OpDataPooling (pooling.h), OpDataAdd (add.h: no pointers), OpDataReduce (reduce.h),
#: SoftmaxParams (kernels/internal/types.h: a double, seven 32-bit fields and five
#: pointers; AAPCS aligns the double to 8 as x86-64 does), OpDataQuantizeReference
#: (quantize.h) and DequantizeOpData (dequantize.h): a {double, int32} pair and three
#: ints, 32 bytes on both; CONCATENATION's OpData (concatenation.cc) is a
#: ConcatenationParams: int8 axis, two pointers, uint16 count, int32, float.
#: CMSIS-NN's: the reference OpDataConv / OpDataPooling plus a buffer index (conv,
#: depthwise_conv, pooling), for FULLY_CONNECTED two pointers, the index, kernel_sums
#: and three ints (cmsis_nn/fully_connected.cc), CMSISNNSoftmaxParams = SoftmaxParams
#: and two int32 (cmsis_nn/softmax.cc), its ADD OpData the same 60 bytes as OpDataAdd.
#: ``decode_state``: sizeof(DecodeStateLut) (decode_state.h, decode_state_lut.h): a
#: vtable pointer, DecodeState's context and profiler pointers, then two pointers, three
#: size_t and three bytes: 67 bytes padded to 72 on 64-bit, 35 padded to 36 on 32-bit.
_OP_DATA_64 = {"conv": 80, "fully_connected": 72, "pooling": 32, "add": 60, "reduce": 44,
               "softmax": 80, "quantize": 32, "dequantize": 32, "concatenation": 40,
               "decode_state": 72}
_OP_DATA_32 = {"conv": 56, "fully_connected": 48, "pooling": 32, "add": 60, "reduce": 44,
               "softmax": 56, "quantize": 32, "dequantize": 32, "concatenation": 24,
               "decode_state": 36,
               "cmsis_conv": 60, "cmsis_fully_connected": 76, "cmsis_pooling": 36,
               "cmsis_softmax": 64}

#: The builds the derivation knows. ``host64``: the PyPI TFLM runtime (recording
#: allocator; compression compiled in). ``cortex_m32``: TFLM 90b983c2 for Cortex-M with
#: MicroInterpreter's own allocator, as measured in tflm-facts.md.
#:
#: Three values are fitted to measurements rather than read from TFLM's sources (the
#: sources are main-branch versions that need not be the measured builds'):
#: ``calibration`` -- the host tail is 32 bytes more than its structures add up to,
#: on every model probed (1 to 18 ops of fifteen kinds); the Cortex-M tail 88 bytes less
#: (any value from 84 to 92 reproduces all six measured figures); the Cortex-M
#: TfLiteTensor is taken as 48 bytes, not the 40 its fields add up to: every measured
#: Cortex-M figure ends at 4 mod 16, which the inputs' and outputs' TfLiteTensors,
#: allocated last, decide, and 48 is the size that gives it; and FULLY_CONNECTED's
#: builtin data (:data:`BUILTIN_BYTES`).
ABIS = {
    "host64": Abi(8, (104, 72, 248), 24, 64, 64, 24, 16, 32, 32, _OP_DATA_64),
    "cortex_m32": Abi(4, (36, 44, 36), 12, 32, 48, 12, 12, 24, -88, _OP_DATA_32),
}

#: Bytes each op's builtin-options parser allocates (4-byte aligned; the structs hold no
#: pointers, so both word sizes agree): sizeof(TfLiteConvParams) etc.; QUANTIZE,
#: DEQUANTIZE, MINIMUM and MAXIMUM parse no options. FULLY_CONNECTED's 32 is measured on
#: the host runtime (its TfLiteFullyConnectedParams fields add up to 16; the probes'
#: tails need 16 more per FULLY_CONNECTED op).
BUILTIN_BYTES = {
    "CONV_2D": 28, "DEPTHWISE_CONV_2D": 28, "FULLY_CONNECTED": 32, "MAX_POOL_2D": 40,
    "AVERAGE_POOL_2D": 40, "RESHAPE": 36, "ADD": 8, "MEAN": 1, "SOFTMAX": 4,
    "CONCATENATION": 8, "GATHER": 8, "CAST": 8,
}


@dataclass
class OpPlan:
    """What one kernel allocates: OpData in Init, persistent buffers and scratch requests
    in Prepare, and the temporary tensors alive at Prepare's peak (in allocation order;
    -1 for an absent optional input, which allocates nothing)."""

    init: list[int] = field(default_factory=list)
    prepare: list[int] = field(default_factory=list)
    scratch: list[int] = field(default_factory=list)
    temps: list[int] = field(default_factory=list)


def channels(tensor: Tensor) -> int:
    """Quantization channels of ``tensor`` (0 when it is not quantized)."""
    return len(tensor.scales)


def _optional(inputs: tuple[int, ...], k: int) -> int:
    return inputs[k] if len(inputs) > k else -1


def _int4_unpack(filt: Tensor) -> list[int]:
    # TFLM's reference kernels unpack an INT4 filter into scratch, one byte per weight
    return [element_count(filt.shape)] if filt.type == "INT4" else []


def _conv_temps(ins: tuple[int, ...], out: int, prepare_first: tuple[int, ...]) -> list[int]:
    # the kernel's own Prepare, then CalculateOpData(DepthwiseConv)'s input, filter,
    # bias, output
    return [*prepare_first, ins[0], ins[1], _optional(ins, 2), out]


#: DecodeState::Type of a LUT ancillary tensor (its first byte; decode_state.h kDcmTypeLUT)
_DECODE_TYPE_LUT = 0


def decode_plan(graph: FlatbufferModel, op: Operator, abi: Abi) -> OpPlan | None:
    """TFLM's TFLM_DECODE kernel (kernels/decode.cc; no Init, no builtin data): Prepare
    allocates one persistent DecodeState pointer per output, then per (indices,
    ancillary) input pair a DecodeStateLut object (DecodeState::CreateDecodeStateLUT;
    DecodeStateLut::Setup allocates nothing), holding the pair and its output as
    temporaries that it frees before the next pair. The decoded outputs are ordinary
    non-constant tensors: the memory planner places them in the head like activations,
    alive from the decode op to their consumer. None for a decode type other than LUT
    (pruning allocates differently) or inputs that are not constant."""
    t, ins = graph.tensors, op.inputs
    if len(ins) != 2 * len(op.outputs) or not op.outputs:
        return None
    for k in range(1, len(ins), 2):
        if not (t[ins[k - 1]].is_constant and t[ins[k]].is_constant):
            return None
        if graph.buffers[graph.tensor_buffers[ins[k]]][0] != _DECODE_TYPE_LUT:
            return None
    # the pairs' temporaries do not overlap: the peak is the pair whose output
    # quantization costs most
    pair = max(range(len(op.outputs)), key=lambda k: channels(t[op.outputs[k]]))
    return OpPlan([], [abi.pointer * len(op.outputs),
                       *[abi.op_data["decode_state"]] * len(op.outputs)], [],
                  [ins[2 * pair], ins[2 * pair + 1], op.outputs[pair]])


def reference_plan(graph: FlatbufferModel, op: Operator, abi: Abi, mve: bool) -> OpPlan | None:
    """TFLM's reference kernels (conv_common.cc, depthwise_conv_common.cc,
    fully_connected.cc, pooling_common.cc, add_common.cc, reduce_common.cc, reshape.cc,
    softmax_common.cc, quantize_common.cc, dequantize_common.cc, gather.cc, cast.cc,
    concatenation.cc, maximum_minimum.cc). ``mve`` is unused: one plan for every core."""
    t, ins, out = graph.tensors, op.inputs, op.outputs[0]
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        filt = t[ins[1]]
        count = filt.shape[0] if op.name == "CONV_2D" else filt.shape[-1]
        # ConvPrepare / DepthwiseConvPrepare hold output, input, filter
        return OpPlan([abi.op_data["conv"]], [4 * count, 4 * count], _int4_unpack(filt),
                      _conv_temps(ins, out, (out, ins[0], ins[1])))
    if op.name == "FULLY_CONNECTED":
        filt = t[ins[1]]
        units = filt.shape[0]
        arrays = [4 * units, 4 * units] if channels(filt) > 1 else []
        return OpPlan([abi.op_data["fully_connected"]], arrays, _int4_unpack(filt),
                      [ins[0], ins[1], _optional(ins, 2), out])
    if op.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return OpPlan([abi.op_data["pooling"]], [], [], [ins[0], out])
    if op.name == "RESHAPE":
        return OpPlan([], [], [], [ins[0], out])
    if op.name == "ADD":
        return OpPlan([abi.op_data["add"]], [], [], [ins[0], ins[1], out])
    if op.name == "MEAN" and t[ins[0]].type in ("INT8", "INT16"):
        # OpDataReduce (no pointers); scratch: the int32 sums, the resolved axes and the
        # input's index; Prepare's helper takes input, axis and output again
        axes = element_count(t[ins[1]].shape)
        return OpPlan([abi.op_data["reduce"]], [],
                      [4 * element_count(t[out].shape), 4 * axes, 4 * len(t[ins[0]].shape)],
                      [ins[0], ins[1], out, ins[0], ins[1], out])
    if op.name == "SOFTMAX" and t[ins[0]].type in ("INT8", "FLOAT32"):
        # int16 would add two lookup tables (SoftmaxPrepare): not modelled
        return OpPlan([abi.op_data["softmax"]], [], [], [ins[0], out])
    if op.name in ("QUANTIZE", "DEQUANTIZE"):
        return OpPlan([abi.op_data[op.name.lower()]], [], [], [ins[0], out])
    if op.name == "GATHER":
        # Prepare gives the output writable dimensions (CreateWritableTensorDimsWithCopy:
        # a persistent TfLiteIntArray)
        return OpPlan([], [4 + 4 * len(t[out].shape)], [], [ins[0], ins[1], out])
    if op.name == "CAST":
        return OpPlan([], [], [], [ins[0], out])
    if op.name in ("MINIMUM", "MAXIMUM"):
        return OpPlan()
    if op.name == DECODE_OP:
        return decode_plan(graph, op, abi)
    if op.name == "CONCATENATION":
        # Prepare: first input and output, each input's dimensions, the output, then
        # (int8) every input again for the per-input scales and zero points it keeps
        temps = [ins[0], out, *ins, out]
        arrays: list[int] = []
        if t[out].type == "INT8":
            temps += ins
            arrays = [4 * len(ins), 4 * len(ins)]
        return OpPlan([abi.op_data["concatenation"]], arrays, [], temps)
    return None


def cmsis_plan(graph: FlatbufferModel, op: Operator, abi: Abi, mve: bool) -> OpPlan | None:
    """TFLM's CMSIS-NN kernels (kernels/cmsis_nn/conv.cc, depthwise_conv.cc,
    fully_connected.cc, pooling.cc, add.cc, softmax.cc, maximum_minimum.cc) for the DSP
    or (``mve``) the MVE build; ops without a CMSIS-NN kernel run the reference one.
    INT4 filters run natively (no unpack scratch)."""
    t, ins, out = graph.tensors, op.inputs, op.outputs[0]
    int8_input = t[ins[0]].type == "INT8"
    if op.name == "CONV_2D":
        filt = t[ins[1]]
        buffer = conv_buffer(window(graph, op), filt.type == "INT4", mve)
        if buffer is None:
            return None
        return OpPlan([abi.op_data["cmsis_conv"]], [4 * filt.shape[0], 4 * filt.shape[0]],
                      [buffer] if buffer else [], _conv_temps(ins, out, (ins[0], ins[1], out)))
    if op.name == "DEPTHWISE_CONV_2D":
        filt = t[ins[1]]
        count = filt.shape[-1]
        buffer = depthwise_buffer(window(graph, op), filt.type == "INT4", mve)
        if buffer is None:
            return None
        # per-channel arrays and the buffer request for int8 (and int16) inputs only
        arrays = [4 * count, 4 * count] if t[ins[0]].type in ("INT8", "INT16") else []
        return OpPlan([abi.op_data["cmsis_conv"]], arrays,
                      [buffer] if buffer and int8_input else [],
                      _conv_temps(ins, out, (ins[0], ins[1], out)))
    if op.name == "FULLY_CONNECTED":
        filt = t[ins[1]]
        if len(t[out].shape) > 2:
            return None  # the batched path runs as a 1x1 convolution: not modelled
        units = filt.shape[0]
        arrays = [4 * units, 4 * units] if channels(filt) > 1 else []
        scratch = []
        if mve and filt.type == "INT8":
            # kernel sums: computed once in Prepare from a constant filter; a decoded
            # (TFLM_DECODE) filter has no data before planning, so its sums get scratch
            (arrays if filt.is_constant else scratch).append(4 * units)
        return OpPlan([abi.op_data["cmsis_fully_connected"]], arrays, scratch,
                      [ins[0], ins[1], _optional(ins, 2), out])
    if op.name == "MAX_POOL_2D":
        return OpPlan([abi.op_data["cmsis_pooling"]], [], [], [ins[0], out])
    if op.name == "AVERAGE_POOL_2D":
        # PoolingPrepare's input and output, then AveragePrepare's own
        buffer = avgpool_buffer(window(graph, op, (1, 1)), mve) if int8_input else 0
        return OpPlan([abi.op_data["cmsis_pooling"]], [], [buffer] if buffer else [],
                      [ins[0], out, ins[0], out])
    if op.name == "SOFTMAX" and t[ins[0]].type in ("INT8", "FLOAT32"):
        return OpPlan([abi.op_data["cmsis_softmax"]], [], [], [ins[0], out])
    # ADD: CMSIS-NN's OpData is as large as OpDataAdd and Prepare takes the same
    # tensors; MINIMUM/MAXIMUM: no Init or Prepare either; the rest: reference kernels
    return reference_plan(graph, op, abi, mve)


#: kernel set -> (the op planner, whether it is the MVE build)
PLANNERS: dict[str, tuple[Callable[..., OpPlan | None], bool]] = {
    "reference": (reference_plan, False),
    "cmsis_nn": (cmsis_plan, False),
    "cmsis_nn_mve": (cmsis_plan, True),
}
