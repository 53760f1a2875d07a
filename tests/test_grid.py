"""The export grid: values on integer codes survive FakeQuant; gradients are LSQ's."""

import numpy as np
import pytest
import tensorflow as tf

from tfqnet import grid
from tfqnet.tflite_format import weight_container_bits


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("per_axis", [False, True])
def test_weight_fake_quant_keeps_grid_values_exactly(bits, per_axis):
    rng = np.random.default_rng(bits)
    qmax = grid.weight_qmax(bits)
    scale = rng.uniform(0.003, 0.2, size=(6,) if per_axis else ()).astype(np.float32)
    codes = rng.integers(-qmax, qmax + 1, size=(3, 3, 4, 6)).astype(np.float32)
    codes[0, 0, 0] = qmax  # both ends of the grid present
    codes[0, 0, 1] = -qmax
    values = codes * scale
    out = grid.weight_fake_quant(tf.constant(values), tf.constant(scale), bits, per_axis).numpy()
    np.testing.assert_allclose(out / scale, codes, atol=1e-4)
    np.testing.assert_array_equal(np.round(out / scale), codes)


def test_narrow_grids_are_stored_spread_over_their_container():
    spreads = [grid.code_spread(b, weight_container_bits(b)) for b in range(2, 9)]
    assert spreads == [7, 2, 1, 8, 4, 2, 1]
    alpha = np.float32(0.3)
    ternary = tf.constant(alpha * np.array([-1, 0, 1, 1], np.float32))
    out = grid.weight_fake_quant(ternary, tf.constant(alpha), 2, False)
    np.testing.assert_array_equal(out.numpy(), ternary.numpy())  # same values
    # the op's range gives the converter a step of alpha / 7 (codes -7, 0, 7): a value
    # one seventh of alpha is a level of that grid, not rounded to 0 as with step alpha
    seventh = grid.weight_fake_quant(tf.constant([alpha / 7]), tf.constant(alpha), 2, False)
    np.testing.assert_allclose(seventh.numpy(), [alpha / 7], rtol=1e-6)


def test_weight_storage_is_int4_up_to_4_bits():
    assert [weight_container_bits(b) for b in range(2, 9)] == [4, 4, 4, 8, 8, 8, 8]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_fake_quant_is_the_k_bit_grid_in_an_int8_tensor(bits):
    scale, zero_point = 0.05, 3.0
    x = np.linspace(-1.0, 20.0, 2001, dtype=np.float32)
    # exact half-steps round either way depending on float evaluation order: keep off them
    x = tf.constant(x[np.abs((x / scale) % 1.0 - 0.5) > 1e-3])
    out = grid.activation_fake_quant(x, tf.constant(scale), tf.constant(zero_point), bits).numpy()
    codes = out / scale + zero_point
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert np.round(codes).min() == 0
    assert np.round(codes).max() == grid.activation_qmax(bits)
    reference = grid.quantize_asymmetric(x, tf.constant(scale), tf.constant(zero_point), bits)
    np.testing.assert_allclose(out, reference.numpy(), atol=1e-5)


def test_quantize_symmetric_gradients_are_ste_and_lsq():
    bits, s = 3, 0.25
    qmax = grid.weight_qmax(bits)
    x = tf.Variable([0.1, -0.3, 0.62, 2.0, -5.0])
    scale = tf.Variable(s)
    with tf.GradientTape() as tape:
        y = grid.quantize_symmetric(x, scale, bits)
        loss = tf.reduce_sum(y)
    dx, ds = tape.gradient(loss, [x, scale])
    v = x.numpy() / s
    inside = np.abs(v) <= qmax
    np.testing.assert_array_equal(dx.numpy(), inside.astype(np.float32))
    expected_ds = np.where(inside, np.round(v) - v, np.sign(v) * qmax).sum()
    np.testing.assert_allclose(ds.numpy(), expected_ds, rtol=1e-5)


def test_scale_gradient_scales_only_the_gradient():
    s = tf.Variable(2.0)
    with tf.GradientTape() as tape:
        y = grid.scale_gradient(s, 0.1) * 3.0
    assert float(y) == pytest.approx(6.0)
    assert float(tape.gradient(y, s)) == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [1, 9, 4.0, True, "8"])
def test_check_bits_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="weight bits must be an integer from 2 to 8"):
        grid.check_bits(bad, "weight bits")
