"""How tfqnet treats the models, options and files users actually give it.

Each model either works end to end (quantize -> train -> convert -> TFLM agrees) or
fails at quantize_model with a message naming the layer and the way forward; each bad
option fails before any work. Also: the lazy package import and atomic writes.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfqnet
from tests.micro_helpers import compact_exactly
from tfqnet import _files
from tfqnet._keras import keras

L = keras.layers
ROOT = Path(__file__).resolve().parents[1]


def _train_convert(model: keras.Model, xs, ys):
    """QAT copy of ``model`` trained for a few steps (seeded), and its flatbuffer
    (not compacted)."""
    keras.utils.set_random_seed(3)
    q = tfqnet.quantize_model(model, weight_bits=4, activation_bits=8)
    q.compile(keras.optimizers.Adam(1e-3), "mse")
    q.fit(xs, ys, epochs=2, batch_size=16, verbose=0)
    return q, tfqnet.convert(q, xs, compact=False)


# ------------------------------------------------------------------ models that work


def test_shared_layer_and_multiple_inputs_and_outputs_convert_and_agree_on_tflm():
    """Two inputs, a Dense layer called twice, three outputs: trains, converts, and TFLM
    computes what the QAT model does, inputs and outputs in the Keras model's order
    (the converter orders them by name: "a_two" < "one" < "three"), within TFLM's known
    FULLY_CONNECTED rounding: +-1 LSB per op, which three chained Dense ops grow to a
    few LSB on some outputs (measured on this model and on the same model without
    sharing: at most 1-4 LSB, 0.2-0.6 LSB on average, varying with the trained weights).
    Part of that is the shared kernel itself: the converter requantizes a kernel that
    two ops read to int8 (`tfl.pseudo_qconst`), within half an int8 step of its trained
    4-bit grid but not on it (../shared/tflm-facts.md). Inputs fed in the wrong order
    are off by far more. The compacted model computes exactly what the plain one does."""
    rng = np.random.default_rng(1)
    right, left = keras.Input((8,), name="right"), keras.Input((8,), name="left")
    shared = L.Dense(8, activation="relu", name="shared")
    x = L.Concatenate(name="join")([shared(right), shared(L.Dense(8, name="pre")(left))])
    heads = [L.Dense(3, name="three")(x), L.Dense(1, name="one")(x), L.Dense(2, name="a_two")(x)]
    model = keras.Model([right, left], heads)
    xs = [rng.random((64, 8), dtype=np.float32), rng.random((64, 8), dtype=np.float32)]
    ys = [rng.random((64, n), dtype=np.float32) for n in (3, 1, 2)]
    q, plain = _train_convert(model, xs, ys)
    flatbuffer = compact_exactly(plain, xs)

    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    ops = [op.name for op in graph.operators]
    assert ops.count("FULLY_CONNECTED") == 6  # pre, shared twice, three, one, a_two
    micro = tfqnet.MicroInterpreter(flatbuffer)
    assert [d.shape[1:] for d in micro.outputs] == [(3,), (1,), (2,)]
    expected = q.predict(xs, verbose=0)
    lsb = [graph.tensors[i].scales[0] for i in graph.outputs]

    def worst_lsb(outputs) -> list[float]:
        return [float(np.abs(o - e).max() / s) for o, e, s in zip(outputs, expected, lsb,
                                                                   strict=True)]

    for out, e, s in zip(micro.predict(xs), expected, lsb, strict=True):
        diff = np.abs(out - e) / s
        assert diff.max() <= 8.01 and diff.mean() <= 1.0, (diff.max(), diff.mean())
    swapped = worst_lsb(micro.predict(xs[::-1]))
    assert max(swapped) > 8.01, swapped  # the tolerance can fail


# ------------------------------------------------------- models refused with a way out


class Doubling(L.Layer):
    """A user's own layer, unknown to tfqnet."""

    def call(self, x):
        return 2.0 * x


def test_custom_layer_error_names_it_and_both_ways_forward():
    inputs = keras.Input((8,))
    x = Doubling(name="twice")(L.Dense(4, name="d")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    with pytest.raises(tfqnet.UnsupportedLayerError) as error:
        tfqnet.quantize_model(model)
    message = str(error.value)
    assert "'twice' (Doubling)" in message and "custom layer" in message
    assert "skip=['twice']" in message and "register_layer_config(Doubling" in message
    q = tfqnet.quantize_model(model, skip=["twice"])
    assert isinstance(q.get_layer("twice"), Doubling)  # left float, unwrapped
    # Variables keep their layer's name scope (h5 saving needs unique names).
    assert all(v.name.startswith("quant_d/") for v in q.get_layer("quant_d").weights)


def test_subclassed_model_error_says_rebuild_functionally():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__(name="tiny")
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(tfqnet.UnsupportedLayerError, match="'tiny' is a subclassed.*functional"):
        tfqnet.quantize_model(model)


def test_unbuilt_model_error_says_how_to_build():
    with pytest.raises(ValueError, match="not built.*model.build"):
        tfqnet.quantize_model(keras.Sequential([L.Dense(2, name="d")]))


# -------------------------------------------------------------------------- options


@pytest.fixture(scope="module")
def small_model():
    inputs = keras.Input((8,), name="features")
    return keras.Model(inputs, L.Dense(2, name="out")(L.Dense(4, name="d")(inputs)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "qn", "levels": "5bit_weird"}, "unknown level set '5bit_weird'"),
        ({"method": "qn", "levels": [0]}, "at least two levels"),
        ({"method": "qn", "levels": "3bit_pow2", "weight_bits": 2}, "need weight_bits >= 4"),
        ({"method": "qn", "temperature_step": 0}, "temperature_step"),
        ({"method": "crq", "hard_fraction": 1.5}, "hard_fraction"),
        ({"weight_bits": 2.5}, "weight_bits"),
        ({"activation_bits": 0}, "activation_bits"),
        ({"method": "Uniform"}, "unknown quantization method 'Uniform'; choose one of"),
    ],
)
def test_bad_method_options_fail_at_quantize_model(small_model, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tfqnet.quantize_model(small_model, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"overrides": {"d": {"wbits": 2}}}, ValueError,  # was ignored
         r"overrides\['d'\] has unknown key 'wbits'; the keys are weight_bits, "
         r"activation_bits, e\.g\. \{'weight_bits': 8\}"),
        ({"overrides": {"d": 4}}, TypeError,
         r"overrides\['d'\] must be a non-empty dict of bits, like \{'weight_bits': 8\}; got 4"),
        ({"overrides": {"d": {}}}, TypeError, r"overrides\['d'\] must be a non-empty dict"),
        ({"overrides": ["d"]}, TypeError,
         r"overrides must be a dict of layer name -> bits, like \{'conv1': \{'weight_bits': "
         r"8\}\} .*; got list \['d'\]"),
        ({"overrides": {"d": {"activation_bits": 1}}}, ValueError,
         "activation_bits of layer 'd' must be an integer from 2 to 8, got 1"),
        ({"skip": "d"}, TypeError,
         r"skip must be a list of layer names, like skip=\['d'\]; got str 'd'"),
        ({"skip": [3]}, TypeError, r"skip must hold layer names \(strings\).*got 3"),
        ({"method": "crq", "strenght": 1e-3}, TypeError,  # was "__init__() got an unexpected"
         r"method 'crq' has no option 'strenght'; its options are strength, hard_fraction "
         r"\(see help\(tfqnet\.quantizers\.crq\)\)"),
        ({"method": "qn", "level": "ternary"}, TypeError, "method 'qn' has no option 'level'"),
        ({"levels": 3}, TypeError, "method 'uniform' has no option 'levels'; it takes no "),
    ],
    ids=["override key misspelled", "override not a dict", "override empty",
         "overrides a list", "override bits", "skip a string", "skip not names",
         "crq option misspelled", "qn option misspelled", "uniform has no options"],
)
def test_malformed_arguments_fail_in_one_line_before_any_work(small_model, monkeypatch,
                                                              kwargs, error, message):
    from tfqnet.quantize import api

    def work(*args, **kwargs):
        raise AssertionError("quantize_model started working before checking its arguments")

    monkeypatch.setattr(api.keras.models, "clone_model", work)
    monkeypatch.setattr(api, "_check_layers", work)
    with pytest.raises(error, match=message) as raised:
        tfqnet.quantize_model(small_model, **kwargs)
    assert "\n" not in str(raised.value)


def test_skip_and_overrides_none_mean_no_layers(small_model):
    q = tfqnet.quantize_model(small_model, skip=None, overrides=None)
    assert [type(layer) for layer in q.layers] == [
        type(layer) for layer in tfqnet.quantize_model(small_model).layers]
    assert q.get_layer("quant_d") and q.get_layer("quant_out")  # both quantized


@pytest.fixture(scope="module")
def untrained_qat(small_model):
    return tfqnet.quantize_model(small_model)


@pytest.mark.parametrize(
    "data, message",
    [
        (np.full((4, 8), np.inf, np.float32), "'features'.*NaN or infinite.*4 of 4 samples"),
        (np.array([["a"] * 8] * 4), "'features' must hold real numbers.*<U1"),
        (np.ones((4, 8), np.complex64), "must hold real numbers.*complex64"),
        (np.ones((4, 8, 1), np.float32), r"shape \(4, 8, 1\); expected \(N, 8\)"),
        (np.ones((4, 7), np.float32), r"shape \(4, 7\)"),
    ],
)
def test_bad_representative_data_fails_before_conversion(untrained_qat, data, message):
    # The model is untrained: a data error must come first, before any other check.
    with pytest.raises(ValueError, match=message):
        tfqnet.convert(untrained_qat, data)


# ------------------------------------------------------------------------ the package


def test_package_import_is_lazy_and_keeps_the_public_api():
    script = """
import sys
import tfqnet
assert "tensorflow" not in sys.modules, "import tfqnet loaded TensorFlow"
import tfqnet.export.flatbuffer, tfqnet.micro.checker
assert "tensorflow" not in sys.modules, "the flatbuffer tools loaded TensorFlow"
import tensorflow as tf
assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
assert callable(tfqnet.convert) and callable(tfqnet.callbacks)
import tfqnet.export.api, tfqnet.quantize.api
assert tfqnet.callbacks.__name__ == "callbacks" and tfqnet.convert.__name__ == "convert"
assert "uniform" in tfqnet.method_names() and tfqnet.quantize_model.__name__ == "quantize_model"
assert tfqnet.grid.weight_qmax(4) == 7
print("ok")
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_every_exception_tfqnet_defines_is_a_tfqnet_error():
    """One ``except tfqnet.errors.TfqnetError`` catches whatever tfqnet raises on purpose."""
    from tfqnet.errors import TfqnetError

    defined = []
    for info in pkgutil.walk_packages(tfqnet.__path__, "tfqnet."):
        module = importlib.import_module(info.name)
        defined += [cls for cls in vars(module).values()
                    if isinstance(cls, type) and issubclass(cls, BaseException)
                    and not issubclass(cls, Warning) and cls.__module__ == info.name]
    assert len(defined) >= 7, defined
    assert [c for c in defined if not issubclass(c, TfqnetError)] == []


# -------------------------------------------------------------------- atomic writes


def test_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "model_data.cc"
    target.write_text("old contents")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        _files.write_atomic(target, "new contents " * 1000)
    assert target.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model_data.cc"]  # temp file removed


def test_refuse_to_overwrite_names_the_file_unless_forced(tmp_path):
    existing = tmp_path / "a.h"
    existing.write_text("mine")
    with pytest.raises(FileExistsError, match=r"a\.h exists; pass --force.*2 file"):
        _files.refuse_to_overwrite([tmp_path / "new.h", existing, existing], force=False)
    _files.refuse_to_overwrite([existing], force=True)
    _files.refuse_to_overwrite([tmp_path / "new.h"], force=False)



def _fail_once(monkeypatch, module, name: str, call: int) -> list:
    """``module.name`` fails like a full disk on its ``call``-th use only."""
    real, calls = getattr(module, name), []

    def wrapped(*args):
        calls.append(args)
        if len(calls) == call:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_a_set_of_files_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _files.write_files_atomic(out, {"a.h": "a1", "b.h": "b1"})  # a new directory
    (out / "mine.txt").write_text("the user's")
    moves = _fail_once(monkeypatch, _files.os, "replace", 2)
    with pytest.raises(OSError, match="No space"):
        _files.write_files_atomic(out, {"a.h": "a2", "b.h": "b2", "c.h": "c2"})
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "a.h": "a1", "b.h": "b1", "mine.txt": "the user's"}
    assert len(moves) == 3  # a.h in, b.h failed, a.h back
    monkeypatch.undo()
    _fail_once(monkeypatch, _files, "_write_new", 2)
    with pytest.raises(OSError, match="No space"):
        _files.write_files_atomic(tmp_path / "new", {"a.h": "1", "b.h": "2"})
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no new nor temporary directory
    monkeypatch.undo()
    _files.write_files_atomic(out, {"a.h": "a3", "c.h": "c3"})
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "a.h": "a3", "b.h": "b1", "c.h": "c3", "mine.txt": "the user's"}


def _doubled_model(middle: L.Layer) -> keras.Model:
    inputs = keras.Input((8,))
    return keras.Model(inputs, L.Dense(2, name="out")(middle(L.Dense(4, name="d")(inputs))))


def test_lambda_error_offers_what_works_and_skip_of_it_is_refused():
    """skip=['lam'], which the error offered, failed in tf_keras' safe mode when
    quantize_model cloned the model. The advice now given, followed: the computation in
    a Layer subclass, skipped, quantizes, converts and agrees on TFLM."""
    model = _doubled_model(L.Lambda(lambda t: 2.0 * t, name="lam"))
    with pytest.raises(tfqnet.UnsupportedLayerError) as error:
        tfqnet.quantize_model(model)
    message = str(error.value)
    assert "'lam' (Lambda)" in message and "skip= does not help here" in message
    assert "To leave it float" not in message
    assert "into a keras.layers.Layer subclass (then pass skip=['lam']" in message
    with pytest.raises(tfqnet.UnsupportedLayerError, match="cannot skip layer 'lam' "
                       r"\(Lambda\): skip= does not help here"):
        tfqnet.quantize_model(model, skip=["lam"])  # was safe mode's ValueError

    followed = _doubled_model(Doubling(name="lam"))
    followed.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    keras.utils.set_random_seed(3)
    qat = tfqnet.quantize_model(followed, skip=["lam"])
    qat.compile(keras.optimizers.Adam(1e-3), "mse")
    qat.fit(x, x[:, :2], epochs=1, batch_size=16, verbose=0)
    tflite = tfqnet.convert(qat, x)
    graph = tfqnet.FlatbufferModel.from_bytes(tflite)
    # The skipped layer's output has its own trained grid, so the converter keeps the
    # multiply as an int8 MUL instead of folding it into the next kernel.
    assert [op.name for op in graph.operators] == ["FULLY_CONNECTED", "MUL", "FULLY_CONNECTED"]
    lsb = graph.tensors[graph.outputs[0]].scales[0]
    steps = np.abs(tfqnet.run_tflm(tflite, x) - qat.predict(x, verbose=0)) / lsb
    assert steps.max() <= 2.01, steps.max()  # folded, it was 68 steps


def test_every_skipped_layer_output_gets_an_8_bit_grid():
    """TFMOT grids a skipped Dense read by one quantized layer; the Dense read by an Add
    and the custom layer get tfqnet's own."""
    inputs = keras.Input((8,))
    a = L.Dense(4, name="a")(inputs)
    b = L.Dense(4, name="b")(inputs)
    added = L.Add(name="add")([L.Dense(4, name="c")(a), b])
    model = keras.Model(inputs, L.Dense(2, name="out")(Doubling(name="twice")(added)))
    q = tfqnet.quantize_model(model, activation_bits=4, skip=["a", "b", "twice"])
    grids = {node.inbound_layers.name: layer for layer in q.layers
             for node in layer._inbound_nodes if "QuantizeLayer" in type(layer).__name__}
    assert set(grids) == {"b", "twice"}, sorted(grids)
    assert all(g.quantizer.bits == 8 for g in grids.values())
    assert q.get_layer("quant_a").quantize_config.__class__.__name__ == "OutputOnlyConfig"


@pytest.mark.parametrize("layer", [L.LSTM(4, name="rnn"), L.GRU(4, name="rnn"),
                                   L.Bidirectional(L.SimpleRNN(4), name="rnn")],
                         ids=["LSTM", "GRU", "Bidirectional"])
def test_recurrent_layer_error_says_plainly_that_nothing_helps(layer):
    """skip=['lstm'], which the error offered, failed 40 s later in the conversion
    (TensorListReserve): no way through tfqnet exists, and the error says so."""
    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, L.Dense(2, name="out")(layer(inputs)))
    with pytest.raises(tfqnet.UnsupportedLayerError) as error:
        tfqnet.quantize_model(model)
    message = str(error.value)
    assert "tfqnet cannot deploy recurrent layers, and skip= does not help" in message
    assert "pass skip=" not in message and "register_layer_config" not in message
    with pytest.raises(tfqnet.UnsupportedLayerError, match="cannot skip layer 'rnn'"):
        tfqnet.quantize_model(model, skip=["rnn"])  # at once, not after a conversion
