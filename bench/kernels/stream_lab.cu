// Kernel lab for the persistent decode step (src/backend/cuda/fused_persistent.cu): how
// fast one block per SM can stream weights through shared memory, and what a grid-wide
// barrier costs. From the repository root: nvcc -O3 -std=c++20 -arch=sm_90a -Isrc -Iinclude bench/kernels/stream_lab.cu
//
//   01  grid barrier (64-bit counter that only grows, relaxed polls): µs per barrier
//   02  ring of bulk async copies (cp.async.bulk + mbarrier), thread 0 refills a slot once
//       every thread is done with it; no arithmetic: the streaming rate alone
//   03  02 with the GEMV arithmetic (rows · an f32 vector in shared memory)
//   04  03 with a producer warp: consumers free slots on an "empty" mbarrier and never
//       wait for the refill
//   05  cp.async (16 bytes per thread) ring, all threads copy, with the arithmetic
//   06  04 for B = 1, 2, 4 or 8 vectors on the tensor cores, as a batched persistent step
//       would take them: mma m16n8k16 with the vectors (bf16, shared memory) as A's rows
//       and a stage's 8 weight rows as B's columns; the 8 consumer warps split each stage's
//       columns and add their 8 x B sums through shared memory once a stage (a named
//       barrier), as a step's outputs need. Does the ring still stream at the copy limit
//       with B times the arithmetic and a reduction a stage?
//
// Each streaming variant reads the same 1 GiB of bf16 rows of 2048 columns (1 GiB is far
// beyond L2, as a decode step's weights are) and, where it computes, checks its sum of
// all dot products against a plain kernel's.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "lab.cuh"
#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/mma.cuh"

using namespace lmx::cuda;  // the library's mbarrier and bulk-copy helpers

constexpr int kK = 2048;  // columns of a row
constexpr int kConsumers = 256;

__device__ void grid_barrier(unsigned long long* c, unsigned long long target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(c, 1ull);
    unsigned long long v;
    do asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(c) : "memory");
    while (v < target);
    __threadfence();
  }
  __syncthreads();
}

// ---------------------------------------------------------------- 01 barrier
__global__ void barrier_kernel(unsigned long long* c, int n) {
  unsigned long long t = 0;
  for (int i = 0; i < n; ++i) grid_barrier(c, t += gridDim.x);
}

// The dot products of `rows` rows (shared memory) with xs, by 8 warps, two accumulators.
__device__ float rows_dot(const __nv_bfloat16* w, int rows, const float* xs) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float total = 0;
  for (int r = warp; r < rows; r += kConsumers / 32) {
    const __nv_bfloat16* row = w + size_t(r) * kK;
    float s0 = 0, s1 = 0;
#pragma unroll 4
    for (int c = lane * 8; c < kK; c += 256) {
      const uint4 v = *reinterpret_cast<const uint4*>(row + c);
      const float4 a = *reinterpret_cast<const float4*>(xs + c), b = *reinterpret_cast<const float4*>(xs + c + 4);
      s0 = fmaf(__uint_as_float(v.x << 16), a.x, s0);
      s1 = fmaf(__uint_as_float(v.x & 0xffff0000u), a.y, s1);
      s0 = fmaf(__uint_as_float(v.y << 16), a.z, s0);
      s1 = fmaf(__uint_as_float(v.y & 0xffff0000u), a.w, s1);
      s0 = fmaf(__uint_as_float(v.z << 16), b.x, s0);
      s1 = fmaf(__uint_as_float(v.z & 0xffff0000u), b.y, s1);
      s0 = fmaf(__uint_as_float(v.w << 16), b.z, s0);
      s1 = fmaf(__uint_as_float(v.w & 0xffff0000u), b.w, s1);
    }
    float s = s0 + s1;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    total += s;  // lane values all equal after the butterfly
  }
  return total;
}

__device__ void load_xs(float* xs, const float* x) {
  for (int i = threadIdx.x; i < kK; i += blockDim.x) xs[i] = x[i];
  __syncthreads();
}

// ---------------------------------------------------------------- 02 / 03 ring, thread 0 refills
template <bool kCompute>
__global__ void ring_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, int slots, int slot_bytes,
                            double* sum) {
  extern __shared__ __align__(128) unsigned char sm[];
  float* xs = reinterpret_cast<float*>(sm + size_t(slots) * slot_bytes);
  __shared__ uint64_t full[16];
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  auto issue = [&](long long st) {
    if (st >= stages) return;
    const int slot = int(st % slots);
    const long long r = r0 + st * per;
    const unsigned n = unsigned(::min((long long)per, r1 - r));
    mbarrier_expect(&full[slot], n * kK * 2);
    bulk_copy(sm + size_t(slot) * slot_bytes, w + r * kK, n * kK * 2, &full[slot]);
  };
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1);
    mbarrier_init_fence();
    for (int i = 0; i < slots; ++i) issue(i);
  }
  load_xs(xs, x);
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    mbarrier_wait(&full[slot], unsigned(st / slots) & 1u);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    if (kCompute) total += rows_dot(reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes), n, xs);
    __syncthreads();
    if (threadIdx.x == 0) issue(st + slots);
  }
  if (threadIdx.x % 32 == 0) atomicAdd(sum, double(total));
}

// ---------------------------------------------------------------- 04 producer warp
// The producer warp's loop (04, 06): rows [r0, r1) in stages of a slot each, a stage
// issued once its slot's consumers have freed it.
__device__ void produce(const __nv_bfloat16* w, unsigned char* sm, int slots, int slot_bytes, long long r0,
                        long long r1, uint64_t* full, uint64_t* empty) {
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    if (st >= slots) mbarrier_wait(&empty[slot], unsigned(st / slots - 1) & 1u);
    const long long r = r0 + st * per;
    const unsigned n = unsigned(::min((long long)per, r1 - r));
    mbarrier_expect(&full[slot], n * kK * 2);
    bulk_copy(sm + size_t(slot) * slot_bytes, w + r * kK, n * kK * 2, &full[slot]);
  }
}

__global__ void producer_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, int slots, int slot_bytes,
                                double* sum) {
  extern __shared__ __align__(128) unsigned char sm[];
  float* xs = reinterpret_cast<float*>(sm + size_t(slots) * slot_bytes);
  __shared__ uint64_t full[16], empty[16];
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1), mbarrier_init(&empty[i], kConsumers / 32);
    mbarrier_init_fence();
  }
  for (int i = threadIdx.x; i < kK; i += blockDim.x) xs[i] = x[i];
  __syncthreads();
  if (threadIdx.x >= kConsumers) {  // the producer warp
    if (threadIdx.x != kConsumers) return;
    produce(w, sm, slots, slot_bytes, r0, r1, full, empty);
    return;
  }
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    mbarrier_wait(&full[slot], unsigned(st / slots) & 1u);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    total += rows_dot(reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes), n, xs);
    __syncwarp();
    if (threadIdx.x % 32 == 0) mbarrier_arrive(&empty[slot]);
  }
  if (threadIdx.x % 32 == 0) atomicAdd(sum, double(total));
}

// ---------------------------------------------------------------- 05 cp.async ring
template <int kSlotsT>
__global__ void cp_async_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, int slots, int slot_bytes,
                                double* sum) {
  static_assert(kSlotsT >= 2);
  extern __shared__ __align__(128) unsigned char sm[];
  float* xs = reinterpret_cast<float*>(sm + size_t(slots) * slot_bytes);
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);
  const long long stages = (r1 - r0 + per - 1) / per;
  auto issue = [&](long long st) {  // every thread its 16-byte pieces; one commit group per stage
    if (st < stages) {
      const int slot = int(st % slots);
      const long long r = r0 + st * per;
      const int bytes = int(::min((long long)per, r1 - r)) * kK * 2;
      const char* src = reinterpret_cast<const char*>(w + r * kK);
      for (int o = threadIdx.x * 16; o < bytes; o += blockDim.x * 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(sm + size_t(slot) * slot_bytes + o)),
                     "l"(src + o));
    }
    asm volatile("cp.async.commit_group;");
  };
  for (int i = 0; i < slots - 1; ++i) issue(i);
  load_xs(xs, x);
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    issue(st + slots - 1);
    asm volatile("cp.async.wait_group %0;" ::"n"(kSlotsT - 1) : "memory");  // stage st has landed
    __syncthreads();
    const int slot = int(st % slots);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    total += rows_dot(reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes), n, xs);
    __syncthreads();
  }
  if (threadIdx.x % 32 == 0) atomicAdd(sum, double(total));
}

// ---------------------------------------------------------------- 06 producer warp, mma over B vectors
// Shared memory: the ring, then the vectors [kB, kK] bf16, then two sets of the warps' sums
// [2][kConsumers / 32][64] (a stage's set alternates, so one barrier a stage suffices).
template <int kB>
__global__ void mma_rows_kernel(const __nv_bfloat16* w, long long rows_total, const __nv_bfloat16* x, int slots,
                                int slot_bytes, double* sum) {
  constexpr int kWarps = kConsumers / 32;
  extern __shared__ __align__(128) unsigned char sm[];
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(sm + size_t(slots) * slot_bytes);
  float* red = reinterpret_cast<float*>(xs + size_t(kB) * kK);
  __shared__ uint64_t full[16], empty[16];
  const long long r0 = blockIdx.x * rows_total / gridDim.x, r1 = (blockIdx.x + 1) * rows_total / gridDim.x;
  const int per = slot_bytes / (kK * 2);  // rows a stage: 8 for 32 KiB
  const long long stages = (r1 - r0 + per - 1) / per;
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1), mbarrier_init(&empty[i], kWarps);
    mbarrier_init_fence();
  }
  for (int i = threadIdx.x * 8; i < kB * kK; i += blockDim.x * 8)
    *reinterpret_cast<uint4*>(xs + i) = *reinterpret_cast<const uint4*>(x + i);
  __syncthreads();
  if (threadIdx.x >= kConsumers) {  // the producer warp
    if (threadIdx.x != kConsumers) return;
    produce(w, sm, slots, slot_bytes, r0, r1, full, empty);
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // Lane (g, t): vector g (A's row g; rows g + 8 are zero) and weight row g (B's column g),
  // columns 8t..8t+7 of each 32-column chunk: two k-steps' operands from one 16-byte load
  // of each (a dot product takes its columns in any order if both operands agree).
  const __nv_bfloat16* xrow = xs + size_t(g % kB) * kK;
  float total = 0;
  for (long long st = 0; st < stages; ++st) {
    const int slot = int(st % slots);
    mbarrier_wait(&full[slot], unsigned(st / slots) & 1u);
    const int n = int(::min((long long)per, r1 - (r0 + st * per)));
    const __nv_bfloat16* stage = reinterpret_cast<const __nv_bfloat16*>(sm + size_t(slot) * slot_bytes);
    const __nv_bfloat16* wrow = stage + size_t(g < n ? g : 0) * kK;
    float c[4] = {0, 0, 0, 0};
    constexpr int kCols = kK / kWarps;  // a warp's columns of the stage
#pragma unroll 4
    for (int c0 = warp * kCols; c0 < (warp + 1) * kCols; c0 += 32) {
      const uint4 wv = *reinterpret_cast<const uint4*>(wrow + c0 + 8 * t);
      const uint4 xv = *reinterpret_cast<const uint4*>(xrow + c0 + 8 * t);
      const uint32_t a0[4] = {xv.x, 0u, xv.y, 0u}, a1[4] = {xv.z, 0u, xv.w, 0u};
      mma_16816<bfloat_t>(c, a0, wv.x, wv.y);
      mma_16816<bfloat_t>(c, a1, wv.z, wv.w);
    }
    __syncwarp();
    if (lane == 0) mbarrier_arrive(&empty[slot]);
    // c0, c1: vector g against weight rows 2t and 2t + 1 over this warp's columns.
    float* mine = red + (size_t(st & 1) * kWarps + warp) * 64;
    mine[g * 8 + 2 * t] = c[0], mine[g * 8 + 2 * t + 1] = c[1];
    asm volatile("bar.sync 1, %0;" ::"n"(kConsumers));
    if (threadIdx.x < 64) {  // output (vector v, row r) summed over the warps
      const int v = threadIdx.x / 8, r = threadIdx.x % 8;
      float o = 0;
      for (int k = 0; k < kWarps; ++k) o += red[(size_t(st & 1) * kWarps + k) * 64 + threadIdx.x];
      if (v < kB && r < n) total += o;
    }
  }
  if (threadIdx.x < 64) atomicAdd(sum, double(total));
}

__global__ void reference_kernel(const __nv_bfloat16* w, long long rows_total, const float* x, double* sum) {
  float total = 0;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  for (long long r = warp; r < rows_total; r += gridDim.x * blockDim.x / 32) {
    float s = 0;
    for (int c = lane; c < kK; c += 32) s = fmaf(__bfloat162float(w[r * kK + c]), x[c], s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    total += s;
  }
  if (lane == 0) atomicAdd(sum, double(total));
}

__global__ void fill_kernel(__nv_bfloat16* w, long long n) {
  for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint32_t h = uint32_t(i * 2654435761u) >> 16;
    w[i] = __float2bfloat16(float(h % 2001) / 1000.0f - 1.0f);
  }
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  auto time_ms = [&](auto&& launch, int reps) {
    launch();
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaEventRecord(e0));
    for (int i = 0; i < reps; ++i) launch();
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return double(ms) / reps;
  };

  // 01
  unsigned long long* counter;
  CHECK(cudaMalloc(&counter, 8));
  CHECK(cudaMemset(counter, 0, 8));
  const int n_bar = 4000;
  const double bar_ms = time_ms(
      [&] {
        CHECK(cudaMemsetAsync(counter, 0, 8));
        barrier_kernel<<<sms, kConsumers>>>(counter, n_bar);
      },
      3);
  std::printf("01 grid barrier, %d blocks: %.2f us per barrier\n", sms, bar_ms * 1e3 / n_bar);

  const long long bytes = 1ll << 30, rows = bytes / (kK * 2);
  __nv_bfloat16* w;
  float* x;
  double* sum;
  CHECK(cudaMalloc(&w, bytes));
  CHECK(cudaMalloc(&x, kK * 4));
  CHECK(cudaMalloc(&sum, 8));
  fill_kernel<<<1024, 256>>>(w, rows * kK);
  std::vector<float> hx(kK);
  for (int i = 0; i < kK; ++i) hx[size_t(i)] = float((i * 37) % 101) / 100.0f - 0.5f;
  CHECK(cudaMemcpy(x, hx.data(), kK * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(sum, 0, 8));
  reference_kernel<<<sms * 8, 256>>>(w, rows, x, sum);
  double want = 0;
  CHECK(cudaMemcpy(&want, sum, 8, cudaMemcpyDeviceToHost));

  auto report = [&](const char* name, int slots, int slot_bytes, auto kernel, int threads, bool compute) {
    const size_t smem = size_t(slots) * slot_bytes + kK * 4;
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const double ms = time_ms(
        [&] {
          CHECK(cudaMemsetAsync(sum, 0, 8));
          kernel<<<sms, threads, smem>>>(w, rows, x, slots, slot_bytes, sum);
        },
        5);
    double got = 0;
    CHECK(cudaMemcpy(&got, sum, 8, cudaMemcpyDeviceToHost));
    const bool ok = !compute || std::fabs(got - want) <= 1e-3 * std::fabs(want) + 1.0;
    std::printf("%s slots %2d x %3d KiB: %.3f ms, %.2f TB/s = %.2fx 4.3 TB/s%s\n", name, slots, slot_bytes >> 10, ms,
                bytes / ms / 1e9, bytes / ms / 1e9 / 4.3, ok ? "" : "  CHECK FAILED");
    return ok;
  };
  bool ok = true;
  for (auto [s, b] : {std::pair{5, 32 << 10}, {10, 16 << 10}, {3, 64 << 10}, {12, 16 << 10}, {6, 32 << 10}})
    ok &= report("02 bulk ring, no math      ", s, b, ring_kernel<false>, kConsumers, false);
  for (auto [s, b] : {std::pair{5, 32 << 10}, {10, 16 << 10}, {12, 16 << 10}})
    ok &= report("03 bulk ring, GEMV math    ", s, b, ring_kernel<true>, kConsumers, true);
  for (auto [s, b] : {std::pair{5, 32 << 10}, {10, 16 << 10}, {12, 16 << 10}, {16, 8 << 10}})
    ok &= report("04 producer warp, GEMV math", s, b, producer_kernel, kConsumers + 32, true);
  ok &= report("05 cp.async ring, GEMV math", 5, 32 << 10, cp_async_kernel<5>, kConsumers, true);
  ok &= report("05 cp.async ring, GEMV math", 10, 16 << 10, cp_async_kernel<10>, kConsumers, true);
  // 06: the same weights against kB bf16 vectors; the check is the sum over vectors and
  // rows, that is every row against the vectors' sum.
  __nv_bfloat16* xb;
  CHECK(cudaMalloc(&xb, size_t(8) * kK * 2));
  auto report_mma = [&](int b, auto kernel) {
    std::vector<__nv_bfloat16> hb(size_t(b) * kK);
    std::vector<float> xsum(kK, 0.0f);
    for (int v = 0; v < b; ++v)
      for (int i = 0; i < kK; ++i) {
        hb[size_t(v) * kK + i] = __float2bfloat16(float((i * 37 + v * 11) % 101) / 100.0f - 0.5f);
        xsum[size_t(i)] += __bfloat162float(hb[size_t(v) * kK + i]);
      }
    CHECK(cudaMemcpy(xb, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(x, xsum.data(), kK * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(sum, 0, 8));
    reference_kernel<<<sms * 8, 256>>>(w, rows, x, sum);
    double want_b = 0;
    CHECK(cudaMemcpy(&want_b, sum, 8, cudaMemcpyDeviceToHost));
    const int slots = 5, slot_bytes = 32 << 10;
    const size_t smem = size_t(slots) * slot_bytes + size_t(b) * kK * 2 + 2 * (kConsumers / 32) * 64 * 4;
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const double ms = time_ms(
        [&] {
          CHECK(cudaMemsetAsync(sum, 0, 8));
          kernel<<<sms, kConsumers + 32, smem>>>(w, rows, xb, slots, slot_bytes, sum);
        },
        5);
    double got = 0;
    CHECK(cudaMemcpy(&got, sum, 8, cudaMemcpyDeviceToHost));
    const bool good = std::fabs(got - want_b) <= 1e-3 * std::fabs(want_b) + 1.0;
    std::printf("06 producer warp, mma, %d vectors, slots %d x %d KiB: %.3f ms, %.2f TB/s = %.2fx 4.3 TB/s%s\n", b,
                slots, slot_bytes >> 10, ms, bytes / ms / 1e9, bytes / ms / 1e9 / 4.3,
                good ? "" : "  CHECK FAILED");
    return good;
  };
  ok &= report_mma(1, mma_rows_kernel<1>);
  ok &= report_mma(2, mma_rows_kernel<2>);
  ok &= report_mma(4, mma_rows_kernel<4>);
  ok &= report_mma(8, mma_rows_kernel<8>);
  return ok ? 0 : 1;
}
