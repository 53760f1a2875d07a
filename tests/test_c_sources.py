"""export-c's C sources as a C or C++ project uses them: --lang, the header's I/O
constants and quantize helper, C99/C11 and Cortex-M compilation, and the check program
(compiled with TFLM's warning flags against tests/tflm_stand_in.py, a stand-in for
TFLM's API).

One export-c run (--lang both) per module; every test reads or compiles its files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.micro_helpers import digits_qat_and_tflite
from tests.tflm_stand_in import write_stand_in
from tfqnet.cli import main
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.micro.arena import with_margin
from tfqnet.micro.arena_model import board_arenas
from tfqnet.micro.c_arrays import align_flatbuffer, data_file_names
from tfqnet.micro.c_names import float_literal

WARNINGS = ["-Wall", "-Wextra", "-pedantic", "-Werror", "-Wconversion", "-Wsign-conversion",
            "-Wdouble-promotion", "-Wshadow"]
#: What the check program must compile cleanly with: TFLM's own warnings (its Makefile's
#: CXX warning flags) plus the -Wsign-conversion an application may add.
TFLM_CXX_WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wstrict-aliasing", "-Wno-unused-parameter",
                     "-Wmissing-field-initializers", "-Wdouble-promotion", "-Wshadow",
                     "-Wunused-variable", "-Wunused-function", "-Wswitch", "-Wvla",
                     "-Wsign-conversion", "-Wsign-compare"]
CORTEX_M = ["cortex-m0plus", "cortex-m4", "cortex-m33"]
COUNT = 3


def _need(compiler: str) -> None:
    if shutil.which(compiler) is None:  # .ci/run installs gcc-arm-none-eabi
        pytest.skip(f"{compiler} is not installed (Debian: apt-get install gcc-arm-none-eabi)")


@pytest.fixture(scope="module")
def exported(float_digits_model, digits, tmp_path_factory):
    """(directory, flatbuffer, x): export-c --lang both of the digits W4A8 model."""
    work = tmp_path_factory.mktemp("c_sources")
    _, tflite = digits_qat_and_tflite(float_digits_model, digits)
    (work / "digits.tflite").write_bytes(tflite)
    x = digits.x_test[:COUNT]
    np.save(work / "x.npy", x)
    out = work / "out"
    assert main(["export-c", str(work / "digits.tflite"), "--out", str(out), "--name",
                 "digits", "--inputs", str(work / "x.npy"), "--count", str(COUNT),
                 "--lang", "both"]) == 0
    return out, tflite, x


def _defines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#define (\w+) (.+)$", text, re.M))


def test_lang_both_writes_c_and_cc_sources_that_say_compile_one(exported):
    out, _, _ = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*data_file_names("digits", "both"), "digits_op_resolver.h",
                            "digits_check.cc"])
    for part in ("model_data", "test_data"):
        c, cc = ((out / f"digits_{part}{ext}").read_text() for ext in (".c", ".cc"))
        assert c == cc and "compile one of them" in c
    assert data_file_names("digits", "c") == [
        "digits_model_data.h", "digits_test_data.h", "digits_model_data.c", "digits_test_data.c"]
    assert "C++ (TFLM's API is C++)" in (out / "digits_check.cc").read_text()


def test_an_unknown_lang_is_a_usage_error(exported, tmp_path, capsys):
    _, _, _ = exported
    with pytest.raises(SystemExit) as exit_info:
        main(["export-c", "m.tflite", "--out", str(tmp_path), "--name", "d", "--lang", "rust"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'rust'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_header_io_constants_are_the_flatbuffers_quantization(exported):
    out, tflite, _ = exported
    defines = _defines((out / "digits_model_data.h").read_text())
    graph = FlatbufferModel.from_bytes(tflite)
    assert defines["DIGITS_INPUTS"] == str(len(graph.inputs))
    assert defines["DIGITS_OUTPUTS"] == str(len(graph.outputs))
    for kind, indices in (("INPUT", graph.inputs), ("OUTPUT", graph.outputs)):
        for k, index in enumerate(indices):
            tensor, prefix = graph.tensors[index], f"DIGITS_{kind}{k}"
            assert tensor.type == "INT8" and defines[f"{prefix}_TYPE"] == "int8_t"
            assert defines[f"{prefix}_SHAPE"] == "{" + ", ".join(map(str, tensor.shape)) + "}"
            assert defines[f"{prefix}_DIMS"] == str(len(tensor.shape))
            assert int(defines[f"{prefix}_ELEMENTS"]) == int(np.prod(tensor.shape))
            assert int(defines[f"{prefix}_BYTES"]) == int(np.prod(tensor.shape))
            scale = defines[f"{prefix}_SCALE"]
            assert scale.endswith("f") and np.float32(scale[:-1]) == np.float32(tensor.scales[0])
            assert int(defines[f"{prefix}_ZERO_POINT"].strip("()")) == tensor.zero_points[0]


def _tflite_quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite's QUANTIZE: float32 x / scale, round half away from zero, + zero point."""
    q = (x.astype(np.float32) / np.float32(scale)).astype(np.float64)
    rounded = np.sign(q) * np.floor(np.abs(q) + 0.5)
    return np.clip(rounded + zero_point, -128, 127).astype(np.int8)


MAIN_C = r"""
#include <stdio.h>
#include "digits_model_data.h"
#include "digits_test_data.h"

int main(int argc, char** argv) {
  int i;
  (void)argc;
  (void)argv;
  printf("arena %u len %u\n", (unsigned)DIGITS_TENSOR_ARENA_SIZE, g_digits_model_data_len);
  for (i = 0; i < (int)(sizeof(probe) / sizeof(probe[0])); ++i) {
    printf("%d ", (int)digits_quantize_input0(probe[i]));
  }
  printf("\n%.9g\n", (double)digits_dequantize_output0((int8_t)g_digits_output0[0][0]));
  return 0;
}
"""


def _probe_values(x: np.ndarray, scale: float) -> np.ndarray:
    """The test inputs, exact rounding ties, out-of-range and huge values."""
    ties = (np.arange(-130, 130, dtype=np.float32) + np.float32(0.5)) * np.float32(scale)
    extremes = np.array([-1e30, -2.0, -0.0, 0.0, 1.0, 2.0, 1e30], np.float32)
    return np.concatenate([x.reshape(-1)[:64].astype(np.float32), ties, extremes])


def _run(command: list[str]) -> str:
    """Runs a compiler or a built program; its messages become the failure's text."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command[:1])} exited {result.returncode}:\n"
                    f"{result.stderr[-3000:]}{result.stdout[-1000:]}")
    return result.stdout


def _host_program(out: Path, tmp: Path, std: str, values: np.ndarray, defines=()) -> str:
    literals = ", ".join(float_literal(v) for v in values)
    (tmp / "main.c").write_text(f"static const float probe[] = {{{literals}}};\n" + MAIN_C)
    binary = tmp / f"main_{std}"
    _run(["gcc", f"-std={std}", *WARNINGS, *defines, "-I", str(out), str(tmp / "main.c"),
          str(out / "digits_model_data.c"), str(out / "digits_test_data.c"), "-o", str(binary)])
    return _run([str(binary)])


@pytest.mark.parametrize("std", ["c99", "c11"])
def test_c_sources_compile_pedantic_and_quantize_as_tflite(exported, tmp_path, std):
    _need("gcc")
    out, tflite, x = exported
    graph = FlatbufferModel.from_bytes(tflite)
    inp, outp = (graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]])
    values = _probe_values(x, inp.scales[0])
    lines = _host_program(out, tmp_path, std, values).splitlines()
    codes = np.array([int(v) for v in lines[1].split()])
    np.testing.assert_array_equal(codes, _tflite_quantize(values, inp.scales[0],
                                                          inp.zero_points[0]))
    golden = int(re.search(r"\{\s*(-?\d+)", (out / "digits_test_data.c").read_text()
                           .split("g_digits_output0")[1]).group(1))
    assert float(lines[2]) == pytest.approx(outp.scales[0] * (golden - outp.zero_points[0]),
                                            rel=1e-6)
    defines = _defines((out / "digits_model_data.h").read_text())
    largest = max(int(v.rstrip("u")) for k, v in defines.items()
                  if k.startswith("DIGITS_ARENA_"))
    assert lines[0] == f"arena {largest} len {defines['DIGITS_MODEL_DATA_LEN'].rstrip('u')}"


def test_the_arena_constant_follows_the_kernel_macros(exported, tmp_path):
    _need("gcc")
    out, _, x = exported
    sizes = {k: v.rstrip("u") for k, v in _defines((out / "digits_model_data.h").read_text())
             .items() if k.startswith("DIGITS_ARENA_")}
    values = x.reshape(-1)[:4]
    for defines, key in ((["-DCMSIS_NN"], "CMSIS_NN"),
                         (["-DTFQNET_REFERENCE_KERNELS"], "REFERENCE"),
                         (["-DDIGITS_TENSOR_ARENA_SIZE=777u"], None)):
        first = _host_program(out, tmp_path, "c11", values, defines).splitlines()[0]
        want = "777" if key is None else sizes.get(f"DIGITS_ARENA_{key}")
        if want is None:
            pytest.fail(f"the header has no DIGITS_ARENA_{key}: {sorted(sizes)}")
        assert first.startswith(f"arena {want} ")


def test_export_c_writes_and_prints_the_derived_arena_per_kernel_set(exported, tmp_path,
                                                                     capsys):
    _, tflite, _ = exported
    model = tmp_path / "m.tflite"
    model.write_bytes(tflite)
    assert main(["export-c", str(model), "--out", str(tmp_path / "c"), "--name", "digits",
                 "--count", "1", "--lang", "c"]) == 0
    out = capsys.readouterr().out
    derived = board_arenas(FlatbufferModel.from_bytes(align_flatbuffer(tflite)))
    want = {k: with_margin(e.minimum) for k, e in derived.items()}
    assert set(want) == {"reference", "cmsis_nn", "cmsis_nn_mve"}
    assert ("arena on 32-bit Cortex-M (derived, with margin): "
            + ", ".join(f"{k} {v}" for k, v in want.items())) in out
    defines = _defines((tmp_path / "c" / "digits_model_data.h").read_text())
    for key, size in want.items():
        assert defines[f"DIGITS_ARENA_{key.upper()}"] == f"{size}u"
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        [*data_file_names("digits", "c"), "digits_op_resolver.h", "digits_check.cc"])


@pytest.mark.parametrize("cpu", CORTEX_M)
def test_c_sources_compile_for_cortex_m(exported, tmp_path, cpu):
    _need("arm-none-eabi-gcc")
    out, _, x = exported
    literals = ", ".join(float_literal(v) for v in x.reshape(-1)[:8])
    (tmp_path / "app.c").write_text(
        f'#include "digits_model_data.h"\n#include "digits_test_data.h"\n'
        f"static const float probe[] = {{{literals}}};\n"
        "int8_t first_code(void);\nint8_t first_code(void) {\n"
        "  return digits_quantize_input0(probe[0]);\n}\n")
    for source in ("digits_model_data.c", "digits_test_data.c", "app.c"):
        path = out / source if source != "app.c" else tmp_path / source
        _run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", "-Os", "-std=c11", *WARNINGS,
              "-I", str(out), "-c", str(path), "-o", str(tmp_path / (source + ".o"))])


def _build_check(out: Path, tmp: Path, *defines: str) -> Path:
    binary = tmp / ("check" + "".join(d.split("=")[0].replace("-D", "_") for d in defines))
    objects = []
    for source in ("digits_model_data.c", "digits_test_data.c"):
        obj = tmp / (source + ".o")
        _run(["gcc", "-std=c11", *WARNINGS, "-c", str(out / source), "-o", str(obj)])
        objects.append(str(obj))
    stand_in = write_stand_in(tmp / "tflm_stand_in")
    flags = ["g++", "-std=c++11", *TFLM_CXX_WARNINGS, "-I", str(stand_in), "-I", str(out),
             "-include", str(out / "digits_test_data.h"),
             "-DSTUB_INPUT=g_digits_input0", "-DSTUB_OUTPUT=g_digits_output0", *defines]
    _run([*flags, "-c", str(out / "digits_check.cc"), "-o", str(binary) + ".o"])
    if "-DDIGITS_CHECK_MAIN" in defines:
        _run(["g++", str(binary) + ".o", *objects, "-o", str(binary)])
    return binary


def test_check_program_has_no_main_unless_asked(exported, tmp_path):
    _need("g++")
    out, _, _ = exported
    obj = Path(str(_build_check(out, tmp_path)) + ".o")
    symbols = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True,
                             check=True).stdout
    assert "digits_run_check(unsigned char*, unsigned long)" in symbols
    assert not re.search(r"\bT main\b", symbols)
    assert not re.search(r"tensor_arena", symbols)  # no RAM taken without main
    obj = Path(str(_build_check(out, tmp_path, "-DDIGITS_CHECK_MAIN")) + ".o")
    assert re.search(r"\bT main\b", subprocess.run(["nm", str(obj)], capture_output=True,
                                                    text=True, check=True).stdout)


def test_check_program_prints_pass_fail_and_the_max_lsb_difference(exported, tmp_path):
    _need("g++")
    out, _, _ = exported
    passing = subprocess.run([str(_build_check(out, tmp_path, "-DDIGITS_CHECK_MAIN"))],
                             capture_output=True, text=True)
    assert passing.returncode == 0, passing.stdout
    lines = passing.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("vector")] == [
        f"vector {v}: PASS (max diff 0 LSB)" for v in range(COUNT)]
    assert lines[-1] == f"{COUNT}/{COUNT} vectors passed"
    failing = subprocess.run([str(_build_check(out, tmp_path, "-DDIGITS_CHECK_MAIN",
                                               "-DSTUB_CORRUPT_VECTOR=1",
                                               "-DSTUB_CORRUPT_LSB=3"))],
                             capture_output=True, text=True)
    assert failing.returncode == 1
    golden = int(re.findall(r"\{\s*(-?\d+)", (out / "digits_test_data.c").read_text()
                            .split("g_digits_output0")[1])[1])  # vector 1, element 0
    corrupted = int(np.uint8((golden + 3) & 0xFF).view(np.int8))  # the stub adds 3 to the byte
    diff = abs(corrupted - golden)
    assert f"vector 1: FAIL (1 mismatching values, max diff {diff} LSB)" in failing.stdout
    assert failing.stdout.splitlines()[-1] == f"{COUNT - 1}/{COUNT} vectors passed"
