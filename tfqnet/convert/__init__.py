"""QAT model -> TFLite flatbuffer, and reading flatbuffers back."""

from tfqnet.convert.flatbuffer import FlatbufferModel
from tfqnet.convert.tflite import convert

__all__ = ["FlatbufferModel", "convert"]
