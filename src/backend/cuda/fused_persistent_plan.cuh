// The persistent decode step's plan, shared by its kernel (fused_persistent.cu) and the
// host code that fits, sizes and lists it (fused_persistent_plan.cu): the block's shape,
// how each phase forms its input, and the walk over every block's stages of weights.
#pragma once

#include "backend/cuda/fused_attention.cuh"
#include "backend/cuda/fused_kernels.h"

namespace lmx::cuda::fused::step_plan {

constexpr int kWorkerWarps = kWorkers / 32;
constexpr int kThreads = kWorkers + 32;  // the workers, then the copying warp
constexpr int kMaxSlots = 6;  // the most the ring takes (ring_slots in fused_persistent_plan.cu)
constexpr int kSlotBytes = 32 << 10;
constexpr int kMaxStageRows = 256;  // rows of one matrix per stage (paired stages hold twice as many)
// Rows of a fused down's stage: whole boxes of at most kWorkers rows (a thread a row, a
// box at a time: fused_down_rows), two boxes at most (persistent_fuse_down).
constexpr int kMaxDownStageRows = 2 * kWorkers;
constexpr int kStaticSmem = 2 << 10;  // what the kernel's __shared__ variables may take (checked at launch)
// The most 8-column units of a fused down projection a block reads. On the H200, 11 (Qwen3-4B
// and Gemma-3-4B: 9.2 and 9.7 a block, made odd) decoded 1.2% and 2.5% faster than the down
// as a phase of its own; Llama-3.1-8B's 15 was 1.4% slower (bench/NOTES.md).
constexpr int kMaxDownUnits = 11;

// Whether a GEMV phase (after phase `prev`, null for the first) takes its input straight
// into bf16, with no staged f32 copy: the merge of the attention before it (merge_input,
// or from its sums, summed_input), or a vector with no residual and no norm
// (load_plain_input).
__host__ __device__ inline bool merges_attention(const StepPhase* prev) {
  return prev && prev->kind == StepPhase::Kind::attention && attention_detail::merged_by_next_gemv(prev->attn);
}
__host__ __device__ inline bool direct_input(const StepPhase* prev, const StepPhase& p) {
  return merges_attention(prev) || (!p.in.add && !p.in.norm && !p.in.x_out);
}
// The longest input with a residual add or a norm that form_input_held takes (8 values a
// thread); longer ones are staged in shared memory (form_input).
constexpr int kHeldInput = 8 * kWorkers;
__host__ __device__ inline bool staged_input(const StepPhase* prev, const StepPhase& p) {
  return !direct_input(prev, p) && p.in.k > kHeldInput;
}

// The rows of each block's part of a fused down's tiled copy (persistent_tile_down): whole boxes.
__host__ __device__ inline int down_tile_rows(int rows, int box_rows) {
  return (rows + box_rows - 1) / box_rows * box_rows;
}

__host__ __device__ inline bool paired(const StepPhase& p) {
  return p.out.epilogue == Epilogue::glu_silu || p.out.epilogue == Epilogue::glu_gelu;
}
__host__ __device__ inline int rows_per_stage(int row_bytes, bool pair) {
  return ::max(1, ::min(kMaxStageRows, kSlotBytes / (row_bytes * (pair ? 2 : 1))));
}

// Where block b's share of n rows starts, of `blocks` blocks (it ends where block b + 1's
// starts): the stage walk's split of a matrix, which the argmax head's second pass
// (filtered_candidates) follows too. 32-bit products: n * blocks < 2^31.
__host__ __device__ inline int share_start(int b, int n, int blocks) { return b * n / blocks; }

// What the stage walk needs of a phase. The kernel copies it for every phase into shared
// memory once: the copying warp consults it at every stage, and reading the phases
// themselves there would cost a round trip to L2 each time.
struct Geometry {
  const bf16* w[3];  // the segments' matrices (for gate/up: gate, up, and a fused down's tiled copy or null)
  int rows[3];
  int k;
  int segments;  // matrices whose rows are split over the blocks (0 for attention); a fused down is one more
  int pair;      // gate/up: a stage holds the same rows of w[0] and w[1]
  int per_stage;  // rows of a matrix per stage
  int box_rows;   // a fused down's rows per tensor-map box (read only where a stage takes two)
  const CUtensorMap* down;  // a fused down projection (StepPhase::down_map), or null
  int down_rows, units;
  int stage_rows;  // a fused down's rows per stage: box_rows times its boxes a stage
  int row_bytes;  // of a row of w: 2k, or for the argmax head's filter head_filter_row_bytes(k)
};
static_assert(sizeof(Geometry) == 80);

__host__ __device__ inline Geometry geometry_of(const StepPhase& p) {
  Geometry g{};
  if (p.kind == StepPhase::Kind::gemv) {
    g.pair = paired(p);
    g.segments = p.out.epilogue == Epilogue::plain ? 3 : p.down_map ? 2 : 1;
    g.down = static_cast<const CUtensorMap*>(p.down_map);
    g.down_rows = p.down_rows, g.units = p.down_units, g.box_rows = p.down_box_rows;
    g.stage_rows = p.down_box_rows * p.down_boxes;
    g.k = p.in.k;
    const bool filter = p.out.epilogue == Epilogue::argmax;  // the copy is what streams
    g.row_bytes = filter ? int(head_filter_row_bytes(g.k)) : g.k * int(sizeof(bf16));
    g.per_stage = rows_per_stage(g.row_bytes, g.pair);
    for (int j = 0; j < 3; ++j) g.w[j] = p.out.w[j], g.rows[j] = p.out.rows[j];
    if (p.down_map) g.w[2] = p.down_tiles;  // gate/up has two segments: the third's matrix is free
    if (filter) g.w[0] = reinterpret_cast<const bf16*>(p.out.filter);
  }
  return g;
}

// One stage: rows [row, row + n) of segment `seg` of phase `phase` (n == 0: none left).
// A fused down's stage (segment 1 of a gate/up phase) holds those rows of its columns
// [col, col + 8·units).
struct Stage {
  int phase = 0, seg = 0, row = 0, n = 0, col = 0;
};

// Walks block b's stages of the step in order, of a grid of `blocks`: on the device for
// the copying warp, and on the host for the workers' lists (persistent_stage_lists).
struct Cursor {
  int blocks, b;
  int phase = 0, seg = 0;
  int row = -1, end = 0;  // row -1: the segment's range is not entered yet
  int col = 0, cols = 0;  // a fused down's: the gate/up rows of this block

  __host__ __device__ Cursor(int blocks, int b) : blocks(blocks), b(b) {}
  __host__ __device__ __forceinline__ Stage next(const Geometry* table, int n_phases) {
    while (phase < n_phases) {
      const Geometry& g = table[phase];
      if (seg < g.segments) {
        const bool down = g.down && seg == 1;
        if (row < 0) {  // 32-bit products: rows * blocks < 2^31 (kMaxPlannedRows)
          if (down) {  // every box of rows of down, in this block's columns (none if it has none)
            row = 0, end = cols > 0 ? (g.down_rows + g.stage_rows - 1) / g.stage_rows : 0;
          } else if (g.down) {  // gate/up rows in whole units of 8: the columns of down it reads
            const int units = g.rows[0] / 8;
            row = share_start(b, units, blocks) * 8, end = share_start(b + 1, units, blocks) * 8;
            col = row, cols = end - row;
          } else {
            const int rows = g.rows[seg];
            row = share_start(b, rows, blocks), end = share_start(b + 1, rows, blocks);
          }
        }
        if (down && row < end) {  // `row` counts stages here
          const int first = row++ * g.stage_rows;
          return Stage{phase, seg, first, ::min(g.stage_rows, g.down_rows - first), col};
        }
        if (row < end) {
          const Stage st{phase, seg, row, ::min(g.per_stage, end - row), col};
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

__host__ __device__ inline PlannedStage planned(const Stage& st) {
  return {uint32_t(st.row) << 12 | uint32_t(st.seg) << 10 | uint32_t(st.n)};
}
// The workers' stage (its phase is the one they are in: the list does not say it).
__device__ __forceinline__ Stage unplanned(PlannedStage p) {
  return Stage{0, p.seg(), p.row(), p.n()};
}
static_assert(kMaxStageRows < 1024 && kMaxDownStageRows < 1024,
              "a stage's row count takes 10 bits of PlannedStage");
// A stage's first row takes the other 20 (persistent_smem_bytes refuses larger matrices);
// rows * blocks then stays within 31 bits for up to 2,048 blocks (Cursor).
constexpr int kMaxPlannedRows = 1 << 20;

}  // namespace lmx::cuda::fused::step_plan
