// safetensors round trips, layout and zero-copy access.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <fstream>
#include <numeric>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "io/io_test_util.h"
#include "io/weight_set.h"

namespace lmx::io {
namespace {

using testing::error_of;
using testing::expect_contains;
using testing::st_file;
using testing::TempDir;
using testing::to_bytes;
using testing::write_file;

// Deterministic bytes that differ per tensor so that mixed-up offsets are caught.
std::vector<std::byte> pattern_bytes(size_t n, int seed) {
  std::vector<std::byte> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = std::byte((i * 31 + size_t(seed) * 7 + 1) & 0xff);
  return b;
}

TEST(SafetensorsDtype, TableIsConsistent) {
  for (StDtype t : {StDtype::BOOL, StDtype::U8, StDtype::I16, StDtype::F64, StDtype::F8_E5M2FNUZ, StDtype::F4,
                    StDtype::F6_E3M2, StDtype::C64}) {
    auto name = st_dtype_name(t);
    ASSERT_EQ(parse_st_dtype(name), t) << name;
  }
  EXPECT_FALSE(parse_st_dtype("F7"));
  EXPECT_FALSE(parse_st_dtype("bf16"));  // case matters in the format
  for (Dtype d : kAllDtypes) {
    EXPECT_EQ(to_lmx_dtype(to_st_dtype(d)), d);
    EXPECT_EQ(st_dtype_bits(to_st_dtype(d)), itemsize(d) * 8);
  }
  EXPECT_FALSE(to_lmx_dtype(StDtype::I64));
  EXPECT_FALSE(to_lmx_dtype(StDtype::F8_E4M3));
}

TEST(SafetensorsDtype, ByteSizes) {
  const int64_t s23[] = {2, 3};
  EXPECT_EQ(st_nbytes(StDtype::BF16, s23), 12u);
  EXPECT_EQ(st_nbytes(StDtype::C64, s23), 48u);
  EXPECT_EQ(st_nbytes(StDtype::F32, {}), 4u);  // rank 0 holds one element
  const int64_t zero[] = {4, 0, 3};
  EXPECT_EQ(st_nbytes(StDtype::F64, zero), 0u);
  const int64_t four[] = {4};
  EXPECT_EQ(st_nbytes(StDtype::F4, four), 2u);
  EXPECT_EQ(st_nbytes(StDtype::F6_E2M3, four), 3u);
  const int64_t three[] = {3};
  EXPECT_FALSE(st_nbytes(StDtype::F4, three));  // 12 bits: not a whole byte
  const int64_t huge[] = {int64_t(1) << 40, int64_t(1) << 30};
  EXPECT_FALSE(st_nbytes(StDtype::F32, huge));  // overflows 64 bits
}

TEST(SafetensorsRoundTrip, EveryDtypeAndShape) {
  struct Case {
    std::string name;
    StDtype dtype;
    std::vector<int64_t> shape;
  };
  std::vector<Case> cases = {
      {"scalar_f32", StDtype::F32, {}},      {"vec_f16", StDtype::F16, {5}},
      {"mat_bf16", StDtype::BF16, {3, 4}},   {"i32", StDtype::I32, {2, 2, 2}},
      {"u32", StDtype::U32, {7}},            {"u8", StDtype::U8, {3}},
      {"i8", StDtype::I8, {1, 5}},           {"bool", StDtype::BOOL, {4}},
      {"i64", StDtype::I64, {3}},            {"f64", StDtype::F64, {2, 1}},
      {"empty_f32", StDtype::F32, {0, 8}},   {"empty_i64", StDtype::I64, {0}},
      {"fp8", StDtype::F8_E4M3, {6}},        {"f4", StDtype::F4, {2, 4}},
  };
  std::vector<std::vector<std::byte>> data;
  std::vector<NamedTensor> tensors;
  for (size_t i = 0; i < cases.size(); ++i) {
    data.push_back(pattern_bytes(*st_nbytes(cases[i].dtype, cases[i].shape), int(i)));
    tensors.push_back({cases[i].name, cases[i].dtype, cases[i].shape, data.back()});
  }
  TempDir dir;
  const auto path = dir / "rt.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}});
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".partial"));

  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.tensors().size(), cases.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "round trip");
  for (size_t i = 0; i < cases.size(); ++i) {
    const TensorInfo* t = f.find(cases[i].name);
    ASSERT_NE(t, nullptr) << cases[i].name;
    EXPECT_EQ(t->dtype, cases[i].dtype);
    EXPECT_EQ(t->shape, cases[i].shape);
    auto bytes = f.data(*t);
    ASSERT_EQ(bytes.size(), data[i].size());
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), data[i].begin())) << cases[i].name;
  }
  EXPECT_EQ(f.find("absent"), nullptr);

  // The same bytes come out of the in-memory serializer.
  auto mem = serialize_safetensors(tensors, {{"format", "pt"}, {"note", "round trip"}});
  EXPECT_EQ(std::filesystem::file_size(path), mem.size());
}

TEST(SafetensorsRoundTrip, HfLayoutPaddedAndOrdered) {
  auto a = pattern_bytes(4, 1), b = pattern_bytes(8 * 3, 2), c = pattern_bytes(2 * 3, 3), d = pattern_bytes(8, 4);
  std::vector<NamedTensor> tensors = {{"z_u8", StDtype::U8, {4}, a},
                                      {"b_f64", StDtype::F64, {3}, b},
                                      {"a_bf16", StDtype::BF16, {3}, c},
                                      {"a_f64", StDtype::F64, {1}, d}};
  auto bytes = serialize_safetensors(tensors);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(char(bytes[8 + n - 1]) == ' ' || char(bytes[8 + n - 1]) == '}', true);
  const auto f = SafetensorsFile::parse_memory(bytes, "mem");
  std::vector<std::string> order;
  for (const auto& t : f.tensors()) order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"a_f64", "b_f64", "a_bf16", "z_u8"}));
  // Largest elements first: every tensor starts aligned to its element size.
  for (const auto& t : f.tensors()) {
    const auto addr = reinterpret_cast<uintptr_t>(f.data(t).data()) - reinterpret_cast<uintptr_t>(bytes.data());
    EXPECT_EQ(addr % (st_dtype_bits(t.dtype) / 8), 0u) << t.name;
  }
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.keep_alive(), nullptr);  // parse_memory: the caller owns the bytes
}

TEST(SafetensorsRoundTrip, EmptyFileHasNoTensors) {
  auto bytes = serialize_safetensors({});
  const auto f = SafetensorsFile::parse_memory(bytes, "empty");
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.data_bytes(), 0u);
}

TEST(SafetensorsRoundTrip, WriterRejectsBadInput) {
  auto b = pattern_bytes(4, 0);
  auto msg = error_of([&] { serialize_safetensors({{"x", StDtype::F32, {2}, b}}); });
  expect_contains(msg, {"[safetensors]", "tensor 'x'", "4 bytes"});
  msg = error_of([&] { serialize_safetensors({{"x", StDtype::F32, {1}, b}, {"x", StDtype::F32, {1}, b}}); });
  expect_contains(msg, {"tensor 'x' is given twice"});
  msg = error_of([&] { serialize_safetensors({{"__metadata__", StDtype::F32, {1}, b}}); });
  expect_contains(msg, {"__metadata__"});
  TempDir dir;
  msg = error_of([&] { write_safetensors(dir / "no/such/dir/x.safetensors", {{"x", StDtype::F32, {1}, b}}); });
  expect_contains(msg, {"[safetensors]", "x.safetensors", "cannot create"});
}

// The streamed writer makes each tensor's bytes when it reaches it, and writes the file
// the in-memory serializer would: the same header, order and data, byte for byte. A fill
// that fails leaves no file behind, and neither does an invalid shape.
TEST(SafetensorsRoundTrip, StreamedWriterMatchesTheSerializer) {
  const std::vector<std::vector<int64_t>> shapes = {{3, 4}, {5}, {}, {0, 2}};
  const std::vector<StDtype> dtypes = {StDtype::BF16, StDtype::F32, StDtype::F64, StDtype::U8};
  const std::vector<std::string> names = {"w.bf16", "b.f32", "s.f64", "e.u8"};
  std::vector<std::vector<std::byte>> data;
  std::vector<NamedTensor> eager;
  std::vector<DeferredTensor> deferred;
  int filled = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    data.push_back(pattern_bytes(*st_nbytes(dtypes[i], shapes[i]), int(i) + 7));
    eager.push_back({names[i], dtypes[i], shapes[i], data.back()});
  }
  for (size_t i = 0; i < shapes.size(); ++i)
    deferred.push_back({names[i], dtypes[i], shapes[i], [&, i](std::span<std::byte> out) {
                          ASSERT_EQ(out.size(), data[i].size());
                          std::copy(data[i].begin(), data[i].end(), out.begin());
                          ++filled;
                        }});
  TempDir dir;
  const auto path = dir / "streamed.safetensors";
  write_safetensors_streamed(path, deferred, {{"format", "pt"}});
  EXPECT_EQ(filled, 4);
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".partial"));
  const std::vector<std::byte> want = serialize_safetensors(eager, {{"format", "pt"}});
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin(), [](std::byte a, char b) { return a == std::byte(b); }));

  const auto failed = dir / "failed.safetensors";
  deferred[1].fill = [](std::span<std::byte>) { throw std::runtime_error("out of randomness"); };
  EXPECT_THROW(write_safetensors_streamed(failed, deferred), std::runtime_error);
  EXPECT_FALSE(std::filesystem::exists(failed));
  EXPECT_FALSE(std::filesystem::exists(failed.string() + ".partial"));
  const auto msg = error_of(
      [&] { write_safetensors_streamed(failed, {{"x", StDtype::F32, {-1}, [](std::span<std::byte>) {}}}); });
  expect_contains(msg, {"[safetensors]", "tensor 'x'", "invalid"});
  EXPECT_FALSE(std::filesystem::exists(failed));
}

// A model folder's weights in shards past a size, as save_pretrained writes them: the
// loader's WeightSet reads every tensor back from the shard the index names.
TEST(SafetensorsRoundTrip, ModelWeightsShardPastTheLimit) {
  const std::vector<int64_t> sizes = {40, 10, 30, 200, 5, 60};  // f32 elements: 160, 40, 120, 800, 20, 240 bytes
  std::vector<std::vector<std::byte>> data;
  std::vector<DeferredTensor> tensors;
  for (size_t i = 0; i < sizes.size(); ++i) {
    data.push_back(pattern_bytes(size_t(sizes[i]) * 4, int(i) + 3));
    tensors.push_back({"t" + std::to_string(i), StDtype::F32, {sizes[i]}, [&, i](std::span<std::byte> out) {
                         std::copy(data[i].begin(), data[i].end(), out.begin());
                       }});
  }
  TempDir dir;
  // 300 bytes a shard: {t0, t1}, {t2}, {t3} (alone, past the limit), {t4, t5}.
  const auto files = write_model_weights(dir.path(), tensors, {{"format", "pt"}}, 300);
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(files[0].filename(), "model-00001-of-00004.safetensors");
  EXPECT_EQ(files[3].filename(), "model-00004-of-00004.safetensors");
  const nlohmann::json index = nlohmann::json::parse(std::ifstream(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 1380);
  EXPECT_EQ(index["weight_map"]["t3"], "model-00003-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["t5"], "model-00004-of-00004.safetensors");
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
  const WeightSet ws = WeightSet::open_dir(dir.path());
  ASSERT_EQ(ws.size(), sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    const auto got = ws.data("t" + std::to_string(i));
    EXPECT_TRUE(std::equal(got.begin(), got.end(), data[i].begin(), data[i].end())) << i;
  }
  // Under the limit (or with none): one file, and the index written before goes.
  EXPECT_EQ(write_model_weights(dir.path(), tensors, {}, 0).size(), 1u);
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  EXPECT_EQ(WeightSet::open_dir(dir.path()).size(), sizes.size());
}

// MLX writes the header without padding, so data starts at an odd address; the reader
// must hand out the bytes without assuming alignment.
TEST(SafetensorsRead, UnalignedUnpaddedHeader) {
  const float vals[3] = {1.5f, -2.25f, 3.0f};
  // A 1-byte u8 tensor first, and a header of odd length, put the floats at an odd address.
  const std::string data = std::string(1, '\x07') + std::string(reinterpret_cast<const char*>(vals), sizeof vals);
  std::string header =
      R"({"__metadata__":{"format":"mlx"},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("w":{"dtype":"F32","shape":[3],"data_offsets":[1,13]}})";
  if (header.size() % 2 == 1) header += ' ';  // data at 8 + header + 1: odd
  TempDir dir;
  const auto path = dir / "mlx.safetensors";
  write_file(path, st_file(header, data));
  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("format"), "mlx");
  auto bytes = f.data(*f.find("w"));
  ASSERT_EQ(bytes.size(), 12u);
  EXPECT_NE(reinterpret_cast<uintptr_t>(bytes.data()) % 4, 0u);
  float got[3];
  std::memcpy(got, bytes.data(), sizeof got);
  EXPECT_EQ(got[0], 1.5f);
  EXPECT_EQ(got[1], -2.25f);
  EXPECT_EQ(got[2], 3.0f);
  EXPECT_EQ(std::to_integer<int>(f.data(*f.find("b"))[0]), 7);
}

TEST(SafetensorsRead, SpacePaddedHeaderAndZeroSizeTensorsShareOffsets) {
  const std::string header =
      R"({"e1":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"s":{"dtype":"I32","shape":[],"data_offsets":[0,4]},)"
      R"("e2":{"dtype":"BF16","shape":[2,0],"data_offsets":[4,4]}}    )";
  auto bytes = to_bytes(st_file(header, std::string("\x2a\0\0\0", 4)));
  const auto f = SafetensorsFile::parse_memory(bytes, "pad");
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_TRUE(f.find("s")->shape.empty());
  EXPECT_EQ(f.data(*f.find("e2")).size(), 0u);
  int32_t v = 0;
  std::memcpy(&v, f.data(*f.find("s")).data(), 4);
  EXPECT_EQ(v, 42);
}

TEST(SafetensorsRead, KeepAliveOutlivesTheFileObject) {
  auto d = pattern_bytes(16, 9);
  TempDir dir;
  const auto path = dir / "k.safetensors";
  write_safetensors(path, {{"t", StDtype::U8, {16}, d}});
  std::shared_ptr<const void> keep;
  const std::byte* p = nullptr;
  {
    auto f = SafetensorsFile::open(path);
    keep = f.keep_alive();
    p = f.data(*f.find("t")).data();
    SafetensorsFile moved = std::move(f);  // moving keeps the mapping and the infos valid
    EXPECT_EQ(moved.data(*moved.find("t")).data(), p);
  }
  ASSERT_NE(keep, nullptr);
  EXPECT_TRUE(std::equal(p, p + 16, d.begin()));  // still mapped after the file object is gone
}

TEST(SafetensorsRead, FixtureModelsOpen) {
  const std::filesystem::path root = std::filesystem::path(LMX_FIXTURES_DIR) / "models";
  if (!std::filesystem::exists(root)) GTEST_SKIP() << "no fixtures";
  int opened = 0;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    const auto f = SafetensorsFile::open(e.path() / "model.safetensors");
    ASSERT_NE(f.find("model.embed_tokens.weight"), nullptr) << e.path();
    uint64_t sum = 0;
    for (const auto& t : f.tensors()) sum += t.nbytes();
    EXPECT_EQ(sum, f.data_bytes());
    ++opened;
  }
  EXPECT_GT(opened, 0);
}

}  // namespace
}  // namespace lmx::io
