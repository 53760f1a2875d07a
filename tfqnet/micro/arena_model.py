"""The kernel sets a board's tensor arena depends on, and the C macros that select
their figure in the generated header.

Why per kernel set: TFLM's reference kernels unpack an INT4 filter into arena scratch,
CMSIS-NN's do not but request im2col-sized buffers of their own, and the MVE build of
CMSIS-NN keeps per-layer kernel sums (measured on Cortex-M4 and M55: tflm-facts.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelSet:
    key: str  # the name export-c and check use
    macro: str  # NAME_TENSOR_ARENA_SIZE_<macro> in the header
    label: str  # what the figure is for, as check and the header say it
    condition: str  # the C preprocessor condition that selects it


#: The kernel sets whose arena export-c writes, in the order the header tests them (the
#: MVE figure before the plain CMSIS-NN one, which it refines).
KERNEL_SETS = (
    KernelSet("cmsis_nn_mve", "CMSIS_NN_MVE", "CMSIS-NN kernels with MVE (Cortex-M55/M85)",
              "defined(CMSIS_NN) && defined(__ARM_FEATURE_MVE)"),
    KernelSet("cmsis_nn", "CMSIS_NN", "CMSIS-NN kernels, 32-bit Cortex-M without MVE",
              "defined(CMSIS_NN)"),
    KernelSet("reference", "REFERENCE", "TFLM reference kernels, 32-bit Cortex-M",
              "defined(TFQNET_REFERENCE_KERNELS)"),
)
