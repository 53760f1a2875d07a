"""Microcontroller side: the TFLM runtime runner (C arrays and the checker build on it)."""

from tfqnet.micro.arena import ArenaMeasurement, ArenaProbeError, measure_arena
from tfqnet.micro.c_arrays import align_flatbuffer, golden_vector_files, model_data_files
from tfqnet.micro.checker import CheckReport, check_model
from tfqnet.micro.op_resolver import UnsupportedOpError, op_resolver_header
from tfqnet.micro.runtime import MicroInterpreter, TensorDetails, run_tflm

__all__ = [
    "ArenaMeasurement",
    "ArenaProbeError",
    "CheckReport",
    "MicroInterpreter",
    "TensorDetails",
    "UnsupportedOpError",
    "align_flatbuffer",
    "check_model",
    "golden_vector_files",
    "measure_arena",
    "model_data_files",
    "op_resolver_header",
    "run_tflm",
]
