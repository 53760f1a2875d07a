// Test stand-in (see tests/c_stubs/README.md). Invoke() looks up the golden input that
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
        if (v == STUB_CORRUPT_VECTOR) output_[0] = static_cast<uint8_t>(output_[0] + STUB_CORRUPT_LSB);
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
