"""tfqnet's TFMOT QuantizeScheme: layout transforms plus the registry of one method."""

from __future__ import annotations

import tensorflow_model_optimization as tfmot

from tfqnet.quantize.registry import QuantizeRegistry
from tfqnet.quantize.transforms import LayoutTransform


class QuantizeScheme(tfmot.quantization.keras.QuantizeScheme):
    def __init__(self, registry: QuantizeRegistry):
        self.registry = registry

    def get_layout_transformer(self):
        return LayoutTransform(self.registry)

    def get_quantize_registry(self):
        return self.registry
