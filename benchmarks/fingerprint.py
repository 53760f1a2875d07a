"""Fingerprints of converted models: proof that a refactor changed no byte.

    python benchmarks/fingerprint.py --out before.json     # on the old tree
    python benchmarks/fingerprint.py --out after.json      # on the new tree
    python benchmarks/fingerprint.py --compare before.json after.json

Trains the digits CNN (and, with ``--tasks digits mobilenet``, the MobileNetV2-style
model) in float for 3 epochs, then every method and deployed form for one seeded QAT
epoch with op determinism on, converts each, and records the SHA-256 of the
flatbuffer, its size, the Keras (QAT, inference mode) and TFLM accuracies on the test
split and their top-1 agreement. Only the public API is used (``quantize_model``,
``callbacks``, ``convert``, ``run_tflm``), so the same script runs on both trees.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import tfqnet
from benchmarks.tasks import PIXEL_SCALE, TASKS, to_pixels
from tfqnet._keras import keras, tf
from tfqnet.models import compile_classifier

FLOAT_EPOCHS = 3
QAT_EPOCHS = 1

#: name -> (quantize_model arguments, convert keyword arguments, raw pixels in)
CONFIGS = {
    "uniform W8A8": (dict(method="uniform", weight_bits=8, activation_bits=8), {}, False),
    "uniform W4A8": (dict(method="uniform", weight_bits=4, activation_bits=8), {}, False),
    "uniform W4A4": (dict(method="uniform", weight_bits=4, activation_bits=4), {}, False),
    "qn W2A8": (dict(method="qn", weight_bits=2, activation_bits=8), {}, False),
    "qn 3bit_pow2 W4A8": (dict(method="qn", weight_bits=4, activation_bits=8,
                               levels="3bit_pow2"), {}, False),
    "crq W2A8": (dict(method="crq", weight_bits=2, activation_bits=8), {}, False),
    "crq W2A8 compressed": (dict(method="crq", weight_bits=2, activation_bits=8),
                            {"compress": True}, False),
    "srq W4A8": (dict(method="srq", weight_bits=4, activation_bits=8), {}, False),
    "srq W4A4": (dict(method="srq", weight_bits=4, activation_bits=4), {}, False),
    "srq learned compressed": (dict(method="srq", weight_bits=8, activation_bits=8,
                                    storage="compressed", target_weight_kb=None),
                               {"compress": True}, False),
    "pixel embedding W4A8": (dict(method="uniform", weight_bits=4, activation_bits=8,
                                  pixel_embedding={"dim": 4, "bits": 4,
                                                   "input_scale": PIXEL_SCALE}), {}, True),
}

#: configs measured on some tasks only. On the MobileNetV2-style model the all-4-bit
#: budget is below the smallest model SRQ can export (10488 < 10808 bytes): its first and
#: last layers keep 8 bits, and its kernels are too small for 2-bit indices to pay for
#: the file overhead SRQ counts per compressed filter.
CONFIG_TASKS = {"srq learned compressed": ("digits",)}


def _budget_kb(model: keras.Model) -> float:
    """The all-4-bit kernel bytes of ``model`` (INT4, two weights a byte), in KB."""
    sizes = [int(np.prod(w.shape)) for layer in model.layers for w in layer.weights
             if w.name.endswith(("/kernel:0", "/depthwise_kernel:0"))]
    return sum((n + 1) // 2 for n in sizes) / 1024


def fingerprint(task_name: str, configs: list[str] | None = None) -> dict[str, dict]:
    task = TASKS[task_name]()
    keras.utils.set_random_seed(0)
    float_model = compile_classifier(task.build(), task.float_lr)
    float_model.fit(task.x_train, task.y_train, epochs=FLOAT_EPOCHS, batch_size=32, verbose=0)
    results = {}
    for name, (args, convert_args, raw) in CONFIGS.items():
        if (configs and name not in configs) or task_name not in CONFIG_TASKS.get(name, TASKS):
            continue
        args = dict(args)
        if "target_weight_kb" in args:
            args["target_weight_kb"] = _budget_kb(float_model)
        x_train = to_pixels(task.x_train) if raw else task.x_train
        x_test = to_pixels(task.x_test) if raw else task.x_test
        keras.utils.set_random_seed(1)
        qat = tfqnet.quantize_model(float_model, **args)
        compile_classifier(qat, 5e-4)
        qat.fit(x_train, task.y_train, epochs=QAT_EPOCHS, batch_size=32, verbose=0,
                callbacks=tfqnet.callbacks(qat, QAT_EPOCHS))
        flatbuffer = tfqnet.convert(qat, x_train[:200], **convert_args)
        keras_top1 = qat.predict(x_test, verbose=0).argmax(-1)
        tflm_top1 = tfqnet.run_tflm(flatbuffer, x_test).argmax(-1)
        results[name] = {
            "sha256": hashlib.sha256(flatbuffer).hexdigest(),
            "bytes": len(flatbuffer),
            "keras_acc": float(np.mean(keras_top1 == task.y_test)),
            "tflm_acc": float(np.mean(tflm_top1 == task.y_test)),
            "agreement": float(np.mean(keras_top1 == tflm_top1)),
        }
        print(f"{task_name:9s} {name:24s} {results[name]['sha256'][:16]} "
              f"{results[name]['bytes']:7d} B  TFLM {results[name]['tflm_acc']:.4f}", flush=True)
    return results


def compare(before: Path, after: Path) -> int:
    old, new = json.loads(before.read_text()), json.loads(after.read_text())
    differences = [f"{task} / {row}: {old[task].get(row)} -> {new.get(task, {}).get(row)}"
                   for task in old for row in old[task]
                   if old[task][row] != new.get(task, {}).get(row)]
    print("\n".join(differences) or f"identical: {sum(len(v) for v in old.values())} models")
    return 1 if differences else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    parser.add_argument("--tasks", nargs="+", default=["digits"], choices=sorted(TASKS))
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                        help="only these models (default: all)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    tf.config.experimental.enable_op_determinism()
    results = {task: fingerprint(task, args.configs) for task in args.tasks}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
