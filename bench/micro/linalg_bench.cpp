// Matrix products through ops::matmul, and the memory bandwidth they are measured
// against: decode's matrix-vector product only streams its weight once, so its bytes
// per second should approach what a large memcpy achieves.
#include <algorithm>
#include <cstring>
#include <vector>

#include "bench_util.h"
#include "core/thread_pool.h"

namespace lmx::bench {
namespace {

// Prefill-like f32 GEMM: [128, 2048] x [2048, 2048]ᵀ, the weight used transposed as in a linear
// layer.
void BM_matmul_f32_prefill(benchmark::State& state) {
  const int64_t m = 128, k = 2048, n = 2048;
  const Array a = random_normal({m, k}, 1);  // a [M, K]
  const Array w = random_normal({n, k}, 2);  // w [N, K]
  const Array wt = transpose(w);             // [K, N] view
  for (auto _ : state) wait(matmul(a, wt));
  set_rates(state, double(m * k + n * k + m * n) * 4, 2.0 * double(m * n * k));
}
BENCHMARK(BM_matmul_f32_prefill)->Unit(benchmark::kMillisecond)->UseRealTime();

// Prefill-like bf16 products past the GEMV's rows, [M, K] x [N, K]ᵀ, over 256 MiB of distinct
// weights in turn (each read from memory, as a prompt's layers meet them). Args: M, N, K.
// They take gemm_bf16 where the CPU has AVX512_BF16 (LMX_CPU_BF16_GEMM=0: sgemm on f32 copies), and
// its AMX tiles where it has them (LMX_CPU_AMX=0: VDPBF16PS).
void BM_matmul_bf16_prefill(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int64_t count = std::max<int64_t>(2, (int64_t(256) << 20) / (n * k * 2));
  const Array a = astype(random_normal({m, k}, 5), Dtype::bf16);  // a [M, K]
  std::vector<Array> wt;                                           // count × [K, N] views
  for (int64_t i = 0; i < count; ++i) wt.push_back(transpose(astype(random_normal({n, k}, 6 + uint64_t(i)), Dtype::bf16)));
  size_t i = 0;
  for (auto _ : state) wait(matmul(a, wt[i++ % wt.size()]));
  set_rates(state, double(m * k + n * k + m * n) * 2, 2.0 * double(m * n * k));
}
BENCHMARK(BM_matmul_bf16_prefill)
    ->Args({128, 3072, 1024})
    ->Args({512, 3072, 1024})
    ->Args({128, 1024, 3072})
    ->Args({512, 8192, 2048})
    ->Args({512, 2048, 8192})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Decode GEMV: [1, 2048] x [8192, 2048]ᵀ (Llama-3.2-1B's MLP up projection). "bytes"
// counts the weight only: it is what bounds the speed.
void BM_gemv(benchmark::State& state) {
  const Dtype dtype = Dtype(state.range(0));
  const int64_t k = 2048, n = 8192;
  const Array a = astype(random_normal({1, k}, 3), dtype);  // a [1, K]
  const Array w = astype(random_normal({n, k}, 4), dtype);  // w [N, K]
  const Array wt = transpose(w);                            // [K, N] view
  for (auto _ : state) wait(matmul(a, wt));
  state.SetLabel(std::string(dtype_name(dtype)));
  set_rates(state, double(n * k) * double(itemsize(dtype)), 2.0 * double(n * k));
}
BENCHMARK(BM_gemv)
    ->Arg(int(Dtype::f32))
    ->Arg(int(Dtype::bf16))
    ->Arg(int(Dtype::f16))
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Decode GEMV as a step meets it: [1, K] x [N, K]ᵀ over 512 MiB of distinct weights in
// turn, so that every product reads its W from memory, not from a cache that the
// benchmark above (one 32 MiB W, again and again) may partly hit. Args: N, K (bf16).
void BM_gemv_streamed(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1);
  const int64_t count = std::max<int64_t>(2, (int64_t(512) << 20) / (n * k * 2));
  const Array a = astype(random_normal({1, k}, 3), Dtype::bf16);  // a [1, K]
  std::vector<Array> wt;                                         // count × [K, N] views
  for (int64_t i = 0; i < count; ++i) wt.push_back(transpose(astype(random_normal({n, k}, 4 + uint64_t(i)), Dtype::bf16)));
  size_t i = 0;
  for (auto _ : state) wait(matmul(a, wt[i++ % wt.size()]));
  set_rates(state, double(n * k) * 2.0, 2.0 * double(n * k));
}
BENCHMARK(BM_gemv_streamed)
    ->Args({2048, 1024})
    ->Args({3072, 1024})
    ->Args({1024, 3072})
    ->Args({8192, 2048})
    ->Args({151936, 1024})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// The decode GEMV of an MLX-quantized weight (fast::quantized_matmul, one row), streamed
// as above over 512 MiB of distinct codes. "bytes" counts the codes, scales and biases read;
// FLOP/s / 2 is weights per second, to set against BM_gemv_streamed's bf16 at the same
// shape. Args: N, K, bits, group size.
void BM_quantized_gemv_streamed(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1);
  const int bits = int(state.range(2)), group = int(state.range(3));
  const int64_t words = k * bits / 32, groups = k / group;
  const int64_t count = std::max<int64_t>(2, (int64_t(512) << 20) / (n * words * 4));
  const Array x = astype(random_normal({1, k}, 3), Dtype::bf16);  // x [1, K]
  std::vector<fast::QuantizedMatrix> w;
  for (int64_t i = 0; i < count; ++i) {
    std::vector<uint32_t> bits_of(size_t(n * words));  // any bits are valid codes
    uint32_t h = 2166136261u + uint32_t(i);
    for (uint32_t& b : bits_of) b = h = h * 1664525u + 1013904223u;
    const Array codes = from_vector(bits_of, {n, words});
    w.push_back({codes, astype(random_uniform({n, groups}, 6, 0.001f, 0.002f, Dtype::f32), Dtype::bf16),
                 astype(random_uniform({n, groups}, 7, -0.1f, 0.1f, Dtype::f32), Dtype::bf16), bits, group});
  }
  size_t i = 0;
  for (auto _ : state) wait(fast::quantized_matmul(x, w[i++ % w.size()]));
  state.SetLabel(std::to_string(bits) + "-bit, groups of " + std::to_string(group));
  set_rates(state, double(n * words * 4 + n * groups * 4), 2.0 * double(n * k));
}
BENCHMARK(BM_quantized_gemv_streamed)
    ->Args({8192, 2048, 4, 64})
    ->Args({8192, 2048, 8, 64})
    ->Args({3072, 1024, 4, 64})
    ->Args({151936, 1024, 4, 64})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// memcpy of 256 MiB: "bytes" counts reads plus writes. Arg 0: one thread (plain
// memcpy); arg 1: split over the library's thread pool, like the kernels.
void BM_memcpy(benchmark::State& state) {
  const size_t bytes = size_t(256) << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);  // touched, so no page faults are timed
  const bool threaded = state.range(0) != 0;
  const int64_t chunk = int64_t(1) << 20;
  for (auto _ : state) {
    if (threaded) {
      parallel_for(int64_t(bytes) / chunk, 1, [&](int64_t c0, int64_t c1) {
        std::memcpy(dst.data() + c0 * chunk, src.data() + c0 * chunk, size_t((c1 - c0) * chunk));
      });
    } else {
      std::memcpy(dst.data(), src.data(), bytes);
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(threaded ? "threads" : "one thread");
  set_rates(state, 2.0 * double(bytes));
}
BENCHMARK(BM_memcpy)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace lmx::bench
