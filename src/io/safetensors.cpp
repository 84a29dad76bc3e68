#include "io/safetensors.h"

#include <algorithm>
#include <array>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"
#include "io/mapped_file.h"

namespace lmx::io {

namespace {

constexpr std::string_view kWhere = "safetensors";
// The reference (Rust) reader refuses larger headers; a bigger value means corruption.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// One row per dtype: the only place that names, sizes and lmx equivalents live.
struct DtypeRow {
  StDtype st;
  std::string_view name;
  uint32_t bits;
  std::optional<Dtype> lmx;
};
constexpr std::array<DtypeRow, 22> kDtypes{{
    {StDtype::BOOL, "BOOL", 8, Dtype::boolean},
    {StDtype::U8, "U8", 8, Dtype::u8},
    {StDtype::I8, "I8", 8, Dtype::i8},
    {StDtype::I16, "I16", 16, std::nullopt},
    {StDtype::U16, "U16", 16, std::nullopt},
    {StDtype::I32, "I32", 32, Dtype::i32},
    {StDtype::U32, "U32", 32, Dtype::u32},
    {StDtype::I64, "I64", 64, std::nullopt},
    {StDtype::U64, "U64", 64, std::nullopt},
    {StDtype::F16, "F16", 16, Dtype::f16},
    {StDtype::BF16, "BF16", 16, Dtype::bf16},
    {StDtype::F32, "F32", 32, Dtype::f32},
    {StDtype::F64, "F64", 64, std::nullopt},
    {StDtype::F8_E4M3, "F8_E4M3", 8, std::nullopt},
    {StDtype::F8_E5M2, "F8_E5M2", 8, std::nullopt},
    {StDtype::F8_E8M0, "F8_E8M0", 8, std::nullopt},
    {StDtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8, std::nullopt},
    {StDtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8, std::nullopt},
    {StDtype::F4, "F4", 4, std::nullopt},
    {StDtype::F6_E2M3, "F6_E2M3", 6, std::nullopt},
    {StDtype::F6_E3M2, "F6_E3M2", 6, std::nullopt},
    {StDtype::C64, "C64", 64, std::nullopt},
}};

const DtypeRow& row(StDtype t) {
  for (const auto& r : kDtypes)
    if (r.st == t) return r;
  fail(kWhere, "invalid StDtype value ", int(t));
}

std::string known_dtype_list() {
  std::string s;
  for (const auto& r : kDtypes) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

std::string shape_str(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | uint64_t(p[i]);
  return v;
}

// Finds the first top-level key that appears twice. nlohmann's DOM keeps only the last
// one, and two tensors with one name means the file is corrupt. A separate SAX pass is
// used because nlohmann's callback parser is ~70x slower on multi-MB headers.
class DuplicateKeyScanner : public nlohmann::json_sax<nlohmann::json> {
 public:
  std::string duplicate;

  bool key(string_t& k) override {
    if (depth_ == 1 && duplicate.empty() && !seen_.insert(k).second) duplicate = k;
    return true;
  }
  bool start_object(std::size_t) override { return ++depth_, true; }
  bool end_object() override { return --depth_, true; }
  bool start_array(std::size_t) override { return ++depth_, true; }
  bool end_array() override { return --depth_, true; }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  int depth_ = 0;
  std::set<std::string> seen_;
};

nlohmann::json parse_header_json(std::string_view text, const std::string& file) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    fail(kWhere, file, ": the JSON header is malformed (", json_error_text(e), "; byte ", e.byte,
         " of the header): the file is corrupt; re-download it");
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double
    fail(kWhere, file, ": the JSON header is malformed (", json_error_text(e), "): the file is corrupt; re-download it");
  }
  DuplicateKeyScanner scan;
  nlohmann::json::sax_parse(text.begin(), text.end(), &scan);
  if (!scan.duplicate.empty())
    fail(kWhere, file, ": tensor '", scan.duplicate,
         "' appears twice in the header: the file is corrupt; re-create or re-download it");
  return root;
}

// A JSON value that must be a non-negative integer fitting in int64.
std::optional<uint64_t> as_index(const nlohmann::json& v) {
  if (!v.is_number_unsigned()) return std::nullopt;
  uint64_t x = v.get<uint64_t>();
  if (x > uint64_t(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return x;
}

TensorInfo parse_entry(const std::string& name, const nlohmann::json& e, const std::string& file,
                       uint64_t buffer_bytes) {
  auto bad = [&](auto&&... what) {
    fail(kWhere, file, ": tensor '", name, "': ", what...,
         "; the file is corrupt: re-create or re-download it");
  };
  if (!e.is_object()) bad("its header entry is not a JSON object");
  TensorInfo t;
  t.name = name;

  auto dt = e.find("dtype");
  if (dt == e.end()) bad("missing field 'dtype'");
  if (!dt->is_string()) bad("field 'dtype' is not a string");
  const auto& dts = dt->get_ref<const std::string&>();
  auto parsed = parse_st_dtype(dts);
  if (!parsed)
    fail(kWhere, file, ": tensor '", name, "' has unknown dtype '", dts,
         "' (known: ", known_dtype_list(), "); the file is corrupt or from a newer format version");
  t.dtype = *parsed;

  auto sh = e.find("shape");
  if (sh == e.end()) bad("missing field 'shape'");
  if (!sh->is_array()) bad("field 'shape' is not an array");
  for (const auto& d : *sh) {
    auto v = as_index(d);
    if (!v) bad("field 'shape' holds ", d.dump(), ", not a non-negative integer");
    t.shape.push_back(int64_t(*v));
  }

  auto off = e.find("data_offsets");
  if (off == e.end()) bad("missing field 'data_offsets'");
  if (!off->is_array() || off->size() != 2) bad("field 'data_offsets' is not a [begin, end] pair");
  auto b = as_index((*off)[0]), en = as_index((*off)[1]);
  if (!b || !en) bad("field 'data_offsets' ", off->dump(), " does not hold non-negative integers");
  if (*b > *en) bad("data_offsets ", off->dump(), " end before they begin");
  t.begin = *b;
  t.end = *en;

  auto need = st_nbytes(t.dtype, t.shape);
  if (!need) {
    if (st_dtype_bits(t.dtype) % 8 != 0)
      bad(dts, " shape ", shape_str(t.shape), " does not fill a whole number of bytes");
    bad("shape ", shape_str(t.shape), " has too many elements");
  }
  if (t.nbytes() != *need)
    bad("data_offsets ", off->dump(), " span ", t.nbytes(), " bytes but dtype ", dts, " with shape ",
        shape_str(t.shape), " needs ", *need, " bytes");
  if (t.end > buffer_bytes)
    fail(kWhere, file, ": tensor '", name, "' ends at byte ", t.end, " of the data buffer, which holds only ",
         buffer_bytes, " bytes: the file is truncated or corrupt; re-download it");
  return t;
}

std::map<std::string, std::string> parse_metadata(const nlohmann::json& m, const std::string& file) {
  if (!m.is_object()) fail(kWhere, file, ": '__metadata__' is not a JSON object of strings; the file is corrupt");
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string())
      fail(kWhere, file, ": '__metadata__' entry '", k, "' is ", v.type_name(),
           ", not a string; the file is corrupt");
    out.emplace(k, v.get<std::string>());
  }
  return out;
}

}  // namespace

std::string_view st_dtype_name(StDtype t) { return row(t).name; }
uint32_t st_dtype_bits(StDtype t) { return row(t).bits; }
std::optional<Dtype> to_lmx_dtype(StDtype t) { return row(t).lmx; }

std::optional<StDtype> parse_st_dtype(std::string_view s) {
  for (const auto& r : kDtypes)
    if (r.name == s) return r.st;
  return std::nullopt;
}

StDtype to_st_dtype(Dtype t) {
  for (const auto& r : kDtypes)
    if (r.lmx == t) return r.st;
  fail(kWhere, "no safetensors dtype for lmx dtype ", int(t));
}

std::optional<uint64_t> st_nbytes(StDtype t, std::span<const int64_t> shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, uint64_t(d), &n)) return std::nullopt;
  }
  uint64_t bits = 0;
  if (__builtin_mul_overflow(n, uint64_t(st_dtype_bits(t)), &bits) || bits % 8 != 0) return std::nullopt;
  return bits / 8;
}

SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.mapping_ = MappedFile::open(path, kWhere);
  f.parse(f.mapping_->bytes());
  return f;
}

SafetensorsFile SafetensorsFile::parse_memory(std::span<const std::byte> bytes, std::string display_name) {
  SafetensorsFile f;
  f.path_ = std::move(display_name);
  f.parse(bytes);
  return f;
}

void SafetensorsFile::parse(std::span<const std::byte> file) {
  const std::string fname = path_.string();
  if (file.size() < 8)
    fail(kWhere, fname, ": the file is ", file.size(),
         " bytes, too short for the 8-byte header length: it is truncated or not a safetensors file; "
         "re-download it");
  const uint64_t n = read_u64_le(file.data());
  if (n > kMaxHeaderBytes)
    fail(kWhere, fname, ": the header length is ", n, " bytes, over the 100 MB limit: the file is "
         "corrupt or not a safetensors file");
  if (n > file.size() - 8)
    fail(kWhere, fname, ": the header length (", n, " bytes) runs past the end of the file (",
         file.size(), " bytes): the file is truncated; re-download it");
  std::string_view header(reinterpret_cast<const char*>(file.data() + 8), size_t(n));
  if (header.empty() || header.front() != '{')
    fail(kWhere, fname, ": the JSON header does not start with '{': this is not a safetensors file "
         "or it is corrupt");
  buffer_ = file.subspan(8 + size_t(n));

  const nlohmann::json root = parse_header_json(header, fname);
  tensors_.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__")
      metadata_ = parse_metadata(value, fname);
    else
      tensors_.push_back(parse_entry(key, value, fname, buffer_.size()));
  }

  // The data buffer must be covered exactly once: sorted by offset, each tensor starts
  // where the previous one ended, and the last one ends at the end of the file.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : tensors_) {
    if (t.begin < expected)
      fail(kWhere, fname, ": tensor '", t.name, "' (bytes ", t.begin, "..", t.end, ") overlaps tensor '",
           prev->name, "' (bytes ", prev->begin, "..", prev->end, "); the file is corrupt: re-create it");
    if (t.begin > expected)
      fail(kWhere, fname, ": there is a hole of ", t.begin - expected, " bytes before tensor '", t.name,
           "' (data_offsets start at ", t.begin, ", previous data ends at ", expected,
           "); the file is corrupt: re-create it");
    expected = t.end;
    prev = &t;
  }
  if (expected != buffer_.size())
    fail(kWhere, fname, ": the data buffer holds ", buffer_.size(), " bytes but the tensors cover ", expected,
         (prev ? " (last tensor '" + prev->name + "')" : std::string()),
         "; the file has trailing bytes or a corrupt header: re-create or re-download it");

  for (size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::data(const TensorInfo& t) const {
  LMX_CHECK(t.begin <= t.end && t.end <= buffer_.size(), kWhere, path_.string(), ": tensor '", t.name,
            "' does not belong to this file");
  return buffer_.subspan(size_t(t.begin), size_t(t.nbytes()));
}

}  // namespace lmx::io
