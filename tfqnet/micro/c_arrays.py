"""C sources for a board: the aligned model array with its I/O constants and arena
sizes, and golden test vectors.

Why not TFLM's generate_cc_arrays.py: it does not re-align the flatbuffer (the
converter's output is not 16-byte aligned inside, and an unaligned tensor buffer
hard-faults a Cortex-M4F), and its arrays are C++ only. Here the flatbuffer goes
through tflite_micro's aligner first, and the array is ``alignas(16)`` in both C11
and C++11, ``const`` (so it lands in flash, .rodata) and ``extern "C"`` (so C and
C++ translation units share one symbol). The model and test data sources are plain
C99 as well as C++11; ``lang`` picks their extension (``.c``, ``.cc`` or both), since
a build system picks the compiler by it. The op resolver and the check program are
C++ (TFLM's API is C++): :mod:`tfqnet.micro.op_resolver`,
:mod:`tfqnet.micro.check_program`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tfqnet._files import write_atomic
from tfqnet.errors import InvalidModelFileError
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.micro.arena_model import KERNEL_SETS
from tfqnet.micro.c_names import C_TYPES, MAX_IDENTIFIER_CHARS, c_identifier, float_literal
from tfqnet.micro.check_program import check_program
from tfqnet.micro.io_constants import io_constant_lines
from tfqnet.micro.isolated import describe_exit, run_python
from tfqnet.micro.model_file import parse_model

_BYTES_PER_LINE = 16

# C11 has _Alignas, C++11 has alignas; the GCC attribute is the fallback for C99.
_ALIGN_MACRO = """\
#ifndef TFQNET_ALIGN16
#if defined(__cplusplus)
#define TFQNET_ALIGN16 alignas(16)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define TFQNET_ALIGN16 _Alignas(16)
#else
#define TFQNET_ALIGN16 __attribute__((aligned(16)))
#endif
#endif
"""

#: Values of ``lang``: the extensions of the model and test data sources.
LANG_EXTENSIONS = {"c": (".c",), "c++": (".cc",), "both": (".c", ".cc")}


def _extensions(lang: str) -> tuple[str, ...]:
    if lang not in LANG_EXTENSIONS:
        raise ValueError(f"lang must be one of {', '.join(LANG_EXTENSIONS)}, not {lang!r}")
    return LANG_EXTENSIONS[lang]


def data_file_names(ident: str, lang: str = "c++") -> list[str]:
    """The model and test data files :func:`model_data_files` and
    :func:`golden_vector_files` write for ``lang``, headers first."""
    return [f"{ident}_model_data.h", f"{ident}_test_data.h",
            *(f"{ident}_{part}{ext}" for part in ("model_data", "test_data")
              for ext in _extensions(lang))]


def _sources(ident: str, part: str, lang: str, text: str) -> dict[str, str]:
    extensions = _extensions(lang)
    note = ("" if len(extensions) == 1 else
            f"// {ident}_{part}.c and .cc are the same source: compile one of them.\n")
    return {f"{ident}_{part}{ext}": note + text for ext in extensions}


#: Seconds the aligner may take (it takes well under one for any MCU-sized model).
ALIGN_TIMEOUT = 120.0

# The C++ aligner unpacks the flatbuffer without verifying it: an offset pointing
# outside the file (one flipped byte suffices) makes it read wild memory and crash.
# So it runs in a child process; a crash there is a clear error here.
_ALIGN_CHILD = r"""
import sys
from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper as w
w.align_tflite_model(sys.argv[1], sys.argv[2])
"""


def align_flatbuffer(data: bytes) -> bytes:
    """Re-packs the flatbuffer with tflite_micro's aligner (every buffer 16-byte aligned).

    The data is parsed first, so plain garbage raises InvalidModelFileError without
    starting the aligner; the aligner itself runs in a child process (see above), and
    its crash or failure raises InvalidModelFileError too.
    """
    FlatbufferModel.from_bytes(data)
    with tempfile.TemporaryDirectory(prefix="tfqnet-align-") as tmp:
        src, dst = os.path.join(tmp, "in.tflite"), os.path.join(tmp, "out.tflite")
        Path(src).write_bytes(data)
        result = run_python(_ALIGN_CHILD, [src, dst], timeout=ALIGN_TIMEOUT)
        if result.returncode != 0 or not os.path.exists(dst):
            raise InvalidModelFileError(
                f"tflite_micro's flatbuffer aligner {describe_exit(result)}: the file is "
                "corrupt (or not a flatbuffer the TFLite tools can read)")
        aligned = Path(dst).read_bytes()
    FlatbufferModel.from_bytes(aligned)
    return aligned


def _hex_rows(data: bytes) -> str:
    rows = []
    for start in range(0, len(data), _BYTES_PER_LINE):
        chunk = data[start : start + _BYTES_PER_LINE]
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in chunk) + ",")
    return "\n".join(rows)


def _literals(values: np.ndarray) -> str:
    flat = values.reshape(-1)
    if flat.dtype == np.float32:
        items = [float_literal(v) if np.isfinite(v) else "0.0f" for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    per_line = 16
    return "\n".join(
        "    " + ", ".join(items[i : i + per_line]) + ","
        for i in range(0, len(items), per_line)
    )


def model_data_files(name: str, model: bytes, arena_bytes: int | None = None,
                     arena_minimum: int | None = None,
                     flash: dict[str, int] | None = None, *,
                     board_arenas: Mapping[str, int] | None = None,
                     lang: str = "c++") -> dict[str, str]:
    """NAME_model_data.h and NAME_model_data.c / .cc (per ``lang``) for an (already
    aligned) flatbuffer.

    The header holds the array's declaration, the constants of every input and output
    (:mod:`tfqnet.micro.io_constants`) and the tensor arena: ``arena_bytes`` as
    measured on the TFLM runtime on this machine (``arena_minimum`` before the
    margin), ``board_arenas`` per kernel set of :data:`~tfqnet.micro.arena_model.
    KERNEL_SETS` (derived, with the margin), and ``NAME_TENSOR_ARENA_SIZE`` picking one
    of them by the build's macros (see :func:`_arena_lines`). ``flash``: the model's
    :func:`~tfqnet.export.flatbuffer.flash_breakdown`, noted in a comment.
    """
    ident = c_identifier(name)
    upper = ident.upper()
    guard = f"{upper}_MODEL_DATA_H_"
    header = [
        f"// Generated by tfqnet export-c: model '{ident}', {len(model)} bytes, 16-byte aligned.",
        "// Plain C99 and C++11; the array is defined in the model_data source (C or C++).",
    ]
    if flash:
        header.append("// Flash by part (bytes): "
                      + ", ".join(f"{part} {n}" for part, n in flash.items()) + ".")
    header += [
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        f"#define {upper}_MODEL_DATA_LEN {len(model)}u",
    ]
    header += ["", *io_constant_lines(parse_model(model), ident)]
    header += _arena_lines(upper, arena_bytes, arena_minimum, board_arenas or {})
    header += [
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"extern const unsigned char g_{ident}_model_data[];",
        f"extern const unsigned int g_{ident}_model_data_len;",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif  // {guard}",
        "",
    ]
    source = [
        f"// Generated by tfqnet export-c from the aligned flatbuffer of model '{ident}'.",
        "// Valid C99 and C++11. const: the array stays in flash (.rodata).",
        f'#include "{ident}_model_data.h"',
        "",
        _ALIGN_MACRO,
        f"TFQNET_ALIGN16 const unsigned char g_{ident}_model_data[{upper}_MODEL_DATA_LEN] = {{",
        _hex_rows(model),
        "};",
        "",
        f"const unsigned int g_{ident}_model_data_len = {upper}_MODEL_DATA_LEN;",
        "",
    ]
    return {f"{ident}_model_data.h": "\n".join(header),
            **_sources(ident, "model_data", lang, "\n".join(source))}


def _arena_lines(upper: str, measured: int | None, minimum: int | None,
                 boards: Mapping[str, int]) -> list[str]:
    """The header's arena section. ``NAME_TENSOR_ARENA_SIZE``: the application's own
    definition if it has one; else the CMSIS-NN figure when ``CMSIS_NN`` is defined
    (TFLM's build defines it for OPTIMIZED_KERNEL_DIR=cmsis_nn), the MVE one when the
    compiler targets MVE too, the reference one when ``TFQNET_REFERENCE_KERNELS`` is
    defined; else the largest figure, which fits every kernel set listed."""
    if measured is None and not boards:
        return []
    lines = ["", "// Tensor arena (bytes): TFLM needs one per kernel set and word size."]
    figures: list[tuple[str, int]] = []
    if measured is not None:
        lines += [f"//   {upper}_ARENA_HOST: reference kernels on a 64-bit host,",
                  "//     measured on the TFLM runtime"
                  + (f" (minimum {minimum} bytes)" if minimum is not None else "")
                  + ", plus tfqnet.micro.arena.ARENA_MARGIN."]
        figures.append(("HOST", measured))
    for kernels in KERNEL_SETS:
        if kernels.key in boards:
            lines += [f"//   {upper}_ARENA_{kernels.macro}: {kernels.label},",
                      "//     derived from what the kernels allocate (tfqnet.micro.arena_model),"
                      " plus the margin."]
            figures.append((kernels.macro, boards[kernels.key]))
    for macro, size in figures:
        lines.append(f"#define {upper}_ARENA_{macro} {size}u")
    largest = max(figures, key=lambda item: item[1])[0]
    lines += [
        f"// {upper}_TENSOR_ARENA_SIZE: define it to use your own figure; else it is the",
        "// CMSIS-NN figure when CMSIS_NN is defined (TFLM's OPTIMIZED_KERNEL_DIR=cmsis_nn",
        "// build defines it; define it for this file too if your build does not pass TFLM's",
        "// flags), the MVE one if the compiler also targets MVE (__ARM_FEATURE_MVE), the",
        "// reference figure when TFQNET_REFERENCE_KERNELS is defined, and the largest",
        f"// ({upper}_ARENA_{largest}) otherwise.",
    ]
    absent = [k.label for k in KERNEL_SETS if k.key not in boards]
    if absent:  # a macro without its figure falls through to the largest
        lines.append("// Not derived for this model (an op whose allocations tfqnet does "
                     "not model): " + "; ".join(absent) + ".")
    lines.append(f"#ifndef {upper}_TENSOR_ARENA_SIZE")
    branches = [(k.condition, k.macro) for k in KERNEL_SETS if k.key in boards]
    for n, (condition, macro) in enumerate(branches):
        lines.append(f"#{'if' if n == 0 else 'elif'} {condition}")
        lines.append(f"#define {upper}_TENSOR_ARENA_SIZE {upper}_ARENA_{macro}")
    if branches:
        lines.append("#else")
    lines.append(f"#define {upper}_TENSOR_ARENA_SIZE {upper}_ARENA_{largest}")
    if branches:
        lines.append("#endif")
    lines.append("#endif")
    return lines


def parse_c_byte_array(source: str, symbol: str) -> bytes:
    """Reads back the bytes of ``symbol``'s initializer from generated C (for tests/tools)."""
    match = re.search(re.escape(symbol) + r"\s*\[[^\]]*\]\s*=\s*\{([^}]*)\}", source)
    if match is None:
        raise ValueError(f"no array {symbol} in the source")
    return bytes(int(tok, 0) for tok in re.findall(r"0x[0-9a-fA-F]+|\d+", match.group(1)))


def golden_vector_files(name: str, inputs: Sequence[np.ndarray],
                        outputs: Sequence[np.ndarray], *, lang: str = "c++") -> dict[str, str]:
    """NAME_test_data.h and NAME_test_data.c / .cc (per ``lang``): golden vectors, one
    ``[COUNT][ELEMENTS]`` array per tensor, plain C99 and C++11.

    ``inputs``/``outputs`` hold one array per model input/output, each of shape
    (COUNT, ...) in the tensor's own dtype (the codes the board reads and writes).
    """
    ident = c_identifier(name)
    upper = ident.upper()
    count = int(inputs[0].shape[0])
    guard = f"{upper}_TEST_DATA_H_"
    header = [
        f"// Generated by tfqnet export-c: {count} golden vector(s) computed by the TFLM",
        f"// runtime (reference kernels) for model '{ident}'. Plain C99 and C++11.",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        f"#define {upper}_TEST_COUNT {count}",
        f"#define {upper}_TEST_INPUTS {len(inputs)}",
        f"#define {upper}_TEST_OUTPUTS {len(outputs)}",
    ]
    decls, defs = [], []
    for kind, arrays in (("input", inputs), ("output", outputs)):
        for index, array in enumerate(arrays):
            array = np.asarray(array)
            if array.dtype not in C_TYPES:
                raise ValueError(f"{kind} {index} has dtype {array.dtype}; no C type for it")
            ctype = C_TYPES[array.dtype]
            elements = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
            macro = f"{upper}_{kind.upper()}{index}_SIZE"
            header.append(f"#define {macro} {elements}")
            symbol = f"g_{ident}_{kind}{index}"
            decls.append(f"extern const {ctype} {symbol}[{upper}_TEST_COUNT][{macro}];")
            rows = [
                "  {\n" + _literals(array[i]) + "\n  },"
                for i in range(count)
            ]
            defs += [f"const {ctype} {symbol}[{upper}_TEST_COUNT][{macro}] = {{",
                     *rows, "};", ""]
    header += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif", "", *decls, "",
               "#ifdef __cplusplus", "}", "#endif", "", f"#endif  // {guard}", ""]
    source = [f"// Generated by tfqnet export-c: golden vectors of model '{ident}'.",
              f'#include "{ident}_test_data.h"', "", *defs]
    return {f"{ident}_test_data.h": "\n".join(header),
            **_sources(ident, "test_data", lang, "\n".join(source))}


__all__ = [
    "LANG_EXTENSIONS",
    "MAX_IDENTIFIER_CHARS",
    "align_flatbuffer",
    "c_identifier",
    "check_program",
    "data_file_names",
    "golden_vector_files",
    "model_data_files",
    "parse_c_byte_array",
    "write_atomic",
]
