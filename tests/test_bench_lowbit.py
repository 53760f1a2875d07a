"""The recipe helpers of benchmarks/bench_lowbit.py that its rows rely on."""

from __future__ import annotations

import re

import numpy as np

import tfqnet
from benchmarks.bench_lowbit import (
    _DEFAULT,
    ROWS,
    chosen_rates,
    issue_targets,
    reestimated_batch_norms,
    with_qat_weights,
)
from tfqnet._keras import keras

L = keras.layers


def _small_model() -> keras.Model:
    """Conv (no bias), depthwise and conv (with bias) kernels, each followed by a BN."""
    inputs = keras.Input((8, 8, 1))
    x = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(4, 3, use_bias=False,
                                                          name="conv")(inputs)))
    x = L.ReLU()(L.BatchNormalization(name="bn2")(
        L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)))
    x = L.BatchNormalization(name="bn3")(L.Conv2D(6, 1, name="pointwise")(x))
    return keras.Model(inputs, L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(x)))


def _with_random_batch_norms(model: keras.Model, rng: np.random.Generator) -> keras.Model:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.2, n))
    return model


def test_with_qat_weights_computes_what_the_qat_latent_weights_compute():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = _with_random_batch_norms(_small_model(), rng)
    for layer in model.layers:  # a bias that is not zero where the kernel has one
        if getattr(layer, "use_bias", False):
            layer.bias.assign(rng.normal(0, 0.2, layer.bias.shape))
    qat = tfqnet.quantize_model(model, "uniform", 8, 8)
    # the QAT kernels are the BN-folded float kernels until trained: the copy, built
    # from them with identity BNs, must compute the float model
    copy = with_qat_weights(model, qat)
    x = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4)
    # and the copy follows the QAT kernels, not the original ones
    kernel = qat.get_layer("quant_conv")._weight_vars[0][0]
    kernel.assign(kernel * 0.0)
    assert np.all(with_qat_weights(model, qat).get_layer("conv").get_weights()[0] == 0)


def test_reestimated_batch_norms_hold_their_inputs_statistics():
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    model = _with_random_batch_norms(_small_model(), rng)
    before = [w.copy() for w in model.get_weights()]
    x = rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    fixed = reestimated_batch_norms(model, x)
    for layer in fixed.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(fixed.inputs, layer.input).predict(x, verbose=0)
            np.testing.assert_allclose(layer.moving_mean.numpy(), inputs.mean((0, 1, 2)),
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(layer.moving_variance.numpy(), inputs.var((0, 1, 2)),
                                       rtol=1e-3, atol=1e-5)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # the model given is left as it was


def _result(val: float, test: float) -> dict:
    return {"val": val, "test": test, "agreement": 1.0, "weight_bytes": 30,
            "int8_bytes": 100, "flatbuffer_bytes": 200, "train_s": 1.0}


def test_each_rows_rate_is_chosen_on_validation_and_the_targets_read_it():
    """A rate sweep must never pick by test accuracy: the rate with the better test
    split but the worse validation split loses, for tfqnet and TFMOT rows alike."""
    ours = "crq ternary, first/last 8-bit + depthwise 4-bit, hard_fraction 1"
    theirs = "TFMOT STE ternary, first/last 8-bit + depthwise 4-bit"
    results = {(ours, 1e-3): [_result(0.90, 0.99)], (ours, 2e-3): [_result(0.95, 0.93)],
               (theirs, 1e-3): [_result(0.94, 0.92)], (theirs, 2e-3): [_result(0.80, 0.98)]}
    rates = chosen_rates(results, [ours, theirs], [1e-3, 2e-3])
    assert rates == {ours: 2e-3, theirs: 1e-3}
    chosen = {name: results[name, lr] for name, lr in rates.items()}
    within, better, _, _ = issue_targets(chosen, float_test=0.95)
    assert "-2.0 points" in within[1] and within[2] == "met"
    assert "0.9300" in better[1] and "0.9200" in better[1] and better[2] == "met"
    within, _, _, _ = issue_targets(chosen, float_test=0.97)
    assert "-4.0 points" in within[1] and within[2] == "**missed**"


def test_each_method_meets_its_own_targets_against_tfmot_paired_by_seed():
    """One method's lead must not stand in for another's: qn ahead of TFMOT does not make
    crq so. The paired count compares the same seeds, so the mean can hide a lost seed."""
    qn = "qn ternary, first/last 8-bit + depthwise 4-bit, hard_fraction 1 (default)"
    crq = "crq ternary, first/last 8-bit + depthwise 4-bit, hard_fraction 1"
    tfmot = "TFMOT STE ternary, first/last 8-bit + depthwise 4-bit"
    chosen = {qn: [_result(0.9, 0.97), _result(0.9, 0.91)],
              crq: [_result(0.9, 0.92), _result(0.9, 0.93)],
              tfmot: [_result(0.9, 0.92), _result(0.9, 0.94)]}
    chosen[crq][1]["weight_bytes"] = 36
    qn_within, qn_better, crq_within, crq_better, agreement, size = issue_targets(
        chosen, float_test=0.95)
    assert qn_within[0].startswith("best qn row") and crq_within[0].startswith("best crq row")
    assert qn_better[2] == "met" and "+1.00 ± 4.00 points, ahead on 1 of 2 seeds" in qn_better[1]
    assert crq_better[2] == "**missed**" and "ahead on 0 of 2 seeds" in crq_better[1]
    assert agreement[2] == "met"
    assert size[2] == "**missed**" and "0.360x" in size[1]


def test_crq_rows_train_at_the_strength_their_name_gives_else_the_old_default():
    """A row keeps measuring what it measured when crq's default changes; the option
    dicts rows share (``_DEFAULT``) must not pick up crq's strength, which qn refuses."""
    assert "strength" not in _DEFAULT
    for name, (method, options, _) in ROWS.items():
        named = re.search(r"strength ([0-9.e-]+)", name)
        if method == "crq":
            assert options["strength"] == (float(named[1]) if named else 1e-3), name
        else:
            assert "strength" not in options, name
