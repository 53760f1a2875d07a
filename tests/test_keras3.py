"""Keras 3 models in: tfqnet.to_tf_keras and quantize_model on Keras 3 models and files.

Each translated float model must predict what the Keras 3 original does (max abs
difference <= 1e-5 on random inputs), with the weights copied exactly.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras as keras3
import numpy as np
import pytest

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tfqnet._keras import keras
from tfqnet.cli import main

K = keras3.layers
ROOT = Path(__file__).resolve().parent.parent


def _as_list(value):
    return list(value) if isinstance(value, list | tuple) else [value]


def _assert_same(model3, inputs, tolerance=1e-5):
    """Translates ``model3``, checks the layers, weights and predictions; returns it."""
    model2 = tfqnet.to_tf_keras(model3)
    assert isinstance(model2, keras.Model) and type(model2).__module__.startswith("tf_keras")
    assert model2.name == model3.name
    layers3 = {layer.name: layer for layer in model3.layers}
    for layer in model2.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        assert type(layer).__name__ == type(layers3[layer.name]).__name__, layer.name
        if not isinstance(layer, keras.Model):
            for old, new in zip(layers3[layer.name].get_weights(), layer.get_weights(),
                                strict=True):
                np.testing.assert_array_equal(old, new)
    assert model2.trainable == model3.trainable
    assert len(model2.trainable_weights) == len(model3.trainable_weights)
    assert len(model2.weights) == len(model3.weights)
    expected = _as_list(model3.predict(inputs, verbose=0))
    got = _as_list(model2.predict(inputs, verbose=0))
    assert len(expected) == len(got)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert float(np.max(np.abs(e - g))) <= tolerance
    return model2


def _randomize_batch_norms(model, rng):
    """Moving statistics away from 0/1, so a BN translated wrongly would show."""
    for layer in model.layers:
        if isinstance(layer, K.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
            layer.gamma.assign(rng.normal(1.0, 0.3, size=layer.gamma.shape))
            layer.beta.assign(rng.normal(size=layer.beta.shape))


def _every_kind_model():
    """One Keras 3 model with every layer kind quantize_model supports (and a few more)."""
    inp = keras3.Input((12, 12, 3), name="img")
    x = K.Rescaling(1 / 127.5, offset=-1, name="rescale")(inp)
    x = K.ZeroPadding2D(((0, 1), (1, 0)), name="pad")(x)
    x = K.Conv2D(8, 3, strides=2, use_bias=False, name="conv")(x)
    x = K.BatchNormalization(name="bn")(x)
    x = K.ReLU(6.0, name="relu6")(x)
    y = K.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = K.BatchNormalization(name="bn_dw")(y)
    y = K.Activation("relu", name="act")(y)
    z = K.Add(name="add")([x, y])
    z = K.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(z)
    c = K.Concatenate(name="cat")([K.MaxPooling2D(name="maxpool")(z),
                                   K.AveragePooling2D(2, name="avgpool")(z)])
    c = K.ReLU(name="relu")(c)
    f = K.Dropout(0.3, name="drop")(K.Flatten(name="flat")(c))
    v = K.Concatenate(name="cat_vec")([f, K.GlobalAveragePooling2D(name="gap")(c),
                                       K.GlobalMaxPooling2D(name="gmp")(c)])
    d = K.Dense(10, activation="relu", kernel_regularizer=keras3.regularizers.L2(1e-4),
                name="fc")(v)
    r = K.Reshape((5, 2), name="reshape")(d)
    r = K.Conv1D(4, 2, activation="relu", name="conv1d")(r)
    r = K.MaxPooling1D(2, name="maxpool1d")(K.ZeroPadding1D(1, name="pad1d")(r))
    r = K.AveragePooling1D(1, name="avgpool1d")(r)
    r = K.Concatenate(name="cat_1d")([K.GlobalAveragePooling1D(name="gap1d")(r),
                                      K.GlobalMaxPooling1D(name="gmp1d")(r)])
    logits = K.Dense(3, activation="linear", name="logits")(r)
    return keras3.Model(inp, K.Softmax(name="softmax")(logits), name="every_kind")


def test_every_layer_kind_translates_exactly():
    rng = np.random.default_rng(0)
    model3 = _every_kind_model()
    _randomize_batch_norms(model3, rng)
    model3.get_layer("bn_dw").trainable = False
    model2 = _assert_same(model3, rng.uniform(0, 255, (8, 12, 12, 3)).astype(np.float32))
    assert model2.get_layer("fc").kernel_regularizer.get_config()["l2"] == pytest.approx(1e-4)
    assert model2.get_layer("drop").rate == 0.3
    assert not model2.get_layer("bn_dw").trainable and model2.get_layer("bn").trainable
    # and tfqnet quantizes it (Rescaling and SeparableConv2D left float: no rule for them)
    qat = tfqnet.quantize_model(model3, skip=["rescale", "sep"])
    assert "quant_conv" in [layer.name for layer in qat.layers]


def test_sequential_with_normalization_translates_exactly():
    rng = np.random.default_rng(1)
    adapted = K.Normalization(name="norm")
    adapted.adapt(rng.normal(2.0, 3.0, (64, 6)).astype(np.float32))
    model3 = keras3.Sequential([keras3.Input((6,)), adapted,
                                K.Normalization(mean=1.0, variance=4.0, name="fixed"),
                                K.Dense(4, activation="tanh", name="d1"),
                                K.Dense(4, activation="relu6", name="d_relu6"),
                                K.Dense(3, activation="silu", name="d2")], name="seq")
    model3.trainable = False  # a frozen model stays frozen
    model2 = _assert_same(model3, rng.normal(size=(8, 6)).astype(np.float32))
    assert isinstance(model2, keras.Sequential)


def test_shared_layers_nested_models_and_several_inputs_and_outputs():
    rng = np.random.default_rng(2)
    a, b = keras3.Input((6,), name="a"), keras3.Input((6,), name="b")
    shared = K.Dense(5, activation="relu", name="shared")
    inner = keras3.Sequential([keras3.Input((5,)), K.Dense(4, name="inner_dense")],
                              name="inner")
    sum_ab = K.Add(name="sum")([shared(a), shared(b)])
    model3 = keras3.Model([a, b], [K.Dense(2, name="out1")(inner(sum_ab)),
                                   K.Dense(3, name="out2")(shared(b))], name="multi")
    inputs = [rng.normal(size=(8, 6)).astype(np.float32) for _ in range(2)]
    model2 = _assert_same(model3, inputs)
    assert model2.input_names == ["a", "b"] and model2.output_names == ["out1", "out2"]
    assert len(model2.get_layer("shared")._inbound_nodes) == 3  # still one layer, 3 calls
    np.testing.assert_array_equal(model2.get_layer("inner").get_layer("inner_dense").kernel,
                                  inner.get_layer("inner_dense").kernel)


@pytest.mark.parametrize("application, alpha", [("MobileNet", 0.25), ("MobileNetV2", 0.35)])
def test_keras_applications_mobilenets_translate_exactly(application, alpha):
    rng = np.random.default_rng(3)
    model3 = getattr(keras3.applications, application)(
        input_shape=(32, 32, 3), alpha=alpha, weights=None, classes=10,
        classifier_activation=None)
    _randomize_batch_norms(model3, rng)
    _assert_same(model3, rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("writer", [keras3, keras], ids=["keras3", "tf_keras"])
def test_a_saved_model_file_translates(tmp_path, suffix, writer):
    """A file Keras 3 wrote is translated; one tf-keras wrote is loaded as it is."""
    model = writer.Sequential([writer.Input((4,)), writer.layers.Dense(3, name="d")],
                              name="saved")
    path = tmp_path / f"model{suffix}"
    model.save(path)
    model2 = tfqnet.to_tf_keras(str(path))
    assert type(model2).__module__.startswith("tf_keras") and model2.name == "saved"
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(model2.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_bad_paths_and_objects_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"model\.pb: tfqnet reads Keras models from .keras"):
        tfqnet.to_tf_keras(tmp_path / "model.pb")
    with pytest.raises(FileNotFoundError, match="missing.keras: no such Keras model file"):
        tfqnet.quantize_model(str(tmp_path / "missing.keras"))
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.keras is not a readable .keras Keras file"):
        tfqnet.to_tf_keras(tmp_path / "junk.keras")
    with pytest.raises(TypeError, match="`model` must be a Keras model .* got int"):
        tfqnet.quantize_model(3)
    with pytest.raises(TypeError, match="`qat_model` must be a Keras model"):
        tfqnet.convert("model.keras", np.zeros((1, 4), np.float32))


def test_keras3_model_trained_saved_quantized_and_run_on_tflm(tmp_path, digits, capsys):
    keras3.utils.set_random_seed(0)
    inputs = keras3.Input((8, 8, 1), name="image")
    x = K.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = K.ReLU(name="relu1")(K.BatchNormalization(name="bn1")(x))
    x = K.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = K.Flatten(name="flatten")(K.MaxPooling2D(name="pool")(x))
    model3 = keras3.Model(inputs, K.Dense(10, name="logits")(x), name="digits3")
    model3.compile(keras3.optimizers.Adam(3e-3),
                   keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    model3.fit(digits.x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
    path = tmp_path / "digits3.keras"
    model3.save(path)

    qat = tfqnet.quantize_model(str(path), weight_bits=4, activation_bits=8)
    fine_tune(qat, digits, epochs=1)
    assert qat.evaluate(digits.x_test, digits.y_test, verbose=0)[1] > 0.8
    flatbuffer = tfqnet.convert(qat, digits.x_train[:100])
    assert top1_agreement(qat, flatbuffer, digits.x_test) >= 0.99
    qat.save(tmp_path / "qat.keras")  # the QAT model is tf-keras: saved and loaded as ever
    loaded = tfqnet.load_model(tmp_path / "qat.keras", compile=False)
    np.testing.assert_array_equal(loaded.predict(digits.x_test[:64], verbose=0),
                                  qat.predict(digits.x_test[:64], verbose=0))

    (tmp_path / "m.tflite").write_bytes(flatbuffer)
    np.save(tmp_path / "x.npy", digits.x_test[:64])
    check = ["check", str(tmp_path / "m.tflite"), "--data", str(tmp_path / "x.npy"), "--quiet",
             "--keras"]
    assert main([*check, str(tmp_path / "qat.keras")]) == 0
    capsys.readouterr()
    assert main([*check, str(path)]) == 2  # the Keras 3 float model, not the QAT model
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("tfqnet: error: ") and error.endswith(
        "digits3.keras is a Keras 3 model; --keras takes the tfqnet QAT model the flatbuffer "
        "was converted from (save what quantize_model returned, e.g. qat.save('qat.keras'))")


class _Custom(K.Layer):
    def call(self, x):
        return x * 2.0


class _Subclassed(keras3.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.dense = K.Dense(2)

    def call(self, x):
        return self.dense(x)


def _functional(*make):
    inputs = keras3.Input((4,), name="x")
    x = inputs
    for step in make:
        x = step(x)
    return keras3.Model(inputs, x, name="f")


def _lora_dense():
    layer = K.Dense(3, name="lora")
    layer.build((None, 4))
    layer.enable_lora(2)
    return layer


@pytest.mark.parametrize("build, message", [
    (lambda: _functional(_Custom(name="twice")),
     r"layer 'twice' \(_Custom\).*custom layer.*tf_keras"),
    (lambda: _Subclassed(), r"model 'subclassed'.*subclassed model.*Functional"),
    (lambda: _functional(K.Lambda(lambda t: t + 1, name="plus")),
     r"layer 'plus' \(Lambda\).*Python code.*built-in layers"),
    (lambda: _functional(lambda t: keras3.ops.add(t, 1.0)),
     r"layer 'add' \(Add\).*keras.ops.*use the layer instead"),
    (lambda: _functional(K.RMSNormalization(name="rms")),
     r"layer 'rms' \(RMSNormalization\).*tf-keras has no RMSNormalization layer"),
    (lambda: _functional(K.Dense(2, activation="gelu", name="g")),
     r"layer 'g' \(Dense\).*activation 'gelu'.*use one of linear, relu"),
    (lambda: _functional(_lora_dense()), r"layer 'lora' \(Dense\).*lora_rank=2.*without"),
])
def test_what_has_no_tf_keras_equivalent_gets_one_line(build, message):
    model = build()
    if not model.built:
        model.build((None, 4))
    with pytest.raises(tfqnet.Keras3ModelError, match=message) as error:
        tfqnet.to_tf_keras(model)
    assert "\n" not in str(error.value)


def test_quantize_model_reports_an_untranslatable_keras3_layer():
    model = _functional(K.Dense(4, name="d"), _Custom(name="twice"))
    with pytest.raises(tfqnet.Keras3ModelError, match=r"'twice'.*custom layer"):
        tfqnet.quantize_model(model)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_keras3_file_with_an_unknown_custom_layer_is_one_line(tmp_path, suffix):
    path = tmp_path / f"custom{suffix}"
    _functional(K.Dense(4, name="d"), _Custom(name="twice")).save(path)
    with pytest.raises(tfqnet.Keras3ModelError,
                       match=r"layer 'twice' \(_Custom\) of .*custom.*: it is a custom layer"
                       ) as error:
        tfqnet.quantize_model(path)
    assert "\n" not in str(error.value)


def test_keras3_quantized_layers_are_refused():
    model = keras3.Sequential([keras3.Input((4,)), K.Dense(3, name="d")], name="q")
    model.quantize("int8")
    with pytest.raises(tfqnet.Keras3ModelError, match=r"'d'.*quantized by Keras 3"):
        tfqnet.to_tf_keras(model)


def test_tensorflow_and_keras3_imported_before_tfqnet(tmp_path):
    """The order users of Keras 3 write: tf.keras is Keras 3 in that process."""
    script = """
import warnings
import numpy as np
import tensorflow as tf
import keras
assert tf.keras.__name__.startswith("keras")   # Keras 3
warnings.filterwarnings("error", message=".*tfqnet.*")
import tfqnet
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(3)])
x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
warnings.resetwarnings()
qat = tfqnet.quantize_model(model, weight_bits=4)
import tf_keras
qat.compile(tf_keras.optimizers.Adam(1e-3), "mse")
qat.fit(x, np.zeros((32, 3)), epochs=1, verbose=0, callbacks=tfqnet.callbacks(qat, 1))
flatbuffer = tfqnet.convert(qat, x)
agree = np.mean(tfqnet.run_tflm(flatbuffer, x).argmax(-1) == qat.predict(x, verbose=0).argmax(-1))
print("agreement", agree)
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # set here
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split("agreement")[-1]) >= 0.9
