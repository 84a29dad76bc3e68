// WeightSet: single files, sharded checkpoints with an index, the mlx-lm glob fallback.
#include "io/weight_set.h"

#include <gtest/gtest.h>

#include "io/io_test_util.h"

namespace lmx::io {
namespace {

using testing::error_of;
using testing::expect_contains;
using testing::TempDir;
using testing::write_file;

// Writes one shard holding U8 tensors named `names`, each filled with its index.
void write_shard(const std::filesystem::path& p, const std::vector<std::string>& names) {
  std::vector<std::vector<std::byte>> data;
  std::vector<NamedTensor> tensors;
  data.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    data.push_back(std::vector<std::byte>(i + 1, std::byte(i + 1)));
    tensors.push_back({names[i], StDtype::U8, {int64_t(i + 1)}, data.back()});
  }
  write_safetensors(p, tensors);
}

std::string index_json(const std::vector<std::pair<std::string, std::string>>& map) {
  std::string s = R"({"metadata":{"total_size":0},"weight_map":{)";
  for (size_t i = 0; i < map.size(); ++i) {
    if (i) s += ',';
    s.append("\"").append(map[i].first).append("\":\"").append(map[i].second).append("\"");
  }
  return s + "}}";
}

TEST(SafetensorsWeightSet, SingleFile) {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"a", "b"});
  write_shard(dir / "golden.safetensors", {"a"});  // not model*: ignored
  const auto ws = WeightSet::open_dir(dir.path());
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ws.total_bytes(), 3u);
  EXPECT_EQ(ws.files().size(), 1u);
  EXPECT_EQ(ws.file_of("b"), dir / "model.safetensors");
  EXPECT_EQ(ws.data("b").size(), 2u);
  EXPECT_EQ(std::to_integer<int>(ws.data("b")[1]), 2);
  EXPECT_NE(ws.keep_alive("a"), nullptr);
  EXPECT_EQ(ws.find("zzz"), nullptr);
  expect_contains(error_of([&] { ws.at("zzz"); }), {"[weights]", dir.path().string(), "tensor 'zzz'"});
}

TEST(SafetensorsWeightSet, ShardsWithIndex) {
  TempDir dir;
  write_shard(dir / "model-00001-of-00002.safetensors", {"l0.w", "l0.b"});
  write_shard(dir / "model-00002-of-00002.safetensors", {"l1.w"});
  write_file(dir / "model.safetensors.index.json",
             index_json({{"l0.w", "model-00001-of-00002.safetensors"},
                         {"l0.b", "model-00001-of-00002.safetensors"},
                         {"l1.w", "model-00002-of-00002.safetensors"}}));
  auto ws = WeightSet::open_dir(dir.path());
  EXPECT_EQ(ws.size(), 3u);
  EXPECT_EQ(ws.file_of("l1.w").filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(ws.at("l1.w").shape, std::vector<int64_t>{1});
  EXPECT_EQ(ws.total_bytes(), 1u + 2u + 1u);
  WeightSet moved = std::move(ws);  // infos stay valid across a move
  EXPECT_EQ(moved.data("l0.b").size(), 2u);
}

TEST(SafetensorsWeightSet, GlobFallbackWithoutIndex) {
  TempDir dir;
  write_shard(dir / "model-00002-of-00002.safetensors", {"y"});
  write_shard(dir / "model-00001-of-00002.safetensors", {"x"});
  const auto ws = WeightSet::open_dir(dir.path());
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(ws.files()[0].path().filename(), "model-00001-of-00002.safetensors");  // sorted
}

TEST(SafetensorsWeightSet, NoWeights) {
  TempDir dir;
  write_file(dir / "config.json", "{}");
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }),
                  {"[weights]", dir.path().string(), "no weights found", "model.safetensors"});
  expect_contains(error_of([&] { WeightSet::open_dir(dir / "nope"); }), {"not a directory"});
}

TEST(SafetensorsWeightSet, MissingShard) {
  TempDir dir;
  write_shard(dir / "model-00001-of-00002.safetensors", {"a"});
  write_file(dir / "model.safetensors.index.json", index_json({{"a", "model-00001-of-00002.safetensors"},
                                                               {"b", "model-00002-of-00002.safetensors"}}));
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }),
                  {"[weights]", "shard 'model-00002-of-00002.safetensors'", "missing", "re-download"});
}

TEST(SafetensorsWeightSet, TensorMissingFromItsShard) {
  TempDir dir;
  write_shard(dir / "model-00001-of-00001.safetensors", {"a"});
  write_file(dir / "model.safetensors.index.json", index_json({{"a", "model-00001-of-00001.safetensors"},
                                                               {"ghost", "model-00001-of-00001.safetensors"}}));
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }),
                  {"tensor 'ghost'", "model-00001-of-00001.safetensors", "does not hold it"});
}

TEST(SafetensorsWeightSet, TensorInWrongShard) {
  TempDir dir;
  write_shard(dir / "model-1.safetensors", {"a"});
  write_shard(dir / "model-2.safetensors", {"b"});
  write_file(dir / "model.safetensors.index.json",
             index_json({{"a", "model-2.safetensors"}, {"b", "model-1.safetensors"}}));
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }), {"tensor '", "does not hold it"});
}

TEST(SafetensorsWeightSet, DuplicateAcrossShards) {
  TempDir dir;
  write_shard(dir / "model-a.safetensors", {"w", "x"});
  write_shard(dir / "model-b.safetensors", {"w"});
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }),
                  {"[weights]", "tensor 'w'", "model-a.safetensors", "model-b.safetensors"});
}

TEST(SafetensorsWeightSet, BadIndex) {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"a"});
  write_file(dir / "model.safetensors.index.json", "{\"weight_map\": {\"a\": ");
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }),
                  {"[weights]", "model.safetensors.index.json", "malformed JSON", "line 1"});
  write_file(dir / "model.safetensors.index.json", R"({"metadata":{}})");
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }), {"missing object 'weight_map'"});
  write_file(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"../model.safetensors"}})");
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }), {"tensor 'a'", "not a file name inside"});
}

TEST(SafetensorsWeightSet, BrokenShardNamesItsFile) {
  TempDir dir;
  write_file(dir / "model.safetensors", std::string("\x05\0\0", 3));
  expect_contains(error_of([&] { WeightSet::open_dir(dir.path()); }),
                  {"[safetensors]", (dir / "model.safetensors").string(), "truncated"});
}

}  // namespace
}  // namespace lmx::io
