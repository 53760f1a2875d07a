"""tfqnet quantizers: one module per method, all sharing the grid in :mod:`tfqnet.grid`."""

from tfqnet.quantizers.base import Quantizer
from tfqnet.quantizers.uniform import UniformActivationQuantizer, UniformWeightQuantizer

__all__ = ["Quantizer", "UniformActivationQuantizer", "UniformWeightQuantizer"]
