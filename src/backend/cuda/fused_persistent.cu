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
// barrier, the next phase's weights are already arriving.
//
// Rows of each matrix are split evenly over the blocks: block b owns rows
// [b·N/G, (b+1)·N/G) of every matrix of N rows. A stage is a run of whole rows of one
// matrix (for gate/up, the same rows of both) that fits in a slot. The thread that issues
// copies walks the same sequence of stages as the consumers, kSlots ahead.
//
// Status (bench/NOTES.md): correct, opt-in (LMX_FUSED_PERSISTENT=1), and 6-15% slower than
// the kernel-per-phase graph on the H200. The weights arrive in time (a block waits for
// them 1-3% of the step); what costs is the work around each 32 KiB stage (the block-wide
// sync, the epilogue, the next stage's bookkeeping) done by the same eight warps that
// compute the dot products, plus the attention phase and each phase's input, which
// nothing overlaps. The next step is warp specialisation: a producer warp and more
// consumer warps, synchronised on named barriers.
#include "backend/cuda/async_copy.cuh"
#include "backend/cuda/fused_attention.cuh"
#include "backend/cuda/fused_gemv.cuh"

namespace lmx::cuda::fused {
namespace {

constexpr int kThreads = attention_detail::kThreads;  // 256: what attention_task is written for
constexpr int kWarps = kThreads / 32;
constexpr int kSlots = 5;
constexpr int kSlotBytes = 32 << 10;
constexpr int kMaxStageRows = 256;  // rows of one matrix per stage (paired stages hold twice as many)
constexpr int kStaticSmem = 8 << 10;  // what the kernel's __shared__ variables may take

// Grid-wide barrier on a 64-bit counter that only grows: barrier n of a step waits until
// base + n·G blocks have arrived. The counter is never reset, so no launch is needed for
// that; `base` is read at the start of the step (see step_base).
__device__ __forceinline__ void grid_barrier(unsigned long long* counter, unsigned long long target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this block's writes are visible before its arrival is
    atomicAdd(counter, 1ull);
    unsigned long long v = 0;
    do {  // relaxed polls, then one fence: acquiring on every poll only slows the poll
      asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(counter) : "memory");
    } while (v < target);
    __threadfence();
  }
  __syncthreads();
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
  __syncthreads();
  return base;
}

__host__ __device__ inline bool paired(const StepPhase& p) {
  return p.out.epilogue == Epilogue::glu_silu || p.out.epilogue == Epilogue::glu_gelu;
}
__host__ __device__ inline int rows_per_stage(int k, bool pair) {
  const int per_row = k * int(sizeof(bf16)) * (pair ? 2 : 1);
  return ::max(1, ::min(kMaxStageRows, kSlotBytes / per_row));
}

// What the stage walk needs of a phase. The kernel copies it for every phase into shared
// memory once: the producer and the consumers consult it at every stage, and reading the
// phases themselves there would cost a round trip to L2 each time.
struct Geometry {
  const bf16* w[3];  // the segments' matrices (for gate/up: gate, up)
  int rows[3];
  int k;
  int segments;  // matrices whose rows are split over the blocks (0 for attention)
  int pair;      // gate/up: a stage holds the same rows of w[0] and w[1]
  int per_stage;  // rows of a matrix per stage
  int pad[2];
};
static_assert(sizeof(Geometry) % 16 == 0);

__device__ inline void load_geometry(const PersistentStep& s, Geometry* table) {
  for (int i = threadIdx.x; i < s.n_phases; i += blockDim.x) {
    const StepPhase& p = s.phases[i];
    Geometry g{};
    if (p.kind == StepPhase::Kind::gemv) {
      const Epilogue e = p.out.epilogue;
      g.pair = e == Epilogue::glu_silu || e == Epilogue::glu_gelu;
      g.segments = e == Epilogue::plain ? 3 : 1;
      g.k = p.in.k;
      g.per_stage = rows_per_stage(g.k, g.pair);
      for (int j = 0; j < 3; ++j) g.w[j] = p.out.w[j], g.rows[j] = p.out.rows[j];
    }
    table[i] = g;
  }
  __syncthreads();
}

// One stage: rows [row, row + n) of segment `seg` of phase `phase` (n == 0: none left).
struct Stage {
  int phase = 0, seg = 0, row = 0, n = 0;
};

// Walks this block's stages of the step in order.
struct Cursor {
  int phase = 0, seg = 0;
  int row = -1, end = 0;  // row -1: the segment's range is not entered yet

  __device__ __forceinline__ Stage next(const Geometry* table, int n_phases) {
    while (phase < n_phases) {
      const Geometry& g = table[phase];
      if (seg < g.segments) {
        if (row < 0) {  // 32-bit products: rows * blocks < 2^31 (persistent_smem_bytes)
          const int rows = g.rows[seg], blocks = int(gridDim.x), b = int(blockIdx.x);
          row = b * rows / blocks, end = (b + 1) * rows / blocks;
        }
        if (row < end) {
          const Stage st{phase, seg, row, ::min(g.per_stage, end - row)};
          row += st.n;
          return st;
        }
        ++seg, row = -1;
        continue;
      }
      ++phase, seg = 0, row = -1;
    }
    return Stage{phase, 0, 0, 0};
  }
};

// Starts the copies of stage `st` into `slot` (the producer thread only).
__device__ __forceinline__ void issue(const Geometry* table, Stage st, bf16* slot, uint64_t* bar) {
  if (st.n == 0) return;
  const Geometry& g = table[st.phase];
  const unsigned bytes = unsigned(st.n) * unsigned(g.k) * sizeof(bf16);
  mbarrier_expect(bar, g.pair ? 2 * bytes : bytes);
  bulk_copy(slot, g.w[st.seg] + size_t(st.row) * g.k, bytes, bar);
  if (g.pair) bulk_copy(slot + size_t(st.n) * g.k, g.w[1] + size_t(st.row) * g.k, bytes, bar);
}

// acc + w[0..8)·x[0..8) for bf16 w and x, in f32.
__device__ __forceinline__ float dot8_bf16(uint4 w, uint4 x, float acc) {
  acc = __fmaf_rn(bf16_lo(w.x), bf16_lo(x.x), acc);
  acc = __fmaf_rn(bf16_hi(w.x), bf16_hi(x.x), acc);
  acc = __fmaf_rn(bf16_lo(w.y), bf16_lo(x.y), acc);
  acc = __fmaf_rn(bf16_hi(w.y), bf16_hi(x.y), acc);
  acc = __fmaf_rn(bf16_lo(w.z), bf16_lo(x.z), acc);
  acc = __fmaf_rn(bf16_hi(w.z), bf16_hi(x.z), acc);
  acc = __fmaf_rn(bf16_lo(w.w), bf16_lo(x.w), acc);
  acc = __fmaf_rn(bf16_hi(w.w), bf16_hi(x.w), acc);
  return acc;
}

// The dot products of one stage's rows (in `w`, shared memory) with the bf16 vector `xb`,
// into acc[part·nr + r]: rows split over warps, and a row over several warps when there
// are fewer rows than warps. The vector is bf16, as the plain path's activations are:
// with f32 it would take twice the weights' shared-memory bandwidth, and the reads of
// shared memory, not of DRAM, were what bounded a stage.
__device__ __forceinline__ void stage_dots(const bf16* w, int nr, int k, const bf16* xb, float* acc, int& parts) {
  parts = 1;
  while (parts * 2 * nr <= kWarps && parts * 2 * 256 <= k) parts *= 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int u = warp; u < nr * parts; u += kWarps) {
    const int r = u / parts, part = u % parts;
    const bf16* row = w + size_t(r) * k;
    float s0 = 0, s1 = 0;  // two chains: half the dependent FMAs per step
    int c = (part * 32 + lane) * 8;
    const int step = parts * 256;
#pragma unroll 2
    for (; c + step < k; c += 2 * step) {
      const uint4 w0 = *reinterpret_cast<const uint4*>(row + c), w1 = *reinterpret_cast<const uint4*>(row + c + step);
      const uint4 x0 = *reinterpret_cast<const uint4*>(xb + c), x1 = *reinterpret_cast<const uint4*>(xb + c + step);
      s0 = dot8_bf16(w0, x0, s0);
      s1 = dot8_bf16(w1, x1, s1);
    }
    if (c < k)
      s0 = dot8_bf16(*reinterpret_cast<const uint4*>(row + c), *reinterpret_cast<const uint4*>(xb + c), s0);
    const float sum = warp_reduce(s0 + s1, Sum{});
    if (lane == 0) acc[part * nr + r] = sum;
  }
}

// The input vector in bf16 (the staged f32 one is rounded once, as the plain path rounds
// its activations).
__device__ __forceinline__ void round_input(const float* xs, int k, bf16* xb) {
  for (int i = threadIdx.x * 2; i < k; i += 2 * kThreads)
    *reinterpret_cast<__nv_bfloat162*>(xb + i) = __floats2bfloat162_rn(xs[i], xs[i + 1]);
  __syncthreads();
}

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

// Measurement (PersistentStep::timing): block 0 adds each phase's time from the end of the
// barrier before it to the start of the barrier after it, then the barrier's own wait.
__device__ __forceinline__ void add_time(const PersistentStep& s, int slot, unsigned long long& since) {
  if (!s.timing || blockIdx.x != 0 || threadIdx.x != 0) return;
  const unsigned long long t = now_ns();
  atomicAdd(s.timing + slot, t - since);  // a reduction: no round trip to wait for
  since = t;
}

__global__ void __launch_bounds__(kThreads, 1) persistent_step_kernel(PersistentStep s) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* slots = reinterpret_cast<bf16*>(smem);                          // [kSlots][kSlotBytes]
  float* vec = reinterpret_cast<float*>(smem + kSlots * kSlotBytes);    // the input vector / attention scratch
  Geometry* table = reinterpret_cast<Geometry*>(smem + kSlots * kSlotBytes + s.vector_bytes);  // [n_phases]
  __shared__ __align__(8) uint64_t full[kSlots];
  __shared__ float acc[2][2 * kMaxStageRows];
  auto slot_ptr = [&](int i) { return slots + size_t(i) * (kSlotBytes / sizeof(bf16)); };

  load_geometry(s, table);
  // The thread that issues the copies: lane 0 of the last warp, so that issuing and the
  // epilogue (the first threads) proceed side by side after each stage.
  const bool producer_thread = threadIdx.x == kThreads - 32;
  Cursor producer;  // the producer thread's, kSlots stages ahead of the consumers
  if (producer_thread) {
    for (int i = 0; i < kSlots; ++i) mbarrier_init(&full[i], 1);
    mbarrier_init_fence();
    for (int i = 0; i < kSlots; ++i) issue(table, producer.next(table, s.n_phases), slot_ptr(i), &full[i]);
  }
  __syncthreads();

  unsigned long long since = now_ns();
  const unsigned long long per_step = (unsigned long long)(s.n_phases) * gridDim.x;
  unsigned long long target = step_base(s.barrier, per_step);

  // The embedding: x = embed[token] · scale.
  {
    const bf16* row = s.embed + size_t(s.state[0]) * s.hidden;
    for (int i = blockIdx.x * kThreads + threadIdx.x; i < s.hidden; i += gridDim.x * kThreads) {
      const float v = __bfloat162float(row[i]);
      s.x[i] = s.embed_scale > 0 ? v * s.embed_scale : v;
    }
  }
  grid_barrier(s.barrier, target += gridDim.x);

  Cursor consumer;
  Stage next = consumer.next(table, s.n_phases);
  int consumed = 0;  // stages so far: slot consumed % kSlots, its use consumed / kSlots
  for (int p = 0; p < s.n_phases; ++p) {
    // By value: kept in registers, not reloaded from memory after every store.
    if (s.phases[p].kind == StepPhase::Kind::attention) {
      const AttentionStep a = s.phases[p].attn;
      for (int t = blockIdx.x; t < a.n_kv_heads * a.splits; t += gridDim.x) {
        attention_detail::attention_task<true>(a, t / a.splits, t % a.splits, vec);
        __syncthreads();  // the next task reuses the scratch
      }
    } else {
      const GemvInput in = s.phases[p].in;
      // What the epilogue needs, as scalars: indexing a struct copy at run time would put
      // it in local memory, a round trip on every stage.
      const Epilogue epilogue = s.phases[p].out.epilogue;
      float* const y = s.phases[p].out.y;
      const float softcap = s.phases[p].out.softcap;
      const int seg1 = s.phases[p].out.rows[0], seg2 = seg1 + s.phases[p].out.rows[1];
      const int k = in.k;
      const bool pair = epilogue == Epilogue::glu_silu || epilogue == Epilogue::glu_gelu;
      unsigned long long t0 = s.timing ? now_ns() : 0;
      form_input<true>(in, vec);
      bf16* xb = reinterpret_cast<bf16*>(vec + size_t(staged_arrays(in)) * k);  // [k], after the staged inputs
      round_input(vec, k, xb);
      add_time(s, 8 * p + 2, t0);
      float best = -INFINITY;  // logits: this thread's argmax so far
      int best_idx = INT_MAX;
      for (; next.n > 0 && next.phase == p; next = consumer.next(table, s.n_phases), ++consumed) {
        const int slot = consumed % kSlots;
        unsigned long long t1 = s.timing ? now_ns() : 0;
        mbarrier_wait(&full[slot], unsigned(consumed / kSlots) & 1u);
        add_time(s, 8 * p + 3, t1);
        float* a = acc[consumed & 1];
        const int nr = next.n * (pair ? 2 : 1);
        int parts = 1;
        stage_dots(slot_ptr(slot), nr, k, xb, a, parts);
        add_time(s, 8 * p + 4, t1);
        __syncthreads();  // the slot is read and the sums are in `a`
        add_time(s, 8 * p + 5, t1);
        if (producer_thread) issue(table, producer.next(table, s.n_phases), slot_ptr(slot), &full[slot]);
        add_time(s, 8 * p + 6, t1);
        const int offset = next.seg == 0 ? 0 : next.seg == 1 ? seg1 : seg2;  // the segment's first output
        for (int i = threadIdx.x; i < next.n; i += kThreads) {
          float v = 0, u = 0;
          for (int part = 0; part < parts; ++part) {
            v += a[part * nr + i];
            if (pair) u += a[part * nr + next.n + i];
          }
          const int o = offset + next.row + i;
          if (epilogue == Epilogue::plain) {
            y[o] = v;
          } else if (pair) {
            y[o] = (epilogue == Epilogue::glu_silu ? silu(v) : gelu_tanh(v)) * u;
          } else {
            if (softcap > 0) v = softcap * tanhf(v / softcap);
            y[o] = v;
            if (better(v, o, best, best_idx)) best = v, best_idx = o;
          }
        }
        add_time(s, 8 * p + 7, t1);
      }
      if (epilogue == Epilogue::logits) publish_argmax(s.phases[p].out, best, best_idx);
    }
    add_time(s, 8 * p, since);
    if (p + 1 < s.n_phases) grid_barrier(s.barrier, target += gridDim.x);
    add_time(s, 8 * p + 1, since);
  }
}

// Shared memory beyond the slots: the largest input vector with its staged inputs, or the
// largest attention scratch.
size_t vector_bytes(const std::vector<StepPhase>& phases) {
  size_t need = 0;
  for (const StepPhase& p : phases) {
    if (p.kind == StepPhase::Kind::gemv)
      need = std::max(need, size_t(p.in.k) * (sizeof(float) * staged_arrays(p.in) + sizeof(bf16)));
    else if (p.kind == StepPhase::Kind::attention)
      need = std::max(need, sizeof(float) * attention_detail::attention_smem_floats(
                                                p.attn.n_heads / p.attn.n_kv_heads, p.attn.head_dim, p.attn.chunk));
  }
  return (need + 1023) / 1024 * 1024;
}

}  // namespace

size_t persistent_smem_bytes(const std::vector<StepPhase>& phases, unsigned* vector, std::string* why) {
  auto refuse = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return size_t(0);
  };
  for (const StepPhase& p : phases) {
    if (p.kind == StepPhase::Kind::attention) {
      if (p.attn.n_heads / p.attn.n_kv_heads > 32 || p.attn.head_dim % 8 != 0)
        return refuse("attention shape");
      continue;
    }
    if (p.kind != StepPhase::Kind::gemv) return refuse("a phase the kernel does not run");
    if (p.in.k % 8 != 0) return refuse("a GEMV width that is not a multiple of 8");
    for (int j = 0; j < 3; ++j)
      if (int64_t(p.out.rows[j]) * 1024 >= (int64_t(1) << 31)) return refuse("a matrix with too many rows");
    if (size_t(p.in.k) * sizeof(bf16) * (paired(p) ? 2 : 1) > size_t(kSlotBytes))
      return refuse("a weight row longer than a slot");
    for (int j = 0; j < 3; ++j)
      if (p.out.w[j] && reinterpret_cast<uintptr_t>(p.out.w[j]) % 16 != 0) return refuse("unaligned weights");
  }
  *vector = unsigned(vector_bytes(phases));
  const size_t bytes = size_t(kSlots) * kSlotBytes + *vector + phases.size() * sizeof(Geometry);
  if (bytes + kStaticSmem > 227 * 1024) return refuse("not enough shared memory");
  return bytes;
}

int persistent_blocks(int sm_count, size_t smem) {
  check(cudaFuncSetAttribute(persistent_step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
        "cudaFuncSetAttribute");
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_step_kernel, kThreads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return per_sm >= 1 ? sm_count : 0;
}

void launch_persistent(cudaStream_t stream, const PersistentStep& s, int blocks, size_t smem) {
  // Cooperative: every block is resident at once, which the grid barriers rely on.
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeCooperative;
  attr.val.cooperative = 1;
  launch_with("persistent decode step", persistent_step_kernel, stream, &attr, dim3(unsigned(blocks)), dim3(kThreads),
              smem, s);
}

}  // namespace lmx::cuda::fused
