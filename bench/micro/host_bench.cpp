// What an op costs the host on CUDA. The plain decode step runs one op after another on
// small shapes, so its pace is the host's time per op wherever that exceeds the kernels'
// (a step's kernels take 2-10 µs each). Each benchmark enqueues one op of a Qwen3-0.6B
// batch-1 decode step back to back and waits for the device once per 64 calls: the time
// per call is the host's work for it (argument checks, arrays, the launch) unless the
// kernel is the slower. BM_host_wait is the round trip of a wait alone. Skipped where no
// GPU is visible.
#include "bench_util.h"
#include "core/error.h"
#include "ops/fast.h"

namespace lmx::bench {
namespace {

constexpr Dtype kDtype = Dtype::bf16;
constexpr int64_t kHidden = 1024, kHeads = 16, kKvHeads = 8, kHeadDim = 128, kMlp = 3072, kKeys = 384;

// The device, or nothing (and the benchmark skipped) where none is visible.
bool gpu(benchmark::State& state) {
  try {
    detail::kernels_for(Device::cuda(0));
    return true;
  } catch (const Error& e) {
    state.SkipWithError(e.what());
    return false;
  }
}

Array random_on_gpu(const Shape& shape, uint64_t seed) {
  return to_device(astype(random_normal(shape, seed, 0.0f, 0.5f), kDtype), Device::cuda(0));
}

// Runs op once per iteration, waiting for the device every 64 calls and at the end.
template <class Op>
void enqueue(benchmark::State& state, Op&& op) {
  detail::Kernels& k = detail::kernels_for(Device::cuda(0));
  int64_t n = 0;
  for (auto _ : state) {
    op();
    if (++n % 64 == 0) k.synchronize();
  }
  k.synchronize();
}

void BM_host_wait(benchmark::State& state) {
  if (!gpu(state)) return;
  detail::Kernels& k = detail::kernels_for(Device::cuda(0));
  for (auto _ : state) k.synchronize();
}
BENCHMARK(BM_host_wait)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_alloc(benchmark::State& state) {  // an array made and dropped: the caching allocator alone
  if (!gpu(state)) return;
  enqueue(state, [] { benchmark::DoNotOptimize(Array({1, kHidden}, kDtype, Device::cuda(0)).raw()); });
}
BENCHMARK(BM_host_alloc)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_add(benchmark::State& state) {
  if (!gpu(state)) return;
  const Array x = random_on_gpu({1, 1, kHidden}, 1), y = random_on_gpu({1, 1, kHidden}, 2);
  enqueue(state, [&] { (void)add(x, y); });
}
BENCHMARK(BM_host_add)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_add_rms_norm(benchmark::State& state) {
  if (!gpu(state)) return;
  const Array x = random_on_gpu({1, 1, kHidden}, 1), y = random_on_gpu({1, 1, kHidden}, 2);
  const Array w = random_on_gpu({kHidden}, 3);
  enqueue(state, [&] { (void)fast::add_rms_norm(x, y, w, 1e-6f, fast::RmsNormStyle::llama); });
}
BENCHMARK(BM_host_add_rms_norm)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_matmul(benchmark::State& state) {  // the q projection: x [1, 1024] · W [2048, 1024]ᵀ
  if (!gpu(state)) return;
  const Array x = random_on_gpu({1, 1, kHidden}, 1), w = random_on_gpu({kHeads * kHeadDim, kHidden}, 2);
  enqueue(state, [&] { (void)matmul(x, swapaxes(w, 0, 1)); });
}
BENCHMARK(BM_host_matmul)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_linear_pair(benchmark::State& state) {  // k and v: two [1024, 1024] weights
  if (!gpu(state)) return;
  const Array x = random_on_gpu({1, 1, kHidden}, 1);
  const Array w = random_on_gpu({2, kKvHeads * kHeadDim, kHidden}, 2);  // adjacent, as a loaded layer's lie
  const Array w0 = reshape(slice_axis(w, 0, 0, 1), {kKvHeads * kHeadDim, kHidden});
  const Array w1 = reshape(slice_axis(w, 0, 1, 2), {kKvHeads * kHeadDim, kHidden});
  enqueue(state, [&] { (void)fast::linear_pair(x, w0, w1); });
}
BENCHMARK(BM_host_linear_pair)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_gated_projection(benchmark::State& state) {  // gate and up [3072, 1024] with SiLU
  if (!gpu(state)) return;
  const Array x = random_on_gpu({1, 1, kHidden}, 1);
  const Array g = random_on_gpu({kMlp, kHidden}, 2), u = random_on_gpu({kMlp, kHidden}, 3);
  enqueue(state, [&] { (void)fast::gated_projection(x, g, u, fast::GluActivation::silu); });
}
BENCHMARK(BM_host_gated_projection)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_rope_to_cache(benchmark::State& state) {  // q, k normed and rotated; k, v into the cache
  if (!gpu(state)) return;
  const Array q = random_on_gpu({1, 1, kHeads, kHeadDim}, 1), k = random_on_gpu({1, 1, kKvHeads, kHeadDim}, 2);
  const Array v = random_on_gpu({1, 1, kKvHeads, kHeadDim}, 3), cache = random_on_gpu({1, kKvHeads, kKeys, kHeadDim}, 4);
  const Array inv_freq = to_device(random_uniform({kHeadDim / 2}, 5, 1e-4f, 1.0f), Device::cuda(0));
  const Array offsets = full({1}, 200, Dtype::i32, Device::cuda(0));
  const fast::HeadNorm norm{random_on_gpu({kHeadDim}, 6), 1e-6f, fast::RmsNormStyle::llama};
  const fast::CacheSlots slots{slice_axis(cache, 2, 200, 201), slice_axis(copy(cache), 2, 200, 201)};
  enqueue(state, [&] { (void)fast::rope_to_cache(q, k, v, inv_freq, offsets, &norm, &norm, slots); });
}
BENCHMARK(BM_host_rope_to_cache)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_host_attention(benchmark::State& state) {  // one query against 384 cached keys, as a step asks
  if (!gpu(state)) return;
  const Array q = random_on_gpu({1, kHeads, 1, kHeadDim}, 1);
  const Array k = slice_axis(random_on_gpu({1, kKvHeads, 512, kHeadDim}, 2), 2, 0, kKeys);  // [1, 8, 384, 128]
  const Array v = slice_axis(random_on_gpu({1, kKvHeads, 512, kHeadDim}, 3), 2, 0, kKeys);
  fast::AttentionMask mask;
  mask.q_offsets = full({1}, double(kKeys - 1), Dtype::i32, Device::cuda(0));
  enqueue(state, [&] { (void)fast::scaled_dot_product_attention(q, k, v, 0.088f, mask); });
}
BENCHMARK(BM_host_attention)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace lmx::bench
