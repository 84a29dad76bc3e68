// A block's radix select over the caller's order-preserving keys of floats, in shared
// memory: the sampled LM head's threshold (persistent_head.cuh) and the draw among a
// filtered head's listed rows (sample.cu). Nothing is sorted: each 8-bit digit, from the
// top, is a histogram of the keys still in the running and a walk of it from the largest
// bin.
#pragma once

#include <cstdint>

namespace lmx::cuda {

// Order-preserving keys of floats: of two floats, the larger has the larger key (a NaN
// with its sign bit clear lies above every number). -0 takes +0's key: they compare equal
// as floats, so a threshold or a tie between them is one value. key_value inverts it.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? k & 0x7fffffffu : ~k);
}

// Of n keys (key(i), n >= need), the prefix of kDigits 8-bit digits, from the top, at
// which the `need`-th largest lies: at least `need` keys are at or above it. Where set,
// *in_last takes how many of those `need` lie within the last digit's bucket (the rest
// lie above it). kThreads threads of the block call it alike, meeting at sync(); hist:
// [kDigits][256] in shared memory.
template <int kThreads, int kDigits, class Sync, class Key>
__device__ unsigned select_prefix(Key key, int n, unsigned need, unsigned* hist, Sync sync,
                                  unsigned* in_last = nullptr) {
  static_assert(kThreads >= 256, "a thread a bin");
  __shared__ unsigned picked[2];  // a digit and the keys still needed within it
  unsigned prefix = 0;
  for (int pass = 0; pass < kDigits; ++pass) {
    const int shift = 24 - 8 * pass;
    unsigned* h = hist + 256 * pass;
    if (threadIdx.x < 256) h[threadIdx.x] = 0;
    sync();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const unsigned k = key(i);
      if (pass == 0 || k >> (shift + 8) == prefix >> (shift + 8)) atomicAdd(&h[(k >> shift) & 255u], 1u);
    }
    sync();
    if (threadIdx.x < 32) {  // lane j: digits 255 - 8j down to 248 - 8j; counts summed from the top
      const int lane = int(threadIdx.x);
      unsigned c[8], sum = 0;
#pragma unroll
      for (int u = 0; u < 8; ++u) sum += c[u] = h[255 - 8 * lane - u];
      unsigned above = sum;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned t = __shfl_up_sync(0xffffffffu, above, o);
        if (lane >= o) above += t;
      }
      // The keys in the running number at least `need`, so some lane's count reaches it.
      const int owner = __ffs(int(__ballot_sync(0xffffffffu, above >= need))) - 1;
      if (lane == owner) {
        unsigned before = above - sum;
        int u = 0;
        while (before + c[u] < need) before += c[u++];
        picked[0] = unsigned(255 - 8 * lane - u), picked[1] = need - before;
      }
    }
    sync();
    prefix |= picked[0] << shift;
    need = picked[1];  // (read before the next pass's second sync, after which it is written)
  }
  if (in_last) *in_last = need;
  return prefix;
}

}  // namespace lmx::cuda
