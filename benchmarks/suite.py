"""The benchmark suite: every tfqnet method next to the baselines a user would pick.

    python benchmarks/suite.py --quick   # digits, 1 seed, 3 float + 1 QAT epochs
    python benchmarks/suite.py --full    # both tasks, 3 seeds, the budget below

Two tasks (:mod:`benchmarks.tasks`: the digits CNN, and a MobileNetV2-style model with
depthwise convolutions and residual adds on digits upsampled to 16x16) times the rows
of :mod:`benchmarks.rows` (float, post-training int8, TFMOT default 8-bit QAT, TFMOT's
experimental n-bit scheme, tfqnet uniform / qn / crq / srq / pixel embedding), all from
the same float model per task and seed and with the same QAT budget. Columns: Keras
accuracy, TFLM accuracy, QAT-vs-TFLM top-1 agreement, flatbuffer bytes, weight bytes,
measured arena bytes (seed 0: the arena depends on the graph, not the weights), training
step time relative to TFMOT's default QAT (same task and seed; measured round-robin over
the trained models, see :func:`benchmarks.rows.step_times`), conversion time; mean ±
standard deviation over the seeds. Then each issue's targets, checked on these
numbers, and PNG plots in ``benchmarks/plots/``. A row that fails (e.g. TFMOT n-bit at
4-bit activations, which does not convert) is reported in the table, not raised.

Budgets (Adam, batch 32; float lr 1e-3 digits / 2e-3 MobileNet, QAT lr 5e-4):

* full: 3 seeds; digits float 20 + QAT 5 epochs, MobileNet float 12 + QAT 4 epochs.
  A row's cost is mostly fixed (QAT graph tracing and TFLite conversion), an epoch is
  ~0.3 / ~1.4 CPU-s; the run takes ~25 minutes on 2 idle cores (16 rows x 2 tasks x 3
  seeds). The per-issue
  scripts (``bench_*.py``) train digits longer (e.g. 30 + 10 epochs).
* quick: 1 seed, digits only, float 3 + QAT 1 epochs: ~4 minutes on 2 idle cores; a
  smoke run, not results. ``--tasks digits mobilenet`` adds the MobileNet (~10 more).

Writes the section ``suite`` (full) or ``suite_quick`` of BENCHMARKS.md and
``benchmarks/plots/{pareto,srq_bits}_{full,quick}.png``; ``--markdown``/``--plots``
write elsewhere (the tests do).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks import charts
from benchmarks.report import (
    BENCHMARKS_MD,
    machine,
    markdown_table,
    verdict,
    write_section,
)
from benchmarks.rows import (
    SRQ_FIXED,
    SRQ_LEARNED,
    Context,
    Measurement,
    all_rows,
    step_times,
    train_float,
)
from benchmarks.tasks import TASKS
from tfqnet.export.flatbuffer import FLASH_PARTS

PLOTS = Path(__file__).resolve().parent / "plots"
TFMOT_DEFAULT = "TFMOT default 8-bit"
COLUMNS = ["row", "issue", "Keras acc", "TFLM acc", "QAT-vs-TFLM agreement",
           "flatbuffer bytes", "weight bytes", "arena bytes", "step time vs TFMOT 8-bit",
           "conversion s"]


@dataclass(frozen=True)
class Budget:
    seeds: int
    float_epochs: dict[str, int]
    qat_epochs: dict[str, int]
    tasks: tuple[str, ...] = tuple(TASKS)


MODES = {
    "full": Budget(3, {"digits": 20, "mobilenet": 12}, {"digits": 5, "mobilenet": 4}),
    "quick": Budget(1, {"digits": 3, "mobilenet": 3}, {"digits": 1, "mobilenet": 1},
                    tasks=("digits",)),
}

Stat = tuple[float, float] | None  # (mean, standard deviation) over seeds


def _stat(values: Sequence[float | None]) -> Stat:
    values = [float(v) for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else None


@dataclass
class RowSummary:
    name: str
    issue: str
    seeds: int
    stats: dict[str, Stat]
    errors: list[str] = field(default_factory=list)  # one per failed seed


FIELDS = ("keras_acc", "tflm_acc", "agreement", "flatbuffer_bytes", "weight_bytes",
          "arena_bytes", "step_ratio", "conversion_seconds")


def summarize(rows: dict[str, list[Measurement]], issues: dict[str, str]) -> list[RowSummary]:
    """Mean and spread of each column; step time divided by TFMOT default's, per seed."""
    reference = rows.get(TFMOT_DEFAULT, [])
    summaries = []
    for name, runs in rows.items():
        ratios = [
            m.step_seconds / ref.step_seconds
            if m.step_seconds and ref.step_seconds else None
            for m, ref in zip(runs, reference, strict=False)
        ]
        stats = {f: _stat([getattr(m, f) for m in runs]) for f in FIELDS if f != "step_ratio"}
        stats["step_ratio"] = _stat(ratios)
        summaries.append(RowSummary(name, issues.get(name, ""), len(runs), stats,
                                    [m.error for m in runs if m.error]))
    return summaries


def _cell(stat: Stat, kind: str, seeds: int) -> str:
    if stat is None:
        return "—"
    mean, spread = stat
    if kind == "acc":
        text = f"{mean:.4f}"
        return text + (f" ± {spread:.4f}" if seeds > 1 else "")
    if kind == "bytes":
        return f"{mean:.0f}" + (f" ± {spread:.0f}" if spread >= 0.5 else "")
    if kind == "ratio":
        return f"{mean:.2f}x" + (f" ± {spread:.2f}" if seeds > 1 else "")
    return f"{mean:.1f}" + (f" ± {spread:.1f}" if seeds > 1 else "")


def table_rows(summaries: list[RowSummary]) -> list[list[str]]:
    kinds = ["acc", "acc", "acc", "bytes", "bytes", "bytes", "ratio", "seconds"]
    out = []
    for s in summaries:
        cells = [_cell(s.stats[f], k, s.seeds) for f, k in zip(FIELDS, kinds, strict=True)]
        if s.errors:
            failed = f"**{s.errors[0]}**"
            if s.stats["tflm_acc"] is None:
                cells[1] = failed
            else:
                cells[1] += f" ({len(s.errors)} of {s.seeds} seeds: {failed})"
        out.append([s.name, s.issue or "—", *cells])
    return out


# --- targets -------------------------------------------------------------------------------


class _Numbers:
    """Lookups into one task's results for the target checks."""

    def __init__(self, runs: dict[str, list[Measurement]], summaries: list[RowSummary]):
        self.runs = runs
        self.by_name = {s.name: s for s in summaries}

    def mean(self, row: str, name: str) -> float | None:
        summary = self.by_name.get(row)
        stat = summary.stats.get(name) if summary else None
        return None if stat is None else stat[0]

    def paired_ratio(self, row: str, other: str, name: str) -> float | None:
        """Mean over seeds of row/other for ``name`` (both measured on the same seed)."""
        pairs = [(getattr(a, name), getattr(b, name))
                 for a, b in zip(self.runs.get(row, []), self.runs.get(other, []), strict=False)]
        ratios = [a / b for a, b in pairs if a is not None and b]
        return float(np.mean(ratios)) if ratios else None


Check = Callable[[_Numbers], tuple[str, bool] | None]


def _within(row: str, points: float, reference: str = "float") -> Check:
    def check(n: _Numbers):
        acc = n.mean(row, "tflm_acc")
        ref = n.mean(reference, "tflm_acc" if reference != "float" else "keras_acc")
        if acc is None or ref is None:
            return None
        gap = 100 * (acc - ref)
        return f"{gap:+.2f} points ({acc:.4f} vs {ref:.4f})", gap >= -points
    return check


def _ratio(row: str, other: str, name: str, limit: float, unit: str = "x") -> Check:
    def check(n: _Numbers):
        ratio = n.paired_ratio(row, other, name)
        return None if ratio is None else (f"{ratio:.3f}{unit}", ratio <= limit)
    return check


def _beats_tfmot_ternary(n: _Numbers):
    qn = n.mean("tfqnet qn ternary W2A8", "tflm_acc")
    tfmot_row = "TFMOT n-bit W2A8 (straight-through ternary)"
    tfmot, where = n.mean(tfmot_row, "tflm_acc"), "TFLM"
    if tfmot is None:
        tfmot, where = n.mean(tfmot_row, "keras_acc"), "Keras"
    if qn is None or tfmot is None:
        return None
    crq = n.mean("tfqnet crq ternary W2A8", "tflm_acc")
    side = f", crq {crq:.4f}" if crq is not None else ""
    return f"qn {qn:.4f}{side} vs TFMOT {tfmot:.4f} ({where})", qn > tfmot


def _srq_budget(n: _Numbers):
    learned, fixed = n.mean(SRQ_LEARNED, "tflm_acc"), n.mean(SRQ_FIXED, "tflm_acc")
    used, budget = n.mean(SRQ_LEARNED, "weight_bytes"), n.mean(SRQ_FIXED, "weight_bytes")
    if None in (learned, fixed, used, budget):
        return None
    return (f"{learned:.4f} vs {fixed:.4f}; weights {used:.0f} of {budget:.0f} B",
            # means of the same 450 test images: equal accuracies may differ by 1 ulp
            learned >= fixed - 1e-9 and used <= budget)


def _arena_margin(n: _Numbers):
    ratios = [m.arena_reported / m.arena_bytes for runs in n.runs.values() for m in runs
              if m.arena_bytes and m.arena_reported]
    if not ratios:
        return None
    return (f"{min(ratios):.3f}x to {max(ratios):.3f}x over {len(ratios)} models",
            min(ratios) >= 1.0 and max(ratios) <= 1.1)


def _tfqnet_agreement(n: _Numbers):
    found = [(m.agreement, name) for name, runs in n.runs.items() if name.startswith("tfqnet")
             for m in runs if m.agreement is not None]
    if not found:
        return None
    worst, row = min(found)
    return f"lowest {worst:.4f} ({row})", worst >= 0.99


TARGETS: list[tuple[str, str, Check]] = [
    ("#2", "uniform W4A8 within 1.0 point of float", _within("tfqnet uniform W4A8", 1.0)),
    ("#2", "int4 flatbuffer <= 0.6x int8 (uniform W4A8 / W8A8 bytes)",
     _ratio("tfqnet uniform W4A8", "tfqnet uniform W8A8", "flatbuffer_bytes", 0.6)),
    ("#2", "uniform W4A8 step time <= 1.3x TFMOT default 8-bit",
     _ratio("tfqnet uniform W4A8", TFMOT_DEFAULT, "step_seconds", 1.3)),
    ("#3", "qn ternary W2A8 within 2 points of float", _within("tfqnet qn ternary W2A8", 2.0)),
    ("#3", "qn 3bit_pow2 within 1 point of float", _within("tfqnet qn 3bit_pow2 W4A8", 1.0)),
    ("#3", "qn ternary more accurate than TFMOT straight-through ternary", _beats_tfmot_ternary),
    ("#3", "qn step time <= 1.5x uniform's (qn ternary / uniform W4A8)",
     _ratio("tfqnet qn ternary W2A8", "tfqnet uniform W4A8", "step_seconds", 1.5)),
    ("#4", "srq learned bits, budget = srq W4A8 weight bytes: at least as accurate, "
     "within budget", _srq_budget),
    ("#4", "srq W4A4 within 1.5 points of float", _within("tfqnet srq W4A4", 1.5)),
    ("#5", "crq ternary within 2 points of float", _within("tfqnet crq ternary W2A8", 2.0)),
    ("#5", "2-bit compressed weights <= 0.3x int8 weights (crq / uniform W8A8, tables "
     "included)", _ratio("tfqnet crq ternary W2A8, 2-bit compressed", "tfqnet uniform W8A8",
                         "weight_bytes", 0.3)),
    ("#6", "pixel embedding within 1 point of the same model on int8 normalised input "
     "(uniform W4A8)", _within("tfqnet pixel embedding + uniform W4A8", 1.0,
                               reference="tfqnet uniform W4A8")),
    ("#7", "reported arena >= measured minimum, <= 1.1x it", _arena_margin),
    ("#3 #4 #6", "QAT-vs-TFLM agreement >= 0.99 (every tfqnet row and seed)",
     _tfqnet_agreement),
]


def target_rows(numbers: dict[str, _Numbers]) -> list[list[str]]:
    """One row per target: issue, target, then 'measured: verdict' per task."""
    out = []
    for issue, text, check in TARGETS:
        cells = []
        for n in numbers.values():
            found = check(n)
            cells.append("not measured (row missing)" if found is None else
                         f"{found[0]}: {verdict(found[1])}")
        out.append([issue, text, *cells])
    return out


# --- the run -------------------------------------------------------------------------------


@dataclass
class SuiteResult:
    runs: dict[str, dict[str, list[Measurement]]]  # task -> row -> one per seed
    summaries: dict[str, list[RowSummary]]
    section: str
    plots: list[Path]
    seconds: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="1 seed, 3 float + 1 QAT epochs (a few minutes)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="3 seeds, the documented budget (~35 minutes on 2 cores)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=None,
                        help="default: the mode's (quick: digits; full: all)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="TEXT",
                        help="only rows whose name contains one of these texts")
    parser.add_argument("--seeds", type=int, default=None, help="override the mode's seeds")
    parser.add_argument("--float-epochs", type=int, default=None)
    parser.add_argument("--qat-epochs", type=int, default=None)
    parser.add_argument("--train-limit", type=int, default=None,
                        help="first N training samples only (tests)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="first N test samples only (tests)")
    parser.add_argument("--no-arena", action="store_true", help="skip arena measurement")
    parser.add_argument("--markdown", type=Path, default=BENCHMARKS_MD,
                        help="file whose section is written (default BENCHMARKS.md)")
    parser.add_argument("--plots", type=Path, default=PLOTS, help="folder for the PNG plots")
    args = parser.parse_args(argv)
    # the command shown with the results: these arguments, whoever called (tests too)
    args.command = " ".join(["python benchmarks/suite.py",
                             *(sys.argv[1:] if argv is None else argv)])
    for name in ("seeds", "float_epochs", "qat_epochs", "train_limit", "test_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def _budget(args: argparse.Namespace) -> Budget:
    base = MODES[args.mode]
    return Budget(
        args.seeds or base.seeds,
        {t: args.float_epochs or e for t, e in base.float_epochs.items()},
        {t: args.qat_epochs or e for t, e in base.qat_epochs.items()},
        tuple(args.tasks or base.tasks),
    )


def _log_row(task: str, seed: int, name: str, m: Measurement, seconds: float) -> None:
    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    print(f"  {task} seed {seed} | {name}: keras {fmt(m.keras_acc, '.4f')} "
          f"tflm {fmt(m.tflm_acc, '.4f')} agree {fmt(m.agreement, '.4f')} "
          f"bytes {fmt(m.flatbuffer_bytes, 'd')} arena {fmt(m.arena_bytes, 'd')}"
          f"{' | ' + m.error if m.error else ''} [{seconds:.0f} s]", flush=True)


def _set_step_times(ctx: Context) -> None:
    """Step time of every trained model of this task and seed (float model included),
    measured round-robin after all rows are measured (see :func:`rows.step_times`)."""
    models = dict(ctx.models)
    if "float" in ctx.results:
        models["float"] = (ctx.float_model, ctx.task.x_train)
    seconds = step_times(models, ctx.task.y_train)
    for name, measurement in ctx.results.items():
        measurement.step_seconds = seconds.get(measurement.extra.get("trained_as", name))


def _selected_rows(args: argparse.Namespace) -> list:
    return [r for r in all_rows() if not args.rows or any(t in r.name for t in args.rows)]


def _run_task_seed(args: argparse.Namespace, task_name: str, seed: int) -> dict[str, Measurement]:
    """Every selected row of one task and seed (run in a child process, see :func:`run`)."""
    budget = _budget(args)
    task = TASKS[task_name]().subset(args.train_limit, args.test_limit)
    float_model = train_float(task, seed, budget.float_epochs[task_name])
    ctx = Context(task, seed, budget.qat_epochs[task_name], float_model,
                  measure_arena=not args.no_arena)
    for row in _selected_rows(args):
        start = time.monotonic()
        ctx.results[row.name] = row.run(ctx)
        _log_row(task_name, seed, row.name, ctx.results[row.name], time.monotonic() - start)
    _set_step_times(ctx)
    return dict(ctx.results)


def run(args: argparse.Namespace) -> SuiteResult:
    """Trains, converts and measures every row; writes the section and the plots.

    Each task and seed runs in a fresh child process: Keras and the converter keep
    traced graphs alive in-process, and even with ``clear_session`` after every
    task-seed the full run grew to 16 GB and was OOM-killed on 24 GB (2026-11-23).
    """
    budget, started = _budget(args), time.monotonic()
    rows = _selected_rows(args)
    if not rows:
        raise SystemExit(f"--rows {args.rows} matches no row; rows: "
                         f"{[r.name for r in all_rows()]}")
    issues = {r.name: r.issue for r in rows}
    print(f"{machine()}\n{args.command}\nmode {args.mode}: {budget}", flush=True)
    runs: dict[str, dict[str, list[Measurement]]] = {}
    tasks = {}
    spawn = multiprocessing.get_context("spawn")
    for task_name in budget.tasks:
        tasks[task_name] = TASKS[task_name]().subset(args.train_limit, args.test_limit)
        runs[task_name] = {r.name: [] for r in rows}
        for seed in range(budget.seeds):
            with ProcessPoolExecutor(1, mp_context=spawn) as child:
                results = child.submit(_run_task_seed, args, task_name, seed).result()
            for row in rows:
                runs[task_name][row.name].append(results[row.name])
    summaries = {t: summarize(r, issues) for t, r in runs.items()}
    plots = _plots(args, runs, summaries, tasks)
    seconds = time.monotonic() - started
    body = _body(args, budget, runs, summaries, tasks, plots, seconds)
    section_name = "suite" if args.mode == "full" else "suite_quick"
    title = ("Benchmark suite: tfqnet vs the baselines (issue 8)" if args.mode == "full" else
             "Benchmark suite, quick mode (a smoke run on a tiny budget; not results)")
    section = write_section(section_name, title, body, path=args.markdown,
                            command=args.command)
    return SuiteResult(runs, summaries, section, plots, seconds)


def _plots(args, runs, summaries, tasks) -> list[Path]:
    points = {
        tasks[t].short: [{"name": s.name, "bytes": (s.stats["flatbuffer_bytes"] or (None,))[0],
                     "acc": (s.stats["tflm_acc"] or (None,))[0],
                     "acc_spread": (s.stats["tflm_acc"] or (None, None))[1]}
                    for s in summaries[t]]
        for t in runs
    }
    plots = [charts.pareto_plot(points, args.plots / f"pareto_{args.mode}.png")]
    bits = {tasks[t].short: r[SRQ_LEARNED][0].extra["bits"] for t, r in runs.items()
            if r.get(SRQ_LEARNED) and "bits" in r[SRQ_LEARNED][0].extra}
    if bits:
        plots.append(charts.bits_plot(bits, args.plots / f"srq_bits_{args.mode}.png"))
    return plots


def _body(args, budget, runs, summaries, tasks, plots, seconds) -> str:
    seeds = list(range(budget.seeds))
    epochs = ", ".join(f"{t}: float {budget.float_epochs[t]}, QAT {budget.qat_epochs[t]}"
                       for t in runs)
    parts = [
        f"{len(seeds)} seed(s) {seeds}; epochs ({epochs}); Adam, batch 32, QAT lr 5e-4; "
        "every row fine-tunes the same float model of its task and seed. Cells: mean ± "
        "standard deviation over seeds. *Keras acc*: the Keras model the row deploys (the "
        "float model for the float and post-training rows); *TFLM acc*: the flatbuffer on "
        "the TFLM runtime (reference kernels); *agreement*: top-1 Keras vs TFLM; *weight "
        "bytes*: filters as stored (packed INT4, compressed indices + tables) plus GATHER "
        "tables; *arena bytes*: the smallest arena the TFLM runtime runs the model in "
        "(tfqnet.micro.arena; seed 0); *step time*: median `train_on_batch` step (batch 32) of "
        "the trained model, measured round-robin over the rows (the load of a shared machine "
        "then hits all alike), divided by TFMOT default 8-bit QAT's, same task and seed; "
        "*conversion s*: wall time of the conversion. Failed rows say where they failed. "
        "The rows and their options: `benchmarks/rows.py`. "
        f"Wall time of this run: {seconds / 60:.1f} min."
        + (f" Subsets: first {args.train_limit} training / {args.test_limit} test samples."
           if args.train_limit or args.test_limit else ""),
    ]
    for t in runs:
        table = markdown_table(COLUMNS, table_rows(summaries[t]))
        parts.append(f"### {tasks[t].title}\n\n{table}")
    numbers = {t: _Numbers(runs[t], summaries[t]) for t in runs}
    parts.append(
        "### Targets of the issues\n\nThe issues state their targets on digits; the other "
        "columns apply the same check to the other task.\n\n"
        + markdown_table(["issue", "target", *(tasks[t].short for t in runs)],
                         target_rows(numbers)))
    for t, r in runs.items():
        flash = [[name, *(m[0].extra["flash"][part] for part in FLASH_PARTS)]
                 for name, m in r.items() if m and "flash" in m[0].extra]
        if flash:
            parts.append(f"### Flash by part, {tasks[t].short} (seed 0, bytes; "
                         "`tfqnet.flash_breakdown`)\n\n"
                         + markdown_table(["row", *FLASH_PARTS], flash))
    images = "\n\n".join(
        f"![{p.stem}]({os.path.relpath(p, Path(args.markdown).resolve().parent)})"
        for p in plots)
    parts.append("### Plots\n\nAccuracy on the TFLM runtime vs flatbuffer bytes (the Pareto "
                 "front joins the rows no other row beats on both), and the weight bits the "
                 f"srq learned-bits run kept per layer (seed 0).\n\n{images}")
    for t, r in runs.items():
        if r.get(SRQ_LEARNED) and "bits_table" in r[SRQ_LEARNED][0].extra:
            parts.append(f"### srq learned bit-widths, {tasks[t].short} (seed 0)"
                         f"\n\n{r[SRQ_LEARNED][0].extra['bits_table']}")
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
