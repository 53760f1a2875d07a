"""The SRQ budget allocation (:mod:`tfqnet.quantizers.srq.allocator`) on byte arrays and
gate logits, without TensorFlow.

The module is loaded from its file: importing it as ``tfqnet.quantizers.srq.allocator``
would first import its parent packages, which build on TensorFlow.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "tfqnet" / "quantizers" / "srq" / "allocator.py"


def _load():
    spec = importlib.util.spec_from_file_location("srq_allocator", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


allocator = _load()

# the digits CNN (conv1, conv2, fc1, logits), bytes at widths 2..8 (tests/test_srq.py SIZES)
SIZES = (144, 4608, 32768, 640)
INT4 = [[n // 2] * 3 + [n] * 4 for n in SIZES]  # storage="int4": the container only
#: storage="compressed" (one table a kernel; fc1 and logits per-channel Dense kernels)
COMPRESSED = [
    [72, 72, 72, 144, 144, 144, 144],
    [1171, 2304, 2304, 2927, 3535, 4608, 4608],
    [8211, 12311, 16415, 20527, 24655, 28815, 32768],
    [640, 640, 640, 640, 640, 640, 640],
]
ALL_INT4_BYTES = sum(n // 2 for n in SIZES)  # 19080
KEPT = [3.0] * 6  # every gate of widths 3..8 kept


def test_the_allocator_needs_no_tensorflow():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('a', {str(PATH)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'tensorflow' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kept_ladder_counts_consecutive_kept_gates():
    assert allocator.kept_ladder([True, True, False, True]) == 4
    assert allocator.kept_ladder([False, True]) == 2
    assert allocator.kept_ladder([True] * 6) == 8
    assert allocator.kept_ladder([], lowest=5) == 5


def test_a_budget_where_all_caps_fit_decides_the_widths():
    # INT4 at the all-4-bit bytes: no layer affords its 5th bit
    assert allocator.decided_widths(0, INT4, ALL_INT4_BYTES) == [4, 4, 4, 4]
    # + 15%: conv1, conv2 and logits in int8 at once, never fc1
    assert allocator.decided_widths(0, INT4, int(1.15 * ALL_INT4_BYTES)) == [8, 8, 4, 8]
    # compressed, 1000 bytes below: a 3-bit fc1 pays for the others' 8 bits
    assert allocator.decided_widths(0, COMPRESSED, ALL_INT4_BYTES - 1000) == [8, 8, 3, 8]
    # fixed bytes count against the budget: 100 fewer leave conv1 no room for int8 ...
    assert allocator.decided_widths(100, INT4, int(1.15 * ALL_INT4_BYTES))[0] == 8
    # ... while the whole 15% taken by fixed kernels leaves every layer at 4 bits
    assert allocator.decided_widths(
        int(1.15 * ALL_INT4_BYTES) - ALL_INT4_BYTES, INT4, int(1.15 * ALL_INT4_BYTES)
    ) == [4, 4, 4, 4]


def test_a_budget_that_leaves_a_trade_decides_nothing():
    # room for conv2 in int8, or for conv1 and logits, not for all three
    budget = ALL_INT4_BYTES + SIZES[1] // 2
    assert allocator.decided_widths(0, INT4, budget) is None
    # two layers that each afford 8 bits alone but not together
    assert allocator.decided_widths(0, [[10] * 3 + [20] * 4] * 2, 30) is None
    assert allocator.decided_widths(0, [[10] * 3 + [20] * 4] * 2, 20) == [4, 4]


def test_the_layer_with_the_lowest_gate_logit_steps_down_first():
    costs = [[2, 3, 4, 5, 6, 7, 8]] * 2  # every bit costs a byte
    # 16 bytes at 8/8, budget 15: one bit goes, that of the lower 8th-bit gate
    low_b = [KEPT[:5] + [0.5], KEPT[:5] + [-0.2]]
    assert allocator.project([8, 8], costs, low_b, [True, True], 0, 15) == [8, 7]
    low_a = [KEPT[:5] + [-0.2], KEPT[:5] + [0.5]]
    assert allocator.project([8, 8], costs, low_a, [True, True], 0, 15) == [7, 8]
    # a tie: the first layer steps down
    assert allocator.project([8, 8], costs, [KEPT, KEPT], [True, True], 0, 15) == [7, 8]
    # INT4: an int8 width steps down to 4 bits at once (the next width with fewer bytes)
    assert allocator.project([8, 8, 8, 8], INT4, [KEPT] * 4, [True] * 4, 0,
                             ALL_INT4_BYTES) == [4, 4, 4, 4]


def test_room_goes_back_to_the_highest_logit_first():
    costs = [[2, 3, 4, 5, 6, 7, 8]] * 2
    # at 2/2 (4 bytes) with room for one more byte: the higher 3rd-bit gate gets it
    logits = [[1.0] + KEPT[1:], [2.0] + KEPT[1:]]
    assert allocator.project([2, 2], costs, logits, [True, True], 0, 5) == [2, 3]
    # the ladder of kept gates bounds the width given back
    logits = [[1.0, 1.0, -1.0, 1.0, 1.0, 1.0], [-1.0] * 6]
    assert allocator.project([2, 2], costs, logits, [True, True], 0, 100) == [8, 8]


def test_room_is_given_back_past_a_gate_training_dropped():
    # the numbers of tests/test_srq.py's test of the same name: fc1 at 3 bits, conv2's
    # gates of bits 3 and 5 dropped (2 bits); 8/2/3/8 fits, so conv2 gets its 3rd bit
    # (to 4, its ladder) and then, past the dropped 5th-bit gate, 8 bits
    logits = [KEPT, [-1.0, 3.0, -3.0, 3.0, 3.0, 3.0], [3.0] + [-3.0] * 5, KEPT]
    widths = allocator.project([8, 2, 3, 8], COMPRESSED, logits, [True] * 4, 0,
                               ALL_INT4_BYTES)
    assert widths == [8, 8, 3, 8]
    total = sum(layer[w - 2] for layer, w in zip(COMPRESSED, widths, strict=True))
    assert total <= ALL_INT4_BYTES


def test_frozen_layers_never_change():
    costs = [[2, 3, 4, 5, 6, 7, 8]] * 2
    # layer 0 frozen at 8: layer 1 pays for the whole excess
    assert allocator.project([8, 8], costs, [[-5.0] * 6, KEPT], [False, True], 0, 13) == [8, 5]
    # frozen over budget with nothing movable
    with pytest.raises(ValueError, match="over the budget of 13"):
        allocator.project([8, 8], costs, [KEPT, KEPT], [False, False], 0, 13)


def test_a_budget_below_the_all_2_bit_model_is_infeasible():
    smallest = sum(layer[0] for layer in INT4)  # every kernel at 2 bits: the all-INT4 bytes
    allocator.check_feasible(0, INT4, smallest / 1024)
    allocator.check_feasible(100, INT4, (smallest + 100) / 1024)
    with pytest.raises(ValueError, match="below the smallest model SRQ can export, 19180 bytes"):
        allocator.check_feasible(100, INT4, (smallest + 99) / 1024)
