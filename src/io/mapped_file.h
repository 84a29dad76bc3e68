// A read-only, private memory mapping of a whole file.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string_view>

namespace lmx::io {

// Owns one mmap. Shared through std::shared_ptr so that arrays borrowing the bytes
// keep the mapping alive after the file object that created it is gone.
class MappedFile {
 public:
  // `where` prefixes error messages, e.g. "safetensors". Throws lmx::Error when the
  // file cannot be opened, is not a regular file or cannot be mapped.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path,
                                                std::string_view where);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }

 private:
  MappedFile(const std::byte* data, size_t size) : data_(data), size_(size) {}
  const std::byte* data_ = nullptr;  // null for an empty file (mmap cannot map 0 bytes)
  size_t size_ = 0;
};

}  // namespace lmx::io
