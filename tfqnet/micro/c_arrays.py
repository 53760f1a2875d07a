"""C sources for a board: the aligned model array, golden test vectors, a check program.

Why not TFLM's generate_cc_arrays.py: it does not re-align the flatbuffer (the
converter's output is not 16-byte aligned inside, and an unaligned tensor buffer
hard-faults a Cortex-M4F), and its arrays are C++ only. Here the flatbuffer goes
through tflite_micro's aligner first, and the array is ``alignas(16)`` in both C11
and C++11, ``const`` (so it lands in flash, .rodata) and ``extern "C"`` (so C and
C++ translation units share one symbol).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfqnet._files import write_atomic
from tfqnet.errors import InvalidModelFileError
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.micro.isolated import describe_exit, run_python

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

_C_TYPES = {
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int16): "int16_t",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.float32): "float",
}


#: Longest identifier :func:`c_identifier` returns. Why: C guarantees that only the
#: first 63 characters of a name tell it apart (C99 5.2.4.1), and the generated names
#: add up to 18 characters to it (``NAME_TENSOR_ARENA_SIZE``).
MAX_IDENTIFIER_CHARS = 40


def c_identifier(name: str) -> str:
    """The C identifier for a user-given model name, the only form of the name that the
    generated sources contain (in their comments too): each run of characters other
    than ASCII letters and digits becomes one ``_`` (``my-model.v2`` -> ``my_model_v2``;
    C++ reserves names with ``__``), leading and trailing ``_`` are dropped (C reserves
    names that start with one), and a leading digit gets ``m_``.

    Raises ValueError for a name with control characters (a newline in a name would
    end a comment in the sources), one with nothing left, or one longer than
    :data:`MAX_IDENTIFIER_CHARS`.
    """
    shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
    if not name.isprintable():
        raise ValueError(f"the model name {shown} contains control characters; give "
                         "--name a C identifier like 'digits'")
    ident = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")
    if not ident:
        raise ValueError(f"the model name {shown} has no ASCII letters or digits; give "
                         "--name a C identifier like 'digits'")
    ident = "m_" + ident if ident[0].isdigit() else ident
    if len(ident) > MAX_IDENTIFIER_CHARS:
        raise ValueError(f"the model name {shown} makes a C identifier of {len(ident)} "
                         f"characters; give --name at most {MAX_IDENTIFIER_CHARS} (C tells "
                         "names apart by their first 63 characters, and the generated "
                         "names add up to 18)")
    return ident


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
        items = [f"{float(v):.9g}f" if np.isfinite(v) else "0.0f" for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    per_line = 16
    return "\n".join(
        "    " + ", ".join(items[i : i + per_line]) + ","
        for i in range(0, len(items), per_line)
    )


def model_data_files(name: str, model: bytes, arena_bytes: int | None = None,
                     arena_minimum: int | None = None,
                     flash: dict[str, int] | None = None) -> dict[str, str]:
    """NAME_model_data.h / .cc for an (already aligned) flatbuffer; ``flash``: its
    :func:`~tfqnet.export.flatbuffer.flash_breakdown`, noted in the header.

    The .cc file is valid C11 too (compile it with ``-x c``); the header declares the
    array ``extern "C"`` so both languages link to the same symbol.
    """
    ident = c_identifier(name)
    upper = ident.upper()
    guard = f"{upper}_MODEL_DATA_H_"
    header = [
        f"// Generated by tfqnet export-c: model '{ident}', {len(model)} bytes, 16-byte aligned.",
    ]
    if flash:
        header.append("// Flash by part (bytes): "
                      + ", ".join(f"{part} {n}" for part, n in flash.items()) + ".")
    header += [
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        f"#define {upper}_MODEL_DATA_LEN {len(model)}u",
    ]
    if arena_bytes is not None:
        header += [
            "",
            "// Tensor arena: the smallest size the TFLM runtime accepted for this model"
            + (f" ({arena_minimum} bytes)" if arena_minimum is not None else ""),
            "// plus tfqnet's margin (tfqnet.micro.arena.ARENA_MARGIN), rounded to 16 bytes.",
            f"#define {upper}_TENSOR_ARENA_SIZE {arena_bytes}u",
        ]
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
        "// Valid C11 and C++11. const: the array stays in flash (.rodata).",
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
    return {
        f"{ident}_model_data.h": "\n".join(header),
        f"{ident}_model_data.cc": "\n".join(source),
    }


def parse_c_byte_array(source: str, symbol: str) -> bytes:
    """Reads back the bytes of ``symbol``'s initializer from generated C (for tests/tools)."""
    match = re.search(re.escape(symbol) + r"\s*\[[^\]]*\]\s*=\s*\{([^}]*)\}", source)
    if match is None:
        raise ValueError(f"no array {symbol} in the source")
    return bytes(int(tok, 0) for tok in re.findall(r"0x[0-9a-fA-F]+|\d+", match.group(1)))


def golden_vector_files(name: str, inputs: Sequence[np.ndarray],
                    outputs: Sequence[np.ndarray]) -> dict[str, str]:
    """NAME_test_data.h / .cc: golden vectors, one ``[COUNT][ELEMENTS]`` array per tensor.

    ``inputs``/``outputs`` hold one array per model input/output, each of shape
    (COUNT, ...) in the tensor's own dtype (the codes the board reads and writes).
    """
    ident = c_identifier(name)
    upper = ident.upper()
    count = int(inputs[0].shape[0])
    guard = f"{upper}_TEST_DATA_H_"
    header = [
        f"// Generated by tfqnet export-c: {count} golden vector(s) computed by the TFLM",
        f"// runtime (reference kernels) for model '{ident}'.",
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
            if array.dtype not in _C_TYPES:
                raise ValueError(f"{kind} {index} has dtype {array.dtype}; no C type for it")
            ctype = _C_TYPES[array.dtype]
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
            f"{ident}_test_data.cc": "\n".join(source)}


def check_program(name: str, input_count: int, output_dtypes: Sequence[np.dtype],
                  float_tolerance: float = 1e-5) -> dict[str, str]:
    """NAME_check.cc: runs every golden vector on the board and prints PASS/FAIL each.

    Build it in a TFLM checkout together with the generated .cc files. Integer
    outputs must match exactly (reference kernels are deterministic integer code);
    float outputs within ``float_tolerance``. Exits non-zero when a vector fails.
    """
    ident = c_identifier(name)
    upper = ident.upper()
    compare = []
    for index, dtype in enumerate(output_dtypes):
        ctype = _C_TYPES[np.dtype(dtype)]
        want = f"g_{ident}_output{index}[v]"
        if np.dtype(dtype) == np.float32:
            test = f"std::fabs(got[i] - {want}[i]) > {float_tolerance}f"
        else:
            test = f"got[i] != {want}[i]"
        compare.append(
            f"""    {{
      const {ctype}* got = interpreter.typed_output_tensor<{ctype}>({index});
      for (int i = 0; i < {upper}_OUTPUT{index}_SIZE; ++i) {{
        if ({test}) {{ ok = false; ++mismatches; }}
      }}
    }}"""
        )
    return {
        f"{ident}_check.cc": f"""\
// Generated by tfqnet export-c: runs the golden vectors of model '{ident}' with TFLM
// and prints PASS/FAIL per vector. Build inside a TFLM checkout with
// {ident}_model_data.cc and {ident}_test_data.cc; returns 0 when every vector passes.
#include <cmath>
#include <cstring>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/schema/schema_generated.h"

#ifndef TFLITE_SCHEMA_VERSION  // tensorflow/lite/version.h, not in every TFLM checkout
#define TFLITE_SCHEMA_VERSION 3
#endif

#include "{ident}_model_data.h"
#include "{ident}_op_resolver.h"
#include "{ident}_test_data.h"

namespace {{
alignas(16) uint8_t tensor_arena[{upper}_TENSOR_ARENA_SIZE];
}}  // namespace

int main() {{
  const tflite::Model* model = tflite::GetModel(g_{ident}_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {{
    MicroPrintf("FAIL: schema version %d, expected %d", static_cast<int>(model->version()),
                TFLITE_SCHEMA_VERSION);
    return 1;
  }}
  {ident}_OpResolver resolver;
  if ({ident}_RegisterOps(resolver) != kTfLiteOk) {{
    MicroPrintf("FAIL: op registration");
    return 1;
  }}
  tflite::MicroInterpreter interpreter(model, resolver, tensor_arena,
                                       {upper}_TENSOR_ARENA_SIZE);
  if (interpreter.AllocateTensors() != kTfLiteOk) {{
    MicroPrintf("FAIL: AllocateTensors (arena %d bytes)", {upper}_TENSOR_ARENA_SIZE);
    return 1;
  }}
  MicroPrintf("arena used: %d of %d bytes", static_cast<int>(interpreter.arena_used_bytes()),
              {upper}_TENSOR_ARENA_SIZE);
  int failed = 0;
  for (int v = 0; v < {upper}_TEST_COUNT; ++v) {{
{_copy_inputs(ident, upper, input_count)}
    if (interpreter.Invoke() != kTfLiteOk) {{
      MicroPrintf("vector %d: FAIL (Invoke error)", v);
      ++failed;
      continue;
    }}
    bool ok = true;
    int mismatches = 0;
{chr(10).join(compare)}
    if (ok) {{
      MicroPrintf("vector %d: PASS", v);
    }} else {{
      MicroPrintf("vector %d: FAIL (%d mismatching values)", v, mismatches);
      ++failed;
    }}
  }}
  MicroPrintf("%d/%d vectors passed", {upper}_TEST_COUNT - failed, {upper}_TEST_COUNT);
  return failed == 0 ? 0 : 1;
}}
"""
    }


def _copy_inputs(ident: str, upper: str, input_count: int) -> str:
    cases = "\n".join(
        f"        case {k}: src = g_{ident}_input{k}[v]; "
        f"bytes = sizeof(g_{ident}_input{k}[v]); break;"
        for k in range(input_count)
    )
    return f"""\
    for (int k = 0; k < {upper}_TEST_INPUTS; ++k) {{
      TfLiteTensor* input = interpreter.input(k);
      const void* src = nullptr;
      size_t bytes = 0;
      switch (k) {{
{cases}
        default: break;
      }}
      if (src == nullptr || bytes != input->bytes) {{
        MicroPrintf("FAIL: input %d has %d bytes, the vector %d", k,
                    static_cast<int>(input->bytes), static_cast<int>(bytes));
        return 1;
      }}
      std::memcpy(input->data.raw, src, bytes);
    }}"""


__all__ = [
    "MAX_IDENTIFIER_CHARS",
    "align_flatbuffer",
    "c_identifier",
    "check_program",
    "model_data_files",
    "parse_c_byte_array",
    "golden_vector_files",
    "write_atomic",
]
