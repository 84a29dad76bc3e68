// Attention for many query rows (prefill, classification) as HF's eager path computes
// it: S = Q·Kᵀ and O = P·V as batched tensor-core GEMMs, with one kernel between them
// that scales, masks and normalises S in place. Same roundings as attention.cu: scores
// rounded to the dtype, multiplied by the f32 scale and rounded again, softmax in f32,
// probabilities rounded to the dtype, P·V accumulated in f32.
//
// Each GEMM batch is one kv head of one sequence: with GQA the query heads that share it
// are consecutive in q [B, Hq, Lq, D], so they are one matrix of rep*Lq rows.
//
// The same pieces give a tape's attention (ops/attention_step.cpp) its forward and its
// gradient: five products and two row kernels, where the composition's rules made a dozen
// passes over [B, Hq, Lq, Lk] in f32.
#include <algorithm>
#include <cstdlib>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm.h"

namespace lmx::cuda {
namespace {

struct SoftmaxParams {
  int64_t rows, lq, lk, rep, hkv;
  float scale;
  bool causal;
  int64_t window;
  const int32_t* q_offsets;  // [B]
  const bool* key_valid;     // [B, Lk] or null
  int64_t first_row;         // position of the band's row 0 among the query rows
  int64_t live_rows;         // rows of each (sequence, kv head) matrix filled in this call
};

// Softmax over the rows of S [B*Hkv, rep*Lq, Lk], in place: scores become probabilities.
// Each row takes `lanes` lanes (a power of two, at most a warp) and each lane keeps its
// first kKept scores, then their exponentials, in registers: for Lk up to lanes * kKept
// S is read once, exp runs once per score, and a warp serves several rows, which keeps
// enough loads in flight. Four for classification's short prompts; sixteen past 128 keys
// (a training step's 512-token rows: with four, each score past the kept ones was read
// three times, and the kernel ran at a quarter of the copy rate).
template <class T, int kKept>
__global__ void masked_softmax_kernel(T* s, SoftmaxParams p, int lanes) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / lanes;
  const int sub = threadIdx.x % lanes;
  const int64_t bh = row / (p.rep * p.lq), i = row % p.lq, b = bh / p.hkv;
  // inactive lanes (past the end, or rows of a band's tail left unfilled) still join the shuffles
  const bool active = row < p.rows && row % (p.rep * p.lq) < p.live_rows;
  const int64_t qpos = active ? p.first_row + i + p.q_offsets[b] : 0;
  const int64_t lk = active ? p.lk : 0;
  T* x = s + row * p.lk;
  auto visible = [&](int64_t j) {
    if (p.causal && j > qpos) return false;
    if (p.window > 0 && j <= qpos - p.window) return false;
    return !p.key_valid || p.key_valid[b * p.lk + j];
  };
  // score(j), or -inf where key j is masked
  auto score = [&](int64_t j) { return visible(j) ? round_to<T>(to_float(x[j]) * p.scale) : -INFINITY; };
  auto reduce = [&](float v, auto op) {
    for (int o = lanes / 2; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
  };
  float kept[kKept];
  float m = -INFINITY;
  for (int t = 0; t < kKept; ++t) {
    const int64_t j = sub + int64_t(lanes) * t;
    kept[t] = j < lk ? score(j) : -INFINITY;
    m = fmaxf(m, kept[t]);
  }
  for (int64_t j = sub + int64_t(lanes) * kKept; j < lk; j += lanes) m = fmaxf(m, score(j));
  m = reduce(m, Max{});
  // A row with no visible key gives zeros, as attention.cu does.
  auto expo = [&](float v) { return v == -INFINITY ? 0.0f : cr_exp(v - m); };
  float sum = 0;
  for (int t = 0; t < kKept; ++t) sum += kept[t] = expo(kept[t]);
  for (int64_t j = sub + int64_t(lanes) * kKept; j < lk; j += lanes) sum += expo(score(j));
  sum = reduce(sum, Sum{});
  auto prob = [&](float e) { return from_float<T>(sum > 0 ? e / sum : 0.0f); };
  for (int t = 0; t < kKept; ++t) {
    const int64_t j = sub + int64_t(lanes) * t;
    if (j < lk) x[j] = prob(kept[t]);
  }
  for (int64_t j = sub + int64_t(lanes) * kKept; j < lk; j += lanes) x[j] = prob(expo(score(j)));
}

// The softmax's gradient through the scale, in place: dp [R, Lk] (the probabilities'
// gradient) becomes dS = scale · p ∘ (dp − Σ_j p_j dp_j), the gradient of the raw scores,
// rounded to T; p [R, Lk] as masked_softmax_kernel left it (zeros at hidden keys, so that
// their dS is zero too). Rows take `lanes` lanes as there.
// Each lane keeps its first kKept pairs (p, dp) in registers, as the softmax does.
template <class T, int kKept>
__global__ void softmax_grad_kernel(const T* p, T* dp, int64_t rows, int64_t lk, float scale, int lanes) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / lanes;
  const int sub = threadIdx.x % lanes;
  const int64_t n = row < rows ? lk : 0;  // lanes past the end still join the shuffles
  const T* pr = p + row * lk;
  T* dr = dp + row * lk;
  float kp[kKept], kd[kKept], dot = 0;
  for (int t = 0; t < kKept; ++t) {
    const int64_t j = sub + int64_t(lanes) * t;
    kp[t] = j < n ? to_float(pr[j]) : 0.0f;
    kd[t] = j < n ? to_float(dr[j]) : 0.0f;
    dot += kp[t] * kd[t];
  }
  for (int64_t j = sub + int64_t(lanes) * kKept; j < n; j += lanes) dot += to_float(pr[j]) * to_float(dr[j]);
  for (int o = lanes / 2; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  for (int t = 0; t < kKept; ++t) {
    const int64_t j = sub + int64_t(lanes) * t;
    if (j < n) dr[j] = from_float<T>(scale * kp[t] * (kd[t] - dot));
  }
  for (int64_t j = sub + int64_t(lanes) * kKept; j < n; j += lanes)
    dr[j] = from_float<T>(scale * to_float(pr[j]) * (to_float(dr[j]) - dot));
}

// Scores a lane keeps in the two kernels above, and the lanes a row of `lk` takes.
struct RowSplit {
  int kept, lanes;
};
RowSplit row_split(int64_t lk) {
  RowSplit r{lk > 128 ? 16 : 4, 1};
  while (r.lanes < 32 && r.lanes * r.kept < lk) r.lanes *= 2;
  return r;
}

void masked_softmax(const Context& ctx, Dtype t, const Array& s, const SoftmaxParams& p, RowSplit split) {
  const unsigned blocks = unsigned((p.rows * split.lanes + kBlock - 1) / kBlock);
  visit_device_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      T* x = static_cast<T*>(s.raw());
      if (split.kept == 16)
        masked_softmax_kernel<T, 16><<<blocks, kBlock, 0, ctx.stream>>>(x, p, split.lanes);
      else
        masked_softmax_kernel<T, 4><<<blocks, kBlock, 0, ctx.stream>>>(x, p, split.lanes);
    }
  });
  check_launch("masked_softmax_kernel");
}

cudaDataType_t blas_dtype(Dtype t) {
  return t == Dtype::f32 ? CUDA_R_32F : t == Dtype::f16 ? CUDA_R_16F : CUDA_R_16BF;
}

}  // namespace

bool attention_by_gemm(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale, bool causal,
                       int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out) {
  // Worth it for many query rows; eager_attention takes any.
  return q.shape(2) >= 8 && eager_attention(ctx, q, k, v, scale, causal, window, q_offsets, key_valid, out);
}

bool eager_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale, bool causal,
                     int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out) {
  const int64_t nb = q.shape(0), hq = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int64_t hkv = k.shape(1), lk = k.shape(2), rep = hq / hkv, item = int64_t(itemsize(q.dtype()));
  // Each (sequence, kv head) must be one stride away from the next so that one
  // strided-batched call covers them.
  if (q.size() == 0 || lk == 0) return false;
  // The stride from one (sequence, kv head) to the next. With one kv head (Gemma 3) that is
  // the sequence stride: the stride of a dimension of size 1 can be anything.
  const int64_t k_step = hkv == 1 ? k.strides()[0] : k.strides()[1];
  const int64_t v_step = hkv == 1 ? v.strides()[0] : v.strides()[1];
  if (k.strides()[0] != hkv * k_step || v.strides()[0] != hkv * v_step) return false;
  if (k.strides()[3] != 1 || v.strides()[3] != 1 || !q.is_contiguous()) return false;
  for (int64_t x : {rep * lq, lk, d, k.strides()[2], v.strides()[2], nb * hkv})
    if (x > INT32_MAX) return false;

  // S lives in a buffer of at most 512 MiB. When all query rows fit, one call takes the
  // rep query heads of each kv head as one matrix of rep * Lq rows. Otherwise (long
  // prompts: Llama's 4,096 tokens make S 1 GiB) each call takes one query head of each
  // group and a band of its rows: the band is still one stride from one kv head to the next.
  // LMX_ATTENTION_S_BUDGET (bytes) lowers the bound, so that tests can reach the bands.
  const char* env = std::getenv("LMX_ATTENTION_S_BUDGET");
  const int64_t budget = env ? std::atoll(env) : int64_t(512) << 20, per_row = nb * hkv * lk * item;
  const bool whole = per_row * rep * lq <= budget;
  const int64_t band = whole ? lq : std::min(lq, budget / per_row);
  if (band < 8) return false;
  const int64_t m = whole ? rep * lq : band;  // rows of S per (sequence, kv head)
  Array s({nb * hkv, m, lk}, q.dtype(), q.device());
  const cudaDataType_t t = blas_dtype(q.dtype());
  const int64_t q_step = rep * lq * d;  // from one (sequence, kv head) to the next in q and out
  const RowSplit split = row_split(lk);
  for (int64_t h = 0; h < (whole ? 1 : rep); ++h)
    for (int64_t r0 = 0; r0 < lq; r0 += band) {
      const int64_t rows = whole ? m : std::min(band, lq - r0);
      const int64_t at = (h * lq + r0) * d * item;  // bytes into q and out
      const char* qp = static_cast<const char*>(q.raw()) + at;
      char* op = static_cast<char*>(out.raw()) + at;
      // Row-major X [r, c] is column-major Xᵀ: S [rows, Lk] = Q·Kᵀ is Sᵀ [Lk, rows] = (Kᵀ)ᵀ·Qᵀ.
      Gemm scores;
      scores.op_a = CUBLAS_OP_T, scores.op_b = CUBLAS_OP_N, scores.m = lk, scores.n = rows, scores.k = d;
      scores.batch = nb * hkv, scores.type = t;
      scores.a = k.raw(), scores.lda = k.strides()[2], scores.stride_a = k_step;
      scores.b = qp, scores.ldb = d, scores.stride_b = q_step;
      scores.c = s.raw(), scores.ldc = lk, scores.stride_c = m * lk;
      gemm(ctx, scores, "attention scores");
      // Rows of a (sequence, kv head) are (query head, position) when whole, else positions
      // r0.. of one head; the softmax's row stride through S is m either way.
      SoftmaxParams p{nb * hkv * m, whole ? lq : m, lk, whole ? rep : 1, hkv, scale, causal, window,
                      q_offsets.data<int32_t>(), key_valid ? key_valid->data<bool>() : nullptr, r0, rows};
      masked_softmax(ctx, q.dtype(), s, p, split);
      // O [rows, D] = P·V is Oᵀ [D, rows] = Vᵀ·Pᵀ.
      Gemm values;
      values.op_a = CUBLAS_OP_N, values.op_b = CUBLAS_OP_N, values.m = d, values.n = rows, values.k = lk;
      values.batch = nb * hkv, values.type = t;
      values.a = v.raw(), values.lda = v.strides()[2], values.stride_a = v_step;
      values.b = s.raw(), values.ldb = lk, values.stride_b = m * lk;
      values.c = op, values.ldc = d, values.stride_c = q_step;
      gemm(ctx, values, "attention values");
    }
  return true;
}

// The gradient of the attention above, as the composition's rules give it with P made again:
// per (sequence, kv head), with its rep query heads as M = rep·Lq rows (so that the sums over
// a group's query heads fall inside the products):
//   P  = masked softmax of Q·Kᵀ (the forward's kernel)   [M, Lk]
//   dP = G·Vᵀ, then dS = scale · P ∘ (dP − rowsum(P ∘ dP)) in place   [M, Lk]
//   dQ = dS·K [M, D], dK = dSᵀ·Q [Lk, D], dV = Pᵀ·G [Lk, D]
// Two [B·Hkv, M, Lk] buffers in the dtype; where they would pass 512 MiB each, false.
bool eager_attention_grad(const Context& ctx, const Array& q, const Array& k, const Array& v, const Array& g,
                          float scale, bool causal, int64_t window, const Array& q_offsets, const Array* key_valid,
                          const Array& dq, const Array& dk, const Array& dv) {
  const int64_t nb = q.shape(0), hq = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int64_t hkv = k.shape(1), lk = k.shape(2), rep = hq / hkv, m = rep * lq;
  const int64_t bytes = nb * hkv * m * lk * int64_t(itemsize(q.dtype()));
  if (q.size() == 0 || lk == 0 || bytes > (int64_t(512) << 20)) return false;
  for (int64_t x : {m, lk, d, nb * hkv})
    if (x > INT32_MAX) return false;
  Array s({nb * hkv, m, lk}, q.dtype(), q.device()), ds(s.shape(), q.dtype(), q.device());
  const cudaDataType_t t = blas_dtype(q.dtype());
  const RowSplit split = row_split(lk);
  const int64_t rows = nb * hkv * m;
  // S [M, Lk] = Q·Kᵀ, as Sᵀ = (Kᵀ)ᵀ·Qᵀ in column-major terms; dP = G·Vᵀ alike.
  auto rows_by_keys = [&](const Array& a, const Array& b, const Array& c, const char* what) {
    Gemm p;
    p.op_a = CUBLAS_OP_T, p.op_b = CUBLAS_OP_N, p.m = lk, p.n = m, p.k = d, p.batch = nb * hkv, p.type = t;
    p.a = b.raw(), p.lda = d, p.stride_a = lk * d;
    p.b = a.raw(), p.ldb = d, p.stride_b = m * d;
    p.c = c.raw(), p.ldc = lk, p.stride_c = m * lk;
    gemm(ctx, p, what);
  };
  rows_by_keys(q, k, s, "attention gradient: scores");
  const SoftmaxParams sp{rows, lq, lk, rep, hkv, scale, causal, window, q_offsets.data<int32_t>(),
                         key_valid ? key_valid->data<bool>() : nullptr, 0, m};
  rows_by_keys(g, v, ds, "attention gradient: dP");
  masked_softmax(ctx, q.dtype(), s, sp, split);
  const unsigned blocks = unsigned((rows * split.lanes + kBlock - 1) / kBlock);
  visit_device_dtype(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      const T* pp = static_cast<const T*>(s.raw());
      T* dsp = static_cast<T*>(ds.raw());
      if (split.kept == 16)
        softmax_grad_kernel<T, 16><<<blocks, kBlock, 0, ctx.stream>>>(pp, dsp, rows, lk, scale, split.lanes);
      else
        softmax_grad_kernel<T, 4><<<blocks, kBlock, 0, ctx.stream>>>(pp, dsp, rows, lk, scale, split.lanes);
    }
  });
  check_launch("softmax_grad_kernel");
  // dQ [M, D] = dS·K: dQᵀ = Kᵀ·dSᵀ.
  Gemm pq;
  pq.m = d, pq.n = m, pq.k = lk, pq.batch = nb * hkv, pq.type = t;
  pq.a = k.raw(), pq.lda = d, pq.stride_a = lk * d;
  pq.b = ds.raw(), pq.ldb = lk, pq.stride_b = m * lk;
  pq.c = dq.raw(), pq.ldc = d, pq.stride_c = m * d;
  gemm(ctx, pq, "attention gradient: dQ");
  // dK [Lk, D] = dSᵀ·Q and dV = Pᵀ·G: dKᵀ = Qᵀ·dS, summed over the group's M rows.
  auto keys_by_cols = [&](const Array& a, const Array& b, const Array& c, const char* what) {
    Gemm p;
    p.op_a = CUBLAS_OP_N, p.op_b = CUBLAS_OP_T, p.m = d, p.n = lk, p.k = m, p.batch = nb * hkv, p.type = t;
    p.a = b.raw(), p.lda = d, p.stride_a = m * d;
    p.b = a.raw(), p.ldb = lk, p.stride_b = m * lk;
    p.c = c.raw(), p.ldc = d, p.stride_c = lk * d;
    gemm(ctx, p, what);
  };
  keys_by_cols(ds, q, dk, "attention gradient: dK");
  keys_by_cols(s, g, dv, "attention gradient: dV");
  return true;
}

}  // namespace lmx::cuda
