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
per op and kernel set are in :mod:`tfqnet.micro.kernel_plans` (which ops, for which
kernel set) and CMSIS-NN's scratch buffers in :mod:`tfqnet.micro.cmsis_nn_buffers`. A
model with any other op gets no figure (None; :func:`unmodelled_ops` names the ops),
never a guess.

Differences from the measured figures, and why (tests/test_arena_model.py):

* Cortex-M (tflm-facts.md: TFLM 90b983c2, M4 and M55, measured 2026-12-01 outside this
  repository): ``used`` equals the boards' ``arena_used_bytes()`` for the digits
  example's int8 and W4A8 models with reference, CMSIS-NN and CMSIS-NN MVE kernels,
  all six figures. The smallest arena that ran was 12 bytes more every time (``used``
  is 4 mod 16), so ``minimum`` is at least ``used`` rounded up to 16.
* 64-bit host: the derived minimum equals the TFLM runtime's measured one for the
  digits models and for small conv, depthwise (int8 and INT4), pooling, residual-add,
  mean, softmax, quantize/dequantize, cast, minimum, gather and int8 concatenation
  models and two-input/two-output graphs (tests/test_arena_model.py), and is a little
  off on a few: 8 or 16 bytes above for per-channel FULLY_CONNECTED filters (the
  converter's default for Dense, not TFMOT's) and int32 ADD, 24 above for float
  CONCATENATION, 8 below to 8 above for the raw-pixel GATHER graph: their Prepare peaks
  differ from the temporaries modelled by less than an alignment step; and 8 above for
  the two ternary TFLM_DECODE models (a small conv/Dense one and MobileNetV2), where the
  replay fits in exactly the measured size but ``minimum`` is floored at ``used``
  rounded up to 16 (the tail's alignment depends on the arena size mod 16). Always
  within the 5% margin.
* CMSIS-NN figures beyond the digits example (depthwise, average pool, softmax) are
  derived from CMSIS-NN's buffer-size functions and TFLM's cmsis_nn Prepare functions,
  not measured on a board.
* TFLM_DECODE (compressed weights, :func:`tfqnet.micro.kernel_plans.decode_plan`): its
  DecodeState pointers and DecodeStateLut objects in the tail, the decoded int8 weights
  planned in the head like activations. The host figure is checked against the TFLM
  runtime (which has compression compiled in); the Cortex-M figures for TFLM_DECODE
  are derived from TFLM's sources only: the Cortex-M build measured had no
  compression compiled in. They keep that build's OpData sizes; a board built with
  USE_TFLM_COMPRESSION (as the host runtime is) has two more ints in OpDataConv and
  OpDataFullyConnected, up to 16 bytes more a convolution or FULLY_CONNECTED op after
  alignment (64 and 240 bytes, under 1%, for the two compressed models tested).
* Not modelled: the Arm Compiler 6 buffer of CMSIS-NN's 1x1 convolution (GCC builds
  need none), dilated CMSIS-NN convolutions' buffers, Cortex-M cores without the DSP
  extension (M0+/M3: CMSIS-NN requests fewer buffers), TFLM_DECODE of pruned or
  Huffman tables, offline-planned models, variable tensors and models with several
  subgraphs.
"""

from __future__ import annotations

from dataclasses import dataclass

from tfqnet.export.flatbuffer import FlatbufferModel, Operator, Tensor, element_count
from tfqnet.micro.kernel_plans import ABIS, BUILTIN_BYTES, PLANNERS, Abi, OpPlan, channels
from tfqnet.tflite_format import FIXED_ELEMENT_BITS

__all__ = ["ABIS", "KERNEL_SETS", "ArenaEstimate", "KernelSet", "board_arenas",
           "derive_arena", "unmodelled_ops"]


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

_MAX_SCRATCH_PER_OP = 12  # kMaxScratchBuffersPerOp
_ALIGN = 16  # MicroArenaBufferAlignment()
_PLANNER_BYTES_PER_BUFFER = 40  # GreedyMemoryPlanner::per_buffer_size()


def _down(value: int, alignment: int) -> int:
    return value - value % alignment


def _up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


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


#: the kernel sets whose allocations are known for each ABI
_ABI_KERNELS = {"host64": ("reference",), "cortex_m32": ("reference", "cmsis_nn",
                                                          "cmsis_nn_mve")}


def _plan(graph: FlatbufferModel, op: Operator, kernels: str, abi: Abi) -> OpPlan | None:
    """The op's allocations, or None when unknown (as for shapes the kernel would refuse:
    the derivation never guesses)."""
    planner, mve = PLANNERS[kernels]
    try:
        return planner(graph, op, abi, mve)
    except (AttributeError, IndexError, ValueError, TypeError):
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
            end = _up(end, 4) + 4 + 4 * channels(graph.tensors[index])
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
        if op.name in BUILTIN_BYTES:
            persistent(BUILTIN_BYTES[op.name], 4)
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
                persistent(4 + 4 * channels(graph.tensors[index]), 4)
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
