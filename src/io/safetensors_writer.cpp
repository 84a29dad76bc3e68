// The safetensors writer: HF layout (padded header, tensors by descending element size).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace lmx::io {

namespace {

constexpr std::string_view kWhere = "safetensors";

struct Layout {
  std::string header;                    // JSON padded with spaces to a multiple of 8
  std::vector<const NamedTensor*> order;  // tensors in data order
};

Layout plan(const std::vector<NamedTensor>& tensors, const std::map<std::string, std::string>& metadata,
            const std::string& file) {
  Layout l;
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__") fail(kWhere, file, ": '__metadata__' cannot be used as a tensor name");
    if (!names.insert(t.name).second) fail(kWhere, file, ": tensor '", t.name, "' is given twice");
    auto need = st_nbytes(t.dtype, t.shape);
    if (!need || *need != t.bytes.size())
      fail(kWhere, file, ": tensor '", t.name, "' has ", t.bytes.size(), " bytes of data but its dtype ",
           st_dtype_name(t.dtype), " and shape need ", need ? std::to_string(*need) : "an invalid size");
    l.order.push_back(&t);
  }
  // Largest elements first keeps every tensor aligned to its element size when the
  // header is padded to 8 bytes, as the HF writer does.
  std::sort(l.order.begin(), l.order.end(), [](const NamedTensor* a, const NamedTensor* b) {
    uint32_t ba = st_dtype_bits(a->dtype), bb = st_dtype_bits(b->dtype);
    return ba != bb ? ba > bb : a->name < b->name;
  });

  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const NamedTensor* t : l.order) {
    uint64_t end = offset + t->bytes.size();
    h[t->name] = {{"dtype", st_dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  l.header = h.dump();
  l.header.append((8 - l.header.size() % 8) % 8, ' ');
  return l;
}

void put_u64_le(std::byte* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = std::byte((v >> (8 * i)) & 0xff);
}

}  // namespace

std::vector<std::byte> serialize_safetensors(const std::vector<NamedTensor>& tensors,
                                             const std::map<std::string, std::string>& metadata) {
  Layout l = plan(tensors, metadata, "<memory>");
  size_t total = 8 + l.header.size();
  for (const NamedTensor* t : l.order) total += t->bytes.size();
  std::vector<std::byte> out(total);
  put_u64_le(out.data(), l.header.size());
  std::memcpy(out.data() + 8, l.header.data(), l.header.size());
  size_t pos = 8 + l.header.size();
  for (const NamedTensor* t : l.order) {
    if (!t->bytes.empty()) std::memcpy(out.data() + pos, t->bytes.data(), t->bytes.size());
    pos += t->bytes.size();
  }
  return out;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();
  Layout l = plan(tensors, metadata, file);
  const std::filesystem::path tmp = path.string() + ".partial";
  {
    std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
    if (!os) fail(kWhere, file, ": cannot create '", tmp.string(), "': ", std::strerror(errno));
    std::byte len[8];
    put_u64_le(len, l.header.size());
    os.write(reinterpret_cast<const char*>(len), 8);
    os.write(l.header.data(), std::streamsize(l.header.size()));
    for (const NamedTensor* t : l.order)
      os.write(reinterpret_cast<const char*>(t->bytes.data()), std::streamsize(t->bytes.size()));
    os.flush();
    if (!os) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      fail(kWhere, file, ": writing failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    fail(kWhere, file, ": cannot move the finished file into place: ", why);
  }
}

}  // namespace lmx::io
