#include "core/thread_pool.h"

#include "core/error.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lmx {
namespace {

thread_local bool t_in_pool_task = false;

// How long a thread polls for the next job, or for the workers' last chunks, before it sleeps
// on a condition variable. A decode step runs a few hundred parallel ops a token, a few tens
// of microseconds each, back to back: a sleep and a wake-up between two of them (a futex
// call each way, longer under a hypervisor) would cost as much as a small op itself.
std::chrono::microseconds spin_time() {
  static const std::chrono::microseconds t{[] {
    const char* s = std::getenv("LMX_POOL_SPIN_US");
    return s ? std::max(0, std::atoi(s)) : 200;
  }()};
  return t;
}

// Polls done() until it holds or spin_time() has passed; whether it holds.
template <class Done>
bool spin_until(Done&& done) {
  const auto end = std::chrono::steady_clock::now() + spin_time();
  for (int i = 0;; ++i) {
    if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 63 && std::chrono::steady_clock::now() >= end) return done();
  }
}

// A fixed set of workers that all take chunks of the current job from one atomic counter.
class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }
  ~Pool() { stop(); }

  int size() const { return size_.load(std::memory_order_relaxed); }

  // Waits for the running job, if any: callers on other threads may be inside run().
  void resize(int threads) {
    LMX_CHECK(!t_in_pool_task, "set_num_threads", "called from inside a parallel_for task, which would wait for "
              "itself; set the thread count between jobs");
    std::lock_guard job_lock(job_mu_);
    stop();
    stopping_ = false;
    // New workers start from the current generation: none runs a pass over a finished job,
    // which would count it as done for the next one.
    const uint64_t now = generation_.load();
    for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this, now] { work(now); });
    size_.store(int(workers_.size()) + 1, std::memory_order_relaxed);
  }

  void run(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock job_lock(job_mu_);  // one job at a time
    bool wake = false;
    {
      std::lock_guard lock(mu_);
      fn_ = &fn;
      n_ = n;
      chunk_ = chunk;
      next_.store(0);
      pending_.store(int(workers_.size()));
      error_ = nullptr;
      generation_.fetch_add(1, std::memory_order_release);  // polling workers start here
      wake = sleepers_ > 0;  // a worker sleeps only after seeing, under mu_, no new generation
    }
    if (wake) cv_.notify_all();
    run_chunks();
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock lock(mu_);
      done_cv_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_chunks() {
    t_in_pool_task = true;
    for (;;) {
      const int64_t b = next_.fetch_add(chunk_);
      if (b >= n_) break;
      try {
        (*fn_)(b, std::min(n_, b + chunk_));
      } catch (...) {
        std::lock_guard lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
    t_in_pool_task = false;
  }

  void work(uint64_t seen) {
    for (;;) {
      const auto started = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(started)) {
        std::unique_lock lock(mu_);
        ++sleepers_;
        cv_.wait(lock, [&] { return stopping_ || started(); });
        --sleepers_;
      }
      {
        std::lock_guard lock(mu_);  // the job's fields, written under mu_, are complete
        if (stopping_) return;
        seen = generation_.load(std::memory_order_relaxed);
      }
      run_chunks();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard lock(mu_);  // a caller past its polls checks pending_ under mu_
        done_cv_.notify_one();
      }
    }
  }

  void stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex job_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> size_{1};  // workers + the caller; read without job_mu_ by parallel_for
  int sleepers_ = 0;  // workers waiting on cv_, under mu_
  bool stopping_ = false;
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* s = std::getenv("LMX_NUM_THREADS")) {
    const int n = std::atoi(s);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool* p = new Pool(default_threads());  // leaked: workers may run past static destruction
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  Pool& p = pool();
  if (t_in_pool_task || p.size() == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  // About four chunks per thread balances uneven rows without much scheduling cost.
  const int64_t chunk = std::max(grain, (n + 4 * p.size() - 1) / (4 * p.size()));
  p.run(n, chunk, fn);
}

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }

}  // namespace lmx
