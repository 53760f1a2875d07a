"""``quantize_model``: a Keras model in, a TFMOT quantization-aware model out."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow_model_optimization as tfmot

from tfqnet import grid
from tfqnet._keras import keras
from tfqnet.core.config import quantizers_of
from tfqnet.core.layer_kinds import PASS_THROUGH_LAYERS, WEIGHTED_LAYERS
from tfqnet.core.method import get_method
from tfqnet.core.policy import check_policy, policy_layers
from tfqnet.errors import UnsupportedLayerError
from tfqnet.keras3 import as_tf_keras_model
from tfqnet.layers import PIXEL_EMBEDDING_OPTIONS, add_pixel_embedding
from tfqnet.quantize.registry import (
    QuantizeRegistry,
    check_overrides,
    skip_refused,
    unsupported_reason,
)
from tfqnet.quantize.scheme import QuantizeScheme
from tfqnet.quantize.transforms import InputQuantizeLayer

_tfmot_q = tfmot.quantization.keras
L = keras.layers


def _folded_batch_norms(model: keras.Model) -> set[str]:
    """Names of BatchNormalization layers the layout transform will fold."""
    folded = set()
    for layer in model.layers:
        if not isinstance(layer, L.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        producers = layer._inbound_nodes[0].inbound_layers
        producers = producers if isinstance(producers, list) else [producers]
        if len(producers) != 1:
            continue
        producer = producers[0]
        if (
            type(producer) in WEIGHTED_LAYERS
            and keras.activations.serialize(producer.activation) == "linear"
            and len(producer._outbound_nodes) == 1
        ):
            folded.add(layer.name)
    return folded


def _check_layers(model: keras.Model, skip: set[str]) -> None:
    folded = _folded_batch_norms(model)
    for layer in model.layers:
        refused = skip_refused(layer)
        if layer.name in skip and refused:  # it would fail later, or slowly
            raise UnsupportedLayerError(
                f"cannot skip layer {layer.name!r} ({type(layer).__name__}): {refused}.")
        if layer.name in skip or layer.name in folded:
            continue
        reason = unsupported_reason(layer)
        if reason is None:
            continue
        # the way forward offered is one that works for this kind of layer
        way = refused or (
            f"To leave it float during training, pass skip=[{layer.name!r}] to "
            "quantize_model (tfqnet.convert then quantizes it to int8 post-training), "
            "or replace it with a supported layer")
        raise UnsupportedLayerError(
            f"cannot quantize layer {layer.name!r} ({type(layer).__name__}): {reason}. "
            f"{way}.")


def _inbound_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    if len(layer._inbound_nodes) != 1:
        return []
    found = layer._inbound_nodes[0].inbound_layers
    return list(found) if isinstance(found, list | tuple) else [found]


def _concat_producers(model: keras.Model) -> frozenset[str]:
    """Layers whose output grid a Concatenate replaces.

    TFLite's CONCATENATION keeps one scale for all inputs and output: the converter
    gives the producing ops the concat's grid and ignores theirs. So in training the
    producers (found through pass-through layers such as Reshape) must not round to a
    grid of their own, or the QAT model would round twice where the board rounds once.
    """
    found = set()
    for layer in model.layers:
        if not isinstance(layer, L.Concatenate):
            continue
        stack = [(producer, layer) for producer in _inbound_layers(layer)]
        while stack:
            producer, consumer = stack.pop()
            # A shared layer called twice into the same concat has two outbound nodes
            # but one consumer: it, too, must leave the grid to the concat.
            if {id(node.outbound_layer) for node in producer._outbound_nodes} != {id(consumer)}:
                continue  # feeds other layers too: its grid is needed there
            if type(producer) in PASS_THROUGH_LAYERS and not isinstance(producer, L.InputLayer):
                stack.extend((p, producer) for p in _inbound_layers(producer))
            else:
                found.add(producer.name)
    return frozenset(found)


def _check_skip(skip: object) -> set[str]:
    """``skip`` as a set of layer names (None: none), or a one-line TypeError."""
    if skip is None:
        return set()
    if isinstance(skip, str | bytes) or not isinstance(skip, Iterable):
        raise TypeError(f"skip must be a list of layer names, like skip=[{skip!r:.60}]; got "
                        f"{type(skip).__name__} {skip!r:.60}")
    names = list(skip)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"skip must hold layer names (strings), like skip=['conv1']; "
                            f"got {name!r:.60}")
    return set(names)


def _output_layer_names(model: keras.Model) -> frozenset[str]:
    return frozenset(layer.name for layer in model._output_layers)


def quantize_model(
    model: keras.Model | str | os.PathLike,
    method: str = "uniform",
    weight_bits: int | None = None,
    activation_bits: int = 8,
    *,
    skip: Iterable[str] | None = (),
    overrides: Mapping[str, Mapping[str, int]] | None = None,
    policy: str | None = "auto",
    pixel_embedding: bool | Mapping[str, Any] = False,
    **options: Any,
) -> keras.Model:
    """Returns a quantization-aware copy of ``model`` (the original is not changed).

    Args:
      model: a built Sequential or Functional model (float, ideally trained): tf-keras,
        or Keras 3 (``import keras``/``tf.keras`` in TF >= 2.16), or the path of a
        ``.keras``/``.h5`` file of one. A Keras 3 model is first rebuilt as the same
        tf-keras model by :func:`tfqnet.to_tf_keras` (which names any layer it cannot
        translate and what to do).
      method: ``"uniform"`` (learned step size) or another registered method.
      weight_bits: kernel bits, 2..8; None: the method's (8, 2 for ``"crq"``, the
        fewest that hold a ``qn`` level set). 4 bits deploy as packed INT4; below 4 bits
        ``tfqnet.convert`` stores kernels as TFLM lookup-table indices where that is
        smaller (``compress="auto"``).
      activation_bits: activation bits, 2..8 (deployed in int8 tensors on the same grid).
      skip: names of layers to leave float during QAT (converted post-training to int8),
        e.g. ``["conv1"]``; None: no layers. A skipped layer's output gets a trained
        8-bit grid, the int8 tensor it becomes. A Lambda or recurrent layer cannot be
        skipped (UnsupportedLayerError says why and what works instead).
      overrides: per-layer bits, ``{layer name: {"weight_bits": b, "activation_bits":
        b}}`` (either key or both), e.g. ``{"conv2d": {"weight_bits": 8}}``; they win over
        the policy. None: no overrides.
      policy: which layers keep wider weights (:mod:`tfqnet.core.policy`): ``"auto"``
        (the first and the last weighted layer at 8 bits and depthwise kernels at 4 when
        ``weight_bits < 4``),
        ``"first_last"``, ``"first_last_depthwise"``, or ``"none"``/None.
        ``tfqnet.bit_width_report`` shows what set each layer's bits.
      pixel_embedding: True or a dict of ``dim``, ``bits``, ``input_dtype``,
        ``input_scale``, ``input_offset``: the QAT model takes raw pixels (uint8, or int8
        ``pixel - 128``) through a :class:`tfqnet.PixelEmbedding` that replaces the
        input normalisation and feeds the first Conv2D (see
        :func:`tfqnet.layers.add_pixel_embedding`; convert with ``tfqnet.convert``).
      **options: method options (see the method's quantizer module).

    Malformed arguments (a string for ``skip``, an unknown key in ``overrides``, an
    option the method does not take, bits out of range) raise a one-line ValueError or
    TypeError naming the argument, the value and the accepted form, before any work.

    The model input and the model outputs use 8-bit grids; BatchNormalization after a
    convolution/Dense is folded into it; a ReLU after one is fused into it. Fine-tune
    the result with ``fit`` and the callbacks from :func:`tfqnet.callbacks`, then
    :func:`tfqnet.convert` it.
    """
    model = as_tf_keras_model(model)
    check_policy(policy)
    skip = _check_skip(skip)
    overrides = check_overrides(overrides)
    quantization_method = get_method(method, **options)
    weight_bits = quantization_method.resolve_weight_bits(weight_bits)
    grid.check_bits(weight_bits, "weight_bits")
    grid.check_bits(activation_bits, "activation_bits", grid.ACTIVATION_BITS)
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise UnsupportedLayerError(
            f"model {model.name!r} is a subclassed model; quantize_model needs a Sequential "
            "or Functional model. Rebuild it with the functional API."
        )
    if not model.built:
        raise ValueError(
            f"model {model.name!r} is not built; call model.build(input_shape) or give its "
            "first layer an input shape."
        )
    unknown = skip.union(overrides) - {layer.name for layer in model.layers}
    if unknown:
        raise ValueError(f"skip/overrides name layers the model does not have: {sorted(unknown)}")
    if pixel_embedding is not False:
        model = _with_pixel_embedding(model, pixel_embedding)
    _check_layers(model, skip)

    registry = QuantizeRegistry(
        quantization_method,
        weight_bits,
        activation_bits,
        overrides=overrides,
        output_layers=_output_layer_names(model),
        no_output_grid=_concat_producers(model),
        policy=policy_layers(model, policy, weight_bits),
    )

    def annotate(layer):
        if layer.name in skip or isinstance(layer, L.InputLayer):
            return layer
        return _tfmot_q.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    # TFMOT rebuilds the model from its config: a skipped custom layer class that is
    # not registered Keras-serializable must be findable by its name there.
    # (Only those: built-in classes in the scope change how TFMOT rebuilds wrapped
    # layers, and their variables lose the layer's name scope.)
    own_classes = {type(layer).__name__: type(layer) for layer in model.layers
                   if not type(layer).__module__.startswith("tf_keras.")}
    with quantize_scope(), keras.utils.custom_object_scope(own_classes):
        qat = _tfmot_q.quantize_apply(annotated, QuantizeScheme(registry))
        return _rebuilt_from_config(qat)


def _with_pixel_embedding(model: keras.Model, spec: bool | Mapping[str, Any]) -> keras.Model:
    if spec is True:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"pixel_embedding must be True or a dict, got {spec!r}.")
    unknown = set(spec) - set(PIXEL_EMBEDDING_OPTIONS)
    if unknown:
        raise ValueError(
            f"pixel_embedding has unknown option(s) {sorted(unknown)}; "
            f"known: {list(PIXEL_EMBEDDING_OPTIONS)}."
        )
    return add_pixel_embedding(model, **spec)


def _short_name(variable) -> str:
    return variable.name.split("/")[-1]


def _rebuilt_from_config(qat: keras.Model) -> keras.Model:
    """The QAT model rebuilt from its config, with its weights copied by name.

    h5 files restore weights by position, and the wrapper lists a quantizer's
    trainable variables in a different position when it wraps an already built layer
    (quantize_apply) than when it builds it (load_model). TFMOT's own quantizers have
    no trainable variables so never hit this; tfqnet's step sizes do. Returning the
    rebuilt model gives every QAT model the order a loaded one will have.
    """
    config = qat.get_config()
    for layer in config["layers"]:
        # Built on first call, inside the layer's name scope: variables keep names like
        # "quant_conv1/kernel_log_scale:0", unique model-wide (optimizer slots in h5).
        layer.pop("build_config", None)
        if layer["class_name"] == "QuantizeLayer":
            layer["class_name"] = keras.saving.get_registered_name(InputQuantizeLayer)
            layer["registered_name"] = layer["class_name"]
            layer.pop("module", None)
    rebuilt = type(qat).from_config(config)
    for old, new in zip(qat.layers, rebuilt.layers, strict=True):
        values = {_short_name(v): v for v in old.weights}
        for variable in new.weights:
            variable.assign(values[_short_name(variable)])
    return rebuilt


def quantize_scope():
    """Context manager for loading tfqnet QAT models with tf-keras.

    tfqnet's quantizers and configs are registered Keras serializables, so
    ``tf_keras.models.load_model`` needs only TFMOT's own classes, which this scope
    provides (it is ``tfmot.quantization.keras.quantize_scope``).
    """
    return _tfmot_q.quantize_scope()


def load_model(filepath, compile: bool = True, **kwargs) -> keras.Model:
    """Loads a QAT model saved with ``model.save`` (h5 or SavedModel), no scope needed.

    ``import tfqnet`` is lazy, so a process that only loads a model has not yet
    registered tfqnet's classes (``tf_keras.models.load_model`` then fails with
    "Unknown layer: 'tfqnet>InputQuantizeLayer'"); calling this loads them, and loads
    inside :func:`quantize_scope` for TFMOT's wrappers. ``compile`` and ``kwargs`` go
    to ``tf_keras.models.load_model``.
    """
    with quantize_scope():
        return keras.models.load_model(filepath, compile=compile, **kwargs)


def callbacks(qat_model: keras.Model, epochs: int) -> list[keras.callbacks.Callback]:
    """Callbacks for ``qat_model.fit(..., epochs=epochs)``.

    Each quantizer type in the model contributes its schedules (temperature annealing,
    bit-width freezing, regularizer ramps, ...) once, through
    :meth:`tfqnet.core.Quantizer.callbacks`; the uniform method needs none.

    Under a ``tf.distribute`` strategy Keras runs callbacks once per epoch or batch in
    cross-replica context (on every worker with MultiWorkerMirroredStrategy, each
    computing the same value), so a schedule sets its state variables once on every
    replica. Schedules set absolute values from the epoch index (never ``assign_add``),
    so they cannot drift between replicas or workers.
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    found: list[keras.callbacks.Callback] = []
    for quantizer_type in dict.fromkeys(type(q) for q in quantizers_of(qat_model)):
        found.extend(quantizer_type.callbacks(qat_model, int(epochs)))
    return found
