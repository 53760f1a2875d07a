"""Quantization Networks (QN; Yang et al., CVPR 2019): a sigmoid-sum quantizer
trained by temperature annealing.

Forward (training), with the ordered integer level set ``Y``, ``n = |Y| - 1`` steps
``s_i = Y[i+1] - Y[i]``, thresholds ``b_i`` and temperature ``T``::

    y = alpha * (Y[0] + sum_i s_i * sigmoid(T * (beta * x - b_i)))

which is the paper's ``alpha * (sum_i s_i sigmoid(...) - o)`` with ``o = -Y[0]``
(``o = sum_i s_i / 2`` for a symmetric weight set, ``o = 0`` for ReLU activations).
Inference (``T -> inf``): the sigmoid becomes the unit step ``A(z) = [z >= 0]``, so
``y = alpha * level`` with an integer ``level`` from ``Y``; that is emitted through
:mod:`tfqnet.grid` with scale ``alpha``, so the converted weights are exactly
``alpha * level`` (packed INT4 when ``max|Y| <= 7``).

Gradients: ``dy/dx = T * beta * alpha * sum_i s_i * sig_i * (1 - sig_i)``; ``alpha``
and ``beta`` get theirs by autodiff of the formula; ``Y``, ``s_i`` and ``o`` none;
the thresholds only when learnable. ``alpha`` and ``beta`` are stored as logarithms
(``alpha = exp(log_alpha)``): they stay positive, and Adam's fixed-size steps change
them by a relative amount (a plain ``alpha`` diverged: ``docs/defaults.md``). The
paper's reference code clips the weight gradient (global norm 5): pass ``clipnorm=5``
to the Keras optimizer for the same.

Final hard phase (option ``hard_fraction``, default 1.0: every epoch): the last
``floor(hard_fraction * E)`` of the ``E`` epochs given to :func:`tfqnet.callbacks` train
the inference forward (the ``T -> inf`` step function: weights ``alpha * level``,
activations TFLite's rounding), so training ends on the function that is deployed.
Weights keep the soft function's gradient at the scheduled ``T`` (a straight-through
estimator: ``y = soft + stop_gradient(hard - soft)``); activations get FakeQuant's
straight-through gradient (8-bit steps are already nearly hard at ``T >= 30``). A 0/1
flag per quantizer (model state, set by the callback from the epoch index like ``T``)
selects the phase, so resumed training and reloaded models keep it.

Usage::

    q = tfqnet.quantize_model(model, method="qn", weight_bits=2, activation_bits=8)
    q.fit(x, y, epochs=E, callbacks=tfqnet.callbacks(q, E))   # T = (epoch + 1) * k

Method options (``quantize_model(..., **options)``):

* ``levels``: the weight level set: ``"binary"`` {-1, 1}, ``"ternary"`` {-1, 0, 1},
  ``"3bit"`` {-2..2}, ``"3bit_pow2"`` {-4, -2, -1, 0, 1, 2, 4}, ``"<k>bit_uniform"``
  {-(2**(k-1)-1) .. 2**(k-1)-1}, or an explicit list of integers. Default ``None``:
  the ``weight_bits``-bit uniform set (so ``weight_bits=2`` means ternary).
  How it meets ``weight_bits``: a level set decides the model's bits when
  ``weight_bits`` is left out (the fewest that hold it: ternary 2, ``3bit`` 3,
  ``3bit_pow2`` 4, as ``max|Y| <= 2**(bits-1) - 1``); an explicit ``weight_bits`` must
  hold the set and be below 8, else ``quantize_model`` raises. The set replaces the
  uniform set in every layer whose weight bits are below 8; layers at 8 bits (the
  layer policy's first and last layer, ``overrides``, :func:`first_last_overrides`)
  get the 8-bit uniform set.
* ``learn_thresholds`` (False): learn the weight thresholds (the paper froze them,
  learning them did not help): no consistent gain on digits either. The deployment is
  exact either way (weights are ``alpha * level``).
* ``learn_activation_thresholds`` (False): learn activation thresholds. TFLite
  requantizes by rounding to the nearest level, so learned thresholds cannot be
  deployed exactly: inference mode (and the converted model) then use the midpoints,
  and a warning says the deployment is approximate.
* ``ternary_threshold`` (None): ternary thresholds by k-means like every other set
  (the paper's reference code); a number ``t`` gives the paper's text rule, thresholds
  at ``+-t * max|beta w|`` (``t = 0.05`` in the paper).
* ``alpha_init`` (``"fit"``): ``alpha`` starts at the least-squares scale of the
  initial levels; ``"paper"``: ``alpha = 1 / beta``. Why these two defaults differ
  from the paper: :class:`QNWeightQuantizer` (measured on digits).
* ``temperature_step`` k (10.0): ``T = (epoch + 1) * k``; the paper used 5 (ResNet)
  and 10 (AlexNet); 10 scored best or within noise on digits.
* ``max_temperature`` (2000.0): the cap on ``T`` (the reference code's; short
  re-trainings never reach it).
* ``hard_fraction`` (1.0): the share of the epochs trained in the final hard phase
  (0: the paper's soft forward throughout; 0.5: the first half keeps the paper's
  annealed soft forward). 1.0: every step trains the deployed function, with the
  soft function's gradient at the scheduled T; best on both validation splits
  (``docs/defaults.md``).

Activations use the ``activation_bits``-bit uniform set ``{-z .. 2**bits - 1 - z}``
with an integer zero point ``z`` fixed on the first batch (``z = 0`` after ReLU, the
paper's ``o = 0``; a zero point lets linear outputs such as logits be negative).
"""

from tfqnet.quantizers.qn.levels import (
    LEVEL_SETS,
    parse_levels,
    required_bits,
    uniform_levels,
)
from tfqnet.quantizers.qn.method import QNMethod, first_last_overrides
from tfqnet.quantizers.qn.quantizers import (
    HARD_FRACTION,
    TERNARY_THRESHOLD,
    QNActivationQuantizer,
    QNWeightQuantizer,
    TemperatureSchedule,
)

__all__ = [
    "HARD_FRACTION",
    "LEVEL_SETS",
    "TERNARY_THRESHOLD",
    "QNActivationQuantizer",
    "QNMethod",
    "QNWeightQuantizer",
    "TemperatureSchedule",
    "first_last_overrides",
    "parse_levels",
    "required_bits",
    "uniform_levels",
]
