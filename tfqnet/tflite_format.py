"""What a TFLite flatbuffer stores, and how TFLM reads it: one home for each fact.

Every part of tfqnet that counts, packs or recognises stored weights asks this module:
the quantizers (how many bytes a width costs), the export (INT4 packing, compression),
and the micro tools (resources, checks). It needs numpy only, so tools that read
flatbuffers stay free of TensorFlow.
"""

from __future__ import annotations

import numpy as np

#: operators whose input 1 is a constant filter (the tensors tfqnet calls weights)
WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})

#: bits per element of each tensor type that holds integer codes or numbers
ELEMENT_BITS = {"INT2": 2, "INT4": 4, "UINT4": 4, "INT8": 8, "UINT8": 8, "INT16": 16,
                "FLOAT16": 16, "INT32": 32, "FLOAT32": 32, "INT64": 64}
#: bits per element of every type whose data has a fixed size (strings and resources
#: have none): what a constant's buffer must hold, what an arena tensor takes
FIXED_ELEMENT_BITS = {**ELEMENT_BITS, "BOOL": 8, "UINT16": 16, "UINT32": 32, "UINT64": 64,
                      "FLOAT64": 64, "BFLOAT16": 16, "COMPLEX64": 64, "COMPLEX128": 128,
                      "FLOAT8_E4M3FN": 8, "FLOAT8_E5M2": 8}

#: numpy dtype of the tensor types stored one element per item (INT4 is packed)
NUMPY_DTYPES = {"INT8": np.dtype(np.int8), "UINT8": np.dtype(np.uint8),
                "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32),
                "INT64": np.dtype(np.int64), "FLOAT32": np.dtype(np.float32)}

#: the widest weight stored in a packed INT4 tensor (codes -7..7); wider ones are int8
INT4_MAX_BITS = 4


def weight_container_bits(bits: int, per_channel_dense: bool = False) -> int:
    """Bits of the flatbuffer container of ``bits``-bit weights: 4 (packed INT4) or 8.

    Always 8 for a Dense kernel quantized per output channel: TFLM's FULLY_CONNECTED
    refuses per-channel INT4 filters.
    """
    return 4 if bits <= INT4_MAX_BITS and not per_channel_dense else 8


def packed_bytes(count: int, element_bits: int) -> int:
    """Bytes of ``count`` elements of ``element_bits`` bits, packed (INT4: two a byte)."""
    return (count * element_bits + 7) // 8


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """Packed INT4 bytes (two a byte, low nibble first, two's complement) -> ``count``
    int8 codes."""
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    nibbles = np.empty(raw.size * 2, dtype=np.int16)
    nibbles[0::2] = raw & 0x0F
    nibbles[1::2] = raw >> 4
    nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles)
    if nibbles.size < count:
        raise ValueError(f"INT4 buffer holds {nibbles.size} values, tensor needs {count}")
    return nibbles[:count].astype(np.int8)


# --- TFLM compression (lookup-table indices, decoded by the TFLM_DECODE op) --------------

#: the custom operator that expands compressed indices back into int8 codes
DECODE_OP = "TFLM_DECODE"
#: the widest index TFLM compression stores
MAX_INDEX_BITS = 7
#: the decode header each compressed tensor carries
DECODE_HEADER_BYTES = 16
#: Byte of the LUT decode header holding the value-table stride (entries from one
#: channel's table to the next). TFLM's LUT decoder (decode_state_lut.cc,
#: ``DecodeStateLut::Setup``) takes the channel count from the decoded tensor's
#: quantization (one channel per scale) and steps this many entries per channel,
#: whatever the header's axis field says (so does the tflite-micro runtime): one table
#: shared by every channel of a per-channel quantized filter must have stride 0.
LUT_STRIDE_OFFSET = 6
#: Byte of the LUT decode header whose high nibble is the table axis
#: (``LUT_ONE_TABLE_AXIS``: one table for the whole tensor) and low 3 bits the index width
LUT_PARAMS_OFFSET = 5
LUT_ONE_TABLE_AXIS = 0xF
#: Bound on the bytes a compressed filter adds to the flatbuffer besides its indices,
#: header and tables: the decoded tensor (its shape, quantization and layer name), the
#: ancillary tensor, their buffers and the TFLM_DECODE operator; and per output channel
#: of a per-channel kernel room for the copy of its scale and zero point the encoded
#: tensor carries until compaction drops it. Compacted, measured on a MobileNetV2-style
#: model's 1x1 filters compressed alone (24-96 channels): 189-232 bytes, whatever the
#: channel count; filters sharing one table share its ancillary tensor too (9 such
#: filters: ~112 bytes each).
#: Uncompacted, on the digits CNN: 153-177 bytes per tensor, 364-378 with 16 channels,
#: 552-560 with 32. The bound has room for both and longer names.
DECODE_OVERHEAD_BYTES = 384
DECODE_OVERHEAD_PER_CHANNEL = 16
#: how weights may be stored: in their INT4/int8 containers, or TFLM-compressed
STORAGES = ("int4", "compressed")


def lut_weight_bytes(count: int, index_bits: int, tables: int, entries: int) -> int:
    """The weight bytes of a filter of ``count`` weights stored as ``index_bits``-bit
    indices into ``tables`` value tables of ``entries`` int8 values:
    ``ceil(count * index_bits / 8)`` index bytes, the decode header and
    ``tables * entries`` table bytes."""
    return packed_bytes(count, index_bits) + DECODE_HEADER_BYTES + tables * entries


def storage_form(size: int, width: int, storage: str = "int4", tables: int = 1,
                 per_channel_dense: bool = False, channels: int = 1) -> tuple[str, int]:
    """How a kernel of ``size`` weights at ``width`` bits is stored, and its weight bytes.

    ``"int4"`` storage (plain :func:`tfqnet.convert`): its container (``"INT4"`` or
    ``"int8"``, :func:`weight_container_bits`), ``ceil(size * c / 8)`` bytes.
    ``"compressed"`` storage (``convert(..., compress=True)``, TFLM only): the
    ``width``-bit lookup-table indices, decode header and ``tables`` tables of
    ``2**width - 1`` entries (every code of the narrow-range grid) when those plus
    ``DECODE_OVERHEAD_BYTES + DECODE_OVERHEAD_PER_CHANNEL * channels`` are fewer than the
    container bytes: then compression shrinks the file, so ``compress`` stores the
    kernel so (a kernel using fewer codes only gets smaller). Else the container.
    """
    bits = weight_container_bits(width, per_channel_dense)
    packed = packed_bytes(size, bits)
    container = "INT4" if bits == INT4_MAX_BITS else "int8"
    if storage == "int4" or width > MAX_INDEX_BITS:
        return container, packed
    lut = lut_weight_bytes(size, width, tables, 2 ** width - 1)
    overhead = DECODE_OVERHEAD_BYTES + DECODE_OVERHEAD_PER_CHANNEL * channels
    return (f"{width}-bit LUT", lut) if lut + overhead < packed else (container, packed)


def kernel_bytes(size: int, width: int, storage: str = "int4", tables: int = 1,
                 per_channel_dense: bool = False, channels: int = 1) -> int:
    """Weight bytes of a kernel of ``size`` weights stored at ``width`` bits
    (:func:`storage_form`; ``tables``: its value tables, ``channels``: its quantization
    channels)."""
    return storage_form(size, width, storage, tables, per_channel_dense, channels)[1]
