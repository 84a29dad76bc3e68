// Every malformed safetensors input ends in a clean lmx::Error naming the file and,
// where one is involved, the tensor.
#include <gtest/gtest.h>

#include "io/io_test_util.h"
#include "io/safetensors.h"

namespace lmx::io {
namespace {

using testing::error_of;
using testing::expect_contains;
using testing::st_file;
using testing::TempDir;
using testing::to_bytes;
using testing::write_file;

std::string parse_error(const std::string& file_bytes) {
  auto bytes = to_bytes(file_bytes);
  return error_of([&] { SafetensorsFile::parse_memory(bytes, "bad.safetensors"); });
}

std::string entry(std::string_view name, std::string_view dtype, std::string_view shape, uint64_t b, uint64_t e) {
  return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) + "\",\"shape\":" + std::string(shape) +
         ",\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
}

// A valid two-tensor file used as the base for the truncation sweep.
std::vector<std::byte> small_valid_file() {
  std::vector<std::byte> a(12, std::byte{1}), b(6, std::byte{2});
  return serialize_safetensors({{"a", StDtype::F32, {3}, a}, {"b.weight", StDtype::BF16, {3}, b}}, {{"format", "pt"}});
}

TEST(SafetensorsErrors, TruncatedAtEveryPosition) {
  const auto full = small_valid_file();
  ASSERT_NO_THROW(SafetensorsFile::parse_memory(full, "ok"));
  TempDir dir;
  for (size_t n = 0; n < full.size(); ++n) {
    // An exact-size heap copy lets ASan catch any read past the end.
    std::vector<std::byte> cut(full.begin(), full.begin() + ptrdiff_t(n));
    const std::string msg = error_of([&] { SafetensorsFile::parse_memory(cut, "cut.safetensors"); });
    expect_contains(msg, {"[safetensors] cut.safetensors: "});
    if (n < 8) expect_contains(msg, {"truncated"});
    // The same through the mmap path, every few sizes to keep the test quick.
    if (n % 7 == 0) {
      const auto path = dir / "cut.safetensors";
      write_file(path, cut);
      expect_contains(error_of([&] { SafetensorsFile::open(path); }), {path.string()});
    }
  }
}

TEST(SafetensorsErrors, TruncatedDataNamesTheTensor) {
  auto full = small_valid_file();
  full.pop_back();
  auto msg = error_of([&] { SafetensorsFile::parse_memory(full, "short.safetensors"); });
  expect_contains(msg, {"short.safetensors", "tensor 'b.weight'", "truncated", "re-download"});
}

TEST(SafetensorsErrors, HeaderLengthPastEndOfFile) {
  std::string f = st_file("{}");
  f[0] = char(200);  // claims 200 header bytes, the file holds 2
  expect_contains(parse_error(f), {"bad.safetensors", "header length (200 bytes) runs past the end", "truncated"});
}

TEST(SafetensorsErrors, HeaderOverLimit) {
  std::string f = st_file("{}");
  f[7] = char(1);  // 2^56 bytes
  expect_contains(parse_error(f), {"bad.safetensors", "100 MB"});
}

TEST(SafetensorsErrors, HeaderNotStartingWithBrace) {
  expect_contains(parse_error(st_file(" {}")), {"bad.safetensors", "does not start with '{'"});
  expect_contains(parse_error(st_file("[1,2]")), {"does not start with '{'"});
  expect_contains(parse_error(st_file("")), {"does not start with '{'"});
}

TEST(SafetensorsErrors, MalformedJson) {
  for (std::string h : {"{", "{\"a\":}", "{\"a\":{\"dtype\":\"F32\"} x", "{} {}", "{\"a\":\"\xff\"}"})
    expect_contains(parse_error(st_file(h)), {"bad.safetensors", "malformed", "byte"});
  // nlohmann reports this one as out_of_range, not parse_error (found by the fuzzer).
  expect_contains(parse_error(st_file("{\"a\":1e999}")), {"bad.safetensors", "malformed", "overflow"});
}

TEST(SafetensorsErrors, DuplicateNames) {
  const std::string h = "{" + entry("w", "U8", "[1]", 0, 1) + "," + entry("w", "U8", "[1]", 1, 2) + "}";
  expect_contains(parse_error(st_file(h, "ab")), {"bad.safetensors", "tensor 'w' appears twice"});
}

TEST(SafetensorsErrors, MissingOrMistypedFields) {
  struct Case {
    std::string header, expect;
  };
  const std::vector<Case> cases = {
      {R"({"t":{"shape":[1],"data_offsets":[0,1]}})", "missing field 'dtype'"},
      {R"({"t":{"dtype":"U8","data_offsets":[0,1]}})", "missing field 'shape'"},
      {R"({"t":{"dtype":"U8","shape":[1]}})", "missing field 'data_offsets'"},
      {R"({"t":{"dtype":5,"shape":[1],"data_offsets":[0,1]}})", "'dtype' is not a string"},
      {R"({"t":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})", "'shape' is not an array"},
      {R"({"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "not a non-negative integer"},
      {R"({"t":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "not a non-negative integer"},
      {R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "not a [begin, end] pair"},
      {R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,"1"]}})", "non-negative integers"},
      {R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}})", "end before they begin"},
      {R"({"t":[1,2]})", "not a JSON object"},
  };
  for (const auto& c : cases) expect_contains(parse_error(st_file(c.header, "x")), {"bad.safetensors", "tensor 't'", c.expect});
}

TEST(SafetensorsErrors, UnknownDtype) {
  auto msg = parse_error(st_file("{" + entry("q", "F7", "[1]", 0, 1) + "}", "x"));
  expect_contains(msg, {"bad.safetensors", "tensor 'q'", "unknown dtype 'F7'", "BF16"});
}

TEST(SafetensorsErrors, BytesDisagreeWithShape) {
  auto msg = parse_error(st_file("{" + entry("w", "F32", "[2,3]", 0, 20) + "}", std::string(20, 'x')));
  expect_contains(msg, {"bad.safetensors", "tensor 'w'", "20 bytes", "needs 24 bytes"});
  // A sub-byte dtype whose elements do not fill whole bytes.
  msg = parse_error(st_file("{" + entry("f", "F4", "[3]", 0, 2) + "}", "xx"));
  expect_contains(msg, {"tensor 'f'", "whole number of bytes"});
  // Element count overflowing 64 bits.
  msg = parse_error(st_file("{" + entry("h", "F32", "[4294967296,4294967296]", 0, 4) + "}", "xxxx"));
  expect_contains(msg, {"tensor 'h'", "too many elements"});
}

TEST(SafetensorsErrors, OffsetsOutOfRange) {
  auto msg = parse_error(st_file("{" + entry("w", "U8", "[4]", 2, 6) + "}", "abcd"));
  expect_contains(msg, {"bad.safetensors", "tensor 'w'", "ends at byte 6", "holds only 4 bytes"});
}

TEST(SafetensorsErrors, OverlappingTensors) {
  const std::string h = "{" + entry("a", "U8", "[4]", 0, 4) + "," + entry("b", "U8", "[4]", 2, 6) + "}";
  expect_contains(parse_error(st_file(h, "abcdef")), {"bad.safetensors", "tensor 'b'", "overlaps tensor 'a'"});
}

TEST(SafetensorsErrors, HoleBetweenTensors) {
  const std::string h = "{" + entry("a", "U8", "[2]", 0, 2) + "," + entry("b", "U8", "[2]", 4, 6) + "}";
  expect_contains(parse_error(st_file(h, "abcdef")), {"bad.safetensors", "hole of 2 bytes before tensor 'b'"});
  // A hole at the start of the buffer.
  expect_contains(parse_error(st_file("{" + entry("c", "U8", "[2]", 1, 3) + "}", "abc")), {"before tensor 'c'"});
}

TEST(SafetensorsErrors, TrailingBytesAfterLastTensor) {
  expect_contains(parse_error(st_file("{" + entry("a", "U8", "[2]", 0, 2) + "}", "abcd")),
                  {"bad.safetensors", "holds 4 bytes but the tensors cover 2", "tensor 'a'"});
}

TEST(SafetensorsErrors, BadMetadata) {
  expect_contains(parse_error(st_file(R"({"__metadata__":{"format":1}})")),
                  {"bad.safetensors", "'__metadata__' entry 'format'"});
  expect_contains(parse_error(st_file(R"({"__metadata__":[1]})")), {"'__metadata__' is not a JSON object"});
}

TEST(SafetensorsErrors, FileProblems) {
  TempDir dir;
  expect_contains(error_of([&] { SafetensorsFile::open(dir / "missing.safetensors"); }),
                  {"[safetensors]", "missing.safetensors", "cannot open"});
  expect_contains(error_of([&] { SafetensorsFile::open(dir.path()); }), {"not a regular file"});
  write_file(dir / "empty.safetensors", std::string());
  expect_contains(error_of([&] { SafetensorsFile::open(dir / "empty.safetensors"); }),
                  {"empty.safetensors", "0 bytes", "truncated"});
}

}  // namespace
}  // namespace lmx::io
