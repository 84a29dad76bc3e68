// The fused ops' gradients (each runs as its composition under a tape) against float64
// central differences of float64 forwards written from the models' math.
#include <algorithm>
#include <bit>
#include <cmath>

#include "cuda_available.h"
#include "grad_harness.h"
#include "ops/fast.h"

namespace lmx::test {
namespace {

// RMSNorm over the last axis: x·rsqrt(mean(x²) + eps)·w (Llama), or ·(1 + w) (Gemma).
HT rms_ref(const HT& x, const HT& w, double eps, bool gemma) {
  const int64_t d = x.shape.back();
  HT out = x;
  for (size_t r = 0; r < x.v.size(); r += size_t(d)) {
    double ms = 0;
    for (int64_t j = 0; j < d; ++j) ms += x.v[r + size_t(j)] * x.v[r + size_t(j)];
    const double inv = 1 / std::sqrt(ms / double(d) + eps);
    for (int64_t j = 0; j < d; ++j)
      out.v[r + size_t(j)] = x.v[r + size_t(j)] * inv * (w.v[size_t(j)] + (gemma ? 1 : 0));
  }
  return out;
}

// [A, B, C, D] -> [A, C, B, D]
HT swap12(const HT& t) {
  const int64_t a = t.shape[0], b = t.shape[1], c = t.shape[2], d = t.shape[3];
  HT out{{a, c, b, d}, std::vector<double>(t.v.size())};
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j)
      for (int64_t k = 0; k < c; ++k)
        for (int64_t e = 0; e < d; ++e)
          out.v[size_t(((i * c + k) * b + j) * d + e)] = t.v[size_t(((i * b + j) * c + k) * d + e)];
  return out;
}

const std::vector<float> kInvFreq{1.0f, 0.1f};  // head_dim 4
const std::vector<int32_t> kOffsets{0, 3};      // batch 2

// Rotate-half RoPE of x [B, H, L, D] at positions offsets[b] + l, the angles in f32 as lmx computes
// them.
HT rope_ref(const HT& x) {
  const int64_t b = x.shape[0], h = x.shape[1], l = x.shape[2], d = x.shape[3], half = d / 2;
  HT out = x;
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < h; ++j)
      for (int64_t p = 0; p < l; ++p) {
        const size_t at = size_t(((i * h + j) * l + p) * d);
        for (int64_t f = 0; f < half; ++f) {
          const double angle = double(float(kOffsets[size_t(i)] + p) * kInvFreq[size_t(f)]);
          const double c = double(std::cos(float(angle))), s = double(std::sin(float(angle)));
          const double x1 = x.v[at + size_t(f)], x2 = x.v[at + size_t(f + half)];
          out.v[at + size_t(f)] = x1 * c - x2 * s;
          out.v[at + size_t(f + half)] = x2 * c + x1 * s;
        }
      }
  return out;
}

// Causal attention: q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D], query row i at key position
// Lk - Lq + i, a window if > 0.
HT sdpa_ref(const HT& q, const HT& k, const HT& v, double scale, int64_t window = 0) {
  const int64_t b = q.shape[0], hq = q.shape[1], lq = q.shape[2], d = q.shape[3], hkv = k.shape[1],
                lk = k.shape[2];
  HT out{q.shape, std::vector<double>(q.v.size(), 0.0)};
  for (int64_t i = 0; i < b; ++i)
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t r = 0; r < lq; ++r) {
        const int64_t kv = h / (hq / hkv), pos = lk - lq + r;
        std::vector<double> p(size_t(lk), 0.0);
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < lk; ++j) {
          if (j > pos || (window > 0 && j <= pos - window)) continue;
          double dot = 0;
          for (int64_t e = 0; e < d; ++e)
            dot += q.v[size_t(((i * hq + h) * lq + r) * d + e)] *
                   k.v[size_t(((i * hkv + kv) * lk + j) * d + e)];
          p[size_t(j)] = dot * scale;
          m = std::max(m, p[size_t(j)]);
        }
        for (int64_t j = 0; j <= pos; ++j)
          if (!(window > 0 && j <= pos - window)) s += (p[size_t(j)] = std::exp(p[size_t(j)] - m));
        for (int64_t j = 0; j <= pos; ++j) {
          if (window > 0 && j <= pos - window) continue;
          for (int64_t e = 0; e < d; ++e)
            out.v[size_t(((i * hq + h) * lq + r) * d + e)] +=
                p[size_t(j)] / s * v.v[size_t(((i * hkv + kv) * lk + j) * d + e)];
        }
      }
  return out;
}

Array inv_freq(Device d) { return to_device(from_vector(kInvFreq, {2}), d); }
Array offsets(Device d) { return to_device(from_vector(kOffsets, {2}), d); }

TEST(FastGradTest, RmsNormInBothStyles) {
  for (const bool gemma : {false, true}) {
    const auto style = gemma ? fast::RmsNormStyle::gemma : fast::RmsNormStyle::llama;
    check_gradients(
        {gemma ? "gemma" : "llama",
         {{3, 8}, {8}},
         -2,
         2,
         [=](const std::vector<Array>& x) { return fast::rms_norm(x[0], x[1], 1e-5f, style); },
         [=](const std::vector<HT>& x) { return rms_ref(x[0], x[1], double(1e-5f), gemma); }});
  }
}

TEST(FastGradTest, ResidualAddAndNormWithASandwichNorm) {
  check_gradients(
      {"add_rms_norm",
       {{2, 3, 8}, {2, 3, 8}, {8}, {8}},
       -2,
       2,
       [](const std::vector<Array>& x) {
         const fast::AddNorm r =
             fast::add_rms_norm(x[0], x[1], x[2], 1e-6f, fast::RmsNormStyle::gemma, &x[3]);
         return concatenate({r.sum, r.normed}, -1);
       },
       [](const std::vector<HT>& x) {
         const HT sum = map2(x[0], rms_ref(x[1], x[3], double(1e-6f), true), std::plus<>());
         const HT normed = rms_ref(sum, x[2], double(1e-6f), true);
         HT out{{2, 3, 16}, {}};
         for (size_t r = 0; r < 6; ++r) {
           out.v.insert(out.v.end(), sum.v.begin() + long(r * 8), sum.v.begin() + long(r * 8 + 8));
           out.v.insert(out.v.end(), normed.v.begin() + long(r * 8),
                        normed.v.begin() + long(r * 8 + 8));
         }
         return out;
       }});
}

TEST(FastGradTest, GatedActivationsAndTheirProjections) {
  auto silu = [](double g, double u) { return g / (1 + std::exp(-g)) * u; };
  auto gelu = [](double g, double u) {
    return 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * u;
  };
  check_gradients(
      {"glu silu",
       {{3, 5}, {3, 5}},
       -3,
       3,
       [](const std::vector<Array>& x) { return fast::glu(x[0], x[1], fast::GluActivation::silu); },
       [&](const std::vector<HT>& x) { return map2(x[0], x[1], silu); }});
  check_gradients({"glu gelu",
                   {{3, 5}, {3, 5}},
                   -3,
                   3,
                   [](const std::vector<Array>& x) {
                     return fast::glu(x[0], x[1], fast::GluActivation::gelu_tanh);
                   },
                   [&](const std::vector<HT>& x) { return map2(x[0], x[1], gelu); }});
  auto transposed = [](const HT& w) {  // [N, K] -> [K, N]
    HT t{{w.shape[1], w.shape[0]}, std::vector<double>(w.v.size())};
    for (int64_t n = 0; n < w.shape[0]; ++n)
      for (int64_t k = 0; k < w.shape[1]; ++k)
        t.v[size_t(k * w.shape[0] + n)] = w.v[size_t(n * w.shape[1] + k)];
    return t;
  };
  check_gradients({"gated_projection",
                   {{2, 3, 4}, {5, 4}, {5, 4}},
                   -1,
                   1,
                   [](const std::vector<Array>& x) {
                     return fast::gated_projection(x[0], x[1], x[2], fast::GluActivation::silu);
                   },
                   [&](const std::vector<HT>& x) {
                     return map2(matmul_ref(x[0], transposed(x[1])),
                                 matmul_ref(x[0], transposed(x[2])), silu);
                   }});
  check_gradients({"linear_pair",
                   {{3, 4}, {5, 4}, {5, 4}},
                   -1,
                   1,
                   [](const std::vector<Array>& x) {
                     const auto [a, b] = fast::linear_pair(x[0], x[1], x[2]);
                     return multiply(a, b);
                   },
                   [&](const std::vector<HT>& x) {
                     return map2(matmul_ref(x[0], transposed(x[1])),
                                 matmul_ref(x[0], transposed(x[2])), std::multiplies<>());
                   }});
}

TEST(FastGradTest, RopeAndHeadNormedRope) {
  check_gradients({"rope",
                   {{2, 3, 5, 4}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) {
                     return fast::rope(x[0], inv_freq(x[0].device()), offsets(x[0].device()));
                   },
                   [](const std::vector<HT>& x) { return rope_ref(x[0]); }});
  check_gradients({"rope_heads with a norm",
                   {{2, 5, 3, 4}, {4}},
                   -2,
                   2,
                   [](const std::vector<Array>& x) {
                     const fast::HeadNorm norm{x[1], 1e-6f, fast::RmsNormStyle::llama};
                     return fast::rope_heads(x[0], inv_freq(x[0].device()), offsets(x[0].device()),
                                             &norm);
                   },
                   [](const std::vector<HT>& x) {
                     return rope_ref(swap12(rms_ref(x[0], x[1], double(1e-6f), false)));
                   }});
}

TEST(FastGradTest, CausalAttentionWithGroupedHeadsAndAWindow) {
  const float scale = 0.5f;
  for (const int64_t window : {int64_t(0), int64_t(3)}) {
    check_gradients(
        {"sdpa window " + std::to_string(window),
         {{2, 4, 6, 4}, {2, 2, 6, 4}, {2, 2, 6, 4}},
         -1.5,
         1.5,
         [=](const std::vector<Array>& x) {
           fast::AttentionMask mask;
           mask.window = window;
           return fast::scaled_dot_product_attention(x[0], x[1], x[2], scale, mask);
         },
         [=](const std::vector<HT>& x) { return sdpa_ref(x[0], x[1], x[2], scale, window); }});
  }
  // A cache's longer keys: query row i sits at key position Lk - Lq + i.
  check_gradients({"sdpa past keys",
                   {{1, 2, 3, 4}, {1, 1, 7, 4}, {1, 1, 7, 4}},
                   -1.5,
                   1.5,
                   [=](const std::vector<Array>& x) {
                     return fast::scaled_dot_product_attention(x[0], x[1], x[2], scale);
                   },
                   [=](const std::vector<HT>& x) { return sdpa_ref(x[0], x[1], x[2], scale); }});
}

// On CUDA a tracked attention is cuBLAS products around two row kernels
// (Kernels::eager_attention and eager_attention_grad); on the CPU, the composition's ops.
// At a training step's proportions in bf16 (64-wide heads, two query heads a kv head, 80
// positions), with a window and with padded keys, both give the same loss and gradients to
// within bf16's rounding.
TEST(FastGradTest, AttentionOnCudaIsTheCpusCompositionInBf16) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: the fused attention gradient is CUDA's";
  const float scale = 0.125f;
  const Array q = astype(random_uniform({2, 4, 80, 64}, 1, -2, 2), Dtype::bf16),
              k = astype(random_uniform({2, 2, 80, 64}, 2, -2, 2), Dtype::bf16),
              v = astype(random_uniform({2, 2, 80, 64}, 3, -2, 2), Dtype::bf16),
              r = random_uniform({2, 4, 80, 64}, 4, -1, 1);
  // Row 1's first 7 keys are padding. [2, 80]
  const Array key_valid = greater_equal(reshape(arange(0, 80, 1, Dtype::i32), {1, 80}),
                                        reshape(from_vector(std::vector<int32_t>{0, 7}, {2}), {2, 1}));
  for (const int64_t window : {int64_t(0), int64_t(24)}) {
    SCOPED_TRACE("window " + std::to_string(window));
    auto run = [&](Device d) {
      const std::vector<Array> x{to_device(q, d), to_device(k, d), to_device(v, d)};
      fast::AttentionMask mask;
      mask.window = window;
      mask.key_valid = to_device(key_valid, d);
      const Array rd = to_device(r, d);
      return autograd::value_and_grad(
          [&] { return sum(multiply(fast::scaled_dot_product_attention(x[0], x[1], x[2], scale, mask), rd)); }, x);
    };
    const auto cpu = run(Device::cpu()), gpu = run(Device::cuda());
    EXPECT_NEAR(item(gpu.value), item(cpu.value), 1e-2 * (1 + std::abs(item(cpu.value))));
    for (size_t i = 0; i < 3; ++i) {
      const std::vector<float> want = to_floats(cpu.grads[i]), got = to_floats(gpu.grads[i]);
      double err = 0, norm = 0;
      for (size_t j = 0; j < want.size(); ++j)
        err += (got[j] - want[j]) * double(got[j] - want[j]), norm += want[j] * double(want[j]);
      EXPECT_LT(std::sqrt(err / norm), 2e-2) << "input " << i;
      EXPECT_GT(norm, 0) << "input " << i;
    }
  }
}

TEST(FastGradTest, CrossEntropyRowsAgainstTheirTargets) {
  const std::vector<int32_t> targets{0, 6, 3, 3, 1};
  check_gradients({"cross_entropy_rows",
                   {{5, 7}},
                   -3,
                   3,
                   [&](const std::vector<Array>& x) {
                     return fast::cross_entropy_rows(x[0], from_vector(targets, {5}, x[0].device()));
                   },
                   [&](const std::vector<HT>& x) {
                     HT out{{5}, std::vector<double>(5)};
                     for (size_t r = 0; r < 5; ++r) {
                       const double* row = x[0].v.data() + r * 7;
                       const double m = *std::max_element(row, row + 7);
                       double s = 0;
                       for (int j = 0; j < 7; ++j) s += std::exp(row[j] - m);
                       out.v[r] = m + std::log(s) - row[targets[r]];
                     }
                     return out;
                   }});
}

// The mask is random_uniform(shape, seed) >= p, as fast::dropout promises; the reference
// takes it from there and scales by 1 / (1 - p) in float64. The step keeps no mask: its rule
// draws it again.
TEST(FastGradTest, DropoutKeepsItsMaskThroughTheRule) {
  const float p = 0.3f;
  const uint64_t seed = 77;
  const std::vector<float> u = to_floats(random_uniform({4, 16}, seed));
  check_gradients({"dropout",
                   {{4, 16}},
                   -2,
                   2,
                   [&](const std::vector<Array>& x) { return fast::dropout(x[0], p, seed); },
                   [&](const std::vector<HT>& x) {
                     HT out = x[0];
                     for (size_t i = 0; i < out.v.size(); ++i)
                       out.v[i] = u[i] >= p ? out.v[i] * double(float(1.0 / (1.0 - double(p)))) : 0.0;
                     return out;
                   }});
  // A backend's kernel gives the composition's bits in every float dtype, negative zeros and
  // NaN included.
  for (const Device d : test_devices())
    for (const Dtype t : kFloatDtypes) {
      SCOPED_TRACE(std::string(d.str()) + " " + std::string(dtype_name(t)));
      std::vector<float> v = to_floats(random_uniform({33, 31}, 5, -3, 3));
      v[3] = std::nanf(""), v[40] = -INFINITY;
      const Array x = to_device(from_floats(v, {33, 31}, t), d);
      const Array keep = multiply(astype(greater_equal(random_uniform(x.shape(), seed, 0, 1, Dtype::f32, d),
                                                       scalar(p, Dtype::f32, d)),
                                         Dtype::f32),
                                  1.0 / (1.0 - double(p)));
      const std::vector<float> got = to_floats(fast::dropout(x, p, seed)),
                               want = to_floats(astype(multiply(x, keep), t));
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i])) << "element " << i;
    }
}

TEST(FastGradTest, SelfAttentionWithQkNorms) {
  // q [B, L, Hq, D], k and v [B, L, Hkv, D], per-head norm weights [D].
  check_gradients({"self_attention",
                   {{2, 5, 4, 4}, {2, 5, 2, 4}, {2, 5, 2, 4}, {4}, {4}},
                   -1.5,
                   1.5,
                   [](const std::vector<Array>& x) {
                     const fast::HeadNorm qn{x[3], 1e-6f, fast::RmsNormStyle::llama};
                     const fast::HeadNorm kn{x[4], 1e-6f, fast::RmsNormStyle::llama};
                     const fast::SelfAttention a{
                         inv_freq(x[0].device()), offsets(x[0].device()), &qn, &kn, 0.5f, 0};
                     return fast::self_attention(x[0], x[1], x[2], a);
                   },
                   [](const std::vector<HT>& x) {
                     const HT q = rope_ref(swap12(rms_ref(x[0], x[3], double(1e-6f), false)));
                     const HT k = rope_ref(swap12(rms_ref(x[1], x[4], double(1e-6f), false)));
                     return swap12(sdpa_ref(q, k, swap12(x[2]), 0.5));
                   }});
}

TEST(FastGradTest, QuantizedMatmulGivesTheInputItsGradient) {
  // 4-bit codes in groups of 32: W [3, 64] = scale·q + bias, group by group.
  const int64_t n = 3, k = 64, words = k * 4 / 32, groups = k / 32;
  std::vector<uint32_t> packed(size_t(n * words));
  for (size_t i = 0; i < packed.size(); ++i) packed[i] = uint32_t(2654435761u * (i + 1));
  const Array scales = random_uniform({n, groups}, 3, 0.01f, 0.1f),
              biases = random_uniform({n, groups}, 4, -0.3f, 0.3f);
  const fast::QuantizedMatrix w{from_vector(packed, {n, words}), scales, biases, 4, 32};
  const std::vector<float> s = to_floats(scales), b = to_floats(biases);
  HT wt{{k, n}, std::vector<double>(size_t(k * n))};  // Wᵀ
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const uint32_t code = (packed[size_t(r * words + c / 8)] >> (4 * (c % 8))) & 15u;
      wt.v[size_t(c * n + r)] =
          s[size_t(r * groups + c / 32)] * double(code) + b[size_t(r * groups + c / 32)];
    }
  check_gradients({"quantized_matmul",
                   {{2, k}},
                   -1,
                   1,
                   [&](const std::vector<Array>& x) {
                     const fast::QuantizedMatrix on{
                         to_device(w.packed, x[0].device()), to_device(w.scales, x[0].device()),
                         to_device(w.biases, x[0].device()), w.bits, w.group_size};
                     return fast::quantized_matmul(x[0], on);
                   },
                   [&](const std::vector<HT>& x) { return matmul_ref(x[0], wt); }});
}

}  // namespace
}  // namespace lmx::test
