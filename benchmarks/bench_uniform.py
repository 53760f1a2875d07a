"""Issue 2 targets: W4A8 uniform accuracy vs float, int4 vs int8 size, QAT step time.

    python benchmarks/bench_uniform.py [--seeds 3] [--quick]

For each seed: train the digits CNN in float (30 epochs), then fine-tune (10 epochs)
with tfqnet uniform W8A8 and W4A8 and with TFMOT's default 8-bit QAT; convert, run on
the TFLM runtime. Step time is the median time of a training step (batch 32) after
warm-up, measured on the same model for tfqnet W4A8 and TFMOT default 8-bit.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import tfqnet
from benchmarks.baselines import step_time, tflite_int8, tfmot_default
from benchmarks.report import markdown_table, verdict, write_section
from tfqnet._keras import keras
from tfqnet.datasets import load_digits
from tfqnet.models import compile_classifier, digits_cnn


def tflite_bytes_and_acc(qat, data, converter_fn):
    flatbuffer = converter_fn(qat)
    logits = tfqnet.run_tflm(flatbuffer, data.x_test)
    qat_logits = qat.predict(data.x_test, verbose=0)
    return (len(flatbuffer), float(np.mean(logits.argmax(-1) == data.y_test)),
            float(np.mean(logits.argmax(-1) == qat_logits.argmax(-1))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 float + 1 QAT epochs")
    args = parser.parse_args()
    float_epochs, qat_epochs = (3, 1) if args.quick else (30, 10)
    data = load_digits()
    results: dict[str, list[tuple]] = {}
    times = {"tfqnet uniform W4A8": [], "TFMOT default 8-bit": []}
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        model = compile_classifier(digits_cnn(), 1e-3)
        model.fit(data.x_train, data.y_train, epochs=float_epochs, batch_size=32, verbose=0)
        float_acc = float(np.mean(model.predict(data.x_test, verbose=0).argmax(-1)
                                  == data.y_test))
        results.setdefault("float", []).append((float_acc, float("nan"), float("nan"), 0))
        runs = [
            ("tfqnet uniform W8A8", lambda m: tfqnet.quantize_model(m, weight_bits=8),
             lambda q: tfqnet.convert(q, data.x_train)),
            ("tfqnet uniform W4A8", lambda m: tfqnet.quantize_model(m, weight_bits=4),
             lambda q: tfqnet.convert(q, data.x_train)),
            ("TFMOT default 8-bit", tfmot_default, lambda q: tflite_int8(q, data.x_train)),
        ]
        for name, make, convert in runs:
            keras.utils.set_random_seed(seed)
            qat = compile_classifier(make(model), 5e-4)
            qat.fit(data.x_train, data.y_train, epochs=qat_epochs, batch_size=32, verbose=0,
                    callbacks=tfqnet.callbacks(qat, qat_epochs) if "tfqnet" in name else [])
            qat_acc = float(np.mean(qat.predict(data.x_test, verbose=0).argmax(-1)
                                    == data.y_test))
            size, tflm_acc, agreement = tflite_bytes_and_acc(qat, data, convert)
            results.setdefault(name, []).append((qat_acc, tflm_acc, agreement, size))
            if name in times:
                times[name].append(step_time(qat, data.x_train, data.y_train))
            print(f"seed {seed} {name}: QAT {qat_acc:.4f} TFLM {tflm_acc:.4f} "
                  f"agree {agreement:.4f} bytes {size}", flush=True)

    def mean_sd(values):
        values = [v for v in values if v == v]
        if not values:
            return "—"
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    rows = []
    for name, runs in results.items():
        cols = list(zip(*runs, strict=True))
        rows.append([name, mean_sd(cols[0]) if name == "float" else "—",
                     mean_sd(cols[0]) if name != "float" else "—", mean_sd(cols[1]),
                     mean_sd(cols[2]), int(np.mean(cols[3])) if name != "float" else "—"])
    float_acc = np.mean([r[0] for r in results["float"]])
    w4 = np.mean([r[1] for r in results["tfqnet uniform W4A8"]])
    ratio = (np.mean([r[3] for r in results["tfqnet uniform W4A8"]])
             / np.mean([r[3] for r in results["tfqnet uniform W8A8"]]))
    step_ratio = statistics.median(times["tfqnet uniform W4A8"]) / statistics.median(
        times["TFMOT default 8-bit"])
    body = markdown_table(
        ["config", "float acc", "QAT acc", "TFLM acc", "QAT-vs-TFLM agreement",
         "flatbuffer bytes"], rows)
    body += (
        f"\n\n{args.seeds} seed(s); float {float_epochs} epochs, QAT {qat_epochs} epochs; "
        "accuracy on the digits test split (450 images) on the TFLM runtime.\n\n"
        "| target | measured | verdict |\n|---|---|---|\n"
        f"| W4A8 within 1.0 point of float | {100 * (w4 - float_acc):+.2f} points | "
        f"{verdict(w4 >= float_acc - 0.01)} |\n"
        f"| int4 flatbuffer <= 0.6x int8 | {ratio:.3f}x | {verdict(ratio <= 0.6)} |\n"
        f"| QAT step time <= 1.3x TFMOT default 8-bit | {step_ratio:.2f}x "
        f"({1e3 * statistics.median(times['tfqnet uniform W4A8']):.1f} ms vs "
        f"{1e3 * statistics.median(times['TFMOT default 8-bit']):.1f} ms per batch of 32) | "
        f"{verdict(step_ratio <= 1.3)} |\n"
    )
    write_section("uniform", "Uniform learned-step quantizer (issue 2)", body)


if __name__ == "__main__":
    main()
