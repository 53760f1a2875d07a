"""Cluster Regularized Quantization (CRQ, Hu et al., 2019): ternary weights by re-training.

``method="crq"`` re-trains a float model so that its weights gather around three
targets ``{-alpha, 0, alpha}`` (per layer, or per output channel for convolutions),
then ternarizes them. Only the paper's abstract was available; this module is our
reading of it (see ``shared/methods.md`` section 4):

* **Cluster regularizer** (:class:`ClusterRegularizer`, a serializable Keras
  regularizer) adds ``lambda * sum_w min_k (w - t_k)^2`` with ``t = {-a, 0, a}``.
  ``a`` and the zero threshold follow TWN (Li et al., 2016) and are recomputed from
  the current weights at every evaluation: ``delta = 0.7 * mean|w|`` and
  ``a = mean(|w| : |w| > delta)``. The targets are constants of each step (no
  gradient through ``a``, like the assignment step of k-means), so the gradient is
  ``2 * lambda * (w - t(w))`` with ``t(w)`` the nearest target.
* **Schedule** (:class:`CRQSchedule`, returned by ``tfqnet.callbacks``): the weight
  quantizer attaches the regularizer to its layer (``layer.add_loss`` in ``build``),
  multiplied by a non-trainable ``ramp`` variable that the callback raises linearly
  from 0 to 1 over the *soft* phase (the first ``epochs - hard_epochs`` epochs).
  For the final ``hard_epochs = max(1, round(hard_fraction * epochs))`` epochs the
  callback sets the non-trainable ``hard`` variable: the training forward pass then
  uses the ternary weights with a straight-through gradient, and the regularizer
  stays on at full strength.
* **Training forward pass**: ``w_train = w + hard * stop_gradient(T(w) - w)``, i.e.
  float weights in the soft phase (gradient 1), ternary weights ``T(w)`` in the hard
  phase (straight-through gradient 1). ``a`` is stored in a variable at every
  training step.
* **Inference mode (always hard)**: ``T(w) = a * c`` with codes
  ``c = sign(w) * [|w| >= a/2] in {-1, 0, 1}``, each weight mapped to its nearest
  target, i.e. the regularizer's own assignment, so a fully clustered layer is
  ternarized without loss. The values go through :func:`tfqnet.grid.weight_fake_quant`
  with ``bits=2``: stored as codes -7/0/7 at scale ``a / 7`` in a packed INT4 tensor
  (:func:`tfqnet.grid.code_spread`). The export is
  the hard ternary model even during the soft phase, so Keras-vs-TFLM agreement holds
  whenever it is measured; *accuracy* of the ternary model is only meaningful after
  the hard phase, which is where the tests and benchmarks measure it.

The threshold ``delta`` only serves to estimate ``a``; the ternarization threshold is
``a / 2`` (the midpoint between targets). Once the weights have clustered, both agree.

Activations use the uniform (LSQ) activation quantizer. Weights of layers given
more than 2 bits (the layer policy, ``overrides``) use the uniform weight quantizer.

Options of ``quantize_model(..., method="crq", ...)`` (``weight_bits`` is 2, the
default; any other raises):
``strength`` (lambda at the end of the ramp, default 1e-2; the loss is a *sum* over
the layer's weights) and ``hard_fraction`` (share of the epochs trained hard, 1.0:
ternary forward with the regularizer at full strength from the first step; below 1 the
ramp runs over the rest). Both defaults were chosen on validation splits
(``docs/defaults.md``).
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import quantizer_states, quantizers_of
from tfqnet.core.method import QuantizationMethod, register_method
from tfqnet.core.quantizer import Quantizer, register
from tfqnet.quantizers.kernel_views import as_channels, channel_view
from tfqnet.quantizers.uniform import UniformActivationQuantizer, UniformWeightQuantizer

TERNARY_BITS = 2
HARD_FRACTION = 1.0
STRENGTH = 1e-2
TWN_DELTA = 0.7
_MIN_ALPHA = 1e-8


def twn_alpha(w: tf.Tensor, per_axis: bool = False, channel_dims: int = 1) -> tf.Tensor:
    """TWN's ternary scale: ``mean(|w| : |w| > 0.7 mean|w|)`` per channel or tensor.

    Returns a vector of C channels when ``per_axis``, else a scalar (no gradient).
    """
    absw = tf.abs(tf.stop_gradient(as_channels(w, per_axis, channel_dims)))
    delta = TWN_DELTA * tf.reduce_mean(absw, axis=0)
    above = tf.cast(absw > delta, absw.dtype)
    alpha = tf.reduce_sum(absw * above, axis=0) / tf.maximum(tf.reduce_sum(above, axis=0), 1.0)
    alpha = tf.maximum(alpha, _MIN_ALPHA)
    return alpha if per_axis else tf.reshape(alpha, [])


def ternary_codes(w: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """Index of the nearest target: ``sign(w) * [|w| >= alpha / 2]`` in {-1, 0, 1}.

    ``w`` is [N, C] with ``alpha`` of C entries (or a scalar); no gradient.
    """
    w = tf.stop_gradient(w)
    return tf.sign(w) * tf.cast(tf.abs(w) >= 0.5 * alpha, w.dtype)


@register
class ClusterRegularizer(keras.regularizers.Regularizer):
    """``strength * sum_w min_k (w - t_k)^2`` with targets ``{-a, 0, a}``.

    ``a`` is TWN's scale of the current weights (:func:`twn_alpha`), per output
    channel when ``per_axis`` (the last ``channel_dims`` axes form a channel), else
    per tensor. The targets get no gradient, so
    ``d/dw = 2 * strength * (w - t(w))`` with ``t(w)`` the nearest target; the value
    and gradient are zero when every weight sits on a target.
    """

    def __init__(self, strength: float = STRENGTH, per_axis: bool = False, channel_dims: int = 1):
        if not strength >= 0.0:
            raise ValueError(f"strength must be >= 0, got {strength!r}")
        self.strength = float(strength)
        self.per_axis = bool(per_axis)
        self.channel_dims = int(channel_dims)

    def distance(self, w: tf.Tensor) -> tf.Tensor:
        """``w - t(w)``: each weight's offset from its nearest target, shaped [N, C]."""
        flat = as_channels(w, self.per_axis, self.channel_dims)
        alpha = twn_alpha(w, self.per_axis, self.channel_dims)
        return flat - ternary_codes(flat, alpha) * alpha

    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        return self.strength * tf.reduce_sum(tf.square(self.distance(w)))

    def get_config(self) -> dict:
        return {
            "strength": self.strength,
            "per_axis": self.per_axis,
            "channel_dims": self.channel_dims,
        }


@register
class CRQWeightQuantizer(Quantizer):
    """Ternary weight quantizer of CRQ (see the module docstring for the schedule).

    Training: ``w + hard * stop_gradient(a * c - w)`` (float weights in the soft phase,
    ternary with a straight-through gradient in the hard phase) and the cluster loss
    ``ramp * strength * sum min_k (w - t_k)^2`` added to the layer's losses.
    Inference: ``a * c`` with ``c in {-1, 0, 1}``, exported via
    :func:`tfqnet.grid.weight_fake_quant` with ``bits=2`` (packed INT4, scale ``a``).
    ``a`` (per output channel when ``per_axis``) is TWN's scale of the latest training
    weights, kept in a variable.
    """

    bits = TERNARY_BITS

    def __init__(
        self,
        per_axis: bool = True,
        channel_dims: int = 1,
        strength: float = STRENGTH,
        hard_fraction: float = HARD_FRACTION,
    ):
        if not 0.0 < hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction!r}")
        self.per_axis = bool(per_axis)
        self.channel_dims = int(channel_dims)
        self.strength = float(strength)
        self.hard_fraction = float(hard_fraction)
        self.regularizer = ClusterRegularizer(strength, self.per_axis, self.channel_dims)

    def get_config(self) -> dict:
        return {
            "per_axis": self.per_axis,
            "channel_dims": self.channel_dims,
            "strength": self.strength,
            "hard_fraction": self.hard_fraction,
        }

    def build(self, tensor_shape, name, layer):
        shape = (math.prod(tensor_shape[-self.channel_dims :]),) if self.per_axis else ()
        state = {
            "alpha": self.add_state(layer, name + "_crq_alpha", shape, "ones"),
            "ramp": self.add_state(layer, name + "_crq_ramp"),
            "hard": self.add_state(layer, name + "_crq_hard"),
            "initialized": self.add_initialized_flag(layer, name),
        }
        kernel = getattr(getattr(layer, "layer", None), name, None)
        if not isinstance(kernel, tf.Variable):
            raise ValueError(
                f"CRQ cannot find the weight {name!r} of layer {layer.name!r} to regularize."
            )
        ramp = state["ramp"]
        layer.add_loss(lambda: ramp * self.regularizer(kernel))
        return state

    def __call__(self, inputs, training, weights, **kwargs):
        # The channel sits on the last axis, where it broadcasts with ``alpha``. A
        # depthwise kernel [H, W, C_in, M] is viewed as [H, W, 1, C_in * M]: with the
        # FakeQuant on a 2-D [N, C] view the converter keeps a RESHAPE of a per-channel
        # tensor whose quantized axis it cannot move (a conversion error).
        per_channel = self.per_axis and self.channel_dims > 1
        flat = channel_view(inputs, self.channel_dims) if per_channel else inputs
        if training:
            alpha = twn_alpha(inputs, self.per_axis, self.channel_dims)
            update = [weights["alpha"].assign(alpha), weights["initialized"].assign(1.0)]
            with tf.control_dependencies(update):
                ternary = ternary_codes(flat, alpha) * alpha
                out = flat + weights["hard"] * tf.stop_gradient(ternary - flat)
        else:
            alpha = tf.maximum(tf.identity(weights["alpha"]), _MIN_ALPHA)
            ternary = ternary_codes(flat, alpha) * alpha
            out = grid.weight_fake_quant(ternary, alpha, TERNARY_BITS, self.per_axis)
        return tf.reshape(out, tf.shape(inputs)) if per_channel else out

    @classmethod
    def callbacks(cls, model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
        fractions = {q.hard_fraction for q in quantizers_of(model) if isinstance(q, cls)}
        return [CRQSchedule(epochs, hard_fraction=max(fractions, default=HARD_FRACTION))]


def crq_kernels(model: keras.Model) -> list[tuple[tf.Variable, CRQWeightQuantizer]]:
    """The (float kernel variable, CRQ quantizer) pairs of a QAT model."""
    found = []
    for layer in model.layers:
        for weight, quantizer, _ in getattr(layer, "_weight_vars", []):
            if isinstance(quantizer, CRQWeightQuantizer):
                found.append((weight, quantizer))
    return found


def clustered_share(model: keras.Model, epsilon: float = 0.1) -> float:
    """Share of CRQ-quantized weights within ``epsilon * alpha`` of their nearest target.

    ``alpha`` is TWN's scale of the current weights (per channel or per tensor, as the
    layer's quantizer uses it); every weight of every CRQ layer counts once.
    """
    close = total = 0
    for kernel, quantizer in crq_kernels(model):
        regularizer = quantizer.regularizer
        distance = tf.abs(regularizer.distance(kernel))
        alpha = twn_alpha(kernel, regularizer.per_axis, regularizer.channel_dims)
        close += int(tf.reduce_sum(tf.cast(distance <= epsilon * alpha, tf.int32)))
        total += int(tf.size(distance))
    if total == 0:
        raise ValueError("the model has no CRQ-quantized weights")
    return close / total


def soft_span(epochs: int, hard_fraction: float) -> float:
    """Epochs of the soft phase: ``epochs - max(1, round(hard_fraction * epochs))``.

    With a single epoch the switch happens inside it, after ``1 - hard_fraction``.
    """
    if epochs == 1:
        return 1.0 - hard_fraction
    return float(epochs - min(epochs, max(1, round(hard_fraction * epochs))))


class CRQSchedule(keras.callbacks.Callback):
    """Sets every CRQ layer's ``ramp`` and ``hard`` variables before each batch.

    At training time ``t`` (in epochs, ``epoch + batch / steps``) and soft span ``S``
    (:func:`soft_span`): ``ramp = min(1, t / S)`` and ``hard = [t >= S]``.
    """

    def __init__(self, epochs: int, hard_fraction: float = HARD_FRACTION):
        super().__init__()
        self.epochs = int(epochs)
        self.span = soft_span(self.epochs, hard_fraction)
        self._epoch = 0

    def _variables(self, key: str) -> list[tf.Variable]:
        return [state[key] for quantizer, state in quantizer_states(self.model)
                if isinstance(quantizer, CRQWeightQuantizer)]

    def values_at(self, t: float) -> tuple[float, float]:
        """``(ramp, hard)`` at training time ``t`` epochs."""
        if self.span <= 0.0:
            return 1.0, 1.0
        return min(1.0, t / self.span), float(t >= self.span)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 0
        t = self._epoch + (batch / steps if steps else 0.0)
        ramp, hard = self.values_at(t)
        for v in self._variables("ramp"):
            v.assign(ramp)
        for v in self._variables("hard"):
            v.assign(hard)


@register_method
class CRQMethod(QuantizationMethod):
    """``method="crq"``: ternary weights by cluster-regularized re-training.

    Options: ``strength`` (lambda, default 1e-2) and ``hard_fraction`` (1.0). The
    model's weights are ternary (``weight_bits`` 2, the default; other values raise);
    layers given more bits by the layer policy or ``overrides`` get the uniform
    quantizer.
    """

    name = "crq"
    default_weight_bits = TERNARY_BITS

    def resolve_weight_bits(self, requested: int | None) -> int:
        if requested not in (None, TERNARY_BITS):
            raise ValueError(
                f"method 'crq' is ternary: its weight_bits is 2 (the default), got "
                f"{requested!r}. Keep single layers wider with overrides="
                "{name: {'weight_bits': 8}}, or use method='uniform' or 'qn' for "
                f"{requested}-bit weights."
            )
        return TERNARY_BITS

    def __init__(self, strength: float = STRENGTH, hard_fraction: float = HARD_FRACTION):
        if not strength >= 0.0:
            raise ValueError(f"strength must be >= 0, got {strength!r}")
        if not 0.0 < hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction!r}")
        self.strength = float(strength)
        self.hard_fraction = float(hard_fraction)

    def weight_quantizer(self, bits, per_axis, channel_dims):
        if bits == TERNARY_BITS:
            return CRQWeightQuantizer(
                per_axis, channel_dims, strength=self.strength, hard_fraction=self.hard_fraction
            )
        return UniformWeightQuantizer(bits, per_axis=per_axis, channel_dims=channel_dims)

    def activation_quantizer(self, bits):
        return UniformActivationQuantizer(bits)
