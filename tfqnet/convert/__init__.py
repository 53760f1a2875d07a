"""QAT model -> TFLite flatbuffer, and reading flatbuffers back.

``convert`` loads TensorFlow, so it is imported on first use: reading a flatbuffer
(:mod:`tfqnet.convert.flatbuffer`, used by ``tfqnet check``) stays TensorFlow-free.
"""

from typing import Any

from tfqnet.convert.flatbuffer import FlatbufferModel

__all__ = ["FlatbufferModel", "convert"]


def __getattr__(name: str) -> Any:
    if name == "convert":
        from tfqnet.convert.tflite import convert

        return convert
    raise AttributeError(f"module 'tfqnet.convert' has no attribute {name!r}")
