"""The recipe helpers of benchmarks/bench_lowbit.py that its rows rely on."""

from __future__ import annotations

import numpy as np

import tfqnet
from benchmarks.bench_lowbit import reestimated_batch_norms, with_qat_weights
from tfqnet._keras import keras
from tfqnet.models import mobilenet_v2_tiny


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
    model = _with_random_batch_norms(mobilenet_v2_tiny(), rng)
    qat = tfqnet.quantize_model(model, "uniform", 8, 8)
    # the QAT kernels are the BN-folded float kernels until trained: the copy, built
    # from them with identity BNs, must compute the float model
    copy = with_qat_weights(model, qat)
    x = rng.uniform(0, 1, (8, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4)
    # and the copy follows the QAT kernels, not the original ones
    stem = qat.get_layer("quant_stem")._weight_vars[0][0]
    stem.assign(stem * 0.0)
    assert np.all(with_qat_weights(model, qat).get_layer("stem").get_weights()[0] == 0)


def test_reestimated_batch_norms_hold_their_inputs_statistics():
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    model = _with_random_batch_norms(mobilenet_v2_tiny(), rng)
    before = [w.copy() for w in model.get_weights()]
    x = rng.uniform(0, 1, (64, 16, 16, 1)).astype(np.float32)
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
