"""Reading TFLite flatbuffers: operators, tensor types and weight bytes.

Uses the schema bindings shipped with tflite-micro, so tools that only inspect a
model do not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tfqnet import tflite_format
from tfqnet.errors import InvalidModelFileError

TENSOR_TYPES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
BUILTIN_OPS = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    type: str
    shape: tuple[int, ...]
    buffer_bytes: int  # bytes of constant data (0 for activations)
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0

    @property
    def is_constant(self) -> bool:
        return self.buffer_bytes > 0


@dataclass(frozen=True)
class Operator:
    index: int
    name: str  # builtin name, or the custom code
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass
class FlatbufferModel:
    """A parsed flatbuffer (first subgraph: TFLM models have one)."""

    data: bytes
    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    metadata_names: tuple[str, ...] = ()
    buffers: list[bytes | None] = field(default_factory=list, repr=False)
    tensor_buffers: list[int] = field(default_factory=list, repr=False)
    #: the whole unpacked model (schema.ModelT, every subgraph), for validation
    #: (tfqnet.micro.model_file.check_graph); None when built by hand
    schema_model: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> FlatbufferModel:
        data = bytes(data)
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise InvalidModelFileError(
                "not a TFLite flatbuffer (missing the 'TFL3' identifier)"
            )
        try:
            model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
            if not model.subgraphs:
                raise InvalidModelFileError("corrupt TFLite flatbuffer: the model has no "
                                            "subgraph")
            graph = model.subgraphs[0]
            codes = model.operatorCodes or []
            buffers = model.buffers or []
            tensors = []
            for i, t in enumerate(graph.tensors or []):
                buf = buffers[t.buffer] if t.buffer < len(buffers) else None
                nbytes = 0
                if buf is not None:
                    if buf.data is not None:
                        nbytes = len(buf.data)
                    elif buf.size:
                        nbytes = int(buf.size)
                q = t.quantization
                tensors.append(
                    Tensor(
                        index=i,
                        name=(t.name or b"").decode("utf-8", "replace"),
                        type=TENSOR_TYPES.get(t.type, str(t.type)),
                        shape=tuple(int(d) for d in (t.shape if t.shape is not None else [])),
                        buffer_bytes=nbytes,
                        scales=tuple(float(s) for s in (q.scale if q is not None and
                                                         q.scale is not None else [])),
                        zero_points=tuple(int(z) for z in (q.zeroPoint if q is not None and
                                                            q.zeroPoint is not None else [])),
                        quantized_dimension=int(q.quantizedDimension) if q is not None else 0,
                    )
                )
            operators = []
            for i, op in enumerate(graph.operators or []):
                if op.opcodeIndex >= len(codes):
                    raise InvalidModelFileError(
                        f"corrupt TFLite flatbuffer: operator {i} uses operator code "
                        f"{op.opcodeIndex}, but the model has {len(codes)}")
                code = codes[op.opcodeIndex]
                builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
                name = BUILTIN_OPS.get(builtin, str(builtin))
                if name == "CUSTOM":
                    name = (code.customCode or b"CUSTOM").decode("utf-8", "replace")
                operators.append(
                    Operator(
                        index=i,
                        name=name,
                        version=int(code.version),
                        inputs=tuple(int(x) for x in (op.inputs if op.inputs is not None
                                                      else [])),
                        outputs=tuple(int(x) for x in (op.outputs if op.outputs is not None
                                                       else [])),
                    )
                )
            buffer_data = [
                None if b.data is None else np.asarray(b.data, np.uint8).tobytes()
                for b in buffers
            ]
            tensor_buffers = [int(t.buffer) for t in graph.tensors or []]
            metadata = tuple(
                (m.name or b"").decode("utf-8", "replace") for m in (model.metadata or [])
            )
        except InvalidModelFileError:
            raise
        except Exception as error:  # a corrupt buffer fails anywhere inside the bindings
            raise InvalidModelFileError(f"corrupt TFLite flatbuffer ({error})") from None
        return cls(
            data=data,
            tensors=tensors,
            operators=operators,
            inputs=tuple(int(x) for x in (graph.inputs if graph.inputs is not None else [])),
            outputs=tuple(int(x) for x in (graph.outputs if graph.outputs is not None else [])),
            metadata_names=metadata,
            buffers=buffer_data,
            tensor_buffers=tensor_buffers,
            schema_model=model,
        )

    @cached_property
    def op_names(self) -> list[str]:
        """Distinct operator names, in order of first use."""
        return list(dict.fromkeys(op.name for op in self.operators))

    def weight_tensors(self) -> list[Tensor]:
        """Constant tensors that operators read as filters/kernels (input 1)."""
        indices = {
            op.inputs[1]
            for op in self.operators
            if op.name in tflite_format.WEIGHTED_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0
        }
        return [t for t in self.tensors if t.index in indices and t.is_constant]

    def constant_values(self, tensor: Tensor) -> np.ndarray:
        """The stored integer codes of a constant tensor, unpacked (INT4: low nibble
        first, sign-extended), in the tensor's shape."""
        data = self.buffers[self.tensor_buffers[tensor.index]]
        if data is None:
            raise ValueError(f"tensor {tensor.name!r} has no constant data")
        count = element_count(tensor.shape)
        if tensor.type == "INT4":
            values = tflite_format.unpack_int4(data, count)
        else:
            values = np.frombuffer(data, tflite_format.NUMPY_DTYPES[tensor.type])[:count]
        return values.reshape(tensor.shape)

    def weight_bytes(self) -> int:
        return sum(t.buffer_bytes for t in self.weight_tensors())

    def float_tensors(self) -> list[Tensor]:
        """Tensors used by operators that hold floating-point data."""
        used = {i for op in self.operators for i in (*op.inputs, *op.outputs) if i >= 0}
        return [t for t in self.tensors if t.index in used and t.type.startswith("FLOAT")]


#: the parts :func:`flash_breakdown` splits a flatbuffer into, in report order
FLASH_PARTS = ("weights", "biases", "quantization", "names", "structure", "other data")


def flash_breakdown(model: FlatbufferModel | bytes) -> dict[str, int]:
    """Bytes of a flatbuffer by what they hold (``FLASH_PARTS``), summing to its size.

    ``weights``: constant data of filters (input 1 of a weighted op, or a
    ``TFLM_DECODE`` op's indices and value tables); ``biases``: input 2 of a weighted
    op; ``quantization``: the scale (4 bytes) and zero-point (8 bytes) arrays;
    ``names``: tensor name strings; ``other data``: every other buffer (shape operands,
    metadata); ``structure``: the rest (tables, offsets, shapes, options, padding).
    """
    graph = model if isinstance(model, FlatbufferModel) else FlatbufferModel.from_bytes(model)
    weights, biases = set(), set()
    for op in graph.operators:
        if op.name == tflite_format.DECODE_OP:
            weights.update(i for i in op.inputs if i >= 0)
        elif op.name in tflite_format.WEIGHTED_OPS:
            weights.update(i for i in op.inputs[1:2] if i >= 0)
            biases.update(i for i in op.inputs[2:3] if i >= 0)

    def data_bytes(tensors: set[int]) -> int:
        buffers = {graph.tensor_buffers[i] for i in tensors if graph.tensors[i].is_constant}
        return sum(len(graph.buffers[b] or b"") for b in buffers)

    parts = dict.fromkeys(FLASH_PARTS, 0)
    parts["weights"] = data_bytes(weights)
    parts["biases"] = data_bytes(biases - weights)
    parts["quantization"] = sum(4 * len(t.scales) + 8 * len(t.zero_points) for t in graph.tensors)
    parts["names"] = sum(len(t.name.encode()) for t in graph.tensors)
    parts["other data"] = sum(len(b or b"") for b in graph.buffers) - sum(
        len(graph.buffers[b] or b"")
        for b in {graph.tensor_buffers[i] for i in weights | biases
                  if graph.tensors[i].is_constant})
    parts["structure"] = len(graph.data) - sum(parts.values())
    return parts


def element_count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def packed_bytes(tensor: Tensor) -> int:
    """Bytes a tensor's elements need at its type's width (INT4: two a byte)."""
    bits = tflite_format.ELEMENT_BITS.get(tensor.type, 8)
    return tflite_format.packed_bytes(element_count(tensor.shape), bits)


def layer_name(tensor_name: str) -> str:
    """The Keras layer an op came from, from its output tensor's name.

    ``digits_cnn/quant_conv1/Relu;digits_cnn/...`` -> ``quant_conv1``.
    """
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def op_layer(graph: FlatbufferModel, op: Operator) -> str:
    """The layer name of an op: from its output tensor, else from a constant input
    (the model's last op often outputs 'StatefulPartitionedCall:0')."""
    names = [graph.tensors[i].name for i in op.outputs if i >= 0]
    names += [graph.tensors[i].name for i in op.inputs if i >= 0 and graph.tensors[i].is_constant]
    names = [name for name in names if name]  # a compacted model names outputs only
    for name in names:
        if "/" in name.split(";")[0]:
            return layer_name(name)
    return layer_name(names[0]) if names else f"op{op.index}"
