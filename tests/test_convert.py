"""convert: exact weights, INT4 packing, integer-only graphs, and QAT == TFLM."""

import numpy as np
import pytest

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tests.micro_helpers import compact_exactly
from tfqnet._keras import keras
from tfqnet.core.config import quantizers_of
from tfqnet.export.flatbuffer import packed_bytes


@pytest.fixture(scope="module")
def trained(float_digits_model, digits):
    """W8A8 and W4A8 uniform models, fine-tuned 2 epochs and converted (compacted, as
    by default, and checked against the uncompacted flatbuffer)."""
    out = {}
    for weight_bits in (8, 4):
        q = tfqnet.quantize_model(float_digits_model, weight_bits=weight_bits, activation_bits=8)
        fine_tune(q, digits, epochs=2)
        plain = tfqnet.convert(q, digits.x_train, compact=False)
        out[weight_bits] = (q, compact_exactly(plain, digits.x_test))
    return out


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_qat_and_tflm_agree(trained, digits, weight_bits):
    q, flatbuffer = trained[weight_bits]
    assert top1_agreement(q, flatbuffer, digits.x_test) >= 0.99


def test_int4_weights_are_packed_and_half_the_bytes(trained):
    int8 = tfqnet.FlatbufferModel.from_bytes(trained[8][1])
    int4 = tfqnet.FlatbufferModel.from_bytes(trained[4][1])
    assert {t.type for t in int8.weight_tensors()} == {"INT8"}
    assert {t.type for t in int4.weight_tensors()} == {"INT4"}
    for t in int4.weight_tensors():
        assert t.buffer_bytes == packed_bytes(t) == (np.prod(t.shape) + 1) // 2
    ratio = int4.weight_bytes() / int8.weight_bytes()
    assert 0.49 <= ratio <= 0.51
    assert len(trained[4][1]) <= 0.6 * len(trained[8][1])


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_no_float_tensor_remains(trained, weight_bits):
    model = tfqnet.FlatbufferModel.from_bytes(trained[weight_bits][1])
    assert model.float_tensors() == []
    assert {model.tensors[i].type for i in (*model.inputs, *model.outputs)} == {"INT8"}


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_stored_weights_are_exactly_the_trained_grid(trained, weight_bits):
    """The flatbuffer's codes and scales reproduce the QAT kernel values exactly."""
    q, flatbuffer = trained[weight_bits]
    model = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    wrapper = q.get_layer("quant_conv2")
    kernel = next(w for w in wrapper.weights if w.name.endswith("/kernel:0"))
    quantizer = wrapper.quantize_config.weight_quantizer
    state = {k: wrapper._weight_vars[0][2][k] for k in ("log_scale", "initialized")}
    trained_values = quantizer(kernel, False, state).numpy()  # [3, 3, 16, 32]
    scale = np.exp(state["log_scale"].numpy())
    conv2 = next(t for t in model.weight_tensors() if t.shape == (32, 3, 3, 16))
    codes = model.constant_values(conv2)  # OHWI
    np.testing.assert_allclose(np.asarray(conv2.scales), scale, rtol=1e-6)
    stored = codes.transpose(1, 2, 3, 0) * np.asarray(conv2.scales, np.float32)
    np.testing.assert_allclose(stored, trained_values, rtol=0, atol=1e-6)
    assert np.abs(codes).max() <= 2 ** (weight_bits - 1) - 1


def test_convert_refuses_an_untrained_model(float_digits_model, digits):
    q = tfqnet.quantize_model(float_digits_model)
    with pytest.raises(tfqnet.ConversionError, match="Train the QAT model"):
        tfqnet.convert(q, digits.x_train)


@pytest.mark.parametrize(
    "make_data, message",
    [
        (lambda x: x[:, :4], "shape"),
        (lambda x: np.where(x > 0.9, np.nan, x), "NaN"),
        (lambda x: x[:0], "empty"),
        (lambda x: [x, x], "1 input"),
    ],
)
def test_bad_representative_data_is_refused(trained, digits, make_data, message):
    with pytest.raises(ValueError, match=message):
        tfqnet.convert(trained[8][0], make_data(digits.x_train))


def _small_cnn(shape):
    L = keras.layers
    inputs = keras.Input(shape)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    return keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(x)))


def test_unfixed_input_sizes_are_refused_and_the_advice_works(digits):
    """A model on Input((None, None, 1)) would convert to a (1, 1, 1, 1) input; convert
    refuses it, and the fix it names (the same model on a fixed input, weights copied)
    converts to a model TFLM runs as the QAT model does."""
    keras.utils.set_random_seed(0)
    qat = fine_tune(tfqnet.quantize_model(_small_cnn((None, None, 1)), weight_bits=4),
                    digits)
    with pytest.raises(ValueError, match=r"keras.Input\(shape=\(8, 8, 1\)\)"):
        tfqnet.convert(qat, digits.x_train)
    fixed = tfqnet.quantize_model(_small_cnn((8, 8, 1)), weight_bits=4)
    fixed.set_weights(qat.get_weights())
    x = digits.x_test[:64]
    np.testing.assert_array_equal(fixed.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert top1_agreement(fixed, tfqnet.convert(fixed, digits.x_train), x) >= 0.98


def test_a_float_model_converts_as_post_training_int8_with_a_warning(float_digits_model, digits):
    with pytest.warns(UserWarning, match="plain post-training int8"):
        flatbuffer = tfqnet.convert(float_digits_model, digits.x_train[:50])
    model = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert {t.type for t in model.weight_tensors()} == {"INT8"} and not model.float_tensors()


def test_skipped_layer_is_quantized_post_training(float_digits_model, digits):
    q = tfqnet.quantize_model(float_digits_model, weight_bits=4, skip=["fc1"])
    fine_tune(q, digits, epochs=1)
    model = tfqnet.FlatbufferModel.from_bytes(tfqnet.convert(q, digits.x_train))
    types = {t.shape: t.type for t in model.weight_tensors()}
    assert types[(64, 512)] == "INT8"  # the skipped Dense: int8 post-training
    assert types[(10, 64)] == "INT4"
    assert model.float_tensors() == []


def test_every_quantizer_is_initialized_after_training(trained):
    q, _ = trained[4]
    assert len(quantizers_of(q)) >= 9
    flags = [v for v in q.variables if v.name.endswith("_initialized:0")]
    assert flags and all(float(v) == 1.0 for v in flags)
