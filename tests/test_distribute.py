"""Training under tf.distribute: every method under MirroredStrategy on 2 logical CPUs.

The distributed runs happen in one subprocess (``tests/distribute_worker.py``): the CPU
must be split into logical devices before TensorFlow initialises them, which this
process has already done. For every method in ``tfqnet.method_names()`` it trains the
same float model with the same seed and global batch once on one device and once on
two replicas, and converts both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfqnet
from tests.distribute_worker import EPOCHS, tiny_cnn
from tfqnet.core.config import quantizers_of
from tfqnet.core.quantizer import BatchStatistics, _global_statistics, _local_statistics

WORKER = Path(__file__).with_name("distribute_worker.py")
#: state that holds integers (zero points, 0/1 flags, frozen widths): must match exactly
INTEGER_STATE = ("zero_point", "initialized", "frozen_bits", "_crq_hard")
#: float32 values may differ by reduction order (an all-reduced sum of two half-batch
#: gradients is not the single-device sum). Measured: qn's scales up to 2e-6 apart;
#: a shard's statistic instead of the global batch's moved them by 1e-2 to 1e-1.
SCALE_REL_TOLERANCE = 1e-4
STATE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("distribute") / "report.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out), *tfqnet.method_names()],
        cwd=WORKER.parent.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(params=tfqnet.method_names())
def method(request, report):
    assert request.param in report, f"the worker did not train {request.param!r}"
    return report[request.param]


def test_replicas_hold_identical_state_after_every_epoch(method):
    mirrored = method["runs"]["mirrored"]
    assert mirrored["replicas"] == 2
    assert method["runs"]["single"]["replicas"] == 1
    # every variable of the model, trainable or not, on both replicas
    assert mirrored["replica_diff"] == [0.0] * EPOCHS


def test_schedules_step_once_per_epoch_as_on_one_device(method):
    single, mirrored = method["runs"]["single"], method["runs"]["mirrored"]
    assert mirrored["schedule_calls"] == single["schedule_calls"]
    assert all(calls == EPOCHS for calls in mirrored["schedule_calls"].values())
    assert mirrored["schedule_state"] == single["schedule_state"]


def test_qn_temperature_anneals_once_per_epoch_under_the_strategy(report):
    """T = (epoch + 1) * 10 after each epoch: stepped once per epoch, not per replica."""
    mirrored = report["qn"]["runs"]["mirrored"]
    assert len(mirrored["schedule_calls"]) == 2  # weight and activation schedules
    for epoch, state in enumerate(mirrored["schedule_state"]):
        temperatures = [v for k, v in state.items() if "temperature" in k]
        assert temperatures and all(t == 10.0 * (epoch + 1) for t in temperatures), state


def test_crq_schedule_ends_hard_under_the_strategy(report):
    """The CRQ ramp/hard schedule (set before every batch) reaches the hard phase."""
    mirrored = report["crq"]["runs"]["mirrored"]
    assert list(mirrored["schedule_calls"].values()) == [EPOCHS]
    last = mirrored["schedule_state"][-1]
    assert last and all(v == 1.0 for v in last.values()), last


def test_quantizer_state_matches_the_single_device_run(method):
    """Data-initialised ranges come from the global batch, not from a replica's shard
    (before the fix: zero points 1-3 apart, log step sizes up to 0.1)."""
    diff = method["state_diff"]
    integer = {k: v for k, v in diff.items() if any(s in k for s in INTEGER_STATE)}
    assert any("zero_point" in k for k in integer), "no activation zero point compared"
    assert all(v == 0.0 for v in integer.values()), integer
    assert max(diff.values()) <= STATE_TOLERANCE, diff


def test_converted_model_matches_the_single_device_run(method):
    """Byte for byte, or (float summation order) equal integer codes and zero points,
    float32 scales within a few ulps and the same TFLM outputs (within 1 LSB)."""
    if method["flatbuffers_equal"]:
        return
    diff = method["flatbuffer_diff"]
    assert diff["layout_differing"] == []
    assert diff["codes_differing"] == 0
    assert diff["largest_scale_rel_difference"] <= SCALE_REL_TOLERANCE
    single = np.array(method["runs"]["single"]["tflm"])
    mirrored = np.array(method["runs"]["mirrored"]["tflm"])
    assert np.abs(single - mirrored).max() <= 1
    assert np.mean(single.argmax(-1) == mirrored.argmax(-1)) >= 0.99


def test_uniform_crq_srq_convert_to_the_same_integer_model(report):
    """srq (random bit dropping off) converts byte for byte. uniform and crq do on some
    machines; on others a trained float32 value ends one ulp apart, because a gradient
    is a sum over the whole batch on one device and over each shard under the strategy:
    uniform's input step (LSQ), crq's ternary scales (straight-through from the first
    step since its default hard_fraction is 1). Measured on an AMD EPYC CI machine:
    uniform 9 scales within 4.7e-7 relative, crq within 5.4e-7, codes identical. Their
    integer models must still compute exactly the same: identical layout and codes, and
    identical TFLM outputs (qn's looser check is above)."""
    assert report["srq"]["flatbuffers_equal"], report["srq"]["flatbuffer_diff"]
    for name in ("uniform", "crq"):
        result = report[name]
        if not result["flatbuffers_equal"]:
            diff = result["flatbuffer_diff"]
            assert diff["layout_differing"] == [] and diff["codes_differing"] == 0, diff
            assert diff["largest_scale_rel_difference"] <= 1e-6, diff
            assert result["runs"]["single"]["tflm"] == result["runs"]["mirrored"]["tflm"]


@pytest.mark.parametrize("name", tfqnet.method_names())
def test_every_quantizer_state_variable_is_first_replica_on_write(name):
    """All methods create their state through ``Quantizer.add_state``."""
    options = {"weight_bits": 2, "policy": None} if name in ("qn", "crq") else {}
    qat = tfqnet.quantize_model(tiny_cnn(), method=name, activation_bits=4, **options)
    assert quantizers_of(qat)
    # the layers' own weights and TFMOT's step counter are not quantizer state
    not_state = {"kernel:0", "bias:0", "depthwise_kernel:0", "optimizer_step:0"}
    state = [v for v in qat.variables if v.name.split("/")[-1] not in not_state]
    assert any("zero_point" in v.name for v in state)
    for variable in state:
        assert variable.synchronization == tf.VariableSynchronization.ON_WRITE, variable.name
        assert variable.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA, variable.name


@pytest.mark.parametrize(
    ("case", "data"),
    [("unequal_shards", [1.0, -2.0, 5.0, 0.5, 7.0, 3.0, -1.0, 2.0]),
     ("empty_shard", [1.0, -2.0, 5.0])],
)
def test_replicas_share_the_global_batch_statistics(report, case, data):
    """Both replicas get min, max and mean of all shards together (a mean weighted by
    shard size; a replica without samples adds nothing)."""
    expected = [min(data), max(data), sum(data) / len(data)]
    per_replica = report["statistics"][case]
    assert len(per_replica) == 2
    for stats in per_replica:
        np.testing.assert_allclose(stats, expected, rtol=1e-6)


def test_batch_statistics_without_a_strategy_are_the_tensors():
    x = tf.constant([[-1.5, 0.25], [3.0, 2.0]])
    stats = _global_statistics(_local_statistics(x))
    assert isinstance(stats, BatchStatistics)
    assert [float(s) for s in stats] == [-1.5, 3.0, 0.9375]
    assert [float(s) for s in BatchStatistics.of(x)] == [-1.5, 3.0, 0.9375]
