"""The export grid: the integer codes every tfqnet quantizer lands on.

This module is the single place where tfqnet's quantizers meet TFLite. Whatever a
method learns (a step size, a sigmoid sum, a ternary threshold, a bit-width), in
inference mode it produces values ``scale * code`` with integer codes and hands them
to :func:`weight_fake_quant` or :func:`activation_fake_quant`. Those emit
TensorFlow FakeQuant ops whose min/max place the codes exactly on the grid the
TFLite converter derives from them, so the converted integer model holds exactly
the trained values.

Weights: symmetric, narrow range, zero point 0. Codes of a ``bits``-bit weight are
``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``. Weights of 4 bits or fewer are stored in a
4-bit container (packed INT4 in the flatbuffer: codes -7..7), wider ones in int8
(codes -127..127); the container does not change the values, only their storage.
A narrower grid is stored spread over its container (a ternary code ``c`` as ``7c`` at
a seventh of the scale): the values are the same, and the int32 bias, quantized at
input scale times weight scale, gets a grid 7 times finer (measured: with codes
-1..1, bias rounding alone moved about a tenth of a ternary layer's outputs by one
step).
A Dense kernel quantized per output channel is always int8: TFLM's FULLY_CONNECTED
refuses per-channel INT4 filters, and the TFLite converter refuses per-axis Dense
kernels altogether, so :func:`tfqnet.convert` traces them per tensor (an
:class:`ExportMode`) and writes their channel scales into the flatbuffer afterwards
(:mod:`tfqnet.export.per_channel_dense`). The container rule itself is
:func:`tfqnet.tflite_format.weight_container_bits`.

Activations: asymmetric, ``bits`` in 2..8, levels ``scale * (q - zero_point)`` for
``q in [0, 2**bits - 1]`` with an integer ``zero_point``. TFLite has no 4-bit
activation tensors, so a k-bit activation lives in an int8 tensor with the same scale:
int8 code ``q - 128``. The bottom of the k-bit range is the bottom of the int8 range;
the top is kept by a MINIMUM op (which TFLM runs on int8) when ``bits < 8``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

import tensorflow as tf

from tfqnet.tflite_format import weight_container_bits

WEIGHT_BITS = range(2, 9)
ACTIVATION_BITS = range(2, 9)


def check_bits(bits: int, what: str, allowed: range = WEIGHT_BITS) -> int:
    """Validates a bit-width and returns it as an int."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ValueError(
            f"{what} must be an integer from {allowed.start} to {allowed.stop - 1}, got {bits!r}."
        )
    return bits


def weight_qmax(bits: int) -> int:
    """Largest weight code of a symmetric narrow-range ``bits``-bit grid."""
    return 2 ** (bits - 1) - 1


def code_spread(bits: int, storage_bits: int) -> int:
    """The factor a ``bits``-bit code is stored multiplied by in a ``storage_bits``
    container: the largest that keeps every code in the container's range."""
    return weight_qmax(storage_bits) // weight_qmax(bits)


def is_per_channel_dense(kernel_rank: int, per_axis: bool) -> bool:
    """A kernel of rank 2 ([in, out]: Dense) quantized per output channel."""
    return per_axis and kernel_rank == 2


def activation_qmax(bits: int) -> int:
    """Largest code of an unsigned ``bits``-bit activation grid."""
    return 2**bits - 1


# --- differentiable pieces used in training mode -------------------------------------


def round_half_up(x: tf.Tensor) -> tf.Tensor:
    """``floor(x + 0.5)``: the rounding of TF's FakeQuant ops, so training and export
    agree on ties too (``tf.round`` rounds half to even)."""
    return tf.floor(x + 0.5)


def round_ste(x: tf.Tensor) -> tf.Tensor:
    """Round half up; the gradient passes straight through (identity)."""
    return x + tf.stop_gradient(round_half_up(x) - x)


def scale_gradient(x: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``factor``.

    LSQ (Esser et al., 2020) scales the step-size gradient by 1/sqrt(N * qmax) so that
    the step size learns at the same pace as the weights it quantizes.
    """
    return tf.stop_gradient(x - x * factor) + x * factor


def quantize_symmetric(x: tf.Tensor, scale: tf.Tensor, bits: int) -> tf.Tensor:
    """``scale * clip(round(x / scale), -qmax, qmax)`` with straight-through rounding.

    Gradients: d/dx is 1 inside the clip range and 0 outside; d/dscale is
    ``round(x/s) - x/s`` inside and ``+-qmax`` outside (the LSQ step-size gradient).
    """
    qmax = weight_qmax(bits)
    return tf.clip_by_value(round_ste(x / scale), -qmax, qmax) * scale


def quantize_asymmetric(
    x: tf.Tensor, scale: tf.Tensor, zero_point: tf.Tensor, bits: int
) -> tf.Tensor:
    """``scale * (clip(round(x / scale) + zp, 0, 2**bits - 1) - zp)``, straight-through.

    ``zero_point`` is an integer-valued tensor and gets no gradient.
    """
    zero_point = tf.stop_gradient(zero_point)
    q = tf.clip_by_value(round_ste(x / scale) + zero_point, 0.0, activation_qmax(bits))
    return (q - zero_point) * scale


# --- inference mode: the export contract -----------------------------------------------


def weight_fake_quant(
    values: tf.Tensor, scale: tf.Tensor, bits: int, per_axis: bool, channel_dims: int = 1
) -> tf.Tensor:
    """FakeQuant for a kernel already on the grid ``scale * code``, |code| <= qmax(bits).

    ``scale`` is a scalar, or a vector over the output channels when ``per_axis``
    (the last ``channel_dims`` axes of the kernel: 2 for a depthwise kernel
    [h, w, c, m]). The op's range is the storage container's (+-7 or +-127 codes,
    narrow range); a code is stored as ``code * code_spread(bits, container)``, so
    every level of a ``bits``-bit grid maps to its own integer code and converts
    exactly; kernels of <= 4 bits become packed INT4 tensors (except a per-channel
    Dense kernel, always int8).
    """
    dense = is_per_channel_dense(values.shape.rank, per_axis)
    storage = weight_container_bits(bits, dense)
    scale = scale / code_spread(bits, storage)  # the stored step (module docstring)
    limit = weight_qmax(storage) * scale
    mode = getattr(_EXPORT, "mode", None)
    if dense and mode is not None:
        return mode.per_channel_dense_kernel(values, scale, storage)
    if not per_axis:
        return tf.quantization.fake_quant_with_min_max_vars(
            values, -limit, limit, num_bits=storage, narrow_range=True
        )
    # Quantize a depthwise kernel [h, w, c, m] in TFLite's filter layout [1, h, w, c*m]:
    # otherwise the converter cannot move the quantized axis through its reshape.
    shape = values.shape
    tflite_shape = [1, shape[0], shape[1], shape[2] * shape[3]] if channel_dims == 2 else None
    view = tf.reshape(values, tflite_shape) if tflite_shape else values
    out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        view, -limit, limit, num_bits=storage, narrow_range=True
    )
    return tf.reshape(out, shape) if tflite_shape else out


# --- the seam an export mode plugs into ---------------------------------------------------


class ExportMode(Protocol):
    """What an export context (owned by :mod:`tfqnet.export`) changes in the inference
    graph while the converter traces it."""

    def per_channel_dense_kernel(
        self, values: tf.Tensor, scale: tf.Tensor, storage_bits: int
    ) -> tf.Tensor:
        """The FakeQuant to emit for a per-channel Dense kernel ``values`` (on the grid
        ``scale * code``, ``scale`` per output channel) in a ``storage_bits`` container."""


_EXPORT = threading.local()


@contextlib.contextmanager
def export_mode(mode: ExportMode) -> Iterator[ExportMode]:
    """Makes :func:`weight_fake_quant` consult ``mode`` while active (no nesting)."""
    if getattr(_EXPORT, "mode", None) is not None:
        raise RuntimeError("export modes do not nest")
    _EXPORT.mode = mode
    try:
        yield mode
    finally:
        _EXPORT.mode = None


def activation_fake_quant(
    x: tf.Tensor, scale: tf.Tensor, zero_point: tf.Tensor, bits: int
) -> tf.Tensor:
    """FakeQuant of an activation onto the ``bits``-bit grid, held in an int8 tensor.

    The int8 tensor has step ``scale`` and zero point ``zero_point - 128``; for
    ``bits < 8`` a MINIMUM at level ``2**bits - 1`` keeps the k-bit clamp in the
    deployed graph (TFLite requantization only saturates at the int8 ends).
    """
    zero_point = tf.stop_gradient(zero_point)
    if bits < 8:
        x = tf.minimum(x, (activation_qmax(bits) - zero_point) * scale)
    return tf.quantization.fake_quant_with_min_max_vars(
        x, -zero_point * scale, (255.0 - zero_point) * scale, num_bits=8, narrow_range=False
    )
