"""tfqnet quantizers: one module per method, all sharing the grid in :mod:`tfqnet.grid`."""

from tfqnet.core.quantizer import Quantizer
from tfqnet.quantizers.crq import CRQMethod  # noqa: F401  (registers method "crq")
from tfqnet.quantizers.qn import QNMethod  # noqa: F401  (registers method "qn")
from tfqnet.quantizers.srq import SRQMethod  # noqa: F401  (registers method "srq")
from tfqnet.quantizers.uniform import UniformActivationQuantizer, UniformWeightQuantizer

__all__ = ["Quantizer", "UniformActivationQuantizer", "UniformWeightQuantizer"]
