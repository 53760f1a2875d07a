"""Training state: saved with the model and with checkpoints; an interrupted QAT run
resumes where it stopped; a seeded run converts to the same bytes every time.

For every registered method, a QAT run of ``EPOCHS`` epochs is compared with the same
run interrupted after ``STOP`` epochs (``fit(epochs=STOP)`` with the callbacks of the
whole run), restored, and continued with ``fit(initial_epoch=STOP)``. Data order is
fixed (``shuffle=False``): Keras does not checkpoint its shuffling RNG, so a resumed
run could only match an uninterrupted one statistically otherwise. Method options
that sample random numbers in training (SRQ's DropBits) are off for the same reason:
TensorFlow's stateful random ops restart their stream in a restored model.

The result is compared bit for bit on every variable (weights, quantizer state,
optimizer moments); since conversion is a deterministic function of the variables
(``test_seeded_runs_convert_to_identical_bytes``), equal variables mean the same
flatbuffer, which is also checked byte for byte for QN, the method with the most
schedule state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import tfqnet
from tfqnet._keras import keras
from tfqnet.models import compile_classifier

EPOCHS, STOP = 3, 2
SAMPLES, BATCH, LR = 128, 64, 5e-4
#: quantize_model options per method; a method registered later gets DEFAULT_OPTIONS
OPTIONS = {
    "uniform": {"weight_bits": 4, "activation_bits": 8},
    # soft phases first, so the interrupted run stops inside a moving schedule
    "qn": {"weight_bits": 2, "activation_bits": 8, "hard_fraction": 0.5},
    "crq": {"weight_bits": 2, "activation_bits": 8, "hard_fraction": 0.25},
    "srq": {"weight_bits": 4, "activation_bits": 8, "drop_probability": 0.0},
}
DEFAULT_OPTIONS = {"weight_bits": 4, "activation_bits": 8}
METHODS = tfqnet.method_names()


def _quantized(float_model, method: str) -> keras.Model:
    q = tfqnet.quantize_model(float_model, method, **OPTIONS.get(method, DEFAULT_OPTIONS))
    return compile_classifier(q, LR)


def _fit(model, digits, epochs: int, initial_epoch: int = 0, extra=()) -> None:
    model.fit(digits.x_train[:SAMPLES], digits.y_train[:SAMPLES], batch_size=BATCH,
              epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
              callbacks=[*extra, *tfqnet.callbacks(model, EPOCHS)])


def _state(model) -> list[tuple[str, np.ndarray]]:
    """Every variable of the model and then of its optimizer, in their (stable) order.

    By position, not by name: each quantize_model call names its input quantizer
    uniquely (quantize_layer, quantize_layer_1, ...).
    """
    return [(v.name, v.numpy()) for v in [*model.variables, *model.optimizer.variables()]]


def _assert_same_state(got: list, want: list) -> None:
    assert len(got) == len(want) > 0
    different = [w[0] for g, w in zip(got, want, strict=True)
                 if g[1].shape != w[1].shape or not np.array_equal(g[1], w[1])]
    assert not different, f"{len(different)} of {len(want)} variables differ: {different[:4]}"


@dataclass
class Runs:
    method: str
    full: keras.Model  # EPOCHS epochs without a stop
    part: keras.Model  # stopped after STOP epochs
    checkpoint: Path  # ModelCheckpoint's weights after epoch STOP


_RUNS: dict[str, Runs] = {}


def _runs(method: str, float_model, digits, folder: Path) -> Runs:
    """The uninterrupted and the interrupted run of ``method`` (once per session)."""
    if method not in _RUNS:
        keras.utils.set_random_seed(5)
        full = _quantized(float_model, method)
        _fit(full, digits, EPOCHS)
        keras.utils.set_random_seed(5)
        part = _quantized(float_model, method)
        saver = keras.callbacks.ModelCheckpoint(str(folder / "epoch{epoch}"),
                                                save_weights_only=True)
        _fit(part, digits, STOP, extra=[saver])
        _RUNS[method] = Runs(method, full, part, folder / f"epoch{STOP}")
    return _RUNS[method]


@pytest.fixture(scope="module", params=METHODS)
def runs(request, float_digits_model, digits, tmp_path_factory) -> Runs:
    folder = tmp_path_factory.mktemp(f"resume_{request.param}")
    return _runs(request.param, float_digits_model, digits, folder)


def _schedule_state_is_nontrivial(model, method: str) -> None:
    """The interrupted run's schedules have moved: the comparison is not of defaults."""
    names = {v.name: float(np.max(v.numpy())) for v in model.variables if v.shape == ()}
    flags = [value for name, value in names.items() if name.endswith("_initialized:0")]
    assert flags and min(flags) == 1.0
    if method == "qn":  # T = (epoch + 1) * 10 at the last epoch run (epoch STOP - 1)
        temperatures = [v for n, v in names.items() if "temperature" in n]
        assert temperatures and set(temperatures) == {10.0 * STOP}
    if method == "crq":  # the ramp has risen; soft span of 3 epochs is 2: ramp reached ~1
        ramps = [v for n, v in names.items() if n.endswith("_crq_ramp:0")]
        assert ramps and 0.5 < min(ramps) <= 1.0


def test_checkpoint_resume_continues_exactly(runs, float_digits_model, digits):
    _schedule_state_is_nontrivial(runs.part, runs.method)
    keras.utils.set_random_seed(5)
    resumed = _quantized(float_digits_model, runs.method)
    resumed.load_weights(str(runs.checkpoint))
    _fit(resumed, digits, EPOCHS, initial_epoch=STOP)
    _assert_same_state(_state(resumed), _state(runs.full))


@pytest.mark.parametrize("save_format", ["h5", "tf"])
def test_saved_model_keeps_every_quantizer_state(runs, tmp_path, save_format):
    path = str(tmp_path / ("model.h5" if save_format == "h5" else "saved_model"))
    runs.part.save(path, save_format=save_format)
    with tfqnet.quantize_scope():
        loaded = keras.models.load_model(path)
    count = None  # every variable, the optimizer's too
    if save_format == "h5":
        # Optimizer slots are created (and set from the file) on first use.
        loaded.optimizer.build(loaded.trainable_variables)
    else:
        # tf-keras restores no optimizer state from a SavedModel (measured: Adam's
        # moments and iteration start afresh), so resume from h5 or a checkpoint.
        count = len(runs.part.variables)
    _assert_same_state(_state(loaded)[:count], _state(runs.part)[:count])


_FLATBUFFERS: dict[int, bytes] = {}


def _converted(model, digits) -> bytes:
    key = id(model)  # models live in _RUNS for the session, so ids are not reused
    if key not in _FLATBUFFERS:
        _FLATBUFFERS[key] = tfqnet.convert(model, digits.x_train[:100])
    return _FLATBUFFERS[key]


def test_h5_resume_gives_the_same_flatbuffer_for_qn(float_digits_model, digits, tmp_path):
    """The whole user story for the method with the most schedule state: stop, save
    to h5, load, continue with initial_epoch, convert: the bytes of the uninterrupted run."""
    qn = _runs("qn", float_digits_model, digits, tmp_path)
    qn.part.save(str(tmp_path / "stopped.h5"))
    with tfqnet.quantize_scope():
        resumed = keras.models.load_model(str(tmp_path / "stopped.h5"))
    _fit(resumed, digits, EPOCHS, initial_epoch=STOP)
    temperatures = [float(v) for v in resumed.variables if "temperature" in v.name]
    assert set(temperatures) == {10.0 * EPOCHS}  # the schedule went on from epoch STOP
    assert tfqnet.convert(resumed, digits.x_train[:100]) == _converted(qn.full, digits)


@pytest.mark.parametrize("method", METHODS)
def test_seeded_runs_convert_to_identical_bytes(method, float_digits_model, digits, tmp_path):
    """quantize -> fine-tune -> convert with the same seed as the uninterrupted run gives
    its bytes again (with op determinism on, as tests/conftest.py sets it, and no
    ``tf.add_n`` in the quantizers' sums: no order that depends on thread timing)."""
    first = _runs(method, float_digits_model, digits, tmp_path)
    keras.utils.set_random_seed(5)
    again = _quantized(float_digits_model, method)
    _fit(again, digits, EPOCHS)
    flatbuffer = tfqnet.convert(again, digits.x_train[:100])
    assert len(flatbuffer) > 1000 and flatbuffer == _converted(first.full, digits)
