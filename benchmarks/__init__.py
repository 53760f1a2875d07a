"""Benchmarks: each ``python -m benchmarks.<script>`` measures one issue's targets.

Importing the package turns on TensorFlow's op determinism, so a rerun of any script
with the same seeds gives the same numbers: without it the oneDNN CPU kernels sum in
an order that depends on thread scheduling, and methods sensitive to last-bit noise
(QN's soft zone) moved by up to 2 accuracy points between identical runs. Measured
cost: none beyond run-to-run timing noise. QN and SRQ rows measured before
commit fbabe30 may not repeat exactly: their sums used ``tf.add_n``, whose order op
determinism does not fix (:func:`tfqnet.core.quantizer.ordered_sum`).
"""

from tfqnet._keras import tf

tf.config.experimental.enable_op_determinism()
