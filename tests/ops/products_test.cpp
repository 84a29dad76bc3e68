// The CPU's products by a weight against float64: the matrix-vector kernel for a few rows,
// gemm_bf16 (VDPBF16PS) and gemm_amx (AMX tiles) at every row count, and sgemm on f32 copies;
// and that a row's outputs have the same bits alone, in a batch or in a prompt.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "backend/cpu/cpu_fast.h"
#include "harness.h"
#include "scoped_env.h"

namespace lmx::test {
namespace {

std::string param_name(Dtype t, int64_t n) { return dtype_param_name(t) + "_" + std::to_string(n); }
// ---------------------------------------------------------------- gemv

// Row r of a (rows of K) times row j of w [N, K] in float64, and what f32 accumulation
// and one rounding to a dtype of unit roundoff u may move it by.
struct ExactDot {
  double value, bound;
};
ExactDot exact_dot(const Input& a, int64_t r, const Input& w, int64_t j, int64_t k, double u) {
  double s = 0, abs_s = 0;
  for (int64_t t = 0; t < k; ++t) {
    const double p = a.values[size_t(r * k + t)] * w.values[size_t(j * k + t)];
    s += p;
    abs_s += std::abs(p);
  }
  return {s, 1e-6 * abs_s + u * std::abs(s) + 1e-7};
}

using GemvParam = std::tuple<Dtype, int64_t>;
class GemvTest : public ::testing::TestWithParam<GemvParam> {};

TEST_P(GemvTest, MatchesFloat64) {
  const auto [dtype, k] = GetParam();
  const double u = unit_roundoff(dtype);
  for (int64_t n : {1, 5, 67}) {
    const Input a = random_input({2, 1, k}, dtype, 51 + k, -1, 1);  // a [2, 1, K]
    const Input w = random_input({n, k}, dtype, 52 + n, -1, 1);     // w [N, K], row-major
    // b [2, K, N]: the weight transposed and shared by both batch rows.
    const Array b = broadcast_to(swapaxes(expand_dims(w.array, 0), 1, 2), {2, k, n});
    std::vector<double> want(size_t(2 * n)), bound(size_t(2 * n));
    for (int64_t bi = 0; bi < 2; ++bi)
      for (int64_t r = 0; r < n; ++r) {
        const ExactDot d = exact_dot(a, bi, w, r, k, u);
        want[size_t(bi * n + r)] = d.value;
        bound[size_t(bi * n + r)] = d.bound;
      }
    Array out(Shape{2, 1, n}, dtype);
    ASSERT_TRUE(cpu::gemv(a.array, b, out)) << "the decode shape must take the gemv path";
    const Array via_matmul = matmul(a.array, b);
    for (const Array* got : std::vector<const Array*>{&out, &via_matmul}) {
      const std::vector<float> g = to_floats(*got);
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_LE(std::abs(double(g[i]) - want[i]), bound[i]) << "n=" << n << " element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, GemvTest,
                         ::testing::Combine(::testing::ValuesIn(kFloatDtypes),
                                            ::testing::ValuesIn(kAwkwardSizes)),
                         [](const auto& info) {
                           return param_name(std::get<0>(info.param), std::get<1>(info.param));
                         });

// Up to kGemvMaxRows rows of bf16 or f16 (a batch's decode step, a short prompt) read W
// once for all rows; each row's outputs are within f32 accumulation of float64 and have
// the bits they have when that row is computed alone. One row more goes to sgemm.
TEST(GemvTest, FewRowsOf16BitFloatsMatchFloat64AndTheirRowsAlone) {
  for (const Dtype dtype : {Dtype::bf16, Dtype::f16}) {
    const double u = unit_roundoff(dtype);
    for (const int64_t m : {int64_t(2), int64_t(5), cpu::kGemvMaxRows, cpu::kGemvMaxRows + 1})
      for (const int64_t k : {int64_t(67), int64_t(300)}) {
        const int64_t n = 37;
        const Input a = random_input({1, m, k}, dtype, 61 + m, -1, 1);  // a [1, M, K]
        const Input w = random_input({n, k}, dtype, 62 + k, -1, 1);     // w [N, K], row-major
        const Array b = expand_dims(transpose(w.array), 0);              // b [1, K, N]
        Array out(Shape{1, m, n}, dtype);
        ASSERT_EQ(cpu::gemv(a.array, b, out), m <= cpu::kGemvMaxRows) << m << " rows";
        const Array got = m <= cpu::kGemvMaxRows ? out : matmul(a.array, b);
        const std::vector<float> g = to_floats(got);
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t j = 0; j < n; ++j) {
            const ExactDot d = exact_dot(a, r, w, j, k, u);
            ASSERT_LE(std::abs(double(g[size_t(r * n + j)]) - d.value), d.bound)
                << dtype_name(dtype) << " m=" << m << " k=" << k << " row " << r << " column " << j;
          }
          if (m > cpu::kGemvMaxRows) continue;
          Array alone(Shape{1, 1, n}, dtype);
          ASSERT_TRUE(cpu::gemv(slice(a.array, {0, r, 0}, {1, r + 1, k}), b, alone));
          EXPECT_EQ(to_floats(alone), to_floats(slice(out, {0, r, 0}, {1, r + 1, n})))
              << dtype_name(dtype) << " m=" << m << " k=" << k << ": row " << r << " differs from itself alone";
        }
      }
  }
}

// A decode step of several sequences multiplies [B, M, K] by one W broadcast over the
// batch; the kernel then takes the B·M rows as one product (W read once). Whatever the
// rows' spacing, each output is the row's own product, bit for bit.
TEST(GemvTest, BatchesSharingOneWeightAreTheirRowsAlone) {
  const int64_t k = 300, n = 37, b = 4;
  const Input w = random_input({n, k}, Dtype::bf16, 71, -1, 1);  // w [N, K], row-major
  const Array wt = transpose(w.array);                              // [K, N]
  // rows (M) of each batch, and the rows held per batch (more: a's batches have gaps)
  for (const auto& [m, held] : {std::pair{int64_t(1), int64_t(1)}, std::pair{int64_t(1), int64_t(6)},
                                std::pair{int64_t(3), int64_t(3)}, std::pair{int64_t(3), int64_t(5)},
                                std::pair{int64_t(16), int64_t(16)}}) {
    const Input full = random_input({b, held, k}, Dtype::bf16, 72 + m + held, -1, 1);  // [B, held, K]
    const Array a = slice(full.array, {0, held - m, 0}, {b, held, k});                 // [B, M, K]: the last M rows
    const Array bw = broadcast_to(expand_dims(wt, 0), {b, k, n});                      // [B, K, N], batch stride 0
    Array out(Shape{b, m, n}, Dtype::bf16);
    ASSERT_TRUE(cpu::gemv(a, bw, out)) << "m=" << m << " held=" << held;
    for (int64_t i = 0; i < b; ++i)
      for (int64_t r = 0; r < m; ++r) {
        Array alone(Shape{1, 1, n}, Dtype::bf16);
        ASSERT_TRUE(cpu::gemv(slice(a, {i, r, 0}, {i + 1, r + 1, k}), expand_dims(wt, 0), alone));
        EXPECT_EQ(to_floats(alone), to_floats(slice(out, {i, r, 0}, {i + 1, r + 1, n})))
            << "m=" << m << " held=" << held << ": batch " << i << " row " << r << " differs from itself alone";
        const std::vector<float> g = to_floats(alone);
        const ExactDot d = exact_dot(full, i * held + held - m + r, w, 0, k, unit_roundoff(Dtype::bf16));
        EXPECT_LE(std::abs(double(g[0]) - d.value), d.bound) << "m=" << m << " batch " << i << " row " << r;
      }
  }
}

TEST(GemvTest, DeclinesShapesItDoesNotHandle) {
  const Array a = zeros({1, 2, 8}, Dtype::f32);  // two query rows: not a matrix-vector product
  const Array w = zeros({4, 8}, Dtype::f32);     // w [N, K]
  const Array b = expand_dims(transpose(w), 0);  // b [1, K, N], transposed
  Array out(Shape{1, 2, 4}, Dtype::f32);
  EXPECT_FALSE(cpu::gemv(a, b, out));
  const Array a1 = zeros({1, 1, 8}, Dtype::f32);
  Array out1(Shape{1, 1, 4}, Dtype::f32);
  EXPECT_FALSE(cpu::gemv(a1, expand_dims(zeros({8, 4}, Dtype::f32), 0), out1));  // b not transposed
  EXPECT_FALSE(cpu::gemv(astype(a1, Dtype::bf16), b, out1));                     // mixed dtypes
  EXPECT_TRUE(cpu::gemv(a1, b, out1));
}

// ---------------------------------------------------------------- gemm_bf16

// g [M, N]: the product of rows [0, M) of a [1, M + 1, K] by w [N, K]ᵀ, h that of rows
// [1, M + 1). Every output is within f32 accumulation of float64, and each row has the same
// bits shifted by one among the others.
void expect_near_float64_and_shifted_alike(const Input& a, const Input& w, int64_t m, int64_t k, int64_t n,
                                           const std::vector<float>& g, const std::vector<float>& h) {
  const double u = unit_roundoff(Dtype::bf16);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const ExactDot d = exact_dot(a, r, w, j, k, u);
      ASSERT_LE(std::abs(double(g[size_t(r * n + j)]) - d.value), d.bound)
          << "m=" << m << " k=" << k << " row " << r << " column " << j;
      if (r > 0) {
        ASSERT_EQ(g[size_t(r * n + j)], h[size_t((r - 1) * n + j)])
            << "m=" << m << " k=" << k << ": row " << r << " column " << j << " changed with its neighbours";
      }
    }
}

// bf16 products take gemm_bf16 where the CPU has AVX512_BF16. Every output is within f32
// accumulation of float64: rows past one chunk of 256, K in more than one stretch (2,080: two
// of 1,056) and not a multiple of 32, N not a multiple of the 4-row tile. And a row's outputs have the same bits
// whatever rows share the product: the rows shifted by one, and a row alone (a decode step's
// one-row path, W streamed row by row).
TEST(GemmBf16Test, ManyRowsMatchFloat64AndEachRowItsOwnBits) {
  if (!cpu::gemm_bf16_available()) GTEST_SKIP() << "this CPU has no AVX512_BF16: these products take sgemm";
  const ScopedEnv on("LMX_CPU_BF16_GEMM", nullptr);
  for (const auto& [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{65, 67, 37}, {130, 1100, 5}, {300, 300, 38},
                                {70, 2080, 4}}) {
    const Input a = random_input({1, m + 1, k}, Dtype::bf16, 81 + m, -1, 1);  // a [1, M + 1, K]
    const Input w = random_input({n, k}, Dtype::bf16, 82 + k, -1, 1);         // w [N, K], row-major
    const Array b = expand_dims(transpose(w.array), 0);                        // b [1, K, N]
    Array first(Shape{1, m, n}, Dtype::bf16), shifted(Shape{1, m, n}, Dtype::bf16);
    ASSERT_TRUE(cpu::gemm_bf16(slice(a.array, {0, 0, 0}, {1, m, k}), b, first)) << m << " rows";
    ASSERT_TRUE(cpu::gemm_bf16(slice(a.array, {0, 1, 0}, {1, m + 1, k}), b, shifted)) << m << " rows";
    const std::vector<float> g = to_floats(first), h = to_floats(shifted);
    expect_near_float64_and_shifted_alike(a, w, m, k, n, g, h);
    for (const int64_t r : {int64_t(0), m / 2, m - 1}) {
      Array alone(Shape{1, 1, n}, Dtype::bf16);
      ASSERT_TRUE(cpu::gemm_bf16(slice(a.array, {0, r, 0}, {1, r + 1, k}), b, alone));
      EXPECT_EQ(to_floats(alone), to_floats(slice(first, {0, r, 0}, {1, r + 1, n})))
          << "m=" << m << " k=" << k << ": row " << r << " alone differs from itself among the others";
    }
  }
}

// Batches sharing one W fold into one product where a's batches follow one another, and run
// one by one where they have gaps: the same bits either way as the rows in one batch.
TEST(GemmBf16Test, BatchesSharingOneWeightAreTheirRowsInOneBatch) {
  if (!cpu::gemm_bf16_available()) GTEST_SKIP() << "this CPU has no AVX512_BF16: these products take sgemm";
  const ScopedEnv on("LMX_CPU_BF16_GEMM", nullptr);
  const int64_t bs = 3, m = 40, k = 300, n = 37;
  const Input w = random_input({n, k}, Dtype::bf16, 91, -1, 1);                 // w [N, K], row-major
  const Array wt = transpose(w.array);                                            // [K, N]
  for (const int64_t held : {m, m + 2}) {                                         // rows held a batch: gaps past m
    const Input full = random_input({bs, held, k}, Dtype::bf16, 92 + held, -1, 1);  // [B, held, K]
    const Array a = slice(full.array, {0, 0, 0}, {bs, m, k});                       // [B, M, K]
    Array out(Shape{bs, m, n}, Dtype::bf16), rows(Shape{1, bs * m, n}, Dtype::bf16);
    ASSERT_TRUE(cpu::gemm_bf16(a, broadcast_to(expand_dims(wt, 0), {bs, k, n}), out)) << "held=" << held;
    ASSERT_TRUE(cpu::gemm_bf16(reshape(contiguous(a), {1, bs * m, k}), expand_dims(wt, 0), rows));
    EXPECT_EQ(to_floats(out), to_floats(rows)) << "held=" << held;
  }
}

// The switch hands these products back to sgemm, which still meets the same bound; other
// dtypes and layouts are declined.
TEST(GemmBf16Test, DeclinesWhatItDoesNotTakeAndTheSwitchTurnsItOff) {
  const int64_t m = 70, k = 96, n = 8;
  const Input a = random_input({1, m, k}, Dtype::bf16, 95, -1, 1);  // a [1, M, K]
  const Input w = random_input({n, k}, Dtype::bf16, 96, -1, 1);     // w [N, K], row-major
  const Array b = expand_dims(transpose(w.array), 0);              // b [1, K, N]
  Array out(Shape{1, m, n}, Dtype::bf16);
  EXPECT_FALSE(cpu::gemm_bf16(astype(a.array, Dtype::f16), astype(b, Dtype::f16), Array(Shape{1, m, n}, Dtype::f16)));
  EXPECT_FALSE(cpu::gemm_bf16(a.array, contiguous(b), out));  // b a row-major [K, N], not W transposed
  {
    const ScopedEnv on("LMX_CPU_BF16_GEMM", nullptr);
    EXPECT_EQ(cpu::gemm_bf16(a.array, b, out), cpu::gemm_bf16_available());
  }
  const ScopedEnv off("LMX_CPU_BF16_GEMM", "0");
  EXPECT_FALSE(cpu::gemm_bf16(a.array, b, out));
  const std::vector<float> g = to_floats(matmul(a.array, b));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const ExactDot d = exact_dot(a, r, w, j, k, unit_roundoff(Dtype::bf16));
      ASSERT_LE(std::abs(double(g[size_t(r * n + j)]) - d.value), d.bound) << "sgemm: row " << r << " column " << j;
    }
}

// Past the GEMV's rows, f16 (and bf16 without AVX512_BF16) go to sgemm on f32 copies, in
// panels: a weight seen transposed a panel of its rows at a time (here 255 rows of K = 4,097:
// three panels, the last one short), and a row-major b [K, N] (a gradient times a weight, g·W)
// a panel of K at a time, each panel's sums added into the output (1,747 rows a panel). Every
// output within f32 accumulation of float64.
TEST(SgemmPathTest, RightOperandsConvertedInPanelsMatchFloat64) {
  const int64_t m = 70, k = 4097, n = 600;
  for (const bool row_major_b : {false, true})
    for (const Dtype dtype : {Dtype::f16, Dtype::bf16}) {
      const ScopedEnv off("LMX_CPU_BF16_GEMM", "0");
      const Input a = random_input({1, m, k}, dtype, 97, -1, 1);  // a [1, M, K]
      const Input w = random_input({n, k}, dtype, 98, -1, 1);     // w [N, K], row-major
      const Array wt = row_major_b ? contiguous(transpose(w.array)) : transpose(w.array);  // [K, N]
      const std::vector<float> g = to_floats(matmul(a.array, expand_dims(wt, 0)));
      for (int64_t r = 0; r < m; r += 23)
        for (int64_t j = 0; j < n; ++j) {
          const ExactDot d = exact_dot(a, r, w, j, k, unit_roundoff(dtype));
          ASSERT_LE(std::abs(double(g[size_t(r * n + j)]) - d.value), d.bound)
              << dtype_name(dtype) << (row_major_b ? " row-major b" : " weight") << " row " << r << " column " << j;
        }
    }
}

// bf16 a times a row-major b [K, N] (a gradient times a frozen weight) on VDPBF16PS where the
// CPU has it: odd K (a last element paired with zero), K past one panel of 512 rows, N and M
// past one task's 64 columns and 128 rows and short of them, a batch sharing one b. Every
// output within f32 accumulation of float64.
TEST(GemmBf16KnTest, RowMajorRightOperandsMatchFloat64) {
  if (!cpu::gemm_bf16_available()) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes{{3, 7, 5}, {130, 1025, 70}, {1, 2, 64}};
  for (const auto& [m, k, n] : shapes) {
    const Input a = random_input({2, m, k}, Dtype::bf16, 97, -1, 1);
    const Input w = random_input({n, k}, Dtype::bf16, 98, -1, 1);  // b = wᵀ stored row-major [K, N]
    const Array b = broadcast_to(expand_dims(contiguous(transpose(w.array)), 0), {2, k, n});
    Array out({2, m, n}, Dtype::bf16);
    ASSERT_TRUE(cpu::gemm_bf16_kn(a.array, b, out)) << m << " " << k << " " << n;
    const std::vector<float> g = to_floats(out);
    for (int64_t bt = 0; bt < 2; ++bt)
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = 0; j < n; ++j) {
          const ExactDot d = exact_dot(a, bt * m + r, w, j, k, unit_roundoff(Dtype::bf16));
          ASSERT_LE(std::abs(double(g[size_t((bt * m + r) * n + j)]) - d.value), d.bound)
              << "[" << m << ", " << k << ", " << n << "] batch " << bt << " row " << r << " column " << j;
        }
  }
  const ScopedEnv off("LMX_CPU_BF16_GEMM", "0");
  Array out({1, 2, 3}, Dtype::bf16);
  EXPECT_FALSE(cpu::gemm_bf16_kn(zeros({1, 2, 4}, Dtype::bf16), zeros({1, 4, 3}, Dtype::bf16), out));
}

// ---------------------------------------------------------------- gemm_amx

// On a CPU with AMX tiles, bf16 products whose K is a multiple of 32 and N of 16 take them,
// at every row count: one row (its own B tile), a group narrower than 16, groups in pairs
// and one left over, K in more chunks than one (past 16 steps) with the sums leaving the
// tiles between them. Every output is within f32 accumulation of float64, gemm_bf16 gives
// gemm_amx's bits (so it took the tiles), and a row has the same bits shifted by one among
// the others, alone, and beside one other row.
TEST(GemmAmxTest, EveryRowCountMatchesFloat64AndEachRowItsOwnBits) {
  if (!cpu::amx_available()) GTEST_SKIP() << "this CPU or kernel gives no AMX tiles: gemm_bf16 takes these products";
  const ScopedEnv on("LMX_CPU_AMX", nullptr), bf16("LMX_CPU_BF16_GEMM", nullptr);
  for (const auto& [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 16}, {5, 96, 48}, {16, 1024, 32},
                                {17, 2048, 48}, {40, 544, 80}, {300, 576, 144}, {70, 8192, 32}}) {
    const Input a = random_input({1, m + 1, k}, Dtype::bf16, 181 + m, -1, 1);  // a [1, M + 1, K]
    const Input w = random_input({n, k}, Dtype::bf16, 182 + k, -1, 1);         // w [N, K], row-major
    const Array b = expand_dims(transpose(w.array), 0);                         // b [1, K, N]
    auto product = [&](int64_t r0, int64_t rows) {  // rows [r0, r0 + rows) of a through gemm_bf16
      Array out(Shape{1, rows, n}, Dtype::bf16);
      EXPECT_TRUE(cpu::gemm_bf16(slice(a.array, {0, r0, 0}, {1, r0 + rows, k}), b, out));
      return to_floats(out);
    };
    const std::vector<float> g = product(0, m), h = product(1, m);
    Array direct(Shape{1, m, n}, Dtype::bf16);
    ASSERT_TRUE(cpu::gemm_amx(static_cast<const uint16_t*>(a.array.raw()), k, m,
                              static_cast<const uint16_t*>(w.array.raw()), k,
                              static_cast<uint16_t*>(direct.raw()), n));
    ASSERT_EQ(to_floats(direct), g) << "m=" << m << " k=" << k << ": gemm_bf16 did not take the tiles";
    expect_near_float64_and_shifted_alike(a, w, m, k, n, g, h);
    for (const int64_t r : {int64_t(0), m / 2, m - 1}) {
      const std::vector<float> alone = product(r, 1);
      EXPECT_TRUE(std::equal(alone.begin(), alone.end(), g.begin() + r * n))
          << "m=" << m << " k=" << k << ": row " << r << " alone differs from itself among the others";
      const std::vector<float> two = product(r, 2);
      EXPECT_TRUE(std::equal(two.begin(), two.begin() + n, g.begin() + r * n))
          << "m=" << m << " k=" << k << ": row " << r << " beside one other differs from itself among the others";
    }
  }
}

// K not a multiple of 32 or N not of 16 are declined (gemm_bf16 then takes VDPBF16PS), as is
// everything under LMX_CPU_AMX=0; a shape that fits is taken exactly where the tiles exist.
TEST(GemmAmxTest, DeclinesWhatItDoesNotTakeAndTheSwitchTurnsItOff) {
  const int64_t m = 3, k = 96, n = 32;
  const std::vector<uint16_t> a(size_t(m * 128), 0x3f80), w(size_t(48 * 128), 0x3f80);  // ones in bf16
  std::vector<uint16_t> out(size_t(m * 48));
  {
    const ScopedEnv on("LMX_CPU_AMX", nullptr);
    EXPECT_EQ(cpu::gemm_amx(a.data(), k, m, w.data(), k, out.data(), n), cpu::amx_available());
    if (cpu::amx_available()) {
      EXPECT_EQ(out[0], 0x42c0) << "3 rows of 96 ones times W's ones: 96";
    }
    EXPECT_FALSE(cpu::gemm_amx(a.data(), 80, m, w.data(), 80, out.data(), n));     // K = 80
    EXPECT_FALSE(cpu::gemm_amx(a.data(), k, m, w.data(), k, out.data(), 40));      // N = 40
    EXPECT_FALSE(cpu::gemm_amx(a.data(), 128, m, w.data(), 128, out.data(), 0));   // no W rows
  }
  const ScopedEnv off("LMX_CPU_AMX", "0");
  EXPECT_FALSE(cpu::gemm_amx(a.data(), k, m, w.data(), k, out.data(), n));
  EXPECT_FALSE(cpu::amx_on());
}

}  // namespace
}  // namespace lmx::test
