// A temporary copy of a fixture model folder, for tests that break one thing in it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace lmx::test {

inline const std::filesystem::path kFixtureModels = std::filesystem::path(LMX_FIXTURES_DIR) / "models";

// The copy lives under the system's temporary folder and goes with the object.
class FixtureCopy {
 public:
  FixtureCopy(const std::string& name, const std::string& tag)
      : dir_(std::filesystem::temp_directory_path() /
             ("lmx_" + tag + "_" + name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir_);
    std::filesystem::copy(kFixtureModels / name, dir_, std::filesystem::copy_options::recursive);
  }
  ~FixtureCopy() { std::filesystem::remove_all(dir_); }
  FixtureCopy(const FixtureCopy&) = delete;
  FixtureCopy& operator=(const FixtureCopy&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path file(const std::string& name) const { return dir_ / name; }

  // Rewrites model.safetensors with the f32 tensor `tensor` all NaN, as from weights that
  // overflowed. The final norm's makes every logit of every step NaN.
  void fill_nan(const std::string& tensor) const {
    const std::filesystem::path st = file("model.safetensors"), old = file("old.safetensors");
    std::filesystem::rename(st, old);
    {
      const io::SafetensorsFile f = io::SafetensorsFile::open(old);
      std::vector<io::NamedTensor> tensors;
      std::vector<float> nan;
      for (const io::TensorInfo& t : f.tensors()) {
        tensors.push_back({t.name, t.dtype, t.shape, f.data(t)});
        if (t.name != tensor) continue;
        ASSERT_EQ(t.dtype, io::StDtype::F32) << tensor;
        nan.assign(size_t(t.nbytes() / 4), std::numeric_limits<float>::quiet_NaN());
        tensors.back().bytes = std::as_bytes(std::span<const float>(nan));
      }
      ASSERT_FALSE(nan.empty()) << "no tensor " << tensor << " in " << old;
      io::write_safetensors(st, tensors);
    }
    std::filesystem::remove(old);
  }

 private:
  std::filesystem::path dir_;
};

}  // namespace lmx::test
