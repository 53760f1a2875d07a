"""Pixel embedding (Tokunaga et al., LeapMind): a fully quantized first layer.

Each raw 8-bit pixel value ``p`` (0..255), per channel, selects row ``p`` of a
trainable table ``E`` of shape ``[256, dim]`` whose entries are quantized to ``bits``
bits. An image ``[B, H, W, C]`` becomes ``[B, H, W, C * dim]`` low-bit channels, so the
first convolution sees a quantized input instead of a float or 8-bit normalised image,
and the deployed first layer is a table lookup (TFLite GATHER) over an int8 constant.

Deployment (TFLite Micro reference kernels, TF 2.21 converter): the converted graph is

    int8 image (pixel - 128) -> CAST int8->int32 -> ADD 128 -> GATHER(int8 table) -> RESHAPE

and for a uint8 image a ``QUANTIZE`` uint8 -> int8 (scale 1, zero point 0 -> -128) in
front, the same op the converter itself uses for uint8 model I/O. TFLM's GATHER needs
int32 indices and its CAST takes no uint8, hence the int8 core. The converter cannot
emit that QUANTIZE for an integer model input, so :func:`convert_raw_input` adds it to
the flatbuffer (see :func:`tfqnet.convert.raw_input.prepend_uint8_input`).
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.quantize.configs import pass_through_config
from tfqnet.quantize.registry import register_layer_config
from tfqnet.quantizers.base import register

#: rows of the table: one per 8-bit pixel value
TABLE_ROWS = 256
#: int8 code of pixel 0 (``int8 = pixel - 128``)
INT8_OFFSET = 128
INPUT_DTYPES = ("uint8", "int8")
_MIN_SCALE = 1e-8


@register
class PixelEmbedding(keras.layers.Layer):
    """Maps each raw pixel, per channel, to a ``bits``-bit vector of length ``dim``.

    Forward: ``y[b, h, w, c * dim + k] = Q(E)[idx(x[b, h, w, c]), k]`` with
    ``Q(E) = s * clip(round(E / s), -qmax, qmax)``, ``qmax = 2**(bits - 1) - 1`` (the
    symmetric weight grid of :mod:`tfqnet.grid`), ``idx = p`` for a uint8 pixel and
    ``idx = p + 128`` for an int8 one (``int8 = pixel - 128``): pixel 0 -> row 0,
    pixel 255 -> row 255, always computed in integers.

    Gradient: straight-through for the table (``dL/dE[r] = dL/dQ(E)[r]`` inside the
    clip range, 0 outside), summed over the pixels that selected row ``r``; the step
    ``s`` gets LSQ's gradient (``round(E/s) - E/s`` or ``+-qmax`` when clipped), scaled
    by ``1 / sqrt(256 * dim * qmax)``. Pixels (integers) get none.

    In inference mode the table goes through an 8-bit narrow-range FakeQuant of range
    ``+-127 s``: every ``bits``-bit level is an exact int8 code, and the int8 container
    (not packed INT4) is what TFLM's GATHER reads.

    Defaults ``dim=4, bits=4``: with 15 levels per entry a row has 15**4 >> 256 possible
    codes, so the table can keep every pixel value distinct (no information lost against
    an 8-bit input), while the first convolution sees only 4 channels per colour channel
    (4x the MACs of a 1-channel first layer, 1 KiB of int8 table). ``bits=2`` (ternary)
    is the paper's extreme; raise ``dim`` with it.

    Inputs: integer tensors carry their own encoding (uint8 pixels, int8 ``pixel - 128``);
    a float tensor holding whole pixel values is read in the ``input_dtype`` encoding.
    ``input_dtype`` also picks the input type :func:`convert_raw_input` deploys.
    """

    #: read by tfqnet's layout transform: the model input feeding this layer gets no
    #: 8-bit input quantizer (the raw pixel values are the indices).
    takes_raw_input = True

    def __init__(
        self,
        dim: int = 4,
        bits: int = 4,
        input_dtype: str = "uint8",
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        if input_dtype not in INPUT_DTYPES:
            raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}.")
        self.dim = dim
        self.bits = grid.check_bits(bits, "pixel embedding bits")
        self.input_dtype = input_dtype
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape) -> None:
        self.embeddings = self.add_weight(
            "embeddings",
            shape=(TABLE_ROWS, self.dim),
            initializer=self.embeddings_initializer,
            trainable=True,
        )
        # The range rule max|E| / qmax of the initial table (uniform init: +-0.05).
        with tf.init_scope():  # the freshly initialised values, also while tracing
            limit = float(tf.reduce_max(tf.abs(self.embeddings)))
        self.scale = self.add_weight(
            "scale",
            shape=(),
            initializer=keras.initializers.Constant(max(limit, 1e-3) / grid.weight_qmax(self.bits)),
            trainable=True,
        )
        super().build(input_shape)

    def indices(self, x: tf.Tensor) -> tf.Tensor:
        """Table rows (int32) of pixels ``x``: integer arithmetic only."""
        if x.dtype == tf.uint8:
            return tf.cast(x, tf.int32)
        if x.dtype == tf.int8:
            return tf.cast(x, tf.int32) + INT8_OFFSET
        if x.dtype.is_floating:
            # whole pixel values held in a float tensor: round, never truncate
            lo = -INT8_OFFSET if self.input_dtype == "int8" else 0
            codes = tf.cast(tf.clip_by_value(tf.round(x), lo, lo + TABLE_ROWS - 1), tf.int32)
            return codes - lo
        raise TypeError(f"PixelEmbedding takes uint8, int8 or float pixels, got {x.dtype.name}.")

    def quantized_table(self, training: bool | tf.Tensor) -> tf.Tensor:
        """``Q(E)``: straight-through in training, exact int8 FakeQuant in inference."""
        scale = tf.maximum(self.scale, _MIN_SCALE)

        def train() -> tf.Tensor:
            grad = 1.0 / math.sqrt(TABLE_ROWS * self.dim * grid.weight_qmax(self.bits))
            return grid.quantize_symmetric(
                self.embeddings, grid.scale_gradient(scale, grad), self.bits
            )

        def infer() -> tf.Tensor:
            on_grid = grid.quantize_symmetric(self.embeddings, scale, self.bits)
            # 8-bit container: GATHER in TFLM reads int8 tables, not packed INT4
            return grid.weight_fake_quant(on_grid, scale, 8, per_axis=False)

        if training is None:
            training = False
        return tf.__internal__.smart_cond.smart_cond(training, train, infer)

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        rows = tf.gather(self.quantized_table(training), self.indices(inputs))
        inner = inputs.shape[1:-1]
        if inner.is_fully_defined():
            # a constant shape: a computed one (SHAPE, STRIDED_SLICE, CONCATENATION) is
            # unknown when TFLM prepares RESHAPE, which then fails
            shape = [-1, *inner.as_list(), inputs.shape[-1] * self.dim]
        else:
            shape = tf.concat([tf.shape(inputs)[:-1], [inputs.shape[-1] * self.dim]], 0)
        return tf.reshape(rows, shape)

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return input_shape[:-1].concatenate([input_shape[-1] * self.dim])

    def compute_output_signature(self, input_signature):
        shape = self.compute_output_shape(input_signature.shape)
        return tf.TensorSpec(shape, self.compute_dtype)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "dim": self.dim,
            "bits": self.bits,
            "input_dtype": self.input_dtype,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


# The layer quantizes its own table and its output is the table's int8 grid (GATHER
# keeps its params' scale), so inside quantize_model it needs no further quantizer.
register_layer_config(PixelEmbedding, lambda layer, registry: pass_through_config())


def convert_raw_input(*args, **kwargs) -> bytes:
    """See :func:`tfqnet.convert.raw_input.convert_raw_input` (imported lazily)."""
    from tfqnet.convert.raw_input import convert_raw_input as _convert

    return _convert(*args, **kwargs)
