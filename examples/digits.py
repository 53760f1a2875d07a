"""The main job: train -> quantize -> fine-tune -> convert -> run on TFLM, on digits.

    python examples/digits.py --out out/

Trains the baseline CNN on scikit-learn's digits (fixed stratified split), quantizes
it with tfqnet at W8A8 and at W4A8 (by default), fine-tunes each, converts both to
full-integer TFLite flatbuffers (int8 and packed int4 weights), runs them on the
TFLite Micro reference kernels and prints a table. The .tflite files go to --out,
which must not already hold them unless --force is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import tfqnet  # first: makes tf.keras tf-keras for TFMOT
from tfqnet._keras import keras, tf
from tfqnet.datasets import load_digits
from tfqnet.models import compile_classifier, digits_cnn


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the .tflite files")
    parser.add_argument("--method", default="uniform", choices=tfqnet.method_names())
    parser.add_argument("--weight-bits", type=int, default=4, help="low-bit model's weights")
    parser.add_argument("--activation-bits", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser.parse_args(argv)



def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def write_new(path: Path, data: bytes, force: bool) -> None:
    """Writes atomically; refuses to replace an existing file unless ``force``."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = [("int8", 8, 8), (f"w{args.weight_bits}a{args.activation_bits}",
                                args.weight_bits, args.activation_bits)]
    targets = {name: args.out / f"digits_{name}.tflite" for name, _, _ in configs}
    test_inputs = args.out / "digits_test_x.npy"  # for `tfqnet check --data`
    existing = [str(p) for p in [*targets.values(), test_inputs] if p.exists()]
    if existing and not args.force:  # refuse before any work, not after training
        print(f"error: {', '.join(existing)} exist; pass --force to overwrite", file=sys.stderr)
        return 1

    start = time.time()
    data = load_digits()
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()  # the same --seed, the same bytes
    print(f"[1/4] training the float CNN ({args.epochs} epochs)...", flush=True)
    model = compile_classifier(digits_cnn(), 1e-3)
    model.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=32, verbose=0)
    float_acc = accuracy(model.predict(data.x_test, verbose=0), data.y_test)
    print(f"      float test accuracy {float_acc:.4f}", flush=True)

    if test_inputs.exists() and args.force:
        test_inputs.unlink()
    np.save(test_inputs, data.x_test[:100])

    rows = []
    for step, (name, weight_bits, activation_bits) in enumerate(configs):
        print(f"[{2 + step}/4] {args.method} W{weight_bits}A{activation_bits}: "
              f"quantize, fine-tune {args.qat_epochs} epochs, convert, run on TFLM...",
              flush=True)
        keras.utils.set_random_seed(args.seed)
        qat = tfqnet.quantize_model(model, method=args.method, weight_bits=weight_bits,
                                    activation_bits=activation_bits)
        compile_classifier(qat, 5e-4)
        qat.fit(data.x_train, data.y_train, epochs=args.qat_epochs, batch_size=32, verbose=0,
                callbacks=tfqnet.callbacks(qat, args.qat_epochs))
        flatbuffer = tfqnet.convert(qat, data.x_train)
        write_new(targets[name], flatbuffer, args.force)
        qat_logits = qat.predict(data.x_test, verbose=0)
        tflm_logits = tfqnet.run_tflm(flatbuffer, data.x_test)
        rows.append({
            "model": f"W{weight_bits}A{activation_bits}",
            "QAT acc": accuracy(qat_logits, data.y_test),
            "TFLM acc": accuracy(tflm_logits, data.y_test),
            "agreement": float(np.mean(qat_logits.argmax(-1) == tflm_logits.argmax(-1))),
            "bytes": len(flatbuffer),
            "weight bytes": tfqnet.FlatbufferModel.from_bytes(flatbuffer).weight_bytes(),
            "file": str(targets[name]),
        })

    print(f"[4/4] done in {time.time() - start:.0f} s\n")
    print(f"float accuracy: {float_acc:.4f}")
    header = ["model", "QAT acc", "TFLM acc", "agreement", "bytes", "weight bytes", "file"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{row[h]:.4f}" if isinstance(row[h], float) else str(row[h]) for h in header]
        print("| " + " | ".join(cells) + " |")
    int8_bytes = rows[0]["bytes"]
    print(f"\n{rows[1]['model']} flatbuffer is {rows[1]['bytes'] / int8_bytes:.3f}x the int8 one.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
