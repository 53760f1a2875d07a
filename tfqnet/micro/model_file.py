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
4. the graph is consistent: every tensor index an operator or the graph uses exists,
   shapes are non-negative (the reader does not check this, and the tools index
   tensors by these numbers).
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from tfqnet.errors import InvalidModelFileError
from tfqnet.export.flatbuffer import FlatbufferModel

#: Largest model file the micro tools accept. Why 64 MiB: it is several times the
#: flash of the largest Cortex-M parts (a few MiB internal, 8-32 MiB external QSPI);
#: a larger file is not a model for a board, and reading it whole would be slow.
MAX_MODEL_BYTES = 64 * 1024 * 1024
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
    """Raises InvalidModelFileError when the graph refers to tensors it does not have."""
    count = len(graph.tensors)

    def bad(index: int, optional: bool) -> bool:
        return not (0 <= index < count or (optional and index == -1))

    for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
        if not indices:
            raise InvalidModelFileError(f"corrupt TFLite flatbuffer: the graph has no {kind}s")
        if any(bad(i, optional=False) for i in indices):
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: a graph {kind} names tensor "
                f"{next(i for i in indices if bad(i, False))} of {count}")
    for op in graph.operators:
        for index in (*op.inputs, *op.outputs):
            if bad(index, optional=True):
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: operator {op.index} ({op.name}) uses "
                    f"tensor {index}, but the graph has {count} tensors")
        if not op.outputs:
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: operator {op.index} ({op.name}) has no output")
    for tensor in graph.tensors:
        if any(d < 0 for d in tensor.shape):
            raise InvalidModelFileError(
                f"corrupt TFLite flatbuffer: tensor {tensor.index} has shape {tensor.shape}")


__all__ = ["MAX_MODEL_BYTES", "check_graph", "parse_model", "read_model_file"]
