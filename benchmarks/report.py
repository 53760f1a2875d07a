"""Shared by the benchmark scripts: machine facts and BENCHMARKS.md sections.

Each script owns one section of BENCHMARKS.md, between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers, and rewrites only that section, so the scripts can be
run one at a time.
"""

from __future__ import annotations

import fcntl
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tflite_micro

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, TFMOT {tfmot.__version__}, "
        f"tflite-micro {tflite_micro.__version__}, numpy {np.__version__}, "
        f"tfqnet commit {CODE_VERSION}"
    )


def commit() -> str:
    """The repository's HEAD (``+changes`` if the tree differs from it), or ``unknown``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=BENCHMARKS_MD.parent, capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no")
                       else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: read when the script starts: the code it runs, even if HEAD moves while it runs
CODE_VERSION = commit()


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool) -> str:
    """A target's verdict as the tables print it: misses stand out."""
    return "met" if met else "**missed**"


def command_line() -> str:
    """The running script's command line, the script relative to the repository."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # python -m benchmarks.NAME
        return " ".join(["python -m", spec.name, *sys.argv[1:]])
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(BENCHMARKS_MD.parent):
        script = script.relative_to(BENCHMARKS_MD.parent)
    return "python " + " ".join([script.as_posix(), *sys.argv[1:]])


def write_section(name: str, title: str, body: str, path: Path | None = None,
                  command: str | None = None) -> str:
    """Replaces (or appends) section ``name`` of BENCHMARKS.md (or of ``path``), prints
    it and returns it. ``command``: the command shown (default: this script's)."""
    command = command or command_line()
    path = Path(path) if path is not None else BENCHMARKS_MD
    section = (
        f"<!-- {name}:start -->\n## {title}\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on {machine()}.\n\n"
        f"{body.strip()}\n<!-- {name}:end -->"
    )
    print(section)
    # a lock: two benchmark scripts finishing together must not drop each other's section
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _replace_section(path, name, section)
    return section


def _replace_section(path: Path, name: str, section: str) -> None:
    text = path.read_text() if path.exists() else (
        "# tfqnet benchmarks\n\nEvery number here is printed by a script under `benchmarks/`; "
        "re-run the script named in a section to reproduce it.\n"
    )
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
