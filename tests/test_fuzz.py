"""Fuzzing `check` and `export-c` with mutated flatbuffers of a real model.

Mutations of the session's digits model (bit flips, truncations, splices, overwritten
header bytes) must end in success or a clean failure: InvalidModelFileError /
UnsupportedOpError in-process, and for the command line a non-zero exit with one
`tfqnet: error:` line and no traceback. Never a crash of the test process, which the
child-process sandbox of the native steps (aligner, TFLM, TFLite) guarantees.

Bounded: the pure-Python stages take many examples (milliseconds each); the native
stages, which start child processes, a few. Derandomized, so CI sees the same cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tests.micro_helpers import digits_qat_and_tflite
from tfqnet.errors import InvalidModelFileError
from tfqnet.micro import checker
from tfqnet.micro.c_arrays import align_flatbuffer, model_data_files
from tfqnet.micro.checker import check_model
from tfqnet.micro.model_file import parse_model
from tfqnet.micro.op_resolver import UnsupportedOpError, op_resolver_header

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ERRORS = (InvalidModelFileError, UnsupportedOpError)
#: the part of the file that holds the tables (the rest is mostly weight bytes)
HEADER_SPAN = 2048


@pytest.fixture(scope="module")
def tflite(float_digits_model, digits) -> bytes:
    return digits_qat_and_tflite(float_digits_model, digits)[1]


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


def test_aligner_crash_is_an_invalid_file_error(tflite):
    bad = string_length_corrupted(tflite)
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
def test_cli_subprocess_fails_with_one_line(tflite, tmp_path, case):
    if case == "aligner_crash":
        data = string_length_corrupted(tflite)
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
