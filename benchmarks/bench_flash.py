"""Issue 19 targets: flash near the physical limit (:mod:`tfqnet.export.compact`).

    python -m benchmarks.bench_flash

Models, each quantized with tfqnet and fine-tuned for one short epoch (flash does not
depend on accuracy; the epoch initialises the quantizer ranges):

* ``VWW``: ``tf_keras.applications.MobileNet(alpha=0.25, input_shape=(96, 96, 3),
  classes=2, weights=None)``, the MLPerf Tiny visual-wake-words network, on the digits
  upsampled to 96x96 with three equal channels (label: digit < 5). No pretrained
  weights are available offline, so each BatchNormalization's statistics are set from
  one batch of data (momentum 0, one training-mode call) before quantizing: folded
  biases then differ per channel, as a trained model's do, rather than being the
  identical zeros a fresh model folds to (which the converter stores once).
  Uniform W4A8, and ternary (``method="crq"``, default layer policy,
  ``compress="auto"``).
* the suite's two models (``digits_cnn`` on digits, ``mobilenet_v2_tiny`` on 16x16
  digits) at uniform W8A8 and W4A8.

Each is converted with ``compact=False`` and as by default (compacted last; with
``compress="auto"`` choosing what to compress by the compacted sizes); both are run on
the TFLM runtime on 8 seeded random inputs and on 16 data samples, raw outputs compared
for bit-identity (compression and compaction are both lossless). The VWW rows also get
``tfqnet check`` (8 samples). "compaction s": ``tfqnet.compact`` on the plain model.
The W4A8 / W8A8 limit of a model is set by what does not shrink with the weight bits:
int32 biases, float32 per-channel filter scales and the graph's structure.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import tf_keras

import tfqnet
from benchmarks.report import markdown_table, verdict, write_section
from benchmarks.tasks import digits_task, mobilenet_task
from tfqnet._keras import keras, tf
from tfqnet.export.flatbuffer import FLASH_PARTS, flash_breakdown
from tfqnet.micro.checker import check_model
from tfqnet.micro.equivalence import same_outputs

#: the MLPerf Tiny v1.0 int8 reference model of visual wake words (vww_96_int8.tflite)
MLPERF_VWW_INT8_BYTES = 333_288
VWW_LIMIT, VWW_GOAL = 1.2, 1.1
SUITE_LIMIT = 0.6
SECONDS_LIMIT = 2.0


def vww_data(count: int) -> tuple[np.ndarray, np.ndarray]:
    task = digits_task()
    x = tf.image.resize(task.x_train[:count], (96, 96), method="bilinear").numpy()
    x = np.repeat(np.clip(x, 0.0, 1.0), 3, axis=-1).astype(np.float32)
    return x, (task.y_train[:count] < 5).astype(np.int64)


def vww_model(x: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNet(alpha=0.25, input_shape=(96, 96, 3), classes=2,
                                            weights=None)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)  # each layer's moving statistics := this batch's
    for layer in norms:
        layer.momentum = 0.99
    return model


def _fine_tune(qat: keras.Model, x: np.ndarray, y: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(1)
    qat.compile(keras.optimizers.Adam(1e-4),
                keras.losses.SparseCategoricalCrossentropy(
                    from_logits=not qat.layers[-1].name.endswith("predictions")))
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=tfqnet.callbacks(qat, 1))
    return qat


def measure(name: str, qat: keras.Model, x: np.ndarray, check: bool = False) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # compress="auto" names its layers
        plain = tfqnet.convert(qat, x[:100], compact=False)
        compacted = tfqnet.convert(qat, x[:100])  # the default: compress="auto" sizes
        # filters as they are stored compacted, so it may compress more than `plain`
    started = time.perf_counter()
    tfqnet.compact(plain)
    seconds = time.perf_counter() - started
    random = same_outputs(plain, compacted)
    graph = tfqnet.FlatbufferModel.from_bytes(plain)
    data = x[:16]
    if graph.tensors[graph.inputs[0]].type == "INT8":
        data_same = np.array_equal(tfqnet.run_tflm(plain, data, raw=True),
                                   tfqnet.run_tflm(compacted, data, raw=True))
    else:
        data_same = None
    parts = flash_breakdown(compacted)
    verdict_text = "-"
    if check:
        verdict_text = check_model(compacted, data=data[:8], samples=8).verdict()
    return {
        "check": verdict_text,
        "name": name, "plain": len(plain), "compacted": len(compacted), "seconds": seconds,
        "before": flash_breakdown(plain), "parts": parts,
        "payload": parts["weights"] + parts["biases"],
        "same": random.same, "reason": random.reason, "data_same": data_same,
    }


def vww_rows() -> list[dict]:
    x, y = vww_data(256)
    rows = []
    model = vww_model(x[:64])
    uniform = tfqnet.quantize_model(model, weight_bits=4, activation_bits=8)
    rows.append(measure("VWW MobileNet 0.25 uniform W4A8", _fine_tune(uniform, x, y), x,
                        check=True))
    ternary = tfqnet.quantize_model(model, method="crq", activation_bits=8)
    rows.append(measure("VWW MobileNet 0.25 crq ternary (default policy, compress auto)",
                        _fine_tune(ternary, x, y), x, check=True))
    return rows


def suite_rows() -> list[dict]:
    rows = []
    for task in (digits_task(), mobilenet_task()):
        keras.utils.set_random_seed(0)
        model = task.build()
        for bits in (8, 4):
            qat = tfqnet.quantize_model(model, weight_bits=bits, activation_bits=8)
            rows.append(measure(f"{task.short} uniform W{bits}A8",
                                _fine_tune(qat, task.x_train[:512], task.y_train[:512]),
                                task.x_train))
    return rows


def _identical(row: dict) -> str:
    random = {True: "yes", False: "**NO**", None: f"not run ({row['reason']})"}[row["same"]]
    data = {True: "yes", False: "**NO**", None: "-"}[row["data_same"]]
    return f"{random} / {data}"


def report(vww: list[dict], suite: list[dict]) -> str:
    rows = vww + suite
    body = [markdown_table(
        ["model", "bytes (not compacted)", "bytes (compacted)", "compacted / before",
         "weights + biases", "compacted / (weights + biases)", "compaction s",
         "TFLM bit-identical (random / data)", "`tfqnet check`"],
        [[r["name"], r["plain"], r["compacted"], f"{r['compacted'] / r['plain']:.3f}x",
          r["payload"], f"{r['compacted'] / r['payload']:.3f}x", f"{r['seconds']:.2f}",
          _identical(r), r["check"]] for r in rows])]
    body.append("\nFlash by part (`tfqnet.flash_breakdown`), before -> after compaction:\n")
    body.append(markdown_table(
        ["model", *FLASH_PARTS],
        [[r["name"], *(f"{r['before'][p]} -> {r['parts'][p]}" for p in FLASH_PARTS)]
         for r in rows]))

    w4, ternary = vww
    ratio = w4["compacted"] / w4["payload"]
    by_name = {r["name"]: r for r in suite}
    checks = [
        [f"VWW W4A8 flatbuffer <= {VWW_LIMIT}x (weights + biases); goal {VWW_GOAL}x",
         f"{ratio:.3f}x ({w4['compacted']} / {w4['payload']})", verdict(ratio <= VWW_LIMIT)],
        ["VWW ternary (2-bit LUT, default policy): total flash, vs the MLPerf Tiny int8 "
         f"reference model ({MLPERF_VWW_INT8_BYTES} B)",
         f"{ternary['compacted']} B ({ternary['compacted'] / MLPERF_VWW_INT8_BYTES:.3f}x)",
         "reported"],
    ]
    for short in ("digits CNN", "MobileNetV2-style"):
        w4s, w8s = by_name[f"{short} uniform W4A8"], by_name[f"{short} uniform W8A8"]
        r = w4s["compacted"] / w8s["compacted"]
        checks.append([f"{short}: uniform W4A8 / W8A8 flatbuffer <= {SUITE_LIMIT}x",
                       f"{r:.3f}x (not compacted: {w4s['plain'] / w8s['plain']:.3f}x)",
                       verdict(r <= SUITE_LIMIT)])
    slowest = max(rows, key=lambda r: r["seconds"])
    checks.append([f"compaction adds < {SECONDS_LIMIT:g} s to a conversion",
                   f"{slowest['seconds']:.2f} s at most ({slowest['name']})",
                   verdict(slowest["seconds"] < SECONDS_LIMIT)])
    checks.append(["every compacted model bit-identical on TFLM",
                   "yes" if all(r["same"] and r["data_same"] is not False for r in rows)
                   else "**no or not run**",
                   verdict(all(r["same"] and r["data_same"] is not False for r in rows))])
    body.insert(0, markdown_table(["target", "measured", "verdict"], checks) + "\n")
    body.append(
        "\nWhat is left after compaction: the weights and biases themselves; per-channel "
        "float32 filter scales (TFLM derives each channel's multiplier from them at "
        "Prepare); int32 biases (the int8 CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED "
        "kernels read 32-bit biases: a narrower bias would need another kernel); tensor "
        "and operator tables, shapes and options (structure); each op output's layer "
        "name (`tfqnet compact --no-layer-names` drops them).")
    return "\n".join(body)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    vww = vww_rows()
    suite = suite_rows()
    write_section("flash", "Flash: compaction (issue 19)", report(vww, suite))


if __name__ == "__main__":
    main()
