"""Export targets: a trained QAT model to a TFLite flatbuffer, and flatbuffers read back.

* :mod:`~tfqnet.export.api`: ``convert`` (public as :func:`tfqnet.convert`), the steps
  every conversion takes;
* :mod:`~tfqnet.export.tflite`: the plain TFLite target (the TF converter);
* :mod:`~tfqnet.export.compression`: the TFLM-compressed target (lookup-table indices);
* :mod:`~tfqnet.export.per_channel_dense` and :mod:`~tfqnet.export.raw_input`: what the
  converter cannot do alone (per-channel Dense kernels, raw-pixel inputs);
* :mod:`~tfqnet.export.flatbuffer`: reading a flatbuffer, TensorFlow-free.

Importing this package loads nothing heavy: tools that only read flatbuffers
(``tfqnet check``/``export-c``) stay TensorFlow-free.
"""
