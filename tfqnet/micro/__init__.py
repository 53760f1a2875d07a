"""Microcontroller side: the TFLM runtime runner (C arrays and the checker build on it)."""

from tfqnet.micro.runtime import MicroInterpreter, TensorDetails, run_tflm

__all__ = ["MicroInterpreter", "TensorDetails", "run_tflm"]
