"""Model -> QAT model: configs, registry, layout transforms and the TFMOT scheme."""

from tfqnet.quantize.api import load_model, quantize_model, quantize_scope, quantizers_of
from tfqnet.quantize.methods import QuantizationMethod, get_method, method_names, register_method

__all__ = [
    "QuantizationMethod",
    "get_method",
    "load_model",
    "method_names",
    "quantize_model",
    "quantize_scope",
    "quantizers_of",
    "register_method",
]
