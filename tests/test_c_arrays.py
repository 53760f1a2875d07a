"""C arrays for boards: alignment, byte-exact round trip, and Cortex-M/host compilation."""

from __future__ import annotations

import re
import stat
import subprocess

import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tests.micro_helpers import digits_qat_and_tflite
from tfqnet.errors import InvalidModelFileError
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.micro import run_tflm
from tfqnet.micro.arena_model import KERNEL_SETS
from tfqnet.micro.c_arrays import (
    MAX_IDENTIFIER_CHARS,
    align_flatbuffer,
    c_identifier,
    check_program,
    golden_vector_files,
    model_data_files,
    parse_c_byte_array,
    write_atomic,
)
from tfqnet.micro.op_resolver import op_resolver_header

NAME = "digits"
ARENA = 12345 * 16


@pytest.fixture(scope="module")
def tflite(float_digits_model, digits):
    return digits_qat_and_tflite(float_digits_model, digits)[1]


@pytest.fixture(scope="module")
def aligned(tflite):
    return align_flatbuffer(tflite)


@pytest.fixture(scope="module")
def sources(aligned, tmp_path_factory):
    out = tmp_path_factory.mktemp("c_arrays")
    files = model_data_files(NAME, aligned, ARENA, ARENA - 100)
    for name, text in files.items():
        (out / name).write_text(text)
    return out, files


def _buffer_offsets(data: bytes) -> list[int]:
    model = schema.Model.GetRootAs(data, 0)
    offsets = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        field = buffer._tab.Offset(4)  # Buffer.data
        if field and buffer.DataLength():
            offsets.append(buffer._tab.Vector(field))
    return offsets


def test_align_puts_every_weight_buffer_on_16_bytes(tflite, aligned):
    before, after = _buffer_offsets(tflite), _buffer_offsets(aligned)
    assert len(after) == len(before) > 0
    assert all(offset % 16 == 0 for offset in after)
    # Same graph after re-packing: ops, tensor types and shapes unchanged.
    a, b = FlatbufferModel.from_bytes(tflite), FlatbufferModel.from_bytes(aligned)
    assert [(o.name, o.version, o.inputs, o.outputs) for o in a.operators] == [
        (o.name, o.version, o.inputs, o.outputs) for o in b.operators]
    assert [(t.type, t.shape, t.buffer_bytes) for t in a.tensors] == [
        (t.type, t.shape, t.buffer_bytes) for t in b.tensors]


def test_align_refuses_garbage_before_reaching_the_cpp_aligner():
    with pytest.raises(InvalidModelFileError):
        align_flatbuffer(b"\x00" * 64)


def test_model_array_round_trips_byte_for_byte(aligned, sources):
    _, files = sources
    source, header = files[f"{NAME}_model_data.cc"], files[f"{NAME}_model_data.h"]
    assert parse_c_byte_array(source, f"g_{NAME}_model_data") == aligned
    assert f"#define DIGITS_MODEL_DATA_LEN {len(aligned)}u" in header
    assert f"#define DIGITS_ARENA_HOST {ARENA}u" in header
    assert "#define DIGITS_TENSOR_ARENA_SIZE DIGITS_ARENA_HOST" in header
    assert header.count("#ifndef DIGITS_MODEL_DATA_H_") == 1


def test_c_identifier_makes_valid_names():
    assert c_identifier("my-model.v2") == "my_model_v2"
    assert c_identifier("9lives") == "m_9lives"
    assert c_identifier("_my__model_") == "my_model"  # no reserved _X / __ names
    assert c_identifier("x" * MAX_IDENTIFIER_CHARS) == "x" * MAX_IDENTIFIER_CHARS
    with pytest.raises(ValueError):
        c_identifier("  ")


def _all_sources(name: str, tflite: bytes, vectors) -> dict[str, str]:
    codes, outputs = vectors
    files = {**model_data_files(name, tflite, ARENA, ARENA - 100),
             **golden_vector_files(name, [codes], [outputs]),
             **check_program(name, 1, [outputs.dtype])}
    files["resolver.h"] = op_resolver_header(tflite, name)
    return files


def test_sources_hold_the_name_only_as_its_identifier(tflite, vectors):
    name = 'my model "v2" */ #define X //'
    files = _all_sources(name, tflite, vectors)
    assert sorted(files)[0].startswith("my_model_v2_define_X_")
    for text in files.values():
        assert name not in text and '"v2"' not in text and "#define X" not in text
        assert set(re.findall(r"model '([^']*)'", text)) == {"my_model_v2_define_X"}


def test_generated_names_differ_within_63_characters(tflite, vectors):
    """C99 tells identifiers apart by their first 63 characters: every name the sources
    define for the longest model name allowed fits."""
    name = "x" * MAX_IDENTIFIER_CHARS
    codes, outputs = vectors
    files = {**model_data_files(name, tflite, ARENA, ARENA - 100,
                                board_arenas={k.key: ARENA for k in KERNEL_SETS}),
             **golden_vector_files(name, [codes], [outputs]),
             **check_program(name, 1, [outputs.dtype])}
    files["resolver.h"] = op_resolver_header(tflite, name)
    defined = set()
    for text in files.values():
        defined.update(re.findall(r"#define (\w+)", text))
        defined.update(re.findall(r"\b(\w*x{40}\w*)\s*\(", text))  # functions
    ours = [n for n in defined if "x" * MAX_IDENTIFIER_CHARS in n.lower()]
    assert {"X" * 40 + "_ARENA_CMSIS_NN_MVE", "x" * 40 + "_dequantize_output0"} <= set(ours)
    assert max(len(n) for n in ours) <= 63


@pytest.mark.parametrize("name, message", [
    ("v\n#define X 1 //", "contains control characters"),  # a newline ends the comment
    ("x" * 300, f"C identifier of 300 characters; give --name at most {MAX_IDENTIFIER_CHARS}"),
    ("x" * (MAX_IDENTIFIER_CHARS - 1) + "-2", "of 41 characters"),
    ("--", "no ASCII letters or digits"),
], ids=["newline", "300 characters", "41 characters", "punctuation only"])
def test_names_that_make_no_c_identifier_are_refused(tflite, vectors, name, message):
    with pytest.raises(ValueError, match=message):
        _all_sources(name, tflite, vectors)
    for make in (lambda: model_data_files(name, tflite),
                 lambda: golden_vector_files(name, [vectors[0]], [vectors[1]]),
                 lambda: check_program(name, 1, [np.int8]),
                 lambda: op_resolver_header(tflite, name)):
        with pytest.raises(ValueError, match=message):
            make()


COMPILERS = {
    "m4-c11": ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-Os", "-x", "c", "-std=c11"],
    "m33-c11": ["arm-none-eabi-gcc", "-mcpu=cortex-m33", "-mthumb", "-Os", "-x", "c",
                "-std=c11"],
    "m4-c++11": ["arm-none-eabi-g++", "-mcpu=cortex-m4", "-mthumb", "-Os", "-x", "c++",
                 "-std=c++11"],
    "host-c11": ["gcc", "-x", "c", "-std=c11"],
    "host-c++11": ["g++", "-x", "c++", "-std=c++11"],
}


def _readelf_symbol(obj, symbol: str, arm: bool):
    readelf = "arm-none-eabi-readelf" if arm else "readelf"
    sections = subprocess.run([readelf, "-W", "-S", str(obj)], capture_output=True, text=True,
                              check=True).stdout
    symbols = subprocess.run([readelf, "-W", "-s", str(obj)], capture_output=True, text=True,
                             check=True).stdout
    row = next(line.split() for line in symbols.splitlines()
               if line.split() and line.split()[-1] == symbol)
    value, size, ndx = int(row[1], 16), int(row[2], 0), int(row[6])
    section = next(
        m for m in re.finditer(r"\[\s*(\d+)\]\s+(\S+)\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S*)"
                               r"\s+\d+\s+\d+\s+(\d+)", sections)
        if int(m.group(1)) == ndx)
    return value, size, section.group(2), section.group(3), int(section.group(4))


@pytest.mark.parametrize("target", sorted(COMPILERS))
def test_model_array_compiles_aligned_readonly_and_sized(target, aligned, sources):
    out, _ = sources
    compiler = COMPILERS[target]
    arm = compiler[0].startswith("arm-")
    obj = out / f"model_{target}.o"
    subprocess.run([*compiler, "-Wall", "-Wextra", "-Werror", "-pedantic", "-c",
                    str(out / f"{NAME}_model_data.cc"), "-o", str(obj)], check=True)
    nm = "arm-none-eabi-nm" if arm else "nm"
    listing = subprocess.run([nm, "-S", str(obj)], capture_output=True, text=True,
                             check=True).stdout
    row = next(line.split() for line in listing.splitlines()
               if line.endswith(f" g_{NAME}_model_data"))
    assert int(row[1], 16) == len(aligned)
    assert row[2] == "R"  # read-only data: the array stays in flash
    value, size, section, flags, align = _readelf_symbol(obj, f"g_{NAME}_model_data", arm)
    assert size == len(aligned)
    assert section.startswith(".rodata")
    assert "W" not in flags and "A" in flags
    assert align >= 16 and value % 16 == 0


@pytest.fixture(scope="module")
def vectors(tflite, digits):
    x = digits.x_test[:3]
    micro_out = run_tflm(tflite, x, raw=True)
    from tfqnet.micro import MicroInterpreter

    codes = MicroInterpreter(tflite).inputs[0].quantize(x)
    return codes, micro_out


def _int_arrays(source: str) -> dict[str, list[int]]:
    arrays = {}
    for match in re.finditer(r"(g_\w+)\[[^\]]*\]\[[^\]]*\]\s*=\s*\{(.*?)\n\};", source, re.S):
        arrays[match.group(1)] = [int(v) for v in re.findall(r"-?\d+", match.group(2))]
    return arrays


def test_golden_vectors_are_the_tflm_codes_and_compile(vectors, tmp_path):
    codes, outputs = vectors
    files = golden_vector_files(NAME, [codes], [outputs])
    arrays = _int_arrays(files[f"{NAME}_test_data.cc"])
    assert arrays[f"g_{NAME}_input0"] == codes.reshape(-1).astype(int).tolist()
    assert arrays[f"g_{NAME}_output0"] == outputs.reshape(-1).astype(int).tolist()
    assert "#define DIGITS_TEST_COUNT 3" in files[f"{NAME}_test_data.h"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for compiler in (COMPILERS["m4-c11"], COMPILERS["host-c++11"]):
        subprocess.run([*compiler, "-Wall", "-Werror", "-c", str(tmp_path / f"{NAME}_test_data.cc"),
                        "-o", str(tmp_path / "t.o")], check=True)


def test_float_vectors_keep_their_values():
    values = np.array([[0.1, -2.5e-8, 3.0]], np.float32)
    source = golden_vector_files("f", [values], [values])["f_test_data.cc"]
    found = re.findall(r"(-?[\d.e+-]+)f", source.split("g_f_output0")[0])
    assert np.array_equal(np.array([float(v) for v in found], np.float32), values[0])


def test_check_program_uses_only_generated_names(tflite, vectors):
    codes, outputs = vectors
    program = check_program(NAME, 1, [outputs.dtype])[f"{NAME}_check.cc"]
    headers = "\n".join([*model_data_files(NAME, tflite, ARENA).values(),
                         *golden_vector_files(NAME, [codes], [outputs]).values()])
    used = set(re.findall(r"\b(g_digits_\w+|DIGITS_[A-Z0-9_]+)\b", program))
    defined = set(re.findall(r"\b(g_digits_\w+|DIGITS_[A-Z0-9_]+)\b", headers))
    assert used and used - defined == {"DIGITS_CHECK_MAIN"}  # the build's own switch
    assert "digits_RegisterOps" in program and "PASS" in program and "FAIL" in program
    assert 'typed_output_tensor<int8_t>(0)' in program  # exact compare of int8 outputs


def test_write_atomic_replaces_whole_file_with_normal_mode(tmp_path):
    target = tmp_path / "x.h"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["x.h"]  # no temp file left behind
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable by others, not 0600
