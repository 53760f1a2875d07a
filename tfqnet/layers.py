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
int32 indices and its CAST takes no uint8, hence the int8 core. :func:`tfqnet.convert`
detects a model whose input feeds a PixelEmbedding and builds that graph (see
:mod:`tfqnet.export.raw_input`).

Two ways into a model: place the layer yourself, or let
``quantize_model(model, pixel_embedding=...)`` replace a float model's input
normalisation with it (:func:`add_pixel_embedding`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import pass_through_config
from tfqnet.core.layer_kinds import register_layer_config
from tfqnet.core.quantizer import register
from tfqnet.errors import UnsupportedLayerError

#: rows of the table: one per 8-bit pixel value
TABLE_ROWS = 256
#: int8 code of pixel 0 (``int8 = pixel - 128``)
INT8_OFFSET = 128
INPUT_DTYPES = ("uint8", "int8")
_MIN_SCALE = 1e-8


def dtype_name(dtype) -> str:
    """"uint8" for "uint8", np.uint8, tf.uint8, ...; anything else unchanged."""
    try:
        return tf.as_dtype(dtype).name
    except TypeError:
        return dtype


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
    ``input_dtype`` is also the input type :func:`tfqnet.convert` deploys by default.
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
        input_dtype = dtype_name(input_dtype)
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



# --- quantize_model(model, pixel_embedding=...) ----------------------------------------

#: keys of ``quantize_model``'s ``pixel_embedding`` dict
PIXEL_EMBEDDING_OPTIONS = ("dim", "bits", "input_dtype", "input_scale", "input_offset")
#: input layers the embedding replaces; their affine map is read, then dropped
_NORMALIZATION_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)
_PROBE_PIXELS = np.array([0.0, 128.0, 255.0])


def add_pixel_embedding(
    model: keras.Model,
    dim: int = 4,
    bits: int = 4,
    input_dtype: str = "uint8",
    input_scale: float | Sequence[float] | None = None,
    input_offset: float | Sequence[float] = 0.0,
) -> keras.Model:
    """``model`` rebuilt to take raw pixels through a :class:`PixelEmbedding` (float copy).

    This is what ``quantize_model(model, pixel_embedding=...)`` applies before
    quantizing. ``model`` takes normalised images: ``input_scale * pixel +
    input_offset`` (per channel or one value), followed by any number of
    ``Rescaling``/``Normalization`` layers, which are removed (their maps are composed
    into that one). Without such layers ``input_scale`` is required; with them it
    defaults to 1 (the model then already takes raw pixels). The input must then feed
    exactly one ``Conv2D`` (channels-last, ``groups=1``), the first conv, whose input
    channels become ``channels * dim``. The new model's input is ``input_dtype``:
    "uint8" pixels or "int8" ``pixel - 128``.

    The first conv's kernel is *derived*, not re-initialised, so the quantized model
    starts where the float one was: with ``x_c(p) = a_c * p + b_c`` the normalised value
    of pixel ``p`` in channel ``c`` and ``p0`` the pixel that normalises to 0 (mean over
    channels, clipped to 0..255), the table encodes ``u(p) = (p - p0) / 255`` with
    column ``k`` shifted by ``(k + 0.5) / dim - 0.5`` grid steps (step
    ``max|u| / (qmax - 0.5)``). The shifts stagger the rounding points, so the mean of
    the ``dim`` quantized entries resolves ``u`` to step / dim (a thermometer code at
    ``bits=2``). The kernel becomes ``K'[i, j, c * dim + k] = K[i, j, c] * 255 * a_c /
    dim``, so ``conv'(embed(p)) ~= conv(x(p))``; the constant ``a_c * p0 + b_c`` (zero
    for one channel) goes into the bias, which is exact except at zero-padded borders
    (padding="same"), where fine-tuning absorbs it.

    Raises:
      UnsupportedLayerError: the model's input cannot take the embedding (not one image
        input, not feeding one Conv2D, a normalisation that is not per-channel affine).
      ValueError: bad options.
    """
    embedding = PixelEmbedding(dim=dim, bits=bits, input_dtype=input_dtype)
    functional = keras.Model(model.inputs, model.outputs, name=model.name) if isinstance(
        model, keras.Sequential) else model
    if len(functional.inputs) != 1:
        raise UnsupportedLayerError(
            f"pixel_embedding needs a model with one image input; {model.name!r} has "
            f"{len(functional.inputs)}. Place tfqnet.PixelEmbedding on the image input yourself."
        )
    image_shape = functional.inputs[0].shape
    if image_shape.rank != 4 or image_shape[-1] is None:
        raise UnsupportedLayerError(
            f"pixel_embedding needs an image input (batch, height, width, channels) with "
            f"known channels; {model.name!r} takes {tuple(image_shape)}."
        )
    config = functional.get_config()
    by_name = {layer["name"]: layer for layer in config["layers"]}
    input_name = config["input_layers"][0][0]

    def consumers(name: str) -> list[str]:
        return [
            layer["name"] for layer in config["layers"]
            if any(inbound[0] == name for node in layer["inbound_nodes"] for inbound in node)
        ]

    normalizations, name = [], input_name
    while True:
        users = consumers(name)
        if len(users) != 1 or len(by_name[users[0]]["inbound_nodes"]) != 1:
            raise UnsupportedLayerError(
                f"pixel_embedding replaces the input of the model's first convolution, but "
                f"{name!r} feeds {len(users)} layer calls ({users}); it needs exactly one "
                "Conv2D reading the (normalised) image. Place tfqnet.PixelEmbedding yourself."
            )
        layer = functional.get_layer(users[0])
        if not isinstance(layer, _NORMALIZATION_LAYERS):
            break
        normalizations.append(layer)
        name = layer.name
    if isinstance(layer, PixelEmbedding):
        raise UnsupportedLayerError(
            f"model {model.name!r} already starts with a PixelEmbedding ({layer.name!r}); "
            "quantize it without pixel_embedding=."
        )
    if type(layer) is not keras.layers.Conv2D or layer.data_format != "channels_last" or (
        layer.groups != 1
    ):
        raise UnsupportedLayerError(
            "pixel_embedding feeds the model's first layer channels * dim embedding "
            "channels, so that layer must be a channels-last Conv2D with "
            f"groups=1; {layer.name!r} is a {type(layer).__name__}. Start the model with a "
            "Conv2D, or place tfqnet.PixelEmbedding in the model yourself."
        )
    conv = layer

    channels = int(image_shape[-1])
    if input_scale is None:
        if not normalizations:
            raise ValueError(
                f"model {model.name!r} has no Rescaling/Normalization layer at its input, so "
                "tfqnet cannot tell how raw pixels map to what it takes; pass "
                "pixel_embedding={'input_scale': s, 'input_offset': o} with "
                "model input = pixel * s + o (e.g. input_scale=1/255 for inputs in [0, 1])."
            )
        input_scale = 1.0
    slope, intercept = _pixel_to_normalized(
        image_shape, channels, input_scale, input_offset, normalizations, model.name
    )

    # the derived table and first-conv weights (see the docstring)
    zero_pixel = float(np.clip(np.mean(-intercept / slope), 0, 255))
    target = (np.arange(TABLE_ROWS) - zero_pixel) / 255.0
    step = max(float(np.abs(target).max()), 1e-3) / (grid.weight_qmax(embedding.bits) - 0.5)
    shifts = ((np.arange(dim) + 0.5) / dim - 0.5) * step
    table = target[:, None] + shifts[None, :]
    kernel = conv.get_weights()[0].astype(np.float64)
    new_kernel = np.repeat(kernel * (255.0 * slope / dim)[None, None, :, None], dim, axis=2)
    bias_shift = np.einsum("ijco,c->o", kernel, slope * zero_pixel + intercept)
    bias = conv.get_weights()[1] if conv.use_bias else np.zeros(conv.filters)
    use_bias = conv.use_bias or bool(np.any(np.abs(bias_shift) > 1e-6))

    # rewire the config: input -> embedding -> first conv; normalisation layers dropped
    taken = {layer["name"] for layer in config["layers"]}
    embed_name = next(n for n in ("pixel_embedding", *(f"pixel_embedding_{i}" for i in
                                                        range(1, 1000))) if n not in taken)
    embed_config = keras.layers.serialize(embedding)
    embed_config["config"]["name"] = embed_name
    embed_config.update(name=embed_name, inbound_nodes=[[[input_name, 0, 0, {}]]])
    removed = {layer.name for layer in normalizations}
    layers = []
    for layer_config in config["layers"]:
        if layer_config["name"] in removed:
            continue
        if layer_config["name"] == input_name:
            layer_config["config"]["dtype"] = input_dtype
            layers += [layer_config, embed_config]
            continue
        if layer_config["name"] == conv.name:
            (((_, _, _, kwargs),),) = layer_config["inbound_nodes"]
            layer_config["inbound_nodes"] = [[[embed_name, 0, 0, kwargs]]]
            layer_config["config"]["use_bias"] = use_bias
            layer_config.pop("build_config", None)  # built on its new input channels
        layers.append(layer_config)
    config["layers"] = layers
    custom_objects = {type(layer).__name__: type(layer) for layer in functional.layers}
    rebuilt = keras.Model.from_config(config, custom_objects=custom_objects)

    for layer in rebuilt.layers:
        if layer.name == embed_name:
            layer.embeddings.assign(table)
            layer.scale.assign(step)
        elif layer.name == conv.name:
            layer.set_weights([new_kernel] + ([bias + bias_shift] if use_bias else []))
        elif not isinstance(layer, keras.layers.InputLayer):
            layer.set_weights(functional.get_layer(layer.name).get_weights())
    return rebuilt


def _pixel_to_normalized(
    image_shape: tf.TensorShape,
    channels: int,
    input_scale,
    input_offset,
    normalizations: list,
    model_name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(a, b)`` with ``normalised = a * pixel + b``, probed through the
    model's normalisation layers (which must be affine and the same at every position)."""
    try:
        scale = np.broadcast_to(np.asarray(input_scale, np.float64), (channels,))
        offset = np.broadcast_to(np.asarray(input_offset, np.float64), (channels,))
    except ValueError:
        raise ValueError(
            f"input_scale/input_offset must be one number or one per channel ({channels}); "
            f"got {input_scale!r} and {input_offset!r}."
        ) from None
    height, width = (d if d is not None else 1 for d in image_shape[1:3])
    values = _PROBE_PIXELS[:, None] * scale + offset  # (probes, channels)
    x = tf.constant(np.broadcast_to(values[:, None, None, :], (3, height, width, channels)),
                    tf.float32)
    for layer in normalizations:
        x = layer(x)
    x = x.numpy().astype(np.float64)
    tolerance = 1e-4 * max(1.0, float(np.abs(x).max()))
    intercept = x[0, 0, 0]
    slope = (x[2, 0, 0] - intercept) / 255.0
    per_position = np.abs(x - x[:, :1, :1]).max() > tolerance
    not_affine = np.abs(x[1, 0, 0] - (128.0 * slope + intercept)).max() > tolerance
    if per_position or not_affine or x.shape[-1] != channels:
        names = [layer.name for layer in normalizations]
        raise UnsupportedLayerError(
            f"pixel_embedding reads the input normalisation of {model_name!r} ({names}) as "
            "one affine map per channel, but it varies across positions or is not affine. "
            "Normalise per channel (e.g. Normalization(axis=-1)), or place "
            "tfqnet.PixelEmbedding yourself."
        )
    if np.any(np.abs(slope) < 1e-12):
        raise ValueError("input_scale maps every pixel to one value; it must be non-zero.")
    return slope, intercept
