"""Quantization Networks (``method="qn"``): the quantizers' forms, their gradients, the
initialisation, the temperature schedule and the ternary deployment on digits."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from sklearn.cluster import KMeans

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tfqnet._keras import keras
from tfqnet.core.config import quantizers_of
from tfqnet.quantizers import qn

K_STEP = 10.0  # the method's default temperature_step


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _built(quantizer, shape, state: dict[str, np.ndarray] | None = None):
    """Builds ``quantizer`` on a bare layer; sets its state and marks it initialized."""
    layer = keras.layers.Layer()
    weights = quantizer.build(tf.TensorShape(shape), "w", layer)
    for name, value in (state or {}).items():
        if name in ("alpha", "beta"):  # stored as logarithms
            name, value = f"log_{name}", np.log(value)
        weights[name].assign(np.asarray(value, np.float32))
    if state:
        weights["initialized"].assign(1.0)
    return weights


def _weight_soft(x, alpha, beta, thresholds, levels, temperature):
    """The documented weight formula in float64: alpha (Y0 + sum s_i sig(T(beta x - b_i)))."""
    steps = np.diff(levels)
    z = temperature * (beta * x[..., None] - np.asarray(thresholds))
    return alpha * (levels[0] + (steps * _sigmoid(z)).sum(-1))


def _weight_step(x, alpha, beta, thresholds, levels):
    steps = np.diff(levels)
    return alpha * (levels[0] + (steps * (beta * x[..., None] >= thresholds)).sum(-1))


def _activation_soft(x, alpha, beta, zero_point, n, temperature):
    """alpha (sum_i sig(T (beta x - b_i)) - z), b_i = (i + 1/2 - z) alpha beta, float64."""
    b = (np.arange(n) + 0.5 - zero_point) * alpha * beta
    return alpha * (_sigmoid(temperature * (beta * x[..., None] - b)).sum(-1) - zero_point)


POW2 = qn.LEVEL_SETS["3bit_pow2"]
POW2_STATE = {"alpha": 0.3, "beta": 1.7, "thresholds": [-3.1, -1.4, -0.6, 0.45, 1.6, 2.9]}


# --- hard form ---------------------------------------------------------------------------


def test_weight_hard_form_is_the_step_function():
    quantizer = qn.QNWeightQuantizer(POW2, per_axis=False)
    weights = _built(quantizer, (401,), dict(POW2_STATE, temperature=5.0))
    x = np.linspace(-3.0, 3.0, 401).astype(np.float32)
    hard = quantizer(tf.constant(x), training=False, weights=weights).numpy()
    expected = _weight_step(x.astype(np.float64), 0.3, 1.7, POW2_STATE["thresholds"], POW2)
    np.testing.assert_allclose(hard, expected, rtol=1e-6, atol=1e-7)
    # every level is reached and each output is alpha times an integer level
    np.testing.assert_array_equal(np.unique(np.round(hard / 0.3)), POW2)


def test_activation_hard_form_is_the_step_at_level_midpoints():
    """Thresholds tied to the output levels: the hard form is TFLite's rounding."""
    quantizer = qn.QNActivationQuantizer(bits=2)
    alpha, beta, z = 0.25, 3.0, 1.0  # alpha * beta != 1 on purpose
    weights = _built(quantizer, (None, 601), {"alpha": alpha, "beta": beta, "zero_point": z})
    x = np.linspace(-0.6, 1.2, 601).astype(np.float32)[None]
    hard = quantizer(tf.constant(x), training=False, weights=weights).numpy()[0]
    b = (np.arange(3) + 0.5 - z) * alpha * beta
    expected = alpha * ((beta * x[0, :, None].astype(np.float64) >= b).sum(-1) - z)
    near_threshold = np.abs(x[0, :, None] - b / beta).min(-1) < 1e-5
    np.testing.assert_allclose(hard[~near_threshold], expected[~near_threshold], atol=1e-6)
    assert set(np.round(hard / alpha).astype(int)) == {-1, 0, 1, 2}


# --- soft form -----------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [qn.LEVEL_SETS["ternary"], POW2])
def test_soft_form_approaches_the_step_monotonically(levels):
    quantizer = qn.QNWeightQuantizer(levels, per_axis=False)
    thresholds = (np.array(levels[1:]) + np.array(levels[:-1])) / 2.0
    state = {"alpha": 0.5, "beta": 2.0, "thresholds": thresholds}
    weights = _built(quantizer, (1201,), state)
    x = np.linspace(-3.0, 3.0, 1201).astype(np.float32)
    away = np.abs(2.0 * x[:, None] - thresholds).min(-1) > 0.02  # the step is 1/2 at b_i
    hard = _weight_step(x.astype(np.float64), 0.5, 2.0, thresholds, levels)
    errors = []
    for temperature in [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0]:
        weights["temperature"].assign(temperature)
        soft = quantizer(tf.constant(x), training=True, weights=weights).numpy()
        errors.append(float(np.abs(soft - hard)[away].max()))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))
    # alpha * sigmoid(-T * 0.02) at the closest grid point: 1.2e-3 at T = 300
    assert errors[-1] < 2e-3 and errors[0] > 0.1


# --- gradients -------------------------------------------------------------------------------


def _central_difference(f, value: float, h: float = 1e-6) -> float:
    return (f(value + h) - f(value - h)) / (2.0 * h)


def test_weight_gradients_match_finite_differences():
    quantizer = qn.QNWeightQuantizer(POW2, per_axis=False)
    temperature = 3.0
    weights = _built(quantizer, (41,), dict(POW2_STATE, temperature=temperature))
    x = np.linspace(-2.5, 2.5, 41)
    upstream = np.random.default_rng(0).normal(size=41)  # a generic loss sum(g * y)
    xt = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = quantizer(xt, training=True, weights=weights)
        loss = tf.reduce_sum(y * upstream)
    d_x, d_log_alpha, d_log_beta = tape.gradient(
        loss, [xt, weights["log_alpha"], weights["log_beta"]]
    )
    b = POW2_STATE["thresholds"]

    def loss_of(x_=x, alpha=0.3, beta=1.7):
        return float((_weight_soft(x_, alpha, beta, b, POW2, temperature) * upstream).sum())

    np.testing.assert_allclose(
        y.numpy(), _weight_soft(x, 0.3, 1.7, b, POW2, temperature), rtol=1e-5, atol=1e-6
    )
    fd_x = [
        upstream[j]
        * _central_difference(
            lambda v, j=j: _weight_soft(np.array([v]), 0.3, 1.7, b, POW2, temperature)[0], x[j]
        )
        for j in range(len(x))
    ]
    np.testing.assert_allclose(d_x.numpy(), fd_x, rtol=1e-3, atol=1e-4)
    # alpha = exp(log_alpha): d/dlog_alpha = alpha * d/dalpha
    np.testing.assert_allclose(
        float(d_log_alpha), 0.3 * _central_difference(lambda a: loss_of(alpha=a), 0.3), rtol=1e-3
    )
    np.testing.assert_allclose(
        float(d_log_beta), 1.7 * _central_difference(lambda v: loss_of(beta=v), 1.7), rtol=1e-3
    )
    # and the stated closed form dy/dx = T beta alpha sum s_i sig_i (1 - sig_i)
    sig = _sigmoid(temperature * (1.7 * x[:, None] - np.asarray(b)))
    closed = temperature * 1.7 * 0.3 * (np.diff(POW2) * sig * (1 - sig)).sum(-1)
    np.testing.assert_allclose(d_x.numpy(), upstream * closed, rtol=1e-3, atol=1e-5)
    # frozen thresholds are not trainable: no optimizer step moves them
    assert not weights["thresholds"].trainable


@pytest.mark.parametrize("bits", [2, 8])  # exact sum; windowed sum
def test_activation_gradients_match_finite_differences(bits):
    quantizer = qn.QNActivationQuantizer(bits=bits)
    n = 2**bits - 1
    alpha, beta, z, temperature = 1.5 / n, 0.9 * n / 1.5, 1.0, 6.0
    weights = _built(
        quantizer,
        (None, 61),
        {"alpha": alpha, "beta": beta, "zero_point": z, "temperature": temperature},
    )
    x = np.linspace(-0.3, 1.6, 61)
    upstream = np.random.default_rng(1).normal(size=61)
    xt = tf.constant(x[None], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = quantizer(xt, training=True, weights=weights)
        loss = tf.reduce_sum(y[0] * upstream)
    d_x, d_log_alpha, d_log_beta = tape.gradient(
        loss, [xt, weights["log_alpha"], weights["log_beta"]]
    )

    def loss_of(alpha_=alpha, beta_=beta):
        return float((_activation_soft(x, alpha_, beta_, z, n, temperature) * upstream).sum())

    np.testing.assert_allclose(
        y.numpy()[0], _activation_soft(x, alpha, beta, z, n, temperature), atol=1e-4
    )
    fd_x = [
        upstream[j]
        * _central_difference(
            lambda v: _activation_soft(np.array([v]), alpha, beta, z, n, temperature)[0], x[j]
        )
        for j in range(len(x))
    ]
    np.testing.assert_allclose(d_x.numpy()[0], fd_x, rtol=2e-3, atol=2e-3)
    fd_alpha = _central_difference(lambda a: loss_of(alpha_=a), alpha, h=1e-7)
    fd_beta = _central_difference(lambda v: loss_of(beta_=v), beta, h=1e-5)
    np.testing.assert_allclose(float(d_log_alpha), alpha * fd_alpha, rtol=2e-3)
    np.testing.assert_allclose(float(d_log_beta), beta * fd_beta, rtol=2e-3, atol=1e-6)


# --- final hard phase ------------------------------------------------------------------------


@pytest.mark.parametrize("per_axis", [False, True])
def test_hard_phase_trains_the_inference_forward_with_the_soft_gradient(per_axis):
    """hard = 1: the training forward is the deployed step function; its gradient is the
    soft function's at the current T (straight-through estimator with the QN surrogate)."""
    quantizer = qn.QNWeightQuantizer(POW2, per_axis=per_axis)
    temperature = 3.0
    x = np.linspace(-2.5, 2.5, 82).reshape(41, 2)
    state = dict(POW2_STATE, temperature=temperature, hard=1.0)
    if per_axis:
        state.update(alpha=[0.3, 0.3], beta=[1.7, 1.7])
    weights = _built(quantizer, x.shape, state)
    upstream = np.random.default_rng(4).normal(size=x.shape)
    xt = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = quantizer(xt, training=True, weights=weights)
        loss = tf.reduce_sum(y * upstream)
    d_x = tape.gradient(loss, xt).numpy()
    inference = quantizer(xt, training=False, weights=weights).numpy()
    np.testing.assert_allclose(y.numpy(), inference, rtol=1e-6, atol=1e-7)
    b = POW2_STATE["thresholds"]
    np.testing.assert_allclose(
        y.numpy(), _weight_step(x, 0.3, 1.7, b, POW2), rtol=1e-6, atol=1e-7
    )
    sig = _sigmoid(temperature * (1.7 * x[..., None] - np.asarray(b)))
    closed = temperature * 1.7 * 0.3 * (np.diff(POW2) * sig * (1 - sig)).sum(-1)
    np.testing.assert_allclose(d_x, upstream * closed, rtol=1e-3, atol=1e-5)
    # the soft phase (hard = 0) of the same state is visibly different at T = 3
    weights["hard"].assign(0.0)
    soft = quantizer(xt, training=True, weights=weights).numpy()
    assert np.abs(soft - inference).max() > 0.1


@pytest.mark.parametrize("bits", [2, 8])
def test_activation_hard_phase_is_the_inference_fake_quant(bits):
    quantizer = qn.QNActivationQuantizer(bits=bits)
    n = 2**bits - 1
    alpha, beta, z = 1.5 / n, 0.9 * n / 1.5, 1.0
    weights = _built(
        quantizer,
        (None, 61),
        {"alpha": alpha, "beta": beta, "zero_point": z, "temperature": 6.0, "hard": 1.0},
    )
    x = np.linspace(-0.3, 1.8, 61)[None]
    xt = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = quantizer(xt, training=True, weights=weights)
        loss = tf.reduce_sum(y)
    inference = quantizer(xt, training=False, weights=weights).numpy()
    np.testing.assert_array_equal(y.numpy(), inference)
    # FakeQuant's straight-through gradient: 1 inside the grid's range, 0 outside
    inside = (x >= -z * alpha) & (x <= (n - z) * alpha)
    assert 0 < inside.sum() < inside.size
    np.testing.assert_array_equal(tape.gradient(loss, xt).numpy(), inside.astype(np.float32))


@pytest.mark.parametrize(
    ("epochs", "fraction", "hard_from"), [(6, 0.5, 3), (3, 0.5, 2), (6, 0.0, 6), (1, 0.5, 1)]
)
def test_schedule_ends_with_the_hard_fraction_of_epochs(
    float_digits_model, epochs, fraction, hard_from
):
    qat = tfqnet.quantize_model(
        float_digits_model, method="qn", weight_bits=2, hard_fraction=fraction
    )
    flags = [v for v in qat.variables if v.name.endswith(("_qn_weight_hard:0",
                                                          "_qn_activation_hard:0"))]
    temperatures = [v for v in qat.variables if "temperature" in v.name]
    assert len(flags) == len(temperatures) == 9 and {float(v) for v in flags} == {0.0}
    callbacks = tfqnet.callbacks(qat, epochs)
    assert {c.hard_from for c in callbacks} == {hard_from}  # floor(fraction * epochs) hard
    for epoch in range(epochs):
        for callback in callbacks:
            callback.set_model(qat)
            callback.on_epoch_begin(epoch)
        assert {float(v) for v in temperatures} == {(epoch + 1) * K_STEP}
        assert {float(v) for v in flags} == {float(epoch >= hard_from)}
    with pytest.raises(ValueError, match="hard_fraction"):
        tfqnet.quantize_model(float_digits_model, method="qn", weight_bits=2, hard_fraction=1.5)


# --- initialisation --------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [qn.LEVEL_SETS["3bit"], qn.LEVEL_SETS["ternary"]])
def test_kmeans_initialisation_puts_thresholds_between_centres(levels):
    """Default initialisation: k-means thresholds (ternary too), least-squares alpha."""
    quantizer = qn.QNWeightQuantizer(levels, per_axis=True)
    rng = np.random.default_rng(2)
    kernel = (rng.standard_t(4, size=(3, 3, 8, 6)) * rng.uniform(0.5, 2.0, size=6)).astype(
        np.float32
    )
    weights = _built(quantizer, kernel.shape)
    quantizer(tf.constant(kernel), training=True, weights=weights)
    assert float(weights["initialized"]) == 1.0
    flat = kernel.reshape(-1, 6).astype(np.float64)
    beta = np.exp(weights["log_beta"].numpy())
    p = max(levels)
    np.testing.assert_allclose(beta, 5 * p / (4 * np.abs(flat).max(0)), rtol=1e-5)
    u = (flat * beta).reshape(-1, 1)
    init = np.array(levels, np.float64)[:, None]
    k = len(levels)
    centres = np.sort(KMeans(k, init=init, n_init=1, tol=0).fit(u).cluster_centers_[:, 0])
    thresholds = weights["thresholds"].numpy()
    assert np.all(centres[:-1] < thresholds) and np.all(thresholds < centres[1:])
    np.testing.assert_allclose(thresholds, (centres[1:] + centres[:-1]) / 2, atol=1e-3)
    # alpha: the least-squares scale of each channel's initial hard levels
    hard = levels[0] + (np.diff(levels) * (flat[..., None] * beta[:, None] >= thresholds)).sum(-1)
    fitted = (flat * hard).sum(0) / (hard * hard).sum(0)
    alpha = np.exp(weights["log_alpha"].numpy())
    np.testing.assert_allclose(alpha, fitted, rtol=1e-4)
    assert np.all(np.abs(alpha * beta - 1.0) > 1e-3)  # not the paper's 1 / beta


def test_ternary_initialisation_rule():
    """The paper's text rule and alpha = 1 / beta, as options."""
    quantizer = qn.QNWeightQuantizer(
        qn.LEVEL_SETS["ternary"], per_axis=False, ternary_threshold=0.05, alpha_init="paper"
    )
    kernel = np.random.default_rng(3).normal(size=(20, 7)).astype(np.float32)
    weights = _built(quantizer, kernel.shape)
    out = quantizer(tf.constant(kernel), training=True, weights=weights)
    q = np.abs(kernel).max()
    np.testing.assert_allclose(np.exp(float(weights["log_beta"])), 1.25 / q, rtol=1e-5)
    np.testing.assert_allclose(np.exp(float(weights["log_alpha"])), q / 1.25, rtol=1e-5)
    # +-0.05 of the scaled range max|beta w| = 1.25
    np.testing.assert_allclose(weights["thresholds"].numpy(), [-0.0625, 0.0625], rtol=1e-5)
    assert out.shape == kernel.shape
    with pytest.raises(ValueError, match="alpha_init"):
        qn.QNWeightQuantizer(alpha_init="ones")
    with pytest.raises(ValueError, match="ternary_threshold"):
        qn.QNWeightQuantizer(ternary_threshold=1.5)


# --- method options --------------------------------------------------------------------------


def test_level_sets_and_bits(float_digits_model):
    assert qn.parse_levels("3bit_pow2") == (-4, -2, -1, 0, 1, 2, 4)
    assert qn.parse_levels("4bit_uniform") == tuple(range(-7, 8))
    assert qn.parse_levels([2, -1, 0, 2]) == (-1, 0, 2)
    assert [qn.required_bits(qn.LEVEL_SETS[k]) for k in ("binary", "3bit", "3bit_pow2")] == [
        2,
        3,
        4,
    ]
    with pytest.raises(ValueError, match="need weight_bits >= 4"):
        tfqnet.quantize_model(float_digits_model, "qn", 2, 8, levels="3bit_pow2")
    model = tfqnet.quantize_model(
        float_digits_model,
        "qn",
        4,
        4,
        levels="3bit_pow2",
        overrides=qn.first_last_overrides(float_digits_model),
    )
    found = {
        layer.name: layer.quantize_config.weight_quantizer
        for layer in model.layers
        if getattr(getattr(layer, "quantize_config", None), "weight_attrs", None)
    }
    assert {k: len(q.levels) for k, q in found.items()} == {
        "quant_conv1": 255,
        "quant_conv2": 7,
        "quant_fc1": 7,
        "quant_logits": 255,
    }
    assert found["quant_conv2"].bits == 4  # packed INT4 for the +-4 set


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ternary(float_digits_model, digits):
    """Every layer ternary (no layer policy), exported as INT4 for TFLite's interpreter."""
    qat = tfqnet.quantize_model(float_digits_model, method="qn", weight_bits=2, activation_bits=8,
                                policy=None)
    fine_tune(qat, digits, epochs=2)
    return qat, tfqnet.convert(qat, digits.x_train, compress=False, compact=False)


def _int_weights(flatbuffer: bytes) -> dict[str, tuple[np.ndarray, object]]:
    """Integer values and metadata of every constant weight tensor of the flatbuffer."""
    model = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    return {t.name: (interpreter.get_tensor(t.index), t) for t in model.weight_tensors()}


def test_ternary_model_deploys_three_integer_levels(ternary, digits):
    qat, flatbuffer = ternary
    weights = _int_weights(flatbuffer)
    assert {t.type for _, t in weights.values()} == {"INT4"}
    conv = [(v, t) for v, t in weights.values() if len(t.shape) == 4]
    assert len(conv) == 2
    for values, tensor in conv:
        assert values.shape == tensor.shape
        for channel in values.reshape(values.shape[0], -1):  # TFLite: [out, h, w, in]
            assert len(np.unique(channel)) <= 3
            assert set(np.unique(channel)) <= {-7, 0, 7}
    for values, _ in weights.values():
        assert set(np.unique(values)) <= {-7, 0, 7}  # levels spread over INT4
    # the deployed step of every channel is the learned alpha / 7: weights = alpha * level
    for layer in ("conv1", "conv2", "fc1", "logits"):
        (log_alpha,) = [
            v for v in qat.variables if v.name == f"quant_{layer}/kernel_qn_log_alpha:0"
        ]
        (tensor,) = [t for _, t in weights.values() if f"quant_{layer}/" in t.name]
        alpha = np.broadcast_to(np.exp(log_alpha.numpy()), len(tensor.scales))
        np.testing.assert_allclose(np.asarray(tensor.scales) * 7, alpha, rtol=1e-6)


def test_ternary_model_agrees_with_tflm(ternary, digits):
    qat, flatbuffer = ternary
    assert top1_agreement(qat, flatbuffer, digits.x_test) >= 0.99


def test_temperature_is_annealed_and_survives_save_load(ternary, float_digits_model, tmp_path):
    qat, _ = ternary
    temperatures = [v for v in qat.variables if "qn_" in v.name and "temperature" in v.name]
    assert len(temperatures) == 9  # 4 kernels + 5 activation grids (input, 4 outputs)
    assert {float(v) for v in temperatures} == {2 * K_STEP}  # epochs 0, 1 -> (1 + 1) * k
    flags = [v for v in qat.variables if v.name.endswith("_hard:0")]
    assert len(flags) == 9 and {float(v) for v in flags} == {1.0}  # the last epoch is hard
    # Saved with the model's weights; whole-model h5/.keras loading of QAT models fails
    # for every tfqnet method at the time of writing (TFMOT wrapper variable order).
    path = str(tmp_path / "qn.weights.h5")
    qat.save_weights(path)
    loaded = tfqnet.quantize_model(float_digits_model, method="qn", weight_bits=2, policy=None)
    loaded_temps = [v for v in loaded.variables if "temperature" in v.name]
    assert {float(v) for v in loaded_temps} == {K_STEP}  # a fresh model starts at epoch 0
    loaded_flags = [v for v in loaded.variables if v.name.endswith("_hard:0")]
    assert {float(v) for v in loaded_flags} == {0.0}
    loaded.load_weights(path)
    assert {float(v) for v in loaded_temps} == {2 * K_STEP}
    assert {float(v) for v in loaded_flags} == {1.0}
    # resuming at epoch 2 continues the schedule; the cap holds
    callbacks = tfqnet.callbacks(loaded, epochs=3)
    assert len(callbacks) == 2  # one per quantizer type
    for callback in callbacks:
        callback.set_model(loaded)
        callback.on_epoch_begin(2)
        assert callback.temperature(10**6) == 2000.0
    assert {float(v) for v in loaded_temps} == {3 * K_STEP}
    assert {type(q) for q in quantizers_of(loaded)} == {
        qn.QNWeightQuantizer,
        qn.QNActivationQuantizer,
    }
