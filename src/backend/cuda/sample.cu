// fast::sample_tokens on the device: HF's temperature, top-k, top-p and min-p, then one
// draw per row, so that a sampled decode step sends the host one id a row instead of its
// logits (600 KB a step for Qwen3's 152K tokens, then the host's passes over them).
//
// One block per row, and nothing is sorted. Top-k's k-th largest value and top-p's cut
// are found by a radix select over the values' order-preserving bit patterns: three
// digits (11, 11 and 10 bits), each one pass that builds a histogram of the elements
// still in the running (counts for top-k, probability mass for top-p) and walks it in
// order. The draw inverts the CDF in id order as Sampler::draw does: each thread sums
// the probabilities of a contiguous run of ids, a block scan places the runs, and the
// thread whose run holds u walks it.
//
// The arithmetic is Sampler::process's: x = logit / T in f32; exp(x - max) in f32; sums in
// f64; p = f32(q · (1 / Z)). CUDA's expf is within 2 ulp where glibc's is within 1 (the
// correctly rounded exp through double, cr_exp, costs a block about 35 µs a pass over
// 152K values in f64 arithmetic), and the f64 sums run in another order: a draw can differ
// from the host's only where u or a top-p cut falls within that rounding of a boundary.
#include <climits>

#include <cub/block/block_scan.cuh>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kMaxBins = 2048;  // the widest digit: 11 bits

using Scan = cub::BlockScan<double, kThreads>;

struct Shared {
  typename Scan::TempStorage scan;
  double hist[kMaxBins];
  double before;  // select: the weight walked before the chosen digit
  int place;      // select: the chosen digit's place in the walk, or kMaxBins where the walk never passes
  long long pick;  // the draw
};

// An order-preserving key: larger floats have larger keys. -0 counts as +0 (they tie).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? k & 0x7fffffffu : ~k);
}

// The key at which a walk over the taking-part elements in key order (largest first when
// `descending`) first carries its running weight past `target`; `before` is the weight
// of the elements walked before that key. `elem(i, key, w)` says whether element i takes
// part, with its key and weight. False where the whole walk stays at or under target.
template <class Elem>
__device__ bool select_key(Shared& sh, int64_t n, bool descending, double target, Elem elem, uint32_t& key,
                           double& before) {
  constexpr int kShifts[3] = {21, 10, 0};
  uint32_t prefix = 0;  // the key's digits chosen so far
  before = 0;
  for (const int shift : kShifts) {
    const int width = shift == 0 ? 10 : 11, bins = 1 << width, high = shift + width;
    for (int b = threadIdx.x; b < bins; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    // Neighbouring elements of a thread often share a digit (the first digit holds the
    // sign, the exponent and two bits): their weights are summed before the atomic.
    int run = -1;
    double acc = 0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      uint32_t k;
      double w;
      if (!elem(i, k, w) || (high < 32 && (k >> high) != prefix)) continue;
      const int d = int((k >> shift) & uint32_t(bins - 1));
      if (d != run) {
        if (run >= 0) atomicAdd(&sh.hist[run], acc);
        run = d, acc = 0;
      }
      acc += w;
    }
    if (run >= 0) atomicAdd(&sh.hist[run], acc);
    if (threadIdx.x == 0) sh.place = kMaxBins;
    __syncthreads();
    // The walk: thread t takes places 2t and 2t + 1 of the walk's order.
    auto bin_at = [&](int j) { return descending ? bins - 1 - j : j; };
    const int j0 = 2 * int(threadIdx.x);
    const double h0 = j0 < bins ? sh.hist[bin_at(j0)] : 0, h1 = j0 + 1 < bins ? sh.hist[bin_at(j0 + 1)] : 0;
    double pre;
    Scan(sh.scan).ExclusiveSum(h0 + h1, pre);
    // The first place whose running weight passes target. (A scan's sums need not grow
    // by exactly each place's weight, so two threads might both see a crossing: the
    // first place wins, and its thread alone writes what was walked before it.)
    const double at0 = before + pre, at1 = at0 + h0;
    const bool cross0 = j0 < bins && at0 <= target && at0 + h0 > target;
    const bool cross1 = !cross0 && j0 + 1 < bins && at1 <= target && at1 + h1 > target;
    if (cross0 || cross1) atomicMin(&sh.place, cross0 ? j0 : j0 + 1);
    __syncthreads();
    const int place = sh.place;
    if (place == kMaxBins) return false;
    if (place == j0 || place == j0 + 1) sh.before = place == j0 ? at0 : at1;
    __syncthreads();
    before = sh.before;
    prefix = (prefix << width) | uint32_t(bin_at(place));
    __syncthreads();  // sh is reused by the next digit
  }
  key = prefix;
  return true;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const T* logits, int64_t cols, const unsigned long long* bits, fast::SampleFilter f, int32_t* out) {
  __shared__ Shared sh;
  const T* row = logits + int64_t(blockIdx.x) * cols;
  auto value = [&](int64_t i) { return __fdiv_rn(to_float(row[i]), f.temperature); };

  float m = -INFINITY;  // NaN never wins: fmaxf drops it
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) m = fmaxf(m, value(i));
  m = block_reduce(m, Max{});
  auto weight = [&](float x) { return isinf(x) || isnan(x) ? 0.0f : expf(x - m); };

  // Top-k: keep every value at or above the k-th largest.
  uint32_t kth = 0;
  if (f.top_k > 0 && f.top_k < cols) {
    double before;
    select_key(
        sh, cols, true, double(f.top_k - 1),
        [&](int64_t i, uint32_t& k, double& w) {
          const float x = value(i);
          k = order_key(x), w = 1;
          return !isnan(x);
        },
        kth, before);
  }
  auto in_top_k = [&](float x) { return !isnan(x) && order_key(x) >= kth; };

  // The softmax of what top-k kept, for top-p and min-p.
  double inv = 0;
  if (f.top_p < 1 || f.min_p > 0) {
    double z = 0;
    for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
      const float x = value(i);
      if (in_top_k(x)) z += weight(x);
    }
    inv = 1.0 / block_reduce(z, Sum{});
  }
  auto prob = [&](float x) { return float(double(weight(x)) * inv); };

  // Top-p (HF): ascending, the lower id counting as the more likely among equal values,
  // tokens go while the running mass stays <= 1 - top_p; the most likely token stays. It
  // keeps keys above `cut`, and at `cut` the ids below `cut_id`.
  uint32_t cut = 0;
  long long cut_id = LLONG_MAX;
  if (f.top_p < 1) {
    const double limit = 1.0 - double(f.top_p);
    double below;
    const bool found = select_key(
        sh, cols, false, limit,
        [&](int64_t i, uint32_t& k, double& w) {
          const float x = value(i);
          k = order_key(x), w = prob(x);
          return in_top_k(x);
        },
        cut, below);
    const uint32_t top = order_key(m);
    if (!found) cut = top;  // rounding left the walk short of the cut: only the top token stays
    // Ties at the cut go in descending id order, each while the running mass stays <=
    // limit, and never the most likely token (the lowest id at the maximum, walked last).
    long long ties = 0;
    for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
      const float x = value(i);
      ties += in_top_k(x) && order_key(x) == cut;
    }
    ties = block_reduce(ties, Sum{});
    const double p_cut = double(prob(key_value(cut)));
    const long long most = cut == top ? ties - 1 : ties;
    const double fits = !found || p_cut <= 0 ? double(most) : floor((limit - below) / p_cut);
    const long long gone = fits <= 0 ? 0 : fits >= double(most) ? most : (long long)fits;
    if (gone >= ties) {
      cut_id = -1;
    } else if (gone > 0) {  // the `gone` largest ids at the cut go: find the smallest of them
      uint32_t id = 0;
      double skipped;
      select_key(
          sh, cols, true, double(gone - 1),
          [&](int64_t i, uint32_t& k, double& w) {
            const float x = value(i);
            k = uint32_t(i), w = 1;
            return in_top_k(x) && order_key(x) == cut;
          },
          id, skipped);
      cut_id = id;
    }
  }
  // Min-p (HF): tokens whose probability is under min_p times the largest go.
  const float floor_p = f.min_p * float(inv);  // the largest probability: exp(0) · (1 / Z)
  auto kept = [&](int64_t i, float x) {
    if (!in_top_k(x)) return false;
    if (f.top_p < 1) {
      const uint32_t k = order_key(x);
      if (k < cut || (k == cut && i >= cut_id)) return false;
    }
    return !(f.min_p > 0 && prob(x) < floor_p);
  };

  // The draw: the kept tokens' softmax, and the CDF in id order inverted at u.
  double z = 0;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    const float x = value(i);
    if (kept(i, x)) z += weight(x);
  }
  const double inv_kept = 1.0 / block_reduce(z, Sum{});
  auto p_kept = [&](int64_t i) {
    const float x = value(i);
    return kept(i, x) ? float(double(weight(x)) * inv_kept) : 0.0f;
  };
  const int64_t per = (cols + kThreads - 1) / kThreads, lo = min64(cols, per * threadIdx.x),
                hi = min64(cols, lo + per);
  double own = 0;
  long long last = -1;  // this run's last token with mass
  for (int64_t i = lo; i < hi; ++i) {
    const float p = p_kept(i);
    if (p > 0) own += p, last = i;
  }
  double pre;
  if (threadIdx.x == 0) sh.pick = LLONG_MAX;
  Scan(sh.scan).ExclusiveSum(own, pre);
  const double u = double(bits[blockIdx.x] >> 11) * 0x1p-53, target = u - pre;
  if (target >= 0 && target < own) {  // u falls in this run: the same sums again, up to it
    double cum = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const float p = p_kept(i);
      if (p <= 0) continue;
      cum += p;
      if (target < cum) {
        atomicMin(&sh.pick, (long long)i);
        break;
      }
    }
  }
  last = block_reduce(last, Max{});
  if (threadIdx.x == 0) {
    // No run holds u only where rounding left it at or past the total: the last token
    // with mass, as on the host.
    const long long pick = sh.pick != LLONG_MAX ? sh.pick : last >= 0 ? last : 0;
    out[blockIdx.x] = int32_t(pick);
  }
}

}  // namespace

void sample_tokens(const Context& ctx, const Array& logits, const Array& bits, const fast::SampleFilter& filter,
                   const Array& out) {
  // logits [R, V] contiguous, bits [R, 2] u32 (one 64-bit word a row) -> out [R] int32
  const int64_t rows = logits.shape(0), cols = logits.shape(1);
  if (rows == 0) return;
  LMX_CHECK(rows <= int64_t(INT32_MAX) && cols < int64_t(INT32_MAX), "sample_tokens", "logits [", rows, ", ", cols,
            "] are too large for one launch on cuda");
  visit_device_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      sample_kernel<<<unsigned(rows), kThreads, 0, ctx.stream>>>(
          static_cast<const T*>(logits.raw()), cols, static_cast<const unsigned long long*>(bits.raw()), filter,
          out.data<int32_t>());
      check_launch("sample_kernel");
    } else {
      fail("sample_tokens", "expects floating-point logits, got ", dtype_name(logits.dtype()));
    }
  });
}

}  // namespace lmx::cuda
