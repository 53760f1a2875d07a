"""A stand-in for the few TFLM declarations that export-c's op resolver and check
program use, written for tests/test_c_sources.py (not TFLM's code) and written out at
test time under the include paths those files name.

It lets the host compiler check the generated C++ with TFLM's warning flags, and its
interpreter "runs" a golden vector by returning the output that the test data holds for
that input, so the check program's PASS/FAIL logic runs too. The signatures follow
TFLM's headers (``MicroInterpreter::input(size_t)``, ``typed_output_tensor<T>(int)``,
``arena_used_bytes()`` returning ``size_t``, ``MicroPrintf(const char*, ...)``); the
real build is the measured one in ../shared/tflm-facts.md.
"""

from __future__ import annotations

from pathlib import Path

#: include path -> the stand-in header
HEADERS = {
    "tensorflow/lite/micro/micro_interpreter.h": r"""
// Test stand-in (see tests/tflm_stand_in.py). Invoke() looks up the golden input that
// equals the input tensor and writes that vector's golden output, plus STUB_CORRUPT_LSB
// on element 0 of vector STUB_CORRUPT_VECTOR when those are defined.
#ifndef TFQNET_STUB_MICRO_INTERPRETER_H_
#define TFQNET_STUB_MICRO_INTERPRETER_H_
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

struct TfLiteTensor {
  union {
    char* raw;
  } data;
  size_t bytes;
};

namespace tflite {
class MicroInterpreter {
 public:
  template <class Resolver>
  MicroInterpreter(const Model*, const Resolver&, uint8_t* arena, size_t arena_bytes)
      : arena_(arena), arena_bytes_(arena_bytes) {}
  TfLiteStatus AllocateTensors() {
    if (arena_bytes_ < sizeof(STUB_INPUT) + sizeof(STUB_OUTPUT)) return kTfLiteError;
    input_.data.raw = reinterpret_cast<char*>(arena_);
    input_.bytes = sizeof(STUB_INPUT[0]);
    output_ = arena_ + sizeof(STUB_INPUT[0]);
    return kTfLiteOk;
  }
  size_t arena_used_bytes() const { return sizeof(STUB_INPUT[0]) + sizeof(STUB_OUTPUT[0]); }
  TfLiteTensor* input(size_t index) { return index == 0 ? &input_ : nullptr; }
  TfLiteStatus Invoke() {
    for (size_t v = 0; v < sizeof(STUB_INPUT) / sizeof(STUB_INPUT[0]); ++v) {
      if (memcmp(input_.data.raw, STUB_INPUT[v], sizeof(STUB_INPUT[0])) == 0) {
        memcpy(output_, STUB_OUTPUT[v], sizeof(STUB_OUTPUT[0]));
#if defined(STUB_CORRUPT_VECTOR)
        if (v == STUB_CORRUPT_VECTOR)
          output_[0] = static_cast<uint8_t>(output_[0] + STUB_CORRUPT_LSB);
#endif
        return kTfLiteOk;
      }
    }
    return kTfLiteError;
  }
  template <class T>
  T* typed_output_tensor(int index) {
    return index == 0 ? reinterpret_cast<T*>(output_) : nullptr;
  }

 private:
  uint8_t* arena_;
  size_t arena_bytes_;
  TfLiteTensor input_;
  uint8_t* output_ = nullptr;
};
}  // namespace tflite
#endif
""",
    "tensorflow/lite/micro/micro_log.h": r"""
// Test stand-in (see tests/tflm_stand_in.py).
#ifndef TFQNET_STUB_MICRO_LOG_H_
#define TFQNET_STUB_MICRO_LOG_H_
#include <stdarg.h>
#include <stdio.h>
inline void MicroPrintf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  vprintf(format, args);
  va_end(args);
  printf("\n");
}
#endif
""",
    "tensorflow/lite/micro/micro_mutable_op_resolver.h": r"""
// Test stand-in (see tests/tflm_stand_in.py): every Add*() the resolver calls succeeds.
#ifndef TFQNET_STUB_MICRO_MUTABLE_OP_RESOLVER_H_
#define TFQNET_STUB_MICRO_MUTABLE_OP_RESOLVER_H_
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
namespace tflite {
template <unsigned int N>
class MicroMutableOpResolver {
 public:
  TfLiteStatus AddConv2D() { return kTfLiteOk; }
  TfLiteStatus AddDepthwiseConv2D() { return kTfLiteOk; }
  TfLiteStatus AddFullyConnected() { return kTfLiteOk; }
  TfLiteStatus AddMaxPool2D() { return kTfLiteOk; }
  TfLiteStatus AddAveragePool2D() { return kTfLiteOk; }
  TfLiteStatus AddReshape() { return kTfLiteOk; }
  TfLiteStatus AddSoftmax() { return kTfLiteOk; }
  TfLiteStatus AddQuantize() { return kTfLiteOk; }
  TfLiteStatus AddDequantize() { return kTfLiteOk; }
  TfLiteStatus AddAdd() { return kTfLiteOk; }
  TfLiteStatus AddMean() { return kTfLiteOk; }
};
}  // namespace tflite
#endif
""",
    "tensorflow/lite/schema/schema_generated.h": r"""
// Test stand-in (see tests/tflm_stand_in.py).
#ifndef TFQNET_STUB_SCHEMA_GENERATED_H_
#define TFQNET_STUB_SCHEMA_GENERATED_H_
#include <stdint.h>
#define TFLITE_SCHEMA_VERSION (3)
namespace tflite {
struct Model {
  uint32_t version() const { return 3; }
};
inline const Model* GetModel(const void* data) { return static_cast<const Model*>(data); }
}  // namespace tflite
#endif
""",
}


def write_stand_in(directory: Path) -> Path:
    """Writes :data:`HEADERS` below ``directory``; returns it (the ``-I`` path)."""
    for relative, text in HEADERS.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory
