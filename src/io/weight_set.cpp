#include "io/weight_set.h"

#include <algorithm>
#include <set>

#include "core/error.h"
#include "io/json_file.h"

namespace lmx::io {

namespace {

constexpr std::string_view kWhere = "weights";
constexpr std::string_view kIndexName = "model.safetensors.index.json";

// Shard file names from the index's weight_map, checked to stay inside the directory.
std::vector<std::pair<std::string, std::string>> read_weight_map(const std::filesystem::path& index_path) {
  const std::string file = index_path.string();
  nlohmann::json j = read_json_file(index_path, kWhere);
  if (!j.is_object()) fail(kWhere, file, ": expected a JSON object");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object())
    fail(kWhere, file, ": missing object 'weight_map' (tensor name -> shard file); re-download the index");
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string())
      fail(kWhere, file, ": weight_map entry for tensor '", tensor, "' is ", json_kind(shard), ", not a file name");
    const auto& s = shard.get_ref<const std::string&>();
    std::filesystem::path p(s);
    if (s.empty() || p.is_absolute() || p.has_parent_path())
      fail(kWhere, file, ": weight_map entry for tensor '", tensor, "' names '", s,
           "', which is not a file name inside the model directory");
    out.emplace_back(tensor, s);
  }
  return out;
}

std::vector<std::filesystem::path> glob_model_files(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && name.starts_with("model") && name.ends_with(".safetensors"))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

WeightSet WeightSet::from_files(std::vector<SafetensorsFile> files, std::filesystem::path dir) {
  WeightSet ws;
  ws.dir_ = std::move(dir);
  ws.files_ = std::move(files);
  for (size_t f = 0; f < ws.files_.size(); ++f) {
    for (const TensorInfo& t : ws.files_[f].tensors()) {
      auto [it, inserted] = ws.index_.emplace(t.name, Loc{f, &t});
      if (!inserted)
        fail(kWhere, ws.dir_.string(), ": tensor '", t.name, "' is in both ",
             ws.files_[it->second.file].path().filename().string(), " and ",
             ws.files_[f].path().filename().string(),
             ": remove the stale file (mixed downloads of two versions?) or re-download the model");
      ws.total_bytes_ += t.nbytes();
    }
  }
  return ws;
}

WeightSet WeightSet::open_dir(const std::filesystem::path& dir) {
  const std::string dname = dir.string();
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    fail(kWhere, dname, ": not a directory (expected a model directory with config.json and *.safetensors)");

  const auto index_path = dir / kIndexName;
  if (!std::filesystem::exists(index_path, ec)) {
    auto paths = glob_model_files(dir);
    if (paths.empty())
      fail(kWhere, dname, ": no weights found: expected model.safetensors, or shards listed in ", kIndexName,
           ", or model*.safetensors files; download the model's safetensors files");
    std::vector<SafetensorsFile> files;
    for (const auto& p : paths) files.push_back(SafetensorsFile::open(p));
    return from_files(std::move(files), dir);
  }

  const auto weight_map = read_weight_map(index_path);
  std::set<std::string> shard_names;
  for (const auto& [tensor, shard] : weight_map) shard_names.insert(shard);
  std::vector<SafetensorsFile> files;
  for (const auto& shard : shard_names) {
    const auto p = dir / shard;
    if (!std::filesystem::exists(p, ec))
      fail(kWhere, dname, ": shard '", shard, "' named by ", kIndexName,
           " is missing: the download is incomplete; re-download the model");
    files.push_back(SafetensorsFile::open(p));
  }
  WeightSet ws = from_files(std::move(files), dir);
  for (const auto& [tensor, shard] : weight_map) {
    const TensorInfo* t = ws.find(tensor);
    if (!t || ws.file_of(tensor).filename() != shard)
      fail(kWhere, dname, ": tensor '", tensor, "' is listed in ", kIndexName, " under shard '", shard,
           "' but that shard does not hold it: the shard or the index is stale; re-download the model");
  }
  return ws;
}

const WeightSet::Loc& WeightSet::locate(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    fail(kWhere, dir_.string(), ": tensor '", name, "' is not in the model's weights (", index_.size(),
         " tensors); the checkpoint does not match the architecture in config.json");
  return it->second;
}

const TensorInfo* WeightSet::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.info;
}

const TensorInfo& WeightSet::at(std::string_view name) const { return *locate(name).info; }

std::span<const std::byte> WeightSet::data(std::string_view name) const {
  const Loc& l = locate(name);
  return files_[l.file].data(*l.info);
}

std::vector<std::string> WeightSet::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, loc] : index_) out.push_back(name);
  return out;
}

const std::filesystem::path& WeightSet::file_of(std::string_view name) const {
  return files_[locate(name).file].path();
}

std::shared_ptr<const void> WeightSet::keep_alive(std::string_view name) const {
  return files_[locate(name).file].keep_alive();
}

}  // namespace lmx::io
