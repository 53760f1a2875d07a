"""Issue 18: ternary weights beyond digits: layer policy, distillation, storage.

    python -m benchmarks.bench_lowbit [--seeds 0 1 2] [--epochs 4] [--rows NAME ...]
                                      [--task mobilenet|hard|digits] [--lr RATE ...]
                                      [--section NAME]

The suite's MobileNetV2-style task (digits upsampled to 16x16, ``mobilenet_v2_tiny``),
or ``--task hard`` (the same digits rotated, shifted and noised,
:func:`benchmarks.tasks.hard_task`), or ``--task digits`` (the suite's digits CNN on 8x8
digits: what a choice costs there), with a **validation split**: the last 20% of the
training images are held out; the float model (12 epochs, 20 for digits, Adam at the
task's float rate: 2e-3, 1e-3 for digits) and every row train on the other 80%. Defaults
are chosen on the validation accuracy; the test split (450 images) is reported beside
it.

Each row re-trains a copy of the seed's float model for ``--epochs`` epochs (Adam 5e-4,
or each rate of ``--lr``: then every row runs at every rate, and the targets read each
row at the rate of its best mean validation accuracy; batch 32, seed ``seed + 1``) at
ternary weights and 8-bit activations, converts it the default way (``tfqnet.convert``:
``compress="auto"``) and runs it on the TFLM runtime. Rows differ in the layer policy
(``quantize_model(..., policy=...)``: none, the first/last layer at 8 bits, that plus
depthwise kernels at 8 or at 4 bits: the default, chosen by these rows' validation
accuracy), in ``hard_fraction`` and in the loss (``+ KD``:
:class:`tfqnet.DistillationLoss` from the float model's logits, T = 4, alpha = 0.9) or
the recipe (``+ warm-up/cosine``: Adam's rate rises linearly from 0 over the first 10%
of the steps, then follows a cosine to 0; ``+ BN re-estimation``: the float model's
BatchNormalization moving statistics are replaced by the exact statistics of the fit
images before ``quantize_model`` folds them; ``progressive 8 -> 4 -> 2``: one epoch of
``uniform`` at 8-bit, one at 4-bit weights, each stage starting from the last one's
trained weights, then the method's ternary stage for the remaining epochs, so the row
costs the same epochs). ``uniform ternary (LSQ)`` is the shared learned-step quantizer
at 2 bits (``qmax`` 1), with the default policy. TFMOT's straight-through ternary (its
n-bit scheme at W2A8, the suite's baseline) runs with the same policies
(:func:`benchmarks.baselines.tfmot_n_bit`), and with the same distillation
(``+ KD``), for a fair comparison.

Columns: accuracy (validation, test) on TFLM for tfqnet rows, of the Keras QAT model
for TFMOT rows (its flatbuffer is INT4, not ternary); QAT-vs-TFLM top-1 agreement on
the test split; weight bytes as stored (indices + decode headers + tables for
compressed filters) against the int8 model's (one byte per weight); flatbuffer bytes;
training seconds (``fit`` wall time).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import tfqnet
from benchmarks.baselines import policy_bits, tfmot_n_bit
from benchmarks.report import markdown_table, verdict, write_section
from benchmarks.rows import BATCH, QAT_LR, accuracy, weight_bytes
from benchmarks.tasks import TASKS as SUITE_TASKS
from benchmarks.tasks import hard_task
from tfqnet._keras import keras
from tfqnet.models import compile_classifier

FLOAT_EPOCHS = {"mobilenet": 12, "hard": 12, "digits": 20}  # the suite's
DEFAULT_EPOCHS = 4  # the suite's QAT budget on this task
VALIDATION_SHARE = 0.2
TASKS = {**SUITE_TASKS, "hard": hard_task}
KD = {"temperature": 4.0, "alpha": 0.9}

#: row -> (method or "tfmot", quantize_model options, distillation). Options are
#: spelled out, so a row keeps measuring the same thing when a default changes; the
#: rows marked "(default)" are today's defaults. "depthwise_bits": every
#: DepthwiseConv2D at that width, on top of the policy.
_QN_SOFT = {"hard_fraction": 0.5}  # qn's default until the depthwise policy was measured
_CRQ_SOFT = {"hard_fraction": 0.25}  # crq's, likewise
_HARD = {"hard_fraction": 1.0}
_FL = {"policy": "first_last"}
_FLD8 = {**_FL, "depthwise_bits": 8}
_FLD4 = {**_FL, "depthwise_bits": 4}  # what "auto" means below 4 bits
_DEFAULT = {**_FLD4, **_HARD}
ROWS: dict[str, tuple[str, dict, bool]] = {
    "qn ternary, no policy, hard_fraction 0.5": ("qn", {"policy": None, **_QN_SOFT}, False),
    "qn ternary, first/last 8-bit, hard_fraction 0.5": ("qn", {**_FL, **_QN_SOFT}, False),
    "qn ternary, first/last + depthwise 8-bit, hard_fraction 0.5": (
        "qn", {**_FLD8, **_QN_SOFT}, False),
    "qn ternary, first/last, hard_fraction 0.5 + KD": ("qn", {**_FL, **_QN_SOFT}, True),
    "qn ternary, first/last + depthwise 8-bit, hard_fraction 0.5 + KD": (
        "qn", {**_FLD8, **_QN_SOFT}, True),
    "qn ternary, first/last + depthwise 8-bit, hard_fraction 1": (
        "qn", {**_FLD8, **_HARD}, False),
    "qn ternary, first/last + depthwise 8-bit, hard_fraction 1 + KD": (
        "qn", {**_FLD8, **_HARD}, True),
    "qn ternary, first/last 8-bit + depthwise 4-bit, hard_fraction 1 (default)": (
        "qn", {**_FLD4, **_HARD}, False),
    "qn ternary, first/last 8-bit + depthwise 4-bit, hard_fraction 1 + KD": (
        "qn", {**_FLD4, **_HARD}, True),
    "crq ternary, no policy, hard_fraction 0.25": ("crq", {"policy": None, **_CRQ_SOFT}, False),
    "crq ternary, first/last 8-bit, hard_fraction 0.25": ("crq", {**_FL, **_CRQ_SOFT}, False),
    "crq ternary, first/last + depthwise 8-bit, hard_fraction 0.25": (
        "crq", {**_FLD8, **_CRQ_SOFT}, False),
    "crq ternary, first/last, hard_fraction 0.25 + KD": ("crq", {**_FL, **_CRQ_SOFT}, True),
    "crq ternary, first/last + depthwise 8-bit, hard_fraction 0.25 + KD": (
        "crq", {**_FLD8, **_CRQ_SOFT}, True),
    "crq ternary, first/last + depthwise 8-bit, hard_fraction 1": (
        "crq", {**_FLD8, **_HARD}, False),
    "crq ternary, first/last + depthwise 8-bit, hard_fraction 1 + KD": (
        "crq", {**_FLD8, **_HARD}, True),
    "crq ternary, first/last 8-bit + depthwise 4-bit, hard_fraction 1": (
        "crq", {**_FLD4, **_HARD}, False),
    # the options of "crq ternary, default, strength 0.01", under today's default's name
    "crq ternary, first/last 8-bit + depthwise 4-bit, hard_fraction 1, strength 0.01 (default)": (
        "crq", {**_DEFAULT, "strength": 1e-2}, False),
    "qn ternary, default + warm-up/cosine": ("qn", {**_DEFAULT, "schedule": "cosine"}, False),
    "qn ternary, default + BN re-estimation": ("qn", {**_DEFAULT, "bn_reestimate": True}, False),
    "qn ternary, default, progressive 8 -> 4 -> 2": (
        "qn", {**_DEFAULT, "progressive": True}, False),
    "crq ternary, default + warm-up/cosine": ("crq", {**_DEFAULT, "schedule": "cosine"}, False),
    "crq ternary, default + BN re-estimation": (
        "crq", {**_DEFAULT, "bn_reestimate": True}, False),
    "crq ternary, default, progressive 8 -> 4 -> 2": (
        "crq", {**_DEFAULT, "progressive": True}, False),
    "crq ternary, default + KD": ("crq", _DEFAULT, True),
    **{f"crq ternary, default, strength {x:g}": ("crq", {**_DEFAULT, "strength": x}, False)
       for x in (0.0, 1e-4, 1e-2, 1e-1)},
    "uniform ternary (LSQ), first/last 8-bit + depthwise 4-bit": ("uniform", _FLD4, False),
    "TFMOT STE ternary, no policy": ("tfmot", {"policy": None}, False),
    "TFMOT STE ternary, first/last 8-bit": ("tfmot", _FL, False),
    "TFMOT STE ternary, first/last + depthwise 8-bit": ("tfmot", _FLD8, False),
    "TFMOT STE ternary, first/last 8-bit + depthwise 4-bit": ("tfmot", _FLD4, False),
    "TFMOT STE ternary, first/last 8-bit + depthwise 4-bit + KD": ("tfmot", _FLD4, True),
}
# crq rows without a strength in their name: 1e-3, crq's default until the strength rows
# were measured. Rebuilt, not updated in place: rows share the option dicts above.
ROWS = {name: (method, {"strength": 1e-3, **options} if method == "crq" else options, kd)
        for name, (method, options, kd) in ROWS.items()}


def split(task):
    """(x_fit, y_fit, x_val, y_val, x_test, y_test): the last 20% of train held out."""
    n = int(round(len(task.x_train) * (1 - VALIDATION_SHARE)))
    return (task.x_train[:n], task.y_train[:n], task.x_train[n:], task.y_train[n:],
            task.x_test, task.y_test)


WARMUP_SHARE = 0.1
PROGRESSIVE_STAGES = (8, 4)  # uniform weight bits, one epoch each, before the ternary stage


def _copy(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def reestimated_batch_norms(float_model: keras.Model, x: np.ndarray) -> keras.Model:
    """A copy of ``float_model`` whose BatchNormalization moving mean and variance are
    the statistics of its input over all of ``x`` (layer by layer, each BN seeing the
    re-estimated ones before it), instead of the training run's exponential averages."""
    model = _copy(float_model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(model.inputs, layer.input).predict(x, batch_size=256, verbose=0)
            axes = tuple(range(inputs.ndim - 1))
            layer.moving_mean.assign(inputs.mean(axes))
            layer.moving_variance.assign(inputs.var(axes))
    return model


def with_qat_weights(float_model: keras.Model, qat: keras.Model) -> keras.Model:
    """A copy of ``float_model`` computing what ``qat``'s latent (unquantized) weights
    compute: each weighted layer takes its QAT kernel, which has its BatchNormalization
    folded in, so that BN becomes the identity plus the folded bias."""
    model = _copy(float_model)
    batch_norm_of = {layer._inbound_nodes[0].inbound_layers.name: layer for layer in model.layers
                     if isinstance(layer, keras.layers.BatchNormalization)}
    for layer in model.layers:
        if type(layer) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                               keras.layers.Dense):
            continue
        wrapper = qat.get_layer("quant_" + layer.name)
        kernel = wrapper._weight_vars[0][0]  # (variable, quantizer, state), as TFMOT keeps it
        bias = wrapper.layer.bias.numpy()
        batch_norm = batch_norm_of.pop(layer.name, None)
        own_bias = bias if batch_norm is None else 0 * bias  # else the BN adds it
        layer.set_weights([kernel.numpy(), own_bias] if layer.use_bias else [kernel.numpy()])
        if batch_norm is None:
            continue
        one = np.ones_like(bias)
        values = {"gamma": one, "beta": bias, "moving_mean": 0 * one,
                  "moving_variance": (1 - batch_norm.epsilon) * one}
        batch_norm.set_weights([values[w.name.split("/")[-1][:-2]] for w in batch_norm.weights])
    if batch_norm_of:
        raise ValueError(f"BatchNormalization not after a weighted layer: {list(batch_norm_of)}")
    return model


def _fit(model, x, targets, epochs: int, callbacks: list) -> float:
    """Trains ``model``; returns the wall seconds of ``fit``."""
    start = time.perf_counter()
    model.fit(x, targets, epochs=epochs, batch_size=BATCH, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def run_row(name: str, float_model: keras.Model, data, seed: int, epochs: int,
            qat_lr: float = QAT_LR) -> dict:
    method, options, distill = ROWS[name]
    options = dict(options)
    depthwise_bits = options.pop("depthwise_bits", None)
    schedule = options.pop("schedule", None)
    bn_reestimate = options.pop("bn_reestimate", False)
    progressive = options.pop("progressive", False)
    depthwise = {layer.name: depthwise_bits for layer in float_model.layers
                 if depthwise_bits and isinstance(layer, keras.layers.DepthwiseConv2D)}
    x_fit, y_fit, x_val, y_val, x_test, y_test = data
    keras.utils.set_random_seed(seed + 1)
    teacher = float_model
    if bn_reestimate:
        float_model = reestimated_batch_norms(float_model, x_fit)
    staged_seconds = 0.0
    if progressive:
        for bits in PROGRESSIVE_STAGES:
            stage = compile_classifier(
                tfqnet.quantize_model(float_model, "uniform", bits, 8), qat_lr)
            staged_seconds += _fit(stage, x_fit, y_fit, 1, tfqnet.callbacks(stage, 1))
            float_model = with_qat_weights(float_model, stage)
        epochs -= len(PROGRESSIVE_STAGES)
    lr = qat_lr
    if schedule:
        steps = epochs * int(np.ceil(len(x_fit) / BATCH))
        warmup = int(round(WARMUP_SHARE * steps))
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, steps - warmup, warmup_target=qat_lr, warmup_steps=warmup)
    if method == "tfmot":
        keep = policy_bits(float_model, options.get("policy", "auto"))
        qat = tfmot_n_bit(float_model, 2, 8, keep_8_bit={**keep, **depthwise})
    else:
        if depthwise:
            options["overrides"] = {n: {"weight_bits": b} for n, b in depthwise.items()}
        qat = tfqnet.quantize_model(float_model, method, 2, 8, **options)
    if distill:
        qat.compile(keras.optimizers.Adam(lr), tfqnet.DistillationLoss(**KD),
                    metrics=[tfqnet.DistillationAccuracy()])
        targets = tfqnet.distillation_targets(y_fit, teacher.predict(x_fit, verbose=0))
    else:
        compile_classifier(qat, lr)
        targets = y_fit
    callbacks = [] if method == "tfmot" else tfqnet.callbacks(qat, epochs)
    seconds = staged_seconds + _fit(qat, x_fit, targets, epochs, callbacks)
    keras_test = qat.predict(x_test, verbose=0)
    result = {"train_s": seconds, "keras_val": accuracy(qat.predict(x_val, verbose=0), y_val),
              "keras_test": accuracy(keras_test, y_test)}
    if method == "tfmot":
        result.update(val=result["keras_val"], test=result["keras_test"])
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "runs on TFLM only": known here
        flatbuffer = tfqnet.convert(qat, x_fit[:200])
    tflm_test = tfqnet.run_tflm(flatbuffer, x_test)
    report = tfqnet.bit_width_report(qat)
    result.update(
        val=accuracy(tfqnet.run_tflm(flatbuffer, x_val), y_val),
        test=accuracy(tflm_test, y_test),
        agreement=float(np.mean(tflm_test.argmax(-1) == keras_test.argmax(-1))),
        weight_bytes=weight_bytes(flatbuffer),
        int8_bytes=sum(row["weights"] for row in report.rows),
        flatbuffer_bytes=len(flatbuffer),
    )
    return result


def _cell(values: list[float], digits: int = 4) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def chosen_rates(results: dict[tuple[str, float], list[dict]], rows: list[str],
                  rates: list[float]) -> dict[str, float]:
    """Each row's QAT rate: the one of ``rates`` with the best mean validation accuracy."""
    return {name: max(rates, key=lambda lr: np.mean([r["val"] for r in results[name, lr]]))
            for name in rows}


def _table_row(label: str, name: str, rs: list[dict], float_test: float) -> list:
    tfmot = ROWS[name][0] == "tfmot"
    return [
        label, "Keras QAT" if tfmot else "TFLM", _cell([r["val"] for r in rs]),
        _cell([r["test"] for r in rs]),
        f"{100 * (np.mean([r['test'] for r in rs]) - float_test):+.1f}",
        "—" if tfmot else f"{min(r['agreement'] for r in rs):.4f}",
        "—" if tfmot else int(np.mean([r["weight_bytes"] for r in rs])),
        "—" if tfmot else f"{np.mean([r['weight_bytes'] / r['int8_bytes'] for r in rs]):.3f}x",
        "—" if tfmot else int(np.mean([r["flatbuffer_bytes"] for r in rs])),
        f"{np.mean([r['train_s'] for r in rs]):.0f}",
    ]


def issue_targets(chosen: dict[str, list[dict]], float_test: float) -> list[list[str]]:
    """Issue 18's targets over ``chosen`` (row -> its results at its chosen rate, one per
    seed, in seed order): the accuracy targets for each tfqnet method's best row, then
    agreement and weight bytes over every tfqnet row.

    Rows of one seed share its float model and data split, so the comparison with TFMOT
    is also given paired by seed: the mean test difference, its standard error, and on
    how many seeds the tfqnet row is ahead."""
    def mean(name: str, key: str) -> float:
        return float(np.mean([r[key] for r in chosen[name]]))

    def by_validation(names: list[str]) -> str:
        return max(names, key=lambda n: mean(n, "val"))

    ours = [n for n in chosen if ROWS[n][0] != "tfmot"]
    theirs = [n for n in chosen if ROWS[n][0] == "tfmot"]
    rival = by_validation(theirs) if theirs else None
    targets = []
    for method in dict.fromkeys(ROWS[n][0] for n in ours):
        best = by_validation([n for n in ours if ROWS[n][0] == method])
        best_test = mean(best, "test")
        targets.append([
            f"best {method} row (chosen on validation) within 3 points of float (test)",
            f"{best}: {100 * (best_test - float_test):+.1f} points",
            verdict(best_test >= float_test - 0.03)])
        if rival is None:
            continue
        diffs = 100 * np.array([a["test"] - b["test"]
                                for a, b in zip(chosen[best], chosen[rival], strict=True)])
        error = np.std(diffs, ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else np.nan
        targets.append([
            f"best {method} row more accurate than the best TFMOT STE row (both chosen on "
            "validation; test)",
            f"{best} {best_test:.4f} (validation {mean(best, 'val'):.4f}) vs {rival} "
            f"{mean(rival, 'test'):.4f} (validation {mean(rival, 'val'):.4f}); paired by "
            f"seed {np.mean(diffs):+.2f} ± {error:.2f} points, ahead on "
            f"{int(np.sum(diffs > 0))} of {len(diffs)} seeds",
            verdict(best_test > mean(rival, "test"))])
    runs = [r for n in ours for r in chosen[n]]
    agreement = min(r["agreement"] for r in runs)
    size = max(r["weight_bytes"] / r["int8_bytes"] for r in runs)
    targets += [
        ["QAT-vs-TFLM agreement >= 0.99 on every tfqnet row and seed",
         f"lowest {agreement:.4f}", verdict(agreement >= 0.99)],
        ["weight bytes of every tfqnet ternary row <= 0.35x int8",
         f"largest {size:.3f}x", verdict(size <= 0.35)],
    ]
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="QAT epochs per row")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--task", choices=list(TASKS), default="mobilenet")
    parser.add_argument("--lr", type=float, nargs="+", default=[QAT_LR],
                        help=f"Adam's QAT rate (default {QAT_LR:g}); several: every row at "
                        "each, and each row's rate chosen on validation")
    parser.add_argument("--section", default="", help="suffix of the BENCHMARKS.md section "
                        "(to keep another set of rows beside the default one)")
    args = parser.parse_args()
    task = TASKS[args.task]()
    data = split(task)
    started = time.time()
    sweep = len(args.lr) > 1
    results: dict[tuple[str, float], list[dict]] = {
        (name, lr): [] for name in args.rows for lr in args.lr}
    floats: list[dict] = []
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        float_model = compile_classifier(task.build(), task.float_lr)
        float_model.fit(data[0], data[1], epochs=FLOAT_EPOCHS[args.task], batch_size=BATCH,
                        verbose=0)
        floats.append({
            "val": accuracy(float_model.predict(data[2], verbose=0), data[3]),
            "test": accuracy(float_model.predict(data[4], verbose=0), data[5]),
        })
        for name in args.rows:
            for lr in args.lr:
                r = run_row(name, float_model, data, seed, args.epochs, lr)
                results[name, lr].append(r)
                print(f"seed {seed} {name}, Adam {lr:g}: val {r['val']:.4f} "
                      f"test {r['test']:.4f} [{r['train_s']:.0f} s]", flush=True)

    float_val = float(np.mean([r["val"] for r in floats]))
    float_test = float(np.mean([r["test"] for r in floats]))
    header = ["row", "measured on", "validation acc", "test acc", "test vs float (points)",
              "lowest agreement", "weight bytes", "vs int8", "flatbuffer bytes", "train s"]
    float_row = ["float", "Keras", _cell([r["val"] for r in floats]),
                 _cell([r["test"] for r in floats]), "—", "—", "—", "—", "—", "—"]
    table = [float_row] + [
        _table_row(f"{name}, Adam {lr:g}" if sweep else name, name, results[name, lr],
                   float_test)
        for name in args.rows for lr in args.lr]
    rates = chosen_rates(results, args.rows, args.lr)
    chosen = {name: results[name, rates[name]] for name in args.rows}
    body = (
        markdown_table(header, table)
        + f"\n\nSeeds {args.seeds}; float {FLOAT_EPOCHS[args.task]} epochs on 80% of the training "
        f"images, then {args.epochs} QAT epochs per row (Adam "
        f"{', '.join(f'{lr:g}' for lr in args.lr)}); validation: the other 20% "
        f"({len(data[2])} images); test: {len(data[4])} images; mean ± std over seeds. "
        f"Float validation {float_val:.4f}. KD: {KD}. Wall time of the run: "
        f"{(time.time() - started) / 60:.1f} min.\n\n"
    )
    if sweep:
        body += (
            "Each row at the rate with its best mean validation accuracy (the targets "
            "below read these):\n\n"
            + markdown_table(header, [float_row] + [
                _table_row(f"{name}, Adam {rates[name]:g}", name, chosen[name], float_test)
                for name in args.rows])
            + "\n\n")
    body += markdown_table(["target (issue 18)", "measured", "verdict"],
                           issue_targets(chosen, float_test)) + "\n"
    # one section per task and epoch budget, so a longer schedule sits beside the suite's
    name = "lowbit" + ("" if args.task == "mobilenet" else f"-{args.task}") + (
        "" if args.epochs == DEFAULT_EPOCHS else f"-{args.epochs}ep") + (
        f"-{args.section}" if args.section else "")
    write_section(name, f"Ternary weights beyond digits (issue 18): {task.title}, "
                  f"{args.epochs} QAT epochs" + (f" ({args.section})" if args.section else ""),
                  body)


if __name__ == "__main__":
    main()
