// MLX affine-quantized matrices (spec §2) against float64 references. The codes are
// packed here, bit by bit, from the spec's description of the layout, independently of
// the library's unpacking; every width, group size and scale dtype the format allows,
// one row (the decode kernel) and several (the tiled one), at awkward sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/cpu_fast.h"
#include "ops/fast.h"
#include "harness.h"
#include "scoped_env.h"

namespace lmx::test {
namespace {

struct Quantized {
  fast::QuantizedMatrix w;
  std::vector<double> dense;  // [N, K]: scale · q + bias from the stored (rounded) values
  std::vector<double> size;   // [N, K]: |scale · q| + |bias|, what a rounding is relative to
};

// Random codes and groups for an [n, k] matrix: each row's codes written LSB first into a
// bitstream of u32 words, bit `b` of code c at bit c·bits + b of the row.
Quantized make_quantized(int64_t n, int64_t k, int bits, int group, Dtype scale_dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t words = k * bits / 32, groups = k / group;
  std::vector<uint32_t> packed(size_t(n * words), 0);
  std::vector<uint32_t> codes(size_t(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const uint32_t q = uint32_t(rng() % (1u << bits));
      codes[size_t(r * k + c)] = q;
      for (int b = 0; b < bits; ++b) {
        const int64_t bit = c * bits + b;
        packed[size_t(r * words + bit / 32)] |= ((q >> b) & 1u) << (bit % 32);
      }
    }
  // Scales of either sign around a trained model's 1e-2, biases of the opposite edge.
  const Input scales = random_input({n, groups}, scale_dtype, seed + 1, -0.02, 0.02);
  const Input biases = random_input({n, groups}, scale_dtype, seed + 2, -0.15, 0.15);
  Quantized out;
  out.w = {from_vector(packed, {n, words}), scales.array, biases.array, bits, group};
  out.dense.resize(size_t(n * k));
  out.size.resize(size_t(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const size_t g = size_t(r * groups + c / group);
      const double sq = scales.values[g] * codes[size_t(r * k + c)];
      out.dense[size_t(r * k + c)] = sq + biases.values[g];
      out.size[size_t(r * k + c)] = std::abs(sq) + std::abs(biases.values[g]);
    }
  return out;
}

fast::QuantizedMatrix on(const fast::QuantizedMatrix& w, Device d) {
  return {to_device(w.packed, d), to_device(w.scales, d), to_device(w.biases, d), w.bits, w.group_size};
}

constexpr int kBits[] = {2, 3, 4, 5, 6, 8};
constexpr int kGroups[] = {32, 64, 128};

TEST(Dequantize, EveryWidthGroupAndScaleDtypeIsScaleTimesCodePlusBias) {
  for (Device d : test_devices())
    for (Dtype sd : kFloatDtypes)
      for (int bits : kBits)
        for (int group : kGroups) {
          const int64_t n = 33, k = 3 * group;
          const Quantized q = make_quantized(n, k, bits, group, sd, uint64_t(bits * 1000 + group));
          const Array got = fast::dequantize(on(q.w, d), Dtype::f32);
          ASSERT_EQ(got.shape(), (Shape{n, k}));
          // 16-bit scales times a code of at most 8 bits are exact in f32, so the add is the
          // one rounding; f32 scales round the product too (relative to |s·q| + |b|).
          const std::vector<float> g = to_floats(got);
          const double u = unit_roundoff(Dtype::f32);
          for (size_t i = 0; i < g.size(); ++i)
            ASSERT_LE(std::abs(g[i] - q.dense[i]), sd == Dtype::f32 ? 2 * u * q.size[i] : u * std::abs(q.dense[i]))
                << d.str() << " " << dtype_name(sd) << " scales, " << bits << " bits, group " << group << " at "
                << i << ": got " << g[i] << ", want " << q.dense[i];
          // The 16-bit output is the f32 value rounded once.
          std::vector<double> want16(g.size());
          for (size_t i = 0; i < g.size(); ++i) want16[i] = round_to(Dtype::bf16, g[i]);
          expect_close(fast::dequantize(on(q.w, d), Dtype::bf16), want16, 0, 0, "bf16 output");
        }
}

// x [rows, K] times the quantized [N, K]ᵀ against the float64 sum of x · (s·q + b).
void check_matmul(Device d, Dtype xd, int64_t rows, int64_t n, int bits, int group, int64_t k_groups,
                  Dtype scale_dtype = Dtype::bf16) {
  const int64_t k = k_groups * group;
  const Quantized q = make_quantized(n, k, bits, group, scale_dtype, uint64_t(rows * 7 + n + bits * 100 + group));
  const Input x = random_input({rows, k}, xd, uint64_t(rows + k), -1, 1, d);
  std::vector<double> want(size_t(rows * n)), mag(size_t(rows * n));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, m = 0;
      for (int64_t c = 0; c < k; ++c) {
        s += x.values[size_t(r * k + c)] * q.dense[size_t(j * k + c)];
        m += std::abs(x.values[size_t(r * k + c)] * q.dense[size_t(j * k + c)]);
      }
      want[size_t(r * n + j)] = s, mag[size_t(r * n + j)] = m;
    }
  const Array got = fast::quantized_matmul(x.array, on(q.w, d));
  ASSERT_EQ(got.shape(), (Shape{rows, n}));
  ASSERT_EQ(got.dtype(), xd);
  // f32 sums of K products (error up to about K·u·Σ|x·w|, far less in practice), plus
  // one rounding to x's dtype.
  const std::vector<float> g = to_floats(got);
  const double u32 = unit_roundoff(Dtype::f32), uo = unit_roundoff(xd);
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_LE(std::abs(g[i] - want[i]), 2 * std::sqrt(double(k)) * u32 * mag[i] + uo * std::abs(want[i]) + 1e-30)
        << d.str() << " " << dtype_name(xd) << " rows " << rows << " N " << n << " bits " << bits << " group "
        << group << " K " << k << " " << dtype_name(scale_dtype) << " scales at " << i << ": got " << g[i]
        << ", want " << want[i];
}

TEST(QuantizedMatmul, OneRowAndManyRowsMatchTheFloat64Sum) {
  for (Device d : test_devices())
    for (Dtype xd : {Dtype::f32, Dtype::bf16})
      for (int bits : kBits)
        for (int group : kGroups)
          for (int64_t rows : {1, 3, 17}) check_matmul(d, xd, rows, 33, bits, group, 3);
}

TEST(QuantizedMatmul, AwkwardSizesPromptsAndLongRows) {
  for (Device d : test_devices())
    for (int64_t n : {1, 31, 32, 4097}) {
      check_matmul(d, Dtype::bf16, 1, n, 4, 64, 5);
      check_matmul(d, Dtype::f32, 2, n, 8, 32, 2);
    }
  // Past 32 rows (prompts): tiles dequantized for sgemm, in the SIMD order at 2, 4 and 8
  // bits, in column order at 3, 5 and 6.
  for (Device d : test_devices())
    for (int bits : kBits)
      for (int group : kGroups) check_matmul(d, Dtype::bf16, 40, 37, bits, group, 2);
  // Enough weight rows that the pool's threads each dequantize part of a tile.
  check_matmul(Device::cpu(), Dtype::f32, 40, 4097, 4, 64, 2);
  check_matmul(Device::cpu(), Dtype::bf16, 33, 4097, 6, 32, 4);
  // A row of 4,096 inputs (64 groups): the decode kernel's sums over many groups.
  check_matmul(Device::cpu(), Dtype::bf16, 1, 67, 4, 64, 64);
}

// bf16 rows times 4- and 8-bit codes take the VDPBF16PS kernel where the CPU has it, and the
// f32 kernels with LMX_CPU_BF16_GEMM=0: both against float64 for every scale dtype, groups
// whose rows end in half a unit of 64 codes (K = 96 and 160), one row to past a tile of 8
// (8 + 8 + 2 + 1), and a prompt's 40 (sgemm's on the f32 side).
TEST(QuantizedMatmul, Bf16RowsOfFourAndEightBitsEitherKernel) {
  for (const char* setting : {static_cast<const char*>(nullptr), "0"}) {
    const ScopedEnv env("LMX_CPU_BF16_GEMM", setting);
    for (Dtype sd : kFloatDtypes)
      for (int bits : {4, 8})
        for (int group : kGroups)
          for (int64_t rows : {1, 19, 40}) {
            SCOPED_TRACE(setting ? "LMX_CPU_BF16_GEMM=0" : "default kernels");
            check_matmul(Device::cpu(), Dtype::bf16, rows, 21, bits, group, group == 32 ? 5 : 2, sd);
          }
  }
}

// A bf16 row's outputs have the same bits alone and among other rows, at every row count
// (decode steps of a batch, prompts), where the VDPBF16PS kernel takes them.
TEST(QuantizedMatmul, ABf16RowHasItsBitsAloneAndInABatch) {
  if (!cpu::gemm_bf16_available()) GTEST_SKIP() << "this CPU has no AVX512_BF16: the f32 kernels take these rows";
  const ScopedEnv on("LMX_CPU_BF16_GEMM", nullptr);
  for (int bits : {4, 8})
    for (int group : kGroups) {
      const int64_t k = group * (group == 32 ? 5 : 3), rows = 45, n = 37;
      const Quantized q = make_quantized(n, k, bits, group, Dtype::bf16, uint64_t(bits + group));
      const Array x = random_input({rows, k}, Dtype::bf16, uint64_t(k), -1, 1).array;  // x [45, K]
      const std::vector<float> all = to_floats(fast::quantized_matmul(x, q.w));
      for (int64_t r : {int64_t(0), int64_t(9), int64_t(17), int64_t(18), rows - 1}) {
        const std::vector<float> alone = to_floats(fast::quantized_matmul(slice(x, {r, 0}, {r + 1, k}), q.w));
        for (int64_t j = 0; j < n; ++j)
          ASSERT_EQ(alone[size_t(j)], all[size_t(r * n + j)])
              << bits << " bits, group " << group << ": row " << r << " column " << j << " differs alone";
      }
    }
}

TEST(QuantizedMatmul, LeadingAxesAreKept) {
  const Quantized q = make_quantized(5, 64, 4, 32, Dtype::bf16, 3);
  const Array x = random_uniform({2, 3, 64}, 4, -1, 1, Dtype::f32);
  const Array got = fast::quantized_matmul(x, q.w);
  EXPECT_EQ(got.shape(), (Shape{2, 3, 5}));
  const std::vector<float> a = to_floats(got), b = to_floats(fast::reference::quantized_matmul(x, q.w));
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << i;
}

TEST(QuantizedMatmul, RejectsInconsistentMatricesWithTheReason) {
  const Quantized q = make_quantized(4, 64, 4, 32, Dtype::bf16, 5);
  const Array x = random_uniform({1, 64}, 6, -1, 1, Dtype::f32);
  auto expect_error = [&](fast::QuantizedMatrix w, const Array& in, const std::string& needle) {
    try {
      fast::quantized_matmul(in, w);
      ADD_FAILURE() << "accepted; expected " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[quantized_matmul]"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  fast::QuantizedMatrix w = q.w;
  w.bits = 7;
  expect_error(w, x, "7-bit");
  w = q.w, w.group_size = 48;
  expect_error(w, x, "group size 48");
  w = q.w, w.scales = astype(w.scales, Dtype::f32);
  expect_error(w, x, "one dtype");
  w = q.w, w.packed = astype(w.packed, Dtype::i32);
  expect_error(w, x, "uint32");
  w = q.w, w.biases = random_uniform({4, 1}, 7, -1, 1, Dtype::bf16);
  expect_error(w, x, "biases [4, 1]");
  expect_error(q.w, random_uniform({1, 32}, 8, -1, 1, Dtype::f32), "must be 64");
  expect_error(fast::QuantizedMatrix{}, x, "packed codes, scales and biases");
}

}  // namespace
}  // namespace lmx::test
