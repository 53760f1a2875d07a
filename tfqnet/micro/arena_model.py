"""The tensor arena a board needs, per kernel set and word size, derived from what
TFLM allocates (and the C macros that select each figure in the generated header).

Why derived: the arena measured on the TFLM Python runtime (:mod:`tfqnet.micro.arena`)
is right for one build only, TFLM's reference kernels on a 64-bit host. A board differs
in two ways (measured on Cortex-M4 and M55, tflm-facts.md): pointers are 4 bytes, so
TFLM's own structures are smaller; and the kernel set allocates differently. The
reference kernels unpack an INT4 filter into scratch (one byte per weight: 32 KB for the
digits example's fc1, 7x what CMSIS-NN needs); CMSIS-NN requests im2col-sized buffers
instead, and its MVE build keeps per-layer kernel sums.

How: :func:`derive_arena` replays TFLM's allocator on the flatbuffer, in TFLM's order
(MicroAllocator, MicroInterpreter::AllocateTensors, the kernels' Init and Prepare):

* the tail (persistent, from the arena's end down): the allocator objects, one
  TfLiteEvalTensor per tensor, one NodeAndRegistration per op, each op's builtin
  parameters, the kernels' OpData and per-channel multiplier/shift arrays, scratch
  buffer handles, and the persistent TfLiteTensors of the model's inputs and outputs,
  each aligned as TFLM aligns it;
* the head: GreedyMemoryPlanner's plan (replayed exactly: same lifetimes, same
  size-then-order sort, same first-fit) of the activations and scratch buffers;
* the two moments that can need more than the final head + tail: a kernel's Prepare,
  whose temporary TfLiteTensors sit above the scratch requests, and the planning
  itself, whose AllocationInfo array and planner bookkeeping (40 bytes a buffer) must
  fit between head and tail.

The structure sizes per word size are in :data:`ABIS` (64-bit: the PyPI runtime, built
with TFLM's recording allocator and USE_TFLM_COMPRESSION; 32-bit: a Cortex-M build of
TFLM with the plain allocator, no compression); three values in it are fitted to
measurements, not read from sources (ABIS says which and why). The kernels' allocations
are in :func:`_reference_plan` and :func:`_cmsis_plan`: CONV_2D, FULLY_CONNECTED,
MAX_POOL_2D, RESHAPE and int8 MEAN for both; DEPTHWISE_CONV_2D, AVERAGE_POOL_2D and ADD
for the reference kernels only (CMSIS-NN replaces them with kernels of its own whose
allocations are not modelled). A model with any other op gets no figure (None;
:func:`unmodelled_ops` names the ops), never a guess.

Differences from the measured figures, and why (tests/test_arena_model.py):

* Cortex-M (tflm-facts.md: TFLM 90b983c2, M4 and M55, measured 2026-12-01 outside this
  repository): ``used`` equals the boards' ``arena_used_bytes()`` for the digits
  example's int8 and W4A8 models with reference, CMSIS-NN and CMSIS-NN MVE kernels,
  all six figures. The smallest arena that ran was 12 bytes more every time (``used``
  is 4 mod 16), so ``minimum`` is at least ``used`` rounded up to 16.
* 64-bit host: the derived minimum equals the TFLM runtime's measured one for the
  digits models and for small conv, depthwise, pooling, residual-add and mean models
  (the MEAN scratch buffers and temporaries are read off such probes), and is
  16 bytes above it for some models with per-channel FULLY_CONNECTED filters (the
  converter's default for Dense, not TFMOT's): their Prepare peak is 16 bytes lower
  than the temporaries modelled here add up to. Above, never below, and within the 5%
  margin.
* Not modelled: the Arm Compiler 6 buffer of CMSIS-NN's 1x1 convolution (GCC builds
  need none), dilated convolutions' buffers, CMSIS-NN's depthwise and average-pool
  buffers, offline-planned models, variable tensors and models with several subgraphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tfqnet.export.flatbuffer import FlatbufferModel, Operator, Tensor, element_count
from tfqnet.tflite_format import FIXED_ELEMENT_BITS


@dataclass(frozen=True)
class KernelSet:
    key: str  # the name export-c and check use
    macro: str  # NAME_ARENA_<macro> in the header
    label: str  # what the figure is for, as check and the header say it
    condition: str  # the C preprocessor condition that selects it


#: The kernel sets whose arena export-c writes, in the order the header tests them (the
#: MVE figure before the plain CMSIS-NN one, which it refines).
KERNEL_SETS = (
    KernelSet("cmsis_nn_mve", "CMSIS_NN_MVE", "CMSIS-NN kernels with MVE (Cortex-M55/M85)",
              "defined(CMSIS_NN) && defined(__ARM_FEATURE_MVE)"),
    KernelSet("cmsis_nn", "CMSIS_NN", "CMSIS-NN kernels, 32-bit Cortex-M without MVE",
              "defined(CMSIS_NN)"),
    KernelSet("reference", "REFERENCE", "TFLM reference kernels, 32-bit Cortex-M",
              "defined(TFQNET_REFERENCE_KERNELS)"),
)


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
#: OpDataPooling (pooling.h), CMSIS-NN's OpData = the reference one plus a buffer index
#: (conv, pooling), and for FULLY_CONNECTED two pointers, the index, kernel_sums and
#: three ints (cmsis_nn/fully_connected.cc).
_OP_DATA_64 = {"conv": 80, "fully_connected": 72, "pooling": 32, "add": 60, "reduce": 44}
_OP_DATA_32 = {"conv": 56, "fully_connected": 48, "pooling": 32, "add": 60, "reduce": 44,
               "cmsis_conv": 60,
               "cmsis_fully_connected": 76, "cmsis_pooling": 36}

#: The builds the derivation knows. ``host64``: the PyPI TFLM runtime (recording
#: allocator; compression compiled in). ``cortex_m32``: TFLM 90b983c2 for Cortex-M with
#: MicroInterpreter's own allocator, as measured in tflm-facts.md.
#:
#: Two values are fitted to measurements rather than read from TFLM's sources (the
#: sources are main-branch versions that need not be the measured builds'):
#: ``calibration`` -- the host tail is 32 bytes more than its structures add up to,
#: on every model probed (1 to 6 ops of five kinds); the Cortex-M tail 88 bytes less
#: (any value from 84 to 92 reproduces all six measured figures); and the Cortex-M
#: TfLiteTensor is taken as 48 bytes, not the 40 its fields add up to: every measured
#: Cortex-M figure ends at 4 mod 16, which the inputs' and outputs' TfLiteTensors,
#: allocated last, decide, and 48 is the size that gives it.
ABIS = {
    "host64": Abi(8, (104, 72, 248), 24, 64, 64, 24, 16, 32, 32, _OP_DATA_64),
    "cortex_m32": Abi(4, (36, 44, 36), 12, 32, 48, 12, 12, 24, -88, _OP_DATA_32),
}

_MAX_SCRATCH_PER_OP = 12  # kMaxScratchBuffersPerOp
_ALIGN = 16  # MicroArenaBufferAlignment()
_PLANNER_BYTES_PER_BUFFER = 40  # GreedyMemoryPlanner::per_buffer_size()

#: Bytes each op's builtin-options parser allocates (4-byte aligned; the structs hold no
#: pointers, so both word sizes agree): sizeof(TfLiteConvParams) etc. FULLY_CONNECTED's
#: 32 is measured on the host runtime (its TfLiteFullyConnectedParams fields add up to
#: 16; the probes' tails need 16 more per FULLY_CONNECTED op).
_BUILTIN_BYTES = {
    "CONV_2D": 28, "DEPTHWISE_CONV_2D": 28, "FULLY_CONNECTED": 32, "MAX_POOL_2D": 40,
    "AVERAGE_POOL_2D": 40, "RESHAPE": 36, "ADD": 8, "MEAN": 1,
}


def _down(value: int, alignment: int) -> int:
    return value - value % alignment


def _up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


@dataclass
class OpPlan:
    """What one kernel allocates: OpData in Init, persistent buffers and scratch requests
    in Prepare, and the temporary tensors alive at Prepare's peak (in allocation order;
    -1 for an absent optional input, which allocates nothing)."""

    init: list[int] = field(default_factory=list)
    prepare: list[int] = field(default_factory=list)
    scratch: list[int] = field(default_factory=list)
    temps: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ArenaEstimate:
    """A derived arena. ``used`` is what TFLM's ``arena_used_bytes()`` reports (head +
    tail); ``minimum`` the smallest arena that allocates, at least ``used`` rounded up to
    16 bytes (the smallest that ran on the Cortex-M boards measured, 12 bytes above
    ``used`` every time)."""

    kernels: str  # a KernelSet key
    abi: str  # an ABIS key
    head: int  # planned activations and scratch buffers
    tail: int  # persistent allocations (arena size a multiple of 16)
    minimum: int
    scratch: int  # bytes of scratch buffers the kernels request

    @property
    def used(self) -> int:
        return self.head + self.tail


def _channels(tensor: Tensor) -> int:
    return len(tensor.scales)


def _optional(inputs: tuple[int, ...], k: int) -> int:
    return inputs[k] if len(inputs) > k else -1


def _reference_plan(graph: FlatbufferModel, op: Operator, abi: Abi, mve: bool) -> OpPlan | None:
    """TFLM's reference kernels (conv_common.cc, depthwise_conv_common.cc,
    fully_connected.cc, pooling_common.cc, reshape.cc)."""
    t, ins, out = graph.tensors, op.inputs, op.outputs[0]
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        filt = t[ins[1]]
        channels = filt.shape[0] if op.name == "CONV_2D" else filt.shape[-1]
        # an INT4 filter is unpacked into scratch, one byte per weight
        scratch = [element_count(filt.shape)] if filt.type == "INT4" else []
        # Prepare holds output, input, filter; CalculateOpData adds four more temps
        return OpPlan([abi.op_data["conv"]], [4 * channels, 4 * channels], scratch,
                      [out, ins[0], ins[1], ins[0], ins[1], _optional(ins, 2), out])
    if op.name == "FULLY_CONNECTED":
        filt = t[ins[1]]
        units = filt.shape[0]
        arrays = [4 * units, 4 * units] if _channels(filt) > 1 else []
        scratch = [element_count(filt.shape)] if filt.type == "INT4" else []
        return OpPlan([abi.op_data["fully_connected"]], arrays, scratch,
                      [ins[0], ins[1], _optional(ins, 2), out])
    if op.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return OpPlan([abi.op_data["pooling"]], [], [], [ins[0], out])
    if op.name == "RESHAPE":
        return OpPlan([], [], [], [ins[0], out])
    if op.name == "ADD":  # OpDataAdd: no pointers, 60 bytes on both word sizes
        return OpPlan([abi.op_data["add"]], [], [], [ins[0], ins[1], out])
    if op.name == "MEAN" and t[ins[0]].type in ("INT8", "INT16"):
        # OpDataReduce (no pointers); scratch: the int32 sums, the resolved axes and the
        # input's index; Prepare's helper takes input, axis and output again
        axes = element_count(t[ins[1]].shape)
        return OpPlan([abi.op_data["reduce"]], [],
                      [4 * element_count(t[out].shape), 4 * axes, 4 * len(t[ins[0]].shape)],
                      [ins[0], ins[1], out, ins[0], ins[1], out])
    return None


def _conv_geometry(graph: FlatbufferModel, op: Operator) -> dict[str, int]:
    """The dimensions and padding CMSIS-NN's buffer-size functions read (NHWC shapes;
    stride and SAME padding recovered from the shapes, dilation taken as 1)."""
    t = graph.tensors
    _, in_h, in_w, in_c = t[op.inputs[0]].shape
    _, f_h, f_w, _ = t[op.inputs[1]].shape
    _, out_h, out_w, _ = t[op.outputs[0]].shape
    stride_h = max(1, -(-in_h // max(out_h, 1)))
    stride_w = max(1, -(-in_w // max(out_w, 1)))
    return {"in_h": in_h, "in_c": in_c, "f_h": f_h, "f_w": f_w, "stride_h": stride_h,
            "pad_h": max(0, ((out_h - 1) * stride_h + f_h - in_h) // 2),
            "pad_w": max(0, ((out_w - 1) * stride_w + f_w - in_w) // 2)}


def _cmsis_conv_buffer(g: dict[str, int], int4: bool, mve: bool) -> int:
    """arm_convolve_wrapper_s8_get_buffer_size / _s4_ (CMSIS-NN's
    arm_convolve_get_buffer_sizes_s8.c and _s4.c), for GCC (no Arm Compiler 6 1x1
    buffer)."""
    is_1x1 = g["pad_w"] == 0 and g["pad_h"] == 0 and g["f_w"] == 1 and g["f_h"] == 1
    rhs_cols = g["f_w"] * g["f_h"] * g["in_c"]
    if is_1x1:
        return 0
    if int4:
        return 2 * rhs_cols * 2
    if mve:
        if g["in_h"] == 1 and g["f_h"] == 1 and g["stride_h"] == 1:  # 1 x n
            return (g["f_w"] + g["pad_w"]) * g["in_c"]
        return 4 * (-(-rhs_cols // 16)) * 16  # four im2col columns of 16-lane registers
    return 2 * _up(rhs_cols, 4) * 2  # two im2col columns of int16


def _cmsis_plan(graph: FlatbufferModel, op: Operator, abi: Abi, mve: bool) -> OpPlan | None:
    """TFLM's CMSIS-NN kernels (kernels/cmsis_nn/conv.cc, fully_connected.cc,
    pooling.cc; RESHAPE is the reference kernel). INT4 filters run natively."""
    t, ins, out = graph.tensors, op.inputs, op.outputs[0]
    if op.name == "CONV_2D":
        filt = t[ins[1]]
        buffer = _cmsis_conv_buffer(_conv_geometry(graph, op), filt.type == "INT4", mve)
        return OpPlan([abi.op_data["cmsis_conv"]], [4 * filt.shape[0], 4 * filt.shape[0]],
                      [buffer] if buffer else [],
                      [ins[0], ins[1], out, ins[0], ins[1], _optional(ins, 2), out])
    if op.name == "FULLY_CONNECTED":
        filt = t[ins[1]]
        if len(t[out].shape) > 2:
            return None  # the batched path runs as a 1x1 convolution: not modelled
        units = filt.shape[0]
        arrays = [4 * units, 4 * units] if _channels(filt) > 1 else []
        if mve and filt.type == "INT8" and filt.is_constant:
            arrays.append(4 * units)  # kernel sums, computed once in Prepare
        return OpPlan([abi.op_data["cmsis_fully_connected"]], arrays, [],
                      [ins[0], ins[1], _optional(ins, 2), out])
    if op.name == "MAX_POOL_2D":
        return OpPlan([abi.op_data["cmsis_pooling"]], [], [], [ins[0], out])
    if op.name in ("RESHAPE", "MEAN"):  # no CMSIS-NN kernel: the reference one runs
        return _reference_plan(graph, op, abi, mve)
    return None


#: kernel set -> (the op planner, whether it is the MVE build)
_PLANNERS: dict[str, tuple[Callable[..., OpPlan | None], bool]] = {
    "reference": (_reference_plan, False),
    "cmsis_nn": (_cmsis_plan, False),
    "cmsis_nn_mve": (_cmsis_plan, True),
}
#: the kernel sets whose allocations are known for each ABI
_ABI_KERNELS = {"host64": ("reference",), "cortex_m32": ("reference", "cmsis_nn",
                                                          "cmsis_nn_mve")}


def _plan(graph: FlatbufferModel, op: Operator, kernels: str, abi: Abi) -> OpPlan | None:
    """The op's allocations, or None when unknown (as for shapes the kernel would refuse:
    the derivation never guesses)."""
    planner, mve = _PLANNERS[kernels]
    try:
        return planner(graph, op, abi, mve)
    except (IndexError, ValueError, TypeError):
        return None


def unmodelled_ops(graph: FlatbufferModel, kernels: str = "reference",
                   abi: str = "cortex_m32") -> list[str]:
    """The ops of ``graph`` whose allocations the derivation does not know (sorted)."""
    return sorted({op.name for op in graph.operators
                   if _plan(graph, op, kernels, ABIS[abi]) is None})


def _tensor_bytes(tensor: Tensor) -> int:
    # sub-byte and unknown types count a byte an element
    return element_count(tensor.shape) * max(FIXED_ELEMENT_BITS.get(tensor.type, 8) // 8, 1)


def _quantized(tensor: Tensor) -> bool:
    return bool(tensor.scales and tensor.zero_points)


def _temp_end(graph: FlatbufferModel, start: int, indices: list[int], abi: Abi) -> int:
    """End offset of temporary TfLiteTensors (each with its quantization) from ``start``."""
    end = start
    for index in indices:
        if index < 0:
            continue
        end = _up(end, abi.pointer) + abi.tflite_tensor
        if _quantized(graph.tensors[index]):
            end = _up(end, abi.pointer) + abi.affine_quantization
            end = _up(end, 4) + 4 + 4 * _channels(graph.tensors[index])
    return end


def _greedy_plan(sizes: list[int], lifetimes: list[tuple[int, int]]) -> int:
    """GreedyMemoryPlanner's high-water mark for buffers added in this order: largest
    first (ties: the last added first), each at the lowest gap that holds it among the
    buffers alive at the same time."""
    if not sizes:
        return 0
    order = sorted(reversed(range(len(sizes))), key=lambda i: -sizes[i])
    placed: list[tuple[int, int]] = []  # (offset, buffer), by offset
    top = 0
    for buffer in order:
        first, last = lifetimes[buffer]
        offset = 0
        for other_offset, other in placed:
            if lifetimes[other][0] > last or first > lifetimes[other][1]:
                continue
            if other_offset - offset >= sizes[buffer]:
                break
            offset = max(offset, other_offset + sizes[other])
        placed.append((offset, buffer))
        placed.sort(key=lambda item: item[0])
        top = max(top, offset + sizes[buffer])
    return top


def _head(graph: FlatbufferModel, scratch: list[tuple[int, int]]) -> tuple[int, int]:
    """(planned head bytes, planned buffer count): the activations (lifetimes as TFLM's
    AllocationInfoBuilder marks them), then the scratch buffers (alive during their op)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for index in (*graph.inputs, *graph.outputs):
        first[index] = last[index] = 0
    for scope, op in enumerate(graph.operators, start=1):
        for index in op.outputs:  # a producer restarts the lifetime
            first[index] = last[index] = scope
        for index in op.inputs:
            if index >= 0:
                last[index] = scope
    for index in graph.outputs:
        last[index] = len(graph.operators)
    sizes, lifetimes = [], []
    for tensor in graph.tensors:
        nbytes = _tensor_bytes(tensor)
        if tensor.is_constant or not nbytes or tensor.index not in first:
            continue
        sizes.append(_up(nbytes, _ALIGN))
        lifetimes.append((first[tensor.index], last[tensor.index]))
    for op_index, nbytes in scratch:
        sizes.append(_up(nbytes, _ALIGN))
        lifetimes.append((op_index + 1, op_index + 1))
    return _greedy_plan(sizes, lifetimes), len(sizes)


def _fits(graph: FlatbufferModel, plans: list[OpPlan], abi: Abi, size: int, head: int,
          buffers: int) -> tuple[bool, int]:
    """(whether TFLM allocates the model in ``size`` bytes, the tail it then uses),
    replaying the allocations in TFLM's order on an arena at a 16-aligned address."""
    p, tail = abi.pointer, size

    def persistent(nbytes: int, alignment: int) -> None:
        nonlocal tail
        tail = _down(tail - nbytes, alignment)

    for nbytes in abi.allocator_objects:
        persistent(nbytes, p)
    tail -= abi.calibration
    persistent(2 * p, p)  # MicroBuiltinDataAllocator
    persistent(2 * p, p)  # SubgraphAllocations (one subgraph)
    persistent(abi.eval_tensor * len(graph.tensors), p)
    persistent(abi.node_and_registration * len(graph.operators), p)
    for op in graph.operators:  # PrepareNodeAndRegistrationDataFromFlatbuffer
        if op.name in _BUILTIN_BYTES:
            persistent(_BUILTIN_BYTES[op.name], 4)
    for plan in plans:  # Init
        for nbytes in plan.init:
            persistent(nbytes, _ALIGN)
    fits, requests = True, 0
    for plan in plans:  # Prepare: temporaries sit above the scratch requests in the head
        for nbytes in plan.prepare:
            persistent(nbytes, _ALIGN)
        start = abi.scratch_request * (requests + _MAX_SCRATCH_PER_OP)
        fits = fits and _temp_end(graph, start, plan.temps, abi) <= tail
        requests += len(plan.scratch)
    if requests:
        persistent(p * requests, p)  # ScratchBufferHandle array
    # CommitStaticMemoryPlan: AllocationInfo and the planner's working memory are
    # temporaries above the scratch requests
    start = _up(abi.scratch_request * (requests + _MAX_SCRATCH_PER_OP), p) + p
    start += abi.allocation_info * (len(graph.tensors) + requests)
    fits = fits and (_up(start, _ALIGN) + _PLANNER_BYTES_PER_BUFFER * buffers
                     <= _down(tail, _ALIGN))
    for group in (graph.inputs, graph.outputs):  # MicroInterpreter's input/output tensors
        persistent(p * len(group), _ALIGN)
        for index in group:
            persistent(abi.tflite_tensor, p)
            if _quantized(graph.tensors[index]):
                persistent(abi.affine_quantization, p)
                persistent(4 + 4 * _channels(graph.tensors[index]), 4)
    return fits and head <= tail, size - tail


def derive_arena(graph: FlatbufferModel, kernels: str = "reference",
                 abi: str = "cortex_m32") -> ArenaEstimate | None:
    """The arena ``graph`` needs with ``kernels`` (a :data:`KERNEL_SETS` key) on the
    ``abi`` build (an :data:`ABIS` key); None when an op's allocations are not known
    for that kernel set (:func:`unmodelled_ops` names them)."""
    if kernels not in _ABI_KERNELS[abi]:
        raise ValueError(f"no derivation of {kernels} kernels on {abi}")
    layout = ABIS[abi]
    found = [_plan(graph, op, kernels, layout) for op in graph.operators]
    plans = [plan for plan in found if plan is not None]
    if len(plans) != len(found):
        return None
    scratch = [(k, nbytes) for k, plan in enumerate(plans) for nbytes in plan.scratch]
    head, buffers = _head(graph, scratch)
    tail = _fits(graph, plans, layout, 1 << 40, head, buffers)[1]

    def fits(size: int) -> bool:
        return _fits(graph, plans, layout, size, head, buffers)[0]

    # Fitting is monotone in the size but for alignment (up to 16 bytes): bisect, then
    # look at the 32 sizes below the bound found.
    low, high = max(16, head + tail - 2 * _ALIGN), head + tail
    while not fits(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    size = min(n for n in range(max(16, high - 2 * _ALIGN), high + 1) if fits(n))
    return ArenaEstimate(kernels, abi, head, tail, max(size, _up(head + tail, _ALIGN)),
                         sum(nbytes for _, nbytes in scratch))


def board_arenas(graph: FlatbufferModel) -> dict[str, ArenaEstimate]:
    """The derived 32-bit Cortex-M arena of every :data:`KERNEL_SETS` entry whose ops are
    all known (an empty dict when none is)."""
    found = {}
    for kernels in reversed(KERNEL_SETS):  # reference first, as check lists them
        estimate = derive_arena(graph, kernels.key, "cortex_m32")
        if estimate is not None:
            found[kernels.key] = estimate
    return found
