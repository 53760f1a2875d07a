"""Issue 4 targets: SRQ learned mixed precision under a flash budget, and W4A4.

    python benchmarks/bench_srq.py [--seeds 3] [--float-epochs 30] [--qat-epochs 10]

For each seed: train the digits CNN in float, then fine-tune (Adam 5e-4) with

* tfqnet ``uniform`` W4A8 (learned step size, all kernels 4-bit): the all-4-bit baseline;
* ``srq`` W4A8 (fixed 4-bit widths, DropBits p = 0.1) and the same with DropBits off;
* ``srq`` with widths learned from 8 bits under ``target_weight_kb`` = the all-4-bit
  model's kernel bytes (and, for contrast, that budget + 15%);
* the same budget with ``storage="compressed"`` (converted with ``compress=True``:
  sub-4-bit and 5..7-bit kernels as TFLM lookup-table indices, TFLM only);
* ``srq`` W4A4;

convert each, run it on the TFLM runtime and read the kernel bytes from the flatbuffer
(:func:`tfqnet.export.compression.stored_weight_bytes`: indices, decode header and
tables for compressed kernels).
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

import tfqnet
from benchmarks.report import markdown_table, verdict, write_section
from tfqnet._keras import keras
from tfqnet.datasets import load_digits
from tfqnet.export.compression import stored_weight_bytes
from tfqnet.models import compile_classifier, digits_cnn
from tfqnet.quantizers import srq

COMPRESSED = "srq learned, budget = all-4-bit bytes, compressed storage"


def all_int4_bytes(model) -> int:
    sizes = [int(np.prod(layer.kernel.shape)) for layer in model.layers if hasattr(layer, "kernel")]
    return sum(math.ceil(n / 2) for n in sizes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--float-epochs", type=int, default=30)
    parser.add_argument("--qat-epochs", type=int, default=10)
    args = parser.parse_args()
    data = load_digits()
    results: dict[str, list[dict]] = {}
    reports: dict[str, list[srq.BitWidthReport]] = {}
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        model = compile_classifier(digits_cnn(), 1e-3)
        model.fit(data.x_train, data.y_train, epochs=args.float_epochs, batch_size=32,
                  verbose=0)
        float_acc = float(np.mean(model.predict(data.x_test, verbose=0).argmax(-1)
                                  == data.y_test))
        results.setdefault("float", []).append({"tflm": float_acc})
        budget = all_int4_bytes(model)
        runs = {
            "uniform W4A8 (all 4-bit)": dict(method="uniform", weight_bits=4),
            "srq W4A8 (all 4-bit)": dict(method="srq", weight_bits=4),
            "srq W4A8, DropBits off": dict(method="srq", weight_bits=4, drop_probability=0.0),
            "srq learned, budget = all-4-bit bytes": dict(
                method="srq", weight_bits=8, target_weight_kb=budget / 1024),
            COMPRESSED: dict(
                method="srq", weight_bits=8, target_weight_kb=budget / 1024,
                storage="compressed"),
            "srq learned, budget = all-4-bit + 15%": dict(
                method="srq", weight_bits=8, target_weight_kb=1.15 * budget / 1024),
            "srq W4A4": dict(method="srq", weight_bits=4, activation_bits=4),
        }
        for name, options in runs.items():
            keras.utils.set_random_seed(seed)
            qat = compile_classifier(tfqnet.quantize_model(model, **options), 5e-4)
            qat.fit(data.x_train, data.y_train, epochs=args.qat_epochs, batch_size=32,
                    verbose=0, callbacks=tfqnet.callbacks(qat, args.qat_epochs))
            # compressed storage: convert with compress=True iff a kernel is counted as
            # lookup-table indices (compress refuses a model with nothing to compress)
            lut = any(r["stored_as"].endswith("LUT") for r in srq.bit_width_report(qat).rows)
            with warnings.catch_warnings():  # the TFLM-only notice of compressed storage
                warnings.simplefilter("ignore", UserWarning)
                flatbuffer = tfqnet.convert(qat, data.x_train, compress=lut)
            qat_top1 = qat.predict(data.x_test, verbose=0).argmax(-1)
            tflm_top1 = tfqnet.run_tflm(flatbuffer, data.x_test).argmax(-1)
            row = {
                "qat": float(np.mean(qat_top1 == data.y_test)),
                "tflm": float(np.mean(tflm_top1 == data.y_test)),
                "agreement": float(np.mean(qat_top1 == tflm_top1)),
                "weight_bytes": stored_weight_bytes(flatbuffer),
                "budget": options.get("target_weight_kb", 0) * 1024 or None,
            }
            results.setdefault(name, []).append(row)
            if options["method"] == "srq" and "target_weight_kb" in options:
                report = srq.bit_width_report(qat)
                reports.setdefault(name, []).append(report)
                row["widths"] = "/".join(
                    str(r["weight_bits"]) + ("c" if r["stored_as"].endswith("LUT") else "")
                    for r in report.rows)
            print(f"seed {seed} {name}: QAT {row['qat']:.4f} TFLM {row['tflm']:.4f} "
                  f"agree {row['agreement']:.4f} weight bytes {row['weight_bytes']} "
                  f"{row.get('widths', '')}", flush=True)

    def mean_sd(values):
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    rows = []
    for name, runs in results.items():
        if name == "float":
            rows.append([name, "—", mean_sd([r["tflm"] for r in runs]) + " (Keras)", "—", "—",
                         "—"])
            continue
        within = all(r["budget"] is None or r["weight_bytes"] <= r["budget"] for r in runs)
        rows.append([
            name, mean_sd([r["qat"] for r in runs]), mean_sd([r["tflm"] for r in runs]),
            f"{min(r['agreement'] for r in runs):.4f}",
            f"{int(np.mean([r['weight_bytes'] for r in runs]))}"
            + ("" if runs[0]["budget"] is None else f" (budget {int(runs[0]['budget'])}, "
               f"{'kept' if within else '**exceeded**'})"),
            ", ".join(r.get("widths", "—") for r in runs),
        ])
    tflm = {name: np.mean([r["tflm"] for r in runs]) for name, runs in results.items()}
    uniform4 = tflm["uniform W4A8 (all 4-bit)"]

    def budget_target(name: str) -> str:
        learned = tflm[name]
        return (f"| budget = all-4-bit bytes: learned widths >= uniform all-4-bit (mean), "
                f"`{name}` | {learned:.4f} vs {uniform4:.4f} "
                f"({100 * (learned - uniform4):+.2f} points; srq all-4-bit "
                f"{tflm['srq W4A8 (all 4-bit)']:.4f}; min agreement "
                f"{min(r['agreement'] for r in results[name]):.4f}) | "
                # means of image counts: equal counts may differ in the last float bit
                f"{verdict(learned >= uniform4 - 1e-9)} |\n")
    body = markdown_table(
        ["config", "QAT acc", "TFLM acc", "min QAT-vs-TFLM agreement", "kernel bytes",
         "learned widths conv1/conv2/fc1/logits (per seed)"], rows)
    body += (
        f"\n\n{args.seeds} seed(s); float {args.float_epochs} epochs, QAT {args.qat_epochs} "
        "epochs (Adam 5e-4, batch 32; the freeze callback fixes learned widths for the last "
        f"{round(srq.FREEZE_FRACTION * args.qat_epochs)} epochs, or from the first step where "
        "the budget decides them: the INT4-storage budget rows, see below); accuracy on the digits "
        "test split (450 images) on the TFLM runtime; kernel bytes read from the flatbuffer "
        "(INT4 for <= 4 bits, else int8; compressed storage: indices + decode header + "
        "tables, read with `stored_weight_bytes`); a `c` after a learned width marks a "
        "kernel stored as TFLM lookup-table indices.\n\n"
        "| target | measured | verdict |\n|---|---|---|\n"
        + budget_target("srq learned, budget = all-4-bit bytes")
        + budget_target(COMPRESSED)
        + f"| W4A4 within 1.5 points of float | {100 * (tflm['srq W4A4'] - tflm['float']):+.2f} "
        f"points | {verdict(tflm['srq W4A4'] >= tflm['float'] - 0.015)} |\n"
    )
    srq4 = tflm["srq W4A8 (all 4-bit)"]
    body += (
        "\nHow the verdicts read the target: strictly, against the most accurate all-4-bit "
        f"model measured here, tfqnet's `uniform` method ({uniform4:.4f}, equal to float on "
        "digits). Against SRQ's own all-4-bit model with default options (the same method "
        f"at one precision for every layer, {srq4:.4f}) the learned rows are at "
        + ", ".join(f"{100 * (tflm[n] - srq4):+.2f}" for n in
                    ("srq learned, budget = all-4-bit bytes", COMPRESSED))
        + " points. One test image is 0.22 points of one seed, 0.07 of the mean of 3.\n"
    )
    body += (
        "\nWhy the all-4-bit budget leaves no room for wider layers: the export stores a "
        "kernel of <= 4 bits as packed INT4 and a wider one in int8, so a layer below 4 "
        "bits saves no flash and one above 4 bits costs twice its INT4 bytes. At exactly "
        "the all-4-bit bytes the only allocations that fit keep every kernel at <= 4 bits; "
        "the +15% budget shows which layers keep more bits when there is room. Both budgets "
        "decide the widths outright (every layer fits at its widest affordable width at "
        "once: `srq.widths_the_budget_decides`), so the freeze callback fixes them before "
        "the first step and every epoch trains the deployed model. "
        "`storage=\"compressed\"` lifts that limit: a kernel of b <= 7 bits stored as b-bit "
        "lookup-table indices (TFLM compression, `tfqnet.convert(..., compress=True)`; the "
        "model runs on TFLM only) costs b/8 bytes a weight plus a 16-byte header and its "
        "tables, so a narrower kernel pays for wider ones under the same budget. It also "
        "quantizes Dense kernels per output channel (never INT4 then: TFLM has no "
        "per-channel INT4 FULLY_CONNECTED), with one value table for all channels. A 4-bit "
        "fc1 (4-bit indices) fits this budget with conv2 at 2 bits and a 3-bit one with the "
        "others at 8 bits: a trade, so the gates learn the widths for the first half of the "
        "epochs. A 3-bit fc1 with a scale per channel loses less than with one per tensor "
        "(0.9881 at 654252b, per tensor and learned widths).\n"
    )
    for name, runs in reports.items():
        body += f"\nWidths learned by `{name}` (seed 0):\n\n{runs[0].table()}\n"
    write_section("srq", "SRQ: learned bit-widths under a flash budget, W4A4 (issue 4)", body)


if __name__ == "__main__":
    main()
