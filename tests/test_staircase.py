"""The staircase primitive (:mod:`tfqnet.quantizers.staircase`): the windowed sum, the
closed-form gradients and the fixed summation order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfqnet.core.quantizer import ordered_sum
from tfqnet.quantizers.staircase import WINDOW, soft_staircase, soft_uniform_staircase


@pytest.mark.parametrize("temperature", [1.0, 5.0, 40.0])
@pytest.mark.parametrize("window", [WINDOW, 3])
def test_windowed_uniform_sum_matches_the_exact_sum(temperature, window):
    r = tf.constant(np.linspace(-20.0, 280.0, 3001), tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(r)
        windowed = soft_uniform_staircase(r, 255, tf.constant(temperature, tf.float64), window)
        exact = soft_staircase(
            r, tf.range(255, dtype=tf.float64), tf.ones([255], tf.float64), temperature
        )
    bound = 2.0 / (1.0 + math.exp(window * temperature)) / (1.0 - math.exp(-temperature))
    assert float(tf.reduce_max(tf.abs(windowed - exact))) <= bound + 1e-12  # + rounding
    d_windowed, d_exact = tape.gradient(windowed, r), tape.gradient(exact, r)
    np.testing.assert_allclose(d_windowed, d_exact, atol=temperature * bound + 1e-12)


def test_soft_staircase_gradients_match_autodiff_of_the_broadcast_formula():
    """The closed-form gradients (u, thresholds, temperature) of the stacked sum."""
    rng = np.random.default_rng(5)
    u = tf.constant(rng.normal(size=(40, 3)) * 2.0, tf.float64)
    thresholds = tf.constant([-1.4, -0.3, 0.2, 1.1], tf.float64)
    steps = np.array([1.0, 2.0, 1.0, 3.0])
    temperature = tf.constant(3.7, tf.float64)
    weight = tf.constant(rng.normal(size=(40, 3)), tf.float64)  # a non-uniform dy
    results = []
    for fn in (
        soft_staircase,
        lambda u, b, s, t: tf.reduce_sum(s * tf.sigmoid(t * (u[..., None] - b)), -1),
    ):
        with tf.GradientTape() as tape:
            tape.watch([u, thresholds, temperature])
            loss = tf.reduce_sum(weight * fn(u, thresholds, steps, temperature))
        results.append([loss, *tape.gradient(loss, [u, thresholds, temperature])])
    for ours, reference in zip(*results, strict=True):
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-10, atol=1e-12)


def test_soft_staircase_sums_in_a_fixed_order():
    """No AddN in the forward or backward graph: TensorFlow's CPU AddN may move the input
    whose buffer it reuses to the front, so its summation order depends on thread
    timing (seeded QN and SRQ runs then differed now and then). ``ordered_sum`` adds in
    index order: here any other order of the three terms gives a different float32."""
    u = tf.Variable(np.linspace(-2.0, 2.0, 24, dtype=np.float32).reshape(4, 6))

    @tf.function
    def forward_and_backward(thresholds):
        with tf.GradientTape() as tape:
            y = soft_staircase(u, thresholds, [1.0, 2.0, 1.0], tf.constant(7.0))
        return tape.gradient(tf.reduce_sum(y * y), u)

    graph = forward_and_backward.get_concrete_function(
        tf.TensorSpec([3], tf.float32)).graph.as_graph_def()
    ops = [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]
    assert "Sigmoid" in ops and "AddN" not in ops

    terms = [tf.constant([1e8, 3.0]), tf.constant([1.0, 1e8]), tf.constant([-1e8, -1e8])]
    np.testing.assert_array_equal(ordered_sum(terms).numpy(), [0.0, 0.0])  # (1e8 + 1) - 1e8
    assert float(ordered_sum([terms[0][0], terms[2][0], terms[1][0]])) == 1.0
