// Batched matmul through cublasGemmStridedBatchedEx (or, for a few large bf16 shapes,
// cuBLASLt at a measured tile: gemm_tiles.cpp): f32, f16 and bf16 inputs, f32
// accumulation (never TF32), one rounding to the output dtype. Transposes and
// broadcast batches come from the strides; other layouts are copied dense first.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <optional>
#include <utility>

#include "backend/cuda/cuda_ops.h"
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

void check_int(int64_t v, const char* what) {
  LMX_CHECK(v <= int64_t(INT32_MAX), "matmul", what, " of ", v,
            " is too large for cuBLAS; split the product");
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
  for (int64_t v : {nb, m, n, k}) check_int(v, "a dimension");
  check_int(oa.view.ld, "a leading dimension");
  check_int(ob.view.ld, "a leading dimension");
  const cudaDataType_t t = blas_type(a.dtype());
  if (nb == 1 && t == CUDA_R_16BF && ob.view.op == CUBLAS_OP_T && oa.view.op == CUBLAS_OP_N &&
      gemm_at_preferred_tile(ctx, ob.data.raw(), ob.view.ld, oa.data.raw(), oa.view.ld, out.raw(), m, n, k))
    return;
  const float alpha = 1.0f, beta = 0.0f;
  // A batch of one has no stride to speak of; broadcast batches have stride 0.
  const int64_t stride_a = nb == 1 ? 0 : oa.data.strides()[0],
                stride_b = nb == 1 ? 0 : ob.data.strides()[0];
  check_blas(cublasGemmStridedBatchedEx(
                 ctx.blas, ob.view.op, oa.view.op, int(n), int(m), int(k), &alpha, ob.data.raw(), t,
                 int(ob.view.ld), stride_b, oa.data.raw(), t, int(oa.view.ld), stride_a, &beta,
                 out.raw(), t, int(n), m * n, int(nb), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmStridedBatchedEx");
}

std::pair<Array, Array> matmul_pair(const Context& ctx, const Array& x, const Array& w0, const Array& w1) {
  // x [M, K], w0 and w1 [N, K], all contiguous and of one dtype
  const int64_t m = x.shape(0), k = x.shape(1), n = w0.shape(0);
  for (int64_t v : {m, n, k}) check_int(v, "a dimension");
  const std::ptrdiff_t bytes = static_cast<const char*>(w1.raw()) - static_cast<const char*>(w0.raw());
  const std::ptrdiff_t item = std::ptrdiff_t(itemsize(x.dtype()));
  // The stride is 64-bit in cuBLAS's interface; a layer's weights lie near one another, and
  // a distance past 2^31 elements (never seen) takes the two GEMMs rather than the pair.
  if (bytes == 0 || bytes % item != 0 || std::abs(bytes) / item > INT32_MAX) return {};
  // The batch steps from the weight at the lower address to the other: a stride of 0 or
  // less is not one cuBLAS documents.
  const Array& lo = bytes > 0 ? w0 : w1;
  Array out({2, m, n}, x.dtype(), x.device());  // [2, M, N]: the lower address's product first
  const cudaDataType_t t = blas_type(x.dtype());
  const float alpha = 1.0f, beta = 0.0f;
  check_blas(cublasGemmStridedBatchedEx(ctx.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(k), &alpha,
                                        lo.raw(), t, int(k), std::abs(bytes) / item, x.raw(), t, int(k), 0, &beta,
                                        out.raw(), t, int(n), m * n, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmStridedBatchedEx");
  auto part = [&](int64_t i) { return reshape(slice_axis(out, 0, i, i + 1), {m, n}); };
  return bytes > 0 ? std::pair{part(0), part(1)} : std::pair{part(1), part(0)};
}

}  // namespace lmx::cuda
