"""Layer policies: which weighted layers keep wider weights than the model's.

At 2-3 bits a few layers carry most of the accuracy loss: the first weighted layer
(few input channels, the raw signal), the last (the logits) and, on MobileNet-style
models, depthwise kernels (9 weights per output channel). A policy names them, and
:func:`tfqnet.quantize_model` gives the first and the last ``POLICY_WEIGHT_BITS``-bit
weights (a microcontroller has no float, so the papers' float first and last layers
become 8-bit ones) and depthwise kernels ``DEPTHWISE_POLICY_BITS``-bit weights (as
accurate as 8 bits on the validation split, at half the bytes, ``docs/defaults.md``),
unless ``overrides`` says otherwise. A policy never narrows a layer below the model's
weight bits. Activations keep the model's bits.

Policies (``quantize_model(..., policy=...)``):

* ``"auto"`` (default): ``"first_last_depthwise"`` when the model's weight bits are
  below ``LOW_BITS``, else ``"none"`` (depthwise kernels: chosen on a validation split,
  ``docs/defaults.md``);
* ``"first_last"``: the first and the last weighted layer, in ``model.layers`` order;
* ``"first_last_depthwise"``: those and every DepthwiseConv2D;
* ``"none"`` (or None): every layer at the model's bits.
"""

from __future__ import annotations

from typing import NamedTuple

from tfqnet._keras import keras
from tfqnet.core.layer_kinds import WEIGHTED_LAYERS

L = keras.layers

#: weight bits of the first and the last weighted layer a policy keeps wider
POLICY_WEIGHT_BITS = 8
#: weight bits of the DepthwiseConv2D kernels "first_last_depthwise" keeps wider
DEPTHWISE_POLICY_BITS = 4
#: "auto" applies "first_last_depthwise" to models with fewer weight bits than this
LOW_BITS = 4
POLICIES = ("auto", "first_last", "first_last_depthwise", "none")


def check_policy(policy: str | None) -> str:
    """The policy's name ("none" for None); ValueError naming the choices otherwise."""
    if policy is None:
        return "none"
    if policy not in POLICIES:
        raise ValueError(f"unknown layer policy {policy!r}; choose one of {list(POLICIES)}.")
    return policy


def resolved_policy(policy: str | None, weight_bits: int) -> str:
    """The concrete policy ``policy`` means for a model of ``weight_bits`` weights."""
    policy = check_policy(policy)
    if policy == "auto":
        return "first_last_depthwise" if weight_bits < LOW_BITS else "none"
    return policy


class PolicyLayer(NamedTuple):
    """A layer a policy widens: its weight bits, and why (shown by bit_width_report)."""

    weight_bits: int
    why: str


def policy_layers(
    model: keras.Model, policy: str | None, weight_bits: int
) -> dict[str, PolicyLayer]:
    """``{layer name: PolicyLayer}`` of the weighted layers ``policy`` keeps wider, for
    a model whose weights get ``weight_bits`` (never fewer than those)."""
    policy = resolved_policy(policy, weight_bits)
    weighted = [layer for layer in model.layers if type(layer) in WEIGHTED_LAYERS]
    if policy == "none" or not weighted:
        return {}
    found: dict[str, PolicyLayer] = {}
    if policy == "first_last_depthwise":
        for layer in weighted:
            if isinstance(layer, L.DepthwiseConv2D):
                found[layer.name] = PolicyLayer(
                    max(DEPTHWISE_POLICY_BITS, weight_bits), "policy: depthwise"
                )
    ends = max(POLICY_WEIGHT_BITS, weight_bits)
    found[weighted[-1].name] = PolicyLayer(ends, "policy: last weighted layer")
    found[weighted[0].name] = PolicyLayer(ends, "policy: first weighted layer")
    return found
