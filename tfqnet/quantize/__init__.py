"""Model -> QAT model: the TFMOT registry, layout transforms and scheme of tfqnet."""

from tfqnet.quantize.api import callbacks, load_model, quantize_model, quantize_scope
from tfqnet.quantize.distillation import (
    DistillationAccuracy,
    DistillationLoss,
    distillation_targets,
)

__all__ = ["DistillationAccuracy", "DistillationLoss", "callbacks", "distillation_targets",
           "load_model", "quantize_model", "quantize_scope"]
