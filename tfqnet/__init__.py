"""tfqnet: learned low-bit quantization for Keras, deployed on TensorFlow Lite Micro.

Data flow: ``quantize_model`` (TFMOT configs and scheme) -> quantizers (one module
per method, sharing :mod:`tfqnet.grid`) -> ``convert`` (TFLite, INT4 packing) ->
:mod:`tfqnet.micro` (TFLM runtime, C arrays, checker).

Importing tfqnet first makes ``tf.keras`` tf-keras (Keras 2), which TFMOT needs.
"""

from tfqnet import (
    _keras,  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    quantizers,  # noqa: F401  (registers the built-in methods)
)
from tfqnet.callbacks import callbacks
from tfqnet.convert import FlatbufferModel, convert
from tfqnet.errors import (
    ConversionError,
    InvalidModelFileError,
    Keras3ModelError,
    TfqnetError,
    UnsupportedLayerError,
)
from tfqnet.layers import PixelEmbedding
from tfqnet.micro import MicroInterpreter, run_tflm
from tfqnet.quantize import method_names, quantize_model, quantize_scope

__version__ = "0.1.0"

__all__ = [
    "ConversionError",
    "FlatbufferModel",
    "InvalidModelFileError",
    "Keras3ModelError",
    "MicroInterpreter",
    "PixelEmbedding",
    "TfqnetError",
    "UnsupportedLayerError",
    "callbacks",
    "convert",
    "method_names",
    "quantize_model",
    "quantize_scope",
    "run_tflm",
]
