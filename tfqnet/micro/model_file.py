"""Reading a model file for the micro tools, with errors that say what the file is.

Everything here is pure Python (the flatbuffer schema reader shipped with
tflite-micro): no TensorFlow and no native code, so a wrong, empty, truncated or
huge file is answered in milliseconds and cannot crash the process. Checks, in order:

1. the path is a regular file (not a directory such as a SavedModel, not a device
   or pipe, which would block or never end), not empty, at most
   :data:`MAX_MODEL_BYTES`;
2. the flatbuffer header: a root offset inside the file and the ``TFL3``
   identifier (other formats a user might pass by mistake are named);
3. the schema reader parses the whole model;
4. the model is consistent, in every subgraph (the reader does not check this; the
   tools index tensors by these numbers, and the TFLM runtime trusts them, so a single
   wrong index crashes it): every tensor, buffer, operator code and subgraph index
   used exists; operators read only tensors that are graph inputs, constants,
   variables or written by an earlier operator, and write no constant (nor is a
   graph input one); shapes are non-negative with at most
   :data:`MAX_TENSOR_ELEMENTS` elements; constant data covers its tensor's shape;
   quantization has one zero point or one per scale, and per-channel scales along an
   axis of the tensor, one per channel; buffers stored outside the flatbuffer lie inside the
   file; the shapes of each CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED fit
   together. Whether the other operators' tensors fit them is left to the kernels,
   which check much of it themselves.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path

from tfqnet.errors import InvalidModelFileError
from tfqnet.export.flatbuffer import BUILTIN_OPS, TENSOR_TYPES, FlatbufferModel
from tfqnet.tflite_format import DECODE_OP, FIXED_ELEMENT_BITS, packed_bytes

#: Largest model file the micro tools accept. Why 64 MiB: it is several times the
#: flash of the largest Cortex-M parts (a few MiB internal, 8-32 MiB external QSPI);
#: a larger file is not a model for a board, and reading it whole would be slow.
MAX_MODEL_BYTES = 64 * 1024 * 1024
#: Most elements a tensor may have: TFLite Micro counts them in an ``int``
#: (``ElementCount``), and a larger count wraps around into a too small allocation.
MAX_TENSOR_ELEMENTS = 2**31 - 1
_HEADER_BYTES = 8
_FILE_IDENTIFIER = b"TFL3"
#: leading bytes of formats users pass instead of a .tflite, and what to do about it
_OTHER_FORMATS = (
    (b"\x89HDF", "an HDF5 file (a Keras .h5 model?): convert it with tfqnet.convert first"),
    (b"PK\x03\x04", "a zip archive (a .keras model?): convert it with tfqnet.convert first"),
    (b"\x93NUMPY", "a NumPy .npy array, not a model"),
    (b"\x08\x01\x12", "a protocol buffer (a SavedModel .pb?): convert the model with "
     "tfqnet.convert first"),
)


def read_model_file(path: str | os.PathLike) -> tuple[bytes, FlatbufferModel]:
    """The bytes and the parsed graph of the .tflite file at ``path``.

    Raises InvalidModelFileError (the message says what is wrong, without the path)
    and OSError subclasses for files that cannot be read (e.g. FileNotFoundError).
    """
    path = Path(path)
    info = path.stat()  # FileNotFoundError / PermissionError go to the caller
    if stat.S_ISDIR(info.st_mode):
        hint = " (a SavedModel?)" if (path / "saved_model.pb").exists() else ""
        raise InvalidModelFileError(f"it is a directory{hint}, not a .tflite file; convert "
                                    "a QAT model with tfqnet.convert first")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidModelFileError("it is not a regular file (a device, pipe or socket)")
    if info.st_size > MAX_MODEL_BYTES:
        raise InvalidModelFileError(
            f"it is {info.st_size} bytes, more than the micro tools accept "
            f"({MAX_MODEL_BYTES} bytes, several times any microcontroller's flash)")
    with open(path, "rb") as handle:
        data = handle.read(MAX_MODEL_BYTES + 1)
    return data, parse_model(data)


def parse_model(data: bytes) -> FlatbufferModel:
    """Parses and checks a TFLite flatbuffer (see the module docstring), or raises
    InvalidModelFileError saying what is wrong."""
    data = bytes(data)
    if not data:
        raise InvalidModelFileError("the file is empty (0 bytes)")
    if len(data) > MAX_MODEL_BYTES:
        raise InvalidModelFileError(f"it is {len(data)} bytes, more than the micro tools "
                                    f"accept ({MAX_MODEL_BYTES} bytes)")
    for magic, what in _OTHER_FORMATS:
        if data.startswith(magic):
            raise InvalidModelFileError(f"it is {what}")
    if len(data) < _HEADER_BYTES:
        raise InvalidModelFileError(f"it is {len(data)} bytes, too short for a TFLite "
                                    "flatbuffer")
    if data[4:8] != _FILE_IDENTIFIER:
        raise InvalidModelFileError(
            f"not a TFLite flatbuffer (bytes 4-8 are {data[4:8]!r}, not the 'TFL3' identifier)")
    (root,) = struct.unpack_from("<I", data, 0)
    if not _HEADER_BYTES <= root <= len(data) - 4:
        raise InvalidModelFileError(
            f"corrupt or truncated TFLite flatbuffer (root table offset {root} outside the "
            f"{len(data)}-byte file)")
    graph = FlatbufferModel.from_bytes(data)
    check_graph(graph)
    return graph


def check_graph(graph: FlatbufferModel) -> None:
    """Raises InvalidModelFileError when the model refers to something it does not have
    or holds values the TFLM runtime would trust into a crash (see the module docstring)."""
    model = graph.schema_model
    if model is None:  # built by hand: only the first subgraph is known
        _check_subgraph("the graph", len(graph.tensors), graph.inputs,
                        graph.outputs, [(op.index, op.name, op.inputs, op.outputs, ())
                                        for op in graph.operators])
        for tensor in graph.tensors:
            _check_shape("", tensor.index, tensor.shape)
        return
    buffers = model.buffers or []
    for index, buffer in enumerate(buffers):
        if buffer.offset > 1 and buffer.offset + buffer.size > len(graph.data):
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: buffer {index} lies at bytes {buffer.offset}-"
                f"{buffer.offset + buffer.size}, past the end of the {len(graph.data)}-byte "
                "file")
    codes = model.operatorCodes or []
    for number, subgraph in enumerate(model.subgraphs):
        where = "" if number == 0 else f"subgraph {number}: "
        tensors = subgraph.tensors or []
        operators = []
        for k, op in enumerate(subgraph.operators or []):
            if op.opcodeIndex >= len(codes):
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: {where}operator {k} uses operator code "
                    f"{op.opcodeIndex}, but the model has {len(codes)}")
            name = graph.operators[k].name if number == 0 else _op_name(codes[op.opcodeIndex])
            operators.append((k, name, _ints(op.inputs), _ints(op.outputs),
                              _ints(op.intermediates)))
        _check_subgraph("the graph" if number == 0 else f"subgraph {number}", len(tensors),
                        _ints(subgraph.inputs), _ints(subgraph.outputs), operators)
        available, constants = set(_ints(subgraph.inputs)), set()
        # TFLM_DECODE reads its encoded inputs as bytes; they carry the decoded filter's
        # per-channel scales whatever their own shape
        encoded = {i for _, name, ins, _, _ in operators if name == DECODE_OP for i in ins}
        for index, tensor in enumerate(tensors):
            shape = _ints(tensor.shape)
            _check_shape(where, index, shape)
            if tensor.buffer >= len(buffers):
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: {where}tensor {index} uses buffer "
                    f"{tensor.buffer}, but the model has {len(buffers)} buffers")
            if index not in encoded:
                _check_quantization(where, index, shape, tensor.quantization)
            stored = _constant_bytes(buffers[tensor.buffer]) if tensor.buffer > 0 else 0
            if stored:
                _check_constant_size(where, index, shape, tensor.type, stored)
                constants.add(index)
            if stored or tensor.isVariable or math.prod(shape) == 0:
                available.add(index)
        shapes = [_ints(t.shape) for t in tensors]
        for (k, name, inputs, outputs, _), op in zip(operators, subgraph.operators or [],
                                                     strict=True):
            if name in _WEIGHTED_SHAPES:
                _check_weighted_op(where, k, name, inputs, outputs, shapes)
            elif name in _BROADCASTING_OPS:
                _check_broadcasting_op(where, k, name, inputs, outputs, shapes,
                                       [t.type for t in tensors])
            if name == "VAR_HANDLE" and not hasattr(op.builtinOptions, "sharedName"):
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: {where}operator {k} (VAR_HANDLE) has no "
                    "VarHandleOptions")
        # Constant data lives in the flatbuffer (flash, on a board): nothing writes it.
        written = [("it is a graph input", i) for i in _ints(subgraph.inputs)]
        written += [(f"operator {k} ({name}) writes it", i) for k, name, _, outputs, _
                    in operators for i in outputs]
        for what, index in written:
            if index in constants:
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: {where}tensor {index} holds constant data, "
                    f"but {what}")
        # Operators are stored in execution order: each reads what is already there.
        for k, name, inputs, outputs, _ in operators:
            missing = [i for i in inputs if i >= 0 and i not in available]
            if missing:
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: {where}operator {k} ({name}) reads tensor "
                    f"{missing[0]} before any operator writes it (it is not a graph input, "
                    "a constant or a variable)")
            available.update(outputs)
        missing = [i for i in _ints(subgraph.outputs) if i not in available]
        if missing:
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: {where}graph output tensor {missing[0]} is "
                "written by no operator")
    for number, signature in enumerate(model.signatureDefs or []):
        if signature.subgraphIndex >= len(model.subgraphs):
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: signature {number} names subgraph "
                f"{signature.subgraphIndex} of {len(model.subgraphs)}")
        count = len(model.subgraphs[signature.subgraphIndex].tensors or [])
        for entry in (*(signature.inputs or []), *(signature.outputs or [])):
            if entry.tensorIndex >= count:
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: signature {number} names tensor "
                    f"{entry.tensorIndex}, but its subgraph has {count} tensors")


def _ints(values) -> tuple[int, ...]:
    return () if values is None else tuple(int(v) for v in values)


def _op_name(code) -> str:
    return BUILTIN_OPS.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def _check_subgraph(what: str, count: int, inputs, outputs, operators) -> None:
    """Every tensor index the graph and its operators use exists (-1: an absent
    optional input), and every operator writes something."""

    def bad(index: int, optional: bool) -> bool:
        return not (0 <= index < count or (optional and index == -1))

    where = "" if what == "the graph" else f"{what}: "
    for kind, indices in (("input", inputs), ("output", outputs)):
        if not indices:
            raise InvalidModelFileError(f"corrupt TFLite flatbuffer: {what} has no {kind}s")
        if any(bad(i, optional=False) for i in indices):
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: {where}a graph {kind} names tensor "
                f"{next(i for i in indices if bad(i, False))} of {count}")
    for k, name, op_inputs, op_outputs, intermediates in operators:
        for index in (*op_inputs, *op_outputs, *intermediates):
            if bad(index, optional=True):
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: {where}operator {k} ({name}) uses "
                    f"tensor {index}, but {what} has {count} tensors")
        if not op_outputs:
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: {where}operator {k} ({name}) has no output")


#: the weighted ops: (axis of the output channels in the filter, the filter's rank)
_WEIGHTED_SHAPES = {"CONV_2D": (0, 4), "DEPTHWISE_CONV_2D": (3, 4), "FULLY_CONNECTED": (0, 2)}


def _check_weighted_op(where: str, k: int, name: str, inputs, outputs, shapes) -> None:
    """The shapes of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED fit together: TFLM's
    kernels derive loop counts and divisors from them (a CONV_2D whose input has fewer
    channels than its filter divides by zero groups; one with an output of the wrong rank
    loops for ever)."""
    if len(inputs) < 2 or inputs[0] < 0 or inputs[1] < 0:
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}operator {k} ({name}) has no input or filter")
    axis, rank = _WEIGHTED_SHAPES[name]
    data, weights, out = shapes[inputs[0]], shapes[inputs[1]], shapes[outputs[0]]
    channels = weights[axis] if len(weights) == rank else 0
    if name == "FULLY_CONNECTED":
        depth = weights[1] if len(weights) == rank else 0
        fits = (channels > 0 and depth > 0 and math.prod(data) % depth == 0
                and len(out) >= 1 and out[-1] == channels
                and math.prod(data) // depth == math.prod(out) // channels)  # batches
    else:
        depth = weights[3] if name == "CONV_2D" and len(weights) == rank else 1
        fits = (channels > 0 and depth > 0 and len(data) == 4 and len(out) == 4
                and data[3] >= depth and data[3] % depth == 0 and out[3] == channels
                and out[0] == data[0])
        if fits and name == "DEPTHWISE_CONV_2D":  # channels = input channels x multiplier
            fits = channels % data[3] == 0
    bias = inputs[2] if len(inputs) > 2 else -1
    if fits and bias >= 0:
        fits = math.prod(shapes[bias]) == channels
    if not fits:
        shown = [shapes[i] for i in inputs if i >= 0]
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}operator {k} ({name}) has tensors of shapes "
            f"{', '.join(map(str, shown))} -> {out}, which do not fit together")


#: elementwise ops of two inputs that broadcast (each dimension equal, or 1)
_BROADCASTING_OPS = {"ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE"}


def _check_broadcasting_op(where: str, k: int, name: str, inputs, outputs, shapes,
                           types) -> None:
    """Both inputs have one type and broadcast to the output shape: the kernels pick
    their code by the first input's type and read the second as the same type (an
    int8 ADD of an int32 tensor aborts the process)."""
    if len(inputs) != 2 or min(inputs) < 0:
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}operator {k} ({name}) has {len(inputs)} "
            "inputs, not 2")
    a, b = inputs
    out = shapes[outputs[0]]
    rank = max(len(shapes[a]), len(shapes[b]))

    def padded(shape):
        return (1,) * (rank - len(shape)) + shape

    fits = types[a] == types[b] and len(out) == rank and all(
        d in (x, 1) and e in (x, 1) for d, e, x in zip(padded(shapes[a]), padded(shapes[b]),
                                                       out, strict=True))
    if not fits:
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}operator {k} ({name}) combines "
            f"{TENSOR_TYPES.get(types[a], types[a])} {shapes[a]} and "
            f"{TENSOR_TYPES.get(types[b], types[b])} {shapes[b]} into {out}")


def _check_shape(where: str, index: int, shape: tuple[int, ...]) -> None:
    if any(d < 0 for d in shape):
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}tensor {index} has shape {shape}")
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}tensor {index} has shape {shape}, "
            f"{math.prod(shape)} elements; TFLite Micro counts elements in a 32-bit int "
            f"(at most {MAX_TENSOR_ELEMENTS})")


def _check_quantization(where: str, index: int, shape: tuple[int, ...], quantization) -> None:
    """TFLM reads one zero point per scale, or one for all of them (what
    :mod:`tfqnet.export.compact` stores; TFLite's loader refuses that), and per-channel
    scales along an axis of the tensor, one per channel."""
    if quantization is None:
        return
    scales, zero_points = _ints_or_len(quantization.scale), _ints_or_len(quantization.zeroPoint)
    if not scales or not zero_points:
        return
    if zero_points not in (1, scales):
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}tensor {index} has {scales} scales but "
            f"{zero_points} zero points")
    axis = int(quantization.quantizedDimension)
    if scales > 1 and not (0 <= axis < len(shape) and shape[axis] == scales):
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}tensor {index} of shape {shape} has "
            f"{scales} per-channel scales along dimension {axis}")


def _ints_or_len(values) -> int:
    return 0 if values is None else len(values)


def _constant_bytes(buffer) -> int:
    if buffer.data is not None and len(buffer.data):
        return len(buffer.data)
    return int(buffer.size) if buffer.offset > 1 else 0


def _check_constant_size(where: str, index: int, shape: tuple[int, ...], type_code: int,
                         stored: int) -> None:
    """Kernels read a constant tensor's whole shape from its buffer, unchecked."""
    type_name = TENSOR_TYPES.get(type_code, str(type_code))
    bits = FIXED_ELEMENT_BITS.get(type_name)
    if bits is None:  # strings, resources: no fixed size per element
        return
    needed = packed_bytes(math.prod(shape), bits)
    if stored < needed:
        raise InvalidModelFileError(
            f"corrupt TFLite flatbuffer: {where}tensor {index} ({type_name}, shape {shape}) "
            f"needs {needed} bytes of constant data, but its buffer holds {stored}")


__all__ = ["MAX_MODEL_BYTES", "MAX_TENSOR_ELEMENTS", "check_graph", "parse_model",
           "read_model_file"]
