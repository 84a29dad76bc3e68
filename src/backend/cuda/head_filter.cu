// The greedy LM head's filter, made once per decoder (head_filter.cuh says what it is
// for and why its argmax is exact): each row of W as int8 codes with its scale and bounds.
#include "backend/cuda/head_filter.cuh"

namespace lmx::cuda::fused {

namespace {

using head_filter::RowConstants;

// A warp per row of w [rows, k]: the scale that maps the row's largest magnitude to 127,
// the codes (rounded to nearest), and B1 = ‖e‖ + γ·‖w‖, B2 = ‖w‖ + ‖e‖ from sums in
// double, rounded up to f32.
__global__ void make_filter(const bf16* w, int64_t rows, int k, int8_t* out) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const bf16* row = w + r * k;
  int8_t* dst = out + r * head_filter_row_bytes(k);
  float largest = 0;
  bool finite = true;
  for (int i = lane; i < k; i += 32) {
    const float x = __bfloat162float(row[i]);
    finite = finite && isfinite(x);
    largest = fmaxf(largest, fabsf(x));
  }
  largest = warp_reduce(largest, Max{});
  finite = __all_sync(0xffffffffu, finite);
  const float scale = finite ? largest / 127.0f : 0.0f;
  double ee = 0, ww = 0;
  for (int i = lane; i < k; i += 32) {
    const float x = __bfloat162float(row[i]);
    // x / scale may round a hair past 127: clamped, and e counts what that costs.
    const int q = scale > 0 ? ::max(-127, ::min(127, __float2int_rn(x / scale))) : 0;
    dst[16 + i] = int8_t(q);
    const double e = double(x) - double(scale) * q;
    ee += e * e, ww += double(x) * double(x);
  }
  ee = warp_reduce(ee, Sum{}), ww = warp_reduce(ww, Sum{});
  if (lane != 0) return;
  const double u = 0x1p-24, gamma = k * u / (1 - k * u);
  const double norm_e = ::sqrt(ee) * (1 + 1e-12), norm_w = ::sqrt(ww) * (1 + 1e-12);  // sqrt rounds to nearest
  RowConstants c{scale, INFINITY, INFINITY, 0};
  if (finite) {
    c.bound_v = __double2float_ru((norm_e + gamma * norm_w) * (1 + 1e-12));
    c.bound_rem = __double2float_ru((norm_w + norm_e) * (1 + 1e-12));
  }
  *reinterpret_cast<RowConstants*>(dst) = c;
}

}  // namespace

void prepare_head_filter(cudaStream_t stream, const bf16* w, int64_t rows, int k, uint8_t* filter) {
  LMX_CHECK(k > 0 && k % 16 == 0 && rows > 0, "LM head filter", "needs rows of a multiple of 16 weights, got ", rows,
            " x ", k);
  constexpr int kWarps = 8;
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  make_filter<<<unsigned(blocks), kWarps * 32, 0, stream>>>(w, rows, k, reinterpret_cast<int8_t*>(filter));
  check(cudaGetLastError(), "LM head filter");
}

}  // namespace lmx::cuda::fused
