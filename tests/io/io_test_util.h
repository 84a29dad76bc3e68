// Helpers shared by the io tests: a scratch directory, byte builders, error matching.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace lmx::io::testing {

// A fresh directory under the system temp dir, removed with its contents at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lmx_io_test_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& p, std::string_view content) {
  std::ofstream os(p, std::ios::binary | std::ios::trunc);
  os.write(content.data(), std::streamsize(content.size()));
  ASSERT_TRUE(os.good()) << p;
}

inline void write_file(const std::filesystem::path& p, const std::vector<std::byte>& content) {
  write_file(p, std::string_view(reinterpret_cast<const char*>(content.data()), content.size()));
}

inline std::vector<std::byte> to_bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// A safetensors file built by hand: 8-byte little-endian length, header, data. The
// header is written as given (no padding) so tests control every byte.
inline std::string st_file(std::string_view header, std::string_view data = {}) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  out += header;
  out += data;
  return out;
}

// Runs f and returns the lmx::Error message; records a failure if nothing was thrown.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const lmx::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an lmx::Error";
  return {};
}

// Checks that `msg` contains every part.
inline void expect_contains(const std::string& msg, std::initializer_list<std::string_view> parts) {
  for (std::string_view p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
}

}  // namespace lmx::io::testing
