"""The ``tfqnet`` command line: ``export-c`` (sources for a board), ``check`` and
``compact``.

TensorFlow (for ``check --keras``) is imported only when a Keras model is loaded, after
the model file has been read and validated, so a wrong path or a corrupt file is
answered with one line on stderr and exit code 2 within a second.

Exit codes: 0 ok, 1 a check failed (or the model cannot run on TFLM), 2 bad input
(unreadable/corrupt file, refusing to overwrite, bad arguments), 130 interrupted
(SIGINT, Ctrl-C), 143 terminated (SIGTERM), 70 a bug in tfqnet (one line;
``TFQNET_TRACEBACK=1`` shows the traceback). Outputs are written atomically
(tfqnet._files) and never over existing files without ``--force``. Interrupted or
terminated, the command stops its child processes and removes its temporary
directories before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfqnet._files import (
    check_npy,
    check_output_directory,
    refuse_to_overwrite,
    write_atomic,
    write_files_atomic,
)
from tfqnet.errors import InvalidModelFileError, TfqnetError
from tfqnet.export.compact import compact
from tfqnet.export.flatbuffer import FLASH_PARTS, flash_breakdown, packed_bytes
from tfqnet.micro import c_arrays
from tfqnet.micro.arena import ArenaProbeError, measure_arena, with_margin
from tfqnet.micro.arena_model import KERNEL_SETS, board_arenas, unmodelled_ops
from tfqnet.micro.check_program import check_program
from tfqnet.micro.checker import check_model, load_keras_model
from tfqnet.micro.equivalence import same_outputs
from tfqnet.micro.model_file import read_model_file
from tfqnet.micro.op_resolver import UnsupportedOpError, op_resolver_header
from tfqnet.micro.runtime import MicroInterpreter, random_input_codes, tensor_details

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE: a bug in tfqnet
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells say
DEFAULT_VECTORS = 4
#: Most bytes of golden vectors (inputs and outputs) export-c writes: they are compiled
#: into the board's flash, which this exceeds on most Cortex-M parts.
MAX_GOLDEN_BYTES = 4 * 1024 * 1024
#: Most bytes of input codes ``check`` runs: they are held in memory at once (and as
#: float32 for a Keras model, four times as many).
MAX_SAMPLE_BYTES = 64 * 1024 * 1024


class _UsageError(TfqnetError):
    """Bad input: printed as one line, exit code 2."""


def _error(message: str) -> None:
    print(f"tfqnet: error: {message}", file=sys.stderr)


def _progress(message: str) -> None:
    print(f"[tfqnet] {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    """The progress of ``--quiet``: none."""


def _progress_of(args) -> Callable[[str], None]:
    return _quiet if args.quiet else _progress


#: Set by :func:`main` when the user asked for TensorFlow's log (TF_CPP_MIN_LOG_LEVEL
#: set before tfqnet ran): it is then left alone.
_TENSORFLOW_LOG_WANTED = False


@contextlib.contextmanager
def _tensorflow_start_up_silenced():
    """Points file descriptor 2 at /dev/null while TensorFlow loads (``--keras``).

    Why the descriptor, not the log level: TensorFlow's native libraries write their
    start-up lines (absl's "All log messages before absl::InitializeLog() is called are
    written to STDERR", cudart_stub's "Could not find cuda drivers") before any log
    level applies. Python's own errors are not lost: they are exceptions, reported in
    one line once stderr is back. Skipped when the user set TF_CPP_MIN_LOG_LEVEL or
    TensorFlow is loaded already."""
    if _TENSORFLOW_LOG_WANTED or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read_model(path: str):
    """(bytes, FlatbufferModel) of a .tflite file, validated without TensorFlow or
    native code (see tfqnet.micro.model_file), or a one-line usage error."""

    try:
        return read_model_file(path)
    except InvalidModelFileError as error:
        raise _UsageError(f"{path} is not a valid TFLite model: {error}") from None
    except OSError as error:
        raise _UsageError(f"cannot read {path}: {error.strerror or error}") from None


def _read_npy(path: str):
    try:
        check_npy(path)  # before np.load allocates what the header claims
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise _UsageError(f"cannot read {path} as a .npy array: "
                          f"{str(error).splitlines()[0] if str(error) else error}") from None
    if not isinstance(array, np.ndarray) or array.ndim < 1 or array.shape[0] == 0:
        raise _UsageError(f"{path} holds no samples (need an array of shape (N, ...))")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise _UsageError(f"{path} holds {array.dtype} values; give numbers (float samples "
                          "or integer input codes)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise _UsageError(f"{path} contains NaN or infinite values "
                          f"({int((~np.isfinite(array)).sum())} of {array.size})")
    return array


def _check_values(array: np.ndarray, graph, path: str) -> None:
    """Refuses, before any work, samples the model's first input cannot take in the
    meaning their dtype gives them (floats: real values; integers: codes in the input
    type's range; :meth:`tfqnet.micro.runtime.TensorDetails.values`)."""
    details = tensor_details(graph.tensors[graph.inputs[0]])
    if details is not None:
        try:
            details.values(array, path)
        except ValueError as error:
            raise _UsageError(str(error)) from None


def _sample_bytes(graph, tensors) -> int:
    """Bytes of one sample of ``tensors`` (indices), at least 1."""
    return max(1, sum(packed_bytes(graph.tensors[i]) for i in tensors))


def _export_c(args) -> int:
    started = time.monotonic()
    progress = _progress_of(args)
    data, graph = _read_model(args.model)
    try:
        ident = c_arrays.c_identifier(args.name)
    except ValueError as error:
        raise _UsageError(str(error)) from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out} is a file; give a directory")
    try:
        check_output_directory(out)
    except OSError as error:
        raise _UsageError(f"cannot write to --out {out}: {error.strerror or error}") from None
    names = [*c_arrays.data_file_names(ident, args.lang), f"{ident}_op_resolver.h",
             f"{ident}_check.cc"]
    try:
        refuse_to_overwrite([out / n for n in names], args.force)
    except FileExistsError as error:
        raise _UsageError(str(error)) from None
    inputs = _read_npy(args.inputs) if args.inputs else None
    if args.count < 1:
        raise _UsageError("--count must be at least 1")
    if inputs is not None:
        _check_values(inputs[: args.count], graph, args.inputs)
    count = args.count if inputs is None else min(args.count, len(inputs))
    per_vector = _sample_bytes(graph, (*graph.inputs, *graph.outputs))
    if count * per_vector > MAX_GOLDEN_BYTES:
        raise _UsageError(f"--count {args.count}: {count} golden vectors of this model take "
                          f"{count * per_vector} bytes of flash; give at most "
                          f"{MAX_GOLDEN_BYTES // per_vector}")

    try:
        resolver = op_resolver_header(graph, args.name)
    except UnsupportedOpError as error:
        _error(f"{args.model}: {error}; it cannot run on TFLite Micro")
        return EXIT_FAILED
    progress("aligning the flatbuffer (child process)")
    try:
        aligned = c_arrays.align_flatbuffer(data)
    except InvalidModelFileError as error:
        raise _UsageError(f"{args.model} is not a valid TFLite model: {error}") from None
    progress("measuring the tensor arena (TFLM runtime, child process)")
    try:
        arena = measure_arena(aligned)
    except ArenaProbeError as error:
        _error(f"{args.model}: {error}")
        return EXIT_FAILED

    micro = MicroInterpreter(aligned, arena_size=arena.reported)
    if inputs is not None:
        if tuple(inputs.shape[1:]) != tuple(micro.inputs[0].shape[1:]):
            raise _UsageError(f"{args.inputs} has samples of shape {inputs.shape[1:]}; the "
                              f"model input is {micro.inputs[0].shape[1:]}")
        codes = [micro._prepare(inputs[: args.count], micro.inputs[0])]
    else:
        codes = random_input_codes(micro.inputs, args.count)
    if len(codes) != len(micro.inputs):
        raise _UsageError(f"the model has {len(micro.inputs)} inputs; --inputs gives one")
    progress(f"computing {codes[0].shape[0]} golden vector(s) with the TFLM runtime")
    outputs = micro.predict(codes, raw=True)
    outputs = outputs if isinstance(outputs, list) else [outputs]

    files = {}
    flash = flash_breakdown(aligned)
    boards = {k: with_margin(e.minimum) for k, e in board_arenas(graph).items()}
    files.update(c_arrays.model_data_files(args.name, aligned, arena.reported, arena.minimum,
                                           flash, board_arenas=boards, lang=args.lang))
    files[f"{ident}_op_resolver.h"] = resolver
    files.update(c_arrays.golden_vector_files(args.name, codes, outputs, lang=args.lang))
    files.update(check_program(args.name, len(codes), [o.dtype for o in outputs]))
    try:  # all or none: a half-replaced set would not compile or would lie
        write_files_atomic(out, {name: files[name] for name in names})
    except OSError as error:
        raise _UsageError(f"cannot write to --out {out}: {error.strerror or error}; no file "
                          "was changed") from None
    print(f"wrote {len(names)} files to {out}: model {len(aligned)} bytes (aligned), "
          f"{len(graph.op_names)} op(s), arena {arena.reported} bytes (measured minimum "
          f"{arena.minimum}), {codes[0].shape[0]} vector(s) "
          f"[{time.monotonic() - started:.1f} s]")
    print("flash by part: " + ", ".join(f"{part} {n}" for part, n in flash.items()))
    if boards:
        print("arena on 32-bit Cortex-M (derived, with margin): " + ", ".join(
            f"{k.key} {boards[k.key]}" for k in reversed(KERNEL_SETS) if k.key in boards))
    else:
        print("arena on 32-bit Cortex-M: not derived (ops "
              + ", ".join(unmodelled_ops(graph)) + " are not modelled); the header has the "
              "host figure only")
    return EXIT_OK


def _check(args) -> int:
    data, graph = _read_model(args.model)
    samples = _read_npy(args.data) if args.data else None
    if samples is not None:
        expected = graph.tensors[graph.inputs[0]].shape[1:]
        if len(graph.inputs) != 1 or tuple(samples.shape[1:]) != tuple(expected):
            raise _UsageError(f"{args.data} has samples of shape {samples.shape[1:]}; the model "
                              f"takes {len(graph.inputs)} input(s), the first of shape "
                              f"{expected}")
    if args.keras and not Path(args.keras).exists():
        raise _UsageError(f"Keras model {args.keras} does not exist")
    if args.json and args.json != "-":
        try:
            refuse_to_overwrite([args.json], args.force)
        except FileExistsError as error:
            raise _UsageError(str(error)) from None
        if not Path(args.json).resolve().parent.is_dir():
            raise _UsageError(f"--json {args.json}: its directory does not exist")
        if Path(args.json).is_dir():
            raise _UsageError(f"--json {args.json} is a directory; give a file name")
        try:
            check_output_directory(Path(args.json).resolve().parent)
        except OSError as error:
            raise _UsageError(f"cannot write --json {args.json}: "
                              f"{error.strerror or error}") from None
    if args.samples < 1:
        raise _UsageError("--samples must be at least 1")
    count = args.samples if samples is None else min(args.samples, len(samples))
    if samples is not None:
        _check_values(samples[:count], graph, args.data)
    per_sample = _sample_bytes(graph, graph.inputs)
    if count * per_sample > MAX_SAMPLE_BYTES:
        raise _UsageError(f"--samples {args.samples}: {count} samples of this model's input "
                          f"take {count * per_sample} bytes; give at most "
                          f"{MAX_SAMPLE_BYTES // per_sample}")
    if not 0.0 <= args.min_agreement <= 1.0:  # NaN too: it would pass every comparison
        raise _UsageError(f"--min-agreement must be a fraction from 0 to 1 (e.g. 0.95), got "
                          f"{args.min_agreement!r}")


    keras_model = None
    if args.keras:
        _progress_of(args)(f"loading the Keras QAT model {args.keras}")
        try:
            with _tensorflow_start_up_silenced():
                keras_model = load_keras_model(args.keras)
        except Exception as error:  # any loader failure is a bad input, reported in one line
            from tfqnet.keras3 import written_by_keras3  # lazy: TensorFlow, as load_keras_model

            if written_by_keras3(args.keras):
                raise _UsageError(f"{args.keras} is a Keras 3 model; --keras takes the tfqnet "
                                  "QAT model the flatbuffer was converted from (save what "
                                  "quantize_model returned, e.g. qat.save('qat.keras'))") from None
            raise _UsageError(f"cannot load the Keras model {args.keras}: "
                              f"{str(error).strip().splitlines()[0][:300]}") from None
    try:
        report = check_model(data, data=samples, keras_model=keras_model,
                             samples=args.samples, min_agreement=args.min_agreement,
                             progress=_progress_of(args))
    except InvalidModelFileError as error:  # found by the native steps (child processes)
        raise _UsageError(f"{args.model} is not a valid TFLite model: {error}") from None
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if args.json == "-":  # JSON instead of the table on stdout
        sys.stdout.write(text)
    else:
        print(report.format_table(strict=args.strict))  # first: a failed write loses nothing
        if args.json:
            try:
                write_atomic(Path(args.json), text)
            except OSError as error:
                raise _UsageError(f"cannot write --json {args.json}: "
                                  f"{error.strerror or error} (the report is above)") from None
    return EXIT_OK if report.passed and not (args.strict and report.skipped) else EXIT_FAILED


def _compact(args) -> int:
    progress = _progress_of(args)
    data, _ = _read_model(args.model)
    out = Path(args.output)
    if out.exists() and out.resolve() == Path(args.model).resolve():
        raise _UsageError(f"{out} is the input model; give another output path")
    if out.exists() and out.is_dir():
        raise _UsageError(f"{out} is a directory; give a file path")
    try:
        refuse_to_overwrite([out], args.force)
    except FileExistsError as error:
        raise _UsageError(str(error)) from None
    if not out.resolve().parent.is_dir():
        raise _UsageError(f"{out}: its directory does not exist")
    compacted = compact(data, keep_layer_names=not args.no_layer_names)
    progress("comparing both models on the TFLM runtime (child process)")
    verdict = same_outputs(data, compacted)
    if verdict.same is False:  # a bug in compaction: never write a model that differs
        _error(f"the compacted model's TFLM outputs differ ({verdict.reason}); nothing "
               "written, please report it")
        return EXIT_FAILED
    write_atomic(out, compacted)
    before, after = flash_breakdown(data), flash_breakdown(compacted)
    print(f"wrote {out}: {len(compacted)} bytes ({len(data)} before, "
          f"{len(compacted) / len(data):.3f}x); "
          + (f"TFLM outputs bit-identical on {verdict.samples} random inputs" if verdict.same
             else f"not compared on TFLM: {verdict.reason}"))
    print(f"  {'':<13}{'before':>9}{'after':>9}")
    for part in FLASH_PARTS:
        print(f"  {part:<13}{before[part]:>9}{after[part]:>9}")
    return EXIT_OK


#: what the values of a --data / --inputs array mean, by its dtype
_DATA_MEANING = ("a float array holds real values, quantized with the input's scale and "
                 "zero point; an integer array holds the input's codes, used as they are "
                 "(codes outside the input type's range are refused)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfqnet", description="Take a converted tfqnet model to a TFLite Micro board.")
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export-c", help="C/C++ sources: model array with I/O "
                            "constants and arena sizes, op resolver, golden vectors and a "
                            "check program")
    export.add_argument("model", metavar="MODEL.tflite")
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--name", required=True,
                        help="C identifier prefix of the files and symbols (other "
                        "characters become '_'; at most "
                        f"{c_arrays.MAX_IDENTIFIER_CHARS} characters)")
    export.add_argument("--inputs", metavar="X.npy",
                        help="samples for the golden vectors: " + _DATA_MEANING
                        + "; seeded random codes when omitted")
    export.add_argument("--count", type=int, default=DEFAULT_VECTORS,
                        help=f"number of golden vectors (default {DEFAULT_VECTORS})")
    export.add_argument("--lang", choices=sorted(c_arrays.LANG_EXTENSIONS), default="c++",
                        help="extension of the model and test data sources, which are C99 "
                        "and C++11 alike: .c (c), .cc (c++, the default) or both; the op "
                        "resolver (.h) and the check program (.cc) are C++, as TFLM's API is")
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    export.add_argument("--quiet", action="store_true", help="no progress on stderr")
    export.set_defaults(run=_export_c)

    check = sub.add_parser("check", help="reference kernel checker (TFLM vs TFLite "
                           "reference kernels, vs the Keras QAT model, resources)")
    check.add_argument("model", metavar="MODEL.tflite")
    check.add_argument("--keras", metavar="QAT_MODEL", help="tfqnet QAT model to compare with")
    check.add_argument("--data", metavar="X.npy",
                       help="input samples: " + _DATA_MEANING + "; with --keras, the Keras "
                       "model gets floats as they are and codes dequantized; seeded random "
                       "codes when omitted")
    check.add_argument("--json", metavar="REPORT", help="also write the report as JSON to "
                       "REPORT ('-': print JSON instead of the table)")
    check.add_argument("--samples", type=int, default=64, help="samples to run (default 64)")
    check.add_argument("--min-agreement", type=float, default=0.95,
                       help="least top-1 agreement with the Keras model (default 0.95)")
    check.add_argument("--force", action="store_true", help="overwrite an existing --json")
    check.add_argument("--quiet", action="store_true", help="no progress on stderr")
    check.add_argument("--strict", action="store_true", help="a skipped check fails (exit 1)")
    check.set_defaults(run=_check)

    shrink = sub.add_parser("compact", help="drop what TFLite Micro never reads from a "
                            "flatbuffer (tfqnet.compact); TFLM outputs stay bit-identical")
    shrink.add_argument("model", metavar="IN.tflite")
    shrink.add_argument("output", metavar="OUT.tflite")
    shrink.add_argument("--no-layer-names", action="store_true",
                        help="drop the layer names too (check and export-c then number ops)")
    shrink.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    shrink.add_argument("--quiet", action="store_true", help="no progress on stderr")
    shrink.set_defaults(run=_compact)
    return parser


class _Terminate:
    """SIGTERM handled as Python handles SIGINT: raised as KeyboardInterrupt in the main
    thread, so every ``with`` block unwinds (temporary directories removed) and the
    child being waited for is killed and reaped (``micro.isolated``). SIGTERM's default
    action ends the process on the spot and leaves both behind."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _handler(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfqnet`` console script; returns the exit code.

    SIGINT and SIGTERM stop the command cleanly: child processes stopped, temporary
    files removed, exit code 130 (SIGINT) or 143 (SIGTERM)."""
    # TensorFlow (loaded only for --keras) logs to stderr, the channel of tfqnet's
    # progress and one-line errors; what goes wrong in it reaches tfqnet as an
    # exception. So its C++ log (read when it loads) keeps fatal errors only and its
    # Python loggers errors only, unless the user chose a level.
    global _TENSORFLOW_LOG_WANTED
    _TENSORFLOW_LOG_WANTED = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not _TENSORFLOW_LOG_WANTED:
        for name in ("tensorflow", "absl", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)
    args = _parser().parse_args(argv)
    with _Terminate() as terminate:
        try:
            return args.run(args)
        except _UsageError as error:
            _error(str(error))
            return EXIT_USAGE
        except KeyboardInterrupt:
            _error("terminated" if terminate.received else "interrupted")
            return EXIT_TERMINATED if terminate.received else EXIT_INTERRUPTED
        except Exception as error:  # a bug: still one line, the traceback on request
            if os.environ.get("TFQNET_TRACEBACK"):
                raise
            detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            _error(f"internal error: {type(error).__name__}: {detail} (set "
                   "TFQNET_TRACEBACK=1 to see where, and please report it)")
            return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
