"""Names and literals shared by the generated C sources: the model's C identifier, the
C type of each tensor dtype, and float literals that read back as the same float32.

Its own module because the model data, the I/O constants, the check program and the op
resolver all use these, and none of them should import another to get them.
"""

from __future__ import annotations

import re

import numpy as np

#: Longest identifier :func:`c_identifier` returns. Why: C guarantees that only the
#: first 63 characters of a name tell it apart (C99 5.2.4.1), and the generated names
#: add up to :data:`GENERATED_SUFFIX_CHARS` characters to it.
MAX_IDENTIFIER_CHARS = 40
#: The most characters a generated name adds to the model's identifier
#: (``_dequantize_output12``; ``_ARENA_CMSIS_NN_MVE`` is 19).
GENERATED_SUFFIX_CHARS = 20

#: C type of the codes a tensor of each dtype holds.
C_TYPES = {
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int16): "int16_t",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.float32): "float",
}

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
                         f"names add up to {GENERATED_SUFFIX_CHARS})")
    return ident


def float_literal(value: float) -> str:
    """A C ``float`` literal that a C compiler reads back as ``np.float32(value)``
    exactly (9 significant digits round-trip every float32); non-finite values, which
    no C literal spells, raise ValueError."""
    value32 = np.float32(value)
    if not np.isfinite(value32):
        raise ValueError(f"{value!r} has no C float literal")
    text = f"{float(value32):.9g}"
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"
