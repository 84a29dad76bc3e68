// The safetensors writer: HF layout (padded header, tensors by descending element size).
#include <algorithm>
#include <cerrno>
#include <cstdio>
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

// What the layout needs of a tensor, eager or deferred.
struct Entry {
  const std::string* name;
  StDtype dtype;
  const std::vector<int64_t>* shape;
  size_t nbytes;
};

struct Layout {
  std::string header;         // JSON padded with spaces to a multiple of 8
  std::vector<size_t> order;  // indices of the tensors in data order
};

Layout plan(const std::vector<Entry>& tensors, const std::map<std::string, std::string>& metadata,
            const std::string& file) {
  Layout l;
  std::set<std::string_view> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Entry& t = tensors[i];
    if (*t.name == "__metadata__") fail(kWhere, file, ": '__metadata__' cannot be used as a tensor name");
    if (!names.insert(*t.name).second) fail(kWhere, file, ": tensor '", *t.name, "' is given twice");
    l.order.push_back(i);
  }
  // Largest elements first keeps every tensor aligned to its element size when the
  // header is padded to 8 bytes, as the HF writer does.
  std::sort(l.order.begin(), l.order.end(), [&](size_t a, size_t b) {
    uint32_t ba = st_dtype_bits(tensors[a].dtype), bb = st_dtype_bits(tensors[b].dtype);
    return ba != bb ? ba > bb : *tensors[a].name < *tensors[b].name;
  });

  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : l.order) {
    const Entry& t = tensors[i];
    uint64_t end = offset + t.nbytes;
    h[*t.name] = {{"dtype", st_dtype_name(t.dtype)}, {"shape", *t.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  l.header = h.dump();
  l.header.append((8 - l.header.size() % 8) % 8, ' ');
  return l;
}

// A tensor's entry, its size from its dtype and shape.
Entry entry(const std::string& name, StDtype dtype, const std::vector<int64_t>& shape,
            const std::string& file) {
  const auto need = st_nbytes(dtype, shape);
  if (!need) fail(kWhere, file, ": tensor '", name, "' has a shape whose size is invalid");
  return {&name, dtype, &shape, size_t(*need)};
}

std::vector<Entry> entries(const std::vector<NamedTensor>& tensors, const std::string& file) {
  std::vector<Entry> out;
  for (const NamedTensor& t : tensors) {
    out.push_back(entry(t.name, t.dtype, t.shape, file));
    if (out.back().nbytes != t.bytes.size())
      fail(kWhere, file, ": tensor '", t.name, "' has ", t.bytes.size(),
           " bytes of data but its dtype ", st_dtype_name(t.dtype), " and shape need ",
           out.back().nbytes);
  }
  return out;
}

void put_u64_le(std::byte* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = std::byte((v >> (8 * i)) & 0xff);
}

// Writes the header, then each tensor in layout order through write(index, stream), to
// a temporary file renamed at the end, so a failed write never leaves a half-written file
// under the final name.
template <class Write>
void write_file(const std::filesystem::path& path, const Layout& l, Write&& write) {
  const std::string file = path.string();
  const std::filesystem::path tmp = path.string() + ".partial";
  {
    std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
    if (!os) fail(kWhere, file, ": cannot create '", tmp.string(), "': ", std::strerror(errno));
    std::byte len[8];
    put_u64_le(len, l.header.size());
    os.write(reinterpret_cast<const char*>(len), 8);
    os.write(l.header.data(), std::streamsize(l.header.size()));
    try {
      for (size_t i : l.order) write(i, os);
    } catch (...) {  // a deferred tensor's fill failed: leave nothing behind
      os.close();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw;
    }
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

}  // namespace

std::vector<std::byte> serialize_safetensors(const std::vector<NamedTensor>& tensors,
                                             const std::map<std::string, std::string>& metadata) {
  Layout l = plan(entries(tensors, "<memory>"), metadata, "<memory>");
  size_t total = 8 + l.header.size();
  for (size_t i : l.order) total += tensors[i].bytes.size();
  std::vector<std::byte> out(total);
  put_u64_le(out.data(), l.header.size());
  std::memcpy(out.data() + 8, l.header.data(), l.header.size());
  size_t pos = 8 + l.header.size();
  for (size_t i : l.order) {
    const NamedTensor& t = tensors[i];
    if (!t.bytes.empty()) std::memcpy(out.data() + pos, t.bytes.data(), t.bytes.size());
    pos += t.bytes.size();
  }
  return out;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const Layout l = plan(entries(tensors, path.string()), metadata, path.string());
  write_file(path, l, [&](size_t i, std::ofstream& os) {
    os.write(reinterpret_cast<const char*>(tensors[i].bytes.data()), std::streamsize(tensors[i].bytes.size()));
  });
}

void write_safetensors_streamed(const std::filesystem::path& path, const std::vector<DeferredTensor>& tensors,
                                const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();
  std::vector<Entry> es;
  for (const DeferredTensor& t : tensors) {
    if (!t.fill) fail(kWhere, file, ": tensor '", t.name, "' has nothing to fill it");
    es.push_back(entry(t.name, t.dtype, t.shape, file));
  }
  const Layout l = plan(es, metadata, file);
  std::vector<std::byte> buffer;
  write_file(path, l, [&](size_t i, std::ofstream& os) {
    buffer.assign(es[i].nbytes, std::byte{0});
    tensors[i].fill(buffer);
    os.write(reinterpret_cast<const char*>(buffer.data()), std::streamsize(buffer.size()));
  });
}

std::vector<std::filesystem::path> write_model_weights(const std::filesystem::path& dir,
                                                       const std::vector<DeferredTensor>& tensors,
                                                       const std::map<std::string, std::string>& metadata,
                                                       uint64_t max_shard_bytes) {
  // The shards: consecutive tensors, a new shard where the next would pass the limit.
  std::vector<std::vector<DeferredTensor>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const DeferredTensor& t : tensors) {
    const uint64_t n = entry(t.name, t.dtype, t.shape, dir.string()).nbytes;
    if (max_shard_bytes > 0 && in_shard > 0 && in_shard + n > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(t);
    in_shard += n;
    total += n;
  }
  // Weights a folder held before go first: the loader reads every *.safetensors of a folder
  // without an index, and would find each tensor twice.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    int a = 0, b = 0, used = 0;
    const bool shard = std::sscanf(f.c_str(), "model-%5d-of-%5d.safetensors%n", &a, &b, &used) == 2 &&
                       size_t(used) == f.size();
    if (shard || f == "model.safetensors" || f == "model.safetensors.index.json") std::filesystem::remove(e.path(), ec);
  }
  if (shards.size() == 1) {
    write_safetensors_streamed(dir / "model.safetensors", tensors, metadata);
    return {dir / "model.safetensors"};
  }
  std::vector<std::filesystem::path> out;
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}},
                                  {"weight_map", nlohmann::ordered_json::object()}};
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors_streamed(dir / name, shards[i], metadata);
    for (const DeferredTensor& t : shards[i]) index["weight_map"][t.name] = name;
    out.push_back(dir / name);
  }
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";
  {
    std::ofstream f(index_path);
    f << index.dump(2) << "\n";
    if (!f.good()) fail(kWhere, index_path.string(), ": cannot write");
  }
  out.push_back(index_path);
  return out;
}

}  // namespace lmx::io
