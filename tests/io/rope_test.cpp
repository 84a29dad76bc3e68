// rope_inv_freq against formulas evaluated independently in double precision.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "io/config.h"

namespace lmx::io {
namespace {

// The spec's formulas (§0, §1.4) in double precision.
std::vector<double> reference(const RopeParams& p, int64_t d) {
  std::vector<double> out;
  for (int64_t i = 0; i < d / 2; ++i) {
    const double inv = 1.0 / std::pow(p.theta, double(2 * i) / double(d));
    if (p.rope_type == "default") {
      out.push_back(inv);
    } else if (p.rope_type == "linear") {
      out.push_back(inv / p.factor);
    } else {
      const double l0 = double(p.original_max_position_embeddings);
      const double wl = 2 * std::numbers::pi / inv;
      const double low_wl = l0 / p.low_freq_factor, high_wl = l0 / p.high_freq_factor;
      if (wl < high_wl) {
        out.push_back(inv);
      } else if (wl > low_wl) {
        out.push_back(inv / p.factor);
      } else {
        const double s = (l0 / wl - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
        out.push_back((1 - s) * inv / p.factor + s * inv);
      }
    }
  }
  return out;
}

// float32 evaluation differs from the double formula by a few roundings, plus the
// rounding of the exponent 2i/d amplified by ln(theta) when d is not a power of two.
void expect_close(const RopeParams& p, int64_t d, double ulps) {
  const auto got = rope_inv_freq(p, d);
  const auto want = reference(p, d);
  ASSERT_EQ(got.size(), want.size());
  const double tol = ulps * FLT_EPSILON;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(double(got[i]) / want[i], 1.0, tol) << p.rope_type << " d=" << d << " i=" << i;
}

TEST(ConfigRope, DefaultExactSmallCase) {
  auto inv = rope_inv_freq(RopeParams{.theta = 10000.0}, 4);
  ASSERT_EQ(inv.size(), 2u);
  EXPECT_EQ(inv[0], 1.0f);
  EXPECT_FLOAT_EQ(inv[1], 0.01f);
}

TEST(ConfigRope, Default) {
  for (double theta : {10000.0, 500000.0, 1e6})
    for (int64_t d : {16, 64, 128, 256}) expect_close(RopeParams{.theta = theta}, d, 4);
  // d not a power of two: 2i/d is rounded to float first, as HF does.
  expect_close(RopeParams{.theta = 1e6}, 96, 4 + 2 * std::log(1e6));
}

TEST(ConfigRope, Linear) {
  const RopeParams p{.rope_type = "linear", .theta = 1e6, .factor = 8.0};
  expect_close(p, 256, 4);
  const auto a = rope_inv_freq(p, 64), b = rope_inv_freq(RopeParams{.theta = 1e6}, 64);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i] / 8.0f);
}

TEST(ConfigRope, Llama3CoversAllThreeBands) {
  // Llama 3.2 settings: theta 5e5, factor 32, L0 8192, low 1, high 4.
  const RopeParams p{.rope_type = "llama3", .theta = 500000.0, .factor = 32.0, .low_freq_factor = 1.0,
                     .high_freq_factor = 4.0, .original_max_position_embeddings = 8192};
  expect_close(p, 64, 8);
  expect_close(p, 128, 8);
  // Check the test really exercises the smoothing band and both plain bands.
  int high = 0, low = 0, mid = 0;
  for (double inv : reference(RopeParams{.theta = 500000.0}, 128)) {
    const double wl = 2 * std::numbers::pi / inv;
    (wl < 2048 ? high : wl > 8192 ? low : mid)++;
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  // The fixture's small variant (L0 64, factor 8, head_dim 16).
  expect_close(RopeParams{.rope_type = "llama3", .theta = 500000.0, .factor = 8.0,
                          .original_max_position_embeddings = 64},
               16, 8);
}

TEST(ConfigRope, RejectsOddHeadDimAndUnknownType) {
  EXPECT_THROW(rope_inv_freq(RopeParams{}, 7), lmx::Error);
  EXPECT_THROW(rope_inv_freq(RopeParams{.rope_type = "yarn"}, 8), lmx::Error);
}

}  // namespace
}  // namespace lmx::io
