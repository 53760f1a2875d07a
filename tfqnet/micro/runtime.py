"""Running a flatbuffer on TFLite Micro's reference kernels (the TFLM Python runtime).

The TFLM runtime executes the same reference kernels a Cortex-M board runs without
optimized kernels, so it is tfqnet's golden oracle for "what the board computes".
It runs batch 1; :class:`MicroInterpreter` loops over a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tflite_micro import runtime as _tflm

from tfqnet.errors import MicroRuntimeError
from tfqnet.export.flatbuffer import Tensor
from tfqnet.micro.model_file import parse_model
from tfqnet.tflite_format import NUMPY_DTYPES

#: Arena used when none is given: generous, because too small an arena can crash the
#: process inside the runtime (measure the real minimum with tfqnet's arena probe).
DEFAULT_ARENA_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class TensorDetails:
    dtype: type
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def is_quantized(self) -> bool:
        return self.scale != 0.0

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float values -> this tensor's integer codes (round half away, saturate)."""
        if not self.is_quantized:
            return np.asarray(x, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        # as TFLite's QUANTIZE: float32 division, std::round (half away from zero)
        ratio = (np.asarray(x, np.float32) / np.float32(self.scale)).astype(np.float64)
        codes = np.sign(ratio) * np.floor(np.abs(ratio) + 0.5) + self.zero_point
        return np.clip(codes, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.is_quantized:
            return np.asarray(q, np.float32)
        return ((q.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)

    def values(self, x, what: str = "the input") -> np.ndarray:
        """``x`` as this tensor holds it, one meaning per dtype of ``x``:

        - floats are real values: quantized with the scale and zero point (rounded half
          away from zero, saturated) for a quantized tensor; for an integer tensor
          without quantization they must be whole numbers in its type's range;
        - integers are the tensor's codes themselves, passed unchanged, and must lie in
          its type's range (cast, they would wrap around); for a float tensor, values.

        Anything else raises one-line ValueError naming ``what``."""
        x = np.asarray(x)
        if not np.issubdtype(self.dtype, np.integer):
            return x.astype(self.dtype, copy=False)
        if np.issubdtype(x.dtype, np.floating) and self.is_quantized:
            return self.quantize(x)
        info = np.iinfo(self.dtype)
        if np.issubdtype(x.dtype, np.floating) and x.size and not (
                np.isfinite(x).all() and np.array_equal(x, np.round(x))):
            raise ValueError(f"{what} holds fractional values, but the model input is "
                             f"{info.dtype} without a scale to quantize them with; give "
                             f"its integer codes ({info.min} to {info.max})")
        low, high = (x.min(), x.max()) if x.size else (info.min, info.max)
        if low < info.min or high > info.max:
            how = (f"or float values, which are quantized with its scale {self.scale:g} and "
                   f"zero point {self.zero_point}" if self.is_quantized else
                   "as it takes them")
            raise ValueError(f"{what} holds integer codes from {low:g} to {high:g}, outside "
                             f"the model input's {info.dtype} range {info.min} to "
                             f"{info.max}; give codes in that range, {how}")
        return x.astype(self.dtype)


def tensor_details(tensor: Tensor) -> TensorDetails | None:
    """The details of a flatbuffer tensor as the runtime reports them (first scale and
    zero point), known before loading the model; None for a type numpy has no dtype for."""
    dtype = NUMPY_DTYPES.get(tensor.type)
    if dtype is None:
        return None
    return TensorDetails(dtype.type, tuple(tensor.shape),
                         float(tensor.scales[0]) if tensor.scales else 0.0,
                         int(tensor.zero_points[0]) if tensor.zero_points else 0)


def _details(raw: dict) -> TensorDetails:
    params = raw.get("quantization_parameters") or {}
    scales = params.get("scales")
    zero_points = params.get("zero_points")
    return TensorDetails(
        dtype=np.dtype(raw["dtype"]).type,
        shape=tuple(int(d) for d in raw["shape"]),
        scale=float(scales[0]) if scales is not None and len(scales) else 0.0,
        zero_point=int(zero_points[0]) if zero_points is not None and len(zero_points) else 0,
    )


class MicroInterpreter:
    """A flatbuffer loaded into the TFLM runtime.

    ``predict(x)`` takes a batch per model input. Float arrays are real values,
    quantized with the input tensor's scale and zero point; integer arrays are the input
    tensor's codes, passed as they are, and codes outside its type's range raise
    ValueError (:meth:`TensorDetails.values`). Outputs are dequantized to float unless
    ``raw=True``.

    The runtime trusts the flatbuffer (one wrong tensor index in it crashes the whole
    process), so the model is first checked in pure Python with the checks of
    ``tfqnet check`` (:func:`tfqnet.micro.model_file.parse_model`); a corrupt model
    raises :class:`~tfqnet.errors.InvalidModelFileError` saying what is wrong.
    """

    def __init__(self, model: bytes, arena_size: int | None = None):
        self.model = bytes(model)
        graph = parse_model(self.model)  # before any native code sees the bytes
        arena = arena_size or max(DEFAULT_ARENA_BYTES, 10 * len(self.model))
        try:
            self._interpreter = _tflm.Interpreter.from_bytes(self.model, arena_size=arena)
        except RuntimeError as error:
            raise MicroRuntimeError(
                f"the TFLM runtime could not load the model ({error}): an op or type it "
                "has no kernel for, or too small an arena; `tfqnet check MODEL.tflite` "
                "says which") from error
        self.inputs = [_details(self._interpreter.get_input_details(i))
                       for i in range(len(graph.inputs))]
        self.outputs = [_details(self._interpreter.get_output_details(i))
                        for i in range(len(graph.outputs))]

    def _prepare(self, x, details: TensorDetails) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[1:] != details.shape[1:]:
            raise ValueError(f"input batch has shape {x.shape}; the model takes {details.shape}")
        return details.values(x, "the input batch")

    def invoke_one(self, sample: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs one batch-1 sample (already the input dtype); returns raw outputs."""
        for index, value in enumerate(sample):
            self._interpreter.set_input(value, index)
        try:
            self._interpreter.invoke()
        except RuntimeError as error:
            raise MicroRuntimeError(f"the TFLM runtime failed to run the model ({error}); "
                                    "`tfqnet check MODEL.tflite` says where") from error
        return [np.array(self._interpreter.get_output(i)) for i in range(len(self.outputs))]

    def predict(self, x, raw: bool = False):
        batches = list(x) if isinstance(x, list | tuple) else [x]
        if len(batches) != len(self.inputs):
            raise ValueError(f"the model has {len(self.inputs)} input(s), got {len(batches)}")
        batches = [self._prepare(b, d) for b, d in zip(batches, self.inputs, strict=True)]
        results: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for i in range(batches[0].shape[0]):
            outputs = self.invoke_one([b[i : i + 1] for b in batches])
            for store, value in zip(results, outputs, strict=True):
                store.append(value.reshape(value.shape[1:]) if value.shape[:1] == (1,) else value)
        stacked = [np.stack(r) for r in results]
        if not raw:
            stacked = [d.dequantize(s) for d, s in zip(self.outputs, stacked, strict=True)]
        return stacked[0] if len(stacked) == 1 else stacked


def run_tflm(model: bytes, x, raw: bool = False, arena_size: int | None = None):
    """One-shot: load ``model`` into the TFLM runtime and predict on the batch ``x``.

    Raises InvalidModelFileError for a corrupt model (see :class:`MicroInterpreter`)."""
    return MicroInterpreter(model, arena_size).predict(x, raw=raw)


def random_input_codes(inputs: Sequence[TensorDetails], count: int,
                       seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs, one ``(count, ...)`` array per model input, drawn in order
    from one generator: integer inputs uniform over their dtype's whole range, float
    inputs standard normal. The checker's samples and export-c's golden vectors."""
    rng = np.random.default_rng(seed)
    arrays = []
    for details in inputs:
        shape = (count, *details.shape[1:])
        if np.issubdtype(details.dtype, np.integer):
            info = np.iinfo(details.dtype)
            arrays.append(rng.integers(info.min, info.max + 1, shape).astype(details.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(details.dtype))
    return arrays
