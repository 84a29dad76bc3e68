// Kernel lab: batch-1 decode GEMV, y = W·x for bf16 W [N, K] row-major and f32 x, the
// operation that reads every weight once per token. Numbered variants, each checked
// against a float64 reference and timed with CUDA events over enough weight copies that
// L2 (50 MB) never holds them, on the shapes of the three benchmark models.
//
//   nvcc -O3 -std=c++20 -arch=sm_90a -o /tmp/gemv_lab bench/kernels/gemv_lab.cu && /tmp/gemv_lab
//
// Variants:
//   01  one warp per row, one bf16 per lane and load
//   02  one warp per row, 16-byte loads (8 bf16), x staged in shared memory as f32
//   03  R rows per warp, all R x U loads of a loop trip issued before the arithmetic (the
//       fused decoder's kernel), R chosen per shape as src/backend/cuda/fused_gemv.cu does
//   04  03 with the input vector formed in the block's prologue (RMSNorm of x + residual),
//       as the fused decoder's QKV and gate/up GEMVs do: the cost of that prologue
//   05  03 with split-K: two warps per row group, halves added through shared memory
// Prints microseconds, GB/s of weights and the ratio to 4.3 TB/s; exits 1 if a check fails.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "lab.cuh"

using bf16 = __nv_bfloat16;
constexpr int kThreads = 128, kWarps = kThreads / 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ float dot8(uint4 w, const float* x, float acc) {
  acc = fmaf(lo(w.x), x[0], acc), acc = fmaf(hi(w.x), x[1], acc);
  acc = fmaf(lo(w.y), x[2], acc), acc = fmaf(hi(w.y), x[3], acc);
  acc = fmaf(lo(w.z), x[4], acc), acc = fmaf(hi(w.z), x[5], acc);
  acc = fmaf(lo(w.w), x[6], acc), acc = fmaf(hi(w.w), x[7], acc);
  return acc;
}

// 01
__global__ void gemv_scalar(const bf16* w, const float* x, float* y, int n, int k) {
  const int row = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= n) return;
  float acc = 0;
  for (int c = lane; c < k; c += 32) acc = fmaf(__bfloat162float(w[size_t(row) * k + c]), x[c], acc);
  acc = warp_sum(acc);
  if (lane == 0) y[row] = acc;
}

__device__ void stage_x(const float* x, float* xs, int k) {
  for (int i = threadIdx.x; i < k; i += kThreads) xs[i] = x[i];
  __syncthreads();
}

// 02
__global__ void gemv_vec16(const bf16* w, const float* x, float* y, int n, int k) {
  extern __shared__ float xs[];
  stage_x(x, xs, k);
  const int row = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= n) return;
  float acc = 0;
  for (int c = lane * 8; c < k; c += 256)
    acc = dot8(__ldg(reinterpret_cast<const uint4*>(w + size_t(row) * k + c)), xs + c, acc);
  acc = warp_sum(acc);
  if (lane == 0) y[row] = acc;
}

// 03/04: R rows per warp, 16 loads in flight per lane; with kNorm, the prologue forms
// rmsnorm(x + r) in every block first.
template <int R, bool kNorm>
__global__ void gemv_rows(const bf16* w, const float* x, const float* r, float* y, int n, int k) {
  extern __shared__ float xs[];
  if constexpr (kNorm) {
    float ss = 0;
    for (int i = threadIdx.x; i < k; i += kThreads) {
      const float v = x[i] + r[i];
      xs[i] = v;
      ss += v * v;
    }
    __shared__ float part[kWarps];
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0;
    for (int i = 0; i < kWarps; ++i) total += part[i];
    const float scale = rsqrtf(total / k + 1e-6f);
    for (int i = threadIdx.x; i < k; i += kThreads) xs[i] *= scale;
    __syncthreads();
  } else {
    stage_x(x, xs, k);
  }
  constexpr int U = 16 / R;
  const int lane = threadIdx.x % 32, first = (blockIdx.x * kWarps + threadIdx.x / 32) * R;
  if (first >= n) return;
  const bf16* rows[R];
  for (int j = 0; j < R; ++j) rows[j] = w + size_t(min(first + j, n - 1)) * k;
  float acc[R] = {};
  int c = lane * 8;
  for (; c + (U - 1) * 256 < k; c += U * 256) {
    uint4 v[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < R; ++j) v[j][u] = __ldg(reinterpret_cast<const uint4*>(rows[j] + c + u * 256));
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = dot8(v[j][u], xs + c + u * 256, acc[j]);
  }
  for (; c < k; c += 256)
#pragma unroll
    for (int j = 0; j < R; ++j) acc[j] = dot8(__ldg(reinterpret_cast<const uint4*>(rows[j] + c)), xs + c, acc[j]);
#pragma unroll
  for (int j = 0; j < R; ++j) {
    acc[j] = warp_sum(acc[j]);
    if (lane == 0 && first + j < n) y[first + j] = acc[j];
  }
}

// 05: split-K in two halves per row, one warp each, added through shared memory.
__global__ void gemv_splitk(const bf16* w, const float* x, float* y, int n, int k) {
  extern __shared__ float xs[];
  __shared__ float half_sum[kWarps];
  stage_x(x, xs, k);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * (kWarps / 2) + warp / 2, part = warp % 2;
  const int begin = part * (k / 2), end = part ? k : k / 2;
  float acc = 0;
  if (row < n)
    for (int c = begin + lane * 8; c < end; c += 256)
      acc = dot8(__ldg(reinterpret_cast<const uint4*>(w + size_t(row) * k + c)), xs + c, acc);
  acc = warp_sum(acc);
  if (lane == 0) half_sum[warp] = acc;
  __syncthreads();
  if (threadIdx.x % 64 == 0 && row < n) y[row] = half_sum[warp] + half_sum[warp + 1];
}

struct Shape {
  const char* name;
  int n, k;
};

int main() {
  const Shape shapes[] = {
      {"llama qkv", 3072, 2048},  {"llama gate+up", 16384, 2048}, {"llama down", 2048, 8192},
      {"llama head", 128256, 2048}, {"qwen3 qkv", 4096, 1024},    {"qwen3 o", 1024, 2048},
      {"qwen3 gate+up", 6144, 1024}, {"qwen3 down", 1024, 3072},  {"gemma3 gate+up", 13824, 1152},
      {"gemma3 down", 1152, 6912},   {"gemma3 head", 262144, 1152},
  };
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  bool ok = true;
  std::printf("%-16s %-26s %9s %9s %7s\n", "shape", "variant", "us", "GB/s", "x4.3TB/s");
  for (const Shape& s : shapes) {
    const size_t elems = size_t(s.n) * s.k, bytes = elems * 2;
    // Enough copies that the ones timed in turn never sit in L2.
    const int copies = int(std::max<size_t>(2, (size_t(400) << 20) / bytes + 1));
    std::vector<bf16> hw(elems);
    std::vector<float> hx(s.k), hr(s.k);
    for (auto& v : hw) v = __float2bfloat16(dist(rng));
    for (auto& v : hx) v = dist(rng);
    for (auto& v : hr) v = dist(rng);
    bf16* w;
    float *x, *r, *y;
    CHECK(cudaMalloc(&w, bytes * copies));
    for (int i = 0; i < copies; ++i) CHECK(cudaMemcpy(w + i * elems, hw.data(), bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMalloc(&x, s.k * 4));
    CHECK(cudaMalloc(&r, s.k * 4));
    CHECK(cudaMalloc(&y, s.n * 4));
    CHECK(cudaMemcpy(x, hx.data(), s.k * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(r, hr.data(), s.k * 4, cudaMemcpyHostToDevice));
    const int rows_per_warp = s.n / (kWarps * 4) >= 2 * sms ? 4 : s.n / (kWarps * 2) >= 2 * sms ? 2 : 1;
    const size_t smem = size_t(s.k) * 4;
    struct Variant {
      const char* name;
      bool norm;
      void (*launch)(const bf16*, const float*, const float*, float*, int, int, int, size_t);
    };
    const Variant variants[] = {
        {"01 warp/row scalar", false, [](const bf16* w, const float* x, const float*, float* y, int n, int k, int, size_t) {
           gemv_scalar<<<(n + kWarps - 1) / kWarps, kThreads>>>(w, x, y, n, k);
         }},
        {"02 warp/row 16B", false, [](const bf16* w, const float* x, const float*, float* y, int n, int k, int, size_t m) {
           gemv_vec16<<<(n + kWarps - 1) / kWarps, kThreads, m>>>(w, x, y, n, k);
         }},
        {"03 R rows, 16 in flight", false, [](const bf16* w, const float* x, const float* r, float* y, int n, int k, int R, size_t m) {
           const int g = (n + kWarps * R - 1) / (kWarps * R);
           if (R == 4) gemv_rows<4, false><<<g, kThreads, m>>>(w, x, r, y, n, k);
           else if (R == 2) gemv_rows<2, false><<<g, kThreads, m>>>(w, x, r, y, n, k);
           else gemv_rows<1, false><<<g, kThreads, m>>>(w, x, r, y, n, k);
         }},
        {"04 03 + norm prologue", true, [](const bf16* w, const float* x, const float* r, float* y, int n, int k, int R, size_t m) {
           const int g = (n + kWarps * R - 1) / (kWarps * R);
           if (R == 4) gemv_rows<4, true><<<g, kThreads, m>>>(w, x, r, y, n, k);
           else if (R == 2) gemv_rows<2, true><<<g, kThreads, m>>>(w, x, r, y, n, k);
           else gemv_rows<1, true><<<g, kThreads, m>>>(w, x, r, y, n, k);
         }},
        {"05 split-K x2", false, [](const bf16* w, const float* x, const float*, float* y, int n, int k, int, size_t m) {
           gemv_splitk<<<(n + kWarps / 2 - 1) / (kWarps / 2), kThreads, m>>>(w, x, y, n, k);
         }},
    };
    for (const Variant& v : variants) {
      // Check: float64 reference of the same input vector.
      std::vector<double> in(s.k);
      double ss = 0;
      for (int i = 0; i < s.k; ++i) in[i] = v.norm ? double(hx[i]) + hr[i] : hx[i], ss += in[i] * in[i];
      if (v.norm)
        for (double& e : in) e /= std::sqrt(ss / s.k + 1e-6);
      v.launch(w, x, r, y, s.n, s.k, rows_per_warp, smem);
      CHECK(cudaGetLastError());
      std::vector<float> got(s.n);
      CHECK(cudaMemcpy(got.data(), y, s.n * 4, cudaMemcpyDeviceToHost));
      double worst = 0;
      for (int row = 0; row < s.n; row += std::max(1, s.n / 512)) {
        double want = 0, mag = 0;
        for (int c = 0; c < s.k; ++c) {
          const double wv = __bfloat162float(hw[size_t(row) * s.k + c]);
          want += wv * in[c], mag += std::abs(wv * in[c]);
        }
        worst = std::max(worst, std::abs(got[row] - want) / (mag + 1e-30));
      }
      const bool pass = worst <= 1e-5;  // f32 accumulation of K products, relative to sum |w x|
      ok &= pass;
      // Time: rotate over the copies, median of the rounds.
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      std::vector<float> ms;
      for (int round = 0; round < 21; ++round) {
        CHECK(cudaEventRecord(a));
        for (int i = 0; i < copies; ++i) v.launch(w + i * elems, x, r, y, s.n, s.k, rows_per_warp, smem);
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        float t;
        CHECK(cudaEventElapsedTime(&t, a, b));
        ms.push_back(t / copies);
      }
      std::sort(ms.begin(), ms.end());
      const double us = ms[ms.size() / 2] * 1e3, gbs = bytes / (us * 1e-6) / 1e9;
      std::printf("%-16s %-26s %9.2f %9.0f %7.2f%s\n", s.name, v.name, us, gbs, gbs / 4300,
                  pass ? "" : "  CHECK FAILED");
      CHECK(cudaEventDestroy(a));
      CHECK(cudaEventDestroy(b));
    }
    CHECK(cudaFree(w));
    CHECK(cudaFree(x));
    CHECK(cudaFree(r));
    CHECK(cudaFree(y));
  }
  return ok ? 0 : 1;
}
