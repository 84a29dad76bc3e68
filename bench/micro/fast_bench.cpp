// Fused ops (fast.h) at Llama-3.2-1B shapes in bf16: 32 query heads, 8 kv heads, head_dim 64.
#include "bench_util.h"
#include "ops/fast.h"

namespace lmx::bench {
namespace {

constexpr Dtype kDtype = Dtype::bf16;

void BM_rms_norm(benchmark::State& state) {
  const int64_t rows = state.range(0), d = 2048;
  const Array x = astype(random_normal({rows, d}, 1), kDtype);  // x [rows, 2048]
  const Array w = astype(random_normal({d}, 2), kDtype);        // w [2048]
  for (auto _ : state) wait(fast::rms_norm(x, w, 1e-5f));
  set_rates(state, 2.0 * double(rows * d) * double(itemsize(kDtype)));
}
BENCHMARK(BM_rms_norm)->Arg(1)->Arg(128)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_rope(benchmark::State& state) {
  const int64_t l = state.range(0), h = 32, d = 64;
  const Array x = astype(random_normal({1, h, l, d}, 3), kDtype);  // x [1, 32, L, 64]
  const Array inv_freq = random_uniform({d / 2}, 4, 1e-4f, 1.0f);  // [32]
  const Array offsets = full({1}, 100, Dtype::i32);                // [1]
  for (auto _ : state) wait(fast::rope(x, inv_freq, offsets));
  set_rates(state, 2.0 * double(h * l * d) * double(itemsize(kDtype)));
}
BENCHMARK(BM_rope)->Arg(1)->Arg(128)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Args: Lq, Lk. Prefill: causal over the prompt; decode: one query against the cache.
void BM_attention(benchmark::State& state) {
  const int64_t lq = state.range(0), lk = state.range(1), hq = 32, hkv = 8, d = 64;
  const Array q = astype(random_normal({1, hq, lq, d}, 5), kDtype);   // q [1, 32, Lq, 64]
  const Array k = astype(random_normal({1, hkv, lk, d}, 6), kDtype);  // k [1, 8, Lk, 64]
  const Array v = astype(random_normal({1, hkv, lk, d}, 7), kDtype);  // v [1, 8, Lk, 64]
  for (auto _ : state) wait(fast::scaled_dot_product_attention(q, k, v, 0.125f));
  state.SetLabel(lq == 1 ? "decode" : "prefill");
  set_rates(state, double((hq * lq + 2 * hkv * lk) * d) * double(itemsize(kDtype)),
            4.0 * double(hq * lq * lk * d));
}
BENCHMARK(BM_attention)
    ->Args({128, 128})
    ->Args({512, 512})
    ->Args({1, 1024})
    ->Args({1, 4096})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace lmx::bench
