"""The semi-relaxed quantizer and the gates of SRQ, as TensorFlow functions.

The quantizer (mode forward, relaxed-expectation backward), the DropBits keep mask, the
hard-concrete keep-gates of learned widths and their ladder; the formulas are in
:mod:`tfqnet.quantizers.srq`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfqnet import grid
from tfqnet.quantizers.srq.allocator import MIN_BITS
from tfqnet.quantizers.staircase import soft_uniform_staircase

#: midpoints evaluated each side of x in the relaxed expectation
WINDOW = 2
SIGMA_RATIO_INIT = 1.0 / 3.0
SIGMA_RATIO_MIN = 0.05
SIGMA_RATIO_MAX = 0.5
MAX_DROPPED_BITS = 2
#: hard-concrete stretch (Louizos et al., 2018)
HC_BETA, HC_GAMMA, HC_ZETA = 2.0 / 3.0, -0.1, 1.1


def semi_relaxed_quantize(
    x: tf.Tensor, step: tf.Tensor, low: tf.Tensor | float, levels: int, sigma_ratio: tf.Tensor
) -> tf.Tensor:
    """SRQ onto the grid ``step * c``, ``c`` in ``[low, low + levels]`` (``low`` integer).

    Forward: ``step * clip(round_half_up(x / step), low, low + levels)`` (the mode).
    Backward: the gradient of the relaxed expectation
    ``step * (low + sum_j F((x/step - low - 1/2 - j) / sigma_ratio))``, ``j < levels``
    (``F`` the logistic CDF, ``sigma = sigma_ratio * step``), to ``x``, ``step`` and
    ``sigma_ratio``.
    """
    low = tf.cast(low, x.dtype)
    mode = step * tf.clip_by_value(grid.round_half_up(x / step), low, low + levels)
    r = x / step - low - 0.5
    count = soft_uniform_staircase(r, levels, 1.0 / sigma_ratio, WINDOW)
    relaxed = step * (low + count)
    return relaxed + tf.stop_gradient(mode - relaxed)


def drop_mask(count: int, probability: float) -> tf.Tensor:
    """DropBits: ``[count]`` keep flags for the ``count`` lowest-order bits, lowest last.

    Bit ``count - j`` (the j-th lowest) is dropped with probability ``p**j``: the lowest
    with ``p``, each next one only if the one below was dropped, with ``p``.
    """
    if probability <= 0.0 or count == 0:
        return tf.ones([count])
    dropped = tf.math.cumprod(tf.cast(tf.random.uniform([count]) < probability, tf.float32))
    return 1.0 - tf.reverse(dropped, [0])


def hard_concrete_sample(logits: tf.Tensor) -> tf.Tensor:
    """A reparameterised hard-concrete sample in [0, 1] (exact 0 and 1 have mass)."""
    u = tf.random.uniform(tf.shape(logits), 1e-6, 1.0 - 1e-6)
    s = tf.sigmoid((tf.math.log(u) - tf.math.log(1.0 - u) + logits) / HC_BETA)
    return tf.clip_by_value(s * (HC_ZETA - HC_GAMMA) + HC_GAMMA, 0.0, 1.0)


def nonzero_probability(logits: tf.Tensor) -> tf.Tensor:
    """``P(gate > 0)`` of a hard-concrete gate (the L0 probability)."""
    return tf.sigmoid(logits - HC_BETA * math.log(-HC_GAMMA / HC_ZETA))


def ladder_width(keep: np.ndarray | tf.Tensor, lowest: int = MIN_BITS):
    """``lowest +`` the number of consecutive kept gates (keep flags of widths lowest+1..)."""
    if isinstance(keep, np.ndarray):
        return lowest + int(np.cumprod(keep.astype(bool)).sum())
    return lowest + tf.reduce_sum(tf.math.cumprod(tf.cast(keep, tf.float32)))


def combine_ladder(quantized: Sequence[tf.Tensor], gates: tf.Tensor) -> tf.Tensor:
    """``q_0 + sum_i (g_1 ... g_i) (q_i - q_{i-1})``: ``q_i*`` for binary gates."""
    out = quantized[0]
    reach = tf.math.cumprod(gates)
    for i in range(1, len(quantized)):
        out += reach[i - 1] * (quantized[i] - quantized[i - 1])
    return out
