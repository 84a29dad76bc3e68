// Counter-based random words: word i of a seed depends only on (seed, i), so a draw is the
// same on every thread count and device, and can be made again (a dropout mask in the
// backward pass). CUDA's kernels use the same formula (backend/cuda/common.cuh).
#pragma once

#include <cstdint>

namespace lmx {

// splitmix64's finaliser over (seed, counter): cheap, well mixed, and parallel-safe.
inline uint64_t counter_bits(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + (i + 1) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace lmx
