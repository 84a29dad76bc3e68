// The kernels of the fused decode step (fused_decoder.cpp strings them together). Plain
// pointers and sizes only: the step is captured in a CUDA graph, so every buffer is fixed
// when it is recorded and every value that changes per token (the input token and its
// position) is read from device memory, from `state`.
//
// state (int32 [3]): {token, pos, count}. The LM-head kernel's last block writes the
// argmax there as the next token, advances pos, and appends the token to `history[count]`.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <string>
#include <vector>

#include "backend/cuda/device.h"

namespace lmx::cuda::fused {

using bf16 = __nv_bfloat16;

// How a GEMV forms the vector it multiplies, in every block (the vector is small, and
// recomputing it per block saves a kernel launch and a round trip through memory):
//   v = x (+ add, or + RMSNorm(add; add_norm))      the residual update of the last block
//   x_out = v                                       (block 0 stores it, when x_out is set)
//   v = RMSNorm(v; norm)                            when norm is set
// With `rows` > 1 (batched steps, fused_gemv_rows.cu) every array is [rows, K], row-major,
// and the result is rounded to bf16, as the tensor cores take it.
struct GemvInput {
  const float* x = nullptr;  // [K]
  const float* add = nullptr;  // [K] or null
  const bf16* add_norm = nullptr;
  float* x_out = nullptr;
  const bf16* norm = nullptr;
  float eps = 1e-6f;
  bool gemma = false;  // norm weights are (1 + w)
  int k = 0;
  int rows = 1;  // sequences
};

enum class Epilogue {
  plain,      // y[r] = W[r]·v, rows of up to three stacked matrices
  glu_silu,   // y[r] = silu(Wa[r]·v) * (Wb[r]·v)
  glu_gelu,   // y[r] = gelu_tanh(Wa[r]·v) * (Wb[r]·v)
  logits,     // y[r] = softcap(W[r]·v), then the argmax of y advances `state`
  // The persistent step's greedy LM head (no softcap): the argmax of W[r]·v advances
  // `state` as with logits, found by reading the one-byte copy of W in `filter`
  // (head_filter.cuh) and only the rows that may hold the maximum from W itself. y[r] then
  // holds W[r]·v at those rows, and elsewhere only a bound above it. With `top` > 1 (a
  // draw that keeps at most `top` tokens follows), y[r] holds W[r]·v at every row that may
  // be among the `top` largest, and at the others a bound above it that lies below them.
  argmax,
};

struct GemvOutput {
  // plain: rows of w[0] then w[1] then w[2]; glu: w[0] = gate, w[1] = up; logits: w[0].
  const bf16* w[3] = {nullptr, nullptr, nullptr};
  int rows[3] = {0, 0, 0};
  float* y = nullptr;
  Epilogue epilogue = Epilogue::plain;
  float softcap = 0;
  // logits only: per-block (value, index) partials, the finished-blocks counter (zero
  // between steps), the state and the token history. With several sequences: partials
  // [blocks, rows], state [rows, 3], history [rows, history_len], y [rows, N].
  float2* partial = nullptr;
  unsigned* counter = nullptr;
  int* state = nullptr;
  int* history = nullptr;
  int history_len = 0;
  // argmax only: the rows of W in one byte a weight (head_filter_row_bytes, made by
  // prepare_head_filter), and how many of the largest logits must be exact (1: the argmax).
  const uint8_t* filter = nullptr;
  int top = 1;
};

// What the blocks of a sampled head (Epilogue::argmax with top > 1) exchange in a step
// (persistent_head.cuh's top_threshold), and what the draw reads after it: the rows
// whose logits the step left exact, a superset of the `top` largest. counts[1] may pass
// kHeadListed; then only the first kHeadListed rows are listed.
constexpr int kHeadOffer = 8;     // the most bounds below a block offers the grid
constexpr int kHeadListed = 2048;  // the rows listed at most
struct HeadExchange {
  unsigned* counts = nullptr;  // [2]: blocks that have offered, rows listed; the step zeroes them at its start
  float* offers = nullptr;     // [blocks, min(top, kHeadOffer)]
  int* listed = nullptr;       // [kHeadListed], in no order
};

// The greedy LM head's filter (head_filter.cuh): a copy of the head W [rows, k] (k a
// multiple of 16) in int8 codes with a scale per row, and per row the bounds on how far
// the products it gives can lie from W's own, so that one pass over half the bytes, and
// W's rows only where the bound leaves a doubt, find W·v's argmax exactly as W gives it.
// Each row takes head_filter_row_bytes(k): 16 bytes of constants, then the k codes.
__host__ __device__ constexpr int64_t head_filter_row_bytes(int64_t k) { return 16 + k; }
// Writes the copy of w to `filter` ([rows, head_filter_row_bytes(k)] bytes on the device).
void prepare_head_filter(cudaStream_t stream, const bf16* w, int64_t rows, int k, uint8_t* filter);

// Launch sizes for a GEMV, and how many columns of each of its rows a warp asks L2 to
// fetch ahead (while the previous kernel finishes, and for the next group of rows).
struct GemvShape {
  int rows_per_warp, blocks;
  int prefetch = 0;
  bool early = false;  // GemvTuning::early
  bool preload = false;  // GemvTuning::preload
};
struct GemvTuning {  // defaults; LMX_FUSED_ROWS, _BLOCKS_PER_SM, _PREFETCH, _EARLY and _PRELOAD override
  int rows_per_warp = 0;  // 0: chosen per matrix
  int blocks_per_sm = 8;
  int prefetch = 0;       // -1: one loop trip's columns (measured slower than none)
  // Signal the next kernel at the start rather than after the main loop, so that its blocks
  // load their first weights while this kernel runs (LMX_FUSED_EARLY). Together with
  // `preload`, +6% for Llama and +1-3% for Qwen3 and Gemma3 (bench/NOTES.md, step 11).
  bool early = true;
  // Load each warp's first trip of weights into registers before waiting for the previous
  // kernel (LMX_FUSED_PRELOAD).
  bool preload = true;
};
GemvShape gemv_shape(const GemvOutput& out, int sm_count, const GemvTuning& t);
void launch_gemv(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, const GemvShape& shape);

// The same products for 2 to kMaxStepRows sequences at once, on tensor cores
// (fused_gemv_rows.cu): the weights are read once for all of them.
constexpr int kMaxStepRows = 8;
// Why these products cannot run batched ("" when they can).
std::string gemv_rows_unsupported(const GemvInput& in, const GemvOutput& out);
void launch_gemv_rows(cudaStream_t stream, bool pdl, const GemvInput& in, const GemvOutput& out, int sm_count);
// The most blocks such a launch takes (for the LM head's partials, one per block and sequence).
int gemv_rows_blocks(const GemvInput& in, int sm_count);

// The same products for any number of sequences, each as a cuBLAS GEMM between a kernel
// that forms the vectors and one that finishes the gated activation or the argmax
// (fused_gemv_rows.cu). The scratch: the vectors [rows, K] bf16 for the largest K, and
// the gate and up projections' outputs [2, rows, intermediate] f32. `formed`: the vectors
// are there already (wide_input_formed), and no kernel forms them.
struct WideScratch {
  bf16* vectors = nullptr;
  float* gated = nullptr;
};
std::string gemm_rows_unsupported(const GemvInput& in);
void launch_gemm_rows(const Context& c, bool pdl, const GemvInput& in, const GemvOutput& out, const WideScratch& s,
                      bool formed);

// Token embedding of each sequence: x[r, h] = embed[state[r].token, h] * scale (scale 0 = 1);
// embed [vocab, hidden], and a token outside it takes row 0 (embed_row).
void launch_embed(cudaStream_t stream, bool pdl, const bf16* embed, int vocab, const int* state, float scale,
                  int hidden, float* x, int rows = 1);

// A chunk's softmax partial for one query head: m, l, two unused floats, then the D
// unnormalised sums, which so start 16 bytes in: read and written as float4.
constexpr int kPartialSums = 4;
__host__ __device__ constexpr int partial_stride(int head_dim) { return head_dim + kPartialSums; }

// With several sequences (rows > 1) the arrays hold one block per sequence, each at the
// stride its size gives (qkv, out, partial, counter, the caches [rows, Hkv, slots, D]),
// and pad[r] is sequence r's left padding: its first pad[r] slots are not keys, and its
// RoPE positions are its slots minus pad[r].
struct AttentionStep {
  const float* qkv = nullptr;  // [Hq*D | Hkv*D | Hkv*D] from the QKV GEMV
  const bf16* q_norm = nullptr;  // [D] or null; 16-byte aligned, as inv_freq (CudaFusedDecoder
  const bf16* k_norm = nullptr;  // makes them so): the persistent step copies them with cp.async
  bool gemma = false;
  float eps = 1e-6f;
  const float* inv_freq = nullptr;  // [D/2]
  const int* state = nullptr;
  bf16* k_cache = nullptr;  // [Hkv, slots, D]
  bf16* v_cache = nullptr;
  int slots = 0, window = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 0;
  int chunk = 0, splits = 0;  // keys per block, blocks per kv head
  float* partial = nullptr;   // [Hq, splits, partial_stride(D)]: m, l, two unused, acc[D]
  unsigned* counter = nullptr;  // [Hkv], zero between steps
  float* out = nullptr;       // [Hq*D]
  // Or, where set, the output in bf16 in place of `out` (the streamed attention only): a
  // step on GEMMs reads it as the O product's vectors, formed (wide_input_formed).
  bf16* out_bf16 = nullptr;
  // The persistent step's chunks summed, not merged in the next input (persistent_sum_chunks),
  // or null: [Hq*D] every chunk's weighted values and [Hq] its weights, each against the
  // reference 0, then a u32 flag, raised by a chunk whose max lies too far from it (the
  // next GEMV's input then merges the partials). Zeroed by the phase before.
  float* sums = nullptr;
  float sums_headroom = 64;  // the highest max a chunk may have (summed_chunks)
  bool early = false;         // signal the next kernel at the start (GemvTuning::early)
  int rows = 1;
  const int* pad = nullptr;   // [rows], or null: no padding
};
// Keys per block and blocks per kv head for a cache of `slots` positions.
void attention_split(int slots, int kv_heads, int& chunk, int& splits);
// Longer chunks than a.chunk where a sequence's attention would take more than `tasks`
// blocks (kv heads x chunks), as long as a block's scratch stays within `max_scratch`
// bytes; never shorter ones.
void fit_attention_split(AttentionStep& a, int tasks, size_t max_scratch);
void launch_attention(cudaStream_t stream, bool pdl, const AttentionStep& a);
// The same attention for batched steps, a block per sequence and kv head streaming all its
// visible keys from the cache (stream_attention.cu); a.chunk, a.splits, a.partial and
// a.counter are not read.
bool stream_attention_supported(int n_heads, int n_kv_heads, int head_dim);
// `resident`: blocks of kThreads threads that run at once; a larger grid takes blocks of half that.
void launch_stream_attention(cudaStream_t stream, bool pdl, const AttentionStep& a, int resident);

// The persistent step (fused_persistent.cu; its planning in fused_persistent_plan.cu, which
// fused_persistent_runner.cpp runs for the decoder):
// the same GEMVs and attention as phases of one cooperative kernel with one block per SM,
// a grid-wide barrier between phases. The step starts with the embedding of state[0] into
// x; the phases follow. Aligned so that the kernel can copy a phase to shared memory 16
// bytes at a time.
struct alignas(16) StepPhase {
  enum class Kind : int { gemv, attention };
  Kind kind = Kind::gemv;
  GemvInput in;  // gemv
  GemvOutput out;
  AttentionStep attn;  // attention
  // A gate/up phase with the down projection fused in (persistent_fuse_down; down_map null:
  // none). Each block multiplies the activations it computed by the same columns of the
  // down weights and adds the products into down_y, which an earlier phase zeroes.
  const void* down_map = nullptr;  // CUtensorMap of the down weights [down_rows, out.rows[0]], on the device
  float* down_y = nullptr;         // [down_rows]
  int down_rows = 0;
  int down_units = 0;      // 8-column units of down a block reads (at least its share)
  int down_box_rows = 0;   // rows of down per tensor-map box
  int down_boxes = 1;      // boxes per stage: down_box_rows * down_boxes rows (at most kMaxDownStageRows)
  const bf16* down_w = nullptr;  // the weights the map reads
  // Where a stage takes two boxes: the same boxes from a copy that holds each block's
  // columns of down contiguously (persistent_tile_down), or null.
  const bf16* down_tiles = nullptr;
  // Zeroed by this phase, before its input (every block a share): a fused down's output.
  float* zero = nullptr;
  int zero_n = 0;
};

// Whether a phase of a step on GEMMs (launch_gemm_rows) finds its vectors formed: the
// gated activation before it writes them, in bf16, for the product that reads its output
// (the down projection), and so does an attention with a bf16 output for the O
// projection, where that product adds and norms nothing.
inline bool wide_input_formed(const StepPhase* before, const StepPhase& p) {
  if (!before || p.in.add || p.in.norm) return false;
  if (before->kind == StepPhase::Kind::attention) return before->attn.out_bf16 && before->attn.out == p.in.x;
  const bool gated = before->out.epilogue == Epilogue::glu_silu || before->out.epilogue == Epilogue::glu_gelu;
  return gated && before->out.y == p.in.x;
}

struct PersistentStep {
  const StepPhase* phases = nullptr;  // on the device
  int n_phases = 0;
  unsigned long long* barrier = nullptr;  // zero before the first step; only grows
  int barriers = 0;  // grid barriers a step (persistent_barriers)
  // The attention outputs finished so far in the step, counted in place of a grid barrier
  // after each attention (persistent_attention_handoff), or null; zero between steps.
  unsigned* attention_done = nullptr;
  // A head with Epilogue::argmax and top > 1 (top_threshold), or nulls.
  HeadExchange head;
  const bf16* embed = nullptr;
  const int* state = nullptr;
  float embed_scale = 0;
  int vocab = 0;  // rows of embed (embed_row)
  int hidden = 0;
  float* x = nullptr;  // [hidden]
  unsigned vector_bytes = 0;  // shared memory for input vectors (persistent_smem_bytes)
  int slots = 0;              // of the weight ring (persistent_smem_bytes)
  int lookahead = 0;          // stages the copies may run past the workers' phase (persistent_lookahead)
  const struct PlannedStage* stages = nullptr;  // [blocks, stages_per_block] (persistent_stage_lists)
  int stages_per_block = 0;
  // Measurement only, or null: [kTimes * n_phases] ns summed over steps, per phase as
  // block 0's thread 0 saw it: the phase, the barrier after it, forming the input, its
  // warp's waits for weights, its warp's rows (dot products and outputs); then how much
  // later than block 0 the last block arrived at the barrier, and (scratch, reset every
  // step) that last arrival's time. An attention phase's tasks put their parts where a
  // GEMV's input, waits and rows go, and one more after those seven (attention_part_time).
  unsigned long long* timing = nullptr;
};
constexpr int kTimes = 8;
// Where an attention task's part (attention_task's marks 0-3) goes among a phase's kTimes.
__host__ __device__ constexpr int attention_part_time(int part) { return part < 3 ? 2 + part : 7; }
// Whether the persistent kernel can hand the next GEMV each attention's outputs through a
// count of them (PersistentStep::attention_done) rather than a grid barrier: the blocks
// with no attention task go on to that GEMV and wait there for the count, and only the
// blocks that finish an output (finished_outputs) arrive. It needs a grid barrier before
// the last phase, where the count is reset. LMX_FUSED_HANDOFF=0 turns it off.
bool persistent_attention_handoff(const std::vector<StepPhase>& phases);
// Grid barriers a step: one after the embedding and one between phases, less one after
// each attention with the handoff.
int persistent_barriers(const std::vector<StepPhase>& phases, bool handoff);
// Fuses each down projection into the gate/up phase before it, where the kernel can take
// it on `blocks` blocks: one grid barrier and one input fewer per layer. The down phase
// leaves `phases` (and its name `names`); the phase before the gate/up zeroes the
// output. The fused phases' tensor maps are returned, to be copied to `device_maps` (room
// for one per layer) before the first step. `fuse` false (a deterministic step: the fused
// down's f32 atomics add in an order that varies from run to run) or LMX_FUSED_DOWN=0
// turns this off.
std::vector<CUtensorMap> persistent_fuse_down(std::vector<StepPhase>& phases, std::vector<const char*>& names,
                                              int blocks, const void* device_maps, bool fuse = true);
// Narrow boxes stream slowly: Qwen3-0.6B's 48 bytes of each row of down reached 2.0 TB/s
// over the grid where the same bytes read contiguously reached 2.6 (bench/NOTES.md, p31).
// So where a fused down's stage takes two boxes (the narrow ones), its weights can be read
// from a tiled copy: block b's boxes one after another, rows [0, down_rows rounded up to
// whole boxes) of its 8·down_units columns (zeros past the matrix), which a stage's one
// bulk copy lays out in shared memory as its boxes' copies do. The bytes the copies of
// these phases on `blocks` blocks take (0: none applies):
size_t persistent_down_tile_bytes(const std::vector<StepPhase>& phases, int blocks);
// Points those phases at their copies in `tiles` (persistent_down_tile_bytes of them),
// and with `fill` makes the copies on `stream`.
void persistent_tile_down(cudaStream_t stream, std::vector<StepPhase>& phases, int blocks, bf16* tiles, bool fill);
// A stage of one block's walk through the step, as its workers take them: rows
// [row, row + n) of segment `seg` (for gate/up with a fused down: 1 is the down), in four
// bytes, so that a larger model's list does not cost the ring a slot (Llama-3.1-8B's
// shapes: 3,668 stages a block). n == 0 ends a phase's stages. row < 2^20 holds because
// persistent_smem_bytes refuses larger matrices (kMaxPlannedRows); n <= 512 (a fused
// down's stage of two boxes, kMaxDownStageRows).
struct PlannedStage {
  uint32_t packed;  // row << 12 | seg << 10 | n
  __host__ __device__ int row() const { return int(packed >> 12); }
  __host__ __device__ int seg() const { return int(packed >> 10 & 3u); }
  __host__ __device__ int n() const { return int(packed & 1023u); }
};
// Every block's stages for a grid of `blocks`: [blocks, *per_block], each phase's stages
// (none for an attention) followed by an entry with n == 0, and one more such entry after
// the last phase's, which the workers read ahead. The walk has divisions and a chain of
// dependent loads (about 0.35 µs a stage, bench/NOTES.md p19); done once per plan here, it
// costs the workers one shared-memory load a stage. The copying warp walks on its own,
// ahead of them.
std::vector<PlannedStage> persistent_stage_lists(const std::vector<StepPhase>& phases, int blocks, int* per_block);
// The persistent kernel's grid: `sm_count` blocks, or fewer where that gives every block
// the same share of a fused down projection's whole-slot stages (LMX_FUSED_GRID sets it).
// `fuse_down`: as persistent_fuse_down's `fuse`.
int persistent_grid(const std::vector<StepPhase>& phases, int sm_count, bool fuse_down = true);
// Longer attention chunks where a cache has more of them than the grid has blocks (the
// persistent kernel runs a block's tasks one after another); at least a.chunk keys, and a
// task's scratch at most `largest` bytes (persistent_scratch_limit).
void persistent_attention_split(AttentionStep& a, int blocks, size_t largest);
// The floats that the sums of these phases' attentions take where their chunks are summed
// rather than merged (summed_chunks): each attention whose chunks the next GEMV's input
// would merge (one kv head), after a GEMV that zeroes nothing else. 0 in a deterministic
// step (`on` false: the sums' f32 reductions add in an order that varies from run to run)
// and with LMX_FUSED_SUMS=0.
size_t persistent_sums_floats(const std::vector<StepPhase>& phases, bool on = true);
// Points each such attention at its own sums in `sums` (persistent_sums_floats of them),
// which the GEMV before it zeroes every step.
void persistent_sum_chunks(std::vector<StepPhase>& phases, float* sums);
// The most shared memory an attention task may take in a plan of these phases and
// `stages_per_block` planned stages while the weight ring keeps two slots.
size_t persistent_scratch_limit(const std::vector<StepPhase>& phases, int stages_per_block);
// Dynamic shared memory the kernel needs for these phases on `blocks` blocks with
// `stages_per_block` planned stages, of which *vector_bytes for input vectors, and the
// ring's slots; or 0 (with the reason in *why) when it cannot run them.
size_t persistent_smem_bytes(const std::vector<StepPhase>& phases, int blocks, int stages_per_block,
                             unsigned* vector_bytes, int* slots, std::string* why);
// How many stages of the phases after the one its workers are in a block's copying warp
// may have issued: half the ring's `slots` (at least one), or LMX_FUSED_LOOKAHEAD's count
// (`slots` and up: as far as the ring reaches). The copies in flight at a phase boundary
// slow the grid barrier's and the next input's trips to L2 more than they save once the
// workers reach them (bench/NOTES.md, p33).
int persistent_lookahead(int slots);
// A form of the persistent kernel: compiled for one attention shape (head_dim, and query
// heads a kv head: `group`), or for any (0, 0); with the merge of one kv head's chunks in
// the next GEMV's input (merged_by_next_gemv) and inputs wider than it holds in registers
// (staged_input), or without. A form without what it need not run is smaller code: the
// general kernel's is 153 KB, more than an SM's instruction cache; the forms of the three
// models measured most, 111-131 KB (bench/NOTES.md, p27).
struct PersistentKernel {
  int head_dim = 0, group = 0;
  bool merge_input = true, staged = true;
  bool two_boxes = true;  // a fused down's stage of two boxes (StepPhase::down_boxes)
  int form = 0;  // its place among the kernel's forms (the general one: 0), for the launch
};
// The form that runs these phases (their attention's chunks planned): the first
// specialised one that fits them, else the general one (also with LMX_FUSED_SPECIALISED=0).
PersistentKernel persistent_kernel(const std::vector<StepPhase>& phases);
// Blocks of the cooperative launch (one per SM), or 0 when a block does not fit.
int persistent_blocks(int sm_count, size_t smem, const PersistentKernel& kernel);
// `pdl`: as a programmatic dependent launch, whose blocks start as the previous kernel's
// exit (the persistent kernel waits before it reads anything a kernel writes).
void launch_persistent(cudaStream_t stream, const PersistentStep& s, int blocks, size_t smem, bool pdl,
                       const PersistentKernel& kernel);
// Prints (stderr) where the profiled steps' time went: per kind of phase, block 0's mean µs
// (PersistentStep::timing, copied to the host: kTimes sums a phase).
void report_persistent_profile(const std::vector<unsigned long long>& times, int64_t steps,
                               const std::vector<const char*>& names, const PersistentKernel& k, int blocks,
                               int slots, int lookahead);

}  // namespace lmx::cuda::fused
