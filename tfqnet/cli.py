"""The ``tfqnet`` command line: ``export-c`` (sources for a board) and ``check``.

Heavy modules (the TFLM runtime, TensorFlow for Keras models) are imported inside
the subcommands, after the model file has been read and validated, so a wrong path
or a corrupt file is answered with one line on stderr and exit code 2.

Exit codes: 0 ok, 1 a check failed (or the model cannot run on TFLM), 2 bad input
(unreadable/corrupt file, refusing to overwrite, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_VECTORS = 4


class _UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _error(message: str) -> None:
    print(f"tfqnet: error: {message}", file=sys.stderr)


def _progress(message: str) -> None:
    print(f"[tfqnet] {message}", file=sys.stderr, flush=True)


def _read_model(path: str):
    from tfqnet.convert.flatbuffer import FlatbufferModel
    from tfqnet.errors import InvalidModelFileError

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise _UsageError(f"cannot read {path}: {error.strerror or error}") from None
    if not data:
        raise _UsageError(f"{path} is empty, not a TFLite model")
    try:
        return data, FlatbufferModel.from_bytes(data)
    except InvalidModelFileError as error:
        raise _UsageError(f"{path} is not a valid TFLite model: {error}") from None


def _read_npy(path: str):
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise _UsageError(f"cannot read {path} as a .npy array: {error}") from None
    if not isinstance(array, np.ndarray) or array.ndim < 1 or array.shape[0] == 0:
        raise _UsageError(f"{path} holds no samples (need an array of shape (N, ...))")
    return array


def _export_c(args) -> int:
    import numpy as np

    from tfqnet.micro import c_arrays
    from tfqnet.micro.arena import ArenaProbeError, measure_arena
    from tfqnet.micro.op_resolver import UnsupportedOpError, op_resolver_header

    started = time.monotonic()
    data, graph = _read_model(args.model)
    try:
        ident = c_arrays.c_identifier(args.name)
    except ValueError as error:
        raise _UsageError(str(error)) from None
    out = Path(args.out)
    names = [f"{ident}_model_data.h", f"{ident}_model_data.cc", f"{ident}_op_resolver.h",
             f"{ident}_test_data.h", f"{ident}_test_data.cc", f"{ident}_check.cc"]
    existing = [n for n in names if (out / n).exists()]
    if existing and not args.force:
        raise _UsageError(f"{out / existing[0]} exists; pass --force to overwrite "
                          f"({len(existing)} file(s) would be replaced)")
    inputs = _read_npy(args.inputs) if args.inputs else None
    if args.count < 1:
        raise _UsageError("--count must be at least 1")

    try:
        resolver = op_resolver_header(graph, args.name)
    except UnsupportedOpError as error:
        _error(f"{args.model}: {error}; it cannot run on TFLite Micro")
        return EXIT_FAILED
    _progress("aligning the flatbuffer")
    aligned = c_arrays.align_flatbuffer(data)
    _progress("measuring the tensor arena (TFLM runtime, child process)")
    try:
        arena = measure_arena(aligned)
    except ArenaProbeError as error:
        _error(f"{args.model}: {error}")
        return EXIT_FAILED

    from tfqnet.micro.runtime import MicroInterpreter

    micro = MicroInterpreter(aligned, arena_size=arena.reported)
    if inputs is not None:
        if tuple(inputs.shape[1:]) != tuple(micro.inputs[0].shape[1:]):
            raise _UsageError(f"{args.inputs} has samples of shape {inputs.shape[1:]}; the "
                              f"model input is {micro.inputs[0].shape[1:]}")
        codes = [micro._prepare(inputs[: args.count], micro.inputs[0])]
    else:
        rng = np.random.default_rng(0)
        codes = []
        for details in micro.inputs:
            shape = (args.count, *details.shape[1:])
            if np.issubdtype(details.dtype, np.integer):
                info = np.iinfo(details.dtype)
                codes.append(rng.integers(info.min, info.max + 1, shape).astype(details.dtype))
            else:
                codes.append(rng.standard_normal(shape).astype(details.dtype))
    if len(codes) != len(micro.inputs):
        raise _UsageError(f"the model has {len(micro.inputs)} inputs; --inputs gives one")
    _progress(f"computing {codes[0].shape[0]} golden vector(s) with the TFLM runtime")
    outputs = micro.predict(codes, raw=True)
    outputs = outputs if isinstance(outputs, list) else [outputs]

    files = {}
    files.update(c_arrays.model_data_files(args.name, aligned, arena.reported, arena.minimum))
    files[f"{ident}_op_resolver.h"] = resolver
    files.update(c_arrays.golden_vector_files(args.name, codes, outputs))
    files.update(c_arrays.check_program(args.name, len(codes), [o.dtype for o in outputs]))
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        c_arrays.write_atomic(out / name, files[name])
    print(f"wrote {len(names)} files to {out}: model {len(aligned)} bytes (aligned), "
          f"{len(graph.op_names)} op(s), arena {arena.reported} bytes (measured minimum "
          f"{arena.minimum}), {codes[0].shape[0]} vector(s) "
          f"[{time.monotonic() - started:.1f} s]")
    return EXIT_OK


def _check(args) -> int:
    data, _ = _read_model(args.model)
    samples = _read_npy(args.data) if args.data else None
    if args.keras and not Path(args.keras).exists():
        raise _UsageError(f"Keras model {args.keras} does not exist")
    if args.json and args.json != "-" and Path(args.json).exists() and not args.force:
        raise _UsageError(f"{args.json} exists; pass --force to overwrite")

    from tfqnet.micro.c_arrays import write_atomic
    from tfqnet.micro.checker import check_model

    keras_model = None
    if args.keras:
        from tfqnet.micro.checker import load_keras_model

        _progress(f"loading the Keras QAT model {args.keras}")
        try:
            keras_model = load_keras_model(args.keras)
        except Exception as error:  # any loader failure is a bad input, reported in one line
            raise _UsageError(f"cannot load the Keras model {args.keras}: "
                              f"{str(error).strip().splitlines()[0][:300]}") from None
    report = check_model(data, data=samples, keras_model=keras_model, samples=args.samples,
                         min_agreement=args.min_agreement,
                         progress=None if args.quiet else _progress)
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if args.json == "-":  # JSON instead of the table on stdout
        sys.stdout.write(text)
    else:
        if args.json:
            write_atomic(Path(args.json), text)
        print(report.format_table())
    return EXIT_OK if report.passed else EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfqnet", description="Take a converted tfqnet model to a TFLite Micro board.")
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export-c", help="C/C++ sources: model array, op resolver, "
                            "arena size, golden vectors and a check program")
    export.add_argument("model", metavar="MODEL.tflite")
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--name", required=True, help="C identifier prefix for the files")
    export.add_argument("--inputs", metavar="X.npy",
                        help="float samples (or input codes) for the golden vectors; "
                        "seeded random codes when omitted")
    export.add_argument("--count", type=int, default=DEFAULT_VECTORS,
                        help=f"number of golden vectors (default {DEFAULT_VECTORS})")
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    export.set_defaults(run=_export_c)

    check = sub.add_parser("check", help="reference kernel checker (TFLM vs TFLite "
                           "reference kernels, vs the Keras QAT model, resources)")
    check.add_argument("model", metavar="MODEL.tflite")
    check.add_argument("--keras", metavar="QAT_MODEL", help="tfqnet QAT model to compare with")
    check.add_argument("--data", metavar="X.npy", help="float input samples")
    check.add_argument("--json", metavar="REPORT", help="also write the report as JSON to "
                       "REPORT ('-': print JSON instead of the table)")
    check.add_argument("--samples", type=int, default=64, help="samples to run (default 64)")
    check.add_argument("--min-agreement", type=float, default=0.95,
                       help="least top-1 agreement with the Keras model (default 0.95)")
    check.add_argument("--force", action="store_true", help="overwrite an existing --json")
    check.add_argument("--quiet", action="store_true", help="no progress on stderr")
    check.set_defaults(run=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfqnet`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except _UsageError as error:
        _error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
