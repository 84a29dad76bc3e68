// Softmax and the samplers' building blocks over a Llama 3 vocabulary row [1, 128256].
#include "bench_util.h"
#include "core/error.h"
#include "ops/fast.h"

namespace lmx::bench {
namespace {

constexpr int64_t kVocab = 128256;

Array logits() { return random_normal({1, kVocab}, 9, 0, 3); }  // [1, V] f32

void BM_softmax(benchmark::State& state) {
  const Array x = logits();
  for (auto _ : state) wait(softmax(x, -1));
  set_rates(state, 2.0 * double(kVocab) * 4);
}
BENCHMARK(BM_softmax)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_argmax(benchmark::State& state) {
  const Array x = logits();
  for (auto _ : state) wait(argmax(x, -1));
  set_rates(state, double(kVocab) * 4);
}
BENCHMARK(BM_argmax)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_topk(benchmark::State& state) {
  const Array x = logits();
  const int k = int(state.range(0));
  for (auto _ : state) wait(topk(x, k).first);
  set_rates(state, double(kVocab) * 4);
}
BENCHMARK(BM_topk)->Arg(40)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_categorical(benchmark::State& state) {
  const Array x = logits();
  uint64_t seed = 0;
  for (auto _ : state) wait(categorical(x, ++seed));
  set_rates(state, double(kVocab) * 4);
}
BENCHMARK(BM_categorical)->Unit(benchmark::kMicrosecond)->UseRealTime();

// fast::sample_tokens on the first GPU (where there is one), Qwen3's vocabulary of 151,936:
// Args: rows, setting (0: temperature only; 1: top-p 0.9; 2: top-k 20 and top-p 0.95;
// 3: min-p 0.05). What a sampled decode step adds to the step itself.
void BM_sample_tokens_cuda(benchmark::State& state) {
  try {
    detail::kernels_for(Device::cuda(0));
  } catch (const Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  const int64_t rows = state.range(0), vocab = 151936;
  const Array x = to_device(random_normal({rows, vocab}, 9, 0, 3), Device::cuda(0));  // [R, V] f32
  const fast::SampleFilter settings[] = {
      {0.7f}, {0.7f, 0, 0.9f}, {0.6f, 20, 0.95f}, {1.0f, 0, 1, 0.05f}};
  const fast::SampleFilter f = settings[state.range(1)];
  std::vector<uint64_t> words(static_cast<size_t>(rows));
  uint64_t n = 0;
  for (auto _ : state) {
    for (uint64_t& w : words) w = (++n) * 0x9e3779b97f4a7c15ull;
    wait(fast::sample_tokens(x, words, f));
  }
  set_rates(state, double(rows * vocab) * 4);
}
BENCHMARK(BM_sample_tokens_cuda)
    ->ArgsProduct({{1, 64}, {0, 1, 2, 3}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace lmx::bench
