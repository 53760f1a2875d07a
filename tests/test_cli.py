"""The ``tfqnet`` command line: export-c and check, their exit codes and file safety."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.micro_helpers import (
    digits_qat_and_tflite,
    disagreeing_qat_model,
    unsupported_op_tflite,
)
from tfqnet.cli import main
from tfqnet.export.flatbuffer import flash_breakdown
from tfqnet.micro.c_arrays import align_flatbuffer, parse_c_byte_array
from tfqnet.micro.model_file import MAX_MODEL_BYTES

ROOT = Path(__file__).resolve().parents[1]
FILES = ["digits_model_data.h", "digits_model_data.cc", "digits_op_resolver.h",
         "digits_test_data.h", "digits_test_data.cc", "digits_check.cc"]


@pytest.fixture(scope="module")
def work(float_digits_model, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli")
    qat, tflite = digits_qat_and_tflite(float_digits_model, digits)
    (path / "digits.tflite").write_bytes(tflite)
    np.save(path / "x.npy", digits.x_test[:40])
    (path / "topk.tflite").write_bytes(unsupported_op_tflite())
    (path / "empty.tflite").write_bytes(b"")
    (path / "junk.tflite").write_bytes(b"not a model at all" * 10)
    (path / "truncated.tflite").write_bytes(tflite[: len(tflite) // 3])
    return path


def test_export_c_writes_all_files_and_refuses_to_overwrite(work, capsys):
    out = work / "out"
    args = ["export-c", str(work / "digits.tflite"), "--out", str(out), "--name", "digits",
            "--inputs", str(work / "x.npy"), "--count", "3"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    source = (out / "digits_model_data.cc").read_text()
    aligned = align_flatbuffer((work / "digits.tflite").read_bytes())
    assert parse_c_byte_array(source, "g_digits_model_data") == aligned
    assert "#define DIGITS_TEST_COUNT 3" in (out / "digits_test_data.h").read_text()
    header = (out / "digits_model_data.h").read_text()
    assert "DIGITS_TENSOR_ARENA_SIZE" in header
    flash = flash_breakdown(aligned)
    assert f"// Flash by part (bytes): weights {flash['weights']}, biases " in header
    assert "flash by part: weights " in capsys.readouterr().out

    (out / "digits_op_resolver.h").write_text("edited by hand")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert (out / "digits_op_resolver.h").read_text() == "edited by hand"  # untouched

    assert main([*args, "--force"]) == 0
    assert "AddConv2D" in (out / "digits_op_resolver.h").read_text()


def test_export_c_fails_on_an_op_tflm_lacks(work, capsys):
    code = main(["export-c", str(work / "topk.tflite"), "--out", str(work / "topk_out"),
                 "--name", "topk"])
    assert code == 1
    assert "TOPK_V2" in capsys.readouterr().err
    assert not (work / "topk_out").exists()


@pytest.mark.parametrize("name", ["empty.tflite", "junk.tflite", "truncated.tflite",
                                  "missing.tflite"])
def test_bad_model_file_is_one_line_and_exit_2(work, capsys, name):
    assert main(["check", str(work / name)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfqnet: error:") and name in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_wrapper_script_on_corrupt_file_has_no_traceback(work):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check.py"),
                           str(work / "junk.tflite")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("tfqnet: error:")]
    assert len(errors) == 1 and "not a valid TFLite model" in errors[0]


def test_check_reports_a_skipped_check_and_strict_fails_it(work, capsys):
    from tfqnet.export.compression import _compressed, _Filter
    from tfqnet.export.flatbuffer import FlatbufferModel

    tflite = (work / "digits.tflite").read_bytes()
    graph = FlatbufferModel.from_bytes(tflite)
    fc1 = next(op for op in graph.operators if op.name == "FULLY_CONNECTED")
    path = work / "compressed.tflite"  # TFLite cannot run it: layer by layer is skipped
    path.write_bytes(_compressed(tflite, [_Filter(0, fc1.inputs[1], 4, None)]))
    assert main(["check", str(path), "--samples", "4", "--quiet"]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("PASS (layer-by-layer skipped: compressed model")
    assert main(["check", str(path), "--samples", "4", "--quiet", "--strict"]) == 1
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("FAIL (strict: layer-by-layer skipped: compressed model")


def test_check_passes_and_writes_json(work, capsys):
    report = work / "report.json"
    code = main(["check", str(work / "digits.tflite"), "--data", str(work / "x.npy"),
                 "--json", str(report), "--samples", "16"])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["samples"] == 16
    assert data["arena_minimum"] <= data["arena_reported"] <= 1.1 * data["arena_minimum"]
    assert "layer by layer" in captured.err  # progress goes to stderr
    assert captured.out.rstrip().endswith("PASS")
    # An existing report is not overwritten without --force.
    assert main(["check", str(work / "digits.tflite"), "--json", str(report)]) == 2


def test_check_fails_on_an_op_tflm_lacks(work, capsys):
    assert main(["check", str(work / "topk.tflite"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "TOPK_V2" in out and out.rstrip().splitlines()[-1].startswith("FAIL")
    assert main(["check", str(work / "topk.tflite"), "--quiet", "--json", "-"]) == 1
    report = json.loads(capsys.readouterr().out)  # JSON only, no table around it
    assert report["passed"] is False and "TOPK_V2" in report["failures"][0]


def test_check_against_saved_keras_models(work, float_digits_model, digits, capsys):
    qat, _ = digits_qat_and_tflite(float_digits_model, digits)
    good, bad = work / "qat_good", work / "qat_bad"
    qat.save(good, save_format="tf")
    disagreeing_qat_model(float_digits_model, digits).save(bad, save_format="tf")
    base = ["check", str(work / "digits.tflite"), "--data", str(work / "x.npy"),
            "--samples", "24", "--quiet"]
    capsys.readouterr()
    assert main([*base, "--keras", str(good)]) == 0
    assert "[tfqnet]" not in capsys.readouterr().err  # --quiet: no progress lines
    assert main([*base, "--keras", str(bad)]) == 1
    assert "top-1 agreement" in capsys.readouterr().out
    assert main([*base, "--keras", str(work / "nope.keras")]) == 2


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfqnet: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_huge_directory_and_foreign_files_are_named(work, capsys, tmp_path):
    huge = tmp_path / "huge.tflite"
    with open(huge, "wb") as handle:  # sparse: no disk space used
        handle.truncate(MAX_MODEL_BYTES + 1)
    assert main(["check", str(huge)]) == 2
    assert "more than the micro tools accept" in _one_error_line(capsys)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    assert main(["export-c", str(saved), "--out", str(tmp_path / "c"), "--name", "m"]) == 2
    assert "directory (a SavedModel?)" in _one_error_line(capsys)
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    assert main(["check", str(h5)]) == 2
    assert "HDF5" in _one_error_line(capsys)
    assert not (tmp_path / "c").exists()


def test_bad_inputs_and_out_paths_fail_before_work(work, capsys, tmp_path):
    model = str(work / "digits.tflite")
    nan = tmp_path / "nan.npy"
    values = np.zeros((2, 8, 8, 1), np.float32)
    values[1, 0, 0, 0] = np.nan
    np.save(nan, values)
    assert main(["export-c", model, "--out", str(tmp_path / "c"), "--name", "d",
                 "--inputs", str(nan)]) == 2
    assert "NaN" in _one_error_line(capsys)
    (tmp_path / "not_npy.npy").write_bytes(b"garbage")
    assert main(["check", model, "--data", str(tmp_path / "not_npy.npy")]) == 2
    assert "as a .npy array" in _one_error_line(capsys)
    (tmp_path / "afile").write_text("x")
    assert main(["export-c", model, "--out", str(tmp_path / "afile"), "--name", "d"]) == 2
    assert "is a file" in _one_error_line(capsys)
    assert main(["check", model, "--json", str(tmp_path / "no" / "dir.json")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "nan.npy", "not_npy.npy"]


def test_bad_file_is_answered_without_loading_tensorflow(work):
    """The speed of the answer: no TensorFlow import (seconds) before validation."""
    script = ("import sys; from tfqnet.cli import main; "
              f"code = main(['check', {str(work / 'junk.tflite')!r}]); "
              "print(code, 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert proc.stderr.count("\n") == 1 and "not a valid TFLite model" in proc.stderr


def test_internal_errors_are_one_line(monkeypatch, work, capsys):
    from tfqnet import cli

    def broken(path):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_read_model", broken)
    monkeypatch.delenv("TFQNET_TRACEBACK", raising=False)
    assert main(["check", str(work / "digits.tflite")]) == cli.EXIT_INTERNAL
    assert "internal error: ZeroDivisionError: a bug" in _one_error_line(capsys)


def test_data_of_the_wrong_shape_is_a_usage_error(work, capsys, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((3, 8, 9, 1), np.float32))
    assert main(["check", str(work / "digits.tflite"), "--data", str(tmp_path / "wide.npy")]) == 2
    assert "shape (8, 9, 1)" in _one_error_line(capsys)


@pytest.mark.parametrize("name, message", [
    ("v\n#define X 1 //", "contains control characters"),  # compiled, defining X
    ("x" * 300, "C identifier of 300 characters; give --name at most 40"),  # was exit 70
], ids=["newline", "300 characters"])
def test_export_c_refuses_a_name_that_makes_no_c_identifier(work, capsys, tmp_path, name,
                                                            message):
    out = tmp_path / "c"
    assert main(["export-c", str(work / "digits.tflite"), "--out", str(out),
                 "--name", name]) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "1.5", "-0.1"])
def test_check_refuses_a_min_agreement_that_is_no_fraction(work, capsys, value):
    assert main(["check", str(work / "digits.tflite"), "--min-agreement", value]) == 2
    assert (f"--min-agreement must be a fraction from 0 to 1 (e.g. 0.95), got "
            f"{float(value)!r}") in _one_error_line(capsys)


def _fail_on_call(monkeypatch, module, name: str, call: int, error: OSError):
    """``module.name`` raises ``error`` on its ``call``-th use (counting from 1) only."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_export_c_replaces_all_files_or_none(work, capsys, tmp_path, monkeypatch):
    from tfqnet import _files

    out = tmp_path / "c"
    base = ["export-c", str(work / "digits.tflite"), "--out", str(out), "--name", "digits"]
    assert main([*base, "--count", "3"]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(old) == sorted(FILES)
    capsys.readouterr()
    # The fourth file fails to move in place (a full disk, a file system error).
    calls = _fail_on_call(monkeypatch, _files.os, "replace", 4,
                          OSError(28, "No space left on device"))
    assert main([*base, "--count", "2", "--force"]) == 2
    err = capsys.readouterr().err  # progress lines, then one error line
    assert [ln for ln in err.splitlines() if ln.startswith("tfqnet:")] == [
        f"tfqnet: error: cannot write to --out {out}: No space left on device; no file was "
        "changed"]
    assert len(calls) > 4  # the three moved in were moved back
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary directory
    monkeypatch.undo()
    assert main([*base, "--count", "2", "--force"]) == 0
    assert "#define DIGITS_TEST_COUNT 2" in (out / "digits_test_data.h").read_text()


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory no file can be created in (for root, who ignores the mode bits, as
    on a read-only mount)."""
    import errno
    import os

    from tfqnet import _files

    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:
        real = _files.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == path.resolve():
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(_files.tempfile, "mkstemp", mkstemp)
    yield path
    path.chmod(0o755)


def test_unwritable_outputs_are_usage_errors_before_work(work, capsys, tmp_path,
                                                         read_only_dir):
    model = str(work / "digits.tflite")
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "sub", read_only_dir / "c"):
        assert main(["export-c", model, "--out", str(out), "--name", "d"]) == 2
        line = _one_error_line(capsys)
        assert "cannot write to --out" in line and "internal error" not in line
    assert "afile is a file, not a directory" in (
        main(["export-c", model, "--out", str(tmp_path / "afile" / "sub"), "--name", "d"])
        and _one_error_line(capsys))
    assert main(["check", model, "--json", str(read_only_dir / "r.json")]) == 2
    assert "cannot write --json" in _one_error_line(capsys)
    (tmp_path / "adir").mkdir()
    assert main(["check", model, "--json", str(tmp_path / "adir"), "--force"]) == 2
    assert "is a directory; give a file name" in _one_error_line(capsys)


def test_a_failed_json_write_keeps_the_report_and_exits_2(work, capsys, tmp_path,
                                                          monkeypatch):
    from tfqnet import cli

    _fail_on_call(monkeypatch, cli, "write_atomic", 1, PermissionError(13, "Permission denied"))
    code = main(["check", str(work / "digits.tflite"), "--samples", "2", "--quiet",
                 "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out.rstrip().endswith("PASS")  # the report is printed
    assert captured.err.strip() == (f"tfqnet: error: cannot write --json {tmp_path / 'r.json'}: "
                                    "Permission denied (the report is above)")


def test_sizes_are_checked_before_allocating(work, capsys, tmp_path):
    model = str(work / "digits.tflite")
    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as handle:  # 128 bytes claiming 256 TB (was a MemoryError)
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 8, 8, 1)})
        handle.write(bytes(64))
    assert main(["check", model, "--data", str(huge)]) == 2
    assert ("header claims an array of shape (1000000000000, 8, 8, 1) (float32, "
            "256000000000000 bytes), but the file holds 64 bytes") in _one_error_line(capsys)
    assert main(["export-c", model, "--out", str(tmp_path / "c"), "--name", "d",
                 "--count", "10000000000"]) == 2  # was a MemoryError
    assert "--count 10000000000: 10000000000 golden vectors of this model take" in (
        _one_error_line(capsys))
    assert main(["check", model, "--samples", "100000000"]) == 2
    assert "--samples 100000000: 100000000 samples of this model's input take" in (
        _one_error_line(capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.npy"]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("prefix", ["tfqnet-align-", "tfqnet-arena-"])
def test_sigterm_stops_the_child_and_removes_temporary_files(work, tmp_path, prefix):
    """SIGTERM while a child process works on a copy of the model in a temporary
    directory: exit 143 with one line, the child stopped, TMPDIR as it was."""
    import os
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tfqnet.cli", "export-c",
                             str(work / "digits.tflite"), "--out", str(tmp_path / "c"),
                             "--name", "d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    children: list[int] = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        children = _children(proc.pid)
        if children and any(p.name.startswith(prefix) for p in tmp.iterdir()):
            break
        time.sleep(0.02)
    assert children and proc.poll() is None, "the command never reached the child step"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert [ln for ln in err.splitlines() if ln.startswith("tfqnet:")] == [
        "tfqnet: error: terminated"]
    assert "Traceback" not in err + out
    assert sorted(tmp.iterdir()) == []  # no directory with a copy of the model left
    assert [pid for pid in children if _running(pid)] == []
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_integer_data_are_input_codes_in_range_given_dequantized_to_keras(
        work, float_digits_model, digits, capsys, tmp_path):
    """One meaning per dtype: floats are real values, integers the input's int8 codes.
    Codes out of range were cast (300 ran as 44); with a Keras model they were fed to
    it as if they were floats."""
    import tfqnet
    from tfqnet.micro.checker import check_model

    model = str(work / "digits.tflite")
    wide = tmp_path / "wide.npy"
    np.save(wide, np.full((3, 8, 8, 1), 300, np.int64))
    message = (f"{wide} holds integer codes from 300 to 300, outside the model input's int8 "
               "range -128 to 127; give codes in that range, or float values, which are "
               "quantized with its scale ")
    assert main(["check", model, "--data", str(wide)]) == 2
    assert message in _one_error_line(capsys)
    assert main(["export-c", model, "--out", str(tmp_path / "c"), "--name", "d",
                 "--inputs", str(wide)]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "c").exists()
    qat, tflite = digits_qat_and_tflite(float_digits_model, digits)
    with pytest.raises(ValueError, match="outside the model input's int8 range -128 to 127"):
        tfqnet.run_tflm(tflite, np.load(wide))

    x = digits.x_test[:32]
    codes = tfqnet.MicroInterpreter(tflite).inputs[0].quantize(x)
    np.testing.assert_array_equal(tfqnet.run_tflm(tflite, codes.astype(np.int64), raw=True),
                                  tfqnet.run_tflm(tflite, x, raw=True))  # codes as they are
    report = check_model(tflite, data=codes.astype(np.int16), keras_model=qat, samples=32)
    assert report.keras["passed"], report.keras
    assert report.keras["top1_agreement"] >= 0.95
    assert report.keras["max_output_diff_lsb"] <= 1


def test_keras_check_quiet_prints_nothing_but_the_result(work, float_digits_model, digits,
                                                         tmp_path):
    """TensorFlow's start-up lines (absl, cudart_stub, cuInit), written by its native
    libraries before any log level applies, surrounded tfqnet's output."""
    import os

    qat, _ = digits_qat_and_tflite(float_digits_model, digits)
    qat.save(tmp_path / "qat.h5")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "tfqnet.cli", "check",
                           str(work / "digits.tflite"), "--keras", str(tmp_path / "qat.h5"),
                           "--data", str(work / "x.npy"), "--samples", "8", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(env, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    assert "3. Keras QAT model: ok" in proc.stdout and proc.stdout.rstrip().endswith("PASS")


def test_export_c_and_compact_quiet_print_no_progress(work, capsys, tmp_path):
    model = str(work / "digits.tflite")
    assert main(["export-c", model, "--out", str(tmp_path / "c"), "--name", "d",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("wrote 6 files to ")
    assert main(["compact", model, str(tmp_path / "small.tflite"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(f"wrote {tmp_path / 'small.tflite'}")
