"""CRQ ternary weights vs float on digits, and the size of 2-bit compressed weights.

For each seed: train the float digits CNN, re-train it with ``method="crq"``
(``weight_bits=2``, 8-bit activations) and, side by side, with the straight-through
ternary baseline (``method="uniform"`` at 2 bits: LSQ, round-to-nearest with a
straight-through gradient) and with QN when that method is registered. Accuracy is
measured on the deployed model in the TFLM runtime. Sizes: filter bytes of the
INT4 export, of the 2-bit compressed export (indices + decode headers + value
tables) and of the same weights in int8 (one byte each).

Run: ``python benchmarks/bench_crq.py [--seeds 0 1 2] [--epochs 6]`` (not run by the tests).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import tfqnet
from tfqnet._keras import keras
from tfqnet.convert.compression import compress_ternary, stored_weight_bytes
from tfqnet.datasets import load_digits
from tfqnet.models import compile_classifier, digits_cnn


def _accuracy(y_pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(y_pred.argmax(-1) == y))


def run_seed(seed: int, float_epochs: int, qat_epochs: int, methods: list[str]) -> dict:
    digits = load_digits()
    keras.utils.set_random_seed(seed)
    model = compile_classifier(digits_cnn(), 1e-3)
    model.fit(digits.x_train, digits.y_train, epochs=float_epochs, batch_size=32, verbose=0)
    result = {"float": _accuracy(model.predict(digits.x_test, verbose=0), digits.y_test)}
    for method in methods:
        keras.utils.set_random_seed(seed + 1)
        qat = compile_classifier(tfqnet.quantize_model(model, method=method, weight_bits=2), 5e-4)
        qat.fit(
            digits.x_train,
            digits.y_train,
            epochs=qat_epochs,
            batch_size=32,
            verbose=0,
            callbacks=tfqnet.callbacks(qat, qat_epochs),
        )
        flatbuffer = tfqnet.convert(qat, digits.x_train[:100])
        result[method] = _accuracy(tfqnet.run_tflm(flatbuffer, digits.x_test), digits.y_test)
        if method == "crq":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                compressed = compress_ternary(flatbuffer)
            reference = tfqnet.run_tflm(flatbuffer, digits.x_test, raw=True)
            filters = tfqnet.FlatbufferModel.from_bytes(flatbuffer).weight_tensors()
            result.update(
                int8_bytes=sum(int(np.prod(t.shape)) for t in filters),
                int4_bytes=stored_weight_bytes(flatbuffer),
                compressed_bytes=stored_weight_bytes(compressed),
                bit_identical=bool(
                    np.array_equal(tfqnet.run_tflm(compressed, digits.x_test, raw=True), reference)
                ),
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6, help="QAT re-training epochs")
    parser.add_argument(
        "--methods", nargs="+", default=None, help="default: crq, uniform and qn if registered"
    )
    args = parser.parse_args()
    methods = args.methods or ["crq", "uniform"] + (
        ["qn"] if "qn" in tfqnet.method_names() else []
    )
    if "crq" not in methods:
        parser.error("--methods must include crq (the sizes are measured on its export)")

    rows = []
    for seed in args.seeds:
        start = time.time()
        row = run_seed(seed, args.float_epochs, args.epochs, methods)
        rows.append(row)
        accuracies = "  ".join(f"{k} {row[k]:.4f}" for k in ["float", *methods])
        print(
            f"seed {seed}: {accuracies}  filters int8 {row['int8_bytes']} B, "
            f"int4 {row['int4_bytes']} B, 2-bit {row['compressed_bytes']} B "
            f"({row['compressed_bytes'] / row['int8_bytes']:.3f}x int8), "
            f"bit-identical {row['bit_identical']}  [{time.time() - start:.0f} s]",
            flush=True,
        )
    print(f"\nmean over seeds {args.seeds} (QAT {args.epochs} epochs, TFLM runtime accuracy):")
    for key in ["float", *methods]:
        values = [r[key] for r in rows]
        print(f"  {key:8s} {np.mean(values):.4f} +- {np.std(values):.4f}")
    gap = np.mean([r["float"] - r["crq"] for r in rows])
    print(f"  crq gap to float: {100 * gap:.2f} points (target <= 2)")
    ratio = np.mean([r["compressed_bytes"] / r["int8_bytes"] for r in rows])
    print(f"  2-bit compressed / int8 filter bytes: {ratio:.3f} (target <= 0.3)")


if __name__ == "__main__":
    main()
