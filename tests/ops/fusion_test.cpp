// The layer fusions (rope_heads: per-head norm + RoPE + transpose; rope_to_cache: that for
// q and k with k and v written into cache slots; add_rms_norm: residual
// add + RMSNorm; self_attention: norm + RoPE + causal attention from token order;
// gated_projection: the MLP's gate and up GEMMs with the activation) against
// float64 formulas and against their fast::reference compositions, in every float dtype,
// at sizes on both sides of the fused kernels' limits (head_dim 256, rows of whole 16-byte
// vectors, four vectors per thread, 128 tokens).
#include <cmath>
#include <tuple>

#include "harness.h"

#if defined(LMX_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

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

std::vector<float> rope_freqs(int64_t d) {  // [D/2], base 10000
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (size_t i = 0; i < f.size(); ++i) f[i] = float(1.0 / std::pow(10000.0, 2.0 * double(i) / double(d)));
  return f;
}

// One head vector of d values after the optional per-head norm (weights w) and RoPE at
// `pos`, in float64 with the ops' roundings of the norm and of cos/sin; the rotation
// itself is not rounded.
void rotate_row(const double* in, const double* w, NormMode mode, float eps, Dtype t, int64_t pos,
                const std::vector<float>& inv_freq, int64_t d, double* out) {
  const int64_t half = d / 2;
  std::vector<double> row(in, in + d);
  if (mode != NormMode::none) rms_row(in, w, d, eps, mode == NormMode::gemma, t, row.data());
  for (int64_t j = 0; j < d; ++j) {
    const float angle = float(pos) * inv_freq[size_t(j % half)];
    const double c = round_to(t, std::cos(double(angle))), s = round_to(t, std::sin(double(angle)));
    const double rot = j < half ? -row[size_t(j + half)] : row[size_t(j - half)];
    out[j] = row[size_t(j)] * c + rot * s;
  }
}

using RopeHeadsParam = std::tuple<Dtype, int64_t, int64_t, NormMode>;  // dtype, H, D, norm
class RopeHeadsTest : public ::testing::TestWithParam<RopeHeadsParam> {};

TEST_P(RopeHeadsTest, MatchesFormulaAndComposition) {
  const auto [dtype, h, d, mode] = GetParam();
  const int64_t b = 2, l = 7, half = d / 2;
  const double u = unit_roundoff(dtype);
  const float eps = 1e-6f;
  const std::vector<float> inv_freq = rope_freqs(d);  // [D/2]
  const std::vector<int32_t> offsets{0, 4090};  // [B]
  for (Device dev : test_devices()) {
    const Input x = random_input({b, l, h, d}, dtype, 41 + h + d, -3, 3, dev);  // x [B, L, H, D]
    const Input w = random_input({d}, dtype, 42 + d, -1.5, 1.5, dev);           // w [D]
    const Array f = to_device(from_vector(inv_freq, {half}), dev);
    const Array o = to_device(from_vector(offsets, {b}), dev);
    const fast::HeadNorm norm{w.array, eps, mode == NormMode::gemma ? fast::RmsNormStyle::gemma : fast::RmsNormStyle::llama};
    const fast::HeadNorm* np = mode == NormMode::none ? nullptr : &norm;

    std::vector<double> want(x.values.size());  // [B, H, L, D]
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t li = 0; li < l; ++li)
        for (int64_t hi = 0; hi < h; ++hi)
          rotate_row(&x.values[size_t(((bi * l + li) * h + hi) * d)], w.values.data(), mode, eps, dtype,
                     offsets[size_t(bi)] + li, inv_freq, d, &want[size_t(((bi * h + hi) * l + li) * d)]);

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

// ---------------------------------------------------------------- rope_to_cache

using RopeToCacheParam = std::tuple<Dtype, int64_t, NormMode, int64_t>;  // dtype, D, norm, L
class RopeToCacheTest : public ::testing::TestWithParam<RopeToCacheParam> {};

// The fused form must give the composition's values, in the slots and nowhere else of
// the caches: the kernel where it runs (whole 16-byte vectors a half, D <= 256), the
// composition where it declines (D = 66 in 16-bit types, 258).
TEST_P(RopeToCacheTest, WritesTheCompositionIntoTheSlotsAlone) {
  const auto [dtype, d, mode, l] = GetParam();
  const int64_t b = 2, hq = 6, hkv = 2, capacity = 9, first = 3;  // the new tokens go to [3, 3 + L)
  const double u = unit_roundoff(dtype);
  const std::vector<float> inv_freq = rope_freqs(d);  // [D/2]
  const std::vector<int32_t> offsets{first, 4090};     // [B]
  for (Device dev : test_devices()) {
    const Input q = random_input({b, l, hq, d}, dtype, 71 + d, -3, 3, dev);          // [B, L, Hq, D]
    const Input k = random_input({b, l, hkv, d}, dtype, 72 + d, -3, 3, dev);         // [B, L, Hkv, D]
    const Input v = random_input({b, l, hkv, d}, dtype, 73 + d, -3, 3, dev);         // [B, L, Hkv, D]
    const Input held = random_input({b, hkv, capacity, d}, dtype, 74 + d, -3, 3, dev);  // the caches before
    const Input wq = random_input({d}, dtype, 75 + d, -1.5, 1.5, dev), wk = random_input({d}, dtype, 76 + d, -1.5, 1.5, dev);
    const Array f = to_device(from_vector(inv_freq, {d / 2}), dev);
    const Array o = to_device(from_vector(offsets, {b}), dev);
    const fast::RmsNormStyle style = mode == NormMode::gemma ? fast::RmsNormStyle::gemma : fast::RmsNormStyle::llama;
    const fast::HeadNorm qn{wq.array, 1e-6f, style}, kn{wk.array, 1e-6f, style};
    const fast::HeadNorm* qp = mode == NormMode::none ? nullptr : &qn;
    const fast::HeadNorm* kp = mode == NormMode::none ? nullptr : &kn;
    // Caches [B, Hkv, 9, D] holding other values; the slots are positions [3, 3 + L).
    auto slots_of = [&](const Array& kc, const Array& vc) {
      return fast::CacheSlots{slice_axis(kc, 2, first, first + l), slice_axis(vc, 2, first, first + l)};
    };
    const Array k_cache = copy(held.array), v_cache = copy(held.array);
    const Array got_q = fast::rope_to_cache(q.array, k.array, v.array, f, o, qp, kp, slots_of(k_cache, v_cache));
    ASSERT_EQ(got_q.shape(), Shape({b, hq, l, d}));
    EXPECT_EQ(to_floats(got_q), to_floats(fast::rope_heads(q.array, f, o, qp))) << "q";
    EXPECT_EQ(to_floats(slots_of(k_cache, v_cache).k), to_floats(fast::rope_heads(k.array, f, o, kp))) << "k slots";
    EXPECT_EQ(to_floats(slots_of(k_cache, v_cache).v), to_floats(swapaxes(v.array, 1, 2))) << "v slots";
    for (const Array& cache : {k_cache, v_cache})
      for (const auto& [lo, hi] : {std::pair{int64_t(0), first}, std::pair{first + l, capacity}})
        EXPECT_EQ(to_floats(slice_axis(cache, 2, lo, hi)), to_floats(slice_axis(held.array, 2, lo, hi)))
            << "positions " << lo << " to " << hi << " must be left alone";
    // And the reference composition, within the rope_heads test's bounds.
    const Array k_ref = copy(held.array), v_ref = copy(held.array);
    const Array ref_q = fast::reference::rope_to_cache(q.array, k.array, v.array, f, o, qp, kp, slots_of(k_ref, v_ref));
    const double rtol = 2 * u, atol = qp ? 12 * u + 1e-6 : 2 * u + 1e-6;
    expect_close(got_q, as_doubles(ref_q), rtol, atol, "q vs reference");
    expect_close(k_cache, as_doubles(k_ref), rtol, atol, "k cache vs reference");
    expect_close(v_cache, as_doubles(v_ref), 0, 0, "v cache vs reference");
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, RopeToCacheTest,
                         ::testing::Combine(::testing::ValuesIn(kFloatDtypes), ::testing::Values(64, 66, 128, 256, 258),
                                            ::testing::Values(NormMode::none, NormMode::llama, NormMode::gemma),
                                            ::testing::Values(1, 5)),
                         [](const auto& info) {
                           return dtype_param_name(std::get<0>(info.param)) + "_d" + std::to_string(std::get<1>(info.param)) +
                                  "_" + mode_name(std::get<2>(info.param)) + "_l" + std::to_string(std::get<3>(info.param));
                         });

TEST(RopeToCacheTest, RejectsBadArgumentsAndWritesNothing) {
  const Array f = zeros({4}, Dtype::f32), o = zeros({2}, Dtype::i32);
  const Array q = ones({2, 1, 4, 8}), k = ones({2, 1, 2, 8});
  const Array kc = zeros({2, 2, 5, 8}), vc = zeros({2, 2, 5, 8});
  const fast::CacheSlots slots{slice_axis(kc, 2, 1, 2), slice_axis(vc, 2, 1, 2)};
  const fast::HeadNorm n{ones({8}), 1e-6f, fast::RmsNormStyle::llama};
  expect_op_error([&] { fast::rope_to_cache(q, k, ones({2, 1, 3, 8}), f, o, nullptr, nullptr, slots); }, "rope_to_cache");
  expect_op_error([&] { fast::rope_to_cache(q, k, k, f, o, &n, nullptr, slots); }, "rope_to_cache");  // one norm
  expect_op_error([&] { fast::rope_to_cache(q, k, k, f, o, nullptr, nullptr, {slice_axis(kc, 2, 1, 3), slots.v}); },
                  "rope_to_cache");  // slots for two positions, one token
  expect_op_error([&] { fast::rope_to_cache(q, k, astype(k, Dtype::bf16), f, o, nullptr, nullptr, slots); },
                  "rope_to_cache");
  expect_op_error([&] { fast::rope_to_cache(q, k, k, zeros({3}, Dtype::f32), o, nullptr, nullptr, slots); }, "rope");
  EXPECT_EQ(to_floats(kc), std::vector<float>(size_t(kc.size()), 0.0f));
  EXPECT_EQ(to_floats(vc), std::vector<float>(size_t(vc.size()), 0.0f));
}

// ---------------------------------------------------------------- add_rms_norm

using AddNormParam = std::tuple<Dtype, int64_t, bool, bool>;  // dtype, D, gemma, y normed first
class AddNormTest : public ::testing::TestWithParam<AddNormParam> {};

TEST_P(AddNormTest, MatchesFormulaAndComposition) {
  const auto [dtype, d, gemma, sandwich] = GetParam();
  // CUDA takes some rows a warp each, 4 a block: 7 rows make one whole block and one part.
  const int64_t rows = 7;
  const double u = unit_roundoff(dtype);
  const float eps = 1e-5f;
  const fast::RmsNormStyle style = gemma ? fast::RmsNormStyle::gemma : fast::RmsNormStyle::llama;
  for (Device dev : test_devices()) {
    const Input x = random_input({rows, d}, dtype, 51 + d, -3, 3, dev);   // residual [7, D]
    const Input y = random_input({rows, d}, dtype, 52 + d, -3, 3, dev);   // sub-block output [7, D]
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

// ---------------------------------------------------------------- self_attention

struct Heads {
  int64_t hq, hkv, d;
};
using SelfAttentionParam = std::tuple<Dtype, int64_t, Heads, NormMode, int64_t>;  // dtype, L, heads, norm, window
class SelfAttentionTest : public ::testing::TestWithParam<SelfAttentionParam> {};

// self_attention of b rows (RoPE offsets first, first + step, first + 2 step, ...) against
// float64 and the composition.
void check_self_attention(Dtype dtype, int64_t b, int64_t l, Heads heads, NormMode mode,
                          int64_t window, int32_t first = 0, int32_t step = 37) {
  const auto [hq, hkv, d] = heads;
  const int64_t group = hq / hkv;
  const double u = unit_roundoff(dtype);
  const float eps = 1e-6f, scale = float(1.0 / std::sqrt(double(d)));
  const std::vector<float> inv_freq = rope_freqs(d);
  std::vector<int32_t> offsets(static_cast<size_t>(b));  // [B]
  for (int64_t i = 0; i < b; ++i) offsets[size_t(i)] = first + step * int32_t(i);
  for (Device dev : test_devices()) {
    const Input q = random_input({b, l, hq, d}, dtype, 61 + l + d, -1, 1, dev);   // [B, L, Hq, D]
    const Input k = random_input({b, l, hkv, d}, dtype, 62 + l + d, -1, 1, dev);  // [B, L, Hkv, D]
    const Input v = random_input({b, l, hkv, d}, dtype, 63 + l + d, -1, 1, dev);
    const Input qw = random_input({d}, dtype, 64 + d, -1.5, 1.5, dev), kw = random_input({d}, dtype, 65 + d, -1.5, 1.5, dev);
    const fast::RmsNormStyle style = mode == NormMode::gemma ? fast::RmsNormStyle::gemma : fast::RmsNormStyle::llama;
    const fast::HeadNorm qn{qw.array, eps, style}, kn{kw.array, eps, style};
    fast::SelfAttention a;
    a.inv_freq = to_device(from_vector(inv_freq, {d / 2}), dev);
    a.offsets = to_device(from_vector(offsets, {b}), dev);
    a.q_norm = mode == NormMode::none ? nullptr : &qn;
    a.k_norm = mode == NormMode::none ? nullptr : &kn;
    a.scale = scale;
    a.window = window;

    // float64: q and k normed, rotated and rounded (the ops keep them in the dtype), then
    // causal (and windowed) softmax attention with no further rounding.
    auto rotated = [&](const Input& x, int64_t h, const Input& w) {  // [B, L, h, D]
      std::vector<double> out(x.values.size());
      for (int64_t row = 0; row < b * l * h; ++row) {
        const int64_t pos = offsets[size_t(row / (l * h))] + row / h % l;
        rotate_row(&x.values[size_t(row * d)], w.values.data(), mode, eps, dtype, pos, inv_freq, d, &out[size_t(row * d)]);
        for (int64_t j = 0; j < d; ++j) out[size_t(row * d + j)] = round_to(dtype, out[size_t(row * d + j)]);
      }
      return out;
    };
    const std::vector<double> qr = rotated(q, hq, qw), kr = rotated(k, hkv, kw);
    std::vector<double> want(q.values.size()), p(static_cast<size_t>(l));
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t h = 0; h < hq; ++h)
        for (int64_t i = 0; i < l; ++i) {
          const double* qi = &qr[size_t(((bi * l + i) * hq + h) * d)];
          const int64_t first = window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
          double m = -INFINITY, sum = 0;
          for (int64_t t = first; t <= i; ++t) {
            const double* kt = &kr[size_t(((bi * l + t) * hkv + h / group) * d)];
            double s = 0;
            for (int64_t j = 0; j < d; ++j) s += qi[j] * kt[j];
            p[size_t(t)] = s * scale;
            m = std::max(m, p[size_t(t)]);
          }
          for (int64_t t = first; t <= i; ++t) sum += p[size_t(t)] = std::exp(p[size_t(t)] - m);
          double* o = &want[size_t(((bi * l + i) * hq + h) * d)];
          for (int64_t j = 0; j < d; ++j) {
            double acc = 0;
            for (int64_t t = first; t <= i; ++t) acc += p[size_t(t)] * v.values[size_t(((bi * l + t) * hkv + h / group) * d + j)];
            o[j] = acc / sum;
          }
        }

    const Array got = fast::self_attention(q.array, k.array, v.array, a);
    ASSERT_EQ(got.shape(), Shape({b, l, hq, d}));
    EXPECT_EQ(got.dtype(), dtype);
    // Scores are rounded twice and probabilities once (each a relative unit, |v| <= 1);
    // a rotated value one unit away from float64 moves a score by about u * |q| |k|. The
    // f32 dot products of D terms differ from another summation order by about sqrt(D)
    // ulps of f32.
    const double order = 4 * std::sqrt(double(d)) * 0x1p-24;
    expect_close(got, want, 4 * u, 12 * u + order + 1e-6, "vs float64");
    const Array ref = fast::reference::self_attention(q.array, k.array, v.array, a);
    expect_close(got, as_doubles(contiguous(ref)), 2 * u, 6 * u + order, "vs reference");
  }
}

TEST_P(SelfAttentionTest, MatchesFormulaAndComposition) {
  const auto [dtype, l, heads, mode, window] = GetParam();
  check_self_attention(dtype, 2, l, heads, mode, window);
}

// Enough rows that the CUDA kernel keeps a kv head's query heads in one block (with few
// rows it splits them over blocks to fill the GPU).
TEST(SelfAttentionTest, ManyRowsMatchFormulaAndComposition) {
  check_self_attention(Dtype::bf16, 300, 33, Heads{8, 2, 64}, NormMode::llama, 0);
  check_self_attention(Dtype::f16, 600, 16, Heads{4, 1, 128}, NormMode::gemma, 9);
}

// Every row at the same positions, as in classification: the CUDA kernel's blocks all take
// their angles from one table (rows at other positions work out their own).
TEST(SelfAttentionTest, RowsAtOnePositionMatchFormulaAndComposition) {
  check_self_attention(Dtype::bf16, 300, 32, Heads{4, 2, 128}, NormMode::llama, 0, 0, 0);
  check_self_attention(Dtype::bf16, 40, 29, Heads{4, 1, 256}, NormMode::gemma, 7, 1000, 0);
  check_self_attention(Dtype::f16, 64, 100, Heads{8, 2, 64}, NormMode::none, 0, 5, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Ops, SelfAttentionTest,
    ::testing::Combine(::testing::ValuesIn(kFloatDtypes), ::testing::Values(1, 17, 64, 128, 129),
                       ::testing::Values(Heads{4, 1, 32}, Heads{2, 2, 48}, Heads{4, 2, 128}, Heads{4, 1, 256}),
                       ::testing::Values(NormMode::none, NormMode::llama, NormMode::gemma), ::testing::Values(0, 5)),
    [](const auto& info) {
      const Heads h = std::get<2>(info.param);
      return dtype_param_name(std::get<0>(info.param)) + "_l" + std::to_string(std::get<1>(info.param)) + "_h" +
             std::to_string(h.hq) + "x" + std::to_string(h.hkv) + "_d" + std::to_string(h.d) + "_" +
             mode_name(std::get<3>(info.param)) + (std::get<4>(info.param) ? "_window" : "");
    });

TEST(SelfAttentionTest, RejectsBadShapes) {
  fast::SelfAttention a;
  a.inv_freq = zeros({4});
  a.offsets = zeros({2}, Dtype::i32);
  a.scale = 1;
  const Array q = zeros({2, 3, 4, 8}), kv = zeros({2, 3, 2, 8});
  expect_op_error([&] { fast::self_attention(q, zeros({2, 3, 3, 8}), zeros({2, 3, 3, 8}), a); }, "self_attention");
  expect_op_error([&] { fast::self_attention(q, kv, zeros({2, 4, 2, 8}), a); }, "self_attention");
  expect_op_error([&] { fast::self_attention(q, kv, astype(kv, Dtype::bf16), a); }, "self_attention");
  const fast::HeadNorm n{zeros({8}), 1e-6f, fast::RmsNormStyle::llama};
  a.q_norm = &n;  // without k_norm
  expect_op_error([&] { fast::self_attention(q, kv, kv, a); }, "self_attention");
}

// ---------------------------------------------------------------- gated_projection

// True where GPU 0 is a Hopper (sm_90), whose backend runs gated_projection as one kernel
// for bf16 at R >= 256, N % 128 == 0, K % 64 == 0 up to 1,536. (Up to 64 rows any GPU
// runs it as two GEMMs in one launch and the activation.)
bool gpu_is_hopper() {
#if defined(LMX_HAVE_CUDA)
  cudaDeviceProp p{};
  return cudaGetDeviceProperties(&p, 0) == cudaSuccess && p.major == 9 && p.minor == 0;
#else
  return false;
#endif
}

// Copies of two [N, K] weights one after the other in one block, as a loaded layer's
// usually lie: a backend that pairs the two products by their distance can always reach.
std::pair<Array, Array> adjacent(const Array& a, const Array& b) {
  const Array both = concatenate({expand_dims(a, 0), expand_dims(b, 0)}, 0);  // [2, N, K]
  return {squeeze(slice_axis(both, 0, 0, 1), {0}), squeeze(slice_axis(both, 0, 1, 2), {0})};
}

using GatedParam = std::tuple<Dtype, int64_t, int64_t, int64_t>;  // dtype, rows R, K, N
class GatedProjectionTest : public ::testing::TestWithParam<GatedParam> {};

TEST_P(GatedProjectionTest, MatchesFloat64AndComposition) {
  const auto [dtype, rows, k, n] = GetParam();
  const double u = unit_roundoff(dtype);
  const double w = 3 / std::sqrt(double(k));  // sums of a few units: both activations' curved parts
  for (Device dev : test_devices()) {
    const Input x = random_input({rows, k}, dtype, 61 + k, -1, 1, dev);  // [R, K]
    const Input wg = random_input({n, k}, dtype, 62 + n, -w, w, dev);    // [N, K]
    const Input wu = random_input({n, k}, dtype, 63 + n, -w, w, dev);    // [N, K]
    for (auto act : {fast::GluActivation::silu, fast::GluActivation::gelu_tanh}) {
      // [R, N]: the exact sums, each rounded to the dtype, then glu's two roundings.
      std::vector<double> want(size_t(rows * n));
      double largest = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < n; ++j) {
          double g = 0, v = 0;
          for (int64_t c = 0; c < k; ++c) {
            g += x.values[size_t(r * k + c)] * wg.values[size_t(j * k + c)];
            v += x.values[size_t(r * k + c)] * wu.values[size_t(j * k + c)];
          }
          g = round_to(dtype, g);
          const double a = act == fast::GluActivation::silu
                               ? g / (1 + std::exp(-g))
                               : 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
          want[size_t(r * n + j)] = round_to(dtype, round_to(dtype, a) * round_to(dtype, v));
          largest = std::max(largest, std::abs(want[size_t(r * n + j)]));
        }
      // f32 sums may round the gate or up to the neighbouring value, the activation's f32
      // error may move its rounding, and the product rounds once more: a few units. Where
      // the activation is steep relative to its value (silu, gelu below -2) a unit of the
      // gate moves the output by several of its own units; such outputs are small, which
      // the absolute term covers (one unit of the largest output). f32 adds its sums' error.
      const double rtol = 6 * u, atol = (u + 1e-5) * largest;
      const Array got = fast::gated_projection(x.array, wg.array, wu.array, act);
      ASSERT_EQ(got.shape(), (Shape{rows, n}));
      expect_close(got, want, rtol, atol, "vs float64");
      expect_close(got, as_doubles(fast::reference::gated_projection(x.array, wg.array, wu.array, act)), rtol, atol,
                   "vs composition");
      if (dev.type == Device::Type::cuda && dtype == Dtype::bf16 && rows >= 256 && n % 128 == 0 && k % 64 == 0 &&
          k <= 1536 && gpu_is_hopper()) {
        const Array out = detail::kernels_for(dev).gated_projection(act, x.array, wg.array, wu.array);
        ASSERT_TRUE(out.valid()) << "the Hopper kernel declined a shape it takes";
        expect_close(out, want, rtol, atol, "kernel vs float64");
      }
      if (dev.type == Device::Type::cuda && rows <= 64) {
        // Both GEMMs in one batched launch, stepping from one weight to the other: with the
        // weights in either order of address. They lie in one block here, so the pair is
        // always within reach (two separate allocations may lie farther apart than it takes).
        const auto [g, up] = adjacent(wg.array, wu.array);
        const Array out = detail::kernels_for(dev).gated_projection(act, x.array, g, up);
        ASSERT_TRUE(out.valid()) << "the paired GEMMs declined " << rows << " rows";
        expect_close(out, want, rtol, atol, "paired GEMMs vs float64");
        const Array swapped = detail::kernels_for(dev).gated_projection(act, x.array, up, g);
        ASSERT_TRUE(swapped.valid());
        expect_close(swapped, as_doubles(fast::reference::gated_projection(x.array, wu.array, wg.array, act)), rtol,
                     atol, "paired GEMMs, weights swapped, vs composition");
      }
    }
  }
}

// Shapes on both sides of the Hopper kernel's limits: a tiny one; rows that end inside a
// tile pair (300), a ring of 4 stages wrapping within a tile (K 320); more cluster tiles
// (8 row pairs × 9 columns) than clusters fit at once, so each takes several in turn;
// and N not a multiple of 128, too few rows or K above 1,536, which it declines.
INSTANTIATE_TEST_SUITE_P(
    Ops, GatedProjectionTest,
    ::testing::Values(GatedParam{Dtype::f32, 3, 8, 5}, GatedParam{Dtype::f16, 3, 8, 5}, GatedParam{Dtype::bf16, 3, 8, 5},
                      GatedParam{Dtype::f32, 300, 128, 256}, GatedParam{Dtype::bf16, 300, 128, 256},
                      GatedParam{Dtype::bf16, 512, 320, 384}, GatedParam{Dtype::bf16, 2048, 128, 1152},
                      GatedParam{Dtype::bf16, 256, 64, 200}, GatedParam{Dtype::bf16, 255, 64, 128},
                      GatedParam{Dtype::bf16, 256, 1600, 128}),
    [](const auto& info) {
      return dtype_param_name(std::get<0>(info.param)) + "_" + std::to_string(std::get<1>(info.param)) + "x" +
             std::to_string(std::get<2>(info.param)) + "_" + std::to_string(std::get<3>(info.param));
    });

// ---------------------------------------------------------------- linear_pair

using PairParam = std::tuple<Dtype, int64_t, int64_t, int64_t>;  // dtype, rows R, K, N
class LinearPairTest : public ::testing::TestWithParam<PairParam> {};

TEST_P(LinearPairTest, MatchesFloat64) {
  const auto [dtype, rows, k, n] = GetParam();
  const double u = unit_roundoff(dtype);
  for (Device dev : test_devices()) {
    const Input x = random_input({rows, k}, dtype, 71 + k, -1, 1, dev);  // [R, K]
    const Input w0 = random_input({n, k}, dtype, 72 + n, -1, 1, dev);   // [N, K]
    const Input w1 = random_input({n, k}, dtype, 73 + n, -1, 1, dev);   // [N, K]
    // [R, N] each: the exact sums, rounded once to the dtype (f32 adds its sums' error).
    auto exact = [&](const Input& w) {
      std::vector<double> out(size_t(rows * n));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t c = 0; c < k; ++c) s += x.values[size_t(r * k + c)] * w.values[size_t(j * k + c)];
          out[size_t(r * n + j)] = round_to(dtype, s);
        }
      return out;
    };
    const std::vector<double> want0 = exact(w0), want1 = exact(w1);
    const double rtol = 2 * u, atol = 4e-7 * double(k);  // f32 sums: a few units of their terms
    // As a [2, R/2, K] batch too (the layers' [B, L, K]): the same rows, the same products.
    for (const Shape& shape : {Shape{rows, k}, Shape{2, rows / 2, k}}) {
      const Array in = reshape(x.array, shape);
      Shape out_shape = shape;
      out_shape.back() = n;
      // Both orders of the weights: a backend that steps from one to the other by address
      // must hand each product back in its place.
      const auto [a, b] = fast::linear_pair(in, w0.array, w1.array);
      ASSERT_EQ(a.shape(), out_shape);
      ASSERT_EQ(b.shape(), out_shape);
      expect_close(reshape(a, {rows, n}), want0, rtol, atol, "x·w0ᵀ");
      expect_close(reshape(b, {rows, n}), want1, rtol, atol, "x·w1ᵀ");
      const auto [c, d] = fast::linear_pair(in, w1.array, w0.array);
      expect_close(reshape(c, {rows, n}), want1, rtol, atol, "x·w1ᵀ, swapped");
      expect_close(reshape(d, {rows, n}), want0, rtol, atol, "x·w0ᵀ, swapped");
    }
    if (dev.type == Device::Type::cuda && rows <= 64) {
      const auto [a0, a1] = adjacent(w0.array, w1.array);
      EXPECT_TRUE(detail::kernels_for(dev).linear_pair(x.array, a0, a1).first.valid())
          << "the paired GEMMs declined " << rows << " rows";
    }
  }
}

// Rows a decode step has (paired on CUDA) and a prefill's (two GEMMs).
INSTANTIATE_TEST_SUITE_P(
    Ops, LinearPairTest,
    ::testing::Values(PairParam{Dtype::f32, 4, 8, 5}, PairParam{Dtype::bf16, 4, 8, 5},
                      PairParam{Dtype::bf16, 64, 256, 128}, PairParam{Dtype::f16, 64, 96, 40},
                      PairParam{Dtype::bf16, 66, 64, 48}, PairParam{Dtype::bf16, 300, 64, 48}),
    [](const auto& info) {
      return dtype_param_name(std::get<0>(info.param)) + "_" + std::to_string(std::get<1>(info.param)) + "x" +
             std::to_string(std::get<2>(info.param)) + "_" + std::to_string(std::get<3>(info.param));
    });

TEST(LinearPairTest, RejectsMismatchedWeights) {
  expect_op_error([] { fast::linear_pair(zeros({2, 8}), zeros({4, 8}), zeros({5, 8})); }, "linear_pair");
  expect_op_error([] { fast::linear_pair(zeros({2, 8}), zeros({4, 7}), zeros({4, 7})); }, "linear_pair");
  expect_op_error([] { fast::linear_pair(zeros({2, 8}, Dtype::i32), zeros({4, 8}), zeros({4, 8})); }, "linear_pair");
}

TEST(GatedProjectionTest, RejectsMismatchedWeights) {
  expect_op_error([] { fast::gated_projection(zeros({2, 8}), zeros({4, 8}), zeros({5, 8}), fast::GluActivation::silu); },
                  "gated_projection");
  expect_op_error([] { fast::gated_projection(zeros({2, 8}), zeros({4, 7}), zeros({4, 7}), fast::GluActivation::silu); },
                  "gated_projection");
  expect_op_error(
      [] { fast::gated_projection(zeros({2, 8}, Dtype::i32), zeros({4, 8}), zeros({4, 8}), fast::GluActivation::silu); },
      "gated_projection");
}

}  // namespace
}  // namespace lmx::test
