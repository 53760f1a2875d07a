"""Issue 3 targets: Quantization Networks ternary and 3bit_pow2 weights on digits vs
float and vs TFMOT's straight-through quantizers, and the QAT step time vs uniform.

    python -m benchmarks.bench_qn [--seeds 0 1 2] [--float-epochs 30] [--epochs 6]

For each seed: train the float digits CNN (Adam 1e-3, batch 32, seed s), then re-train
copies of it for ``--epochs`` epochs (Adam 5e-4, batch 32, seed s + 1, 8-bit
activations everywhere):

* ``qn ternary``: ``method="qn", weight_bits=2`` with the method's defaults (k-means
  thresholds, least-squares alpha, ``temperature_step`` 10, every epoch in the hard
  phase, ``hard_fraction=1.0``; the first and last layer at 8 bits, the layer policy);
* ``qn ternary, soft only`` and ``qn 3bit_pow2, soft only``: ``hard_fraction=0``, the
  paper's soft forward in every epoch (the default before the hard phase);
* ``qn ternary, paper init``: the same with ``ternary_threshold=0.05,
  alpha_init="paper"`` (the paper's +-0.05 rule and ``alpha = 1 / beta``);
* ``qn 3bit_pow2``: ``method="qn", weight_bits=4, levels="3bit_pow2"``;
* ``uniform W2A8``: ``method="uniform", weight_bits=2`` (LSQ), the step-time reference;
* ``TFMOT STE ternary``: :func:`benchmarks.baselines.tfmot_ternary`
  (``LastValueQuantizer(num_bits=2, narrow_range=True, symmetric=True,
  per_axis=False)`` kernels, straight-through gradient, BN folded; the policy's layers
  at 8 bits, as the tfqnet rows);
* ``TFMOT n-bit W3A8``: TFMOT's experimental n-bit scheme at 3-bit weights, the
  plain straight-through quantizer at the bits of 3bit_pow2 (7 levels);
* ``qn ternary, 3x epochs`` and ``TFMOT STE ternary, 3x epochs``: the same with three
  times the re-training epochs (is QN's gap a matter of budget?).

tfqnet rows: accuracy of the converted model on the TFLM runtime, and its top-1
agreement with the Keras QAT model. TFMOT rows: accuracy of the Keras QAT model
(TFMOT's 2- and 3-bit fake-quant does not deploy as 2/3-bit weights).

Step time: the three tfqnet QAT models of each seed are timed interleaved (rounds of
10 ``train_on_batch`` calls on one batch of 32, after warm-up), so load from other
processes hits all of them alike; median over all rounds and seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

import tfqnet
from benchmarks.baselines import policy_bits, tfmot_n_bit, tfmot_ternary
from benchmarks.report import markdown_table, verdict, write_section
from benchmarks.rows import step_time_samples
from tfqnet._keras import keras
from tfqnet.datasets import load_digits
from tfqnet.models import compile_classifier, digits_cnn
from tfqnet.quantizers.qn import HARD_FRACTION

QN_ROWS = {
    "qn ternary": dict(method="qn", weight_bits=2),
    "qn ternary, paper init": dict(
        method="qn", weight_bits=2, ternary_threshold=0.05, alpha_init="paper"
    ),
    "qn 3bit_pow2": dict(method="qn", weight_bits=4, levels="3bit_pow2"),
    "qn ternary, soft only": dict(method="qn", weight_bits=2, hard_fraction=0.0),
    "qn 3bit_pow2, soft only": dict(
        method="qn", weight_bits=4, levels="3bit_pow2", hard_fraction=0.0
    ),
    "uniform W2A8": dict(method="uniform", weight_bits=2),
    "qn ternary, 3x epochs": dict(method="qn", weight_bits=2),
}


def _policy(model) -> dict[str, int]:
    """The layers tfqnet's default policy widens below 4-bit weights: TFMOT's rows get
    them too, so the rows compare like with like."""
    return policy_bits(model)


TFMOT_ROWS = {
    "TFMOT STE ternary": lambda model: tfmot_ternary(model, keep_8_bit=_policy(model)),
    "TFMOT n-bit W3A8": lambda model: tfmot_n_bit(model, weight_bits=3, activation_bits=8,
                                                  keep_8_bit=_policy(model)),
    "TFMOT STE ternary, 3x epochs": lambda model: tfmot_ternary(model,
                                                                keep_8_bit=_policy(model)),
}
TIMED = ["qn ternary", "qn 3bit_pow2", "uniform W2A8"]


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(-1) == y))


def soft_band_share(qat: keras.Model) -> float:
    """Share of QN-quantized kernel weights in the soft band at the current T.

    A weight is in the band where ``sum_i sig_i (1 - sig_i)`` (``sig_i =
    sigmoid(T (beta w - b_i))``) is above 1% of its peak 1/4, i.e. ``beta w`` within
    ~6/T of a threshold: there the soft weight that training sees differs visibly from
    the hard weight that is deployed.
    """
    in_band = total = 0
    for layer in qat.layers:
        kernel = next((v for v in layer.weights if v.name.split("/")[-1] == "kernel:0"), None)
        state = {
            v.name.split("/")[-1].split(":")[0].removeprefix("kernel_"): v.numpy()
            for v in layer.weights
            if v.name.split("/")[-1].startswith("kernel_qn_")
        }
        if kernel is None or "qn_log_beta" not in state:
            continue
        thresholds, temperature = state["qn_thresholds"], state["qn_weight_temperature"]
        u = kernel.numpy().reshape(-1, kernel.shape[-1]) * np.exp(state["qn_log_beta"])
        z = np.clip(temperature * (u[..., None] - thresholds), -60.0, 60.0)
        sig = 1.0 / (1.0 + np.exp(-z))
        in_band += int(np.sum((sig * (1.0 - sig)).sum(-1) > 0.01 / 4))
        total += u.size
    return in_band / total


def run_seed(data, seed: int, float_epochs: int, epochs: int) -> tuple[dict, dict]:
    keras.utils.set_random_seed(seed)
    model = compile_classifier(digits_cnn(), 1e-3)
    model.fit(data.x_train, data.y_train, epochs=float_epochs, batch_size=32, verbose=0)
    result = {"float": _accuracy(model.predict(data.x_test, verbose=0), data.y_test)}
    trained = {}
    for name, make in [*QN_ROWS.items(), *TFMOT_ROWS.items()]:
        keras.utils.set_random_seed(seed + 1)
        row_epochs = 3 * epochs if name.endswith("3x epochs") else epochs
        tfqnet_row = name in QN_ROWS
        qat = tfqnet.quantize_model(model, activation_bits=8, **make) if tfqnet_row else make(
            model
        )
        compile_classifier(qat, 5e-4)
        qat.fit(
            data.x_train, data.y_train, epochs=row_epochs, batch_size=32, verbose=0,
            callbacks=tfqnet.callbacks(qat, row_epochs) if tfqnet_row else [],
        )
        keras_logits = qat.predict(data.x_test, verbose=0)
        if tfqnet_row:
            tflm_logits = tfqnet.run_tflm(tfqnet.convert(qat, data.x_train[:200]), data.x_test)
            result[name] = _accuracy(tflm_logits, data.y_test)
            result[f"{name} agreement"] = float(
                np.mean(tflm_logits.argmax(-1) == keras_logits.argmax(-1))
            )
        else:
            result[name] = _accuracy(keras_logits, data.y_test)
        if name in TIMED:  # only these are needed later (memory: a full run reached 8 GB)
            trained[name] = qat
        if name == "qn ternary, soft only":
            result["soft band"] = soft_band_share(qat)
        print(f"  seed {seed} {name}: {result[name]:.4f}", flush=True)
    times = step_time_samples({n: (trained[n], data.x_train) for n in TIMED}, data.y_train,
                              rounds=8, steps=10, warmup=5)
    return result, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6, help="QAT re-training epochs")
    args = parser.parse_args()
    data = load_digits()
    results, times = [], {name: [] for name in TIMED}
    started = time.time()
    for seed in args.seeds:
        start = time.time()
        result, seed_times = run_seed(data, seed, args.float_epochs, args.epochs)
        results.append(result)
        for name in TIMED:
            times[name] += seed_times[name]
        keras.backend.clear_session()
        print(f"seed {seed} done [{time.time() - start:.0f} s]", flush=True)

    def values(key: str) -> list[float]:
        return [r[key] for r in results]

    def mean_sd(key: str) -> str:
        return f"{np.mean(values(key)):.4f} ± {np.std(values(key)):.4f}"

    float_acc = float(np.mean(values("float")))
    step = {name: statistics.median(times[name]) for name in TIMED}
    rows = [["float", "Keras", mean_sd("float"), "—", "—", "—"]]
    for name in [*QN_ROWS, *TFMOT_ROWS]:
        gap = 100 * (np.mean(values(name)) - float_acc)
        tfqnet_row = name in QN_ROWS
        rows.append([
            name,
            "TFLM" if tfqnet_row else "Keras QAT",
            mean_sd(name),
            f"{gap:+.2f}",
            mean_sd(f"{name} agreement") if tfqnet_row else "—",
            f"{1e3 * step[name]:.1f}" if name in step else "—",
        ])

    def mean(key: str) -> float:
        return float(np.mean(values(key)))

    ternary, pow2 = mean("qn ternary"), mean("qn 3bit_pow2")
    ste2, ste3 = mean("TFMOT STE ternary"), mean("TFMOT n-bit W3A8")
    ratio = step["qn ternary"] / step["uniform W2A8"]
    ratio_pow2 = step["qn 3bit_pow2"] / step["uniform W2A8"]
    targets = [
        ["ternary W2A8 within 2 points of float",
         f"{100 * (ternary - float_acc):+.2f} points", verdict(ternary >= float_acc - 0.02)],
        ["ternary better than TFMOT STE ternary",
         f"{100 * ternary:.2f}% vs {100 * ste2:.2f}% ({100 * (ternary - ste2):+.2f})",
         verdict(ternary > ste2)],
        ["3bit_pow2 W4A8 within 1 point of float",
         f"{100 * (pow2 - float_acc):+.2f} points", verdict(pow2 >= float_acc - 0.01)],
        ["3bit_pow2 better than TFMOT STE at 3 bits (n-bit W3A8)",
         f"{100 * pow2:.2f}% vs {100 * ste3:.2f}% ({100 * (pow2 - ste3):+.2f})",
         verdict(pow2 > ste3)],
        ["QAT step time <= 1.5x uniform (ternary)",
         f"{ratio:.2f}x ({1e3 * step['qn ternary']:.1f} vs "
         f"{1e3 * step['uniform W2A8']:.1f} ms per batch of 32)", verdict(ratio <= 1.5)],
        ["QAT step time <= 1.5x uniform (3bit_pow2)", f"{ratio_pow2:.2f}x",
         verdict(ratio_pow2 <= 1.5)],
    ]
    body = markdown_table(
        ["config", "measured on", "accuracy", "vs float (points)", "QAT-vs-TFLM agreement",
         "step ms"], rows)
    body += (
        f"\n\nSeeds {args.seeds}; float {args.float_epochs} epochs, then {args.epochs} "
        "re-training epochs per row (same float model per seed); digits test split "
        "(450 images); mean ± std over seeds. Step time: median of interleaved "
        "`train_on_batch` timings (batch 32) of the timed rows. "
        f"Wall time of the run: {time.time() - started:.0f} s.\n\n"
    )
    body += markdown_table(["target", "measured", "verdict"], targets)
    hard = math.floor(HARD_FRACTION * args.epochs)
    body += (
        f"\n\nThe final hard phase (default `hard_fraction={HARD_FRACTION:g}`: the last "
        f"{hard} of {args.epochs} epochs train the deployed step function, with the soft "
        "function's gradient at the scheduled T) against the paper's soft forward "
        "throughout (`soft only` rows): ternary "
        f"{100 * (ternary - mean('qn ternary, soft only')):+.2f} points, 3bit_pow2 "
        f"{100 * (pow2 - mean('qn 3bit_pow2, soft only')):+.2f} points. Why: after the "
        f"last soft-only epoch (T = {10 * args.epochs}) {100 * mean('soft band'):.1f}% "
        "of the ternary kernels' weights were still within ~6/T of a threshold (mean "
        "over seeds), where the trained soft weight differs from the deployed hard one. "
        "With 3x the epochs (T up to "
        f"{30 * args.epochs}, the last {math.floor(HARD_FRACTION * 3 * args.epochs)} hard) "
        "QN ternary is "
        f"{100 * (mean('qn ternary, 3x epochs') - float_acc):+.2f} points from float, "
        "TFMOT's STE at the same 3x budget "
        f"{100 * (mean('TFMOT STE ternary, 3x epochs') - float_acc):+.2f}. "
        "`hard_fraction` was chosen on a validation split held out of the training "
        "images, not on this test split (numbers in `docs/defaults.md`). QN rows are not "
        "bit-reproducible from run to run even "
        "with op determinism (`benchmarks/__init__.py`), while the TFMOT rows are: in "
        "two runs of this script on 2026-11-23 the same seed's QN accuracy differed by "
        "up to 1.3 points in a row (source not tracked down), so 3 seeds of 450 test "
        "images resolve differences of about a point, not less."
        "\n\nHow the other defaults were chosen (and why the paper's initialisation is "
        "the `paper init` row): see `docs/defaults.md`.\n"
    )
    write_section("qn", "Quantization Networks (issue 3)", body)


if __name__ == "__main__":
    main()
