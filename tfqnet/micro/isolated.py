"""Running native code on an untrusted flatbuffer in a child Python process.

The flatbuffer aligner, the TFLM runtime and TFLite's interpreter are C++ that trust
their input: a corrupt offset or too small an arena can crash the whole process
(measured: one changed byte of a string offset in the digits model segfaults the
aligner). Each such step first runs in a child that imports only what it needs
(tflite_micro, ai_edge_litert, numpy; no TensorFlow, so it starts in a fraction of a
second); a crash there becomes a one-line error here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ChildResult:
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str
    timeout: float

    @property
    def crashed(self) -> bool:
        return self.returncode is not None and self.returncode < 0


def run_python(script: str, args: list[str], timeout: float) -> ChildResult:
    """Runs ``python -c script args...`` with TensorFlow's logging silenced.

    Whatever stops the wait (the timeout, KeyboardInterrupt, SIGTERM raised as one)
    kills the child and reaps it before returning or re-raising: ``subprocess.run``
    does not wait for a child it killed on KeyboardInterrupt, so the child could
    outlive the command that started it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    with subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            return ChildResult(None, stdout, stderr, timeout)
        except BaseException:
            proc.kill()
            proc.wait()  # Popen's exit does not wait on KeyboardInterrupt
            raise
    return ChildResult(proc.returncode, stdout, stderr, timeout)


def describe_exit(result: ChildResult) -> str:
    """``crashed (SIGSEGV)``, ``failed (<last error line>)`` or ``did not finish ...``."""
    if result.returncode is None:
        return f"did not finish within {result.timeout:g} s"
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        return f"crashed ({name})"
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else f"exit code {result.returncode}"
    return f"failed ({last})"


__all__ = ["ChildResult", "describe_exit", "run_python"]
