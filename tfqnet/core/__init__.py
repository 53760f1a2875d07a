"""The contracts the rest of tfqnet builds on; nothing here imports tfqnet above it.

* :mod:`~tfqnet.core.quantizer`: :class:`Quantizer`, the base of every quantizer, with
  its extension points (``callbacks``, ``prepare_export``) and the rules that keep
  quantizer state identical across ``tf.distribute`` replicas;
* :mod:`~tfqnet.core.method`: :class:`QuantizationMethod` and the method registry;
* :mod:`~tfqnet.core.config`: the TFMOT QuantizeConfig of tfqnet, and the ways to find
  the quantizers of a QAT model (:func:`quantizers_of`, :func:`quantizer_states`);
* :mod:`~tfqnet.core.layer_kinds`: which Keras layers are weighted, pass-through or
  get their own output grid.

Below it sit :mod:`tfqnet.grid` (the export grid every quantizer lands on),
:mod:`tfqnet.tflite_format` (what the flatbuffer stores) and :mod:`tfqnet.errors`.
"""

from tfqnet.core.config import (
    LayerQuantizeConfig,
    pass_through_config,
    quantizer_states,
    quantizers_of,
)
from tfqnet.core.method import QuantizationMethod, get_method, method_names, register_method
from tfqnet.core.quantizer import BatchStatistics, Quantizer, ordered_sum, register

__all__ = [
    "BatchStatistics",
    "LayerQuantizeConfig",
    "QuantizationMethod",
    "Quantizer",
    "get_method",
    "method_names",
    "ordered_sum",
    "pass_through_config",
    "quantizer_states",
    "quantizers_of",
    "register",
    "register_method",
]
