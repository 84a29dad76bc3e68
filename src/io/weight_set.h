// All the weights of a model directory, across one or more safetensors files.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors.h"

namespace lmx::io {

// The files are found as HF and mlx-lm find them: the shards named by
// model.safetensors.index.json when present, otherwise every model*.safetensors.
// Constructed fully validated or not at all. Thread-safety: const members may be
// called concurrently.
class WeightSet {
 public:
  // Throws lmx::Error "[weights] <dir>: ..." when no weight file exists, a shard named
  // by the index is missing, a tensor listed in the index is absent from its shard, or
  // one tensor name appears in two files; file-level errors come from SafetensorsFile.
  static WeightSet open_dir(const std::filesystem::path& dir);
  // For tests and tools: an already opened set of files (same duplicate checks).
  static WeightSet from_files(std::vector<SafetensorsFile> files, std::filesystem::path dir);

  WeightSet(WeightSet&&) noexcept = default;
  WeightSet& operator=(WeightSet&&) noexcept = default;
  WeightSet(const WeightSet&) = delete;
  WeightSet& operator=(const WeightSet&) = delete;

  const TensorInfo* find(std::string_view name) const;
  // The named tensor's info; throws naming the directory when it is absent.
  const TensorInfo& at(std::string_view name) const;
  std::span<const std::byte> data(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return index_.size(); }
  // The file that holds `name` (for error messages).
  const std::filesystem::path& file_of(std::string_view name) const;
  std::shared_ptr<const void> keep_alive(std::string_view name) const;
  uint64_t total_bytes() const { return total_bytes_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  WeightSet() = default;
  struct Loc {
    size_t file;
    const TensorInfo* info;  // points into files_[file].tensors(), whose storage never moves
  };
  const Loc& locate(std::string_view name) const;

  std::filesystem::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Loc, std::less<>> index_;
  uint64_t total_bytes_ = 0;
};

}  // namespace lmx::io
