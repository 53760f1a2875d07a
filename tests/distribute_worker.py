"""Trains every tfqnet method on one device and under MirroredStrategy (2 logical CPUs).

Run by ``tests/test_distribute.py`` in its own process: the CPU must be split into
logical devices before TensorFlow initialises its devices, which the pytest process
has done long before. Usage::

    python tests/distribute_worker.py OUT.json [METHOD ...]

For each method both runs start from the same float model, seed and global batch
(no shuffling). OUT.json gets, per method: the largest difference between the two
replicas' copies of every variable after each epoch, how often each schedule
callback ran and the schedule state it left after each epoch (both runs), the
largest difference of the quantizer state (zero points, thresholds, step sizes) between
the runs, whether the converted flatbuffers are equal, and the two TFLM runs' int8
outputs on test digits.
"""

from __future__ import annotations

import base64
import json
import sys
import time

import numpy as np

import tfqnet  # first: makes tf.keras tf-keras (TensorFlow is imported after it)
from tfqnet._keras import keras
from tfqnet.datasets import load_digits
from tfqnet.export.flatbuffer import FlatbufferModel
from tfqnet.models import compile_classifier

SAMPLES = 64
GLOBAL_BATCH = 32  # 16 samples per replica
EPOCHS = 2
SEED = 3
TEST_SAMPLES = 100
CALIBRATION_SAMPLES = 16  # every layer is quantized in QAT: nothing to calibrate
#: weight bits and options per method (default: 4-bit weights, no options); SRQ's
#: random bit dropping is switched off so both runs compute the same thing; no layer
#: policy at 2 bits, which would leave the small model's two layers at 8 bits
METHOD_SETTINGS: dict[str, tuple[int, dict]] = {
    "qn": (2, {"policy": None}),
    "crq": (2, {"policy": None}),
    "srq": (4, {"drop_probability": 0.0, "activation_drop_probability": 0.0}),
}
ACTIVATION_BITS = 4  # below 8: the LSQ rule uses the batch mean too
#: variables set by schedule callbacks (QN temperature, CRQ ramp/hard, SRQ frozen widths)
SCHEDULE_MARKERS = ("temperature", "_crq_ramp", "_crq_hard", "frozen_bits")


def _replica_values(variable) -> list[np.ndarray]:
    copies = getattr(variable, "values", None) or (variable,)
    return [np.asarray(copy.numpy(), np.float64) for copy in copies]


class EpochProbe(keras.callbacks.Callback):
    """Records, after every epoch, replica disagreement and the schedule state."""

    def __init__(self):
        super().__init__()
        self.replica_diff: list[float] = []
        self.schedule_state: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        worst = 0.0
        for variable in self.model.variables:
            copies = _replica_values(variable)
            worst = max([worst] + [float(np.max(np.abs(c - copies[0]))) for c in copies])
        self.replica_diff.append(worst)
        self.schedule_state.append({
            v.name: float(_replica_values(v)[0].mean())
            for v in self.model.variables
            if any(marker in v.name for marker in SCHEDULE_MARKERS)
        })


def _counted(callback: keras.callbacks.Callback, counts: dict[str, int]):
    """Counts ``callback``'s epoch-begin calls (its schedule step) in ``counts``."""
    name = f"{len(counts)}:{type(callback).__name__}"
    counts[name] = 0
    step = callback.on_epoch_begin

    def on_epoch_begin(epoch, logs=None):
        counts[name] += 1
        step(epoch, logs)

    callback.on_epoch_begin = on_epoch_begin
    return callback


def compare_flatbuffers(a: bytes, b: bytes) -> dict:
    """Where two flatbuffers of the same graph differ: stored integer codes (weights,
    biases) and float32 quantization scales; zero points, types and shapes must agree."""
    first, second = FlatbufferModel.from_bytes(a), FlatbufferModel.from_bytes(b)
    assert len(first.tensors) == len(second.tensors)
    codes = scales = 0
    worst_code = worst_scale = 0.0
    layout = []  # tensors whose type, shape or zero points differ
    for x, y in zip(first.tensors, second.tensors, strict=True):
        if (x.type, x.shape, x.zero_points) != (y.type, y.shape, y.zero_points):
            layout.append(x.name)
            continue
        if x.scales:
            rel = np.abs(np.subtract(x.scales, y.scales)) / np.abs(x.scales)
            scales += int(np.count_nonzero(rel))
            worst_scale = max(worst_scale, float(rel.max()))
        if x.is_constant and x.type != "FLOAT32":
            diff = np.abs(
                first.constant_values(x).astype(np.int64) - second.constant_values(y)
            )
            codes += int(np.count_nonzero(diff))
            worst_code = max(worst_code, float(diff.max(initial=0)))
    return {
        "layout_differing": layout,
        "codes_differing": codes, "largest_code_difference": worst_code,
        "scales_differing": scales, "largest_scale_rel_difference": worst_scale,
    }


def tiny_cnn() -> keras.Model:
    """A float CNN with the baseline's kinds of layers (conv, folded BN, ReLU, pooling,
    dense), small so that tracing and conversion stay quick. Untrained: both runs start
    from the same seeded weights, which is all an equality test needs."""
    L = keras.layers
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def train(method: str, strategy, data, dataset=None) -> dict:
    """Trains ``method`` on ``data`` (x, y, x_test) in ``strategy``'s scope, from
    ``dataset`` (of global batches) when given, else from the arrays; returns what
    both tests compare."""
    x, y, x_test = data
    bits, options = METHOD_SETTINGS.get(method, (4, {}))
    start = time.perf_counter()
    keras.backend.clear_session()  # same layer and variable names in every run
    keras.utils.set_random_seed(SEED)
    with strategy.scope():
        float_model = tiny_cnn()
        qat = tfqnet.quantize_model(
            float_model, method=method, weight_bits=bits, activation_bits=ACTIVATION_BITS,
            **options,
        )
        compile_classifier(qat, 1e-3)
    probe = EpochProbe()
    counts: dict[str, int] = {}
    schedules = [_counted(cb, counts) for cb in tfqnet.callbacks(qat, EPOCHS)]
    fit_data = {"x": x, "y": y, "batch_size": GLOBAL_BATCH} if dataset is None else {"x": dataset}
    qat.fit(**fit_data, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=schedules + [probe])
    trained = time.perf_counter()
    flatbuffer = tfqnet.convert(qat, x[:CALIBRATION_SAMPLES])
    print(f"{method} x{strategy.num_replicas_in_sync}: fit {trained - start:.1f} s, "
          f"convert {time.perf_counter() - trained:.1f} s", file=sys.stderr)
    state = {
        v.name: _replica_values(v)[0]
        for v in qat.variables
        if not v.trainable or "scale" in v.name or "alpha" in v.name
    }
    return {
        "replicas": int(strategy.num_replicas_in_sync),
        "replica_diff": probe.replica_diff,
        "schedule_calls": counts,
        "schedule_state": probe.schedule_state,
        "flatbuffer": flatbuffer,
        "state": state,
        "tflm": tfqnet.run_tflm(flatbuffer, x_test, raw=True).astype(int).tolist(),
    }


def portable(run: dict) -> dict:
    """``run`` as JSON can hold it (flatbuffer in base64, state as lists)."""
    return {
        **run,
        "flatbuffer": base64.b64encode(run["flatbuffer"]).decode(),
        "state": {name: np.asarray(value).tolist() for name, value in run["state"].items()},
    }


def restored(run: dict) -> dict:
    """The inverse of :func:`portable`."""
    return {
        **run,
        "flatbuffer": base64.b64decode(run["flatbuffer"]),
        "state": {name: np.asarray(value, np.float64) for name, value in run["state"].items()},
    }


def compared(single: dict, distributed: dict, name: str = "mirrored") -> dict:
    """What the tests assert on: both runs (without their bytes), the largest
    difference of each quantizer state variable, and how the flatbuffers differ."""
    state_diff = {
        variable: float(np.max(np.abs(distributed["state"][variable] - value)))
        for variable, value in single["state"].items()
    }
    assert state_diff, "no quantizer state found"
    assert single["state"].keys() == distributed["state"].keys()
    return {
        "runs": {
            run: {k: v for k, v in result.items() if k not in ("flatbuffer", "state")}
            for run, result in (("single", single), (name, distributed))
        },
        "state_diff": state_diff,
        "flatbuffers_equal": single["flatbuffer"] == distributed["flatbuffer"],
        "flatbuffer_diff": compare_flatbuffers(single["flatbuffer"], distributed["flatbuffer"]),
        "flatbuffer_bytes": len(single["flatbuffer"]),
    }


def gathered_statistics(strategy, shards: list[np.ndarray]) -> list[list[float]]:
    """Each replica's global ``[min, max, mean]`` when replica i holds ``shards[i]``."""
    import tensorflow as tf

    from tfqnet.core.quantizer import _global_statistics, _local_statistics

    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(shards[context.replica_id_in_sync_group], tf.float32)
    )

    @tf.function
    def step(x):
        return strategy.run(lambda shard: tf.stack(_global_statistics(_local_statistics(shard))),
                            args=(x,))

    return [r.numpy().tolist() for r in strategy.experimental_local_results(step(values))]


def main(out_path: str, methods: list[str]) -> None:
    import tensorflow as tf

    # Before anything creates a tensor: 2 logical CPU devices for 2 replicas.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    digits = load_digits()
    data = (digits.x_train[:SAMPLES], digits.y_train[:SAMPLES], digits.x_test[:TEST_SAMPLES])
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    report = {
        "statistics": {
            "unequal_shards": gathered_statistics(
                mirrored, [np.array([1.0, -2.0, 5.0]), np.array([0.5, 7.0, 3.0, -1.0, 2.0])]
            ),
            "empty_shard": gathered_statistics(
                mirrored, [np.array([1.0, -2.0, 5.0]), np.zeros([0])]
            ),
        }
    }
    for method in methods or tfqnet.method_names():
        single = train(method, one_device, data)
        report[method] = compared(single, train(method, mirrored, data))
        report[method]["single"] = portable(single)  # for tests/test_distribute's multi-worker runs
    with open(out_path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
