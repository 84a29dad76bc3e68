// Shared helpers of the micro-benchmarks: waiting for a result and rate counters.
#pragma once

#include <benchmark/benchmark.h>

#include "ops/kernels.h"
#include "ops/ops.h"

namespace lmx::bench {

// Ops may run asynchronously on their device: wait until `a` is computed.
inline void wait(const Array& a) {
  detail::kernels_for(a.device()).synchronize();
  benchmark::DoNotOptimize(a.raw());
}

// Reports bytes/s ("bytes") and flop/s ("flops") over the benchmark's iterations.
inline void set_rates(benchmark::State& state, double bytes_per_iter, double flops_per_iter = 0) {
  const double iters = double(state.iterations());
  state.counters["bytes"] = benchmark::Counter(bytes_per_iter * iters, benchmark::Counter::kIsRate);
  if (flops_per_iter > 0)
    state.counters["flops"] =
        benchmark::Counter(flops_per_iter * iters, benchmark::Counter::kIsRate);
}

}  // namespace lmx::bench
