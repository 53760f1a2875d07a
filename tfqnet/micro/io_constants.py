"""The header's constants for each model input and output: C type, shape, element and
byte counts, scale and zero point, and static inline helpers that quantize a float
input and dequantize an output.

Why in the header: every application has to turn its sensor floats into the input
tensor's codes and the output codes back into numbers, and the scale and zero point it
needs are otherwise buried in the flatbuffer. The constants are read from the flatbuffer
itself, so they cannot drift from the model the array holds.

The quantize helper computes what TFLite's QUANTIZE kernel computes (float32 division,
round half away from zero, then the zero point, then saturation), in plain C99 with no
libm call, so it costs a few instructions and no flash for a math library.
"""

from __future__ import annotations

import numpy as np

from tfqnet.export.flatbuffer import FlatbufferModel, Tensor, element_count
from tfqnet.micro.c_names import C_TYPES, float_literal
from tfqnet.tflite_format import NUMPY_DTYPES

#: Integer dtypes the quantize helper is written for; int32's range does not fit a
#: float32 exactly, so a quantized int32 input gets the constants but no helper.
_HELPER_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))


def tensor_quantization(tensor: Tensor) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor quantized tensor; None for a float tensor and
    for one no single positive, finite scale describes (quantized per channel, or a
    corrupt scale), which the header then names instead of giving constants."""
    if not tensor.scales or len(set(tensor.scales)) > 1:
        return None
    scale = float(np.float32(tensor.scales[0]))
    if not (np.isfinite(scale) and scale > 0):
        return None
    zero_point = tensor.zero_points[0] if tensor.zero_points else 0
    return scale, int(zero_point)


def io_constant_lines(graph: FlatbufferModel, ident: str) -> list[str]:
    """The header lines for every input and output of ``graph``, macros ``UPPER_INPUTn_*``
    and ``UPPER_OUTPUTn_*``; needs ``<stdint.h>`` included before them."""
    upper = ident.upper()
    lines = [f"#define {upper}_INPUTS {len(graph.inputs)}",
             f"#define {upper}_OUTPUTS {len(graph.outputs)}"]
    for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
        for k, index in enumerate(indices):
            lines += [""] + _tensor_lines(graph.tensors[index], ident, kind, k)
    return lines


def _tensor_lines(tensor: Tensor, ident: str, kind: str, k: int) -> list[str]:
    prefix = f"{ident.upper()}_{kind.upper()}{k}"
    ctype = C_TYPES.get(NUMPY_DTYPES.get(tensor.type))
    dtype = NUMPY_DTYPES[tensor.type] if ctype is not None else None  # None: no C type
    shape = [max(int(d), 1) for d in tensor.shape]
    count = element_count(tuple(shape))
    quant = tensor_quantization(tensor) if dtype is not None and dtype.kind in "iu" else None
    described = (f"{tensor.type.lower()}, shape [{', '.join(map(str, shape))}], "
                 f"{count} elements")
    if quant is None and tensor.scales:
        described += (f", quantized per channel ({len(tensor.scales)} scales): no single"
                      " scale" if len(set(tensor.scales)) > 1 else ", invalid scale")
    elif quant is None:
        described += ", not quantized"
    lines = [f"// {kind.capitalize()} {k} (tensor {tensor.index}): {described}."]
    if quant:
        lines.append(f"// real value = {prefix}_SCALE * (code - {prefix}_ZERO_POINT)")
    if ctype is not None:
        lines.append(f"#define {prefix}_TYPE {ctype}")
    lines += [f"#define {prefix}_DIMS {len(shape)}",
              f"#define {prefix}_SHAPE {{{', '.join(map(str, shape))}}}",
              f"#define {prefix}_ELEMENTS {count}"]
    if dtype is not None:
        lines.append(f"#define {prefix}_BYTES {count * dtype.itemsize}")
    if quant is None:
        return lines
    scale, zero_point = quant
    lines += [f"#define {prefix}_SCALE {float_literal(scale)}",
              f"#define {prefix}_ZERO_POINT ({zero_point})"]
    if dtype not in _HELPER_DTYPES or not np.iinfo(dtype).min <= zero_point <= np.iinfo(dtype).max:
        return lines
    info = np.iinfo(dtype)
    function = f"{ident}_{'quantize' if kind == 'input' else 'dequantize'}_{kind}{k}"
    if kind == "output":
        return lines + [
            f"static inline float {function}({ctype} code) {{",
            f"  return {prefix}_SCALE * (float)((int32_t)code - {prefix}_ZERO_POINT);",
            "}",
        ]
    # The float is clamped first so that the conversion to an integer is defined for
    # any input (a NaN gives the lowest code); the bounds lie one step past the codes.
    low, high = info.min - zero_point - 1, info.max - zero_point + 1
    return lines + [
        f"// {function}(x): the code for x as TFLite's QUANTIZE computes it (x / SCALE,",
        "// rounded half away from zero, plus ZERO_POINT, saturated).",
        f"static inline {ctype} {function}(float x) {{",
        f"  float q = x / {prefix}_SCALE;",
        "  int32_t code;",
        "  float rest;",
        f"  if (!(q > {float_literal(low)})) q = {float_literal(low)};",
        f"  if (q > {float_literal(high)}) q = {float_literal(high)};",
        "  code = (int32_t)q;  /* toward zero; q - code is exact */",
        "  rest = q - (float)code;",
        "  if (rest >= 0.5f) code += 1;",
        "  else if (rest <= -0.5f) code -= 1;",
        f"  code += {prefix}_ZERO_POINT;",
        f"  if (code < {info.min}) code = {info.min};",
        f"  if (code > {info.max}) code = {info.max};",
        f"  return ({ctype})code;",
        "}",
    ]
