// Gather kernels: take (rows of an axis by index) and take_along.
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/strided.h"
#include "core/error.h"

namespace lmx::cpu {
namespace {

// Indices as int64, every one checked against `n` before any output is written.
std::vector<int64_t> checked_indices(const Array& idx, int64_t n, const char* op) {
  std::vector<int64_t> out(static_cast<size_t>(idx.size()));
  const Array dense = idx;  // contiguous by contract
  for (int64_t i = 0; i < idx.size(); ++i) {
    const int64_t v = idx.dtype() == Dtype::i32 ? int64_t(dense.data<int32_t>()[i]) : int64_t(dense.data<uint32_t>()[i]);
    LMX_CHECK(v >= 0 && v < n, op, "index ", v, " is out of range for an axis of size ", n);
    out[size_t(i)] = v;
  }
  return out;
}

}  // namespace

void take(const Array& src, const Array& idx, const Array& out) {
  // src [P, N, S], idx [M] -> out [P, M, S]; each (p, m) copies one run of S elements.
  const int64_t p = src.shape(0), n = src.shape(1), s = src.shape(2), m = idx.size();
  const std::vector<int64_t> ix = checked_indices(idx, n, "take");
  const size_t esz = itemsize(src.dtype());
  const auto* sp = static_cast<const std::byte*>(src.raw());
  auto* op = static_cast<std::byte*>(out.raw());
  const bool dense = src.is_contiguous();
  parallel_for(p * m, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, s)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t pi = t / m, mi = t % m;
      std::byte* dst = op + size_t((pi * m + mi) * s) * esz;
      if (dense) {
        std::memcpy(dst, sp + size_t((pi * n + ix[size_t(mi)]) * s) * esz, size_t(s) * esz);
      } else {
        for (int64_t k = 0; k < s; ++k) {
          const int64_t off = pi * src.strides()[0] + ix[size_t(mi)] * src.strides()[1] + k * src.strides()[2];
          std::memcpy(dst + size_t(k) * esz, sp + size_t(off) * esz, esz);
        }
      }
    }
  });
}

void take_along(const Array& src, const Array& idx, const Array& out) {
  // src [P, N, S], idx/out [P, M, S]
  const int64_t p = src.shape(0), n = src.shape(1), s = src.shape(2), m = idx.shape(1);
  std::vector<int64_t> ix;
  {
    // Materialise indices (they may be a broadcast view) and check them all first.
    std::vector<int64_t> tmp(static_cast<size_t>(p * m * s));
    for (int64_t a = 0; a < p; ++a)
      for (int64_t b = 0; b < m; ++b)
        for (int64_t c = 0; c < s; ++c) {
          const int64_t off = a * idx.strides()[0] + b * idx.strides()[1] + c * idx.strides()[2];
          const int64_t v = idx.dtype() == Dtype::i32 ? int64_t(static_cast<const int32_t*>(idx.raw())[off])
                                                      : int64_t(static_cast<const uint32_t*>(idx.raw())[off]);
          LMX_CHECK(v >= 0 && v < n, "take_along_axis", "index ", v, " is out of range for an axis of size ", n);
          tmp[size_t((a * m + b) * s + c)] = v;
        }
    ix = std::move(tmp);
  }
  const size_t esz = itemsize(src.dtype());
  const auto* sp = static_cast<const std::byte*>(src.raw());
  auto* op = static_cast<std::byte*>(out.raw());
  for (int64_t a = 0; a < p; ++a)
    for (int64_t b = 0; b < m; ++b)
      for (int64_t c = 0; c < s; ++c) {
        const size_t o = size_t((a * m + b) * s + c);
        const int64_t off = a * src.strides()[0] + ix[o] * src.strides()[1] + c * src.strides()[2];
        std::memcpy(op + o * esz, sp + size_t(off) * esz, esz);
      }
}

}  // namespace lmx::cpu
