// The one CPU thread pool. Kernels split work with parallel_for; nested calls run inline.
#pragma once

#include <cstdint>
#include <functional>

namespace lmx {

// Runs fn(begin, end) over [0, n) split into chunks of at least `grain` items, on the
// pool's threads plus the caller, and returns when all chunks are done. Exceptions
// thrown by fn are rethrown in the caller (the first one wins).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Threads used by parallel_for (default: hardware threads, or LMX_NUM_THREADS).
int num_threads();
// Safe from any thread: it waits for the job running then. Not from inside a job (an
// lmx::Error, as that would wait for itself). n < 1 means one thread, the caller.
void set_num_threads(int n);

}  // namespace lmx
