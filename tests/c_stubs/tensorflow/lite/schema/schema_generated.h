// Test stand-in (see tests/c_stubs/README.md).
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
