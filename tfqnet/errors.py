"""Exceptions tfqnet raises. Each message names the problem and the way forward."""


class TfqnetError(Exception):
    """Base class of tfqnet's errors."""


class Keras3ModelError(TfqnetError, TypeError):
    """A Keras 3 model (or part of one) that tfqnet cannot translate to tf-keras, which
    TFMOT needs: a subclassed model, a custom layer, ... (:func:`tfqnet.to_tf_keras`).
    The message names the model or layer and what to do."""


class UnsupportedLayerError(TfqnetError, ValueError):
    """A layer tfqnet cannot quantize; the message names it and how to skip it."""


class ConversionError(TfqnetError, RuntimeError):
    """The converted flatbuffer breaks the export contract (e.g. float ops remain)."""


class InvalidModelFileError(TfqnetError, ValueError):
    """A file is not a readable TFLite flatbuffer."""


class ArenaProbeError(TfqnetError, RuntimeError):
    """The model does not load in the TFLM runtime at any arena size."""


class MicroRuntimeError(TfqnetError, RuntimeError):
    """The TFLM runtime refused a model that passed tfqnet's file checks (it could not
    allocate or invoke it)."""


class UnsupportedOpError(TfqnetError, ValueError):
    """The model uses an op that TFLM has no kernel for."""
