// Decode attention for the fused step, split over the keys (split-K, "flash decoding"),
// shared by the attention kernel (fused_attention.cu) and the persistent decode step
// (fused_persistent.cu). attention_task(a, g, s) takes kv head g and the s-th chunk of
// the visible positions, for all the query heads that share g. It first forms what it
// needs of the new token (its query heads and key after the q/k RMSNorm and RoPE, and the
// value) from the QKV GEMV's output; the task whose chunk holds the new position also
// stores its key and value in the cache. The last task of each kv head to finish merges
// the chunks' softmax partials.
#pragma once

#include "backend/cuda/fused_common.cuh"
#include "backend/cuda/mma.cuh"

namespace lmx::cuda::fused {
namespace attention_detail {

constexpr int kThreads = kWorkers;  // threads of a block that run attention_task

// A head's width and the query heads per kv head: kD and kGroup where a kernel fixes them
// at compile time (the persistent step specialised to a model's shape, fused_persistent.cu),
// else the step's. Fixed, the loops over a head have known bounds and the kernel's code
// shrinks (bench/NOTES.md, p27).
template <int kD>
__device__ __forceinline__ int head_dim_of(const AttentionStep& a) {
  return kD > 0 ? kD : a.head_dim;
}
template <int kGroup>
__device__ __forceinline__ int group_of(const AttentionStep& a) {
  return kGroup > 0 ? kGroup : a.n_heads / a.n_kv_heads;
}

// One head vector x of D values in shared memory, in place: RMSNorm with the staged
// weights w (optional; wo + w, as Gemma's norms take 1 + w) then rotate-half RoPE at
// `pos`, by one warp. With `round`, the result is rounded to bf16 as the cache stores it.
__device__ inline void norm_rope(float* x, const bf16* w, float wo, float eps, const float* inv_freq, int pos, int d,
                                 bool round) {
  const int lane = threadIdx.x % 32, half = d / 2;
  float r = 1.0f;
  if (w) {
    float ss = 0;
    for (int i = lane; i < d; i += 32) ss = __fmaf_rn(x[i], x[i], ss);
    r = rsqrtf(warp_reduce(ss, Sum{}) / float(d) + eps);
  }
  for (int i = lane; i < half; i += 32) {
    float a = x[i] * r, b = x[i + half] * r;
    if (w) a *= wo + __bfloat162float(w[i]), b *= wo + __bfloat162float(w[i + half]);
    float s, c;
    sincosf(float(pos) * inv_freq[i], &s, &c);
    float lo = a * c - b * s, hi = b * c + a * s;
    if (round) lo = __bfloat162float(__float2bfloat16_rn(lo)), hi = __bfloat162float(__float2bfloat16_rn(hi));
    x[i] = lo;
    x[i + half] = hi;
  }
}

// The first slot visible to the token at slot `pos`: past the sequence's left padding,
// and within the sliding window where the layer has one.
__device__ __forceinline__ int first_visible(const AttentionStep& a, int pos, int pad) {
  return ::max(pad, a.window > 0 ? pos - a.window + 1 : 0);
}

// Whether the persistent step leaves the merge of the chunks' partials to the next GEMV's
// input, where every block merges them all (fused_persistent.cu, merge_input), rather
// than to the last block of each kv head (count_and_merge). That block reads its kv
// head's share of the partials, 1 / n_kv_heads of what every block reads in the other
// merge, while the grid waits for it. With one kv head (Gemma 3) the shares are equal,
// and the counter adds a trip: there every block merges. Elsewhere the per-block copies
// cost more: every block merging lost 4-5% for Llama-3.2-1B and Qwen3 and 4% for
// Llama-3.1-8B (bench/NOTES.md).
__host__ __device__ inline bool merged_by_next_gemv(const AttentionStep& a) {
  return a.splits > 1 && a.n_kv_heads == 1;
}

// Where the next GEMV's input would merge the chunks (one kv head: Gemma 3), whether the
// persistent step sums them instead (AttentionStep::sums, persistent_sum_chunks). A merge
// needs each chunk's max first, and every block merging reads every chunk's partial
// (Gemma3-1B: 24 chunks of 4 × 256 values, three trips to L2). Against one fixed reference
// the chunks' weights and weighted values simply add: each task adds its own into the sums
// at L2 (no round trip to wait for), and each block's input divides, in one trip
// (bench/NOTES.md, p45). The reference is 0: a chunk weighs its keys by e^s, not e^(s - m).
// That is exact where no chunk's max m lies above sums_headroom (64: e^64 times a chunk's
// weights stays far below f32's range) and none below kSumsFloor (-60: what underflows
// then lies more than e^-27 below that chunk's own max, where the max would lose it too);
// the scores of real models lie well within. A chunk past either raises the flag (as do
// sums past kSumsLargest, and NaN), and the partials, stored as before, are merged instead.
// (A reference every task forms alike, the new token's own score, cost the tasks more than
// it saved; so did the sums for several kv heads, whose last block merges: 0.98-0.99x.)
__host__ __device__ inline bool summed_chunks(const AttentionStep& a) { return a.sums && merged_by_next_gemv(a); }
// The lowest max a chunk may have against the sums' reference 0 (summed_chunks).
constexpr float kSumsFloor = -60.0f;
// The largest a task's weighted value sum may add: with up to 2^7 chunks the sums stay below 2^127.
constexpr float kSumsLargest = 0x1p120f;
// Where the flag lies in `sums`, and the floats a layer's sums take (16-byte multiples).
__host__ __device__ inline int sums_flag(const AttentionStep& a) { return a.n_heads * a.head_dim + a.n_heads; }
__host__ __device__ inline int sums_floats(const AttentionStep& a) { return (sums_flag(a) + 1 + 3) / 4 * 4; }

// A task's scratch (one attention block's shared memory), in floats from its start: the
// group's q [group, D] and the new k and v [D] each, as stage_inputs fills them; the
// layer's constants, the RoPE frequencies [D/2] (f32) and the q and k norms' weights [D]
// each (bf16, in 2·D floats' room: the chunks planned before they were stored in bf16 stay
// as they were); the scores [group, chunk]; then the chunk's keys and values [chunk, D]
// each (bf16). One layout for the host's plan and the device's pointers.
struct ScratchLayout {
  size_t constants, scores, keys, floats;  // where each part starts; the whole
};
__host__ __device__ inline ScratchLayout scratch_layout(int group, int d, int chunk) {
  // `scores` is constants + D/2 + 2·D, summed in this order: summed from `constants`, the
  // kernels' code changes.
  const size_t constants = size_t(group + 2) * d, scores = size_t(group) * d + 2 * d + d / 2 + 2 * d;
  const size_t keys = scores + size_t(group) * chunk;
  return {constants, scores, keys, keys + size_t(chunk) * d};
}
__host__ __device__ inline size_t attention_smem_floats(int group, int d, int chunk) {
  return scratch_layout(group, d, chunk).floats;
}
// The layer's constants in a task's scratch `sm`. They depend neither on the step nor on
// the kv head.
__device__ __forceinline__ float* attention_constants(float* sm, int group, int d) {
  return sm + scratch_layout(group, d, 0).constants;
}
// The scores [group, chunk].
__device__ __forceinline__ float* attention_scores(float* sm, int group, int d) {
  return sm + scratch_layout(group, d, 0).scores;
}

// Starts copying the layer's constants into a task's scratch (cp.async, in a closed group:
// complete after copy_async_wait_groups, which does not wait for copies started after
// this). The persistent step starts them before the grid barrier that precedes the
// attention, beside the first task's keys: that barrier's wait then hides their trip,
// where stage_inputs' loads would add it to the task's. D is a multiple of 8, and the
// arrays are 16-byte aligned (AttentionStep). Not inlined: inlined into the persistent
// step, it made the compiler spill registers there (168 a thread, its limit).
__device__ __noinline__ inline void copy_constants(const AttentionStep& a, float* sm, int group) {
  const int d = a.head_dim, vecs = d / 8;  // 16-byte pieces of each array
  float* freq = attention_constants(sm, group, d);
  bf16* norms = reinterpret_cast<bf16*>(freq + d / 2);
  const int n = a.q_norm ? 3 * vecs : vecs;
  // From the last warp down: warp 0's first thread goes on to arrive at the grid barrier.
  for (int i = kThreads - 1 - int(threadIdx.x); i < n; i += kThreads) {
    if (i < vecs)
      copy16_async(freq + 4 * i, a.inv_freq + 4 * i);
    else if (i < 2 * vecs)
      copy16_async(norms + 8 * (i - vecs), a.q_norm + 8 * (i - vecs));
    else
      copy16_async(norms + d + 8 * (i - 2 * vecs), a.k_norm + 8 * (i - 2 * vecs));
  }
  copy_async_close_group();
}

// Copies the kv group's query heads, new key and value (f32, from the QKV GEMV) into
// shared memory, every load of a trip in flight at once; and with them, in the kernel per
// phase, the layer's constants. The persistent step started those before its barrier
// (copy_constants), and they stay in the scratch for a block's later tasks. kBlock: the
// threads that take part (here and below; fewer in the streamed attention's small blocks).
// q_first: the first of the `group` query heads staged (the streamed attention's split
// blocks take part of a kv head's); -1: kv head g's first.
template <bool kPersistent, int kD, int kBlock = kThreads>
__device__ inline void stage_inputs(const AttentionStep& a, int g, int group, float* out, int q_first = -1) {
  constexpr bool constants = kPersistent;  // already copied
  const int d = head_dim_of<kD>(a), nq = group * d;
  const int nf = nq + 2 * d + (constants ? 0 : d / 2);      // floats: q, k, v, then the frequencies
  const int n = nf + (constants || !a.q_norm ? 0 : 2 * d);  // then the norms' weights, in bf16
  auto source = [&](int i) -> float {
    if (i < nq) return load_activation<kPersistent>(a.qkv + (q_first < 0 ? size_t(g) * nq : size_t(q_first) * d) + i);
    i -= nq;
    if (i < d) return load_activation<kPersistent>(a.qkv + size_t(a.n_heads) * d + size_t(g) * d + i);
    i -= d;
    if (i < d) return load_activation<kPersistent>(a.qkv + size_t(a.n_heads + a.n_kv_heads) * d + size_t(g) * d + i);
    i -= d;
    if (i < d / 2) return a.inv_freq[i];
    i -= d / 2;
    return __bfloat162float(i < d ? a.q_norm[i] : a.k_norm[i - d]);
  };
  bf16* norms = reinterpret_cast<bf16*>(out + nf);  // [2·D], right after the floats
  constexpr int V = 8;
  for (int base = threadIdx.x; base < n; base += kBlock * V) {
    float v[V];
#pragma unroll
    for (int u = 0; u < V; ++u)
      if (base + u * kBlock < n) v[u] = source(base + u * kBlock);
#pragma unroll
    for (int u = 0; u < V; ++u)
      if (base + u * kBlock < nf) out[base + u * kBlock] = v[u];
    if (base + (V - 1) * kBlock < nf) continue;  // the usual case: no norm weights in this trip
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int i = base + u * kBlock;
      if (i >= nf && i < n) norms[i - nf] = __float2bfloat16_rn(v[u]);  // exact: v came from a bf16
    }
  }
  if (constants) copy_async_wait_groups();
  sync_workers<kPersistent>();
}

// The new token's query heads and key after their RMSNorm (where the model has one) and
// RoPE at position `rope_pos`, the key and the value rounded to bf16 as the cache keeps
// them; in place in a task's scratch as stage_inputs fills it, a warp a vector. The
// queries stay in f32.
template <int kBlock = kThreads>
__device__ __forceinline__ void form_new_token(const AttentionStep& a, float* q, float* k_new, float* v_new,
                                               const float* freq, const bf16* q_norm, const bf16* k_norm, int group,
                                               int d, int rope_pos) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bf16* qn = a.q_norm ? q_norm : nullptr;
  const bf16* kn = a.k_norm ? k_norm : nullptr;
  const float wo = a.gemma ? 1.0f : 0.0f;  // Gemma's norm weights are 1 + w
  for (int vec = warp; vec < group + 2; vec += kBlock / 32) {
    if (vec <= group)  // one call for q and k: inlined once, 3-10 KB less code (bench/NOTES.md, p27)
      norm_rope(vec < group ? q + vec * d : k_new, vec < group ? qn : kn, wo, a.eps, freq, rope_pos, d, vec == group);
    else
      for (int i = lane; i < d; i += 32) v_new[i] = __bfloat162float(__float2bfloat16_rn(v_new[i]));
  }
}

// Counts a finished block of kv head g; the last one merges the live chunks' partials
// (m, l, acc) into the attention output, resets the counter for the next step and
// returns true (every worker of that block, once the merge is stored or under way).
template <bool kPersistent, int kD>
__device__ inline bool count_and_merge(const AttentionStep& a, int g, int group, int live) {
  __shared__ bool last;
  sync_workers<kPersistent>();
  // The barrier orders the block's partials before the count, which releases them: the
  // last block sees them all.
  if (threadIdx.x == 0) last = count_arrival(a.counter + g) == unsigned(a.splits) - 1;
  sync_workers<kPersistent>();
  if (!last) return false;
  // Each output merges its chunks on its own, kBatch chunks' (m, l, value) at a time with
  // every load of a batch in flight, and a running max as in online softmax: one round
  // trip to L2 per batch. (A pass for the maxima, one for the normalisers and one per four
  // chunks for the sums took about six, while the grid waited for this block.)
  constexpr int kBatch = 8;
  const int d = head_dim_of<kD>(a), stride = partial_stride(d);
  for (int idx = threadIdx.x; idx < group * d; idx += kThreads) {
    const int j = idx / d, i = idx % d;
    const float* part = a.partial + size_t(g * group + j) * a.splits * stride;
    float m = -INFINITY, l = 0, acc = 0;
    for (int s0 = 0; s0 < live; s0 += kBatch) {
      float ms[kBatch], ls[kBatch], vs[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const float* p = part + size_t(s0 + u) * stride;
        const bool in = s0 + u < live;
        ms[u] = in ? __ldcg(p) : -INFINITY;
        ls[u] = in ? __ldcg(p + 1) : 0.0f;
        vs[u] = in ? __ldcg(p + kPartialSums + i) : 0.0f;
      }
      float mb = m;  // finite after the first batch: the first chunk always holds keys
#pragma unroll
      for (int u = 0; u < kBatch; ++u) mb = fmaxf(mb, ms[u]);
      const float rescale = __expf(m - mb);  // 0 for the first batch (m = -inf)
      l *= rescale, acc *= rescale;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const float e = __expf(ms[u] - mb);  // 0 past the live chunks
        l = __fmaf_rn(ls[u], e, l);
        acc = __fmaf_rn(e, vs[u], acc);
      }
      m = mb;
    }
    a.out[size_t(g * group + j) * d + i] = acc / l;
  }
  if (threadIdx.x == 0) a.counter[g] = 0;
  return true;
}

// How many of a layer's attention tasks return true from attention_task<true>: those that
// leave a finished output behind (a kv head's merge, or a chunk's partial where the next
// GEMV merges, or a whole head's output where there is one chunk).
__host__ __device__ inline int finished_outputs(const AttentionStep& a) {
  return a.splits == 1 || merged_by_next_gemv(a) ? a.n_kv_heads * a.splits : a.n_kv_heads;
}

// Sequence r's part of a batched step (AttentionStep::rows): the same step with every
// array moved to that sequence's block.
__device__ inline AttentionStep row_of(AttentionStep a, int r) {
  const size_t d = size_t(a.head_dim), q = size_t(a.n_heads) * d;
  a.qkv += size_t(r) * (q + 2 * size_t(a.n_kv_heads) * d);
  a.state += 3 * r;
  a.k_cache += size_t(r) * a.n_kv_heads * a.slots * d;
  a.v_cache += size_t(r) * a.n_kv_heads * a.slots * d;
  a.partial += size_t(r) * a.n_heads * a.splits * partial_stride(a.head_dim);
  a.counter += size_t(r) * a.n_kv_heads;
  a.out += size_t(r) * q;
  if (a.out_bf16) a.out_bf16 += size_t(r) * q;
  if (a.pad) a.pad += r;
  return a;
}

// Where task `split` of a layer's attention lies: positions [begin, begin + n) (n is 0
// for a chunk past the visible positions), and `live`, the count of chunks that hold
// visible positions.
struct ChunkRange {
  int begin, n, live;
};
__device__ __forceinline__ ChunkRange chunk_range(const AttentionStep& a, int split, int pos, int pad) {
  const int lo = first_visible(a, pos, pad);
  const int begin = lo + split * a.chunk, end = ::min(begin + a.chunk, pos + 1);
  return {begin, ::max(0, end - begin), (pos - lo) / a.chunk + 1};
}

// The chunk's keys [chunk, D] in a task's shared memory `sm` (attention_smem_floats), its
// values right after them. 16-byte aligned: D is a multiple of 8, the chunk of 16.
__device__ __forceinline__ bf16* chunk_keys(float* sm, int group, int d, int chunk) {
  return reinterpret_cast<bf16*>(sm + scratch_layout(group, d, chunk).keys);
}

// Starts copying task (g, r)'s cached keys and values into shared memory, 16 bytes per
// cp.async, complete after copy_async_wait_all. All but the new position's, which the
// task stores itself. They read only what earlier steps wrote, so they may start before
// the QKV GEMV's results are in (before the previous kernel ends, or before the grid
// barrier of the persistent step).
template <int kD = 0>
__device__ inline void load_chunk(const AttentionStep& a, int g, ChunkRange r, int pos, bf16* ks, bf16* vs) {
  const int d = head_dim_of<kD>(a), vecs = d / 8;
  const size_t head_base = size_t(g) * a.slots * d;
  for (int idx = threadIdx.x; idx < r.n * vecs; idx += kThreads) {
    const int t = idx / vecs, c = idx % vecs * 8;
    if (r.begin + t == pos) continue;
    const size_t at = head_base + size_t((r.begin + t) % a.slots) * d + c;
    copy16_async(ks + t * d + c, a.k_cache + at);
    copy16_async(vs + t * d + c, a.v_cache + at);
  }
}

// The part of attention_task for a chunk that holds visible positions (`range`, n > 0):
// the new token's q, k and v formed, the chunk's scores, softmax and weighted values, and
// its partial (or, with one chunk, the output) stored.
template <bool kPersistent, int kD, int kGroup, bool kSums, class Mark>
__device__ __forceinline__ void chunk_partial(const AttentionStep& a, int g, int split, float* sm, int pos, int pad,
                                              ChunkRange range, bool loading, Mark mark) {
  const int d = head_dim_of<kD>(a), chunk = a.chunk;
  const int group = group_of<kGroup>(a);  // query heads per kv head
  float* q = sm;                  // [group, D]
  float* k_new = q + group * d;   // [D]
  float* v_new = k_new + d;       // [D]
  float* freq = attention_constants(sm, group, d);  // [D/2]
  const bf16* q_norm = reinterpret_cast<const bf16*>(freq + d / 2);  // [D]
  const bf16* k_norm = q_norm + d;                                   // [D]
  // [group, chunk]: the scores. attention_scores(sm, group, d), but spelled from freq: that
  // call changed the kernel's code (bench/NOTES.md, p26).
  float* e = freq + d / 2 + 2 * d;
  bf16* ks = chunk_keys(sm, group, d, chunk);  // [chunk, D] the chunk's keys
  bf16* vs = ks + chunk * d;                   // [chunk, D] and values
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int begin = range.begin, end = begin + range.n, n = range.n;
  if (!loading) load_chunk<kD>(a, g, range, pos, ks, vs);
  // Everything above reads what earlier steps wrote (the cached positions, state[1]),
  // which kernels already complete have written: it overlaps the previous kernel's tail.
  // What follows reads the QKV GEMV's output.
  if constexpr (!kPersistent) wait_for_previous_kernel();
  stage_inputs<kPersistent, kD>(a, g, group, q);
  form_new_token(a, q, k_new, v_new, freq, q_norm, k_norm, group, d, pos - pad);
  mark(0);
  copy_async_wait_all();  // the chunk's keys and values: each thread's own copies, then the sync for all
  sync_workers<kPersistent>();
  mark(1);
  if (pos >= begin && pos < end) {  // this block holds the new position: store it
    const size_t at = (size_t(g) * a.slots + size_t(pos % a.slots)) * d;
    for (int i = threadIdx.x; i < d; i += kThreads) {
      const bf16 kb = __float2bfloat16_rn(k_new[i]), vb = __float2bfloat16_rn(v_new[i]);
      a.k_cache[at + i] = kb, a.v_cache[at + i] = vb;
      ks[(pos - begin) * d + i] = kb, vs[(pos - begin) * d + i] = vb;
    }
  }
  sync_workers<kPersistent>();

  // Scores q·k·scale. Each (query head, key) pair takes `lanes` lanes of a warp, 8
  // columns per lane and step: as many lanes as still let one pass of the block cover
  // every pair, and no more than 8 (wider, each pair's shuffle reduction grows). A pass
  // costs about the same whatever its lanes, so more pairs take fewer lanes each, down
  // to a lane a pair (bench/NOTES.md, p24). Where a pair's lanes need several steps to
  // cover a key, each pair starts at a step of its own (by key), so that the eight lanes
  // of a shared-memory phase read different banks.
  const int pairs = group * n;
  int lanes = 1;
  while (lanes * 2 <= ::min(8, d / 8)) lanes *= 2;
  while (lanes > 1 && pairs * lanes > kThreads) lanes /= 2;
  const int per_warp = 32 / lanes, steps = d / (8 * lanes);
  for (int base = warp * per_warp; base < pairs; base += (kThreads / 32) * per_warp) {
    const int pair = base + lane / lanes, sub = lane % lanes, j = pair / n, t = pair % n;
    float s0 = 0, s1 = 0;  // two chains: half the dependent multiply-adds
    if (pair < pairs) {
      const bf16* key = ks + t * d + sub * 8;
      const float* qj = q + j * d + sub * 8;
      const int width = lanes * 8;  // columns a step
      for (int i = 0, step = t % steps; i < steps; i += 2) {
        const int c0 = step * width;
        step = step + 1 == steps ? 0 : step + 1;
        s0 = dot8(*reinterpret_cast<const uint4*>(key + c0), qj + c0, s0);
        if (i + 1 == steps) break;
        const int c1 = step * width;
        step = step + 1 == steps ? 0 : step + 1;
        s1 = dot8(*reinterpret_cast<const uint4*>(key + c1), qj + c1, s1);
      }
    }
    float s = s0 + s1;
    for (int o = lanes / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (pair < pairs && sub == 0) e[j * chunk + t] = s * a.scale;
  }
  sync_workers<kPersistent>();
  mark(2);

  // This chunk's partial: m, l and the unnormalised weighted sum of values. A thread
  // takes 4 neighbouring columns of one query head over every `ways`-th key: per key one
  // 8-byte load of values and one weight for four outputs. The shared-memory reads, not
  // the arithmetic, bound this part (a 2-byte value and a weight per output and key took
  // 4,600 cycles for Gemma 3's 4 x 256 outputs over 16 keys: bench/NOTES.md, p18). The
  // `ways` threads of a column group are neighbouring lanes, summed by shuffles. They also
  // form the head's softmax statistics from its scores, each over its own keys and then
  // across the ways, so that every column group of a head finds the same max m: a pass of
  // a warp per head and a block sync fewer (bench/NOTES.md, p27).
  const int quads = group * d / 4;  // d is a multiple of 8
  int ways = 1;  // key splits of a column group: a power of two, so a warp holds whole groups
  while (ways < 32 && quads * ways * 2 <= kThreads) ways *= 2;
  for (int base = 0; base < quads; base += kThreads / ways) {
    const int quad = base + int(threadIdx.x) / ways, way = int(threadIdx.x) % ways;
    const int c = ::min(quad, quads - 1) * 4, j = c / d, i = c % d;  // past the end: a duplicate, not stored
    const float* ew = e + j * chunk;  // the query head's scores
    const bf16* vc = vs + i;          // its 4 columns of the chunk's values
    float m = -INFINITY;
    for (int t = way; t < n; t += ways) m = fmaxf(m, ew[t]);
    for (int o = ways / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float4 acc = make_float4(0, 0, 0, 0);  // a struct, not an array: kept in registers
    float l = 0;
#pragma unroll 4
    for (int t = way; t < n; t += ways) {
      const uint2 v = *reinterpret_cast<const uint2*>(vc + t * d);
      const float w = __expf(ew[t] - m);
      l += w;
      acc.x = __fmaf_rn(w, bf16_lo(v.x), acc.x);
      acc.y = __fmaf_rn(w, bf16_hi(v.x), acc.y);
      acc.z = __fmaf_rn(w, bf16_lo(v.y), acc.z);
      acc.w = __fmaf_rn(w, bf16_hi(v.y), acc.w);
    }
    for (int o = ways / 2; o > 0; o >>= 1) {
      l += __shfl_xor_sync(0xffffffffu, l, o);
      acc.x += __shfl_xor_sync(0xffffffffu, acc.x, o);
      acc.y += __shfl_xor_sync(0xffffffffu, acc.y, o);
      acc.z += __shfl_xor_sync(0xffffffffu, acc.z, o);
      acc.w += __shfl_xor_sync(0xffffffffu, acc.w, o);
    }
    if (way != 0 || quad >= quads) continue;
    if (a.splits == 1) {
      const float inv = 1.0f / l;
      *reinterpret_cast<float4*>(a.out + size_t(g * group + j) * d + i) =
          make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
      continue;
    }
    float* part = a.partial + (size_t(g * group + j) * a.splits + split) * partial_stride(d);
    *reinterpret_cast<float4*>(part + kPartialSums + i) = acc;
    if (i == 0) *reinterpret_cast<float2*>(part) = make_float2(m, l);
    if (kSums && summed_chunks(a)) {  // against the reference 0, into the sums
      const float f = __expf(m);
      const float4 add = make_float4(acc.x * f, acc.y * f, acc.z * f, acc.w * f);
      const float largest = fmaxf(fmaxf(fabsf(add.x), fabsf(add.y)), fmaxf(fabsf(add.z), fabsf(add.w)));
      // (A NaN anywhere fails the test: the merge then meets it as it would without the sums.)
      if (m <= a.sums_headroom && m >= kSumsFloor && largest < kSumsLargest) {
        add_at_l2(a.sums + size_t(g * group + j) * d + i, add);
        if (i == 0) atomicAdd(a.sums + a.n_heads * d + g * group + j, l * f);
      } else {  // the sums go unread: nothing more is added
        *reinterpret_cast<volatile unsigned*>(a.sums + sums_flag(a)) = 1u;
      }
    }
  }
  mark(3);
  if (!a.early) allow_next_kernel();
}

// One block's share of a layer's attention: kv head g, chunk `split` of the visible
// positions. `sm` holds attention_smem_floats(...) floats. `pos` is the new token's slot
// (a.state[1]) and `pad` the sequence's left padding (*a.pad, or 0): the persistent step
// reads them once per step rather than once per task. `loading`: the chunk's copies
// (load_chunk) were started already; in the persistent step, the layer's constants too
// (copy_constants, in the block's scratch since its first task). `mark(part)` is called
// as each part ends, for the persistent step's profile: 0 the new token's query, key and
// value formed, 1 the chunk's keys and values in, 2 the scores, 3 the softmax and the
// chunk's partial stored (the merge follows).
struct NoMarks {
  __device__ void operator()(int) const {}
};
// Returns whether the task left a finished output behind (finished_outputs). kD and
// kGroup: head_dim_of's and group_of's; kSums: the sums' code compiled in (summed_chunks).
template <bool kPersistent, int kD = 0, int kGroup = 0, bool kSums = false, class Mark = NoMarks>
__device__ inline bool attention_task(const AttentionStep& a, int g, int split, float* sm, int pos, int pad,
                                      bool loading = false, Mark mark = {}) {
  const ChunkRange range = chunk_range(a, split, pos, pad);
  if (a.early) allow_next_kernel();
  if (range.n > 0) {
    chunk_partial<kPersistent, kD, kGroup, kSums>(a, g, split, sm, pos, pad, range, loading, mark);
  } else {  // past them: only counted, so that the last block still merges
    if constexpr (kPersistent) copy_async_wait_groups();  // the constants' copies must not outlive the task
    if constexpr (!kPersistent) wait_for_previous_kernel();
    if (!a.early) allow_next_kernel();
  }
  // One merge for both: called from each, it was inlined twice, 10 KB more of the
  // persistent kernel's code (bench/NOTES.md, p27). (A chunk past the visible positions
  // implies more than one.)
  if (a.splits > 1 && !(kPersistent && merged_by_next_gemv(a)))
    return count_and_merge<kPersistent, kD>(a, g, group_of<kGroup>(a), range.live);
  return true;
}

}  // namespace attention_detail
}  // namespace lmx::cuda::fused
