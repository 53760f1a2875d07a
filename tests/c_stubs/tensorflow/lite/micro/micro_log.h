// Test stand-in (see tests/c_stubs/README.md).
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
