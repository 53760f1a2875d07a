// Test stand-in (see tests/c_stubs/README.md): every Add*() the resolver calls succeeds.
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
