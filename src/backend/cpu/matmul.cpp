// Batched matmul: bf16 through gemm_bf16 at any row count where the CPU has AVX512_BF16 (and
// through gemm_bf16_kn where b is a row-major [K, N], as a gradient times a weight is);
// otherwise 16-bit floats through the SIMD matrix-vector kernel for up to kGemvMaxRows rows;
// OpenBLAS sgemm for f32 and for the rest.
#include <cblas.h>

#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/strided.h"

namespace lmx::cpu {
namespace {

// How BLAS should read a [rows, cols] matrix with strides (rs, cs): row-major with a
// leading dimension, or transposed. nullopt when neither fits (then we copy).
struct BlasView { CBLAS_TRANSPOSE trans; int64_t ld; };
std::optional<BlasView> blas_view(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if ((cs == 1 || cols == 1) && (rs >= std::max<int64_t>(1, cols) || rows == 1))
    return BlasView{CblasNoTrans, std::max<int64_t>({rs, cols, 1})};
  if ((rs == 1 || rows == 1) && (cs >= std::max<int64_t>(1, rows) || cols == 1))
    return BlasView{CblasTrans, std::max<int64_t>({cs, rows, 1})};
  return std::nullopt;
}

// An f32 copy of one batch element of x [B, R, C] that BLAS can read, with its view.
struct F32Matrix {
  std::vector<float> data;
  BlasView view;
};
F32Matrix to_f32_matrix(const Array& x, int64_t batch) {
  const int64_t r = x.shape(1), c = x.shape(2), rs = x.strides()[1], cs = x.strides()[2];
  F32Matrix m;
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<compute_t<T>, float>) {
      const T* p = static_cast<const T*>(x.raw()) + batch * x.strides()[0];
      // Storage BLAS reads as it is (row-major, or a row-major W seen as Wᵀ, the weights'
      // case) is converted in storage order, one contiguous stream, and keeps its view.
      // Converting Wᵀ row by row read W a column at a time: a 128-token prompt took 2.7 s
      // on two cores.
      const auto view = blas_view(r, c, rs, cs);
      const int64_t span = !view ? 0 : view->trans == CblasNoTrans ? (r - 1) * view->ld + c : (c - 1) * view->ld + r;
      if (view && span <= 2 * r * c) {
        m.view = *view;
        m.data.resize(static_cast<size_t>(span));
        parallel_for(span, 1 << 16, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) m.data[size_t(i)] = to_f32(p[i]);
        });
        return;
      }
      m.view = BlasView{CblasNoTrans, c};  // anything else: dense row-major [R, C]
      m.data.resize(static_cast<size_t>(r * c));
      parallel_for(r, std::max<int64_t>(1, 16384 / std::max<int64_t>(c, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i)
          for (int64_t j = 0; j < c; ++j) m.data[size_t(i * c + j)] = to_f32(p[i * rs + j * cs]);
      });
    }
  });
  return m;
}

// c [M, N] (rows ldc apart, ldc = N where not given) = a · b, plus c itself with `accumulate`.
void sgemm(const float* a, BlasView va, const float* b, BlasView vb, float* c, int64_t m, int64_t n, int64_t k,
           int64_t ldc = 0, bool accumulate = false) {
  cblas_sgemm(CblasRowMajor, va.trans, vb.trans, int(m), int(n), int(k), 1.0f, a, int(va.ld), b, int(vb.ld),
              accumulate ? 1.0f : 0.0f, c, int(ldc ? ldc : n));
}

}  // namespace

void matmul(const Array& a, const Array& b, const Array& out) {
  const int64_t nb = a.shape(0), m = a.shape(1), k = a.shape(2), n = b.shape(2);
  if (k == 0) {
    fill(out, 0);
    return;
  }
  if (gemm_bf16(a, b, out) || gemv(a, b, out) || gemm_bf16_kn(a, b, out)) return;
  if (a.dtype() == Dtype::f32) {
    const auto va = blas_view(m, k, a.strides()[1], a.strides()[2]);
    const auto vb = blas_view(k, n, b.strides()[1], b.strides()[2]);
    if (va && vb) {
      for (int64_t i = 0; i < nb; ++i)
        sgemm(a.data<float>() + i * a.strides()[0], *va, b.data<float>() + i * b.strides()[0], *vb,
              out.data<float>() + i * m * n, m, n, k);
      return;
    }
  }
  // General path: f32 copies of each batch element, sgemm, one rounding at the end. A weight
  // (b a row-major W seen transposed) is converted a panel of W's rows at a time, into a few
  // MiB that the allocator hands out again: a whole f32 copy (64 MiB for Llama-3.2-1B's MLP)
  // was fresh memory on every call, and zeroing and faulting it in took 60% of a prompt.
  // A row-major b [K, N] (a gradient's product with a weight, g·W) goes a panel of its rows
  // at a time, the sums of each panel added into c: for an LM head's [151,936, 1,024] that
  // is a few MiB at a time instead of a 622 MB f32 copy.
  const auto vb = blas_view(k, n, b.strides()[1], b.strides()[2]);
  const int64_t panel = vb && vb->trans == CblasTrans ? std::max<int64_t>(64, (int64_t(1) << 20) / k) : n;
  const int64_t k_panel = vb && vb->trans == CblasNoTrans ? std::max<int64_t>(64, (int64_t(1) << 20) / n) : k;
  std::vector<float> c(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < nb; ++i) {
    if (k_panel < k) {
      for (int64_t k0 = 0; k0 < k; k0 += k_panel) {
        const int64_t rows = std::min(k_panel, k - k0);  // b's rows [k0, k0 + rows), a's columns
        const Array pa = a.view({nb, m, rows}, a.strides(), a.offset() + k0 * a.strides()[2]);
        const Array pb = b.view({nb, rows, n}, b.strides(), b.offset() + k0 * b.strides()[1]);
        const F32Matrix fa = to_f32_matrix(pa, i), fb = to_f32_matrix(pb, i);
        sgemm(fa.data.data(), fa.view, fb.data.data(), fb.view, c.data(), m, n, rows, n, k0 > 0);
      }
      copy(Array::borrow(c.data(), {m, n}, Dtype::f32, nullptr), out.view({m, n}, {n, 1}, out.offset() + i * m * n));
      continue;
    }
    const F32Matrix fa = to_f32_matrix(a, i);
    for (int64_t n0 = 0; n0 < n; n0 += panel) {
      const int64_t cols = std::min(panel, n - n0);  // b's columns [n0, n0 + cols): W's rows
      const Array part = cols == n ? b : b.view({nb, k, cols}, b.strides(), b.offset() + n0 * b.strides()[2]);
      const F32Matrix fb = to_f32_matrix(part, i);
      sgemm(fa.data.data(), fa.view, fb.data.data(), fb.view, c.data() + n0, m, cols, k, n);
    }
    const Array src = Array::borrow(c.data(), {m, n}, Dtype::f32, nullptr);
    copy(src, out.view({m, n}, {n, 1}, out.offset() + i * m * n));
  }
}

}  // namespace lmx::cpu
