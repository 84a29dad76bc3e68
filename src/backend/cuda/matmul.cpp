// Batched matmul through the backend's GEMM (gemm.cpp: cuBLASLt plans or cuBLAS): f32, f16
// and bf16 inputs, f32 accumulation (never TF32), one rounding to the output dtype. Transposes and
// broadcast batches come from the strides; other layouts are copied dense first.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <optional>
#include <utility>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm.h"
#include "core/error.h"

namespace lmx::cuda {
namespace {

// cuBLAS is column-major, so it computes outᵀ [N, M] = bᵀ · aᵀ. A row-major operand
// X [rows, cols] with strides (rs, cs) is read as Xᵀ with op N when its rows are dense
// (cs == 1), or as X with op T when its columns are (rs == 1). nullopt: copy it.
struct GemmView {
  cublasOperation_t op;
  int64_t ld;
};
std::optional<GemmView> gemm_view(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if ((cs == 1 || cols == 1) && (rs >= std::max<int64_t>(1, cols) || rows == 1))
    return GemmView{CUBLAS_OP_N, std::max<int64_t>({rs, cols, 1})};
  if ((rs == 1 || rows == 1) && (cs >= std::max<int64_t>(1, rows) || cols == 1))
    return GemmView{CUBLAS_OP_T, std::max<int64_t>({cs, rows, 1})};
  return std::nullopt;
}

cudaDataType_t blas_type(Dtype t) {
  switch (t) {
    case Dtype::f32: return CUDA_R_32F;
    case Dtype::f16: return CUDA_R_16F;
    case Dtype::bf16: return CUDA_R_16BF;
    default: fail("matmul", "unsupported dtype ", dtype_name(t), " on cuda");
  }
}

// x [B, R, C] as cuBLAS can read it: itself, or a dense copy when its strides fit neither view.
struct Operand {
  Array data;
  GemmView view;
};
Operand operand(const Context& ctx, const Array& x) {
  const int64_t r = x.shape(1), c = x.shape(2);
  if (auto v = gemm_view(r, c, x.strides()[1], x.strides()[2])) return {x, *v};
  Array dense(x.shape(), x.dtype(), x.device());  // [B, R, C]
  copy(ctx, x, dense);
  return {dense, *gemm_view(r, c, c, 1)};
}

}  // namespace

void matmul(const Context& ctx, const Array& a, const Array& b, const Array& out) {
  // a [B, M, K], b [B, K, N], out [B, M, N] contiguous
  int64_t nb = a.shape(0), m = a.shape(1);
  const int64_t k = a.shape(2), n = b.shape(2);
  if (out.size() == 0) return;
  if (k == 0) return fill(ctx, out, 0);
  Operand oa = operand(ctx, a);
  const Operand ob = operand(ctx, b);
  // A batch of rows times one shared matrix (x·Wᵀ over [batch, tokens, features]) is one
  // GEMM of B*M rows when a's batches follow one another: a batch of B skinny GEMMs
  // would run far below the tensor cores' rate.
  // One row per batch (the last position of each sequence) is the same at any batch stride.
  if (nb > 1 && ob.data.strides()[0] == 0 && oa.view.op == CUBLAS_OP_N) {
    if (oa.data.strides()[0] == m * oa.view.ld) {
      m *= nb;
      nb = 1;
    } else if (m == 1 && oa.data.strides()[0] >= k) {
      oa.view.ld = oa.data.strides()[0];
      m = nb;
      nb = 1;
    }
  }
  // A batch of one has no stride to speak of; broadcast batches have stride 0.
  Gemm g;
  g.op_a = ob.view.op, g.op_b = oa.view.op, g.m = n, g.n = m, g.k = k, g.batch = nb;
  g.a = ob.data.raw(), g.lda = ob.view.ld, g.stride_a = nb == 1 ? 0 : ob.data.strides()[0];
  g.b = oa.data.raw(), g.ldb = oa.view.ld, g.stride_b = nb == 1 ? 0 : oa.data.strides()[0];
  g.c = out.raw(), g.ldc = n, g.stride_c = m * n;
  g.type = blas_type(a.dtype());
  gemm(ctx, g, "matmul");
}

std::pair<Array, Array> matmul_pair(const Context& ctx, const Array& x, const Array& w0, const Array& w1) {
  // x [M, K], w0 and w1 [N, K], all contiguous and of one dtype
  const int64_t m = x.shape(0), k = x.shape(1), n = w0.shape(0);
  if (m > kPairedRowsUpTo) return {};  // longer prompts: a GEMM for each weight
  const std::ptrdiff_t bytes = static_cast<const char*>(w1.raw()) - static_cast<const char*>(w0.raw());
  const std::ptrdiff_t item = std::ptrdiff_t(itemsize(x.dtype()));
  // The stride is 64-bit in cuBLAS's interface; a layer's weights lie near one another, and
  // a distance past 2^31 elements (never seen) takes the two GEMMs rather than the pair.
  if (bytes == 0 || bytes % item != 0 || std::abs(bytes) / item > INT32_MAX) return {};
  // The batch steps from the weight at the lower address to the other: a stride of 0 or
  // less is not one cuBLAS documents.
  const Array& lo = bytes > 0 ? w0 : w1;
  Array out({2, m, n}, x.dtype(), x.device());  // [2, M, N]: the lower address's product first
  Gemm g;
  g.op_a = CUBLAS_OP_T, g.op_b = CUBLAS_OP_N, g.m = n, g.n = m, g.k = k, g.batch = 2;
  g.a = lo.raw(), g.lda = k, g.stride_a = std::abs(bytes) / item;
  g.b = x.raw(), g.ldb = k, g.stride_b = 0;
  g.c = out.raw(), g.ldc = n, g.stride_c = m * n;
  g.type = blas_type(x.dtype());
  gemm(ctx, g, "matmul (a pair of weights)");
  auto part = [&](int64_t i) { return reshape(slice_axis(out, 0, i, i + 1), {m, n}); };
  return bytes > 0 ? std::pair{part(0), part(1)} : std::pair{part(1), part(0)};
}

}  // namespace lmx::cuda
