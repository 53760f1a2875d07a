"""The reference kernel checker: does this flatbuffer run on a board as it was trained?

Four checks, each answering a question TFLM's own tools leave open:

1. Resolution: every op (with its version) and tensor type has a TFLM reference
   kernel. Checked statically (the op table of :mod:`tfqnet.micro.op_resolver`) and
   for real, by loading and invoking the model in the TFLM runtime in a child process
   (the arena probe), so an unsupported op is named with the layer it came from.
2. Layer by layer: every op output of TFLM vs TFLite's reference kernels
   (BUILTIN_REF), in LSB. An op is judged only on samples where its inputs agree in
   both runtimes ("isolated"), so one difference does not flag every op after it.
   FULLY_CONNECTED's +-1 LSB (TFLM rounds twice, TFLite once) is reported as known
   rounding, not as a failure. TFLM's layer-by-layer debugger compares against the
   optimized TFLite kernels and flags that difference everywhere downstream.
3. Against the Keras QAT model (optional): top-1 agreement and max output difference.
4. Resources: flash bytes (aligned model), the arena (measured on this host's TFLM
   runtime, and derived per kernel set for 32-bit Cortex-M: :mod:`tfqnet.micro.
   arena_model`), per-layer weight bits, bytes and MACs (:mod:`tfqnet.micro.resources`).

TensorFlow is imported only for step 3 (loading the Keras model).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from tfqnet.errors import InvalidModelFileError
from tfqnet.export.compact import expand_for_tflite
from tfqnet.export.compression import stored_weight_bytes
from tfqnet.export.flatbuffer import (
    FlatbufferModel,
    Operator,
    element_count,
    flash_breakdown,
    op_layer,
)
from tfqnet.micro.arena import ArenaMeasurement, ArenaProbeError, measure_arena
from tfqnet.micro.arena_model import KERNEL_SETS, board_arenas, unmodelled_ops
from tfqnet.micro.c_arrays import align_flatbuffer
from tfqnet.micro.check_report import CheckReport, LayerResult
from tfqnet.micro.isolated import describe_exit, run_python
from tfqnet.micro.model_file import parse_model
from tfqnet.micro.op_resolver import UnsupportedOpError, resolver_method
from tfqnet.micro.resources import layer_resources
from tfqnet.micro.runtime import MicroInterpreter, random_input_codes
from tfqnet.tflite_format import DECODE_OP

#: Tensor types with no TFLM kernel support (INT2 only as TFLM_DECODE's input).
UNSUPPORTED_TYPES = frozenset({"FLOAT16", "FLOAT64", "BFLOAT16", "COMPLEX64", "COMPLEX128",
                               "STRING", "UINT16", "UINT32", "UINT64", "INT2"})
#: Ops whose TFLM reference kernel is known to differ from TFLite's by this many LSB.
KNOWN_ROUNDING_LSB = {"FULLY_CONNECTED": 1}
DEFAULT_SAMPLES = 64
DEFAULT_MIN_AGREEMENT = 0.95

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------- 1


def _static_resolution(graph: FlatbufferModel) -> list[str]:
    errors = []
    decode_inputs = {i for op in graph.operators if op.name == DECODE_OP for i in op.inputs}
    for op in graph.operators:
        where = _where(graph, op)
        try:
            resolver_method(op.name)
        except UnsupportedOpError:
            errors.append(f"{where}: TFLite Micro has no kernel for {op.name} v{op.version}")
            continue
        for index in (*op.inputs, *op.outputs):
            if index < 0:
                continue
            tensor = graph.tensors[index]
            if tensor.type in UNSUPPORTED_TYPES and not (
                tensor.type == "INT2" and index in decode_inputs
            ):
                errors.append(f"{where}: tensor {index} has type {tensor.type}, which no TFLM "
                              f"{op.name} kernel takes")
    return errors


def _where(graph: FlatbufferModel, op: Operator) -> str:
    return f"op {op.index} {op.name} (layer '{op_layer(graph, op)}')"


def _runtime_error(graph: FlatbufferModel, error: ArenaProbeError) -> str:
    text = str(error)
    match = re.search(r"Node (\S+) \(number (\d+)\) failed", text)
    if match and int(match.group(2)) < len(graph.operators):
        op = graph.operators[int(match.group(2))]
        return f"{_where(graph, op)} v{op.version}: TFLM refuses it in Prepare: {text}"
    match = re.search(r"Didn't find op for builtin opcode '([^']+)'", text)
    if match:
        ops = [op for op in graph.operators if op.name == match.group(1)]
        if ops:
            return f"{_where(graph, ops[0])}: TFLM has no registered kernel: {text}"
    return text


# ---------------------------------------------------------------------------- 2


def _sample_inputs(graph: FlatbufferModel, micro, data, count: int) -> list[np.ndarray]:
    """One array of codes (N, ...) per input: the user's data, or seeded random codes."""
    if data is not None:
        arrays = list(data) if isinstance(data, list | tuple) else [data]
        return [micro._prepare(np.asarray(a)[:count], d)
                for a, d in zip(arrays, micro.inputs, strict=True)]
    return random_input_codes(micro.inputs, count)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        a, b = a.reshape(-1), b.reshape(-1)
        if a.shape != b.shape:
            return float("inf")
    if np.issubdtype(a.dtype, np.floating):
        return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
    return float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)), initial=0))


def _tolerance(op: str, dtype: np.dtype, reference: np.ndarray) -> float:
    if np.issubdtype(dtype, np.floating):
        return 1e-5 * max(1.0, float(np.max(np.abs(reference), initial=0.0)))
    return 0.0


# Loads the models as _layer_by_layer does (TFLite BUILTIN_REF and TFLM keeping every
# tensor) and invokes both once on zeros; prints "ok" when neither crashed.
_LAYER_PROBE = r"""
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite_micro import runtime as tflm

model = open(sys.argv[1], "rb").read()
arena = int(sys.argv[2])
lite_model = open(sys.argv[3], "rb").read()
try:
    lite = Interpreter(model_content=lite_model,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                       experimental_preserve_all_tensors=True)
    lite.allocate_tensors()
    for d in lite.get_input_details():
        lite.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    lite.invoke()
except Exception:
    pass  # a refusal (not a crash) is reported by _layer_by_layer itself
micro = tflm.Interpreter.from_bytes(model, arena_size=arena,
                                    intrepreter_config=tflm.InterpreterConfig.kPreserveAllTensors)
micro.invoke()
print("ok", flush=True)
"""


def _layer_arena(graph: FlatbufferModel, arena: int) -> int:
    # preserve-all-tensors keeps every activation alive: size the arena for all of them
    activations = sum(element_count(t.shape) * 4 for t in graph.tensors if not t.is_constant)
    return arena * 2 + activations + 64 * 1024


def _native_crash(model: bytes, lite_model: bytes, arena: int) -> str | None:
    """Why TFLM on ``model`` or TFLite on ``lite_model`` crash (in a child), or None."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tfqnet-check-") as tmp:
        paths = [os.path.join(tmp, name) for name in ("model.tflite", "lite.tflite")]
        for path, data in zip(paths, (model, lite_model), strict=True):
            with open(path, "wb") as handle:
                handle.write(data)
        result = run_python(_LAYER_PROBE, [paths[0], str(_layer_arena(parse_model(model), arena)),
                                           paths[1]], timeout=120.0)
    if result.crashed or result.returncode is None:
        return f"TFLite's or TFLM's interpreter {describe_exit(result)} on this model"
    return None


def _layer_by_layer(graph: FlatbufferModel, model: bytes, lite_model: bytes,
                    inputs: list[np.ndarray], arena: int, report: CheckReport,
                    progress: Progress) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tflite_micro import runtime as tflm

    try:
        lite = Interpreter(model_content=lite_model,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                           experimental_preserve_all_tensors=True)
        lite.allocate_tensors()
    except Exception as error:  # e.g. no BUILTIN_REF DEPTHWISE_CONV_2D v7 (int4)
        report.layer_check = _lite_refuses(error)
        return
    _check_computed_shapes(graph, lite)
    micro = tflm.Interpreter.from_bytes(
        model, arena_size=_layer_arena(graph, arena),
        intrepreter_config=tflm.InterpreterConfig.kPreserveAllTensors)
    lite_inputs = [d["index"] for d in lite.get_input_details()]
    results = [LayerResult(op.index, op.name, op.version, op_layer(graph, op), op.outputs[0],
                           graph.tensors[op.outputs[0]].type) for op in graph.operators]
    count = inputs[0].shape[0]
    top1 = []
    for n in range(count):
        if n % 16 == 0:
            progress(f"layer by layer: sample {n + 1}/{count}")
        for k, array in enumerate(inputs):
            micro.set_input(array[n : n + 1], k)
            lite.set_tensor(lite_inputs[k], array[n : n + 1])
        micro.invoke()
        try:
            lite.invoke()
        except RuntimeError as error:  # e.g. a RESHAPE whose shape input does not fit
            report.layer_check = _lite_refuses(error)
            return
        agree: dict[int, bool] = {i: True for i in graph.inputs}
        for op, result in zip(graph.operators, results, strict=True):
            isolated = all(agree.get(i, True) for i in op.inputs
                           if i >= 0 and not graph.tensors[i].is_constant)
            worst = 0.0
            worst_tol = 0.0
            for out in op.outputs:
                got = micro.GetTensor(out, 0)
                mine = np.asarray(got["tensor_data"]).reshape(got["shape"])
                ref = lite.get_tensor(out)
                d = _diff(mine, ref)
                tol = _tolerance(op.name, ref.dtype, ref)
                agree[out] = d <= tol
                worst, worst_tol = max(worst, d), max(worst_tol, tol)
            result.max_diff = max(result.max_diff or 0.0, worst)
            if isolated:
                result.isolated_samples += 1
                result.isolated_max_diff = max(result.isolated_max_diff or 0.0, worst)
        for out in graph.outputs:
            got = micro.GetTensor(out, 0)
            mine = np.asarray(got["tensor_data"]).reshape(got["shape"])
            ref = lite.get_tensor(out)
            if mine.ndim == 2 and mine.shape[-1] > 1:
                top1.append(bool(mine.argmax(-1)[0] == ref.argmax(-1)[0]))
    for op, result in zip(graph.operators, results, strict=True):
        known = KNOWN_ROUNDING_LSB.get(op.name, 0)
        is_float = result.type.startswith("FLOAT")
        if result.isolated_max_diff is None:
            result.status = "propagated" if result.max_diff else "exact"
        elif result.isolated_max_diff == 0 or (is_float and result.isolated_max_diff < 1e-4):
            result.status = "propagated" if result.max_diff else "exact"
        elif not is_float and result.isolated_max_diff <= known:
            result.status = f"known rounding (+-{known} LSB)"
        else:
            result.status = "FAIL"
    report.layers = results
    report.samples = count
    report.output_top1_tflm_vs_tflite = float(np.mean(top1)) if top1 else None
    report.layer_check = "failed" if any(r.status == "FAIL" for r in results) else "passed"


def _lite_refuses(error: Exception) -> str:
    return ("skipped: TFLite's reference kernels cannot run this model "
            f"({str(error).strip().splitlines()[0][:200]})")


def _check_computed_shapes(graph: FlatbufferModel, lite) -> None:
    """Raises InvalidModelFileError where TFLite, which computes each op output's shape
    from its inputs when it allocates, gets another shape than the flatbuffer declares
    and TFLM takes as it is (e.g. a graph input shortened to 1x8 pixels, after which
    TFLite's outputs hold no sample at all): the file is corrupt, and the two runtimes'
    tensors could not be compared."""
    computed = {d["index"]: tuple(int(n) for n in d["shape"]) for d in lite.get_tensor_details()}
    for op in graph.operators:
        for out in op.outputs:
            declared = tuple(graph.tensors[out].shape)
            if computed.get(out, declared) != declared:
                raise InvalidModelFileError(
                    f"corrupt TFLite flatbuffer: operator {op.index} ({op.name}) computes an "
                    f"output of shape {computed[out]} from its inputs, but its output tensor "
                    f"{out} is declared {declared}")


# ---------------------------------------------------------------------------- 3


def load_keras_model(path: str):
    """Loads a tfqnet QAT model (.keras / .h5 / SavedModel) with tf-keras.

    TensorFlow is imported here, not at module import. tfqnet's registered classes are
    also offered under their bare names, which older saves use.
    """
    import tfqnet  # lazy: loads TensorFlow, which the other checks do without
    from tfqnet._keras import keras  # lazy: as above

    bare = {key.split(">")[-1]: cls for key, cls in keras.utils.get_custom_objects().items()
            if key.startswith("tfqnet>")}
    with tfqnet.quantize_scope(), keras.utils.custom_object_scope(bare):
        return keras.models.load_model(path, compile=False)


def _compare_keras(keras_model, micro, inputs: list[np.ndarray], raw_data,
                   min_agreement: float) -> dict:
    # The Keras model takes real values: the user's floats as they are, and codes (the
    # user's integer data, or the generated ones) as the values they stand for.
    arrays = [None] * len(inputs) if raw_data is None else (
        list(raw_data) if isinstance(raw_data, list | tuple) else [raw_data])
    floats = [np.asarray(a)[: codes.shape[0]].astype(np.float32)
              if a is not None and np.issubdtype(np.asarray(a).dtype, np.floating)
              else d.dequantize(codes)
              for a, d, codes in zip(arrays, micro.inputs, inputs, strict=True)]
    expected = keras_model.predict(floats if len(floats) > 1 else floats[0], verbose=0)
    got = micro.predict(inputs, raw=True)
    expected_list = expected if isinstance(expected, list) else [expected]
    got_list = got if isinstance(got, list) else [got]
    if len(expected_list) != len(got_list):
        return {"passed": False, "reason": f"the Keras model has {len(expected_list)} "
                f"output(s), the flatbuffer {len(got_list)}"}
    worst, agreements = 0.0, []
    for details, want, have in zip(micro.outputs, expected_list, got_list, strict=True):
        want = np.asarray(want)
        if want.shape != have.shape:
            return {"passed": False, "reason": f"output shape {want.shape} (Keras) vs "
                    f"{have.shape} (flatbuffer)"}
        if details.is_quantized:
            worst = max(worst, _diff(details.quantize(want).astype(np.int64),
                                     have.astype(np.int64)))
        else:
            worst = max(worst, _diff(want.astype(np.float32), have.astype(np.float32)))
        if want.ndim == 2 and want.shape[-1] > 1:
            agreements.append(float(np.mean(want.argmax(-1) == have.argmax(-1))))
    agreement = min(agreements) if agreements else None
    result = {"top1_agreement": agreement, "max_output_diff_lsb": worst,
              "samples": int(inputs[0].shape[0]), "min_agreement": min_agreement}
    if agreement is not None and agreement < min_agreement:
        result.update(passed=False, reason=f"top-1 agreement {agreement:.3f} is below "
                      f"{min_agreement:.3f}")
    else:
        result["passed"] = True
    return result


# ----------------------------------------------------------------------- driver


def check_model(model: bytes, data=None, keras_model=None, samples: int = DEFAULT_SAMPLES,
                min_agreement: float = DEFAULT_MIN_AGREEMENT,
                progress: Progress | None = None) -> CheckReport:
    """Runs the four checks on a flatbuffer; ``report.passed`` says whether all passed.

    ``data``: samples for the model input, shape (N, ...): floats are real values
    (quantized with the input's scale and zero point for TFLM, given to the Keras model
    as they are), integers the input's codes (given to TFLM as they are, to the Keras
    model dequantized; out of the input type's range, ValueError); seeded random codes
    when None. ``keras_model``: a QAT model or a path to one.
    Raises InvalidModelFileError when ``model`` is not a TFLite flatbuffer (checked in
    pure Python first, then by the aligner in a child process, and before the layer by
    layer comparison against the op output shapes TFLite computes). The native steps that
    can crash on a corrupt model (aligner, TFLM, TFLite) run in child processes first,
    so a crash becomes a failure in the report, never a crash of this process.
    """
    if not 0.0 <= min_agreement <= 1.0:  # NaN too: it would pass every comparison
        raise ValueError(f"min_agreement must be a fraction from 0 to 1, got {min_agreement!r}")
    progress = progress or (lambda message: None)
    graph = parse_model(model)
    aligned = align_flatbuffer(model)  # in a child process: the aligner trusts its input
    report = CheckReport(model_bytes=len(model), flash_bytes=len(aligned))
    report.resources = layer_resources(graph)
    report.total_macs = sum(r["macs"] for r in report.resources)
    report.weight_bytes = stored_weight_bytes(model)
    report.flash = flash_breakdown(graph)
    report.arena_kernels = {k: e.minimum for k, e in board_arenas(graph).items()}
    # reference first, as check lists them; MVE needs naming only when it alone is
    # missing (it is derived whenever plain CMSIS-NN is, from the same ops)
    missing = [f"{k.key} ({', '.join(unmodelled_ops(graph, k.key))})"
               for k in reversed(KERNEL_SETS) if k.key not in report.arena_kernels
               and not (k.key == "cmsis_nn_mve" and "cmsis_nn" not in report.arena_kernels)]
    if missing:
        report.arena_not_derived = ("not derived for " + "; ".join(missing) + ": "
                                    "ops whose kernel allocations tfqnet does not model")

    progress("resolution: static op and type table")
    report.resolution_errors = _static_resolution(graph)
    progress("resolution and arena: probing the TFLM runtime (child process)")
    arena: ArenaMeasurement | None = None
    try:
        arena = measure_arena(aligned)
        report.arena_minimum, report.arena_reported = arena.minimum, arena.reported
    except ArenaProbeError as error:
        message = _runtime_error(graph, error)
        if not any(message.startswith(e.split(":")[0]) for e in report.resolution_errors):
            report.resolution_errors.append(message)
        else:
            report.resolution_errors.append("TFLM runtime: " + message)
    if report.resolution_errors or arena is None:
        report.layer_check = "skipped: the model does not load in TFLM"
        if keras_model is not None:
            report.keras = {"passed": False, "reason": "not compared: the model does not "
                            "load in TFLM"}
        return report

    micro = MicroInterpreter(aligned, arena_size=arena.reported + 64 * 1024)
    count = samples if data is None else min(samples, len(_first(data)))
    inputs = _sample_inputs(graph, micro, data, count)
    if DECODE_OP in graph.op_names:
        report.layer_check = ("skipped: compressed model (TFLM_DECODE), which TFLite's "
                              "interpreter cannot run")
    else:
        # a compacted model's short zero-point arrays are restored for TFLite only
        lite_model = expand_for_tflite(aligned)
        crash = _native_crash(aligned, lite_model, arena.minimum)
        if crash:
            report.layer_check = f"failed: {crash}"
        else:
            _layer_by_layer(graph, aligned, lite_model, inputs, arena.minimum, report, progress)

    if keras_model is not None:
        progress("Keras QAT model: loading and comparing")
        if isinstance(keras_model, str):
            keras_model = load_keras_model(keras_model)
        report.keras = _compare_keras(keras_model, micro, inputs, data, min_agreement)
    return report


def _first(data):
    return data[0] if isinstance(data, list | tuple) else data
