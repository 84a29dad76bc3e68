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

}  // namespace lmx::test
