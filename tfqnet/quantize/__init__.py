"""Model -> QAT model: the TFMOT registry, layout transforms and scheme of tfqnet."""

from tfqnet.quantize.api import callbacks, load_model, quantize_model, quantize_scope

__all__ = ["callbacks", "load_model", "quantize_model", "quantize_scope"]
