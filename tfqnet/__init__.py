"""tfqnet: learned low-bit quantization for Keras, deployed on TensorFlow Lite Micro.

Data flow: ``quantize_model`` (TFMOT configs and scheme) -> quantizers (one module
per method, sharing :mod:`tfqnet.grid`) -> ``convert`` (TFLite, INT4 packing) ->
:mod:`tfqnet.micro` (TFLM runtime, C arrays, checker).

Importing tfqnet first makes ``tf.keras`` tf-keras (Keras 2), which TFMOT needs.

The import is lazy: ``import tfqnet`` only sets ``TF_USE_LEGACY_KERAS``; TensorFlow,
TFMOT and tfqnet's Keras classes load at the first use of a public name
(``tfqnet.quantize_model``, ``tfqnet.quantize_scope``, ...), all at once, so every
registered class (quantizers, regularizers, layers) is known from then on. Tools that
only read flatbuffers (``tfqnet check``/``export-c``, :mod:`tfqnet.convert.flatbuffer`)
therefore answer a bad file in a fraction of a second instead of after TensorFlow's
several-second import.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Why here and not only in tfqnet._keras: TensorFlow reads the variable when it is
# imported, which with the lazy import may happen (through the user's own
# `import tf_keras`) long before tfqnet._keras runs.
if "tensorflow" not in sys.modules:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"

#: public name -> module that defines it
_EXPORTS = {
    "ConversionError": "tfqnet.errors",
    "InvalidModelFileError": "tfqnet.errors",
    "Keras3ModelError": "tfqnet.errors",
    "TfqnetError": "tfqnet.errors",
    "UnsupportedLayerError": "tfqnet.errors",
    "FlatbufferModel": "tfqnet.convert.flatbuffer",
    "MicroInterpreter": "tfqnet.micro.runtime",
    "run_tflm": "tfqnet.micro.runtime",
    "PixelEmbedding": "tfqnet.layers",
    "callbacks": "tfqnet.callbacks",
    "convert": "tfqnet.convert.tflite",
    "load_model": "tfqnet.quantize",
    "method_names": "tfqnet.quantize",
    "quantize_model": "tfqnet.quantize",
    "quantize_scope": "tfqnet.quantize",
    "bit_width_report": "tfqnet.quantizers.srq",
}
#: names that need no TensorFlow: loaded on their own
_LIGHT = {"tfqnet.errors", "tfqnet.convert.flatbuffer", "tfqnet.micro.runtime"}
#: modules that register Keras classes (loaded together, in this order, on first use)
_KERAS_MODULES = ("tfqnet._keras", "tfqnet.quantizers", "tfqnet.quantize", "tfqnet.layers",
                  "tfqnet.callbacks", "tfqnet.convert.tflite")

__all__ = [
    "ConversionError",
    "FlatbufferModel",
    "InvalidModelFileError",
    "Keras3ModelError",
    "MicroInterpreter",
    "PixelEmbedding",
    "TfqnetError",
    "UnsupportedLayerError",
    "bit_width_report",
    "callbacks",
    "convert",
    "load_model",
    "method_names",
    "quantize_model",
    "quantize_scope",
    "run_tflm",
]


def _load_keras_side() -> None:
    for module in _KERAS_MODULES:
        importlib.import_module(module)


def _resolve(name: str) -> Any:
    module = _EXPORTS[name]
    if module not in _LIGHT:
        _load_keras_side()
    return getattr(importlib.import_module(module), name)


class _FunctionNamedLikeItsModule:
    """``tfqnet.convert`` and ``tfqnet.callbacks`` are functions defined in submodules of
    the same name. Python binds a submodule to its package attribute when it is first
    imported (e.g. by ``import tfqnet.convert.flatbuffer``), which would turn
    ``tfqnet.convert(...)`` into a call of a module; this data descriptor keeps the
    attribute the function and ignores that binding (the submodule stays reachable
    through ``sys.modules`` and ``import tfqnet.convert.x``)."""

    def __init__(self, name: str):
        self.name = name
        self.value: Any = None

    def __get__(self, package: object, owner: type | None = None) -> Any:
        if package is None:
            return self
        if self.value is None:
            self.value = _resolve(self.name)
        return self.value

    def __set__(self, package: object, value: Any) -> None:
        pass  # the import system binding the submodule: keep the function


class _Package(types.ModuleType):
    convert = _FunctionNamedLikeItsModule("convert")
    callbacks = _FunctionNamedLikeItsModule("callbacks")


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        try:  # a submodule not imported yet, e.g. `tfqnet.grid`
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'tfqnet' has no attribute {name!r}") from None
    value = _resolve(name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


sys.modules[__name__].__class__ = _Package

if "tensorflow" in sys.modules:
    # TensorFlow is loaded already, so loading the rest costs little; doing it now keeps
    # the warning of tfqnet._keras (tf.keras is Keras 3 here) at `import tfqnet`.
    _load_keras_side()

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ provides these
    from tfqnet.callbacks import callbacks
    from tfqnet.convert.flatbuffer import FlatbufferModel
    from tfqnet.convert.tflite import convert
    from tfqnet.errors import (
        ConversionError,
        InvalidModelFileError,
        Keras3ModelError,
        TfqnetError,
        UnsupportedLayerError,
    )
    from tfqnet.layers import PixelEmbedding
    from tfqnet.micro.runtime import MicroInterpreter, run_tflm
    from tfqnet.quantize import method_names, quantize_model, quantize_scope
    from tfqnet.quantizers.srq import bit_width_report
