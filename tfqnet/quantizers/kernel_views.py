"""Views of a kernel by output channel, shared by the weight quantizers.

A kernel's output channel is formed by its last ``channel_dims`` axes (1 for Conv and
Dense kernels, 2 for a depthwise kernel ``[h, w, c, m]``, whose ``c * m`` outputs are
the channels TFLite quantizes).
"""

from __future__ import annotations

import math

import tensorflow as tf


def channels_last(x: tf.Tensor, channel_dims: int) -> tf.Tensor:
    """``x`` as ``[N, channels]``, channels being its ``channel_dims`` last axes."""
    channels = math.prod(x.shape[-channel_dims:])
    return tf.reshape(x, [-1, channels])


def as_channels(x: tf.Tensor, per_axis: bool, channel_dims: int) -> tf.Tensor:
    """``x`` as ``[N, C]``: its C output channels when ``per_axis``, else one column."""
    return channels_last(x, channel_dims) if per_axis else tf.reshape(x, [-1, 1])


def channel_view(x: tf.Tensor, channel_dims: int) -> tf.Tensor:
    """``x`` with its last ``channel_dims`` axes merged into one last axis, rank kept
    (a depthwise kernel ``[h, w, c, m]`` becomes ``[h, w, 1, c * m]``)."""
    shape = x.shape
    channels = math.prod(shape[-channel_dims:])
    return tf.reshape(x, [*shape[:-channel_dims], *([1] * (channel_dims - 1)), channels])
