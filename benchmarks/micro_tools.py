"""Benchmark of issue 7's targets: export-c plus check on a ~250k-parameter model in
under 30 s on 2 cores, and a reported arena never below the true minimum, <= 1.1x it.

Run: ``python benchmarks/micro_tools.py``. Training/conversion time is not counted;
the timed part is ``tfqnet export-c`` and ``tfqnet check --data`` (64 samples), called
in-process as the console script would run them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import tfqnet  # noqa: E402
from benchmarks.report import markdown_table, verdict, write_section  # noqa: E402
from tfqnet._keras import keras
from tfqnet.cli import main
from tfqnet.datasets import load_digits
from tfqnet.micro.arena import arena_ok, measure_arena
from tfqnet.micro.c_arrays import align_flatbuffer
from tfqnet.models import compile_classifier


def wide_cnn() -> keras.Model:
    """About 250k parameters: most of them in the Dense after a 8x8x64 feature map."""
    L = keras.layers
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(60, activation="relu", name="fc1")(x)
    outputs = L.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="wide_cnn")


def main_benchmark() -> int:
    digits = load_digits()
    keras.utils.set_random_seed(0)
    model = wide_cnn()
    compile_classifier(model, 1e-3)
    model.fit(digits.x_train, digits.y_train, epochs=3, batch_size=32, verbose=0)
    qat = tfqnet.quantize_model(model, weight_bits=4, activation_bits=8)
    compile_classifier(qat, 5e-4)
    qat.fit(digits.x_train, digits.y_train, epochs=1, batch_size=32, verbose=0,
            callbacks=tfqnet.callbacks(qat, 1))
    tflite = tfqnet.convert(qat, digits.x_train)
    params = model.count_params()

    with tempfile.TemporaryDirectory() as tmp:
        path, data = Path(tmp) / "wide.tflite", Path(tmp) / "x.npy"
        path.write_bytes(tflite)
        np.save(data, digits.x_test)
        start = time.monotonic()
        code_export = main(["export-c", str(path), "--out", str(Path(tmp) / "c"),
                            "--name", "wide", "--inputs", str(data), "--count", "8"])
        mid = time.monotonic()
        code_check = main(["check", str(path), "--data", str(data), "--quiet"])
        end = time.monotonic()

    aligned = align_flatbuffer(tflite)
    arena = measure_arena(aligned)
    runs_at_minimum = arena_ok(aligned, arena.minimum)
    fails_below = not arena_ok(aligned, arena.minimum - 1)
    total = end - start
    bad_file = _bad_file_seconds()
    ratio = arena.reported / arena.minimum
    ok = (total < 30 and code_export == 0 and code_check == 0 and runs_at_minimum
          and fails_below and arena.minimum <= arena.reported <= 1.1 * arena.minimum)
    rows = [
        ["export-c + check, ~250k parameters (wide_cnn)", "< 30 s",
         f"{total:.1f} s (export-c {mid - start:.1f} s + check {end - mid:.1f} s; "
         f"exit codes {code_export}/{code_check})", verdict(total < 30 and code_export == 0
                                                            and code_check == 0)],
        ["reported arena vs true minimum", "1.0x-1.1x",
         f"{ratio:.3f}x ({arena.reported} / {arena.minimum} bytes)",
         verdict(arena.minimum <= arena.reported <= 1.1 * arena.minimum)],
        ["TFLM runs at the minimum, fails 1 byte below", "yes / yes",
         f"{_yes(runs_at_minimum)} / {_yes(fails_below)}", verdict(runs_at_minimum
                                                                   and fails_below)],
        ["`tfqnet check` on a corrupt file (fresh process, median of 3)", "one line, fast",
         f"{bad_file:.2f} s", "measured"],
    ]
    body = (f"Model: {params} parameters, flatbuffer {len(tflite)} bytes; timed in-process "
            "as the console script runs them (training and conversion not counted).\n\n"
            + markdown_table(["target", "wanted", "measured", "verdict"], rows))
    write_section("micro_tools", "Micro tools: export-c and check (issue 7)", body)
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _bad_file_seconds() -> float:
    """Wall time of `python -m tfqnet.cli check` on a corrupt file in a new process: what
    a user waits for the one-line answer (before the lazy import: ~4.5-5 s, TensorFlow)."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.tflite"
        bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(100))
        for _ in range(3):
            start = time.monotonic()
            subprocess.run([sys.executable, "-m", "tfqnet.cli", "check", str(bad)],
                           capture_output=True, check=False)
            times.append(time.monotonic() - start)
    return sorted(times)[1]


if __name__ == "__main__":
    sys.exit(main_benchmark())
