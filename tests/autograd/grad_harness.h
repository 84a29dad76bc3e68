// Gradient checks against float64: a test gives an expression in lmx ops and the same
// expression as a float64 function of host tensors. The harness takes the tape's gradients
// of loss = Σ out·R (R a random cotangent) and compares each with the central difference
// of the float64 loss, element by element. The float64 side knows nothing of derivatives,
// so a wrong rule cannot be matched by the same mistake made twice.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "ops/harness.h"

namespace lmx::test {

// A host tensor in float64.
struct HT {
  Shape shape;
  std::vector<double> v;
};

inline std::vector<int64_t> row_strides(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int i = int(s.size()) - 2; i >= 0; --i) st[size_t(i)] = st[size_t(i + 1)] * s[size_t(i + 1)];
  return st;
}

// Calls fn(index, flat) for every element of `shape` in row-major order.
inline void for_each_index(const Shape& shape,
                           const std::function<void(const std::vector<int64_t>&, int64_t)>& fn) {
  const int64_t n = numel(shape);
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t flat = 0; flat < n; ++flat) {
    fn(idx, flat);
    for (int i = int(shape.size()) - 1; i >= 0; --i) {
      if (++idx[size_t(i)] < shape[size_t(i)]) break;
      idx[size_t(i)] = 0;
    }
  }
}

// t at `idx` of a broadcast shape (t's axes aligned on the right; size-1 axes repeat).
inline double at_broadcast(const HT& t, const std::vector<int64_t>& idx) {
  const std::vector<int64_t> st = row_strides(t.shape);
  const size_t lead = idx.size() - t.shape.size();
  int64_t flat = 0;
  for (size_t i = 0; i < t.shape.size(); ++i) flat += (t.shape[i] == 1 ? 0 : idx[lead + i]) * st[i];
  return t.v[size_t(flat)];
}

inline Shape broadcast_shape(const Shape& a, const Shape& b) {
  Shape out(std::max(a.size(), b.size()), 1);
  for (size_t i = 0; i < out.size(); ++i) {
    const int64_t da = i < out.size() - a.size() ? 1 : a[i - (out.size() - a.size())];
    const int64_t db = i < out.size() - b.size() ? 1 : b[i - (out.size() - b.size())];
    out[i] = std::max(da, db);
  }
  return out;
}

inline HT map1(const HT& a, const std::function<double(double)>& f) {
  HT out{a.shape, a.v};
  for (double& x : out.v) x = f(x);
  return out;
}

inline HT map2(const HT& a, const HT& b, const std::function<double(double, double)>& f) {
  HT out{broadcast_shape(a.shape, b.shape), {}};
  out.v.resize(size_t(numel(out.shape)));
  for_each_index(out.shape, [&](const std::vector<int64_t>& idx, int64_t flat) {
    out.v[size_t(flat)] = f(at_broadcast(a, idx), at_broadcast(b, idx));
  });
  return out;
}

// [.., M, K] x [K, N] (a's leading axes kept).
inline HT matmul_ref(const HT& a, const HT& b) {
  const int64_t k = a.shape.back(), n = b.shape[1], rows = numel(a.shape) / k;
  HT out{a.shape, std::vector<double>(size_t(rows * n), 0.0)};
  out.shape.back() = n;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += a.v[size_t(r * k + i)] * b.v[size_t(i * n + j)];
      out.v[size_t(r * n + j)] = s;
    }
  return out;
}

// Reduces the last axis of a [R, C] view of t with f(row) -> value.
inline HT reduce_last(const HT& t, const std::function<double(const std::vector<double>&)>& f) {
  const int64_t c = t.shape.back(), rows = numel(t.shape) / c;
  HT out{Shape(t.shape.begin(), t.shape.end() - 1), {}};
  for (int64_t r = 0; r < rows; ++r)
    out.v.push_back(f(std::vector<double>(t.v.begin() + r * c, t.v.begin() + (r + 1) * c)));
  return out;
}

struct GradCase {
  std::string name;
  std::vector<Shape> shapes;
  double lo = -2, hi = 2;  // the inputs' range
  std::function<Array(const std::vector<Array>&)> op;
  std::function<HT(const std::vector<HT>&)> ref;
  std::vector<bool> differentiable = {};  // all by default
};

// Checks the tape's gradients of every input of `c` against float64 central differences, on
// every device this build can reach (the ops' constants must follow their inputs' device).
inline void check_gradients(const GradCase& c, uint64_t seed = 7) {
  SCOPED_TRACE(c.name);
  std::vector<HT> host;
  std::vector<Array> on_cpu;
  for (size_t i = 0; i < c.shapes.size(); ++i) {
    const Array a = random_uniform(c.shapes[i], seed + i, float(c.lo), float(c.hi));
    const std::vector<float> f = to_floats(a);
    on_cpu.push_back(a);
    host.push_back({c.shapes[i], std::vector<double>(f.begin(), f.end())});
  }
  const Shape out_shape = c.op(on_cpu).shape();
  const Array r_cpu = random_uniform(out_shape, seed + 100, -1, 1);
  const std::vector<float> rf = to_floats(r_cpu);
  auto loss = [&](const std::vector<HT>& x) {
    const HT out = c.ref(x);
    EXPECT_EQ(out.shape, out_shape) << "the float64 forward's shape";
    double s = 0;
    for (size_t j = 0; j < out.v.size(); ++j) s += out.v[j] * rf[j];
    return s;
  };
  // The float64 gradients, once for all devices.
  std::vector<std::vector<double>> want(host.size());
  std::vector<double> scale(host.size(), 0.0);
  for (size_t i = 0; i < host.size(); ++i) {
    if (!c.differentiable.empty() && !c.differentiable[i]) continue;
    want[i].resize(host[i].v.size());
    for (size_t j = 0; j < want[i].size(); ++j) {
      std::vector<HT> x = host;
      const double h = 1e-6 * std::max(1.0, std::abs(x[i].v[j]));
      x[i].v[j] = host[i].v[j] + h;
      const double up = loss(x);
      x[i].v[j] = host[i].v[j] - h;
      want[i][j] = (up - loss(x)) / (2 * h);
      scale[i] = std::max(scale[i], std::abs(want[i][j]));
    }
  }
  const double value = loss(host);
  for (const Device d : test_devices()) {
    SCOPED_TRACE(d.str());
    std::vector<Array> inputs;
    for (const Array& a : on_cpu) inputs.push_back(to_device(a, d));
    const Array r = to_device(r_cpu, d);
    const auto [got_value, grads] =
        autograd::value_and_grad([&] { return sum(multiply(c.op(inputs), r)); }, inputs);
    EXPECT_NEAR(item(got_value), value, 1e-4 * (1 + std::abs(value)))
        << "the forward values differ";
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (want[i].empty()) continue;
      ASSERT_EQ(grads[i].shape(), inputs[i].shape());
      ASSERT_EQ(grads[i].device(), d);
      const std::vector<float> got = to_floats(grads[i]);
      for (size_t j = 0; j < got.size(); ++j)
        ASSERT_NEAR(got[j], want[i][j], 1e-6 + 2e-5 * scale[i] + 1e-4 * std::abs(want[i][j]))
            << "input " << i << " " << shape_str(inputs[i].shape()) << ", element " << j;
    }
  }
}

}  // namespace lmx::test
