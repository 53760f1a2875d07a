"""Whether two flatbuffers compute the same outputs on the TFLM runtime.

Both models run in one child process (:mod:`tfqnet.micro.isolated`): the TFLM runtime
trusts its input, and a model it cannot prepare may abort the process.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from tfqnet.micro.isolated import describe_exit, run_python

DEFAULT_SAMPLES = 8

# argv: model A, model B, samples, arena bytes. Prints "same", or "differ <detail>".
_COMPARE = r"""
import sys
import numpy as np
from tfqnet.micro.runtime import MicroInterpreter, random_input_codes

first, second = (open(path, "rb").read() for path in sys.argv[1:3])
count, arena = int(sys.argv[3]), int(sys.argv[4])
a = MicroInterpreter(first, arena_size=arena)
b = MicroInterpreter(second, arena_size=arena)
codes = random_input_codes(a.inputs, count)
outputs = [a.predict(codes, raw=True), b.predict(codes, raw=True)]
outputs = [o if isinstance(o, list) else [o] for o in outputs]
for k, (x, y) in enumerate(zip(*outputs)):
    if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
        print(f"differ output {k}", flush=True)
        sys.exit(0)
print("same", flush=True)
"""


@dataclass(frozen=True)
class Equivalence:
    """``same``: True (bit-identical outputs), False (they differ) or None (not run:
    ``reason`` says why); ``samples``: the seeded random inputs compared."""

    same: bool | None
    samples: int
    reason: str = ""


def same_outputs(first: bytes, second: bytes, samples: int = DEFAULT_SAMPLES,
                 timeout: float = 300.0) -> Equivalence:
    """Runs both models on the same ``samples`` seeded random inputs
    (:func:`~tfqnet.micro.runtime.random_input_codes`) and compares raw outputs."""
    arena = 10 * max(len(first), len(second)) + (1 << 20)
    with tempfile.TemporaryDirectory(prefix="tfqnet-compare-") as tmp:
        paths = [os.path.join(tmp, name) for name in ("a.tflite", "b.tflite")]
        for path, data in zip(paths, (first, second), strict=True):
            with open(path, "wb") as handle:
                handle.write(data)
        result = run_python(_COMPARE, [*paths, str(samples), str(arena)], timeout=timeout)
    lines = result.stdout.split()
    if result.returncode == 0 and lines[:1] == ["same"]:
        return Equivalence(True, samples)
    if result.returncode == 0 and lines[:1] == ["differ"]:
        return Equivalence(False, samples, " ".join(lines[1:]))
    return Equivalence(None, samples, f"the TFLM runtime {describe_exit(result)}")
