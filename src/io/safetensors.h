// Reading and writing safetensors files (spec: models-and-formats.md §3).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace lmx::io {

class MappedFile;

// Every dtype string the safetensors format defines, plus MLX's C64.
enum class StDtype : uint8_t {
  BOOL, U8, I8, I16, U16, I32, U32, I64, U64,
  F16, BF16, F32, F64,
  F8_E4M3, F8_E5M2, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
  F4, F6_E2M3, F6_E3M2,
  C64,
};

std::string_view st_dtype_name(StDtype t);              // "BF16"
std::optional<StDtype> parse_st_dtype(std::string_view s);
uint32_t st_dtype_bits(StDtype t);                      // 4 for F4, 16 for BF16, ...
std::optional<Dtype> to_lmx_dtype(StDtype t);           // the ones an lmx Array can hold as-is
StDtype to_st_dtype(Dtype t);

// Bytes taken by `shape` elements of `t`, or nullopt when the count overflows 64 bits
// or a sub-byte tensor does not end on a byte boundary.
std::optional<uint64_t> st_nbytes(StDtype t, std::span<const int64_t> shape);

struct TensorInfo {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the start of the data buffer
  uint64_t nbytes() const { return end - begin; }
};

// One safetensors file, validated as a whole on construction (so it never exists
// half-loaded) and mapped read-only. Data may be unaligned (MLX writes unpadded
// headers): read it through memcpy or unaligned loads, never through a typed cast.
// Thread-safety: all const members may be called concurrently.
class SafetensorsFile {
 public:
  // Throws lmx::Error "[safetensors] <path>: ..." on any malformed input.
  static SafetensorsFile open(const std::filesystem::path& path);
  // Parses bytes owned by the caller, who keeps them alive (nothing is copied).
  static SafetensorsFile parse_memory(std::span<const std::byte> bytes, std::string display_name);

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  const TensorInfo* find(std::string_view name) const;
  std::span<const std::byte> data(const TensorInfo& t) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }
  uint64_t data_bytes() const { return buffer_.size(); }
  // Holds the mapping alive; pass it to Array::borrow for zero-copy arrays. Empty for
  // parse_memory, whose caller owns the bytes.
  std::shared_ptr<const void> keep_alive() const { return mapping_; }

 private:
  SafetensorsFile() = default;
  void parse(std::span<const std::byte> file);

  std::filesystem::path path_;
  std::shared_ptr<const MappedFile> mapping_;
  std::span<const std::byte> buffer_;  // the data buffer, after the header
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;  // name -> index in tensors_
  std::map<std::string, std::string> metadata_;
};

// A tensor to write. `bytes` must hold exactly st_nbytes(dtype, shape) bytes.
struct NamedTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// The whole file in memory, laid out as the HF writer does: header padded with
// spaces to a multiple of 8, tensors ordered by descending element size, then name.
std::vector<std::byte> serialize_safetensors(const std::vector<NamedTensor>& tensors,
                                             const std::map<std::string, std::string>& metadata = {});
// Same layout, streamed to `path` through a temporary file renamed at the end, so a
// failed write never leaves a half-written file under the final name.
void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A tensor whose bytes are made when the writer reaches it: `fill` gets exactly
// st_nbytes(dtype, shape) bytes to write into. For files larger than memory (`lmx
// random-model llama-3.1-8b` writes 16 GB holding one tensor at a time).
struct DeferredTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  std::function<void(std::span<std::byte>)> fill;
};
// write_safetensors for deferred tensors: the same layout and the same bytes as writing
// the filled tensors at once.
void write_safetensors_streamed(const std::filesystem::path& path, const std::vector<DeferredTensor>& tensors,
                                const std::map<std::string, std::string>& metadata = {});

// A model folder's weights as HF's save_pretrained writes them: dir/model.safetensors where
// they fit in `max_shard_bytes` (0: no limit), else shards of at most that many bytes each
// (a larger tensor alone in its own), model-00001-of-0000N.safetensors and so on in the
// tensors' order, and model.safetensors.index.json mapping each tensor to its shard, with
// metadata.total_size. Weights the folder held before (model.safetensors, shards, an index)
// are removed first. Returns the files written.
std::vector<std::filesystem::path> write_model_weights(const std::filesystem::path& dir,
                                                       const std::vector<DeferredTensor>& tensors,
                                                       const std::map<std::string, std::string>& metadata,
                                                       uint64_t max_shard_bytes);

}  // namespace lmx::io
