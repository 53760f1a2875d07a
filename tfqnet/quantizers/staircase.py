"""The staircase primitive of QN and SRQ: a sum of shifted sigmoids and its hard limit.

* :func:`soft_staircase`: ``y = sum_i s_i * sigmoid(T * (u - b_i))``; closed-form
  gradients ``d/du = T sum_i s_i sig_i (1 - sig_i)``, ``d/db_i = -T sum(dy s_i sig_i')``,
  ``d/dT = sum(dy sum_i s_i sig_i' (u - b_i))``.
* :func:`soft_uniform_staircase`: ``y = sum_{i<n} sigmoid(T * (r - i))`` from the
  ``2 * window + 1`` terms around ``r``; gradient: that of the evaluated terms (the
  window centre gets none).
* :func:`hard_staircase`: ``y = sum_i s_i * [u >= b_i]``, the ``T -> inf`` limit; no
  gradient (a step function).
* :func:`kmeans_1d`, :func:`kmeans_thresholds`: Lloyd's k-means of a tensor's values
  and the midpoints between its centres; initialisation only, no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

#: thresholds each side of the input kept in the windowed sum of large uniform sets
WINDOW = 8
KMEANS_ITERATIONS = 20


def _unbroadcast(grad: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``grad`` of a broadcast result summed back to the shape of the input ``like``."""
    _, axes = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(grad), s1=tf.shape(like))
    return tf.reshape(tf.reduce_sum(grad, axes), tf.shape(like))


def soft_staircase(
    u: tf.Tensor, thresholds: tf.Tensor, steps: Sequence[float], temperature: tf.Tensor
) -> tf.Tensor:
    """``sum_i steps_i * sigmoid(T * (u - thresholds_i))``, exact, with its gradient.

    Gradients (closed form, ``sig_i' = sig_i (1 - sig_i)``)::

        d/du   = T * sum_i steps_i sig_i'
        d/db_i = -T * sum_elements(dy * steps_i sig_i')
        d/dT   = sum_elements(dy * sum_i steps_i sig_i' (u - b_i))

    The ``n`` (few, static) thresholds are a leading axis of one ``[n, *u.shape]``
    tensor, and the sums over ``i`` are reductions over that axis; the backward pass
    reuses the forward sigmoids instead of autodiff's broadcast gradients (faster:
    ``docs/defaults.md``). Not a ``tf.add_n`` of per-threshold terms: TensorFlow's CPU
    AddN sums in an order that depends on thread timing
    (:func:`tfqnet.core.quantizer.ordered_sum`); the reduction sums in index order, so
    seeded runs repeat bit for bit. In a
    ``tf.function`` the threshold and temperature gradients are pruned when nothing
    asks for them (frozen thresholds).
    ``steps`` are Python numbers (static); ``thresholds`` a tensor of ``len(steps)``.
    """
    steps = np.asarray(steps, np.float32).reshape(-1)
    count_terms = len(steps)
    dtype = u.dtype

    @tf.custom_gradient
    def staircase(u, thresholds, temperature):
        # [n, 1, ..., 1]: thresholds and steps broadcast along u's axes
        leading = tf.concat([[count_terms], tf.ones([tf.rank(u)], tf.int32)], 0)
        gaps = u[None] - tf.reshape(thresholds, leading)
        sigmoids = tf.sigmoid(temperature * gaps)
        unit = bool(np.all(steps == 1.0))
        step_sizes = None if unit else tf.reshape(tf.constant(steps, dtype), leading)
        scaled = sigmoids if unit else step_sizes * sigmoids
        count = tf.reduce_sum(scaled, axis=0)

        def grad(dy):
            slopes = sigmoids - sigmoids * sigmoids
            slopes = slopes if unit else step_sizes * slopes
            d_u = dy * temperature * tf.reduce_sum(slopes, axis=0)
            d_thresholds = -temperature * tf.reduce_sum(
                tf.reshape(dy[None] * slopes, [count_terms, -1]), axis=1
            )
            d_temperature = dy * tf.reduce_sum(slopes * gaps, axis=0)
            return (
                _unbroadcast(d_u, u),
                d_thresholds,
                _unbroadcast(d_temperature, temperature),
            )

        return count, grad

    return staircase(
        u, tf.cast(thresholds, dtype), tf.cast(tf.convert_to_tensor(temperature), dtype)
    )


def soft_uniform_staircase(
    r: tf.Tensor, n: int, temperature: tf.Tensor, window: int = WINDOW
) -> tf.Tensor:
    """``sum_{i=0}^{n-1} sigmoid(T * (r - i))``: unit steps at the integers 0..n-1.

    Large sets (8 bits: 255 steps) would cost n sigmoids per element. Only the
    ``2 * window + 1`` thresholds around ``r`` are evaluated, centred on
    ``c = clip(floor(r), window, n - 1 - window)`` (shifted inwards at the ends, so
    every evaluated threshold exists and no mask is needed); the ``c - window``
    thresholds below count as 1 and the ones above as 0. Every left-out threshold is
    more than ``window`` away from ``r``, so the error is at most
    ``2 * sigmoid(-window * T) / (1 - exp(-T))`` (< 1e-17 for T >= 5, window 8). The
    centre ``c`` is piecewise constant and gets no gradient, so the gradient is the
    exact one of the evaluated terms (see :func:`soft_staircase`).
    """
    if n <= 2 * window + 1:
        return soft_staircase(r, tf.range(n, dtype=r.dtype), np.ones(n), temperature)
    centre = tf.stop_gradient(
        tf.clip_by_value(tf.floor(r), float(window), float(n - 1 - window))
    )
    offsets = tf.range(-window, window + 1, dtype=r.dtype)
    return (centre - window) + soft_staircase(
        r - centre, offsets, np.ones(2 * window + 1), temperature
    )


def hard_staircase(u: tf.Tensor, thresholds: tf.Tensor, steps: Sequence[float]) -> tf.Tensor:
    """``sum_i steps_i * A(u - thresholds_i)`` with the unit step ``A(z) = [z >= 0]``.

    A sum over the (few) thresholds rather than one broadcast ``u x n`` comparison:
    the TFLite converter segfaulted on the rank-raised form (digits CNN, TF 2.21).
    """
    total = tf.zeros_like(u)
    for i, step in enumerate(np.asarray(steps, np.float32)):
        total += step * tf.cast(u >= thresholds[i], u.dtype)
    return total


def kmeans_1d(u: tf.Tensor, initial_centres: tf.Tensor, iterations: int = KMEANS_ITERATIONS):
    """Lloyd's k-means of the values ``u`` (any shape) from ``initial_centres``.

    Returns the sorted centres; an empty cluster keeps its centre.
    """
    u = tf.reshape(u, [-1])
    centres = tf.cast(initial_centres, u.dtype)
    k = int(initial_centres.shape[0])
    ones = tf.ones_like(u)
    for _ in range(iterations):
        nearest = tf.argmin(tf.abs(u[:, None] - centres[None, :]), axis=1, output_type=tf.int32)
        sums = tf.math.unsorted_segment_sum(u, nearest, k)
        counts = tf.math.unsorted_segment_sum(ones, nearest, k)
        centres = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), centres)
    return tf.sort(centres)


def kmeans_thresholds(u: tf.Tensor, levels: Sequence[int]) -> tf.Tensor:
    """Thresholds at the midpoints between the k-means centres of ``u``.

    ``u`` are beta-scaled weights; the ``|levels|`` centres start at the levels (the
    scaled weights span about +-1.25 max|levels|, so the levels are a sensible start).
    """
    centres = kmeans_1d(u, tf.constant(levels, u.dtype))
    return (centres[1:] + centres[:-1]) / 2.0
