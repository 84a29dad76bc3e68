// What every kernel-lab program shares: stop at the first failed CUDA (or library) call,
// naming the call and its line. Exit status 2, apart from 1 for a failed check.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(call)                                                                    \
  do {                                                                                 \
    const cudaError_t e_ = (call);                                                     \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,        \
                   cudaGetErrorString(e_));                                            \
      std::exit(2);                                                                    \
    }                                                                                  \
  } while (0)

// For libraries whose calls return an integer status, 0 on success (cuBLAS, cuBLASLt).
#define CHECK_STATUS(call)                                                             \
  do {                                                                                 \
    const int s_ = int(call);                                                          \
    if (s_ != 0) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s failed: status %d\n", __FILE__, __LINE__, #call, s_); \
      std::exit(2);                                                                    \
    }                                                                                  \
  } while (0)
