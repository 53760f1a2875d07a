"""Fuzzing `check` and `export-c` with mutated flatbuffers of a real model.

Mutations of the session's digits model (bit flips, truncations, splices, overwritten
header bytes) must end in success or a clean failure: InvalidModelFileError /
UnsupportedOpError in-process, and for the command line a non-zero exit with one
`tfqnet: error:` line and no traceback. Never a crash of the test process, which the
child-process sandbox of the native steps (aligner, TFLM, TFLite) guarantees.

The public Python API (``run_tflm`` / ``MicroInterpreter``) hands the bytes to the
TFLM runtime in this process, so it must reject every model the runtime would crash
on before the runtime sees it: mutants go through it in child processes, and not one
child may die of a signal.

Bounded: the pure-Python stages take many examples (milliseconds each); the native
stages, which start child processes, a few. Derandomized, so CI sees the same cases.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tests.micro_helpers import digits_qat_and_tflite, digits_uncompacted_tflite
from tfqnet.errors import InvalidModelFileError
from tfqnet.micro import checker
from tfqnet.micro.c_arrays import align_flatbuffer, model_data_files
from tfqnet.micro.checker import check_model
from tfqnet.micro.model_file import MAX_TENSOR_ELEMENTS, parse_model
from tfqnet.micro.op_resolver import UnsupportedOpError, op_resolver_header

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ERRORS = (InvalidModelFileError, UnsupportedOpError)
#: the part of the file that holds the tables (the rest is mostly weight bytes)
HEADER_SPAN = 2048


@pytest.fixture(scope="module")
def tflite(float_digits_model, digits) -> bytes:
    return digits_qat_and_tflite(float_digits_model, digits)[1]


@pytest.fixture(scope="module")
def plain_tflite(float_digits_model, digits) -> bytes:
    """As converted, before compaction: it still has signature defs."""
    return digits_uncompacted_tflite(float_digits_model, digits)


@st.composite
def mutated(draw, data: bytes) -> bytes:
    out = bytearray(data)
    kind = draw(st.sampled_from(["flip", "header", "truncate", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            bit = draw(st.integers(0, len(out) * 8 - 1))
            out[bit // 8] ^= 1 << (bit % 8)
    elif kind == "header":  # where the offsets live: most changes reach the structure
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, HEADER_SPAN - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        out = out[: draw(st.integers(0, len(out) - 1))]
    else:  # copy a run of bytes from one place into another
        start = draw(st.integers(0, len(out) - 1))
        length = draw(st.integers(1, 64))
        at = draw(st.integers(0, len(out) - 1))
        out[at:at] = out[start : start + length]
    return bytes(out)


def string_length_corrupted(data: bytes) -> bytes:
    """The model with one byte changed: the high byte of the length of a signature
    input's name, which then runs ~3 GB past the end of the file. The schema reader
    parses this file (Python slicing clips the string); tflite_micro's C++ aligner
    copies the string and segfaults (found by this fuzzer)."""
    table = schema.Model.GetRootAs(data, 0).SignatureDefs(0).Inputs(0)._tab
    field = table.Pos + table.Offset(4)  # TensorMap.name: offset to the string
    string = field + int.from_bytes(data[field : field + 4], "little")
    out = bytearray(data)
    out[string + 3] = 0xB1  # the length prefix's high byte
    return bytes(out)


def _python_stages(data: bytes) -> str:
    """Everything check/export-c do before native code; 'ok' or the clean error type."""
    try:
        graph = parse_model(data)
        checker._static_resolution(graph)
        checker.layer_resources(graph)
        op_resolver_header(graph, "fuzz")
        model_data_files("fuzz", data, 4096, 4000)
    except CLEAN_ERRORS as error:
        return type(error).__name__
    return "ok"


def test_python_stages_fail_cleanly_on_mutations(tflite):
    outcomes: list[str] = []

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        outcomes.append(_python_stages(data.draw(mutated(tflite))))

    run()
    # Not vacuous: both clean rejections and models that still parse were exercised.
    assert outcomes.count("ok") >= 40
    assert outcomes.count("InvalidModelFileError") >= 40


def test_aligner_crash_is_an_invalid_file_error(plain_tflite):
    bad = string_length_corrupted(plain_tflite)
    assert _python_stages(bad) == "ok"  # the pure-Python reader does not see it
    with pytest.raises(InvalidModelFileError, match=r"aligner crashed \(SIG"):
        align_flatbuffer(bad)
    with pytest.raises(InvalidModelFileError, match="aligner"):
        check_model(bad, samples=2)


def test_check_model_in_process_fails_cleanly_on_mutations(tflite):
    outcomes: list[str] = []

    @settings(max_examples=5, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        model = data.draw(mutated(tflite).filter(lambda m: _python_stages(m) == "ok"))
        try:
            report = check_model(model, samples=2)
        except InvalidModelFileError:
            outcomes.append("invalid")
        else:
            outcomes.append("passed" if report.passed else "failed")
            assert report.format_table()  # the report of a mutated model renders

    run()
    assert len(outcomes) == 5


def _cli(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tfqnet.cli", *args], capture_output=True,
                          text=True, timeout=180, cwd=tmp, env=env, check=False)


def _assert_one_clean_line(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode not in (0, 70) and proc.returncode > 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("tfqnet:")]
    assert len(errors) == 1 and errors[0].startswith("tfqnet: error:"), proc.stderr
    assert "internal error" not in errors[0]


@pytest.mark.parametrize("case", ["aligner_crash", "truncated", "header_bytes"])
def test_cli_subprocess_fails_with_one_line(tflite, plain_tflite, tmp_path, case):
    if case == "aligner_crash":
        data = string_length_corrupted(plain_tflite)
    elif case == "truncated":
        data = tflite[: len(tflite) * 2 // 3]
    else:
        data = bytearray(tflite)
        data[8:24] = bytes(range(200, 216))  # the root table's first fields
        data = bytes(data)
    (tmp_path / "bad.tflite").write_bytes(data)
    _assert_one_clean_line(_cli(["check", "bad.tflite", "--quiet"], tmp_path))
    export = _cli(["export-c", "bad.tflite", "--out", "c", "--name", "bad"], tmp_path)
    _assert_one_clean_line(export)
    assert not (tmp_path / "c").exists()  # nothing written on failure


# ------------------------------------------- the Python API: run_tflm / MicroInterpreter


def _patched(data: bytes, position: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<i", out, position, value)
    return bytes(out)


def _vector_item(table, field: int, item: int) -> int:
    """File position of item ``item`` of the int32 vector in vtable slot ``field``."""
    return table._tab.Vector(table._tab.Offset(field)) + 4 * item


def _op(data: bytes, name: str):
    """(index, schema table) of the first operator called ``name``."""
    graph = parse_model(data)
    index = next(op.index for op in graph.operators if op.name == name)
    return index, schema.Model.GetRootAs(data, 0).Subgraphs(0).Operators(index)


def _tensor(data: bytes, index: int):
    return schema.Model.GetRootAs(data, 0).Subgraphs(0).Tensors(index)


def one_value_changed(data: bytes, case: str) -> tuple[bytes, str]:
    """The model with one stored number changed (as one flipped byte does), each of
    which crashed the TFLM runtime in-process (SIGSEGV/SIGFPE) while the CLI refused
    the file or never looked; and the reason InvalidModelFileError must give."""
    graph = parse_model(data)
    count = len(graph.tensors)
    fc_index, fc = _op(data, "FULLY_CONNECTED")
    conv_index, conv = _op(data, "CONV_2D")
    if case == "operator input past the tensors":  # as the "tensor 135 of 16"
        value = graph.operators[fc_index].inputs[0] | 1 << 30  # Operator.inputs[0]
        return (_patched(data, _vector_item(fc, 6, 0), value),
                f"operator {fc_index} \\(FULLY_CONNECTED\\) uses tensor {value}, but "
                f"the graph has {count} tensors")
    if case == "buffer index past the buffers":  # bit 26 of a Tensor.buffer flipped
        weights = _tensor(data, graph.operators[conv_index].inputs[1])
        position = weights._tab.Pos + weights._tab.Offset(8)
        value = weights.Buffer() | 1 << 26
        return _patched(data, position, value), f"uses buffer {value}, but the model has"
    if case == "output channels of a convolution":  # SIGFPE: zero channel groups
        output = _tensor(data, graph.operators[conv_index].outputs[0])
        position = _vector_item(output, 4, 3)  # Tensor.shape[3]
        channels = output.Shape(3)
        return (_patched(data, position, channels - 4),
                f"operator {conv_index} \\(CONV_2D\\) has tensors of shapes .* do not fit")
    if case == "batch of a fully connected output":  # SIGSEGV: reads 131073 rows
        last = [op for op in graph.operators if op.name == "FULLY_CONNECTED"][-1]
        output = _tensor(data, last.outputs[0])
        return (_patched(data, _vector_item(output, 4, 0), 1 | 1 << 17),
                f"operator {last.index} \\(FULLY_CONNECTED\\) has tensors of shapes")
    raise ValueError(case)


_API_CHILD = r"""
import sys
import numpy as np
import tfqnet
model = open(sys.argv[1], "rb").read()
x = np.zeros((2, 8, 8, 1), np.float32)
for run in (lambda: tfqnet.run_tflm(model, x), lambda: tfqnet.MicroInterpreter(model)):
    try:
        run()
    except tfqnet.InvalidModelFileError as error:
        print("InvalidModelFileError:", error, flush=True)
    else:
        print("accepted", flush=True)
"""


def _child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")


@pytest.mark.parametrize("case", ["operator input past the tensors",
                                  "buffer index past the buffers",
                                  "output channels of a convolution",
                                  "batch of a fully connected output"])
def test_run_tflm_refuses_a_model_that_crashed_the_runtime(tflite, tmp_path, case):
    """In a child process, so that a regression is a failed test, not a dead pytest."""
    data, reason = one_value_changed(tflite, case)
    (tmp_path / "bad.tflite").write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", _API_CHILD, str(tmp_path / "bad.tflite")],
                          capture_output=True, text=True, timeout=120, env=_child_env())
    assert proc.returncode == 0, f"the child died ({proc.returncode}): {proc.stderr[-500:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("InvalidModelFileError:") for ln in lines), (
        proc.stdout + proc.stderr[-500:])
    assert re.search(reason, lines[0]), lines[0]


def _repacked(data: bytes, edit) -> bytes:
    """The model unpacked, changed by ``edit(model, graph)`` and packed again."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    edit(model, parse_model(data))
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _first(graph, name: str):
    return next(op for op in graph.operators if op.name == name)


def _sg(model):
    return model.subgraphs[0]


def _second_subgraph(model, graph):
    copy = schema.SubGraphT.InitFromObj(schema.Model.GetRootAs(graph.data, 0).Subgraphs(0))
    copy.operators[0].inputs = [500, *copy.operators[0].inputs[1:]]
    model.subgraphs.append(copy)


def _signature(tensor_index: int, subgraph_index: int = 0):
    entry, signature = schema.TensorMapT(), schema.SignatureDefT()
    entry.name, entry.tensorIndex = b"x", tensor_index
    signature.inputs, signature.outputs, signature.subgraphIndex = [entry], [], subgraph_index
    return [signature]


def _opcode_of(model, graph, name: str, builtin: str) -> None:
    code = model.operatorCodes[_sg(model).operators[_first(graph, name).index].opcodeIndex]
    code.builtinCode = getattr(schema.BuiltinOperator, builtin)
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)  # an int8: 127 means "see above"


def _set(target, **values) -> None:
    for key, value in values.items():
        setattr(target, key, value)


def _conv_filter(model, graph):
    return _sg(model).tensors[_first(graph, "CONV_2D").inputs[1]]


def _conv_output(model, graph):
    return _sg(model).tensors[_first(graph, "CONV_2D").outputs[0]]


def _reads_its_own_output(model, graph):
    """The second CONV_2D (its input has a multiple of its filter's channels) reads the
    tensor it writes."""
    conv = [op for op in graph.operators if op.name == "CONV_2D"][1]
    op = _sg(model).operators[conv.index]
    op.inputs = [conv.outputs[0], *op.inputs[1:]]


STRUCTURE_CASES = {
    "no subgraph": (lambda m, g: _set(m, subgraphs=[]), "the model has no subgraph"),
    "operator code": (lambda m, g: _set(_sg(m).operators[0], opcodeIndex=40),
                      "operator 0 uses operator code 40, but the model has"),
    "second subgraph": (_second_subgraph, r"subgraph 1: operator 0 \(CONV_2D\) uses tensor 500"),
    "intermediate": (lambda m, g: _set(_sg(m).operators[1], intermediates=[99]),
                     r"operator 1 \(.*\) uses tensor 99"),
    "signature tensor": (lambda m, g: _set(m, signatureDefs=_signature(777)),
                         "signature 0 names tensor 777, but its subgraph has"),
    "signature subgraph": (lambda m, g: _set(m, signatureDefs=_signature(0, 5)),
                           "signature 0 names subgraph 5 of 1"),
    "buffer index": (lambda m, g: _set(_conv_filter(m, g), buffer=259),
                     "uses buffer 259, but the model has"),
    "buffer outside the file": (
        lambda m, g: _set(m.buffers[_conv_filter(m, g).buffer], data=None, offset=10**9,
                          size=4096),
        "lies at bytes 1000000000-1000004096, past the end"),
    "short constant": (
        lambda m, g: _set(m.buffers[_conv_filter(m, g).buffer], data=np.zeros(7, np.uint8)),
        "needs .* bytes of constant data, but its buffer holds 7"),
    "zero points": (lambda m, g: _set(_conv_filter(m, g).quantization, zeroPoint=[0, 0]),
                    r"has \d+ scales but 2 zero points"),
    "channel axis": (lambda m, g: _set(_conv_filter(m, g).quantization, quantizedDimension=2),
                     "per-channel scales along dimension 2"),
    "element count": (lambda m, g: _set(_conv_output(m, g), shape=[1, 8, 8, 2**30]),
                      f"TFLite Micro counts elements in a 32-bit int .at most "
                      f"{MAX_TENSOR_ELEMENTS}"),
    "conv output of rank 0": (  # looped for ever in the runtime
        lambda m, g: _set(_conv_output(m, g), shape=[]), "do not fit together"),
    "read before written": (_reads_its_own_output,
                            r"operator \d \(CONV_2D\) reads tensor \d+ before any operator "
                            "writes it"),
    "constant input": (lambda m, g: _set(_sg(m).tensors[g.inputs[0]],
                                         buffer=_conv_filter(m, g).buffer),
                       "holds constant data, but it is a graph input"),
    "add of int32 and int8": (lambda m, g: _opcode_of(m, g, "RESHAPE", "ADD"),
                              r"\(ADD\) combines INT8 .* and INT32"),
    "var handle options": (lambda m, g: _opcode_of(m, g, "MAX_POOL_2D", "VAR_HANDLE"),
                           r"\(VAR_HANDLE\) has no VarHandleOptions"),
}


@pytest.mark.parametrize("case", list(STRUCTURE_CASES))
def test_parse_model_checks_what_the_runtime_trusts(tflite, case):
    edit, message = STRUCTURE_CASES[case]
    assert parse_model(_repacked(tflite, lambda m, g: None))  # repacking alone is fine
    with pytest.raises(InvalidModelFileError, match=f"corrupt TFLite flatbuffer: .*{message}"):
        parse_model(_repacked(tflite, edit))


@st.composite
def table_flips(draw, data: bytes, span: tuple[int, int]) -> bytes:
    """Bit flips among the subgraph's tables: tensor shapes, buffer and tensor indices."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(*span))
        out[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


def _table_span(data: bytes) -> tuple[int, int]:
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    tables = [graph.Tensors(i)._tab.Pos for i in range(graph.TensorsLength())]
    tables += [graph.Operators(i)._tab.Pos for i in range(graph.OperatorsLength())]
    return min(tables), min(max(tables) + 256, len(data) - 1)


_FUZZ_CHILD = r"""
import sys
import numpy as np
import tfqnet
x = np.zeros((2, 8, 8, 1), np.float32)
for path in sys.argv[1:]:
    print("start", path, flush=True)
    try:
        tfqnet.run_tflm(open(path, "rb").read(), x)
    except Exception as error:
        print("done", type(error).__name__, flush=True)
    else:
        print("done ok", flush=True)
"""


def test_run_tflm_in_child_processes_never_dies_on_mutations(tflite, tmp_path):
    """Mutants through the public API, one child for all of them until one dies (then a
    new child goes on after it): no signal death, no hang, only clean exceptions:
    InvalidModelFileError, or MicroRuntimeError / a ValueError for a model
    that loads but does not fit the input."""
    paths: list[str] = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(mutated(tflite), table_flips(tflite, _table_span(tflite))))
    def draw(model):
        paths.append(str(tmp_path / f"m{len(paths)}.tflite"))
        Path(paths[-1]).write_bytes(model)

    draw()
    outcomes, deaths, pending = [], [], list(paths)
    while pending:
        proc = subprocess.run([sys.executable, "-c", _FUZZ_CHILD, *pending],
                              capture_output=True, text=True, timeout=120, env=_child_env())
        started = None
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "start":
                started = rest
            elif word == "done":
                outcomes.append(rest)
                started = None
        if proc.returncode == 0:
            break
        assert started is not None, proc.stderr[-1000:]
        deaths.append((Path(started).name, proc.returncode))
        pending = pending[pending.index(started) + 1:]
    assert deaths == []
    assert len(outcomes) == len(paths)
    assert set(outcomes) <= {"ok", "InvalidModelFileError", "MicroRuntimeError", "ValueError"}
    # Not vacuous: mutants were refused, and others reached the runtime.
    assert outcomes.count("InvalidModelFileError") >= 20
    assert outcomes.count("ok") + outcomes.count("MicroRuntimeError") >= 20


def _input_height(height: int):
    def edit(model, graph):
        tensor = _sg(model).tensors[graph.inputs[0]]
        tensor.shape = [tensor.shape[0], height, *tensor.shape[2:]]
    return edit


def test_shapes_tflite_computes_otherwise_are_an_invalid_file(tflite, tmp_path, capsys):
    """A graph input shortened to 1x8 pixels passes the file checks, TFLM runs it on the
    declared shapes, but TFLite's outputs hold no sample: the layer-by-layer step raised
    IndexError (the CLI's exit 70, "please report it"). Found by mutating every tensor
    shape and operator index of the digits model one at a time."""
    from tfqnet.cli import main

    bad = _repacked(tflite, _input_height(1))
    assert _python_stages(bad) == "ok"
    message = (r"corrupt TFLite flatbuffer: operator 0 \(CONV_2D\) computes an output of "
               r"shape \(1, -?\d+, 8, \d+\) from its inputs, but its output tensor \d+ is "
               r"declared \(1, 8, 8, \d+\)")
    with pytest.raises(InvalidModelFileError, match=message):
        check_model(bad, samples=2)
    (tmp_path / "bad.tflite").write_bytes(bad)
    assert main(["check", str(tmp_path / "bad.tflite"), "--quiet", "--samples", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and re.search("is not a valid TFLite model: " + message, lines[0])


def test_a_model_tflite_refuses_to_invoke_skips_the_layer_check(tflite):
    """RESHAPE's shape input replaced by the graph input: TFLM ignores it, TFLite's
    invoke raised RuntimeError out of the layer-by-layer step (exit 70)."""
    def edit(model, graph):
        op = _sg(model).operators[_first(graph, "RESHAPE").index]
        op.inputs = [op.inputs[0], graph.inputs[0]]

    report = check_model(_repacked(tflite, edit), samples=2)
    assert report.layer_check.startswith("skipped: TFLite's reference kernels cannot run "
                                         "this model (")
    assert "layer-by-layer skipped" in report.format_table().splitlines()[-1]
