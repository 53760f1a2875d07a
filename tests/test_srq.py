"""Semi-Relaxed Quantization (``method="srq"``): the mode forward and relaxed backward,
DropBits, learned bit-widths and their penalty/budget, freezing, and the export."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfqnet
from tests.helpers import fine_tune, top1_agreement
from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import quantizers_of
from tfqnet.errors import ConversionError
from tfqnet.models import compile_classifier
from tfqnet.quantizers import srq

# kernel sizes of the digits CNN: conv1, conv2, fc1, logits
SIZES = {"conv1": 144, "conv2": 4608, "fc1": 32768, "logits": 640}
ALL_INT4_BYTES = sum(n // 2 for n in SIZES.values())


def _built(quantizer, shape, state: dict | None = None):
    """Builds ``quantizer`` on a bare layer, sets its state, marks it initialized."""
    layer = keras.layers.Layer()
    weights = quantizer.build(tf.TensorShape(shape), "w", layer)
    for name, value in (state or {}).items():
        weights[name].assign(np.asarray(value, np.float32))
    weights["initialized"].assign(1.0)
    return weights


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _relaxed(x, step, qmax, ratio):
    """The relaxed expectation ``step * (-qmax + sum_j F((x/step - t_j)/ratio))`` over
    all midpoints ``t_j`` (no window), in float64; and its d/dx."""
    t = np.arange(-qmax, qmax) + 0.5
    s = _sigmoid((x[:, None] / step - t) / ratio)
    return step * (s.sum(-1) - qmax), (s * (1.0 - s)).sum(-1) / ratio


def _window_error(ratio):
    """Bound on d/dx of the midpoints the window leaves out (all > WINDOW steps away)."""
    z = srq.WINDOW / ratio
    return 2.0 * _sigmoid(z) * (1.0 - _sigmoid(z)) / ratio / (1.0 - np.exp(-1.0 / ratio))


# --- the semi-relaxed quantizer --------------------------------------------------------------


def test_forward_is_round_to_nearest_and_gradients_reach_x_alpha_sigma():
    quantizer = srq.SRQWeightQuantizer(4, per_axis=False, drop_probability=0.0)
    step, ratio = 0.1, 0.3
    weights = _built(quantizer, (801,), {"log_alpha": np.log(step), "log_sigma": np.log(ratio)})
    x = tf.constant(np.linspace(-1.0, 1.0, 801) + 1e-3 * np.pi, tf.float32)  # no exact ties
    coefficients = np.random.default_rng(0).normal(size=801).astype(np.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = quantizer(x, training=True, weights=weights)
        loss = tf.reduce_sum(out * coefficients)
        total = tf.reduce_sum(out)
    expected = step * np.clip(np.floor(x.numpy() / step + 0.5), -7, 7)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    # inference: the same values, emitted through the export grid
    np.testing.assert_allclose(
        quantizer(x, training=False, weights=weights).numpy(), expected, atol=1e-6
    )
    # d out/dx is the relaxed expectation's (multi-class STE), not 0 and not 1
    dx = tape.gradient(total, x).numpy()
    xs = x.numpy().astype(np.float64)
    np.testing.assert_allclose(dx, _relaxed(xs, step, 7, ratio)[1], rtol=0,
                               atol=_window_error(ratio) + 1e-5)
    assert dx.max() > 1.0 and dx[np.abs(x.numpy()) < 0.6].min() > 0.5 and dx[-1] < 1e-3
    # alpha and sigma get the gradient of the relaxed expectation (finite differences)
    def relaxed_loss(log_step, log_ratio):
        expectation = _relaxed(xs, np.exp(log_step), 7, np.exp(log_ratio))[0]
        return float((expectation * coefficients).sum())

    h = 1e-4
    for name, args in (("log_alpha", (h, 0.0)), ("log_sigma", (0.0, h))):
        base = np.log([step, ratio])
        numeric = (relaxed_loss(*(base + args)) - relaxed_loss(*(base - args))) / (2 * h)
        grad = float(tape.gradient(loss, weights[name]))
        assert abs(numeric) > 1e-3
        np.testing.assert_allclose(grad, numeric, rtol=0.05)  # the window truncates


def test_per_channel_kernel_rounds_each_channel_on_its_own_step():
    quantizer = srq.SRQWeightQuantizer(3, per_axis=True, drop_probability=0.0)
    steps = np.array([0.05, 0.2, 0.5], np.float32)
    weights = _built(quantizer, (3, 3, 2, 3), {"log_alpha": np.log(steps)})
    kernel = np.random.default_rng(0).normal(0, 0.4, (3, 3, 2, 3)).astype(np.float32)
    out = quantizer(tf.constant(kernel), training=True, weights=weights).numpy()
    np.testing.assert_allclose(out, steps * np.clip(np.floor(kernel / steps + 0.5), -3, 3),
                               atol=1e-6)


def test_activation_quantizer_rounds_with_its_zero_point():
    quantizer = srq.SRQActivationQuantizer(4, drop_probability=0.0)
    weights = _built(quantizer, (None, 500), {"log_alpha": np.log(0.25), "zero_point": 3.0})
    x = tf.constant(np.linspace(-2.0, 4.5, 500, dtype=np.float32)[None] + 1e-3 * np.pi)
    expected = 0.25 * (np.clip(np.floor(x.numpy() / 0.25 + 0.5) + 3, 0, 15) - 3)
    np.testing.assert_allclose(quantizer(x, training=True, weights=weights).numpy(), expected,
                               atol=1e-6)
    np.testing.assert_allclose(quantizer(x, training=False, weights=weights).numpy(), expected,
                               atol=1e-6)


# --- DropBits ----------------------------------------------------------------------------------


def test_dropbits_changes_training_outputs_only():
    x = tf.constant(np.linspace(-1.0, 1.0, 301) + 1e-3 * np.pi, tf.float32)
    state = {"log_alpha": np.log(0.02)}
    dropping = srq.SRQWeightQuantizer(6, per_axis=False, drop_probability=0.5)
    plain = srq.SRQWeightQuantizer(6, per_axis=False, drop_probability=0.0)
    w_drop, w_plain = _built(dropping, (301,), state), _built(plain, (301,), state)
    full = plain(x, training=True, weights=w_plain).numpy()
    tf.random.set_seed(0)
    seen = set()
    for _ in range(40):
        out = dropping(x, training=True, weights=w_drop).numpy()
        # always round-to-nearest on the 6-, 5- or 4-bit grid (0, 1 or 2 bits dropped)
        matches = [b for b in (6, 5, 4) if np.allclose(
            out, 0.02 * 2 ** (6 - b) * np.clip(np.floor(x.numpy() / (0.02 * 2 ** (6 - b)) + 0.5),
                                              -grid.weight_qmax(b), grid.weight_qmax(b)),
            atol=1e-6)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {6, 5, 4}
    for _ in range(3):
        np.testing.assert_array_equal(dropping(x, training=False, weights=w_drop).numpy(),
                                      plain(x, training=False, weights=w_plain).numpy())
    np.testing.assert_allclose(plain(x, training=False, weights=w_plain).numpy(), full,
                               atol=1e-6)


def test_zero_drop_probability_is_the_plain_semi_relaxed_quantizer():
    quantizer = srq.SRQWeightQuantizer(5, per_axis=False, drop_probability=0.0)
    weights = _built(quantizer, (257,), {"log_alpha": np.log(0.07)})
    x = tf.constant(np.linspace(-1.5, 1.5, 257), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        layer_out = quantizer(x, training=True, weights=weights)
        ratio = srq._SRQQuantizer._sigma_ratio(weights["log_sigma"])
        plain_out = srq.semi_relaxed_quantize(x, tf.exp(weights["log_alpha"]), -15, 30, ratio)
    np.testing.assert_array_equal(layer_out.numpy(), plain_out.numpy())
    for target in (x, weights["log_alpha"], weights["log_sigma"]):
        np.testing.assert_allclose(tape.gradient(layer_out, target).numpy(),
                                   tape.gradient(plain_out, target).numpy(), rtol=1e-6)


def test_drop_mask_frequencies():
    tf.random.set_seed(1)
    masks = np.stack([srq.drop_mask(2, 0.3).numpy() for _ in range(1000)])
    # keep flags, lowest-order bit last: P(lowest dropped) = p, P(both dropped) = p**2
    assert abs((masks[:, 1] == 0).mean() - 0.3) < 0.045  # 3 standard errors
    assert abs((masks[:, 0] == 0).mean() - 0.09) < 0.03
    assert not np.any((masks[:, 0] == 0) & (masks[:, 1] == 1))  # only the lowest bits drop


# --- learned widths -------------------------------------------------------------------------


def test_gates_ladder_and_hard_concrete_probability():
    assert srq.ladder_width(np.array([1, 1, 0, 1])) == 4
    assert float(srq.ladder_width(tf.constant([True, True, True, False]))) == 5
    tf.random.set_seed(2)
    logits = tf.constant([-1.0, 0.5, 2.0])
    samples = srq.hard_concrete_sample(tf.tile(logits[None], [4000, 1])).numpy()
    assert samples.min() == 0.0 and samples.max() == 1.0
    np.testing.assert_allclose((samples > 0).mean(0), srq.nonzero_probability(logits).numpy(),
                               atol=0.03)


def test_learned_width_sets_grid_and_container():
    quantizer = srq.SRQWeightQuantizer(8, per_axis=False, learn_bits=True, bit_penalty=1.0)
    gates = np.array([3, 3, -2, 3, 3, 3], np.float32) / quantizer.gate_speed  # width 4
    weights = _built(quantizer, (200,), {"log_alpha": np.log(0.01), "gate_v": gates})
    x = tf.constant(np.linspace(-1.0, 1.0, 200) + 1e-3 * np.pi, tf.float32)
    assert quantizer.width() == 4 and quantizer.frozen_width() is None
    assert quantizer.container_bits() == 8  # not frozen: int8 holds any width
    out = quantizer(x, training=False, weights=weights).numpy()
    step4 = 0.01 * 2**4
    np.testing.assert_allclose(out, step4 * np.clip(np.floor(x.numpy() / step4 + 0.5), -7, 7),
                               atol=1e-6)
    weights["frozen_bits"].assign(4.0)
    assert quantizer.frozen_width() == 4 and quantizer.container_bits() == 4


@pytest.fixture(scope="module")
def penalised(float_digits_model, digits):
    """Widths learned from 4 bits under a weak and a strong bit penalty (32 batches
    each, fast gates; 4, not 8, bits keep the training graph and the test small)."""
    models = {}
    for penalty in (1e-4, 0.5):
        qat = tfqnet.quantize_model(float_digits_model, "srq", 4, 8, bit_penalty=penalty,
                                    gate_speed=400.0)
        keras.utils.set_random_seed(1)
        compile_classifier(qat, 5e-4).fit(
            digits.x_train[:1024], digits.y_train[:1024], epochs=1, batch_size=32, verbose=0,
            callbacks=tfqnet.callbacks(qat, 1),
        )
        models[penalty] = qat
    return models


def test_stronger_bit_penalty_learns_fewer_bits(penalised):
    weak, strong = (
        {k: v["weight_bits"] for k, v in srq.bit_width_report(penalised[p]).as_dict().items()}
        for p in (1e-4, 0.5)
    )
    assert sum(strong.values()) < sum(weak.values())
    assert strong["fc1"] < weak["fc1"]
    assert all(2 <= b <= 4 for b in (*weak.values(), *strong.values()))


def test_impossible_budget_fails_before_training(float_digits_model):
    qat = tfqnet.quantize_model(float_digits_model, "srq", 3, 8,
                                target_weight_kb=(ALL_INT4_BYTES - 1) / 1024)
    with pytest.raises(ValueError, match="target_weight_kb=.*below the smallest"):
        tfqnet.callbacks(qat, 2)


def test_bad_options_are_refused(float_digits_model):
    with pytest.raises(ValueError, match="drop_probability"):
        tfqnet.quantize_model(float_digits_model, "srq", 4, 8, drop_probability=1.5)
    with pytest.raises(ValueError, match="target_weight_kb"):
        tfqnet.quantize_model(float_digits_model, "srq", 4, 8, target_weight_kb=-1)


# --- end to end -------------------------------------------------------------------------------


BUDGET_BYTES = ALL_INT4_BYTES + 2500  # room for conv2 in int8, not for fc1


@pytest.fixture(scope="module")
def budgeted(float_digits_model, digits):
    # 5 bits: the smallest width above the INT4 container keeps the graph small
    qat = tfqnet.quantize_model(float_digits_model, "srq", 5, 8,
                                target_weight_kb=BUDGET_BYTES / 1024, gate_speed=400.0)
    fine_tune(qat, digits, epochs=1)  # widths frozen (and fitted to the budget) at its end
    return qat, tfqnet.convert(qat, digits.x_train)


def test_budget_is_respected_by_the_flatbuffer(budgeted):
    qat, flatbuffer = budgeted
    report = tfqnet.bit_width_report(qat)
    model = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert model.weight_bytes() <= BUDGET_BYTES
    assert model.weight_bytes() == report.total_bytes == sum(
        r["weight_bytes"] for r in report.rows)
    rows = report.as_dict()
    assert set(rows) == set(SIZES) and rows["fc1"]["weight_bits"] <= 4
    assert report.budget_bytes == BUDGET_BYTES
    assert abs(sum(r["budget_share"] for r in rows.values()) - report.total_bytes
               / BUDGET_BYTES) < 1e-9
    assert "| fc1 |" in report.table() and "budget" in report.table()
    # every kernel in its width's container, its codes inside the width's range
    for tensor in model.weight_tensors():
        size = int(np.prod(tensor.shape))
        name = next(k for k, n in SIZES.items() if n == size)
        bits = rows[name]["weight_bits"]
        assert tensor.type == ("INT4" if bits <= 4 else "INT8"), (name, bits, tensor.type)
        assert np.abs(model.constant_values(tensor)).max() <= grid.weight_qmax(bits)


def test_budgeted_model_agrees_with_tflm(budgeted, digits):
    qat, flatbuffer = budgeted
    assert top1_agreement(qat, flatbuffer, digits.x_test) >= 0.99
    accuracy = np.mean(tfqnet.run_tflm(flatbuffer, digits.x_test).argmax(-1) == digits.y_test)
    assert accuracy > 0.9


def test_widths_are_frozen_and_survive_a_config_round_trip(budgeted):
    qat, _ = budgeted
    learned = [q for q in quantizers_of(qat) if isinstance(q, srq.SRQWeightQuantizer)]
    assert learned and all(q.frozen_width() == q.width() for q in learned)
    clone = srq.SRQWeightQuantizer.from_config(learned[0].get_config())
    assert clone == learned[0] and clone.learn_bits


def test_convert_refuses_unfrozen_widths(budgeted, digits):
    qat, _ = budgeted
    frozen = {id(q): q.frozen_width() for q in srq._learned(qat)}
    for quantizer in srq._learned(qat):
        quantizer._state["frozen_bits"].assign(0.0)  # unfreeze
    with pytest.raises(ConversionError, match="freeze_bit_widths"):
        tfqnet.convert(qat, digits.x_train[:20])
    report = srq.freeze_bit_widths(qat)  # the same projection as the freeze callback's
    assert {id(q): q.frozen_width() for q in srq._learned(qat)} == frozen
    assert report.total_bytes <= BUDGET_BYTES


# --- compressed storage (TFLM compression: sub-4-bit widths save bytes) ------------------------


def test_compressed_storage_counts_lookup_table_bytes():
    from tfqnet.tflite_format import kernel_bytes, lut_weight_bytes, storage_form

    n = SIZES["fc1"]  # a per-tensor Dense kernel: one table
    assert storage_form(n, 3, "compressed") == ("3-bit LUT", lut_weight_bytes(n, 3, 1, 7))
    assert kernel_bytes(n, 3, "compressed") == (3 * n) // 8 + 16 + 7 < n // 2
    assert kernel_bytes(n, 5, "compressed") == (5 * n) // 8 + 16 + 31 < n
    assert storage_form(n, 4, "compressed") == ("INT4", n // 2)  # 4-bit indices: no gain
    assert storage_form(n, 8, "compressed") == ("int8", n)  # 255 codes: no 7-bit index
    # int4 storage is the container whatever the width
    assert [kernel_bytes(n, b) for b in range(2, 9)] == [n // 2] * 3 + [n] * 4
    # a table per channel and the file overhead of 32 channels: conv2 gains at 2 bits only
    conv2 = [storage_form(SIZES["conv2"], b, "compressed", 32, channels=32) for b in range(2, 9)]
    assert conv2[0] == ("2-bit LUT", 4608 * 2 // 8 + 16 + 32 * 3)
    assert [form for form, _ in conv2[1:]] == ["INT4", "INT4", "int8", "int8", "int8", "int8"]
    # one table for all channels (how SRQ counts a kernel): also at 5 and 6 bits
    conv2 = [storage_form(SIZES["conv2"], b, "compressed", channels=32) for b in range(2, 9)]
    assert conv2[3] == ("5-bit LUT", 4608 * 5 // 8 + 16 + 31)
    assert [form for form, _ in conv2] == ["2-bit LUT", "INT4", "INT4", "5-bit LUT",
                                           "6-bit LUT", "int8", "int8"]
    for size, tables, dense in ((144, 16, False), (4608, 32, False), (32768, 1, False),
                                (640, 1, False), (32768, 64, True), (640, 10, True)):
        costs = [kernel_bytes(size, b, "compressed", tables, dense, tables)
                 for b in range(2, 9)]
        assert costs == sorted(costs)  # never more bytes for fewer bits
        assert all(c <= kernel_bytes(size, b, per_channel_dense=dense)
                   for b, c in zip(range(2, 9), costs, strict=True))
    # a per-channel Dense kernel is never INT4 (TFLM has no per-channel INT4
    # FULLY_CONNECTED): int8, or indices where those are smaller
    assert [kernel_bytes(n, b, per_channel_dense=True) for b in range(2, 9)] == [n] * 7
    assert storage_form(n, 4, "compressed", 64, True, 64) == (
        "4-bit LUT", lut_weight_bytes(n, 4, 64, 15))
    assert storage_form(640, 2, "compressed", 10, True, 10) == ("int8", 640)  # too small


def _frozen_with_gates(float_digits_model, storage, **layer_logits):
    """8-bit SRQ under the all-4-bit budget, every gate logit 3 but fc1's above 3 bits at
    1 (its least confident bits), or as ``layer_logits`` gives a layer's, frozen by the
    budget projection."""
    qat = tfqnet.quantize_model(float_digits_model, "srq", 8, 8, storage=storage,
                                target_weight_kb=ALL_INT4_BYTES / 1024)
    layer_logits = {"fc1": [3.0] + [1.0] * 5, **layer_logits}
    for quantizer in srq._learned(qat):
        name = next(k for k, n in SIZES.items() if n == quantizer.size)
        logits = np.array(layer_logits.get(name, [3.0] * 6), np.float32)
        quantizer._state["gate_v"].assign(logits / quantizer.gate_speed)
    report = srq.freeze_bit_widths(qat)
    return qat, {k: v["weight_bits"] for k, v in report.as_dict().items()}, report


def test_compressed_storage_buys_wider_layers_at_the_all_4_bit_budget(float_digits_model):
    _, int4, report = _frozen_with_gates(float_digits_model, "int4")
    assert int4 == {"conv1": 4, "conv2": 4, "fc1": 4, "logits": 4}  # the structural limit
    assert report.total_bytes == ALL_INT4_BYTES
    _, compressed, report = _frozen_with_gates(float_digits_model, "compressed")
    # fc1 drops its least confident bits to 3 (a 3-bit LUT): room for the rest at 8 bits
    assert compressed == {"conv1": 8, "conv2": 8, "fc1": 3, "logits": 8}
    # fc1 (per channel): one table of 7 codes for all 64 channels
    assert report.total_bytes == (3 * SIZES["fc1"]) // 8 + 16 + 7 + 144 + 4608 + 640
    assert report.total_bytes <= ALL_INT4_BYTES
    assert report.as_dict()["fc1"]["stored_as"] == "3-bit LUT"
    assert "| fc1 | 3 (8) | default | yes | 32768 | 3-bit LUT |" in report.table()


def test_room_is_given_back_past_a_gate_training_dropped(float_digits_model):
    # as training left them on digits (seed 0 of bench_srq): fc1 at 3 bits, conv2's gates
    # of bits 3 and 5 dropped (2 bits), the rest kept. 8/2/3c/8 fits the budget, so room is
    # given back: conv2 gets its 3rd bit and then, past the dropped 5th-bit gate, the kept
    # gates above it: 8 bits, which the budget has room for (it used to stop at 4)
    _, widths, report = _frozen_with_gates(float_digits_model, "compressed",
                                           fc1=[3.0] + [-3.0] * 5,
                                           conv2=[-1.0, 3.0, -3.0, 3.0, 3.0, 3.0])
    assert widths == {"conv1": 8, "conv2": 8, "fc1": 3, "logits": 8}
    assert report.total_bytes <= ALL_INT4_BYTES


def test_compressed_budget_needs_a_compressed_conversion(float_digits_model):
    qat, _, _ = _frozen_with_gates(float_digits_model, "compressed")
    # 21776 bytes in INT4/int8 containers, over the budget: only compress=True meets it
    # (tfqnet.convert passes its compress argument to this hook before tracing)
    for compress in (False, 2):
        with pytest.raises(ConversionError, match="compress=True"):
            srq.SRQWeightQuantizer.prepare_export(qat, compress=compress)
    srq.SRQWeightQuantizer.prepare_export(qat, compress=True)
    with pytest.raises(ValueError, match="storage"):
        tfqnet.quantize_model(float_digits_model, "srq", 4, 8, storage="int2")


def test_budget_that_leaves_nothing_to_trade_decides_the_widths(float_digits_model):
    def decided(budget_bytes, **options):
        qat = tfqnet.quantize_model(float_digits_model, "srq", 8, 8,
                                    target_weight_kb=budget_bytes / 1024, **options)
        return qat, srq.widths_the_budget_decides(qat)

    # INT4 storage: at the all-4-bit bytes no layer can afford its 5th bit
    qat, widths = decided(ALL_INT4_BYTES)
    assert widths == [4, 4, 4, 4]
    # + 15%: room for conv1, conv2 and logits in int8 at once, never for fc1
    assert decided(int(1.15 * ALL_INT4_BYTES))[1] == [8, 8, 4, 8]
    # room for conv2 or for the two small layers in int8, not for all three: a trade
    assert decided(BUDGET_BYTES)[1] is None
    # compressed: a 4-bit fc1 (4-bit indices: a per-channel Dense kernel is never INT4)
    # fits the all-4-bit bytes with conv2 at 2 bits, and a 3-bit one with the others at
    # 8 bits: a trade
    assert decided(ALL_INT4_BYTES, storage="compressed")[1] is None
    # 1000 bytes fewer: a 4-bit fc1 does not fit even with the others at their cheapest,
    # so 3 bits is fc1's cap, and a 3-bit fc1 pays for the others' 8 bits
    assert decided(ALL_INT4_BYTES - 1000, storage="compressed")[1] == [8, 8, 3, 8]
    # a bit penalty prices bits the budget would allow
    assert decided(ALL_INT4_BYTES, bit_penalty=0.1)[1] is None
    srq._learned(qat)[0]._state["frozen_bits"].assign(4.0)
    assert srq.widths_the_budget_decides(qat) is None  # frozen widths are never changed


def test_widths_the_budget_decides_are_frozen_before_the_first_step(float_digits_model, digits):
    qat = compile_classifier(tfqnet.quantize_model(
        float_digits_model, "srq", 5, 8, target_weight_kb=ALL_INT4_BYTES / 1024), 5e-4)
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen["widths"] = [q.frozen_width() for q in srq._learned(qat)]
                seen["width_loss"] = float(sum(qat.losses))

    # 1 epoch: without the budget's decision the widths would freeze only at the end
    qat.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, batch_size=32, verbose=0,
            callbacks=[*tfqnet.callbacks(qat, 1), Probe()])
    assert seen["widths"] == [4, 4, 4, 4]
    # the gates still say 5 bits (E[bytes] ~ the int8 model, over the budget), but a
    # frozen layer's loss term is its frozen bytes: no budget loss on the deployed model
    assert all(srq.ladder_width(q.gate_logits().numpy() > 0) == 5 for q in srq._learned(qat))
    assert seen["width_loss"] == 0.0


# below the all-INT4 bytes: infeasible with INT4 storage, fc1 must go to <= 3 bits compressed
COMPRESSED_BUDGET = ALL_INT4_BYTES - 2000


@pytest.fixture(scope="module")
def compressed_budgeted(float_digits_model, digits):
    qat = tfqnet.quantize_model(float_digits_model, "srq", 5, 8, storage="compressed",
                                target_weight_kb=COMPRESSED_BUDGET / 1024, gate_speed=400.0)
    fine_tune(qat, digits, epochs=1)
    with pytest.warns(UserWarning, match="TensorFlow Lite Micro only"):
        return qat, tfqnet.convert(qat, digits.x_train, compress=True)


def test_compressed_budget_is_respected_by_the_flatbuffer(compressed_budgeted, float_digits_model):
    from tfqnet.export.compression import stored_weight_bytes
    from tfqnet.tflite_format import DECODE_OP

    with pytest.raises(ValueError, match="below the smallest"):  # INT4 storage cannot
        tfqnet.callbacks(tfqnet.quantize_model(float_digits_model, "srq", 5, 8,
                                               target_weight_kb=COMPRESSED_BUDGET / 1024), 1)
    qat, flatbuffer = compressed_budgeted
    report = tfqnet.bit_width_report(qat)
    rows = report.as_dict()
    assert rows["fc1"]["weight_bits"] <= 3 and rows["fc1"]["stored_as"].endswith("-bit LUT")
    assert stored_weight_bytes(flatbuffer) <= report.total_bytes <= COMPRESSED_BUDGET
    model = tfqnet.FlatbufferModel.from_bytes(flatbuffer)
    assert DECODE_OP in {op.name for op in model.operators}


def test_compressed_budgeted_model_agrees_with_tflm(compressed_budgeted, digits):
    qat, flatbuffer = compressed_budgeted
    assert top1_agreement(qat, flatbuffer, digits.x_test) >= 0.99
    accuracy = np.mean(tfqnet.run_tflm(flatbuffer, digits.x_test).argmax(-1) == digits.y_test)
    assert accuracy > 0.9
