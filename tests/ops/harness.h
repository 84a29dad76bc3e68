// The op test harness: random inputs per dtype, a float64 reference computed on the
// same (rounded) input values, and tolerances derived from the dtype. Every test body
// runs on each available device; CUDA cases skip with a message where no GPU is visible.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/fast.h"
#include "ops/kernels.h"
#include "ops/ops.h"

namespace lmx::test {

inline constexpr int64_t kAwkwardSizes[] = {1, 31, 32, 33, 4097};

// Unit roundoff of a dtype: the relative error of one rounding.
// v after one rounding to the dtype t (through f32, as the kernels round).
inline double round_to(Dtype t, double v) {
  const float f = float(v);
  switch (t) {
    case Dtype::bf16: return to_f32(from_f32<bf16_t>(f));
    case Dtype::f16: return to_f32(from_f32<f16_t>(f));
    default: return f;
  }
}

inline double unit_roundoff(Dtype t) {
  switch (t) {
    case Dtype::f32: return std::ldexp(1.0, -24);
    case Dtype::f16: return std::ldexp(1.0, -11);
    case Dtype::bf16: return std::ldexp(1.0, -8);
    default: return 0;
  }
}

// The devices this build can run on here. A CUDA build without a visible GPU lists
// only the CPU, and the test log says why.
inline std::vector<Device> test_devices() {
  std::vector<Device> out{Device::cpu()};
  try {
    detail::kernels_for(Device::cuda(0));
    out.push_back(Device::cuda(0));
  } catch (const Error& e) {
    static bool said = false;
    if (!said) std::printf("[ harness ] CUDA cases skipped: %s\n", e.what());
    said = true;
  }
  return out;
}

// Host values drawn uniformly from [lo, hi] and rounded to `dtype`, so that the
// reference sees exactly what the op sees.
struct Input {
  Array array;
  std::vector<double> values;
};
inline Input random_input(const Shape& shape, Dtype dtype, uint64_t seed, double lo = -2, double hi = 2,
                          Device device = Device::cpu()) {
  Array a = random_uniform(shape, seed, float(lo), float(hi), Dtype::f32);
  if (!is_float(dtype)) a = astype(add(a, 0.0), dtype);
  a = astype(a, dtype);
  const std::vector<float> f = to_floats(a);
  return {to_device(a, device), std::vector<double>(f.begin(), f.end())};
}

// Expects |got - want| <= atol + rtol * |want| element-wise, and reports the worst one.
inline void expect_close(const Array& got, const std::vector<double>& want, double rtol, double atol,
                         const std::string& what = "") {
  const std::vector<float> g = to_floats(got);
  ASSERT_EQ(g.size(), want.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(double(g[i]) - want[i]);
    const double excess = err - (atol + rtol * std::abs(want[i]));
    if (std::isnan(g[i]) != std::isnan(want[i]) || excess > worst) {
      worst = std::isnan(excess) ? INFINITY : excess;
      at = i;
      if (std::isnan(g[i]) != std::isnan(want[i])) break;
    }
  }
  EXPECT_LE(worst, 0.0) << what << ": element " << at << " is " << g[at] << ", expected " << want[at]
                        << " (rtol " << rtol << ", atol " << atol << ")";
}

// Expects `fn` to throw lmx::Error whose message starts with "[op]".
inline void expect_op_error(const std::function<void()>& fn, const std::string& op) {
  try {
    fn();
    ADD_FAILURE() << "expected an error from [" << op << "]";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[" + op + "]", 0), 0u) << "message was: " << e.what();
  }
}

inline std::string dtype_param_name(Dtype t) { return std::string(dtype_name(t)); }

}  // namespace lmx::test
