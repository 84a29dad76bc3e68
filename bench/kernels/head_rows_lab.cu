// Kernel lab: the greedy LM head for 1-8 sequences at once. At batch 1 the persistent step
// reads the head through a one-byte copy of W with a certified bound (head_lab.cu,
// src/backend/cuda/head_filter.cuh), half the bf16 head's bytes. A batched step reads
// every bf16 weight of the head once for all its sequences, 13-30% of a step's bytes. The
// question: does the filter's first pass (the integer products of every row with each
// vector's two int8 levels) still run at the rate its bytes stream with 8 vectors, where
// it has 16 times the products of one? From the repository root:
//   nvcc -O3 -std=c++20 -arch=sm_90a -Isrc -Iinclude bench/kernels/head_rows_lab.cu -lcublas
//
//   01  exact: W [V, K] bf16 against B bf16 vectors on mma m16n8k16, the weights as A (16
//       rows a warp's tile) and the vectors as B's columns, straight from memory (the
//       batched GEMV's way, src/backend/cuda/fused_gemv_rows.cu): f32 logits [B, V]
//   02  the filter's pass on the CUDA cores: each row's int8 codes (16 bytes of constants
//       before them, as the decoder's copy lays them out) against both int8 levels of each
//       vector by __dp4a, a warp two rows, as the persistent step's head does for one
//   03  the same products on the tensor cores: mma m16n8k32 s8 with the codes as A (16 rows)
//       and the vectors' levels as B's columns (levels 1 then 2 of up to 4 vectors in one
//       n-tile; 8 vectors take two)
//
// 02 and 03 write, per row and vector, s1·D1 + s2·D2 in f32 (D1, D2 the exact integer
// products; s1, s2 the levels' scales), which pass 2 would turn into bounds: their outputs
// must agree bit for bit. 01 is checked against float64 sums on sampled outputs. Shapes:
// the three benchmark models' tied heads.
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "lab.cuh"
#include "backend/cuda/mma.cuh"

using namespace lmx::cuda;

constexpr int kThreads = 256, kMaxB = 8;

__device__ __forceinline__ void imma_16832(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                           uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------- 01 exact, bf16 mma
// Lane (g, t): rows g and g + 8 of the warp's tile and vector g (lanes past B read vector
// 0; their columns are dropped), 8 columns at 32j + 8t of each 32: one 16-byte load of each
// fills two k-steps' operands (a dot product takes its columns in any order if both agree).
template <int kB>
__global__ void __launch_bounds__(kThreads) exact_kernel(const __nv_bfloat16* w, int rows, int k,
                                                         const __nv_bfloat16* x, float* y) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int warps = gridDim.x * kThreads / 32, warp = (blockIdx.x * kThreads + threadIdx.x) / 32;
  const __nv_bfloat16* xv = x + size_t(g < kB ? g : 0) * k;
  for (int tile = warp; tile * 16 < rows; tile += warps) {
    const int r0 = tile * 16 + g, r1 = r0 + 8;
    const __nv_bfloat16* a = w + size_t(r0 < rows ? r0 : 0) * k;
    const __nv_bfloat16* b = w + size_t(r1 < rows ? r1 : 0) * k;
    float c[4] = {0, 0, 0, 0};
#pragma unroll 4
    for (int c0 = 8 * t; c0 < k; c0 += 32) {
      const uint4 wa = __ldcs(reinterpret_cast<const uint4*>(a + c0));
      const uint4 wb = __ldcs(reinterpret_cast<const uint4*>(b + c0));
      const uint4 v = *reinterpret_cast<const uint4*>(xv + c0);
      mma_16816<bfloat_t>(c, {wa.x, wb.x, wa.y, wb.y}, v.x, v.y);
      mma_16816<bfloat_t>(c, {wa.z, wb.z, wa.w, wb.w}, v.z, v.w);
    }
    // c0, c1: row r0 against vectors 2t, 2t + 1; c2, c3: row r1.
    for (int j = 0; j < 2; ++j) {
      const int v = 2 * t + j;
      if (v >= kB) continue;
      if (r0 < rows) y[size_t(v) * rows + r0] = c[j];
      if (r1 < rows) y[size_t(v) * rows + r1] = c[2 + j];
    }
  }
}

// ---------------------------------------------------------------- 02 dp4a
// codes [rows, 16 + k]: 16 bytes of constants, then the row's int8 codes. levels [kB][2][k]
// int8; scales [kB][2] (s1, s2). A warp two rows; lane l takes codes [16l, 16l + 16) of
// every 512.
template <int kB>
__global__ void __launch_bounds__(kThreads) dp4a_kernel(const int8_t* codes, int rows, int k, const int8_t* levels,
                                                        const float* scales, float* y) {
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * kThreads / 32, warp = (blockIdx.x * kThreads + threadIdx.x) / 32;
  const size_t stride = size_t(16 + k);
  auto dot = [](int4 q, int4 x, int acc) {
    return __dp4a(q.w, x.w, __dp4a(q.z, x.z, __dp4a(q.y, x.y, __dp4a(q.x, x.x, acc))));
  };
  for (int pair = warp; pair * 2 < rows; pair += warps) {
    const int r0 = pair * 2, r1 = r0 + 1 < rows ? r0 + 1 : r0;
    const int8_t* a = codes + size_t(r0) * stride + 16;
    const int8_t* b = codes + size_t(r1) * stride + 16;
    int d[2][kB][2] = {};
    for (int c = lane * 16; c < k; c += 512) {
      const int4 qa = __ldcs(reinterpret_cast<const int4*>(a + c)), qb = __ldcs(reinterpret_cast<const int4*>(b + c));
#pragma unroll
      for (int v = 0; v < kB; ++v)
#pragma unroll
        for (int l = 0; l < 2; ++l) {
          const int4 x = *reinterpret_cast<const int4*>(levels + (size_t(v) * 2 + l) * k + c);
          d[0][v][l] = dot(qa, x, d[0][v][l]);
          d[1][v][l] = dot(qb, x, d[1][v][l]);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int v = 0; v < kB; ++v)
#pragma unroll
        for (int l = 0; l < 2; ++l)
          for (int o = 16; o > 0; o >>= 1) d[r][v][l] += __shfl_xor_sync(0xffffffffu, d[r][v][l], o);
    if (lane == 0)
#pragma unroll
      for (int v = 0; v < kB; ++v) {
        const float s1 = scales[2 * v], s2 = scales[2 * v + 1];
        y[size_t(v) * rows + r0] = s1 * float(d[0][v][0]) + s2 * float(d[0][v][1]);
        if (r1 != r0) y[size_t(v) * rows + r1] = s1 * float(d[1][v][0]) + s2 * float(d[1][v][1]);
      }
  }
}

// ---------------------------------------------------------------- 03 imma
// Lane (g, t): codes of rows g and g + 8 of the tile, 16 bytes at 64j + 16t of each 64, and
// the same bytes of B-column g: with kB ≤ 4, column g is level g / 4 + 1 of vector g % 4
// (columns past the vectors read vector 0's and are dropped); with 8 vectors, n-tile n
// holds level n + 1 of vectors 0-7. Bytes [16t, 16t + 8) are one m16n8k32 step's k
// = {4t..4t+3} and {16 + 4t..16 + 4t + 3}, bytes [16t + 8, 16t + 16) the next step's.
template <int kB>
__global__ void __launch_bounds__(kThreads) imma_kernel(const int8_t* codes, int rows, int k, const int8_t* levels,
                                                        const float* scales, float* y) {
  constexpr int kTiles = kB > 4 ? 2 : 1;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int warps = gridDim.x * kThreads / 32, warp = (blockIdx.x * kThreads + threadIdx.x) / 32;
  const size_t stride = size_t(16 + k);
  const int8_t* col[kTiles];
  if (kTiles == 2) {
    col[0] = levels + (size_t(g) * 2 + 0) * k;
    col[kTiles - 1] = levels + (size_t(g) * 2 + 1) * k;
  } else {
    const int v = g % 4 < kB ? g % 4 : 0;
    col[0] = levels + (size_t(v) * 2 + g / 4) * k;
  }
  for (int tile = warp; tile * 16 < rows; tile += warps) {
    const int r0 = tile * 16 + g, r1 = r0 + 8;
    const int8_t* a = codes + size_t(r0 < rows ? r0 : 0) * stride + 16;
    const int8_t* b = codes + size_t(r1 < rows ? r1 : 0) * stride + 16;
    int c[kTiles][4] = {};
#pragma unroll 4
    for (int c0 = 16 * t; c0 < k; c0 += 64) {
      const uint4 qa = __ldcs(reinterpret_cast<const uint4*>(a + c0));
      const uint4 qb = __ldcs(reinterpret_cast<const uint4*>(b + c0));
#pragma unroll
      for (int n = 0; n < kTiles; ++n) {
        const uint4 x = *reinterpret_cast<const uint4*>(col[n] + c0);
        imma_16832(c[n], qa.x, qb.x, qa.y, qb.y, x.x, x.y);
        imma_16832(c[n], qa.z, qb.z, qa.w, qb.w, x.z, x.w);
      }
    }
    // c[n][0..1]: row r0 against columns 2t, 2t + 1 of n-tile n; c[n][2..3]: row r1.
    if (kTiles == 2) {
      for (int j = 0; j < 2; ++j) {
        const int v = 2 * t + j;
        const float s1 = scales[2 * v], s2 = scales[2 * v + 1];
        if (r0 < rows) y[size_t(v) * rows + r0] = s1 * float(c[0][j]) + s2 * float(c[1][j]);
        if (r1 < rows) y[size_t(v) * rows + r1] = s1 * float(c[0][2 + j]) + s2 * float(c[1][2 + j]);
      }
    } else {
      // Level 2 of vector v is column 4 + v: held by lane t + 2 of the same row group.
      int other[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) other[i] = __shfl_xor_sync(0xffffffffu, c[0][i], 2);
      if (t < 2)
        for (int j = 0; j < 2; ++j) {
          const int v = 2 * t + j;
          if (v >= kB) continue;
          const float s1 = scales[2 * v], s2 = scales[2 * v + 1];
          if (r0 < rows) y[size_t(v) * rows + r0] = s1 * float(c[0][j]) + s2 * float(other[j]);
          if (r1 < rows) y[size_t(v) * rows + r1] = s1 * float(c[0][2 + j]) + s2 * float(other[2 + j]);
        }
    }
  }
}

__global__ void fill_bf16(__nv_bfloat16* w, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint32_t h = uint32_t((i + seed) * 2654435761u) >> 12;
    w[i] = __float2bfloat16(float(h % 2001) / 1000.0f - 1.0f);
  }
}
__global__ void fill_codes(int8_t* codes, int rows, int k) {
  const size_t n = size_t(rows) * (16 + k);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint32_t h = uint32_t(i * 2246822519u) >> 13;
    codes[i] = int8_t(int(h % 255) - 127);
  }
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  struct Shape {
    const char* name;
    int rows, k;
  };
  const Shape shapes[] = {
      {"Llama-3.2-1B", 128256, 2048}, {"Qwen3-0.6B", 151936, 1024}, {"Gemma3-1B", 262144, 1152}};
  bool ok = true;
  for (const Shape& s : shapes) {
    const size_t wn = size_t(s.rows) * s.k, cn = size_t(s.rows) * (16 + s.k);
    __nv_bfloat16 *w, *x;
    int8_t *codes, *levels;
    float *y, *y2, *scales;
    CHECK(cudaMalloc(&w, wn * 2));
    CHECK(cudaMalloc(&codes, cn));
    CHECK(cudaMalloc(&x, size_t(kMaxB) * s.k * 2));
    CHECK(cudaMalloc(&levels, size_t(kMaxB) * 2 * s.k));
    CHECK(cudaMalloc(&scales, kMaxB * 2 * 4));
    CHECK(cudaMalloc(&y, size_t(kMaxB) * s.rows * 4));
    CHECK(cudaMalloc(&y2, size_t(kMaxB) * s.rows * 4));
    fill_bf16<<<1024, 256>>>(w, wn, 1);
    fill_bf16<<<64, 256>>>(x, size_t(kMaxB) * s.k, 99);
    fill_codes<<<1024, 256>>>(codes, s.rows, s.k);
    std::vector<int8_t> hl(size_t(kMaxB) * 2 * s.k);
    for (size_t i = 0; i < hl.size(); ++i) hl[i] = int8_t(int((i * 37 + 5) % 129) - 64);
    CHECK(cudaMemcpy(levels, hl.data(), hl.size(), cudaMemcpyHostToDevice));
    std::vector<float> hs(kMaxB * 2);
    for (int v = 0; v < kMaxB; ++v) hs[size_t(2 * v)] = 0x1p-6f * float(v + 1), hs[size_t(2 * v + 1)] = 0x1p-13f;
    CHECK(cudaMemcpy(scales, hs.data(), hs.size() * 4, cudaMemcpyHostToDevice));
    std::vector<__nv_bfloat16> hw(wn), hx(size_t(kMaxB) * s.k);
    CHECK(cudaMemcpy(hw.data(), w, wn * 2, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(hx.data(), x, hx.size() * 2, cudaMemcpyDeviceToHost));
    const int blocks = sms * 4;
    auto run = [&](int b, const char* what, double bytes, auto&& launch) {
      const float us = median_us(launch);
      std::printf("%-12s %d vectors %-24s %7.1f us, %.2f TB/s = %.2fx 4.3 TB/s\n", s.name, b, what, us,
                  bytes / us / 1e6, bytes / us / 1e6 / 4.3);
    };
    auto per_b = [&](int b, auto exact, auto dp4a, auto imma) {
      run(b, "01 exact, bf16 mma", double(wn) * 2, [&] { exact<<<blocks, kThreads>>>(w, s.rows, s.k, x, y); });
      std::vector<float> hy(size_t(b) * s.rows);
      CHECK(cudaMemcpy(hy.data(), y, hy.size() * 4, cudaMemcpyDeviceToHost));
      // 01 against float64: x [b, k] · w [rows, k]ᵀ, output (i, j) at y[i · rows + j].
      const double err =
          sampled_gemm_error(hx, hw, b, s.rows, s.k, [&](int i, int j) { return hy[size_t(i) * s.rows + j]; });
      const bool good = err < 1e-4;  // f32 sums of k terms: at most about k·2^-24 of their magnitudes
      ok &= good;
      if (!good) std::printf("  01 CHECK FAILED: relative error %.2e\n", err);
      run(b, "02 int8 filter, dp4a", double(cn),
          [&] { dp4a<<<blocks, kThreads>>>(codes, s.rows, s.k, levels, scales, y); });
      run(b, "03 int8 filter, imma", double(cn),
          [&] { imma<<<blocks, kThreads>>>(codes, s.rows, s.k, levels, scales, y2); });
      std::vector<float> a(size_t(b) * s.rows), c(a.size());
      CHECK(cudaMemcpy(a.data(), y, a.size() * 4, cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(c.data(), y2, c.size() * 4, cudaMemcpyDeviceToHost));
      size_t differ = 0;
      for (size_t i = 0; i < a.size(); ++i) differ += a[i] != c[i];
      ok &= differ == 0;
      if (differ) std::printf("  02 and 03 CHECK FAILED: %zu of %zu outputs differ\n", differ, a.size());
    };
    per_b(1, exact_kernel<1>, dp4a_kernel<1>, imma_kernel<1>);
    per_b(2, exact_kernel<2>, dp4a_kernel<2>, imma_kernel<2>);
    per_b(4, exact_kernel<4>, dp4a_kernel<4>, imma_kernel<4>);
    per_b(8, exact_kernel<8>, dp4a_kernel<8>, imma_kernel<8>);
    for (void* p : {(void*)w, (void*)codes, (void*)x, (void*)levels, (void*)scales, (void*)y, (void*)y2})
      CHECK(cudaFree(p));
  }
  return ok ? 0 : 1;
}
