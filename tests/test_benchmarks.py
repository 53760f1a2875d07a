"""The benchmark suite (benchmarks/suite.py) in quick mode on a tiny budget.

Checks the shape of what it writes, never accuracy: a table with every column, sane
values (agreement in [0, 1], sizes positive), a failing row reported in the table
instead of raised, the targets table, and the PNG plots.
"""

from __future__ import annotations

import re

import pytest

import tfqnet  # noqa: F401  (first: makes tf.keras tf-keras)
from benchmarks import suite
from benchmarks.charts import pareto_front
from tfqnet._keras import keras
from tfqnet.export.flatbuffer import FLASH_PARTS
from tfqnet.models import mobilenet_v2_tiny

#: a few rows that cover each kind: float, TFMOT (the step-time reference, and one that
#: fails to convert), tfqnet
ROWS = ["float", "TFMOT default 8-bit", "TFMOT n-bit W4A4", "tfqnet uniform W4A8"]
FAILING = "TFMOT n-bit W4A4"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    args = suite.parse_args([
        "--quick", "--tasks", "digits", "--rows", *ROWS, "--float-epochs", "1",
        "--qat-epochs", "1", "--train-limit", "128", "--test-limit", "50",
        "--markdown", str(out / "BENCHMARKS.md"), "--plots", str(out / "plots"),
    ])
    return suite.run(args), out


def table_after(text: str, heading: str) -> list[list[str]]:
    """The markdown table following ``heading``, as rows of cells (header first)."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return table


def test_table_has_every_column_and_row(quick):
    result, out = quick
    text = (out / "BENCHMARKS.md").read_text()
    assert text.count("<!-- suite_quick:start -->") == 1
    table = table_after(text, "### digits CNN")
    assert table[0] == suite.COLUMNS
    assert set(table[1][0]) <= {"-"}  # the |---| separator row
    body = table[2:]
    names = [row[0] for row in body]
    assert len(names) == len(ROWS)
    assert all(name.startswith(r) for name, r in zip(names, ROWS, strict=True))
    assert all(len(row) == len(suite.COLUMNS) and all(row) for row in body)
    assert machine_line(text)
    flash = table_after(text, "### Flash by part, digits CNN")
    assert flash[0] == ["row", *FLASH_PARTS]
    sizes = {row[0]: row[suite.COLUMNS.index("flatbuffer bytes")] for row in body}
    parts = {row[0]: sum(int(n) for n in row[1:]) for row in flash[2:]}
    assert "tfqnet uniform W4A8" in parts
    assert all(str(total) == sizes[name] for name, total in parts.items())  # parts add up


def machine_line(text: str) -> bool:
    """The section names the command and the machine (cores, versions)."""
    return bool(re.search(r"with `python .*suite\.py --quick.*` on .*cores.*TensorFlow", text))


def test_measured_values_are_sane(quick):
    result, _ = quick
    measured = [(name, m) for name, runs in result.runs["digits"].items() for m in runs]
    assert len(measured) == len(ROWS)
    for name, m in measured:
        if name == FAILING:
            continue
        assert m.error is None, (name, m.error)
        assert 0.0 <= m.agreement <= 1.0
        assert 0.0 <= m.tflm_acc <= 1.0
        assert m.flatbuffer_bytes > m.weight_bytes > 0
        assert m.arena_bytes > 0 and m.arena_reported >= m.arena_bytes
        assert m.conversion_seconds > 0
    steps = {s.name: s.stats["step_ratio"] for s in result.summaries["digits"]}
    assert steps["TFMOT default 8-bit"][0] == pytest.approx(1.0)
    assert steps["tfqnet uniform W4A8"][0] > 0
    # int4 weights: the W4A8 row stores half the int8 row's filter bytes
    runs = result.runs["digits"]
    assert runs["tfqnet uniform W4A8"][0].weight_bytes * 2 == runs[
        "TFMOT default 8-bit"][0].weight_bytes


def test_failed_conversion_is_reported_not_raised(quick):
    result, out = quick
    (failed,) = result.runs["digits"][FAILING]
    assert failed.error.startswith("conversion fails:")
    assert failed.keras_acc is not None and failed.tflm_acc is None
    row = next(r for r in table_after((out / "BENCHMARKS.md").read_text(), "### digits CNN")
               if r[0] == FAILING)
    assert "conversion fails" in row[3] and row[4] == "—"


def test_targets_table_lists_every_target(quick):
    _, out = quick
    table = table_after((out / "BENCHMARKS.md").read_text(), "### Targets")
    assert table[0] == ["issue", "target", "digits CNN"]
    assert [row[1] for row in table[2:]] == [text for _, text, _ in suite.TARGETS]
    by_target = {row[1]: row[2] for row in table[2:]}
    # rows left out of this run cannot be judged, and the table says so
    assert by_target["crq ternary within 2 points of float"] == "not measured (row missing)"
    assert by_target["int4 flatbuffer <= 0.6x int8 (uniform W4A8 / W8A8 bytes)"] == (
        "not measured (row missing)")
    assert re.search(r": (met|\*\*missed\*\*)$",
                     by_target["uniform W4A8 within 1.0 point of float"])


def test_pareto_plot_written_and_linked(quick):
    result, out = quick
    (plot,) = result.plots  # no srq learned-bits row in this run: no bits plot
    assert plot == out / "plots" / "pareto_quick.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](plots/pareto_quick.png)" in (out / "BENCHMARKS.md").read_text()


def test_pareto_front():
    points = [(100, 0.9), (50, 0.8), (50, 0.85), (200, 0.9), (300, 0.95)]
    assert pareto_front(points) == [2, 0, 4]


def test_unknown_row_and_missing_mode_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        suite.parse_args(["--tasks", "digits"])
    assert "--quick" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="matches no row"):
        suite.run(suite.parse_args(["--quick", "--rows", "no such row"]))


def test_mobilenet_model_has_depthwise_and_residual_adds():
    model = mobilenet_v2_tiny()
    kinds = [type(layer) for layer in model.layers]
    assert kinds.count(keras.layers.DepthwiseConv2D) == 4
    assert kinds.count(keras.layers.Add) == 2
    assert model.output_shape == (None, 10) and model.input_shape == (None, 16, 16, 1)
    assert model.count_params() < 50_000
