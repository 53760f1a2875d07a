"""QN's weight and activation quantizers and their temperature schedule (the formulas
and options: :mod:`tfqnet.quantizers.qn`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import quantizer_states, quantizers_of
from tfqnet.core.quantizer import BatchStatistics, Quantizer, register
from tfqnet.quantizers.kernel_views import as_channels, channels_last
from tfqnet.quantizers.qn.levels import LEVEL_SETS, is_uniform, parse_levels, required_bits
from tfqnet.quantizers.staircase import (
    WINDOW,
    hard_staircase,
    kmeans_thresholds,
    soft_staircase,
    soft_uniform_staircase,
)

_MIN = 1e-8
#: the paper's ternary rule (option ``ternary_threshold``): +-0.05 of max|beta * w|
TERNARY_THRESHOLD = 0.05
#: level sets with more steps than this and uniform midpoint thresholds use the window
EXACT_MAX_STEPS = 2 * WINDOW + 1
#: default of option ``hard_fraction`` (module docstring of tfqnet.quantizers.qn)
HARD_FRACTION = 1.0


# --- quantizers ------------------------------------------------------------------------


class TemperatureSchedule(keras.callbacks.Callback):
    """Sets ``T = min((epoch + 1) * step, cap)`` at the start of every epoch, and the
    hard-phase flags to 1 from epoch ``hard_from`` on (0 before).

    ``epoch`` is Keras's absolute epoch index, so ``fit(..., initial_epoch=e)`` resumes
    the schedule where it stopped; the variables are model weights, so a saved and
    reloaded model keeps its temperature and phase.
    """

    def __init__(
        self,
        temperatures: Sequence[tf.Variable],
        hard_flags: Sequence[tf.Variable],
        step: float,
        cap: float,
        hard_from: int,
    ):
        super().__init__()
        self.temperatures = list(temperatures)
        self.hard_flags = list(hard_flags)
        self.step = float(step)
        self.cap = float(cap)
        self.hard_from = int(hard_from)

    def temperature(self, epoch: int) -> float:
        return min((epoch + 1) * self.step, self.cap)

    def hard(self, epoch: int) -> bool:
        """Whether ``epoch`` trains the hard forward (the final hard phase)."""
        return epoch >= self.hard_from

    def on_epoch_begin(self, epoch, logs=None):
        for variable in self.temperatures:
            variable.assign(self.temperature(epoch))
        for variable in self.hard_flags:
            variable.assign(float(self.hard(epoch)))


def _check_ternary_threshold(value: float | None) -> float | None:
    if value is None:
        return None
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"ternary_threshold must be in (0, 1) (a fraction of max|beta w|) or None "
            f"(k-means), got {value!r}."
        )
    return float(value)


ALPHA_INITS = ("fit", "paper")


def _check_alpha_init(value: str) -> str:
    if value not in ALPHA_INITS:
        raise ValueError(f"alpha_init must be one of {ALPHA_INITS}, got {value!r}.")
    return value


def _check_schedule(step: float, cap: float, hard_fraction: float) -> tuple[float, float, float]:
    if not float(step) > 0 or not float(cap) >= float(step):
        raise ValueError(f"need 0 < temperature_step <= max_temperature, got {step!r} and {cap!r}.")
    if not 0.0 <= float(hard_fraction) <= 1.0:
        raise ValueError(f"hard_fraction must lie in [0, 1], got {hard_fraction!r}.")
    return float(step), float(cap), float(hard_fraction)


class _QNQuantizer(Quantizer):
    """Shared parts: the temperature variable and its schedule."""

    #: name suffix of this quantizer type's temperature variables (saved models keep it)
    temperature_name: str = "qn_temperature"
    #: suffix of its hard-phase flags (0: soft forward, 1: hard forward)
    hard_name: str = "qn_hard"

    def __init__(
        self,
        temperature_step: float = 10.0,
        max_temperature: float = 2000.0,
        hard_fraction: float = HARD_FRACTION,
    ):
        self.temperature_step, self.max_temperature, self.hard_fraction = _check_schedule(
            temperature_step, max_temperature, hard_fraction
        )

    @property
    def window(self) -> int:
        """Window of the windowed sum: T >= temperature_step (epoch 0), so
        ``window * T >= 30`` bounds its error by ``2 exp(-30)`` (for ``alpha beta``
        near 1, the initialisation) while evaluating few sigmoids."""
        return min(WINDOW, max(2, math.ceil(30.0 / self.temperature_step)))

    def _temperature_weight(self, layer, name: str) -> tf.Variable:
        # A model weight (not a Python float) so that save/load and resumed training
        # keep the annealed temperature; epoch 0's value until the callback runs.
        return self.add_state(
            layer,
            f"{name}_{self.temperature_name}",
            initializer=keras.initializers.Constant(self.temperature_step),
        )

    @classmethod
    def callbacks(cls, model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
        schedules = {
            (q.temperature_step, q.max_temperature, q.hard_fraction)
            for q in quantizers_of(model)
            if type(q) is cls
        }
        if len(schedules) > 1:
            raise ValueError(f"{cls.__name__}s of one model disagree on the schedule: {schedules}")
        states = [state for q, state in quantizer_states(model) if type(q) is cls]
        temperatures = [state["temperature"] for state in states]
        flags = [state["hard"] for state in states]
        if not schedules or not temperatures:
            return []
        step, cap, hard_fraction = schedules.pop()
        hard_epochs = math.floor(hard_fraction * epochs)
        return [TemperatureSchedule(temperatures, flags, step, cap, epochs - hard_epochs)]


@register
class QNWeightQuantizer(_QNQuantizer):
    """QN weight quantizer: ``w_q = alpha * (Y[0] + sum_i s_i sigmoid(T (beta w - b_i)))``.

    Inference: ``alpha * (Y[0] + sum_i s_i [beta w >= b_i])`` = ``alpha * level``,
    emitted by :func:`tfqnet.grid.weight_fake_quant` with scale ``alpha`` and the
    fewest bits that hold ``max|Y|`` (<= 4 bits: packed INT4).
    Gradients: see the module docstring; ``b_i`` only with ``learn_thresholds``.
    In the final hard phase (flag ``hard`` = 1) the training forward is the inference
    level ``alpha * level`` with the soft function's gradient (straight-through).

    ``alpha`` and ``beta`` are per output channel when ``per_axis`` (else per tensor);
    the thresholds are per tensor, in the beta-scaled space where every channel
    spans the same range. Initialisation on the first training step:
    ``beta = 5p / (4q)`` with ``p = max|Y|`` and ``q = max|w|`` (per channel);
    thresholds: midpoints between the k-means centres of ``beta * w`` (centres
    started at the levels), for every set including ternary, as the paper's reference
    code does; with ``ternary_threshold=t`` a ternary set uses the paper's text rule
    ``+-t * max|beta w|`` instead (t = 0.05: +-0.0625). Uniform sets of more than 17
    steps (8 bits): the level midpoints (k-means into 255 clusters of a few thousand
    weights is ill-posed). ``alpha``: with ``alpha_init="fit"`` (default) the least
    squares scale of the initial hard levels ``L``, ``alpha = sum(w L) / sum(L^2)``
    per channel (``1 / beta`` where a channel has no non-zero level); with
    ``"paper"``, ``alpha = 1 / beta``.

    Why not the paper's defaults: the +-0.05 rule leaves ~90% of the weights non-zero
    (ternary becomes nearly binary), and ``alpha = 1 / beta`` puts the non-zero level at
    about twice the mean magnitude of the weights it stands for.
    """

    temperature_name = "qn_weight_temperature"
    hard_name = "qn_weight_hard"

    def __init__(
        self,
        levels: Sequence[int] = LEVEL_SETS["ternary"],
        per_axis: bool = True,
        channel_dims: int = 1,
        learn_thresholds: bool = False,
        temperature_step: float = 10.0,
        max_temperature: float = 2000.0,
        ternary_threshold: float | None = None,
        alpha_init: str = "fit",
        hard_fraction: float = HARD_FRACTION,
    ):
        super().__init__(temperature_step, max_temperature, hard_fraction)
        self.ternary_threshold = _check_ternary_threshold(ternary_threshold)
        self.alpha_init = _check_alpha_init(alpha_init)
        self.levels = parse_levels(levels)
        self.bits = required_bits(self.levels)
        self.per_axis = bool(per_axis)
        self.channel_dims = int(channel_dims)
        self.learn_thresholds = bool(learn_thresholds)
        self.steps = np.diff(self.levels).astype(np.float32)
        # Uniform sets with frozen midpoint thresholds use the windowed sum.
        self.windowed = (
            is_uniform(self.levels)
            and len(self.steps) > EXACT_MAX_STEPS
            and not self.learn_thresholds
        )

    def get_config(self) -> dict:
        return {
            "levels": list(self.levels),
            "per_axis": self.per_axis,
            "channel_dims": self.channel_dims,
            "learn_thresholds": self.learn_thresholds,
            "temperature_step": self.temperature_step,
            "max_temperature": self.max_temperature,
            "ternary_threshold": self.ternary_threshold,
            "alpha_init": self.alpha_init,
            "hard_fraction": self.hard_fraction,
        }

    def build(self, tensor_shape, name, layer):
        shape = (math.prod(tensor_shape[-self.channel_dims :]),) if self.per_axis else ()
        zeros = keras.initializers.Zeros()
        return {
            "log_alpha": self.add_state(layer, name + "_qn_log_alpha", shape, zeros, True),
            "log_beta": self.add_state(layer, name + "_qn_log_beta", shape, zeros, True),
            "thresholds": self.add_state(
                layer,
                name + "_qn_thresholds",
                shape=(len(self.steps),),
                initializer=keras.initializers.Constant(self.midpoints()),
                trainable=self.learn_thresholds,
            ),
            "temperature": self._temperature_weight(layer, name),
            "hard": self.add_state(layer, f"{name}_{self.hard_name}"),
            "initialized": self.add_initialized_flag(layer, name),
        }

    def midpoints(self) -> np.ndarray:
        return ((np.array(self.levels[1:]) + np.array(self.levels[:-1])) / 2).astype(np.float32)

    def hard_levels(self, u: tf.Tensor, thresholds: tf.Tensor) -> tf.Tensor:
        """The integer level ``Y[0] + sum_i s_i [u >= b_i]`` of beta-scaled weights ``u``."""
        low = float(self.levels[0])
        if self.windowed:  # midpoint thresholds of a unit-step set sit at low + 0.5 + i
            return low + tf.clip_by_value(tf.floor(u - low + 0.5), 0.0, float(len(self.steps)))
        return low + hard_staircase(u, thresholds, self.steps)

    def initial_state(self, w: tf.Tensor) -> dict[str, tf.Tensor]:
        """``beta = 5p / (4 max|w|)``, thresholds, ``alpha`` (class docstring); ``w`` is
        [weights per channel, channels]."""
        p = float(max(abs(v) for v in self.levels))
        q = tf.maximum(tf.reduce_max(tf.abs(w), axis=0), _MIN)
        beta = 5.0 * p / (4.0 * q)
        u = w * beta
        if self.levels == LEVEL_SETS["ternary"] and self.ternary_threshold is not None:
            edge = self.ternary_threshold * tf.reduce_max(tf.abs(u))
            thresholds = tf.stack([-edge, edge])
        elif self.windowed:
            thresholds = tf.constant(self.midpoints())
        else:
            thresholds = kmeans_thresholds(u, self.levels)
        alpha = 1.0 / beta
        if self.alpha_init == "fit":
            levels = self.hard_levels(u, thresholds)
            energy = tf.reduce_sum(levels * levels, axis=0)
            fitted = tf.reduce_sum(w * levels, axis=0) / tf.maximum(energy, _MIN)
            alpha = tf.where(energy > 0.0, tf.maximum(fitted, _MIN), alpha)
        if not self.per_axis:
            beta, alpha = tf.reshape(beta, []), tf.reshape(alpha, [])
        return {
            "log_alpha": tf.math.log(alpha),
            "log_beta": tf.math.log(beta),
            "thresholds": thresholds,
        }

    def __call__(self, inputs, training, weights, **kwargs):
        reshape = self.per_axis and self.channel_dims > 1
        w = channels_last(inputs, self.channel_dims) if reshape else inputs
        # [weights per step size, step sizes]: the statistics of the initialisation
        flat = as_channels(inputs, self.per_axis, self.channel_dims)
        state = self.initialize_once(
            weights,
            ["log_alpha", "log_beta", "thresholds"],
            lambda: self.initial_state(flat),
            training,
        )
        alpha, beta = tf.exp(state["log_alpha"]), tf.exp(state["log_beta"])
        u = beta * w
        low = float(self.levels[0])
        if training:
            temperature = tf.stop_gradient(weights["temperature"])

            def soft() -> tf.Tensor:
                if self.windowed:
                    # midpoint thresholds of a unit-step set sit at low + 0.5 + i
                    return soft_uniform_staircase(
                        u - low - 0.5, len(self.steps), temperature, self.window
                    )
                return soft_staircase(u, state["thresholds"], self.steps, temperature)

            def hard() -> tf.Tensor:  # the hard forward, the soft function's gradient
                count = soft()
                hard_count = self.hard_levels(u, state["thresholds"]) - low
                return count + tf.stop_gradient(hard_count - count)

            count = tf.cond(weights["hard"] > 0.5, hard, soft)
            out = alpha * (low + count)
            return tf.reshape(out, tf.shape(inputs)) if reshape else out
        levels = self.hard_levels(u, state["thresholds"])
        # Back in the kernel's own shape before the FakeQuant: a per-channel FakeQuant on
        # the [N, channels] view leaves the converter a RESHAPE whose quantized axis it
        # cannot move (depthwise kernels fail to convert).
        on_grid = alpha * levels
        on_grid = tf.reshape(on_grid, tf.shape(inputs)) if reshape else on_grid
        return grid.weight_fake_quant(
            on_grid, alpha, self.bits, self.per_axis, self.channel_dims
        )


@register
class QNActivationQuantizer(_QNQuantizer):
    """QN activation quantizer on the uniform set ``{-z .. 2**bits - 1 - z}``.

    Forward (training): ``y = alpha * (sum_i sigmoid(T (beta x - b_i)) - z)``, with the
    thresholds tied to the deployed grid, ``b_i = (i + 1/2 - z) * alpha * beta``: the
    midpoints of the output levels ``alpha * (i - z)``, mapped into beta-space. Then the
    hard form ``T -> inf`` is ``alpha * (clip(floor(x/alpha + z + 1/2), 0, 2**bits-1) - z)``,
    which is exactly TFLite's requantization onto an int8 tensor of scale ``alpha`` and
    zero point ``z - 128``, so training's hard quantizer is what the board computes.
    With ``alpha * beta = 1`` (the initialisation) these are the plain level midpoints;
    ``beta`` is learned and sets the sharpness ``T * alpha * beta`` of the soft steps.
    Gradients: autodiff of the formula w.r.t. ``x``, ``alpha``, ``beta``. In the final
    hard phase (flag ``hard`` = 1) training uses the inference FakeQuant and its
    straight-through gradients (``x`` inside the range; ``alpha`` through the range).

    With ``learn_thresholds`` the ``b_i`` are free variables (started at the midpoints;
    exact sum, n sigmoids per element). Inference and export then still round to the
    nearest level (a TFLite tensor cannot hold other thresholds) and a warning says
    the deployment is approximate.

    Initialisation on the first batch: ``lo = min(x, 0)``, ``hi = max(x, 0)``,
    ``alpha = 4 (hi - lo) / (5 (2**bits - 1))`` (the paper's ``beta = 5p/(4q)``,
    ``alpha = 1/beta``) below 8 bits; at 8 bits the full range ``(hi - lo) / 255``
    (clipping the top fifth of the logits would tie their argmax);
    ``beta = 1 / alpha``; ``z = round(-lo / alpha)`` (0 after ReLU).
    """

    temperature_name = "qn_activation_temperature"
    hard_name = "qn_activation_hard"

    def __init__(
        self,
        bits: int = 8,
        learn_thresholds: bool = False,
        temperature_step: float = 10.0,
        max_temperature: float = 2000.0,
        hard_fraction: float = HARD_FRACTION,
    ):
        super().__init__(temperature_step, max_temperature, hard_fraction)
        self.bits = grid.check_bits(bits, "activation bits", grid.ACTIVATION_BITS)
        self.learn_thresholds = bool(learn_thresholds)
        self.n = grid.activation_qmax(self.bits)
        self._warned = False

    def get_config(self) -> dict:
        return {
            "bits": self.bits,
            "learn_thresholds": self.learn_thresholds,
            "temperature_step": self.temperature_step,
            "max_temperature": self.max_temperature,
            "hard_fraction": self.hard_fraction,
        }

    def build(self, tensor_shape, name, layer):
        zeros = keras.initializers.Zeros()
        found = {
            "log_alpha": self.add_state(layer, name + "_qn_log_alpha", (), zeros, True),
            "log_beta": self.add_state(layer, name + "_qn_log_beta", (), zeros, True),
            "zero_point": self.add_state(layer, name + "_qn_zero_point", (), zeros),
            "temperature": self._temperature_weight(layer, name),
            "hard": self.add_state(layer, f"{name}_{self.hard_name}"),
            "initialized": self.add_initialized_flag(layer, name),
        }
        if self.learn_thresholds:
            found["thresholds"] = self.add_state(
                layer,
                name + "_qn_thresholds",
                shape=(self.n,),
                initializer=keras.initializers.Constant(np.arange(self.n) + 0.5),
                trainable=True,
            )
        return found

    def state_names(self) -> list[str]:
        names = ["log_alpha", "log_beta", "zero_point"]
        return names + ["thresholds"] if self.learn_thresholds else names

    def initial_state(self, data: tf.Tensor | BatchStatistics) -> dict[str, tf.Tensor]:
        """The class docstring's initialisation from a batch (or its global statistics)."""
        stats = data if isinstance(data, BatchStatistics) else BatchStatistics.of(data)
        lo = tf.minimum(stats.minimum, 0.0)
        hi = tf.maximum(stats.maximum, 0.0)
        shrink = 1.0 if self.bits == 8 else 0.8
        alpha = tf.maximum(shrink * (hi - lo) / self.n, _MIN)
        zero_point = tf.clip_by_value(tf.round(-lo / alpha), 0.0, float(self.n))
        log_alpha = tf.math.log(alpha)
        state = {"log_alpha": log_alpha, "log_beta": -log_alpha, "zero_point": zero_point}
        if self.learn_thresholds:
            state["thresholds"] = tf.range(self.n, dtype=zero_point.dtype) + 0.5 - zero_point
        return state

    def __call__(self, inputs, training, weights, **kwargs):
        state = self.initialize_from_batch(
            weights, self.state_names(), inputs, self.initial_state, training
        )
        alpha, beta = tf.exp(state["log_alpha"]), tf.exp(state["log_beta"])
        zero_point = tf.stop_gradient(state["zero_point"])
        if not training:
            if self.learn_thresholds and not self._warned:
                self._warned = True
                warnings.warn(
                    "QN activations with learned thresholds: inference and the TFLite "
                    "deployment round to the nearest level instead (approximate).",
                    stacklevel=2,
                )
            return grid.activation_fake_quant(inputs, alpha, zero_point, self.bits)
        temperature = tf.stop_gradient(weights["temperature"])

        def soft() -> tf.Tensor:
            if self.learn_thresholds:
                count = soft_staircase(
                    beta * inputs, state["thresholds"], np.ones(self.n), temperature
                )
            else:
                # beta x - (i + 1/2 - z) alpha beta = alpha beta (x/alpha + z - 1/2 - i)
                r = inputs / alpha + zero_point - 0.5
                count = soft_uniform_staircase(
                    r, self.n, temperature * alpha * beta, self.window
                )
            return alpha * (count - zero_point)

        def hard() -> tf.Tensor:
            return grid.activation_fake_quant(inputs, alpha, zero_point, self.bits)

        return tf.cond(weights["hard"] > 0.5, hard, soft)
