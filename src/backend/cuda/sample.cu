// fast::sample_tokens on the device (fast::edit_logits, the processors before it, are in
// edit_logits.cu): HF's temperature, top-k, top-p and min-p, then one draw per row, so
// that a sampled decode step sends the host one id a row instead of its logits (600 KB a
// step for Qwen3's 152K tokens, then the host's passes over them).
//
// One cooperative kernel (every block resident). Each row is spread over `per_row` blocks (for one
// row, every SM: one block of a row computing alone took about 40 µs a pass over 152K values, its
// divisions and exponentials being arithmetic-bound on one SM), and the passes over the
// row follow one another through grid-wide syncs. Nothing is sorted. Top-k's k-th largest
// value and top-p's cut come from a radix select over the values' order-preserving bit
// patterns: three digits (11, 11 and 10 bits), each a pass that adds the elements still
// in the running into a histogram (counts for top-k; for top-p, probability mass in fixed
// point, so that the sums are exact and their order does not matter), then a walk of the
// histogram in order that every block makes alike. The draw inverts the CDF in id order
// as Sampler::draw does: each block takes a contiguous range of ids, each thread a run of
// it, the blocks' sums place the ranges, a block scan places the runs, and the thread whose
// run holds u walks it. Where top-k leaves at most kListMax tokens, the row's first block
// draws among them instead (draw_among), as the CPU kernel does: that spares top-p's selects
// and the draw's syncs. A row whose logits come from the fused decoder's filtered LM head
// comes with the rows that head left exact (ListedRows, a few times k): one block then
// draws among those alone (draw_listed), with no grid sync at all.
//
// A grid sync costs about 1.5-2 µs with its partials' trips to L2, and the syncs, not the
// passes, set the kernel's time: 16.7 µs at temperature alone, 30-40 µs with top-k or top-p
// (bench/NOTES.md). Fewer blocks make the passes slower than the syncs they save.
//
// The arithmetic is Sampler::process's: x = logit / T in f32; exp(x - max) rounded to f32
// (through double, correctly rounded as glibc's expf is in nearly all cases: with CUDA's
// expf, 2 ulp off, one draw in about 600 over 152K tokens differed from the CPU's in a
// test); sums in f64; p = f32(q · (1 / Z)). Only the order of the f64 sums differs, so
// a draw can differ from the host's only where u or a top-p cut falls within that
// rounding of a boundary.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cub/block/block_scan.cuh>
#include <map>
#include <mutex>

#include "backend/cuda/common.cuh"
#include "backend/cuda/radix_select.cuh"

namespace lmx::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kBins = 2048;        // the widest digit: 11 bits
constexpr int kSelects = 3;        // top-k, top-p, and top-p's ties by id
constexpr double kFixed = 0x1p62;  // probability mass in fixed point: at most 1, so it fits
constexpr int kListMax = 128;      // top-k survivors that one block draws among (draw_among)
constexpr int kListedMax = 2048;   // a filtered head's listed rows that one block draws among (draw_listed)

using u64 = unsigned long long;

// Global scratch of one row: a histogram per select and digit, and every block's partials
// (each array written once a launch, so that no block overwrites what another still reads).
struct RowScratch {
  static constexpr int64_t kHist = int64_t(kSelects) * 3 * kBins;
  static constexpr int kPartials = 6;
  __host__ __device__ static int64_t length(int per_row) {
    return kHist + kPartials * int64_t(per_row) + 1 + kListMax / 2;
  }                 // in u64
  u64* hist;        // [kSelects][3][kBins], zero at the start
  float* maxima;    // [per_row]
  double* z;        // [per_row]: the normaliser of top-k's survivors
  double* z_kept;   // [per_row]: the normaliser of the kept tokens
  double* totals;   // [per_row]: the kept mass of each block's range of ids
  long long* ties;  // [per_row]
  long long* last;  // [per_row]: each range's last token with mass
  u64* count;       // [1]: top-k's survivors, zero at the start
  int32_t* list;    // [kListMax]: their ids, in no order
  __device__ RowScratch(u64* p, int per_row)
      : hist(p),
        maxima(reinterpret_cast<float*>(p + kHist)),
        z(reinterpret_cast<double*>(p + kHist + per_row)),
        z_kept(reinterpret_cast<double*>(p + kHist + 2 * per_row)),
        totals(reinterpret_cast<double*>(p + kHist + 3 * per_row)),
        ties(reinterpret_cast<long long*>(p + kHist + 4 * per_row)),
        last(reinterpret_cast<long long*>(p + kHist + 5 * per_row)),
        count(p + kHist + 6 * per_row),
        list(reinterpret_cast<int32_t*>(p + kHist + 6 * per_row + 1)) {}
};

// draw_among's, in shared memory.
struct ListScratch {
  int32_t ids[kListMax];  // ascending
  int32_t unsorted[kListMax];
  float x[kListMax], p[kListMax];
  uint8_t order[kListMax], gone[kListMax];
  double inv;
  int32_t drawn;
};

// draw_listed's: the listed rows' keys (0: NaN) and ids, its select's histograms.
struct ListedScratch {
  ListScratch list;
  uint32_t key[kListedMax];
  int32_t id[kListedMax];
  unsigned hist[4 * 256];
  unsigned survivors;
};

using SelectScan = cub::BlockScan<u64, kThreads>;
using DrawScan = cub::BlockScan<double, kThreads>;
// A block's shared memory: the selects' and the draw's, never in use at once.
union Shared {
  struct {
    typename SelectScan::TempStorage scan;
    u64 local[kBins];  // this block's histogram of a digit
    int place;
    u64 before;
  } select;
  struct {
    typename DrawScan::TempStorage scan;
    double before;  // the mass of the row's ranges before this block's
  } draw;
  ListScratch list;
  ListedScratch listed;
};

// The grid-wide barrier between passes, on a counter that is zero at the launch; the n-th
// barrier waits to see it at n · gridDim.x.
struct GridSync {
  unsigned long long* counter;
  unsigned long long target = 0;
  __device__ void sync() {
    target += gridDim.x;
    __syncthreads();
    if (threadIdx.x == 0) arrive_and_wait(counter, target);
    __syncthreads();
  }
};

// The random words of a launch's rows, passed with the launch: no copy to the device
// before it.
constexpr int kMaxLaunchRows = 256;
struct Words {
  u64 w[kMaxLaunchRows];
};

// What every block of a row computes alike from the row's partials, after a grid sync.
template <class T, class Op>
__device__ T combine(const T* partial, int n, T init, Op op) {
  T v = init;
  for (int b = threadIdx.x; b < n; b += kThreads) v = op(v, __ldcg(partial + b));
  return block_reduce(v, op);
}

// 1 / z, or 0 where z = 0 (every logit NaN or -inf): the row's values then carry no mass,
// where 0 · (1 / 0) would make them NaN.
__device__ __forceinline__ double reciprocal_or_zero(double z) { return z > 0 ? 1.0 / z : 0.0; }

struct Row {
  int64_t cols, first, step;  // the row's length; this block's first element and stride
  int block, per_row;         // this block's place among the row's blocks
};

// The key at which a walk over the taking-part elements in key order (largest first when
// `descending`) first carries its running weight past `target`; `before` is the weight
// of the elements walked before that key. `elem(i, key, w)` says whether element i takes
// part, with its key and weight. False where the whole walk stays at or under target.
// Integer weights: the sums are exact, the same in every block and in any order. Every
// row's blocks take the same grid syncs, found or not: the syncs are grid-wide.
template <class Elem>
__device__ bool select_key(Shared& sh, GridSync& grid, const Row& row, u64* hist, bool descending,
                           u64 target, Elem elem, uint32_t& key, u64& before) {
  u64* local = sh.select.local;
  int& place_s = sh.select.place;
  u64& before_s = sh.select.before;
  constexpr int kShifts[3] = {21, 10, 0};
  uint32_t prefix = 0;  // the key's digits chosen so far
  bool found = true;
  before = 0;
  for (int d = 0; d < 3; ++d) {
    const int shift = kShifts[d], width = shift == 0 ? 10 : 11, bins = 1 << width,
              high = shift + width;
    u64* h = hist + d * kBins;
    for (int b = threadIdx.x; b < bins; b += kThreads) local[b] = 0;
    __syncthreads();
    for (int64_t i = row.first; i < row.cols; i += row.step) {
      uint32_t k;
      u64 w;
      if (elem(i, k, w) && (high == 32 || (k >> high) == prefix))
        atomicAdd(&local[(k >> shift) & uint32_t(bins - 1)], w);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += kThreads)
      if (local[b]) atomicAdd(&h[b], local[b]);
    grid.sync();
    // The walk: thread t takes the places [4t, 4t + 4) of the walk's order.
    constexpr int kPer = kBins / kThreads;
    u64 w[kPer], own = 0;
    for (int j = 0; j < kPer; ++j) {
      const int at = kPer * int(threadIdx.x) + j, b = descending ? bins - 1 - at : at;
      w[j] = at < bins ? __ldcg(h + b) : 0;
      own += w[j];
    }
    u64 pre;
    if (threadIdx.x == 0) place_s = -1;
    SelectScan(sh.select.scan)
        .ExclusiveSum(own, pre);  // its barriers order place_s's reset before the writes below
    u64 cum = before + pre;
    for (int j = 0; j < kPer; ++j) {
      if (w[j] > 0 && cum <= target && target < cum + w[j]) {  // exact sums: one place only
        const int at = kPer * int(threadIdx.x) + j;
        place_s = descending ? bins - 1 - at : at;
        before_s = cum;
      }
      cum += w[j];
    }
    __syncthreads();
    found = found && place_s >= 0;
    if (found) prefix = (prefix << width) | uint32_t(place_s), before = before_s;
    __syncthreads();  // the shared arrays are reused by the next digit
  }
  key = prefix;
  return found;
}

// p[j] = f32(exp(x[j] - x[top]) / Z) for the list's n values in id order, Z their f64 sum
// in that order (one thread's loop); returns top, the first of the largest
// (backend/cpu/sample.cpp's probabilities). Every thread of the block calls it.
__device__ int softmax_listed(ListScratch& l, int n) {
  const int t = int(threadIdx.x);
  const float most = block_reduce(t < n ? l.x[t] : -INFINITY, Max{});
  const int top = block_reduce(t < n && l.x[t] == most ? t : INT_MAX, Min{});
  if (t < n) l.p[t] = isinf(l.x[t]) ? 0.0f : cr_exp(l.x[t] - l.x[top]);
  __syncthreads();
  if (t == 0) {
    double z = 0;
    for (int j = 0; j < n; ++j) z += l.p[j];
    l.inv = reciprocal_or_zero(z);
  }
  __syncthreads();
  if (t < n) l.p[t] = float(double(l.p[t]) * l.inv);
  __syncthreads();
  return top;
}

// The draw among a row's top-k survivors, by one block, where they are at most kListMax:
// the CPU kernel's sample_row (backend/cpu/sample.cpp) on those tokens alone, every sum in
// its order. The other tokens carry no mass there, so the draw is the same; this spares the
// row top-p's selects and the draw's grid syncs. l.ids [n] ascending and l.x their values
// (edited in place) on entry. Every thread of the block calls it; thread 0's loops make
// the sums.
__device__ int32_t draw_among(ListScratch& l, int n, const fast::SampleFilter& f, u64 word) {
  const int t = int(threadIdx.x);
  if (t < n) l.gone[t] = 0;
  if (f.top_p < 1 || f.min_p > 0) {
    const int top = softmax_listed(l, n);  // its syncs order the resets above
    if (f.top_p < 1) {
      // Ascending, the higher id first among equal values (each token's place by counting
      // those before it); tokens go while the running mass stays <= 1 - top_p, and the
      // most likely token stays.
      const bool in = t < n && l.x[t] != -INFINITY;
      if (in) {
        int at = 0;
        for (int j = 0; j < n; ++j)
          at += l.x[j] != -INFINITY && (l.x[j] < l.x[t] || (l.x[j] == l.x[t] && j > t));
        l.order[at] = uint8_t(t);
      }
      const int m = block_reduce(int(in), Sum{});  // its syncs publish the order
      if (t == 0) {
        double mass = 0;
        for (int a = 0; a < m; ++a) {
          const int j = l.order[a];
          mass += l.p[j];
          if (j == top || mass > 1.0 - double(f.top_p)) break;
          l.gone[j] = 1;
        }
      }
      __syncthreads();
    }
    // Top-p and min-p judge the same probabilities.
    if (t < n && (l.gone[t] || (f.min_p > 0 && l.p[t] < f.min_p * l.p[top]))) l.x[t] = -INFINITY;
    __syncthreads();
  }
  softmax_listed(l, n);
  if (t == 0) {
    const double u = double(word >> 11) * 0x1p-53;
    double cdf = 0;
    l.drawn = -1;
    int32_t last = -1;  // no token with mass: every value -inf
    for (int j = 0; j < n && l.drawn < 0; ++j) {
      if (l.p[j] <= 0) continue;
      cdf += l.p[j], last = l.ids[j];
      if (u < cdf) l.drawn = l.ids[j];
    }
    if (l.drawn < 0) l.drawn = last;  // rounding left u at or past the total
  }
  __syncthreads();
  return l.drawn;
}

// The draw among n top-k survivors, their ids in l.unsorted (in no order): in id order,
// each id's place by counting the smaller ones, then draw_among. -1 where n = 0 (only NaN:
// no mass). Every thread of the block calls it.
template <class Value>
__device__ int32_t draw_unsorted(ListScratch& l, int n, Value value, const fast::SampleFilter& f, u64 word) {
  const int t = int(threadIdx.x);
  if (t < n) {
    const int32_t id = l.unsorted[t];
    int at = 0;
    for (int j = 0; j < n; ++j) at += l.unsorted[j] < id;
    l.ids[at] = id, l.x[at] = value(id);
  }
  __syncthreads();
  return n > 0 ? draw_among(l, n, f, word) : -1;
}

struct BlockSync {
  __device__ __forceinline__ void operator()() const { __syncthreads(); }
};

// The draw of one row from the rows that a filtered LM head listed (ListedRows), by one
// block with no grid sync. Their logits are exact and every other logit lies below the
// row's k-th largest, so the k-th largest among them is the row's, and top-k keeps the
// same tokens with the same values: draw_among then draws what the whole row's draw
// would. False where it cannot: more rows listed than it holds, fewer than k that are not
// NaN, or more survivors than kListMax (ties); the caller then takes the whole row.
// Every thread of the block calls it.
template <class Value>
__device__ bool draw_listed(ListedScratch& sh, const ListedRows& rows, Value value, const fast::SampleFilter& f,
                            u64 word, int32_t& drawn) {
  const unsigned count = __ldcg(rows.count);
  if (count > unsigned(rows.cap < kListedMax ? rows.cap : kListedMax)) return false;
  const int n = int(count), t = int(threadIdx.x);
  int numbers = 0;
  for (int i = t; i < n; i += kThreads) {
    const int32_t id = __ldcg(rows.ids + i);
    const float x = value(id);
    sh.id[i] = id, sh.key[i] = isnan(x) ? 0u : order_key(x);  // no number's key is 0
    numbers += !isnan(x);
  }
  if (t == 0) sh.survivors = 0;
  if (block_reduce(numbers, Sum{}) < f.top_k) return false;  // its syncs publish the keys
  // At least k numbers, whose keys lie above NaN's 0: the k-th largest key is a number's.
  const uint32_t kth =
      select_prefix<kThreads, 4>([&](int i) { return sh.key[i]; }, n, unsigned(f.top_k), sh.hist, BlockSync{});
  for (int i = t; i < n; i += kThreads)
    if (sh.key[i] >= kth) {
      const unsigned at = atomicAdd(&sh.survivors, 1u);
      if (at < unsigned(kListMax)) sh.list.unsorted[at] = sh.id[i];
    }
  __syncthreads();
  const unsigned survivors = sh.survivors;
  if (survivors > unsigned(kListMax)) return false;
  drawn = draw_unsorted(sh.list, int(survivors), value, f, word);
  return true;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const T* logits, int64_t cols, int rows, int per_row, Words words,
                  fast::SampleFilter f, u64* scratch, unsigned long long* barrier,
                  unsigned long long* spare, DrawTargets out, ListedRows listed) {
  GridSync grid{barrier};
  __shared__ Shared sh;
  const int r = int(blockIdx.x) / per_row;
  const bool live = r < rows;  // spare blocks past the last row still take every sync
  const Row row{live ? cols : 0, int64_t(blockIdx.x % per_row) * kThreads + threadIdx.x,
                int64_t(per_row) * kThreads, int(blockIdx.x % per_row), per_row};
  const RowScratch s(scratch + int64_t(live ? r : 0) * RowScratch::length(per_row), per_row);
  const T* x_in = logits + int64_t(live ? r : 0) * cols;
  auto value = [&](int64_t i) { return __fdiv_rn(to_float(x_in[i]), f.temperature); };
  // Zeroed here, the outputs take the draw's atomicMin after the syncs below.
  int32_t* const out_r = out.out + (live ? r : 0) * out.stride;
  int32_t* const also_r = out.also ? out.also + (live ? r : 0) * out.also_stride : nullptr;
  if (listed.ids) {  // one row, one block (sample_tokens): no sync, so the counter stays 0
    int32_t listed_id = -1;
    if (draw_listed(sh.listed, listed, value, f, words.w[0], listed_id)) {
      if (threadIdx.x == 0) {
        *out_r = listed_id;
        if (also_r) *also_r = listed_id;
        *spare = 0;  // the next launch's counter, as below
      }
      return;
    }
    __syncthreads();  // the shared memory is reused
  }
  if (live) {
    for (int64_t i = row.first; i < RowScratch::kHist; i += row.step) s.hist[i] = 0;
    if (row.block == 0 && threadIdx.x == 0) {
      *out_r = INT_MAX;
      if (also_r) *also_r = INT_MAX;
    }
  }
  if (live && row.block == 0 && threadIdx.x == 0) *s.count = 0;
  // Past the rows' scratch: how many top-k survivors overflowed the rows' lists.
  u64* const overflow = scratch + int64_t(rows) * RowScratch::length(per_row);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *overflow = 0;
    *spare = 0;  // the other counter, which the launch before this one used: the next launch's
  }

  float m = -INFINITY;  // NaN never wins: fmaxf drops it
  for (int64_t i = row.first; i < row.cols; i += row.step) m = fmaxf(m, value(i));
  m = block_reduce(m, Max{});
  if (threadIdx.x == 0 && live) s.maxima[row.block] = m;
  grid.sync();
  m = live ? combine(s.maxima, per_row, -INFINITY, Max{}) : 0.0f;
  auto weight = [&](float x) { return isinf(x) || isnan(x) ? 0.0f : cr_exp(x - m); };

  // Top-k: keep every value at or above the k-th largest.
  uint32_t kth = 0;
  u64 skipped;
  if (f.top_k > 0 && f.top_k < cols) {
    select_key(
        sh, grid, row, s.hist, true, u64(f.top_k - 1),
        [&](int64_t i, uint32_t& k, u64& w) {
          const float x = value(i);
          k = order_key(x), w = 1;
          return !isnan(x);
        },
        kth, skipped);
  }
  auto in_top_k = [&](float x) { return !isnan(x) && order_key(x) >= kth; };

  // Where top-k leaves few tokens, the row's first block draws among them (draw_among) and
  // the row needs no more syncs. A launch's rows take the same syncs, so the lists serve where
  // every row's fits (ties at the k-th value can overflow one).
  if (f.top_k > 0 && f.top_k <= kListMax && f.top_k < cols) {
    for (int64_t i = row.first; i < row.cols; i += row.step)
      if (in_top_k(value(i))) {
        const u64 at = atomicAdd(s.count, 1ull);
        if (at < kListMax)
          s.list[at] = int32_t(i);
        else
          atomicAdd(overflow, 1ull);
      }
    grid.sync();
    if (__ldcg(overflow) == 0) {
      if (live && row.block == 0) {
        ListScratch& l = sh.list;
        const int n = int(__ldcg(s.count)), t = int(threadIdx.x);
        if (t < n) l.unsorted[t] = __ldcg(s.list + t);
        __syncthreads();
        const int32_t id = draw_unsorted(l, n, value, f, words.w[r]);
        if (t == 0) {
          *out_r = id;
          if (also_r) *also_r = id;
        }
      }
      return;
    }
  }

  // The softmax of what top-k kept, for top-p and min-p.
  double inv = 0;
  if (f.top_p < 1 || f.min_p > 0) {
    double z = 0;
    for (int64_t i = row.first; i < row.cols; i += row.step) {
      const float x = value(i);
      if (in_top_k(x)) z += weight(x);
    }
    z = block_reduce(z, Sum{});
    if (threadIdx.x == 0 && live) s.z[row.block] = z;
    grid.sync();
    inv = live ? reciprocal_or_zero(combine(s.z, per_row, 0.0, Sum{})) : 0.0;
  }
  auto prob = [&](float x) { return float(double(weight(x)) * inv); };

  // Top-p (HF): ascending, the lower id counting as the more likely among equal values,
  // tokens go while the running mass stays <= 1 - top_p; the most likely token stays. It
  // keeps keys above `cut`, and at `cut` the ids below `cut_id`.
  uint32_t cut = 0;
  long long cut_id = LLONG_MAX;
  if (f.top_p < 1) {
    const double limit = 1.0 - double(f.top_p);
    u64 below = 0;
    const bool found = select_key(
        sh, grid, row, s.hist + 3 * kBins, false, u64(limit * kFixed),
        [&](int64_t i, uint32_t& k, u64& w) {
          const float x = value(i);
          k = order_key(x), w = u64(double(prob(x)) * kFixed);
          return in_top_k(x);
        },
        cut, below);
    const uint32_t top = order_key(m);
    if (!found) cut = top;  // rounding left the walk short of the cut: only the top token stays
    // Ties at the cut go in descending id order, each while the running mass stays <=
    // limit, and never the most likely token (the lowest id at the maximum, walked last).
    long long ties = 0;
    for (int64_t i = row.first; i < row.cols; i += row.step) {
      const float x = value(i);
      ties += in_top_k(x) && order_key(x) == cut;
    }
    ties = block_reduce(ties, Sum{});
    if (threadIdx.x == 0 && live) s.ties[row.block] = ties;
    grid.sync();
    ties = live ? combine(s.ties, per_row, 0LL, Sum{}) : 0;
    const double p_cut = double(prob(key_value(cut)));
    const long long most = cut == top ? ties - 1 : ties;
    const double fits =
        !found || p_cut <= 0 ? double(most) : floor((limit - double(below) / kFixed) / p_cut);
    const long long gone = fits <= 0 ? 0 : fits >= double(most) ? most : (long long)fits;
    // Where some but not all ties go, the `gone` largest ids at the cut go: the smallest
    // of them is found. Every row of a launch takes this select's syncs (rows that need
    // none of it walk an empty histogram), unless the launch has one row: then all its
    // blocks agree on `split`, and most draws skip the select's three syncs.
    const bool split = gone > 0 && gone < ties;
    uint32_t id = 0;
    if (split || rows > 1)
      select_key(
          sh, grid, row, s.hist + 6 * kBins, true, u64(split ? gone - 1 : 0),
          [&](int64_t i, uint32_t& k, u64& w) {
            const float x = value(i);
            k = uint32_t(i), w = 1;
            return split && in_top_k(x) && order_key(x) == cut;
          },
          id, skipped);
    if (gone >= ties)
      cut_id = -1;
    else if (split)
      cut_id = id;
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
  for (int64_t i = row.first; i < row.cols; i += row.step) {
    const float x = value(i);
    if (kept(i, x)) z += weight(x);
  }
  z = block_reduce(z, Sum{});
  if (threadIdx.x == 0 && live) s.z_kept[row.block] = z;
  grid.sync();
  const double inv_kept = live ? reciprocal_or_zero(combine(s.z_kept, per_row, 0.0, Sum{})) : 0.0;
  auto p_kept = [&](int64_t i) {
    const float x = value(i);
    return kept(i, x) ? float(double(weight(x)) * inv_kept) : 0.0f;
  };
  // This block's contiguous range of ids, and this thread's run of it.
  const int64_t span = (row.cols + per_row - 1) / per_row, lo_b = min64(row.cols, span * row.block),
                hi_b = min64(row.cols, lo_b + span), run = (hi_b - lo_b + kThreads - 1) / kThreads,
                lo = min64(hi_b, lo_b + run * threadIdx.x), hi = min64(hi_b, lo + run);
  double own = 0;
  long long last = -1;  // the last token with mass
  for (int64_t i = lo; i < hi; ++i) {
    const float p = p_kept(i);
    if (p > 0) own += p, last = i;
  }
  double pre, block_total;
  __syncthreads();  // the selects' shared memory is done with
  DrawScan(sh.draw.scan).ExclusiveSum(own, pre, block_total);
  last = block_reduce(last, Max{});
  if (threadIdx.x == 0 && live) s.totals[row.block] = block_total, s.last[row.block] = last;
  grid.sync();
  if (!live) return;
  // Where this block's range starts: the ranges' masses in block order, through one scan
  // that every block makes alike, all the loads at once. (A loop over them in the last
  // block made a trip to L2 a range.)
  const int t = int(threadIdx.x);
  const double total = t < per_row ? __ldcg(s.totals + t) : 0.0;
  long long last_all = t < per_row ? __ldcg(s.last + t) : -1;
  double start;
  __syncthreads();  // the scan's storage is reused
  DrawScan(sh.draw.scan).ExclusiveSum(total, start);
  if (t == row.block) sh.draw.before = start;
  last_all = block_reduce(last_all, Max{});  // its syncs publish `before`
  const double u = double(words.w[r] >> 11) * 0x1p-53, target = u - sh.draw.before - pre;
  auto take = [&](int32_t id) {
    atomicMin(out_r, id);
    if (also_r) atomicMin(also_r, id);
  };
  if (target >= 0 && target < own) {  // u falls in this run: the same sums again, up to it
    double cum = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const float p = p_kept(i);
      if (p <= 0) continue;
      cum += p;
      if (target < cum) {
        take(int32_t(i));
        break;
      }
    }
  }
  // No run holds u only where rounding left it at or past the total: then the last token
  // with mass, as on the host. A run's draw always comes before that token, so the smaller
  // of the two is the draw either way, and no sync has to wait for the runs. A row with no
  // token with mass (every logit NaN or -inf) draws -1, as the CPU kernel does.
  if (row.block == 0 && t == 0) take(last_all >= 0 ? int32_t(last_all) : -1);
}

// Blocks of sample_kernel<T> that can be resident at once (a cooperative launch needs them all).
template <class T>
int resident_blocks(const Context& ctx) {
  const int per_sm = per_device(ctx, reinterpret_cast<const void*>(sample_kernel<T>), [](const Context&) {
    int n = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, sample_kernel<T>, kThreads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return n;
  });
  return per_sm * ctx.sm_count;
}

// Two grid-barrier counters of a device, taken in turns: a launch syncs on one and zeroes
// the other, which the launch before it used and every block of it has left (the stream
// runs launches in order). That spares a reset of the counter before each launch. The
// mutex keeps the turns in the stream's order where threads share a device.
struct BarrierPair {
  unsigned long long* counters = nullptr;  // [2]
  unsigned turn = 0;
};
std::mutex barrier_mutex;
BarrierPair& barrier_pair(const Context& ctx) {  // under barrier_mutex
  static std::map<int, BarrierPair> pairs;       // never freed: 16 bytes a device
  BarrierPair& p = pairs[ctx.device];
  if (!p.counters) {
    void* c = nullptr;
    check(cudaMalloc(&c, 2 * sizeof(unsigned long long)), "cudaMalloc");
    check(cudaMemsetAsync(c, 0, 2 * sizeof(unsigned long long), ctx.stream), "cudaMemsetAsync");
    p.counters = static_cast<unsigned long long*>(c);
  }
  return p;
}

}  // namespace

void sample_tokens(const Context& ctx, const Array& logits, std::span<const uint64_t> words,
                   const fast::SampleFilter& filter, const DrawTargets& to, const ListedRows& listed) {
  // logits [R, V] contiguous -> one id a row
  const int64_t rows = logits.shape(0), cols = logits.shape(1);
  if (rows == 0) return;
  LMX_CHECK(cols < int64_t(INT32_MAX), "sample_tokens", "rows of ", cols,
            " logits are too long for cuda");
  visit_device_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kIsFloat<T>) {
      const int resident = resident_blocks<T>(ctx);
      LMX_CHECK(resident > 0, "sample_tokens", "the kernel cannot be resident on this GPU");
      // Rows in launches of at most `resident` blocks; each row over as many blocks as
      // share the GPU evenly, at most one per kThreads logits.
      // A row takes at most one block an SM: more blocks make each grid sync slower.
      // LMX_SAMPLE_BLOCKS lowers that cap, for measurement.
      static const int cap = [] {
        const char* v = std::getenv("LMX_SAMPLE_BLOCKS");
        return v ? std::max(1, std::atoi(v)) : INT_MAX;
      }();
      const int64_t per_launch = std::min<int64_t>({rows, resident, kMaxLaunchRows});
      // A filtered head's listed rows serve one row whose top-k keeps at most kListMax
      // tokens: one block draws among them (draw_listed), and takes the whole row alone in
      // the rare case that they do not serve.
      const bool use_listed = listed.ids && rows == 1 && filter.top_k >= 1 && filter.top_k <= kListMax &&
                              filter.top_k < cols;
      const ListedRows none{};
      const int spread = int(std::clamp<int64_t>(
          std::min<int64_t>(resident / per_launch, (cols + kThreads - 1) / kThreads), 1,
          std::min({ctx.sm_count, cap, kThreads})));  // the draw's scan: a block's range a thread
      const int per_row = use_listed ? 1 : spread;
      Array scratch({(per_launch * RowScratch::length(per_row) + 1) * 2}, Dtype::i32,
                    logits.device());  // u64s: the rows', then the launch's overflow count
      std::lock_guard lock(barrier_mutex);
      BarrierPair& pair = barrier_pair(ctx);
      for (int64_t r0 = 0; r0 < rows; r0 += per_launch) {
        const T* x = static_cast<const T*>(logits.raw()) + r0 * cols;
        int n = int(std::min(per_launch, rows - r0)), pr = per_row;
        Words w{};
        std::copy(words.begin() + r0, words.begin() + r0 + n, w.w);
        u64* sc = static_cast<u64*>(scratch.raw());
        unsigned long long* counter = pair.counters + pair.turn;
        unsigned long long* spare = pair.counters + (pair.turn ^ 1u);
        DrawTargets t = to;
        t.out += r0 * to.stride;
        if (t.also) t.also += r0 * to.also_stride;
        void* args[] = {&x,     const_cast<int64_t*>(&cols),
                        &n,     &pr,
                        &w,     const_cast<fast::SampleFilter*>(&filter),
                        &sc,    &counter,
                        &spare, &t,
                        const_cast<ListedRows*>(use_listed ? &listed : &none)};
        check(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(sample_kernel<T>),
                                          dim3(unsigned(n * per_row)), dim3(kThreads), args, 0,
                                          ctx.stream),
              "sample_kernel");
        pair.turn ^= 1u;
      }
    } else {
      fail("sample_tokens", "expects floating-point logits, got ", dtype_name(logits.dtype()));
    }
  });
}

}  // namespace lmx::cuda
