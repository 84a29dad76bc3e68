// Where a run's host time goes between the CUDA runtime and cuBLAS: a library preloaded
// into lmx that counts each call below and times it, and times the host's own work before
// it (from the end of the call before). It prints a table to stderr at exit.
//
//   cc -O2 -shared -fPIC -o /tmp/host_calls.so bench/host_calls.c -ldl
//   LD_PRELOAD=/tmp/host_calls.so lmx bench MODEL --decode --gen-len 2 --warmup 0 --repeat 41
//
// The first kSkipped calls of each function are counted but not timed: they include the
// model's load and the first launches of each kernel. Run twice with different --repeat
// and subtract the counts to get one run's calls. The kernels that cuBLAS launches do not
// show (it launches through the driver), so a GEMM's time is its whole call's.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

typedef struct {
  unsigned x, y, z;
} dim3;

enum { kMaxNames = 48, kSkipped = 300 };
static const char* names[kMaxNames];
static uint64_t calls[kMaxNames], inside_ns[kMaxNames], before_ns[kMaxNames];
static int n_names;
static uint64_t last_end;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int slot(const char* name) {
  for (int i = 0; i < n_names; ++i)
    if (names[i] == name) return i;
  if (n_names == kMaxNames) return kMaxNames - 1;  // the last slot takes the rest
  names[n_names] = name;
  return n_names++;
}

static void record(int id, uint64_t start, uint64_t end) {
  if (++calls[id] > kSkipped) {
    inside_ns[id] += end - start;
    if (last_end) before_ns[id] += start - last_end;
  }
  last_end = end;
}

// One wrapper per function: the real one found once, then called between two clock reads.
#define WRAP(name, params, args)                                           \
  int name params {                                                        \
    static int (*real) params;                                             \
    static int id = -1;                                                    \
    if (!real) real = (int(*) params)dlsym(RTLD_NEXT, #name), id = slot(#name); \
    const uint64_t start = now_ns();                                       \
    const int r = real args;                                               \
    record(id, start, now_ns());                                           \
    return r;                                                              \
  }

WRAP(__cudaLaunchKernel, (const void* f, dim3 g, dim3 b, void** a, size_t s, void* st), (f, g, b, a, s, st))
WRAP(cudaLaunchKernelExC, (const void* c, const void* f, void** a), (c, f, a))
WRAP(cudaMemcpy2DAsync, (void* d, size_t dp, const void* s, size_t sp, size_t w, size_t h, int k, void* st),
     (d, dp, s, sp, w, h, k, st))
WRAP(cudaMemsetAsync, (void* d, int v, size_t n, void* st), (d, v, n, st))
WRAP(cudaStreamSynchronize, (void* s), (s))
WRAP(cudaEventSynchronize, (void* e), (e))
WRAP(cudaMalloc, (void** p, size_t n), (p, n))
WRAP(cudaFree, (void* p), (p))
WRAP(cudaSetDevice, (int d), (d))
WRAP(cudaGetDevice, (int* d), (d))
WRAP(cudaEventRecord, (void* e, void* s), (e, s))
WRAP(cudaStreamWaitEvent, (void* s, void* e, unsigned f), (s, e, f))
WRAP(cudaGraphLaunch, (void* g, void* s), (g, s))
WRAP(cudaGetLastError, (void), ())
// Integer and pointer arguments alike travel in 64-bit slots on x86-64, so longs stand in
// for cuBLAS's enums and ints.
WRAP(cublasGemmEx, (long a1, long a2, long a3, long a4, long a5, long a6, long a7, long a8, long a9, long a10,
                    long a11, long a12, long a13, long a14, long a15, long a16, long a17, long a18, long a19),
     (a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19))
WRAP(cublasGemmStridedBatchedEx,
     (long a1, long a2, long a3, long a4, long a5, long a6, long a7, long a8, long a9, long a10, long a11,
      long a12, long a13, long a14, long a15, long a16, long a17, long a18, long a19, long a20, long a21,
      long a22, long a23),
     (a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20, a21, a22, a23))
WRAP(cublasLtMatmul, (long a1, long a2, long a3, long a4, long a5, long a6, long a7, long a8, long a9, long a10,
                      long a11, long a12, long a13, long a14, long a15, long a16),
     (a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16))
WRAP(cublasLtMatmulAlgoGetHeuristic, (long a1, long a2, long a3, long a4, long a5, long a6, long a7, long a8,
                                      long a9, long a10),
     (a1, a2, a3, a4, a5, a6, a7, a8, a9, a10))

// cudaMemcpyAsync by direction: a copy from pageable host memory costs far more than one
// between two device buffers.
int cudaMemcpyAsync(void* dst, const void* src, size_t n, int kind, void* stream) {
  static int (*real)(void*, const void*, size_t, int, void*);
  static const char* const kinds[5] = {"cudaMemcpyAsync host to host", "cudaMemcpyAsync host to device",
                                       "cudaMemcpyAsync device to host", "cudaMemcpyAsync device to device",
                                       "cudaMemcpyAsync (inferred)"};
  if (!real) real = (int (*)(void*, const void*, size_t, int, void*))dlsym(RTLD_NEXT, "cudaMemcpyAsync");
  const int id = slot(kinds[kind >= 0 && kind < 5 ? kind : 4]);
  const uint64_t start = now_ns();
  const int r = real(dst, src, n, kind, stream);
  record(id, start, now_ns());
  return r;
}

__attribute__((destructor)) static void report(void) {
  fprintf(stderr, "%-40s %9s %14s %14s\n", "call", "calls", "us a call", "us before it");
  for (int i = 0; i < n_names; ++i) {
    const uint64_t timed = calls[i] > kSkipped ? calls[i] - kSkipped : 0;
    fprintf(stderr, "%-40s %9llu %14.3f %14.3f\n", names[i], (unsigned long long)calls[i],
            timed ? inside_ns[i] / 1e3 / (double)timed : 0.0, timed ? before_ns[i] / 1e3 / (double)timed : 0.0);
  }
}
