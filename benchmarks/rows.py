"""The rows of the benchmark suite: what a user would run, each measured the same way.

Every row starts from the same float model of a task and seed (trained by
:func:`train_float`), fine-tunes for the same number of QAT epochs (Adam 5e-4, batch
32, seed ``seed + 1``), converts, and runs the flatbuffer on the TFLM runtime
(:func:`measure`). Rows:

* ``float``: the float model, converted to a float32 flatbuffer (no optimizations).
* ``post-training int8``: TFLiteConverter with representative data on the float model.
* ``TFMOT default 8-bit``: ``tfmot.quantization.keras.quantize_model``.
* ``TFMOT n-bit W4A8`` / ``W4A4`` / ``W2A8``: TFMOT's experimental n-bit scheme. W2A8 is
  TFMOT's straight-through ternary (``LastValueQuantizer(num_bits=2, narrow_range=True,
  symmetric=True, per_axis=False)``, the quantizer ``benchmarks/bench_qn.py`` configures
  by hand), with BatchNormalization folded by the scheme on any model, and with the
  layer policy tfqnet's ternary rows get by default (first and last weighted layer at
  8 bits, :mod:`tfqnet.core.policy`), so the rows compare like with like. W4A4 does not
  convert (4-bit activations are no TFLite tensor type); the table says so.
* tfqnet: ``uniform`` W8A8 and W4A8, ``qn`` ternary (W2A8) and 3bit_pow2 (W4A8),
  ``crq`` W2A8 (and the same model exported with 2-bit compressed weights), ``srq``
  (when registered) fixed W4A8 and W4A4 and learned widths (up to 8 bits) under a
  budget equal to the fixed W4A8 row's weight bytes, and the pixel embedding
  (``quantize_model(..., pixel_embedding=...)``, uniform W4A8) on raw uint8 pixels.
  Each method with its default options.

Each tfqnet row trains with :func:`tfqnet.callbacks`; TFMOT rows need none.
"""

from __future__ import annotations

import re
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tfqnet
from benchmarks.baselines import (
    policy_bits,
    tflite_float,
    tflite_int8,
    tfmot_default,
    tfmot_n_bit,
)
from benchmarks.tasks import PIXEL_SCALE, Task
from tfqnet._keras import keras
from tfqnet.export.compression import stored_weight_bytes
from tfqnet.export.flatbuffer import flash_breakdown
from tfqnet.micro.arena import measure_arena
from tfqnet.micro.c_arrays import align_flatbuffer
from tfqnet.models import compile_classifier

QAT_LR = 5e-4
BATCH = 32


@dataclass
class Measurement:
    """One row, one task, one seed. None: not applicable (see ``error`` for failures)."""

    keras_acc: float | None = None  # the Keras model the row deploys (QAT, or float)
    tflm_acc: float | None = None
    agreement: float | None = None  # top-1 agreement Keras vs TFLM
    flatbuffer_bytes: int | None = None
    weight_bytes: int | None = None
    arena_bytes: int | None = None  # measured minimum
    arena_reported: int | None = None  # minimum + tfqnet's margin
    step_seconds: float | None = None  # median training step (batch 32)
    conversion_seconds: float | None = None
    error: str | None = None  # why the row has no TFLM numbers
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What a row of one task and seed sees: the float model and the rows before it."""

    task: Task
    seed: int
    qat_epochs: int
    float_model: keras.Model
    measure_arena: bool = True
    #: row -> (trained Keras model, its training inputs), for derived rows and step times
    models: dict[str, tuple[keras.Model, np.ndarray]] = field(default_factory=dict)
    results: dict[str, Measurement] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    name: str
    run: Callable[[Context], Measurement]
    issue: str = ""  # the issue whose method or baseline the row measures


def step_time_samples(models: dict[str, tuple[keras.Model, np.ndarray]], y: np.ndarray,
                      rounds: int = 4, steps: int = 6, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each ``train_on_batch`` (batch 32) of each trained model.

    Measured round-robin (``rounds`` times ``steps`` steps of every model in turn, after
    ``warmup`` steps each) rather than during each row's ``fit``: on a shared machine
    the load changes over minutes, and interleaving spreads it over all rows alike.
    The models train on (this changes their weights: call after measuring them).
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for model, x in models.values():
        for _ in range(warmup):
            model.train_on_batch(x[:BATCH], y[:BATCH])
    for _ in range(rounds):
        for name, (model, x) in models.items():
            for _ in range(steps):
                start = time.perf_counter()
                model.train_on_batch(x[:BATCH], y[:BATCH])
                times[name].append(time.perf_counter() - start)
    return times


def step_times(models: dict[str, tuple[keras.Model, np.ndarray]], y: np.ndarray,
               rounds: int = 4, steps: int = 6) -> dict[str, float]:
    """Median seconds of one ``train_on_batch`` of each model (:func:`step_time_samples`)."""
    samples = step_time_samples(models, y, rounds, steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def short_error(error: BaseException) -> str:
    """One line for the table: the converter's ``error: ...`` line, else the innermost
    ``...Error: ...`` line of a Keras traceback, else the message's first line."""
    text = str(error)
    converter = re.search(r"error: (.+)", text)
    inner = re.findall(r"^\s*(\w+(?:Error|Exception): .+)$", text, re.MULTILINE)
    if converter:
        line = converter.group(1)
    elif inner:
        line = inner[-1].strip()
    else:
        line = type(error).__name__ + (f": {text.strip().splitlines()[0]}" if text.strip() else "")
    line = re.sub(r"tensor<[^>]*quant\.uniform<(\w+):[^>]*>>", r"\1 tensor", line)
    line = line.replace("|", "/").replace("`", "'")
    return line if len(line) <= 140 else line[:137] + "..."


def weight_bytes(flatbuffer: bytes) -> int:
    """Filter bytes as stored (INT4 packed; compressed: indices + tables) plus GATHER
    tables (the pixel embedding's first layer)."""
    graph = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    tables = sum(graph.tensors[op.inputs[0]].buffer_bytes
                 for op in graph.operators if op.name == "GATHER")
    return stored_weight_bytes(flatbuffer) + tables


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(logits).argmax(-1) == y))


def train_float(task: Task, seed: int, epochs: int) -> keras.Model:
    """The task's float model trained for ``epochs`` (seed ``seed``)."""
    keras.utils.set_random_seed(seed)
    model = compile_classifier(task.build(), task.float_lr)
    model.fit(task.x_train, task.y_train, epochs=epochs, batch_size=BATCH, verbose=0)
    return model


def measure(ctx: Context, result: Measurement, flatbuffer: bytes, keras_logits: np.ndarray,
            x_test: np.ndarray) -> Measurement:
    """Fills the TFLM accuracy, agreement, sizes and arena of ``flatbuffer``."""
    tflm_logits = tfqnet.run_tflm(flatbuffer, x_test)
    result.tflm_acc = accuracy(tflm_logits, ctx.task.y_test)
    result.agreement = float(np.mean(tflm_logits.argmax(-1) == keras_logits.argmax(-1)))
    result.flatbuffer_bytes = len(flatbuffer)
    result.weight_bytes = weight_bytes(flatbuffer)
    result.extra["flash"] = flash_breakdown(flatbuffer)
    if ctx.measure_arena and ctx.seed == 0:  # the arena depends on the graph, not the seed
        arena = measure_arena(align_flatbuffer(flatbuffer))
        result.arena_bytes, result.arena_reported = arena.minimum, arena.reported
    return result


def _failed(result: Measurement, stage: str, error: BaseException) -> Measurement:
    if stage == "training":  # unexpected: show where (conversion failures are expected)
        traceback.print_exception(error)
    result.error = f"{stage} fails: {short_error(error)}"
    return result


def _deploy(ctx: Context, result: Measurement, convert: Callable[[], bytes],
            keras_logits: np.ndarray, x_test: np.ndarray) -> Measurement:
    """Times ``convert()``, then :func:`measure`s the flatbuffer; a failure of either
    is recorded in ``result.error`` (the table reports it) instead of raised."""
    start = time.perf_counter()
    try:
        flatbuffer = convert()
    except Exception as error:  # noqa: BLE001
        return _failed(result, "conversion", error)
    result.conversion_seconds = time.perf_counter() - start
    try:
        return measure(ctx, result, flatbuffer, keras_logits, x_test)
    except Exception as error:  # noqa: BLE001
        return _failed(result, "TFLM run", error)


# --- the rows -------------------------------------------------------------------------------


def _float_row(ctx: Context) -> Measurement:
    result = Measurement()
    keras_logits = ctx.float_model.predict(ctx.task.x_test, verbose=0)
    result.keras_acc = accuracy(keras_logits, ctx.task.y_test)
    return _deploy(ctx, result, lambda: tflite_float(ctx.float_model), keras_logits,
                   ctx.task.x_test)


def _ptq_row(ctx: Context) -> Measurement:
    result = Measurement()
    keras_logits = ctx.float_model.predict(ctx.task.x_test, verbose=0)
    return _deploy(ctx, result, lambda: tflite_int8(ctx.float_model, ctx.task.x_train),
                   keras_logits, ctx.task.x_test)


def qat_row(name: str, issue: str, make: Callable[[Context], keras.Model],
            convert: Callable[[keras.Model, np.ndarray], bytes], *, tfqnet_row: bool = True,
            raw_pixels: bool = False) -> Row:
    """A row that fine-tunes ``make(ctx)`` from the float model, then ``convert``s it."""

    def run(ctx: Context) -> Measurement:
        task, result = ctx.task, Measurement()
        x_train, x_test = ((task.pixels_train, task.pixels_test) if raw_pixels
                           else (task.x_train, task.x_test))
        try:
            keras.utils.set_random_seed(ctx.seed + 1)
            qat = compile_classifier(make(ctx), QAT_LR)
            callbacks = tfqnet.callbacks(qat, ctx.qat_epochs) if tfqnet_row else []
            qat.fit(x_train, task.y_train, epochs=ctx.qat_epochs, batch_size=BATCH, verbose=0,
                    callbacks=callbacks)
        except Exception as error:  # noqa: BLE001
            return _failed(result, "training", error)
        ctx.models[name] = (qat, x_train)
        keras_logits = qat.predict(x_test, verbose=0)
        result.keras_acc = accuracy(keras_logits, task.y_test)
        result.extra["keras_logits"] = keras_logits
        return _deploy(ctx, result, lambda: convert(qat, x_train), keras_logits, x_test)

    return Row(name, run, issue)


def _tfqnet(method: str, weight_bits: int, activation_bits: int = 8, **options):
    def make(ctx: Context) -> keras.Model:
        return tfqnet.quantize_model(ctx.float_model, method, weight_bits, activation_bits,
                                     **options)
    return make


def _tfqnet_convert(qat: keras.Model, x: np.ndarray) -> bytes:
    return tfqnet.convert(qat, x)


def _tfmot_convert(qat: keras.Model, x: np.ndarray) -> bytes:
    return tflite_int8(qat, x)


def _compressed_row(source: str) -> Callable[[Context], Measurement]:
    """The QAT model of row ``source`` exported with ``compress=True`` (no new training)."""

    def run(ctx: Context) -> Measurement:
        trained, (qat, _) = ctx.results.get(source), ctx.models.get(source, (None, None))
        result = Measurement()
        if trained is None or qat is None:
            result.error = f"needs the {source!r} row, which did not train"
            return result
        result.keras_acc = trained.keras_acc
        result.extra["trained_as"] = source  # same training, so the same step time

        def convert() -> bytes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "runs on TFLM only"
                return tfqnet.convert(qat, ctx.task.x_train, compress=True)

        return _deploy(ctx, result, convert, trained.extra["keras_logits"], ctx.task.x_test)

    return run


SRQ_FIXED = "tfqnet srq W4A8"
SRQ_LEARNED = "tfqnet srq learned bits (<= W4A8 bytes)"


def _srq_learned(ctx: Context) -> keras.Model:
    fixed = ctx.results.get(SRQ_FIXED)
    if fixed is None or fixed.weight_bytes is None:
        raise RuntimeError(f"the budget is the {SRQ_FIXED!r} row's weight bytes, which has none")
    return tfqnet.quantize_model(ctx.float_model, "srq", 8, 8,
                                 target_weight_kb=fixed.weight_bytes / 1024)


def _srq_report(ctx: Context) -> Measurement:
    """The learned-bits row plus its per-layer report (``extra["bits"]``)."""
    from tfqnet.quantizers.report import bit_width_report

    result = _SRQ_LEARNED_ROW.run(ctx)
    if SRQ_LEARNED in ctx.models:
        report = bit_width_report(ctx.models[SRQ_LEARNED][0])
        result.extra["bits"] = {layer: (row["weight_bits"], row["max_bits"])
                                for layer, row in report.as_dict().items()}
        result.extra["bits_table"] = report.table()
    return result


_SRQ_LEARNED_ROW = qat_row(SRQ_LEARNED, "#4", _srq_learned, _tfqnet_convert)


def all_rows() -> list[Row]:
    """Every row, in table order (srq rows only when the method is registered)."""
    rows = [
        Row("float", _float_row),
        Row("post-training int8 (TFLiteConverter)", _ptq_row),
        qat_row("TFMOT default 8-bit", "", lambda ctx: tfmot_default(ctx.float_model),
                _tfmot_convert, tfqnet_row=False),
        qat_row("TFMOT n-bit W4A8", "", lambda ctx: tfmot_n_bit(ctx.float_model, 4, 8),
                _tfmot_convert, tfqnet_row=False),
        qat_row("TFMOT n-bit W4A4", "", lambda ctx: tfmot_n_bit(ctx.float_model, 4, 4),
                _tfmot_convert, tfqnet_row=False),
        qat_row("TFMOT n-bit W2A8 (straight-through ternary)", "",
                lambda ctx: tfmot_n_bit(ctx.float_model, 2, 8, keep_8_bit=policy_bits(
                    ctx.float_model, "auto", 2)), _tfmot_convert, tfqnet_row=False),
        qat_row("tfqnet uniform W8A8", "#2", _tfqnet("uniform", 8), _tfqnet_convert),
        qat_row("tfqnet uniform W4A8", "#2", _tfqnet("uniform", 4), _tfqnet_convert),
        qat_row("tfqnet qn ternary W2A8", "#3", _tfqnet("qn", 2), _tfqnet_convert),
        qat_row("tfqnet qn 3bit_pow2 W4A8", "#3", _tfqnet("qn", 4, levels="3bit_pow2"),
                _tfqnet_convert),
        qat_row("tfqnet crq ternary W2A8", "#5", _tfqnet("crq", 2), _tfqnet_convert),
        Row("tfqnet crq ternary W2A8, 2-bit compressed", _compressed_row(
            "tfqnet crq ternary W2A8"), "#5"),
    ]
    if "srq" in tfqnet.method_names():
        rows += [
            qat_row(SRQ_FIXED, "#4", _tfqnet("srq", 4), _tfqnet_convert),
            qat_row("tfqnet srq W4A4", "#4", _tfqnet("srq", 4, 4), _tfqnet_convert),
            Row(SRQ_LEARNED, _srq_report, "#4"),
        ]
    rows.append(qat_row(
        "tfqnet pixel embedding + uniform W4A8", "#6",
        _tfqnet("uniform", 4, pixel_embedding={"input_scale": PIXEL_SCALE}),
        _tfqnet_convert, raw_pixels=True))
    return rows
