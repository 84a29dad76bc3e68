// The persistent decode step: the whole step of fused_decoder.cpp (embedding, per layer
// norm+QKV, attention, O, norm+gate/up, down, then the LM head and its argmax) as ONE
// cooperative kernel with one block per SM. The phases follow one another through a
// grid-wide barrier instead of a kernel boundary.
//
// Why: a small GEMV launched on its own costs about 5 µs however few bytes it reads
// (bench/NOTES.md), because every block must wait for its first weights after the
// previous kernel ends. Weights do not depend on activations, so here each block streams
// its share of every weight matrix of the step, in order, through a ring of shared-memory
// slots filled by bulk asynchronous copies (cp.async.bulk, completed on an mbarrier). The
// ring runs ahead of the computation across phase boundaries: while a block waits at a
// barrier, the next phase's first weights are already arriving (half a ring of them: more
// in flight there slows the barrier's own trips, produce).
//
// Rows of each matrix are split evenly over the blocks: block b owns rows
// [b·N/G, (b+1)·N/G) of every matrix of N rows. A stage is a run of whole rows of one
// matrix (for gate/up, the same rows of both) that fits in a slot.
//
// The down projection joins the gate/up phase where it fits (persistent_fuse_down): a
// block's gate/up rows are whole units of 8, and once it has their activations it reads
// the same columns of down (a tensor-map box of every 256 rows, 16-128 bytes of each;
// where a stage takes two boxes, the same bytes from a tiled copy, persistent_tile_down)
// and adds its partial products into the output with vector atomics. That spares a grid
// barrier and the down's input each layer, at the price of f32 sums whose order varies
// from run to run.
//
// After each attention a counter takes the grid barrier's place where the plan allows
// (persistent_attention_handoff): each finished output (a kv head's merge) is counted, and
// the next phase waits for the count. The blocks with no attention task go straight on to
// that phase, and the handful that merge are all that arrive: 0.7-1.5% faster than the
// barrier (bench/NOTES.md, p22).
//
// The block is warp-specialised. One warp only issues the copies, walking the same
// sequence of stages as the workers, as far ahead as the ring allows; the eight worker
// warps deal each stage's rows out among themselves, a row to one warp, and each frees the
// slot on its own (an mbarrier that counts the warps). No stage needs a block-wide sync,
// and issuing copies is off the workers' path. The workers synchronise among themselves on
// a named barrier (sync_workers), for the phases' inputs, the attention and the grid
// barrier. The workers read their stages from a list that the host plans once per plan
// (persistent_stage_lists): walking the plan between stages cost them about 0.35 µs a
// stage. The copying warp walks the plan itself, ahead of them, where that is hidden.
//
// Status (bench/NOTES.md): the default for one sequence (LMX_FUSED_PERSISTENT=0 turns it
// off). Against the kernel-per-phase graph on the H200 (128 + 256 tokens): 1.17x for
// Llama, 1.09x for Qwen3, 1.27x for Gemma 3 before the fused down, which added 3.6%, 3.4%
// and 6.6%. Compiled per attention shape (the kernel's forms, below), 1.03-1.07x more. What
// costs now is not the weight stream but the phase boundaries: each grid barrier (2-5 µs
// in the step, most of it the release of a block's arrival waiting for its writes), each
// phase's input, and the attention.
//
// The plan the kernel walks (the block's shape, the stages) is in fused_persistent_plan.cuh;
// the host code that fits, sizes and lists it, in fused_persistent_plan.cu.
#include <iterator>

#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/fused_attention.cuh"
#include "backend/cuda/fused_gemv.cuh"
#include "backend/cuda/fused_persistent_plan.cuh"
#include "backend/cuda/persistent_head.cuh"

namespace lmx::cuda::fused {

using namespace step_plan;

namespace {


// Grid-wide barrier on a 64-bit counter that only grows: barrier n of a step waits until
// base + n·G blocks have arrived. The counter is never reset, so no launch is needed for
// that; `base` is read at the start of the step (see step_base).
__device__ __forceinline__ void grid_barrier(unsigned long long* counter, unsigned long long target) {
  sync_workers<true>();
  if (threadIdx.x == 0) arrive_and_wait(counter, target);
  sync_workers<true>();
}

// The counter's value when this step began. Every block reads it before its first
// arrival, and no barrier completes before every block has arrived, so each reads a value
// in [base, base + G): base is that value rounded down to a whole step's arrivals.
__device__ __forceinline__ unsigned long long step_base(unsigned long long* counter, unsigned long long per_step) {
  __shared__ unsigned long long base;
  if (threadIdx.x == 0) {
    unsigned long long v = 0;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
    base = v - v % per_step;
  }
  sync_workers<true>();
  return base;
}


// Starts copying a phase's parameters into shared memory (cp.async; complete after
// copy_async_wait_all and a sync). Read from there, they cost no trip to L2 at the start
// of the phase, when every block needs them at once.
static_assert(sizeof(StepPhase) % 16 == 0 && sizeof(StepPhase) / 16 <= kWorkers);
__device__ __forceinline__ void fetch_params(const StepPhase* src, StepPhase* dst) {
  if (threadIdx.x < sizeof(StepPhase) / 16)
    copy16_async(reinterpret_cast<uint4*>(dst) + threadIdx.x, reinterpret_cast<const uint4*>(src) + threadIdx.x);
}

__device__ inline void load_geometry(const PersistentStep& s, Geometry* table) {
  for (int i = threadIdx.x; i < s.n_phases; i += blockDim.x) table[i] = geometry_of(s.phases[i]);
  __syncthreads();
}


// Starts the copies of stage `st` into `slot`, counted on `bar`, with L2 policy `policy`.
// kTwoBoxes: a fused down's stage may hold two tensor-map boxes (persistent_fuse_down).
template <bool kTwoBoxes>
__device__ __forceinline__ void issue(const Geometry* table, Stage st, bf16* slot, uint64_t* bar, uint64_t policy) {
  const Geometry& g = table[st.phase];
  if (g.down && st.seg == 1) {  // whole boxes, one after another, rows past the matrix filled with zeros
    // (A form without two boxes reads only stage_rows, which is then the box's rows.)
    const unsigned box_bytes = unsigned(g.units) * 16u * unsigned(kTwoBoxes ? g.box_rows : g.stage_rows);
    const bool two = kTwoBoxes && st.n > g.box_rows;
    mbarrier_expect(bar, two ? 2 * box_bytes : box_bytes);
    if (kTwoBoxes && g.w[2]) {  // the tiled copy (persistent_tile_down): this block's boxes one after another
      const size_t row = size_t(blockIdx.x) * unsigned(down_tile_rows(g.down_rows, g.box_rows)) + unsigned(st.row);
      const bf16* boxes = g.w[2] + row * 8u * unsigned(g.units);
      bulk_copy(slot, boxes, two ? 2 * box_bytes : box_bytes, bar, policy);
      return;
    }
    tensor_copy(slot, g.down, bar, st.col, st.row, policy);
    if (two) tensor_copy(slot + box_bytes / sizeof(bf16), g.down, bar, st.col, st.row + g.box_rows, policy);
    return;
  }
  const unsigned bytes = unsigned(st.n) * unsigned(g.row_bytes);
  mbarrier_expect(bar, g.pair ? 2 * bytes : bytes);
  auto rows = [&](const bf16* w) { return reinterpret_cast<const char*>(w) + size_t(st.row) * g.row_bytes; };
  bulk_copy(slot, rows(g.w[st.seg]), bytes, bar, policy);
  if (g.pair) bulk_copy(slot + size_t(st.n) * g.k, rows(g.w[1]), bytes, bar, policy);
}

__device__ __forceinline__ bf16* slot_at(bf16* ring, int i) { return ring + size_t(i) * (kSlotBytes / sizeof(bf16)); }

// The copying warp's one thread: every stage of the step in order, each into the next
// slot of the ring once the workers have freed it (all kWorkerWarps of them arrive on
// `empty` when done reading). Within the workers' phase (`workers_at`, which their first
// thread sets as each phase starts) it runs as far ahead as the ring reaches; of the
// phases after it, only `lookahead` stages. Copies in flight at a phase boundary slow
// every trip to L2 of the grid barrier and of the next phase's input, and a whole ring of
// them cost more there than they saved later: half a ring measured 1.05-1.10x the whole
// (bench/NOTES.md, p33). (Going past the ring through L2 prefetches lost 4-20%.)
template <bool kTwoBoxes>
__device__ void produce(const Geometry* table, int n_phases, bf16* ring, int slots, uint64_t* full, uint64_t* empty,
                        int lookahead, const int* workers_at) {
  // The weights are read once a step, and a step's are several times L2's size: marked
  // first to go, they leave L2 to what the workers read again (bench/NOTES.md, p15).
  const uint64_t policy = evict_first_policy();
  // The phase of each slot's latest stage, in registers (indexed only by unrolled loops):
  // the count below delays every copy past the workers' phase. In a trial build that
  // counted through memory, a limit that never bound (three stages of Qwen3-0.6B's three
  // slots) cost 4%.
  int phases[kMaxSlots] = {};
  Cursor cursor(int(gridDim.x), int(blockIdx.x));
  for (int i = 0;; ++i) {
    const Stage st = cursor.next(table, n_phases);
    if (st.n == 0) return;
    const int slot = i % slots;
    if (i >= slots) mbarrier_wait(&empty[slot], unsigned(i / slots - 1) & 1u);
    // The stages past the workers' phase are among the last `slots` issued (the workers
    // have not reached them), and stage i - slots is done: at most slots - 1 of them.
    for (;;) {
      const int at = *reinterpret_cast<const volatile int*>(workers_at);
      if (st.phase <= at) break;
      int past = 0;
#pragma unroll
      for (int j = 0; j < kMaxSlots; ++j) past += j != slot && phases[j] > at;  // unused slots hold phase 0
      if (past < lookahead) break;
      __nanosleep(32);
    }
#pragma unroll
    for (int j = 0; j < kMaxSlots; ++j) phases[j] = j == slot ? st.phase : phases[j];
    issue<kTwoBoxes>(table, st, slot_at(ring, slot), &full[slot], policy);
  }
}

// A GEMV input with no residual and no norm (the down projection's) straight to bf16, with
// every load of a thread in flight at once: one round trip to L2, not a staged f32 copy
// and a rounding pass.
__device__ __forceinline__ void load_plain_input(const float* x, int k, bf16* xb) {
  constexpr int V = 4;  // float4s per thread and trip: one trip up to k = 4,096
  for (int base = threadIdx.x * 4; base < k; base += kWorkers * 4 * V) {
    float4 v[V];
#pragma unroll
    for (int u = 0; u < V; ++u)
      if (base + u * kWorkers * 4 < k) v[u] = __ldcg(reinterpret_cast<const float4*>(x + base + u * kWorkers * 4));
#pragma unroll
    for (int u = 0; u < V; ++u) {
      __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(xb + base + u * kWorkers * 4);
      if (base + u * kWorkers * 4 >= k) continue;
      out[0] = __floats2bfloat162_rn(v[u].x, v[u].y);
      out[1] = __floats2bfloat162_rn(v[u].z, v[u].w);
    }
  }
  sync_workers<true>();
}

// A GEMV input with a residual add and a norm (GemvInput) of at most kHeldInput values,
// formed in registers and stored straight to bf16. Each thread holds its values from the
// load to the store, so the only block-wide steps are the norms' sums: three barriers
// (five with Gemma's norm of the added vector), where staging the inputs in shared memory
// and rounding them in a pass of their own takes six to eight. The arithmetic is
// form_input's; only the order of the sums of squares differs.
__device__ __forceinline__ void form_input_held(const GemvInput& in, bf16* xb) {
  constexpr int V = kHeldInput / (4 * kWorkers);  // float4s a thread
  const int k = in.k;
  float4 v[V], a[V];
  uint2 wn[V], wa[V];  // the norms' weights: loaded with the values, off the chain after the sums
#pragma unroll
  for (int u = 0; u < V; ++u) {  // every load in flight at once
    const int i = (threadIdx.x + u * kWorkers) * 4;
    if (i >= k) continue;
    v[u] = __ldcg(reinterpret_cast<const float4*>(in.x + i));
    if (in.add) a[u] = __ldcg(reinterpret_cast<const float4*>(in.add + i));
    if (in.norm) wn[u] = *reinterpret_cast<const uint2*>(in.norm + i);
    if (in.add && in.add_norm) wa[u] = *reinterpret_cast<const uint2*>(in.add_norm + i);
  }
  auto sumsq = [&](const float4* t) {
    float ss = 0;
#pragma unroll
    for (int u = 0; u < V; ++u)
      if ((threadIdx.x + u * kWorkers) * 4 < k) {
        ss = __fmaf_rn(t[u].x, t[u].x, ss);
        ss = __fmaf_rn(t[u].y, t[u].y, ss);
        ss = __fmaf_rn(t[u].z, t[u].z, ss);
        ss = __fmaf_rn(t[u].w, t[u].w, ss);
      }
    return workers_reduce<true>(ss, Sum{});
  };
  const float add_scale = in.add && in.add_norm ? rsqrtf(sumsq(a) / float(k) + in.eps) : 1.0f;
#pragma unroll
  for (int u = 0; u < V; ++u) {
    const int i = (threadIdx.x + u * kWorkers) * 4;
    if (i >= k) continue;
    if (in.add && in.add_norm) {
      const float4 w = norm_weights4(wa[u], in.gemma);
      a[u] = make_float4(a[u].x * add_scale * w.x, a[u].y * add_scale * w.y, a[u].z * add_scale * w.z,
                         a[u].w * add_scale * w.w);
    }
    if (in.add) v[u] = make_float4(v[u].x + a[u].x, v[u].y + a[u].y, v[u].z + a[u].z, v[u].w + a[u].w);
    if (in.x_out && blockIdx.x == 0) *reinterpret_cast<float4*>(in.x_out + i) = v[u];
  }
  const float r = in.norm ? rsqrtf(sumsq(v) / float(k) + in.eps) : 1.0f;
#pragma unroll
  for (int u = 0; u < V; ++u) {
    const int i = (threadIdx.x + u * kWorkers) * 4;
    if (i >= k) continue;
    float4 t = v[u];
    if (in.norm) {
      const float4 w = norm_weights4(wn[u], in.gemma);
      t = make_float4(t.x * (r * w.x), t.y * (r * w.y), t.z * (r * w.z), t.w * (r * w.w));
    }
    __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(xb + i);
    out[0] = __floats2bfloat162_rn(t.x, t.y);
    out[1] = __floats2bfloat162_rn(t.z, t.w);
  }
  sync_workers<true>();
}

// Row r of a fused down's stage of n rows: boxes of 8·units columns (row-major, 16·units
// bytes a row, the boxes one after another), a thread a row, each adding its row's
// products with the block's activations `act` into `y`. With an odd number of units,
// eight threads' 16-byte reads of one unit fall in eight different bank groups; with 8
// units, every row would fall in the same one, so each thread starts at a different unit.
__device__ __forceinline__ void fused_down_row(const bf16* w, const bf16* act, int units, int n, float* y, int r) {
  const bf16* row = w + size_t(r) * 8 * units;
  float acc = 0;
  // The first unit: r mod units where units is a multiple of 8 (8 itself, up to
  // kMaxDownUnits: a power of two), else 0.
  int u = units % 8 == 0 ? r & (units - 1) : 0;
  if (r < n)
    for (int j = 0; j < units; ++j, u = u + 1 == units ? 0 : u + 1)
      acc = dot8_bf16(*reinterpret_cast<const uint4*>(row + 8 * u), *reinterpret_cast<const uint4*>(act + 8 * u), acc);
  // Four rows' sums in one vector reduction (16-byte aligned: a stage starts at a multiple
  // of 4 rows, persistent_fuse_down), a quarter of the atomics at L2. Their order varies
  // from run to run, so the f32 sums may differ in the last bits.
  const float a1 = __shfl_down_sync(0xffffffffu, acc, 1), a2 = __shfl_down_sync(0xffffffffu, acc, 2),
              a3 = __shfl_down_sync(0xffffffffu, acc, 3);
  if (r % 4 != 0 || r >= n) return;
  if (r + 3 < n) {
    add_at_l2(y + r, make_float4(acc, a1, a2, a3));
  } else {
    const float v[4] = {acc, a1, a2, a3};
    for (int i = 0; r + i < n; ++i) atomicAdd(y + r + i, v[i]);
  }
}

// A fused down's stage: n <= kWorkers rows, or with kTwoBoxes up to kMaxDownStageRows.
// (Only the forms whose plans take two boxes compile the second pass: in the others, the
// code alone cost Gemma 3 1.4% of its speed, bench/NOTES.md, p30.)
template <bool kTwoBoxes>
__device__ __forceinline__ void fused_down_rows(const bf16* w, const bf16* act, int units, int n, float* y) {
  fused_down_row(w, act, units, n, y, int(threadIdx.x));
  if (kTwoBoxes && n > kWorkers) fused_down_row(w, act, units, n, y, int(threadIdx.x) + kWorkers);
}

// The O projection's input after an attention whose chunks were left unmerged
// (merged_by_next_gemv). Every block merges the chunks' softmax partials (m, l and the
// weighted sum of values, per query head and chunk) itself, straight into the bf16
// vector: no fence, no counter, and no single block that the grid waits for. A thread
// takes four outputs of one head and kBatch chunks at a time, each chunk's m, l and four
// sums loaded together, every load of a batch in flight, with a running max as in online
// softmax: one round trip to L2 per batch and no block-wide step. Weights formed first by
// a warp per head, then the sums, took a trip and a block sync more: Gemma 3's O input
// took 79.7 µs a token that way, 64.6 this way (bench/NOTES.md, p34). kD: head_dim_of's.
template <int kD>
__device__ void merge_input(const AttentionStep& a, int pos, int pad, bf16* xb) {
  constexpr int kBatch = 8;
  const int d = attention_detail::head_dim_of<kD>(a), stride = partial_stride(d), splits = a.splits;
  const int live = (pos - attention_detail::first_visible(a, pos, pad)) / a.chunk + 1;
  const int n = a.n_heads * d;
  for (int o = threadIdx.x * 4; o < n; o += 4 * kWorkers) {
    const int j = o / d;  // d is a multiple of 8: the four outputs share a head
    const float* part = a.partial + size_t(j) * splits * stride;
    float m = -INFINITY, l = 0;
    float4 x = make_float4(0, 0, 0, 0);
    for (int c0 = 0; c0 < live; c0 += kBatch) {
      float2 ml[kBatch];
      float4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const float* p = part + size_t(c0 + u) * stride;
        const bool in = c0 + u < live;
        ml[u] = in ? __ldcg(reinterpret_cast<const float2*>(p)) : make_float2(-INFINITY, 0.0f);
        v[u] = in ? __ldcg(reinterpret_cast<const float4*>(p + kPartialSums + o % d)) : make_float4(0, 0, 0, 0);
      }
      float mb = m;  // finite after the first batch: the first chunk always holds keys
#pragma unroll
      for (int u = 0; u < kBatch; ++u) mb = fmaxf(mb, ml[u].x);
      const float rescale = __expf(m - mb);  // 0 for the first batch (m = -inf)
      l *= rescale;
      x = make_float4(x.x * rescale, x.y * rescale, x.z * rescale, x.w * rescale);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const float e = __expf(ml[u].x - mb);  // 0 past the live chunks
        l = __fmaf_rn(ml[u].y, e, l);
        x.x = __fmaf_rn(e, v[u].x, x.x), x.y = __fmaf_rn(e, v[u].y, x.y);
        x.z = __fmaf_rn(e, v[u].z, x.z), x.w = __fmaf_rn(e, v[u].w, x.w);
      }
      m = mb;
    }
    const float inv = 1.0f / l;
    __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(xb + o);
    out[0] = __floats2bfloat162_rn(x.x * inv, x.y * inv);
    out[1] = __floats2bfloat162_rn(x.z * inv, x.w * inv);
  }
  sync_workers<true>();
}

// The O projection's input after an attention whose chunks were summed (summed_chunks),
// in place of merge_input: each output is its head's weighted values over its weights,
// the sums, the weights and the flag all loaded in one trip to L2. Where a chunk raised
// the flag it returns false, and the chunks' partials are to be merged (merge_input).
template <int kD>
__device__ bool summed_input(const AttentionStep& a, bf16* xb) {
  constexpr int V = 1;  // float4s per thread and trip: one trip up to 1,024 outputs
  const int d = attention_detail::head_dim_of<kD>(a), n = a.n_heads * d;
  const float* l = a.sums + n;
  const unsigned raised = __ldcg(reinterpret_cast<const unsigned*>(a.sums + attention_detail::sums_flag(a)));
  for (int base = threadIdx.x * 4; base < n; base += kWorkers * 4 * V) {
    float4 v[V];
    float w[V];
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int i = base + u * kWorkers * 4;
      if (i < n) v[u] = __ldcg(reinterpret_cast<const float4*>(a.sums + i)), w[u] = __ldcg(l + i / d);
    }
    if (raised) break;  // the same in every thread: the count's acquire ordered the flag
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const int i = base + u * kWorkers * 4;
      if (i >= n) continue;
      const float inv = 1.0f / w[u];
      __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(xb + i);
      out[0] = __floats2bfloat162_rn(v[u].x * inv, v[u].y * inv);
      out[1] = __floats2bfloat162_rn(v[u].z * inv, v[u].w * inv);
    }
  }
  if (raised) return false;
  sync_workers<true>();
  return true;
}

// The input vector in bf16 (the staged f32 one is rounded once, as the plain path rounds
// its activations).
__device__ __forceinline__ void round_input(const float* xs, int k, bf16* xb) {
  for (int i = threadIdx.x * 2; i < k; i += 2 * kWorkers)
    *reinterpret_cast<__nv_bfloat162*>(xb + i) = __floats2bfloat162_rn(xs[i], xs[i + 1]);
  sync_workers<true>();
}

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

// Measurement (PersistentStep::timing): block 0's thread 0 adds each phase's time from the
// end of the barrier before it to the start of the barrier after it, then the barrier's
// own wait, and within a GEMV phase the input, its warp's waits for weights and its rows;
// within an attention phase, its tasks' parts (attention_task's marks).
__device__ __forceinline__ void add_time(const PersistentStep& s, int slot, unsigned long long& since) {
  if (!s.timing || blockIdx.x != 0 || threadIdx.x != 0) return;
  const unsigned long long t = now_ns();
  atomicAdd(s.timing + slot, t - since);  // a reduction: no round trip to wait for
  since = t;
}

// Before the grid barrier that precedes an attention phase, once every warp is done with
// the GEMV's input (which shares `vec`): starts copying the layer's constants (the RoPE
// frequencies, the q/k norms' weights) and this block's first task's cached keys and
// values into its scratch, so that their trip from memory overlaps the barrier. They do
// not depend on the QKV phase; the task stores the new position itself. Reads the
// sequence's padding on the first call (`pad` < 0). kD and kGroup: attention_task's.
template <int kD, int kGroup>
__device__ __forceinline__ void start_attention(const AttentionStep& a, int pos, int& pad, float* vec) {
  if (pad < 0) pad = a.pad ? *a.pad : 0;
  const int t = blockIdx.x, g = t / a.splits, group = attention_detail::group_of<kGroup>(a);
  const int d = attention_detail::head_dim_of<kD>(a);
  if (t >= a.n_kv_heads * a.splits) return;
  attention_detail::copy_constants(a, vec, group);
  const attention_detail::ChunkRange r = attention_detail::chunk_range(a, t % a.splits, pos, pad);
  if (r.n == 0) return;  // the task reads no keys (it will not wait for any copies either)
  bf16* ks = attention_detail::chunk_keys(vec, group, d, a.chunk);
  attention_detail::load_chunk<kD>(a, g, r, pos, ks, ks + size_t(a.chunk) * d);
}

// Waits, with the whole block, until `counter` reaches `target` (PersistentStep::attention_done).
__device__ __forceinline__ void wait_for_count(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0) wait_until_count(counter, target);
  sync_workers<true>();
}

// Blocks of kWorkers threads that compute, then one warp that issues the weight copies.
// The workers take a stage's rows warp by warp, a warp's rows whole, so that no stage
// needs the whole block: each warp frees the slot on its own and goes on to the next.
//
// The template fixes what a model's plan needs (persistent_kernel): its attention's head
// width and query heads per kv head (kD, kGroup; 0 reads them from the step), whether any
// GEMV input merges an attention's chunks (kMergeInput) and whether any input is wider
// than the registers hold (kStaged), and whether a fused down's stage may take two boxes
// (kTwoBoxes). What a plan does not need is not compiled in.
template <int kD, int kGroup, bool kMergeInput, bool kStaged, bool kTwoBoxes>
__global__ void __launch_bounds__(kThreads, 1) persistent_step_kernel(PersistentStep s) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int slots = s.slots;
  bf16* ring = reinterpret_cast<bf16*>(smem);                                       // [slots][kSlotBytes]
  float* vec = reinterpret_cast<float*>(smem + size_t(slots) * kSlotBytes);         // input vector / attention scratch
  Geometry* table = reinterpret_cast<Geometry*>(smem + size_t(slots) * kSlotBytes + s.vector_bytes);  // [n_phases]
  StepPhase* params = reinterpret_cast<StepPhase*>(table + s.n_phases);  // [2]: phase p's in params[p % 2]
  PlannedStage* plan = reinterpret_cast<PlannedStage*>(params + 2);      // [stages_per_block]: this block's
  __shared__ __align__(8) uint64_t full[kMaxSlots], empty[kMaxSlots];
  __shared__ int workers_at;  // the phase the workers are in (produce)

  // Launched as a programmatic dependent (launch_persistent), the next step's kernel may
  // be scheduled from here on: its blocks take an SM only as this step's block there
  // exits, so what overlaps is the launch and each block's setup, up to the wait below.
  allow_next_kernel();
  // The plan (the phases, the stage lists) is written before the first step and never by
  // a step, so it is read before the wait.
  load_geometry(s, table);
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) mbarrier_init(&full[i], 1), mbarrier_init(&empty[i], kWorkerWarps);
    mbarrier_init_fence();
    workers_at = 0;
  }
  __syncthreads();  // the last whole-block barrier: from here the copying warp goes its own way
  if (threadIdx.x >= kWorkers) {
    // The weights too are never written by a step, but the kernel before this one need
    // not be a step (starting them before the wait measured within 0.2%: bench/NOTES.md).
    wait_for_previous_kernel();
    if (threadIdx.x == kWorkers)
      produce<kTwoBoxes>(table, s.n_phases, ring, slots, full, empty, s.lookahead, &workers_at);
    return;
  }

  fetch_params(s.phases, params);
  {  // the workers' stages, in by the first barrier (a multiple of 16 bytes)
    const uint4* from = reinterpret_cast<const uint4*>(s.stages + size_t(blockIdx.x) * s.stages_per_block);
    for (int i = threadIdx.x; i < s.stages_per_block / 4; i += kWorkers)
      copy16_async(reinterpret_cast<uint4*>(plan) + i, from + i);
  }
  wait_for_previous_kernel();  // the token, the counters, the cache and x are its
  // The sampled head's exchange, for this step: no block reaches it before the first grid
  // barrier, and the last step's blocks are done with it.
  if (s.head.counts && blockIdx.x == 0 && threadIdx.x == 0) s.head.counts[0] = s.head.counts[1] = 0;
  unsigned long long since = now_ns();
  const unsigned long long per_step = (unsigned long long)(s.barriers) * gridDim.x;
  unsigned long long target = step_base(s.barrier, per_step);
  // The token and its slot: fixed until the LM head's last block writes the next ones.
  const int token = s.state[0], pos = s.state[1];
  int pad = -1;  // the sequence's left padding, read before the first attention
  // The embedding: x = embed[token] · scale.
  {
    const bf16* row = embed_row(s.embed, token, s.vocab, s.hidden);
    for (int i = blockIdx.x * kWorkers + threadIdx.x; i < s.hidden; i += gridDim.x * kWorkers) {
      const float v = __bfloat162float(row[i]);
      s.x[i] = s.embed_scale > 0 ? v * s.embed_scale : v;
    }
  }
  copy_async_wait_all();  // the first phase's parameters and the stages
  grid_barrier(s.barrier, target += gridDim.x);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int read = 0;         // plan[read] is the next stage, or the end of this phase's
  int slot = 0;         // the next stage's slot of the ring, (stages so far) % slots,
  unsigned parity = 0;  // and the parity of that slot's use, (stages so far / slots) % 2
  Stage next = unplanned(plan[0]);
  int dealt = 0;     // items dealt so far, over all stages: item i goes to warp i % kWorkerWarps
  unsigned outputs_done = 0;  // with the handoff: the count once this step's attentions so far are done
  for (int p = 0; p < s.n_phases; ++p) {
    if (threadIdx.x == 0) *reinterpret_cast<volatile int*>(&workers_at) = p;  // the copies may go on (produce)
    const StepPhase& ph = params[p % 2];
    const StepPhase* prev = p > 0 ? &params[(p - 1) % 2] : nullptr;
    // The last phase follows a grid barrier, past every wait on the count: it is reset for
    // the next step here.
    if (s.attention_done && p == s.n_phases - 1 && blockIdx.x == 0 && threadIdx.x == 0) *s.attention_done = 0;
    // The next phase's parameters go to the other buffer, once nothing reads this phase's
    // predecessor there (merge_input, in a GEMV's input).
    const StepPhase* const upcoming = p + 1 < s.n_phases ? s.phases + p + 1 : nullptr;
    if (ph.kind == StepPhase::Kind::attention) {
      if (upcoming) fetch_params(upcoming, &params[(p + 1) % 2]);
      const AttentionStep a = ph.attn;  // by value: in registers, not reloaded after every store
      unsigned long long t0 = s.timing ? now_ns() : 0;
      auto mark = [&](int part) { add_time(s, kTimes * p + attention_part_time(part), t0); };
      // The constants and the first task's keys and values were started before the barrier
      // (below); the constants stay in the scratch for the block's later tasks.
      for (int t = blockIdx.x; t < a.n_kv_heads * a.splits; t += gridDim.x) {
        const bool finished = attention_detail::attention_task<true, kD, kGroup, kMergeInput>(
            a, t / a.splits, t % a.splits, vec, pos, pad, t == int(blockIdx.x), mark);
        sync_workers<true>();  // the next task reuses the scratch; its output is stored
        if (s.attention_done && finished && threadIdx.x == 0) release_add(s.attention_done, 1);
      }
      if (s.attention_done) outputs_done += unsigned(attention_detail::finished_outputs(a));
    } else {
      const GemvInput in = ph.in;
      // What the epilogue needs, as scalars: indexing a struct copy at run time would put
      // it in local memory, a round trip on every stage.
      const Epilogue epilogue = ph.out.epilogue;
      float* const y = ph.out.y;
      const float softcap = ph.out.softcap;
      const int seg1 = ph.out.rows[0], seg2 = seg1 + ph.out.rows[1];
      const int k = in.k;
      const bool pair = paired(ph);
      unsigned long long t0 = s.timing ? now_ns() : 0;
      // After an attention with the handoff: its outputs must all be in. (A grid barrier
      // preceded the attention, so no block still reads what this phase zeroes.)
      if (s.attention_done && prev && prev->kind == StepPhase::Kind::attention)
        wait_for_count(s.attention_done, outputs_done);
      const bool staged = kStaged && staged_input(prev, ph);
      bf16* xb = reinterpret_cast<bf16*>(staged ? vec + size_t(staged_arrays(in)) * k : vec);  // [k]
      // A fused down's input: this block's activations, zero past its own columns (its
      // stages read whole boxes of 8·units columns). Ordered before the gate/up rows'
      // stores by the input's barriers.
      bf16* const act = xb + k;  // [8·units]
      const int units = ph.down_map ? ph.down_units : 0;
      for (int i = threadIdx.x; i < 8 * units; i += kWorkers) act[i] = __float2bfloat16_rn(0.0f);
      if (ph.zero)  // an output that a later phase adds into; no phase reads it until then
        for (int i = blockIdx.x * kWorkers + threadIdx.x; i < ph.zero_n; i += gridDim.x * kWorkers) ph.zero[i] = 0;
      if (kMergeInput && merges_attention(prev)) {
        if (!prev->attn.sums || !summed_input<kD>(prev->attn, xb)) merge_input<kD>(prev->attn, pos, pad, xb);
      } else if (direct_input(prev, ph)) {
        load_plain_input(in.x, k, xb);
      } else if (!kStaged || !staged) {
        form_input_held(in, xb);
      } else {
        form_input<true>(in, vec);
        round_input(vec, k, xb);
      }
      // The argmax head's filter (head_filter.cuh): the vector's int8 levels [2][k] after
      // xb, and the largest lower bound of this warp's rows so far.
      int8_t* const levels = reinterpret_cast<int8_t*>(xb + k);
      head_filter::VectorCodes codes{};
      if (epilogue == Epilogue::argmax) codes = vector_codes(xb, k, levels, levels + k);
      float lower = -INFINITY;
      // With top > 1, this block's rows' bounds below (by row from its first) and
      // top_threshold's histograms, after the levels (as vector_bytes counts them; the
      // filtered head's k is a multiple of 16, so they are aligned).
      const int top = epilogue == Epilogue::argmax ? ph.out.top : 1;
      float* const lows = reinterpret_cast<float*>(levels + 2 * k);
      const int first_row = share_start(int(blockIdx.x), seg1, int(gridDim.x));
      const int n_rows = share_start(int(blockIdx.x) + 1, seg1, int(gridDim.x)) - first_row;
      add_time(s, kTimes * p + 2, t0);
      if (upcoming) fetch_params(upcoming, &params[(p + 1) % 2]);
      float best = -INFINITY;  // logits: this lane's argmax so far
      int best_idx = INT_MAX;
      bool down = false;  // in the fused down's stages
      const int col = next.row;  // a fused down's first column: the block's first gate/up row
      for (; next.n > 0; next = unplanned(plan[++read]), slot = slot + 1 == slots ? 0 : slot + 1,
                         parity ^= unsigned(slot == 0)) {
        if (units > 0 && next.seg == 1 && !down) {  // the first down stage: every activation is in
          down = true;
          sync_workers<true>();
        }
        unsigned long long t1 = s.timing ? now_ns() : 0;
        mbarrier_wait(&full[slot], parity);
        add_time(s, kTimes * p + 3, t1);
        const bf16* w = slot_at(ring, slot);
        if (down) {
          fused_down_rows<kTwoBoxes>(w, act, units, next.n, ph.down_y + next.row);
          __syncwarp();
          if (lane == 0) mbarrier_arrive(&empty[slot]);
          add_time(s, kTimes * p + 4, t1);
          continue;
        }
        const int o = (next.seg == 0 ? 0 : next.seg == 1 ? seg1 : seg2) + next.row;  // the stage's first output
        // An item is a gate row with its up row, or two rows of a plain matrix.
        const int items = pair ? next.n : (next.n + 1) / 2;
        for (int i = (warp - dealt % kWorkerWarps + kWorkerWarps) % kWorkerWarps; i < items; i += kWorkerWarps) {
          if (pair) {
            const float2 d = warp_dots<true>(w + size_t(i) * k, w + size_t(next.n + i) * k, xb, k);
            const float v = (epilogue == Epilogue::glu_silu ? silu(d.x) : gelu_tanh(d.x)) * d.y;
            if (lane == 0 && units > 0) act[o + i - col] = __float2bfloat16_rn(v);  // rounded as the down's input is
            else if (lane == 0) y[o + i] = v;
          } else if (epilogue == Epilogue::argmax) {
            const int stride = int(head_filter_row_bytes(k));
            const int8_t* a = reinterpret_cast<const int8_t*>(w) + size_t(2 * i) * stride;
            const bool two = 2 * i + 1 < next.n;
            const int8_t* b = two ? a + stride : a;  // an odd last row: its products twice
            const int4 d = head_filter::warp_dots_codes(a + 16, b + 16, levels, levels + k, k);
            if (lane == 0) {
              float* const low = top > 1 ? lows + (o + 2 * i - first_row) : nullptr;
              filtered_row(a, d.x, d.y, codes, y + o + 2 * i, lower, low);
              if (two) filtered_row(b, d.z, d.w, codes, y + o + 2 * i + 1, lower, low ? low + 1 : nullptr);
            }
          } else if (2 * i + 1 < next.n) {
            const float2 d = warp_dots<true>(w + size_t(2 * i) * k, w + size_t(2 * i + 1) * k, xb, k);
            if (lane == 0) {
              store_row(epilogue, y, softcap, o + 2 * i, d.x, best, best_idx);
              store_row(epilogue, y, softcap, o + 2 * i + 1, d.y, best, best_idx);
            }
          } else {
            const float2 d = warp_dots<false>(w + size_t(2 * i) * k, nullptr, xb, k);
            if (lane == 0) store_row(epilogue, y, softcap, o + 2 * i, d.x, best, best_idx);
          }
        }
        dealt += items;
        __syncwarp();  // every lane has read the slot
        if (lane == 0) mbarrier_arrive(&empty[slot]);
        add_time(s, kTimes * p + 4, t1);
      }
      if (epilogue == Epilogue::argmax) {
        // The offers' keys go where the levels and the bounds below were (the second pass
        // reads neither).
        if (top > 1)
          lower = top_threshold(s.head, lows, n_rows, top, reinterpret_cast<unsigned*>(lows + n_rows),
                                reinterpret_cast<unsigned*>(levels), (2 * k) / 4 + n_rows);
        filtered_candidates(ph.out, xb, k, lower, codes.valid, top > 1, s.head, best, best_idx);
      }
      if (epilogue == Epilogue::logits || epilogue == Epilogue::argmax) publish_argmax<true>(ph.out, best, best_idx);
    }
    next = unplanned(plan[++read]);  // past the end of this phase's stages
    add_time(s, kTimes * p, since);
    if (upcoming) {
      copy_async_wait_all();  // the next phase's parameters,
      sync_workers<true>();   // for every worker; and every warp is done with this phase
      const StepPhase& following = params[(p + 1) % 2];
      if (following.kind == StepPhase::Kind::attention) start_attention<kD, kGroup>(following.attn, pos, pad, vec);
      if (!s.attention_done || ph.kind != StepPhase::Kind::attention) {
        unsigned long long arrival = 0;
        if (s.timing && threadIdx.x == 0) atomicMax(s.timing + kTimes * p + 6, arrival = now_ns());
        grid_barrier(s.barrier, target += gridDim.x);
        if (s.timing && threadIdx.x == 0 && blockIdx.x == 0) {  // every block's arrival is in: the latest
          unsigned long long* last = s.timing + kTimes * p + 6;
          atomicAdd(s.timing + kTimes * p + 5, __ldcg(last) - arrival);
          *last = 0;
        }
      }
    }
    add_time(s, kTimes * p + 1, since);
  }
}

using KernelFn = void (*)(PersistentStep);

// The kernel's forms: one for any plan, then one per attention shape of the models it is
// measured on (bench/NOTES.md, p27). The first that fits a plan runs it (persistent_kernel,
// which also sets the form's place here).
struct KernelForm {
  PersistentKernel shape;
  KernelFn fn;
};
template <int kD, int kGroup, bool kMergeInput, bool kStaged, bool kTwoBoxes>
constexpr KernelForm form() {
  return {{kD, kGroup, kMergeInput, kStaged, kTwoBoxes},
          persistent_step_kernel<kD, kGroup, kMergeInput, kStaged, kTwoBoxes>};
}
const KernelForm kForms[] = {
    form<0, 0, true, true, true>(),
    form<64, 4, false, false, false>(),   // Llama-3.2-1B
    form<128, 2, false, false, true>(),   // Qwen3-0.6B (two boxes a down stage) and 1.7B
    form<256, 4, true, false, false>(),   // Gemma-3-1B
    form<128, 4, false, true, false>(),   // Llama-3.1-8B, Qwen3-4B and 8B
    form<128, 3, false, true, false>(),   // Llama-3.2-3B
    form<256, 2, false, true, false>(),   // Gemma-3-4B
};

KernelFn kernel_of(const PersistentKernel& k) {
  LMX_CHECK(k.form >= 0 && size_t(k.form) < std::size(kForms), "persistent decode step", "no kernel form ", k.form,
            " (persistent_kernel chooses one)");
  return kForms[k.form].fn;
}

}  // namespace

PersistentKernel persistent_kernel(const std::vector<StepPhase>& phases) {
  PersistentKernel need{-1, -1, false, false, false};  // -1: no attention seen yet
  bool mixed = false;  // attentions of more than one shape
  const StepPhase* prev = nullptr;
  for (const StepPhase& p : phases) {
    if (p.kind == StepPhase::Kind::attention) {
      const int d = p.attn.head_dim, group = p.attn.n_heads / p.attn.n_kv_heads;
      mixed = mixed || (need.head_dim >= 0 && (need.head_dim != d || need.group != group));
      need.head_dim = d, need.group = group;
    } else {
      need.merge_input = need.merge_input || merges_attention(prev);
      need.staged = need.staged || staged_input(prev, p);
      need.two_boxes = need.two_boxes || p.down_boxes > 1;
    }
    prev = &p;
  }
  if (switch_on("LMX_FUSED_SPECIALISED") && !mixed)
    for (size_t i = 1; i < std::size(kForms); ++i) {
      PersistentKernel k = kForms[i].shape;
      if (k.head_dim == need.head_dim && k.group == need.group && (k.merge_input || !need.merge_input) &&
          (k.staged || !need.staged) && (k.two_boxes || !need.two_boxes)) {
        k.form = int(i);
        return k;
      }
    }
  return kForms[0].shape;
}

int persistent_blocks(int sm_count, size_t smem, const PersistentKernel& kernel) {
  const KernelFn fn = kernel_of(kernel);
  cudaFuncAttributes attributes{};
  check(cudaFuncGetAttributes(&attributes, fn), "cudaFuncGetAttributes");
  LMX_CHECK(attributes.sharedSizeBytes <= size_t(kStaticSmem), "persistent decode step",
            "the kernel's static shared memory (", attributes.sharedSizeBytes, " bytes) outgrew its reserve of ",
            kStaticSmem, " bytes");
  allow_shared_memory(fn, smem);
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kThreads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return per_sm >= 1 ? sm_count : 0;
}

void launch_persistent(cudaStream_t stream, const PersistentStep& s, int blocks, size_t smem, bool pdl,
                       const PersistentKernel& kernel) {
  // Cooperative: every block is resident at once, which the grid barriers rely on.
  cudaLaunchAttribute attrs[2] = {{}, pdl_attribute()};
  attrs[0].id = cudaLaunchAttributeCooperative;
  attrs[0].val.cooperative = 1;
  launch_with("persistent decode step", kernel_of(kernel), stream, attrs, pdl ? 2 : 1, dim3(unsigned(blocks)),
              dim3(kThreads), smem, s);
}

}  // namespace lmx::cuda::fused
