"""Keras 3 models in: the equivalent tf-keras model, for TFMOT and the rest of tfqnet.

Since TensorFlow 2.16 ``import keras`` and ``tf.keras`` are Keras 3, while TFMOT (and so
``quantize_model``) works on tf-keras (Keras 2) models. :func:`to_tf_keras` rebuilds a
Keras 3 ``Sequential`` or Functional model as the same tf-keras model: each layer from
its Keras 3 config (same class, name and options), the graph from the Keras 3 nodes
(shared layers, several inputs and outputs, nested models), the weights copied exactly.
It reads only configs and weight values, so it does not depend on the Keras 3 backend.

What it refuses, with one line naming the layer and what to do
(:class:`~tfqnet.errors.Keras3ModelError`): a subclassed model, a custom layer (not a
built-in ``keras.layers`` class), a ``Lambda`` layer or a ``keras.ops`` call in the graph
(Python code for Keras 3), a built-in layer tf-keras does not have, a layer option or
activation tf-keras does not have (set to other than its off value), custom
initializers/regularizers/constraints, and layers quantized by Keras 3 itself.
"""

from __future__ import annotations

import inspect
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tfqnet._keras import is_keras3_model, keras, tf
from tfqnet.errors import Keras3ModelError, TfqnetError

#: what to do with a model this module cannot translate
_REBUILD = "rebuild that part of the model with tf_keras (`import tf_keras as keras`)"
#: kwargs every tf-keras layer takes through ``Layer.__init__``
_BASE_LAYER_KWARGS = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape",
                      "batch_input_shape", "batch_size", "weights", "activity_regularizer",
                      "autocast", "implementation"}
#: Keras 3 options some tf-keras layers lack, and the value those layers imply
#: (e.g. tf-keras's ZeroPadding1D is channels_last only)
_IMPLIED = {"data_format": "channels_last"}
_UNSET = object()
#: activations that compute the same in Keras 3 and tf-keras (by the name in the config)
_SAME_ACTIVATIONS = ("linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "softplus",
                     "softsign", "elu", "selu", "exponential", "swish", "silu", "mish",
                     "leaky_relu")
#: Keras 3 weight name -> the tf-keras name of the same weight, where they differ
_WEIGHT_ALIASES = {("DepthwiseConv2D", "kernel"): "depthwise_kernel"}
#: Keras 3 object packages and the tf-keras modules with the same classes
_OBJECT_MODULES = {"keras.initializers": "initializers", "keras.regularizers": "regularizers",
                   "keras.constraints": "constraints"}
#: Keras 3 layers that wrap code, each with the way forward
_CODE_LAYERS = {
    "Lambda": "it wraps Python code written for Keras 3; replace it with built-in layers",
    "TFSMLayer": "it wraps a SavedModel; load that with tf_keras instead",
    "JaxLayer": "it wraps JAX code; replace it with built-in layers",
    "FlaxLayer": "it wraps Flax code; replace it with built-in layers",
    "TorchModuleWrapper": "it wraps a PyTorch module; replace it with built-in layers",
}


def _keras3():
    import keras as keras3  # the Keras 3 package (not tfqnet); only when translating

    return keras3


def _error(where: str, reason: str, todo: str = _REBUILD) -> Keras3ModelError:
    return Keras3ModelError(f"cannot translate the Keras 3 {where} to tf-keras: {reason}; "
                            f"{todo}.")


def _accepted_kwargs(cls: type) -> set[str]:
    names = set(_BASE_LAYER_KWARGS) if issubclass(cls, keras.layers.Layer) else set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
    names.discard("self")
    return names


def _filtered(config: dict, cls: type, where: str) -> dict:
    """``config`` without the keys ``cls`` has no option for, if those are off
    (None/False) or what ``cls`` does anyway (``_IMPLIED``); one that is set is
    refused."""
    accepted = _accepted_kwargs(cls)
    kept = {}
    for key, value in config.items():
        if key in accepted:
            kept[key] = value
        elif value is not None and value is not False and _IMPLIED.get(key, _UNSET) != value:
            raise _error(where, f"it sets {key}={value!r:.60}, an option tf-keras's "
                         f"{cls.__name__} does not have",
                         f"build it without {key!r}, or {_REBUILD}")
    return kept


def _object(value: dict, where: str) -> Any:
    """A serialized Keras 3 object (dtype policy, initializer, ...) as tf-keras takes it."""
    class_name, module = value["class_name"], value.get("module")
    if class_name == "__tuple__":
        return tuple(_value(v, where) for v in value["config"]["value"])
    if class_name in ("DTypePolicy", "FloatDTypePolicy"):  # the latter: Keras < 3.5
        return value["config"]["name"]
    if class_name.endswith("DTypePolicy"):
        raise _error(where, f"it is quantized by Keras 3 ({class_name})",
                     "translate the float model before Keras 3 quantizes it, and quantize "
                     "that with tfqnet")
    kind = _OBJECT_MODULES.get(module or "")
    cls = getattr(getattr(keras, kind), class_name, None) if kind else None
    if value.get("registered_name") or cls is None:
        raise _error(where, f"it uses {class_name} ({module}), a custom or Keras 3-only object",
                     f"use a built-in one tf-keras also has, or {_REBUILD}")
    config = {k: _value(v, where) for k, v in (value.get("config") or {}).items()}
    return {"class_name": class_name, "config": _filtered(config, cls, where)}


def _value(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            return _object(value, where)
        return {k: _value(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_value(v, where) for v in value)
    return value


def _check_activation(config: dict, where: str) -> None:
    name = config.get("activation")
    if name is None or name in _SAME_ACTIVATIONS:
        return
    if not isinstance(name, str):
        raise _error(where, f"its activation {name!r:.80} is a custom function",
                     f"use a built-in activation, or {_REBUILD}")
    raise _error(where, f"Keras 3's activation {name!r} has no identical tf-keras one (some, "
                 "like gelu and hard_sigmoid, are defined differently there)",
                 f"use one of {', '.join(_SAME_ACTIVATIONS)}, or {_REBUILD}")


def _layer_class(operation: Any, where: str) -> type:
    """The tf-keras class of a built-in Keras 3 layer, or a Keras3ModelError."""
    keras3 = _keras3()
    name = type(operation).__name__
    if not isinstance(operation, keras3.layers.Layer):
        raise _error(where, f"it is the Keras 3 op {type(operation).__module__}.{name} used "
                     "directly on tensors (keras.ops / an operator)",
                     "use the layer instead (e.g. keras.layers.Add()([a, b]) for a + b)")
    if name in _CODE_LAYERS:
        raise _error(where, _CODE_LAYERS[name], f"or {_REBUILD}")
    if getattr(keras3.layers, name, None) is not type(operation):
        raise _error(where, f"{name} is a custom layer, and tfqnet cannot translate its code",
                     f"write it as a tf_keras layer and {_REBUILD}")
    cls = getattr(keras.layers, name, None)
    if cls is None:
        raise _error(where, f"tf-keras has no {name} layer",
                     "replace it with layers tf-keras has, or remove it")
    return cls


def _tf_keras_layer(operation: Any, config: dict) -> keras.layers.Layer:
    where = f"layer {operation.name!r} ({type(operation).__name__})"
    cls = _layer_class(operation, where)
    layer_config = _filtered({k: _value(v, where) for k, v in config.items()}, cls, where)
    _check_activation(layer_config, where)
    try:
        return cls.from_config(layer_config)
    except (TypeError, ValueError) as error:
        raise _error(where, f"tf-keras's {cls.__name__} refuses its config "
                     f"({str(error).splitlines()[0]:.120})") from None


def _input(config: dict, where: str) -> Any:
    config = dict(config)
    if config.pop("optional", False):
        raise _error(where, "it is an optional input, which tf-keras does not have",
                     "make the input required")
    if config.pop("ragged", False):
        raise _error(where, "it is a ragged input", "use a dense input")
    return keras.Input(batch_shape=tuple(config.pop("batch_shape")), dtype=config.pop("dtype"),
                       sparse=config.pop("sparse", False) or None, name=config.pop("name"))


def _is_history(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and all(isinstance(v, int) for v in value[1:]))


def _map_tensors(value: Any, lookup: Callable[[list], Any], histories: bool = False) -> Any:
    """``value`` (node args; with ``histories``, the model's ``[layer, node, tensor]``
    inputs/outputs) with every tensor reference replaced by ``lookup``'s tensor."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return lookup(value["config"]["keras_history"])
        if value.get("class_name") == "__tuple__":
            return tuple(_map_tensors(v, lookup, histories) for v in value["config"]["value"])
        return {k: _map_tensors(v, lookup, histories) for k, v in value.items()}
    if histories and _is_history(value):
        return lookup(value)
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(v, lookup, histories) for v in value)
    return value


class _Missing(TfqnetError):
    """A node's input is not computed yet (caught inside :func:`_functional`)."""


def _functional(model: Any) -> keras.Model:
    config = model.get_config()
    operations = {op.name: op for op in getattr(model, "operations", model.layers)}
    layers: dict[str, Any] = {}  # name -> tf-keras layer (or Input tensor for inputs)
    outputs: dict[tuple[str, int], list] = {}  # (layer, node index) -> flat outputs

    def lookup(history: list) -> Any:
        name, node_index, tensor_index = history
        if (name, node_index) not in outputs:
            raise _Missing
        return outputs[name, node_index][tensor_index]

    pending = []
    for entry in config["layers"]:
        name = entry["name"]
        where = f"layer {name!r} ({entry['class_name']})"
        if entry["class_name"] == "InputLayer":
            outputs[name, 0] = [_input(entry["config"], where)]
            continue
        layers[name] = _translated(operations[name], entry["config"])
        pending.extend((name, index, node) for index, node in enumerate(entry["inbound_nodes"]))
    while pending:
        waiting = []
        for name, index, node in pending:
            try:
                args = _map_tensors(node["args"], lookup)
                kwargs = {k: _map_tensors(v, lookup) for k, v in node["kwargs"].items()
                          if v is not None}
            except _Missing:
                waiting.append((name, index, node))
                continue
            try:
                result = layers[name](*args, **kwargs)
            except (TypeError, ValueError) as error:
                raise _error(f"layer {name!r} ({type(layers[name]).__name__})",
                             f"the tf-keras layer fails on its inputs "
                             f"({str(error).strip().splitlines()[0]:.120})") from None
            outputs[name, index] = tf.nest.flatten(result)
        if len(waiting) == len(pending):
            raise _error(f"model {model.name!r}", "its graph has a node whose inputs are "
                         "never computed", "report this model to tfqnet")
        pending = waiting
    rebuilt = keras.Model(_map_tensors(config["input_layers"], lookup, histories=True),
                          _map_tensors(config["output_layers"], lookup, histories=True),
                          name=model.name)
    _copy_weights(model, rebuilt)
    return rebuilt


def _sequential(model: Any) -> keras.Model:
    config = model.get_config()
    operations = {layer.name: layer for layer in model.layers}
    layers: list[Any] = []
    for entry in config["layers"]:
        where = f"layer {entry['config'].get('name')!r} ({entry['class_name']})"
        if entry["class_name"] == "InputLayer":
            layers.append(_input(entry["config"], where))
        else:
            layers.append(_translated(operations[entry["config"]["name"]], entry["config"]))
    rebuilt = keras.Sequential(layers, name=model.name)
    if not rebuilt.built and config.get("build_input_shape"):
        rebuilt.build(tuple(config["build_input_shape"]))
    _copy_weights(model, rebuilt)
    return rebuilt


def _translated(operation: Any, config: dict) -> Any:
    """The tf-keras layer for one Keras 3 layer (a nested model: translated whole)."""
    keras3 = _keras3()
    if isinstance(operation, keras3.Model):
        return _model(operation)
    return _tf_keras_layer(operation, config)


def _short_name(variable: Any) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def _copy_weights(source: Any, target: keras.Model) -> None:
    """Copies each Keras 3 layer's weights into the tf-keras layer of the same name."""
    keras3 = _keras3()
    for layer in source.layers:
        if isinstance(layer, keras3.Model):
            continue  # translated with its weights
        new = target.get_layer(layer.name)
        where = f"layer {layer.name!r} ({type(layer).__name__})"
        if len(layer.weights) != len(new.weights):
            raise _error(where, f"it has {len(layer.weights)} weights and the tf-keras layer "
                         f"{len(new.weights)}", f"{_REBUILD}, and report it to tfqnet")
        for old, variable in zip(layer.weights, new.weights, strict=True):
            name = _short_name(old)
            name = _WEIGHT_ALIASES.get((type(layer).__name__, name), name)
            value = np.asarray(keras3.ops.convert_to_numpy(old))
            if name != _short_name(variable) or tuple(value.shape) != tuple(variable.shape):
                raise _error(where, f"its weight {name} {value.shape} does not match the "
                             f"tf-keras weight {_short_name(variable)} {tuple(variable.shape)}",
                             f"{_REBUILD}, and report it to tfqnet")
            variable.assign(value)
        if layer.weights and hasattr(new, "finalize_state"):
            new.finalize_state()  # e.g. Normalization derives its mean from the weights


def _model(model: Any) -> keras.Model:
    keras3 = _keras3()
    sequential = type(model) is keras3.Sequential
    if not sequential and not (type(model).__name__ == "Functional"
                               and isinstance(model, keras3.Model)):
        raise _error(f"model {model.name!r}", f"it is a subclassed model "
                     f"({type(model).__name__}), whose call() is Python code",
                     "build it as a Sequential or Functional model (keras.Model(inputs, "
                     "outputs)), or rebuild it with tf_keras")
    # checked before get_config(), which fails on some custom layers
    for operation in getattr(model, "operations", model.layers):
        if not isinstance(operation, keras3.layers.InputLayer | keras3.Model):
            _layer_class(operation, f"layer {operation.name!r} ({type(operation).__name__})")
    rebuilt = _sequential(model) if sequential else _functional(model)
    if not model.trainable:  # (setting True would also unfreeze every layer)
        rebuilt.trainable = False
    return rebuilt


def _file_keras_version(path: Path) -> str:
    """The Keras version that wrote a .keras or .h5 file ('' if it does not say)."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("metadata.json")).get("keras_version", "")
    import h5py  # a tf-keras dependency

    with h5py.File(path, "r") as h5:
        version = h5.attrs.get("keras_version", "")
    return version.decode() if isinstance(version, bytes) else str(version)


def _file_config(path: Path) -> dict:
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    import h5py  # a tf-keras dependency

    with h5py.File(path, "r") as h5:
        config = h5.attrs.get("model_config", "{}")
    return json.loads(config.decode() if isinstance(config, bytes) else config)


def _custom_layers(config: dict) -> list[tuple[str, str]]:
    """``(layer name, class name)`` of the layers in a saved model config (nested models
    too) that are no built-in Keras 3 class."""
    keras3, found = _keras3(), []
    for entry in (config.get("config") or {}).get("layers", []):
        class_name, module = entry.get("class_name", ""), entry.get("module") or "keras"
        if class_name in ("Functional", "Sequential", "Model") and module.startswith("keras"):
            found.extend(_custom_layers(entry))
        elif getattr(keras3.layers, class_name, None) is None or not module.startswith("keras"):
            found.append(((entry.get("config") or {}).get("name", "?"), class_name))
    return found


def written_by_keras3(path: str | os.PathLike) -> bool:
    """True if ``path`` is a ``.keras``/``.h5`` file Keras 3 wrote (False if it is not,
    or cannot be read)."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5", ".hdf5") or not path.is_file():
        return False
    try:
        return _file_keras_version(path).startswith("3.")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False


def load(path: str | os.PathLike) -> keras.Model:
    """The tf-keras model saved in a ``.keras`` or ``.h5`` file, translated with
    :func:`to_tf_keras` if Keras 3 wrote it (not compiled)."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ValueError(f"{path}: tfqnet reads Keras models from .keras or .h5 files; load "
                         "others yourself (e.g. tf_keras.models.load_model) and pass the model")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Keras model file")
    try:
        version = _file_keras_version(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable {path.suffix} Keras file: {error}") from None
    if not version.startswith("3."):
        return keras.models.load_model(path, compile=False)
    try:
        model = _keras3().saving.load_model(path, compile=False)
    except (TypeError, ValueError) as error:
        try:
            custom = _custom_layers(_file_config(path))
        except (OSError, KeyError, ValueError):
            custom = []
        if custom:
            name, class_name = custom[0]
            raise _error(f"layer {name!r} ({class_name}) of {path}", "it is a custom layer, "
                         "and tfqnet cannot translate its code (Keras 3 cannot load it here "
                         "either)", f"write it as a tf_keras layer and {_REBUILD}") from None
        raise Keras3ModelError(f"Keras 3 cannot load {path}: {str(error).splitlines()[0]:.200}"
                               " (a custom layer must be importable and registered with "
                               "keras.saving.register_keras_serializable)") from None
    return to_tf_keras(model)


def to_tf_keras(model: Any | str | os.PathLike) -> keras.Model:
    """The tf-keras (Keras 2) model equivalent to a Keras 3 ``model``, or to the model in a
    ``.keras``/``.h5`` file (a path; a file tf-keras wrote is just loaded).

    The result has the same layers (class, name, options), graph, input and output
    names, and weights (copied exactly), so it predicts the same: tfqnet's tests hold
    it to 1e-5 for every layer kind ``quantize_model`` supports and for
    ``keras.applications`` MobileNet and MobileNetV2. It is not compiled (compile it
    with tf_keras optimizers and losses); Keras 3 optimizer state is not carried over.
    A tf-keras model is returned as it is. Built-in layers beyond those kinds that
    tf-keras also has (e.g. LayerNormalization) are translated by the same rule (config
    keys tf-keras takes, weights matched by name and shape) but not each tested.

    Raises :class:`~tfqnet.errors.Keras3ModelError`, naming the layer and what to do,
    for what has no tf-keras equivalent: subclassed models, custom and ``Lambda``
    layers, ``keras.ops`` calls in the graph, layers, options or activations tf-keras
    lacks, custom initializers/regularizers/constraints, Keras 3-quantized layers.
    """
    if isinstance(model, str | os.PathLike):
        return load(os.fspath(model))
    if isinstance(model, keras.Model):
        return model
    if not is_keras3_model(model) or not isinstance(model, _keras3().Model):
        raise TypeError(f"expected a Keras model or a .keras/.h5 path, got "
                        f"{type(model).__module__}.{type(model).__name__}")
    return _model(model)


def as_tf_keras_model(model: Any, argument: str = "model", paths: bool = True) -> keras.Model:
    """``model`` as a tf-keras model: a tf-keras model as it is, a Keras 3 model (or, with
    ``paths``, a model file) through :func:`to_tf_keras`; anything else a one-line
    TypeError."""
    if isinstance(model, keras.Model):
        return model
    if (paths and isinstance(model, str | os.PathLike)) or is_keras3_model(model):
        return to_tf_keras(model)
    accepted = "a Keras model (tf_keras or Keras 3)" + (" or a .keras/.h5 path" if paths else "")
    raise TypeError(f"`{argument}` must be {accepted}, got {type(model).__name__}.")


__all__ = ["as_tf_keras_model", "load", "to_tf_keras", "written_by_keras3"]
