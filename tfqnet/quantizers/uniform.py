"""Uniform quantizers with a learned step size (LSQ, Esser et al., ICLR 2020).

Step sizes are learned as ``log(s)`` (as TQT, Jain et al. 2020, learns log
thresholds): with Adam every update moves a parameter by about the learning rate, which
for a raw step size of ~0.005 would flip its sign within a few steps; in the log
domain the same update is a ~0.1% relative change.

Every tfqnet method deploys onto the grid these quantizers learn directly, so they
are also the reference implementation of the export contract in :mod:`tfqnet.grid`.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfqnet import grid
from tfqnet.core.method import QuantizationMethod, register_method
from tfqnet.core.quantizer import BatchStatistics, Quantizer, register
from tfqnet.quantizers.kernel_views import as_channels, channels_last

_MIN_SCALE = 1e-8


@register
class UniformWeightQuantizer(Quantizer):
    """Symmetric ``bits``-bit weight quantizer with a learned step size.

    Forward: ``w_q = s * clip(round(w / s), -qmax, qmax)``, ``qmax = 2**(bits-1) - 1``.
    Gradient: straight-through for ``w`` inside the range (zero outside); for ``s`` the
    LSQ gradient ``round(w/s) - w/s`` (or ``+-qmax`` when clipped), scaled by
    ``1 / sqrt(N * qmax)`` with N the weights per step size.

    ``s`` is per output channel when ``per_axis`` (the last ``channel_dims`` axes form
    the channel: 2 for a depthwise kernel), else per tensor. It is initialised on the
    first training step to ``min(max|w| / qmax, 2 mean|w| / sqrt(qmax))``: the range
    rule for wide grids, LSQ's rule where clipping outliers pays off (<= 4 bits).
    """

    def __init__(self, bits: int = 8, per_axis: bool = True, channel_dims: int = 1):
        self.bits = grid.check_bits(bits, "weight bits")
        self.per_axis = bool(per_axis)
        self.channel_dims = int(channel_dims)

    def get_config(self) -> dict:
        return {"bits": self.bits, "per_axis": self.per_axis, "channel_dims": self.channel_dims}

    def build(self, tensor_shape, name, layer):
        shape = (math.prod(tensor_shape[-self.channel_dims :]),) if self.per_axis else ()
        log_scale = self.add_state(layer, name + "_log_scale", shape, trainable=True)
        return {"log_scale": log_scale, "initialized": self.add_initialized_flag(layer, name)}

    def initial_scale(self, w: tf.Tensor) -> tf.Tensor:
        qmax = grid.weight_qmax(self.bits)
        absw = tf.abs(as_channels(w, self.per_axis, self.channel_dims))
        by_range = tf.reduce_max(absw, axis=0) / qmax
        by_lsq = 2.0 * tf.reduce_mean(absw, axis=0) / math.sqrt(qmax)
        scale = tf.maximum(tf.minimum(by_range, by_lsq), _MIN_SCALE)
        return scale if self.per_axis else tf.reshape(scale, [])

    def __call__(self, inputs, training, weights, **kwargs):
        state = self.initialize_once(
            weights, ["log_scale"],
            lambda: {"log_scale": tf.math.log(self.initial_scale(inputs))}, training,
        )
        log_scale = state["log_scale"]
        # Per-channel scales broadcast over a [N, channels] view of the kernel.
        per_channel = self.per_axis and self.channel_dims > 1
        x = channels_last(inputs, self.channel_dims) if per_channel else inputs
        if training:
            n = x.shape.num_elements() / (log_scale.shape.num_elements() or 1)
            grad = 1.0 / math.sqrt(n * grid.weight_qmax(self.bits))
            scale = tf.exp(grid.scale_gradient(log_scale, grad))
            out = grid.quantize_symmetric(x, scale, self.bits)
            return tf.reshape(out, tf.shape(inputs)) if per_channel else out
        scale = tf.exp(log_scale)
        on_grid = tf.reshape(grid.quantize_symmetric(x, scale, self.bits), tf.shape(inputs))
        return grid.weight_fake_quant(
            on_grid, scale, self.bits, self.per_axis, self.channel_dims
        )


@register
class UniformActivationQuantizer(Quantizer):
    """Asymmetric ``bits``-bit activation quantizer with a learned step size.

    Forward: ``y = s * (clip(round(x / s) + z, 0, 2**bits - 1) - z)``.
    Gradient: straight-through for ``x`` inside the range; LSQ gradient for ``s``,
    scaled by ``1 / sqrt(N * (2**bits - 1))`` with N the elements per sample.

    The zero point ``z`` is an integer fixed at initialisation (not learned): on the
    first training batch (the global batch under ``tf.distribute``),
    ``lo = min(x, 0)``, ``hi = max(x, 0)``, ``s = (hi - lo) / (2**bits - 1)``
    (tightened to LSQ's ``2 mean|x - lo| / sqrt(Q)`` below 8 bits),
    ``z = round(-lo / s)``. After ReLU ``z = 0``, so no level is wasted on negative
    values. A fixed integer ``z`` keeps the deployed zero point exact while ``s`` learns.
    """

    def __init__(self, bits: int = 8):
        self.bits = grid.check_bits(bits, "activation bits", grid.ACTIVATION_BITS)

    def get_config(self) -> dict:
        return {"bits": self.bits}

    def build(self, tensor_shape, name, layer):
        return {
            "log_scale": self.add_state(layer, name + "_log_scale", trainable=True),
            "zero_point": self.add_state(layer, name + "_zero_point"),
            "initialized": self.add_initialized_flag(layer, name),
        }

    def initial_state(self, data: tf.Tensor | BatchStatistics) -> dict[str, tf.Tensor]:
        """Step size and zero point from a batch (a tensor, or its global statistics)."""
        stats = data if isinstance(data, BatchStatistics) else BatchStatistics.of(data)
        levels = grid.activation_qmax(self.bits)
        lo = tf.minimum(stats.minimum, 0.0)
        hi = tf.maximum(stats.maximum, 0.0)
        scale = (hi - lo) / levels
        if self.bits < 8:
            # mean(x - lo) = mean(x) - lo: the global mean is all a replica can share
            scale = tf.minimum(scale, 2.0 * (stats.mean - lo) / math.sqrt(levels))
        scale = tf.maximum(scale, _MIN_SCALE)
        zero_point = tf.clip_by_value(tf.round(-lo / scale), 0.0, levels)
        return {"log_scale": tf.math.log(scale), "zero_point": zero_point}

    def __call__(self, inputs, training, weights, **kwargs):
        state = self.initialize_from_batch(
            weights, ["log_scale", "zero_point"], inputs, self.initial_state, training
        )
        zero_point = state["zero_point"]
        if training:
            per_sample = inputs.shape[1:].num_elements() or 1
            grad = 1.0 / math.sqrt(per_sample * grid.activation_qmax(self.bits))
            scale = tf.exp(grid.scale_gradient(state["log_scale"], grad))
            return grid.quantize_asymmetric(inputs, scale, zero_point, self.bits)
        return grid.activation_fake_quant(
            inputs, tf.exp(state["log_scale"]), zero_point, self.bits
        )


@register_method
class UniformMethod(QuantizationMethod):
    """``method="uniform"``: learned-step-size uniform quantizers (no options)."""

    name = "uniform"

    def weight_quantizer(self, bits, per_axis, channel_dims):
        return UniformWeightQuantizer(bits, per_axis=per_axis, channel_dims=channel_dims)

    def activation_quantizer(self, bits):
        return UniformActivationQuantizer(bits)
