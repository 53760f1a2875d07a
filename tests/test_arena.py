"""Arena measurement: the TFLM runtime runs at the reported size and fails just below
the measured minimum; the probe survives a crashing runtime."""

from __future__ import annotations

import pytest

from tests.micro_helpers import digits_qat_and_tflite, unsupported_op_tflite
from tfqnet.micro import arena as arena_module
from tfqnet.micro.arena import (
    ArenaProbeError,
    arena_ok,
    measure_arena,
    with_margin,
)
from tfqnet.micro.c_arrays import align_flatbuffer


@pytest.fixture(scope="module")
def model(float_digits_model, digits):
    return align_flatbuffer(digits_qat_and_tflite(float_digits_model, digits)[1])


@pytest.fixture(scope="module")
def measured(model):
    return measure_arena(model)


def test_runtime_runs_at_reported_and_fails_just_below_minimum(model, measured):
    assert measured.minimum > 1024
    assert arena_ok(model, measured.reported)
    assert arena_ok(model, measured.minimum)
    assert not arena_ok(model, measured.minimum - 1)


def test_reported_is_never_below_minimum_and_at_most_1_1x(measured):
    assert measured.minimum <= measured.reported <= 1.1 * measured.minimum
    assert measured.reported % 16 == 0
    assert measured.margin == measured.reported - measured.minimum > 0


@pytest.mark.parametrize("minimum", [1, 17, 100, 320, 4096, 35792, 10**6 + 3])
def test_margin_bounds(minimum):
    reported = with_margin(minimum)
    assert minimum <= reported <= max(minimum, int(1.1 * minimum))


def test_unloadable_model_raises_with_the_runtime_reason():
    with pytest.raises(ArenaProbeError, match="TOPK_V2"):
        measure_arena(unsupported_op_tflite())


def test_search_survives_a_child_that_crashes(monkeypatch):
    """A fake runtime: needs 1800 bytes and segfaults below 1200 (as TFLM can)."""
    need, crash_below, calls = 1800, 1200, []

    def fake_child(path, lo, hi, limit, timeout):
        calls.append((lo, hi))
        lines = []

        def probe(size):
            lines.append(f"try {size}")
            if size < crash_below:
                raise SystemExit  # the process dies: no "ok"/"fail" line
            lines.append(f"{'ok' if size >= need else 'fail'} {size}")
            return size >= need

        try:
            ok = probe(hi)
            while not ok:
                lo, hi = hi, min(hi * 2, limit)
                ok = probe(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if probe(mid):
                    hi = mid
                else:
                    lo = mid
            lines.append(f"done {hi}")
            return 0, lines, ""
        except SystemExit:
            return -11, lines, "Segmentation fault"

    monkeypatch.setattr(arena_module, "_run_child", fake_child)
    result = measure_arena(b"TFL3" * 10, start=64 * 1024)
    assert result.minimum == need
    assert len(calls) >= 2  # at least one restart after a crash
