"""tfqnet: learned low-bit quantization for Keras, deployed on TensorFlow Lite Micro.

Layers, each importing only those before it: contracts (:mod:`tfqnet.errors`,
:mod:`tfqnet.tflite_format`, :mod:`tfqnet.grid`, :mod:`tfqnet.core`) -> quantizers (one
module or package per method) -> :mod:`tfqnet.layers` -> :mod:`tfqnet.quantize`
(``quantize_model``: TFMOT registry, transforms, scheme) -> :mod:`tfqnet.export`
(``convert``: one handler per target) -> :mod:`tfqnet.micro` (TFLM runtime, C arrays,
checker) -> :mod:`tfqnet.cli`.

Importing tfqnet before TensorFlow makes ``tf.keras`` tf-keras (Keras 2), which TFMOT
builds on; imported later it works the same (tfqnet and TFMOT use ``tf_keras``
directly), and Keras 3 models are translated to tf-keras (:func:`tfqnet.to_tf_keras`).

The import is lazy: ``import tfqnet`` only sets ``TF_USE_LEGACY_KERAS``; TensorFlow,
TFMOT and tfqnet's Keras classes load at the first use of a public name
(``tfqnet.quantize_model``, ``tfqnet.quantize_scope``, ...), all at once, so every
registered class (quantizers, regularizers, layers) is known from then on. Tools that
only read flatbuffers (``tfqnet check``/``export-c``, :mod:`tfqnet.export.flatbuffer`)
therefore answer a bad file in a fraction of a second instead of after TensorFlow's
several-second import.
"""

from __future__ import annotations

import importlib
import os
import sys
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
    "MicroRuntimeError": "tfqnet.errors",
    "TfqnetError": "tfqnet.errors",
    "UnsupportedLayerError": "tfqnet.errors",
    "FlatbufferModel": "tfqnet.export.flatbuffer",
    "compact": "tfqnet.export.compact",
    "flash_breakdown": "tfqnet.export.flatbuffer",
    "MicroInterpreter": "tfqnet.micro.runtime",
    "run_tflm": "tfqnet.micro.runtime",
    "PixelEmbedding": "tfqnet.layers",
    "callbacks": "tfqnet.quantize.api",
    "DistillationAccuracy": "tfqnet.quantize.distillation",
    "DistillationLoss": "tfqnet.quantize.distillation",
    "distillation_targets": "tfqnet.quantize.distillation",
    "convert": "tfqnet.export.api",
    "load_model": "tfqnet.quantize.api",
    "method_names": "tfqnet.core.method",
    "quantize_model": "tfqnet.quantize.api",
    "quantize_scope": "tfqnet.quantize.api",
    "bit_width_report": "tfqnet.quantizers.report",
    "to_tf_keras": "tfqnet.keras3",
}
#: names that need no TensorFlow: loaded on their own
_LIGHT = {"tfqnet.errors", "tfqnet.export.flatbuffer", "tfqnet.export.compact",
          "tfqnet.micro.runtime"}
#: modules that register Keras classes (loaded together, in this order, on first use)
_KERAS_MODULES = ("tfqnet._keras", "tfqnet.quantizers", "tfqnet.layers", "tfqnet.quantize",
                  "tfqnet.export.api")

__all__ = [
    "ConversionError",
    "DistillationAccuracy",
    "DistillationLoss",
    "FlatbufferModel",
    "InvalidModelFileError",
    "Keras3ModelError",
    "MicroInterpreter",
    "MicroRuntimeError",
    "PixelEmbedding",
    "TfqnetError",
    "UnsupportedLayerError",
    "bit_width_report",
    "callbacks",
    "compact",
    "convert",
    "distillation_targets",
    "flash_breakdown",
    "load_model",
    "method_names",
    "quantize_model",
    "quantize_scope",
    "run_tflm",
    "to_tf_keras",
]


def _load_keras_side() -> None:
    for module in _KERAS_MODULES:
        importlib.import_module(module)


def _resolve(name: str) -> Any:
    module = _EXPORTS[name]
    if module not in _LIGHT:
        _load_keras_side()
    return getattr(importlib.import_module(module), name)


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


if "tensorflow" in sys.modules:
    # TensorFlow is loaded already, so loading the rest costs little.
    _load_keras_side()

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ provides these
    from tfqnet.core.method import method_names
    from tfqnet.errors import (
        ConversionError,
        InvalidModelFileError,
        Keras3ModelError,
        MicroRuntimeError,
        TfqnetError,
        UnsupportedLayerError,
    )
    from tfqnet.export.api import convert
    from tfqnet.export.compact import compact
    from tfqnet.export.flatbuffer import FlatbufferModel, flash_breakdown
    from tfqnet.keras3 import to_tf_keras
    from tfqnet.layers import PixelEmbedding
    from tfqnet.micro.runtime import MicroInterpreter, run_tflm
    from tfqnet.quantize.api import callbacks, load_model, quantize_model, quantize_scope
    from tfqnet.quantize.distillation import (
        DistillationAccuracy,
        DistillationLoss,
        distillation_targets,
    )
    from tfqnet.quantizers.report import bit_width_report
