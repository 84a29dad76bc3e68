// Softmax and the samplers' building blocks over a Llama 3 vocabulary row [1, 128256].
#include "bench_util.h"

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

}  // namespace
}  // namespace lmx::bench
