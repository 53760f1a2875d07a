"""Quantization Networks on digits: ternary and 3bit_pow2 weights vs TFMOT's
straight-through ternary, and the QAT step time vs the uniform method.

For each seed: train the float digits CNN (seed s), then re-train copies of it
(8-bit activations everywhere):

* ``qn ternary``: ``method="qn", weight_bits=2`` (levels {-1, 0, 1}), the paper's
  zero band (thresholds at +-0.05 max|beta w|), and ``qn ternary t=0.35`` with a wider
  one (``ternary_threshold=0.35``);
* ``qn 3bit_pow2``: ``method="qn", weight_bits=4, levels="3bit_pow2"``;
* ``tfmot ste``: TFMOT's own quantizers, ``LastValueQuantizer(num_bits=2,
  narrow_range=True, symmetric=True, per_axis=False)`` on Conv2D/Dense kernels
  (min/max ternary grid, straight-through gradient) and TFMOT's default 8-bit
  activations (BN folding by TFMOT's default transforms);
* ``uniform``: ``method="uniform", weight_bits=2`` (LSQ), for the step time.

QN accuracies are measured on the deployed model in the TFLM runtime; the TFMOT
baseline on its Keras QAT model (TFMOT's 2-bit fake-quant does not deploy to TFLite
as 2 bits). Step time: median time per batch of the last QAT epoch.

Run: ``python benchmarks/bench_qn.py [--seeds 0 1 2] [--epochs 6]`` (not run by the tests).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow_model_optimization as tfmot

import tfqnet
from tfqnet._keras import keras
from tfqnet.datasets import load_digits
from tfqnet.models import compile_classifier, digits_cnn

_tfmot_q = tfmot.quantization.keras


class _TernaryConfig(_tfmot_q.QuantizeConfig):
    """TFMOT's straight-through baseline: 2-bit narrow-range kernels, 8-bit outputs."""

    def __init__(self, attr: str = "kernel"):
        self.attr = attr

    def get_weights_and_quantizers(self, layer):
        weight = _tfmot_q.quantizers.LastValueQuantizer(
            num_bits=2, per_axis=False, symmetric=True, narrow_range=True
        )
        return [(getattr(layer, self.attr), weight)]

    def get_activations_and_quantizers(self, layer):
        activation = _tfmot_q.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False
        )
        return [(layer.activation, activation)]

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.attr, quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"attr": self.attr}


def _fold_bn1(model: keras.Model) -> keras.Model:
    """The digits CNN with ``bn1`` folded into ``conv1`` (same function in inference).

    TFMOT folds Conv-BN only under its default config; with a custom kernel quantizer
    it rejects the BatchNormalization, so the baseline gets the folded kernel, as
    tfqnet's own layout transform does before QAT.
    """
    conv, bn = model.get_layer("conv1"), model.get_layer("bn1")
    gamma, beta, mean, variance = bn.get_weights()
    factor = gamma / np.sqrt(variance + bn.epsilon)
    inputs = keras.Input(model.input_shape[1:])
    folded = keras.layers.Conv2D(16, 3, padding="same", name="conv1")
    x = folded(inputs)
    after = False
    for layer in model.layers:
        if after:
            x = layer(x)
        after = after or layer.name == "bn1"
    result = keras.Model(inputs, x)
    folded.set_weights([conv.get_weights()[0] * factor, beta - mean * factor])
    return result


def tfmot_ternary(model: keras.Model) -> keras.Model:
    model = _fold_bn1(model)

    def annotate(layer):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            return _tfmot_q.quantize_annotate_layer(layer, _TernaryConfig())
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return _tfmot_q.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with _tfmot_q.quantize_scope({"_TernaryConfig": _TernaryConfig}):
        return _tfmot_q.quantize_apply(annotated)


class _BatchTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)



def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(-1) == y))


VARIANTS = {
    "qn ternary": dict(method="qn", weight_bits=2),
    "qn ternary t=0.35": dict(method="qn", weight_bits=2, ternary_threshold=0.35),
    "qn 3bit_pow2": dict(method="qn", weight_bits=4, levels="3bit_pow2"),
    "uniform": dict(method="uniform", weight_bits=2),
}


def run_seed(seed: int, float_epochs: int, epochs: int, k: float) -> dict[str, float]:
    digits = load_digits()
    keras.utils.set_random_seed(seed)
    model = compile_classifier(digits_cnn(), 1e-3)
    model.fit(digits.x_train, digits.y_train, epochs=float_epochs, batch_size=32, verbose=0)
    result = {"float": _accuracy(model.predict(digits.x_test, verbose=0), digits.y_test)}
    for name, kwargs in [*VARIANTS.items(), ("tfmot ste", None)]:
        keras.utils.set_random_seed(seed + 1)
        if kwargs is None:
            qat = tfmot_ternary(model)
        else:
            options = {"temperature_step": k} if kwargs["method"] == "qn" else {}
            qat = tfqnet.quantize_model(model, activation_bits=8, **kwargs, **options)
        compile_classifier(qat, 5e-4)
        timer = _BatchTimer()
        callbacks = [timer] + (tfqnet.callbacks(qat, epochs) if kwargs else [])
        qat.fit(
            digits.x_train,
            digits.y_train,
            epochs=epochs,
            batch_size=32,
            verbose=0,
            callbacks=callbacks,
        )
        result[f"{name} step ms"] = 1e3 * float(np.median(timer.times))
        keras_acc = _accuracy(qat.predict(digits.x_test, verbose=0), digits.y_test)
        if kwargs is None:
            result[name] = keras_acc
            continue
        flatbuffer = tfqnet.convert(qat, digits.x_train[:100])
        result[name] = _accuracy(tfqnet.run_tflm(flatbuffer, digits.x_test), digits.y_test)
        result[f"{name} keras"] = keras_acc
        print(f"  seed {seed} {name}: {result[name]:.4f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6, help="QAT re-training epochs")
    parser.add_argument("--k", type=float, default=10.0, help="QN temperature_step")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        start = time.time()
        rows.append(run_seed(seed, args.float_epochs, args.epochs, args.k))
        summary = "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if "ms" not in k)
        print(f"seed {seed}: {summary}  [{time.time() - start:.0f} s]", flush=True)

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    print(
        f"\nDigits, {len(rows)} seed(s) {args.seeds}, QAT {args.epochs} epochs, "
        f"QN k = {args.k:g}; accuracy in % (QN: TFLM runtime; TFMOT: Keras)\n"
    )
    print("| model | accuracy | gap to float | step time (ms) | vs uniform |")
    print("|---|---|---|---|---|")
    print(f"| float | {100 * mean('float'):.2f} | - | - | - |")
    uniform_ms = mean("uniform step ms")
    for name in [*VARIANTS, "tfmot ste"]:
        ms = mean(f"{name} step ms")
        print(
            f"| {name} | {100 * mean(name):.2f} | {100 * (mean('float') - mean(name)):+.2f} "
            f"| {ms:.1f} | {ms / uniform_ms:.2f}x |"
        )


if __name__ == "__main__":
    main()
