// Small helpers that several runtime test files share.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "lmx/lmx.h"

namespace lmx::test {

// A file's bytes, or "" where it cannot be read.
inline std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Greedy generation of exactly n tokens (end-of-sequence ignored), so that runs compare
// token for token.
inline GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.max_tokens = n;
  o.ignore_eos = true;
  return o;
}

// Whether a CUDA device is visible (CUDA cases skip otherwise, with the message they give).
inline bool cuda_visible() {
  const Backend* cuda = get_backend("cuda");
  return cuda && cuda->available();
}

// Loads on the CUDA backend in bf16.
inline LoadOptions cuda_bf16() {
  LoadOptions lo;
  lo.backend = "cuda";
  lo.dtype = "bf16";
  return lo;
}

}  // namespace lmx::test
