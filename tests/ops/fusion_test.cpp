// The layer fusions (rope_heads: per-head norm + RoPE + transpose; add_rms_norm: residual
// add + RMSNorm) against float64 formulas and against their fast::reference compositions,
// in every float dtype, at sizes on both sides of the fused kernels' limits (head_dim 256,
// rows of whole 16-byte vectors, four vectors per thread).
#include <cmath>
#include <tuple>

#include "harness.h"

namespace lmx::test {
namespace {

std::vector<double> as_doubles(const Array& a) {
  const std::vector<float> f = to_floats(a);
  return {f.begin(), f.end()};
}

// RMSNorm of n values at x with weight w, rounded as the ops round (see FastNormTest).
void rms_row(const double* x, const double* w, int64_t n, double eps, bool gemma, Dtype t, double* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / double(n) + eps);
  for (int64_t i = 0; i < n; ++i)
    out[i] = gemma ? round_to(t, x[i] * inv * (1.0 + w[i])) : round_to(t, round_to(t, x[i] * inv) * w[i]);
}

// ---------------------------------------------------------------- rope_heads

enum class NormMode { none, llama, gemma };
std::string mode_name(NormMode m) { return m == NormMode::none ? "plain" : m == NormMode::llama ? "llama_norm" : "gemma_norm"; }

using RopeHeadsParam = std::tuple<Dtype, int64_t, int64_t, NormMode>;  // dtype, H, D, norm
class RopeHeadsTest : public ::testing::TestWithParam<RopeHeadsParam> {};

TEST_P(RopeHeadsTest, MatchesFormulaAndComposition) {
  const auto [dtype, h, d, mode] = GetParam();
  const int64_t b = 2, l = 7, half = d / 2;
  const double u = unit_roundoff(dtype);
  const float eps = 1e-6f;
  std::vector<float> inv_freq(static_cast<size_t>(half));  // [D/2]
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = float(1.0 / std::pow(10000.0, 2.0 * double(i) / double(d)));
  const std::vector<int32_t> offsets{0, 4090};  // [B]
  for (Device dev : test_devices()) {
    const Input x = random_input({b, l, h, d}, dtype, 41 + h + d, -3, 3, dev);  // x [B, L, H, D]
    const Input w = random_input({d}, dtype, 42 + d, -1.5, 1.5, dev);           // w [D]
    const Array f = to_device(from_vector(inv_freq, {half}), dev);
    const Array o = to_device(from_vector(offsets, {b}), dev);
    const fast::HeadNorm norm{w.array, eps, mode == NormMode::gemma ? fast::RmsNormStyle::gemma : fast::RmsNormStyle::llama};
    const fast::HeadNorm* np = mode == NormMode::none ? nullptr : &norm;

    std::vector<double> want(x.values.size());  // [B, H, L, D]
    std::vector<double> row(static_cast<size_t>(d));
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t li = 0; li < l; ++li)
        for (int64_t hi = 0; hi < h; ++hi) {
          const double* in = &x.values[size_t(((bi * l + li) * h + hi) * d)];
          if (np)
            rms_row(in, w.values.data(), d, eps, mode == NormMode::gemma, dtype, row.data());
          else
            row.assign(in, in + d);
          double* out = &want[size_t(((bi * h + hi) * l + li) * d)];
          for (int64_t j = 0; j < d; ++j) {
            const float angle = float(offsets[size_t(bi)] + li) * inv_freq[size_t(j % half)];
            const double c = round_to(dtype, std::cos(double(angle))), s = round_to(dtype, std::sin(double(angle)));
            const double rot = j < half ? -row[size_t(j + half)] : row[size_t(j - half)];
            out[j] = row[size_t(j)] * c + rot * s;
          }
        }

    const Array got = fast::rope_heads(x.array, f, o, np);
    ASSERT_EQ(got.shape(), Shape({b, h, l, d}));
    EXPECT_EQ(got.dtype(), dtype);
    // The rope test's three roundings, plus the norm's: an f32 statistic one bit away from
    // float64 can move a rounded normed value by a unit, which the rotation carries.
    const double atol = np ? 24 * u + 1e-5 : 6 * u + 1e-6;
    expect_close(got, want, 2 * u, atol, "vs float64");
    expect_close(got, as_doubles(fast::reference::rope_heads(x.array, f, o, np)), 2 * u, np ? 12 * u + 1e-6 : 2 * u + 1e-6,
                 "vs reference");
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, RopeHeadsTest,
                         ::testing::Combine(::testing::ValuesIn(kFloatDtypes), ::testing::Values(1, 5),
                                            ::testing::Values(2, 66, 96, 128, 256, 258),
                                            ::testing::Values(NormMode::none, NormMode::llama, NormMode::gemma)),
                         [](const auto& info) {
                           return dtype_param_name(std::get<0>(info.param)) + "_h" +
                                  std::to_string(std::get<1>(info.param)) + "_d" + std::to_string(std::get<2>(info.param)) +
                                  "_" + mode_name(std::get<3>(info.param));
                         });

TEST(RopeHeadsTest, RejectsBadShapes) {
  const Array f = zeros({4}, Dtype::f32), o = zeros({2}, Dtype::i32);
  expect_op_error([&] { fast::rope_heads(zeros({2, 3, 8}), f, o); }, "rope_heads");
  expect_op_error([&] { fast::rope_heads(zeros({2, 3, 1, 6}), f, o); }, "rope");  // inv_freq for D = 8
  const fast::HeadNorm n{zeros({4}), 1e-6f, fast::RmsNormStyle::llama};
  expect_op_error([&] { fast::rope_heads(zeros({2, 3, 1, 8}), f, o, &n); }, "rope_heads");  // norm weight [4]
}

// ---------------------------------------------------------------- add_rms_norm

using AddNormParam = std::tuple<Dtype, int64_t, bool, bool>;  // dtype, D, gemma, y normed first
class AddNormTest : public ::testing::TestWithParam<AddNormParam> {};

TEST_P(AddNormTest, MatchesFormulaAndComposition) {
  const auto [dtype, d, gemma, sandwich] = GetParam();
  const int64_t rows = 3;
  const double u = unit_roundoff(dtype);
  const float eps = 1e-5f;
  const fast::RmsNormStyle style = gemma ? fast::RmsNormStyle::gemma : fast::RmsNormStyle::llama;
  for (Device dev : test_devices()) {
    const Input x = random_input({rows, d}, dtype, 51 + d, -3, 3, dev);   // residual [3, D]
    const Input y = random_input({rows, d}, dtype, 52 + d, -3, 3, dev);   // sub-block output [3, D]
    const Input w = random_input({d}, dtype, 53 + d, -1.5, 1.5, dev);     // next norm [D]
    const Input yw = random_input({d}, dtype, 54 + d, -1.5, 1.5, dev);    // y's own norm [D]
    std::vector<double> want_sum(x.values.size()), want_norm(x.values.size()), yn(static_cast<size_t>(d));
    for (int64_t r = 0; r < rows; ++r) {
      const size_t at = size_t(r * d);
      if (sandwich)
        rms_row(&y.values[at], yw.values.data(), d, eps, gemma, dtype, yn.data());
      else
        yn.assign(y.values.begin() + ptrdiff_t(at), y.values.begin() + ptrdiff_t(at + size_t(d)));
      for (int64_t i = 0; i < d; ++i) want_sum[at + size_t(i)] = round_to(dtype, x.values[at + size_t(i)] + yn[size_t(i)]);
      rms_row(&want_sum[at], w.values.data(), d, eps, gemma, dtype, &want_norm[at]);
    }
    const fast::AddNorm got = fast::add_rms_norm(x.array, y.array, w.array, eps, style, sandwich ? &yw.array : nullptr);
    ASSERT_EQ(got.sum.shape(), x.array.shape());
    ASSERT_EQ(got.normed.shape(), x.array.shape());
    // The sum is one rounding of exact inputs. With y normed first, a unit of the normed y
    // (values up to ~4, from a statistic one bit away) can move it by far more than its own
    // unit where x and the normed y cancel; the final norm carries that error on.
    // The f32 statistic's own error grows like sqrt(D) ulps of f32 with the summation order.
    const double stat = 16 * std::sqrt(double(d)) * 0x1p-24;
    const double sum_atol = sandwich ? 32 * u + stat : 0, norm_atol = (sandwich ? 32 : 8) * u + stat + 1e-6;
    expect_close(got.sum, want_sum, sandwich ? 4 * u : u, sandwich ? sum_atol : 1e-7, "sum vs float64");
    expect_close(got.normed, want_norm, 6 * u + 1e-5, norm_atol, "normed vs float64");
    const fast::AddNorm ref =
        fast::reference::add_rms_norm(x.array, y.array, w.array, eps, style, sandwich ? &yw.array : nullptr);
    expect_close(got.sum, as_doubles(ref.sum), sandwich ? 4 * u : 0, sum_atol, "sum vs reference");
    expect_close(got.normed, as_doubles(ref.normed), 6 * u + 1e-6, norm_atol, "normed vs reference");
    // Plain rms_norm takes the same vectorised kernel on such rows.
    expect_close(fast::rms_norm(got.sum, w.array, eps, style), as_doubles(got.normed), 6 * u + 1e-6, 8 * u + 1e-7,
                 "rms_norm of the sum");
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, AddNormTest,
                         ::testing::Combine(::testing::ValuesIn(kFloatDtypes),
                                            ::testing::Values(8, 33, 1024, 1152, 8192, 8200),
                                            ::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return dtype_param_name(std::get<0>(info.param)) + "_" +
                                  std::to_string(std::get<1>(info.param)) + (std::get<2>(info.param) ? "_gemma" : "_llama") +
                                  (std::get<3>(info.param) ? "_sandwich" : "");
                         });

TEST(AddNormTest, RejectsMismatchedInputs) {
  const Array w = zeros({8});
  expect_op_error([&] { fast::add_rms_norm(zeros({2, 8}), zeros({2, 9}), w, 1e-6f, fast::RmsNormStyle::llama); },
                  "add_rms_norm");
  expect_op_error([&] { fast::add_rms_norm(zeros({2, 8}), zeros({2, 8}, Dtype::bf16), w, 1e-6f, fast::RmsNormStyle::llama); },
                  "add_rms_norm");
  expect_op_error([&] { fast::add_rms_norm(zeros({2, 8}), zeros({2, 8}), zeros({4}), 1e-6f, fast::RmsNormStyle::llama); },
                  "add_rms_norm");
}

}  // namespace
}  // namespace lmx::test
