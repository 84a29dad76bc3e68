// The CUDA fused decode step (ops/fused_decoder.h), for one sequence or a batch that
// shares the caches. The step is planned once per set of caches as a list of
// phases. Per layer: norm+QKV GEMV, attention (q/k norm, RoPE, cache store, split-K,
// merge), O GEMV, residual+norm+gate/up GEMV with the activation, down GEMV. The residual
// add of each block happens in the prologue of the next GEMV, which also stores the new
// residual stream; two f32 residual buffers alternate so that no phase overwrites what
// its own blocks still read. The LM head GEMV ends the step and feeds its argmax back as
// the next token, so greedy steps follow one another without the host. A batch runs the
// same phases with every buffer [rows, ...]: its GEMVs are tensor-core products over all
// sequences' vectors (fused_gemv_rows.cu; past 8 sequences, cuBLAS GEMMs), its attention
// a block per sequence, kv head and chunk, or where sequences × kv heads reach 64, one
// streaming all the keys (stream_from).
//
// Two ways to run the plan:
//   - a kernel per phase (fused_gemv.cu, fused_attention.cu), recorded once into a CUDA
//     graph and replayed per token;
//   - persistent (one sequence, where it fits): one cooperative kernel per step that runs
//     every phase with grid barriers between them and streams the weights ahead through
//     shared memory (fused_persistent.cu). It folds each down GEMV into the gate/up phase
//     before it (not in a deterministic step, whose sums must not depend on the order of
//     f32 atomics; LMX_FUSED_DOWN=0 keeps them apart too), and hands each attention's outputs
//     to the next phase through a count rather than a grid barrier (LMX_FUSED_HANDOFF=0
//     puts the barrier back). Its host side (that plan, its arrays, the launch) is
//     fused_persistent_runner.cpp.
// The persistent step is the default: on the H200, batch 1, it runs Llama-3.2-1B 17%,
// Qwen3-0.6B 9% and Gemma3-1B 27% faster than the graph (bench/NOTES.md, p15).
// LMX_FUSED_PERSISTENT=0 turns it off.
//
// Each persistent step is a programmatic dependent launch of the one before, so that its
// blocks start as that step's exit, and the tokens for the host are copied on a stream of
// their own, since a copy between two steps would keep them apart: 0.9-1.2% together
// (bench/NOTES.md, p23).
//
// For measurement: LMX_FUSED_GRAPH=0 launches the per-phase kernels one by one instead of
// replaying a graph; LMX_FUSED_PDL=0 turns programmatic dependent launch off (for both
// paths); LMX_FUSED_TOKEN_STREAM=0 copies the tokens on the compute stream;
// LMX_FUSED_GRID sets the persistent kernel's blocks (persistent_grid), LMX_FUSED_SLOTS
// the most slots of its ring (persistent_smem_bytes);
// LMX_FUSED_SKIP (a list of qkv, attention, o, glu, down, head) leaves those phases out
// of the kernel-per-phase path, which gives wrong results but shows what each costs
// inside the real step;
// LMX_FUSED_HEAD_FILTER=0 keeps the exact LM head where set_logits_needed would filter it
// (PersistentRunner::filter_head);
// LMX_FUSED_BATCH_SPLIT=0 gives a batch's attention the single sequence's short chunks;
// LMX_FUSED_ROWS_HELD=N copies N chunks of a batched GEMV's first weights before its wait
// (fused_gemv_rows.cu; 2 by default, 0 none);
// LMX_FUSED_WIDE_FROM=N runs batches of N or more sequences on cuBLAS GEMMs (wide_step);
// LMX_FUSED_STREAM_FROM, LMX_FUSED_STREAM_MIN (stream_from) and LMX_FUSED_STREAM_THREADS
// (128 or 256) say where and in what blocks their attention streams the keys, and
// LMX_FUSED_STREAM_SPLIT=1, 2 or 4 caps the blocks a kv head takes (4 by default);
// LMX_FUSED_PROFILE=1 prints where the persistent kernel's time goes. LMX_FUSED_ROWS,
// LMX_FUSED_BLOCKS_PER_SM, LMX_FUSED_PREFETCH, LMX_FUSED_EARLY and LMX_FUSED_PRELOAD
// override the GEMV launch choices (fused_kernels.h, GemvTuning).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/fused_kernels.h"
#include "backend/cuda/fused_persistent_runner.h"
#include "core/error.h"
#include "ops/fused_decoder.h"
#include "ops/ops.h"

namespace lmx::cuda {
namespace {

using fused::bf16;

int rows_from(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return std::max(2, v ? std::atoi(v) : fallback);
}
// Whether a batched step runs each product as a cuBLAS GEMM (fused::launch_gemm_rows) rather
// than as the tensor-core GEMV of fused_gemv_rows.cu, which takes at most kMaxStepRows.
// Measured with 128 + 256 tokens (bench/NOTES.md p47), the GEMMs against the GEMV:
// Gemma3-1B 1.09x at 2 and 3 sequences, 1.10x at 4, 1.35x at 6, 1.06x at 8: the GEMV forms
// its sandwich-normed inputs in every block, in three passes. Llama-3.2-1B 0.98x at 2, 1.00x
// at 4, 1.29x at 6, 1.26x at 8: every block of the GEMV reads all [rows, intermediate] of
// the down projection's inputs. Qwen3-0.6B 0.84x at 4, 0.87x at 6, 0.98x at 8: its products
// are small, and each GEMM has a fixed cost of a few µs. So the GEMMs take sandwich norms,
// and rows × intermediate from kWideDownInputs (Llama from 5 sequences, Qwen3 never below
// 9). LMX_FUSED_WIDE_FROM=N: the GEMMs from N sequences (2 to kMaxStepRows + 1), any model.
constexpr int64_t kWideDownInputs = 40960;
bool wide_step(const fast::FusedDecoderWeights& w, int rows) {
  if (rows < 2) return false;
  if (std::getenv("LMX_FUSED_WIDE_FROM"))
    return rows >= std::min(rows_from("LMX_FUSED_WIDE_FROM", 0), fused::kMaxStepRows + 1);
  return rows > fused::kMaxStepRows || w.sandwich || rows * w.layers[0].down.shape(1) >= kWideDownInputs;
}
// From how many sequences a batched step's attention streams the keys (launch_stream_attention),
// not chunks, where its blocks (a sequence's kv head each) reach stream_min_blocks: fewer idle SMs
// (Gemma3-1B's one kv head: 0.93x the chunks at batch 16, 1.05x at 64; Qwen3's eight: 1.20x at 16).
// That holds on the tensor-core GEMVs' batches too: at 8 sequences (64 blocks) Qwen3-0.6B ran
// 1.08x with 128-token prompts and 1.09x with 1,024, Llama-3.2-1B 1.05x and 1.12x. Below 64
// blocks the chunks stay: 32 blocks gained 2-4% with short prompts and lost 3-27% with 1,024
// tokens, where each block streams a long cache alone (bench/NOTES.md, p45).
int stream_from() { return rows_from("LMX_FUSED_STREAM_FROM", 2); }
int stream_min_blocks() { return rows_from("LMX_FUSED_STREAM_MIN", 64); }

const bf16* bf(const Array& a) { return a.valid() ? static_cast<const bf16*>(a.raw()) : nullptr; }
float* f32(const Array& a) { return static_cast<float*>(a.raw()); }

void check_weight(const Array& a, Device d, const char* what) {
  LMX_CHECK(a.valid() && a.dtype() == Dtype::bf16 && a.device() == d && a.is_contiguous(), "fused decode", what,
            " must be a contiguous bf16 array on ", d.str());
}

class CudaFusedDecoder final : public fast::FusedDecoder {
 public:
  CudaFusedDecoder(int device, fast::FusedDecoderWeights w, int rows)
      : device_(device), rows_(rows), w_(std::move(w)), graphs_(switch_on("LMX_FUSED_GRAPH")),
        pdl_(switch_on("LMX_FUSED_PDL")),
        wide_rows_(wide_step(w_, rows)),  // w_: w is moved from by now
        stream_attention_(rows > 1 && rows >= stream_from()) {
    if (const char* skip = std::getenv("LMX_FUSED_SKIP")) skip_ = skip;
    auto env_int = [](const char* name, int fallback) {
      const char* v = std::getenv(name);
      return v ? std::atoi(v) : fallback;
    };
    tuning_.rows_per_warp = env_int("LMX_FUSED_ROWS", tuning_.rows_per_warp);
    tuning_.blocks_per_sm = std::max(1, env_int("LMX_FUSED_BLOCKS_PER_SM", tuning_.blocks_per_sm));
    tuning_.prefetch = env_int("LMX_FUSED_PREFETCH", tuning_.prefetch);
    tuning_.early = env_int("LMX_FUSED_EARLY", tuning_.early) != 0;
    tuning_.preload = env_int("LMX_FUSED_PRELOAD", tuning_.preload) != 0;
    const Device d = Device::cuda(device);
    check_weight(w_.embed, d, "the embedding");
    check_weight(w_.lm_head, d, "the LM head");
    check_weight(w_.final_norm, d, "the final norm");
    hidden_ = w_.embed.shape(1), vocab_ = w_.lm_head.shape(0);
    int64_t qkv = 0, heads = 0, inter = 0;
    for (const fast::FusedLayerWeights& l : w_.layers) {
      for (const Array* a : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down, &l.input_norm, &l.post_attention_norm})
        check_weight(*a, d, "a layer weight");
      for (const Array* a : {&l.q_norm, &l.k_norm})
        if (a->valid()) check_weight(*a, d, "a q/k norm weight");
      if (w_.sandwich)
        for (const Array* a : {&l.pre_feedforward_norm, &l.post_feedforward_norm})
          check_weight(*a, d, "a feed-forward norm weight");
      qkv = std::max(qkv, (l.n_heads + 2 * l.n_kv_heads) * l.head_dim);
      heads = std::max(heads, l.n_heads * l.head_dim);
      inter = std::max(inter, l.gate.shape(0));
      max_kv_heads_ = std::max(max_kv_heads_, l.n_kv_heads);
      stream_attention_ &= fused::stream_attention_supported(int(l.n_heads), int(l.n_kv_heads), int(l.head_dim)) &&
                           rows_ * l.n_kv_heads >= stream_min_blocks();
    }
    // The persistent step copies the RoPE frequencies and the q/k norms' weights with 16-byte
    // cp.async (copy_constants): an array off that alignment (a view) gets a copy of its own.
    for (fast::FusedLayerWeights& l : w_.layers)
      for (Array* a : {&l.inv_freq, &l.q_norm, &l.k_norm})
        if (a->valid() && reinterpret_cast<uintptr_t>(a->raw()) % 16 != 0) *a = lmx::copy(*a);
    // Every per-token buffer holds one block per sequence.
    auto buf = [&](int64_t n, Dtype t = Dtype::f32) { return Array({std::max<int64_t>(n * rows_, 1)}, t, d); };
    const Context& c = ctx();
    xa_ = buf(hidden_), xb_ = buf(hidden_), o_ = buf(hidden_), mlp_ = buf(hidden_);
    qkv_ = buf(qkv), attn_ = buf(heads), glu_ = buf(inter);
    logits_ = rows_ == 1 ? buf(vocab_) : Array({rows_, vocab_}, Dtype::f32, d);
    if (wide_rows_) {  // the GEMMs' inputs for the widest product, and the up projection's outputs
      wide_vectors_ = buf(std::max({hidden_, heads, inter}), Dtype::bf16), wide_gated_ = buf(2 * inter);
      wide_.vectors = static_cast<bf16*>(wide_vectors_.raw()), wide_.gated = f32(wide_gated_);
    }
    fused::GemvInput head_in;
    head_in.k = int(hidden_), head_in.rows = rows_, head_in.norm = bf(w_.final_norm);
    // One (value, index) partial per block of the LM head: the graph's GEMV, or the
    // persistent step's one block per SM (more than the GEMV takes for a small vocabulary).
    const int64_t head_blocks =
        rows_ == 1 ? std::max(fused::gemv_shape(head_output(), c.sm_count, tuning_).blocks, c.sm_count)
                   : fused::gemv_rows_blocks(head_in, c.sm_count);
    head_partial_ = buf(2 * head_blocks);
    counters_ = buf(max_kv_heads_ + 1, Dtype::u32);
    fill(c, counters_, 0);
    state_ = buf(3, Dtype::i32), pads_ = buf(1, Dtype::i32);
    history_ = buf(kHistory, Dtype::i32);
    set_inputs(std::vector<int32_t>(size_t(rows_), 0), std::vector<int64_t>(size_t(rows_), 0), {});
    if (rows == 1 && switch_on("LMX_FUSED_PERSISTENT"))
      persistent_ = std::make_unique<fused::PersistentRunner>(fused::PersistentModel{
          device, w_.lm_head, hidden_, vocab_, w_.softcap, int64_t(w_.layers.size()), w_.deterministic});
  }
  ~CudaFusedDecoder() override {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (copies_) cudaStreamSynchronize(copies_), cudaStreamDestroy(copies_);
    for (cudaEvent_t e : ready_) cudaEventDestroy(e);
    for (cudaEvent_t e : stepped_) cudaEventDestroy(e);
    if (pinned_) cudaFreeHost(pinned_);
  }

  int rows() const override { return rows_; }

  void queue_token() override {
    LMX_CHECK(steps_ > 0 && queued_ - read_ < kRing, "fused decode", "no step to read, or ", kRing,
              " tokens already queued");
    const Context& c = ctx();
    if (!pinned_) {
      check(cudaMallocHost(reinterpret_cast<void**>(&pinned_), size_t(kRing) * rows_ * sizeof(int32_t)),
            "cudaMallocHost");
      ready_.resize(kRing), stepped_.resize(kRing);
      for (cudaEvent_t& e : ready_) check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
      for (cudaEvent_t& e : stepped_) check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    }
    const int slot = int(queued_++ % kRing);
    // Each sequence's token of the last step: one column of the history [rows, kHistory].
    const auto* h = static_cast<const int32_t*>(history_.raw()) + (steps_ - 1) % kHistory;
    // The copy runs on a stream of its own, after the step: on the compute stream it would
    // stand between this step and the next, which could then not start as this one ends.
    cudaStream_t on = c.stream;
    if (token_stream_) {
      if (!copies_) check(cudaStreamCreateWithFlags(&copies_, cudaStreamNonBlocking), "cudaStreamCreate");
      check(cudaEventRecord(stepped_[size_t(slot)], c.stream), "cudaEventRecord");
      check(cudaStreamWaitEvent(copies_, stepped_[size_t(slot)], 0), "cudaStreamWaitEvent");
      on = copies_;
    }
    check(cudaMemcpy2DAsync(pinned_ + size_t(slot) * rows_, sizeof(int32_t), h, kHistory * sizeof(int32_t),
                            sizeof(int32_t), size_t(rows_), cudaMemcpyDeviceToHost, on),
          "cudaMemcpy2DAsync");
    check(cudaEventRecord(ready_[size_t(slot)], on), "cudaEventRecord");
    copied_[size_t(slot)] = (steps_ - 1) % kHistory;
  }

  // Before a step writes its history column: a copy still queued from that column (an
  // earlier step's, kHistory steps or a set_inputs ago) must be done first.
  void guard_history(cudaStream_t s) {
    for (int64_t i = read_; i < queued_; ++i) {
      const size_t slot = size_t(i % kRing);
      if (copied_[slot] == (steps_ - 1) % kHistory)
        check(cudaStreamWaitEvent(s, ready_[slot], 0), "cudaStreamWaitEvent");
    }
  }

  void reset() override {
    // A copy still queued writes only its own pinned slot, in order on its stream; waiting
    // for it keeps the ring's slots plain to reason about.
    if (copies_) check(cudaStreamSynchronize(copies_), "cudaStreamSynchronize");
    read_ = queued_;
    steps_ = 0;
    edits_ = {};
    needed_ = 0;  // as a new decoder; the plan stays until a step needs another
  }

  std::vector<int32_t> wait_tokens() override {
    LMX_CHECK(read_ < queued_, "fused decode", "no token queued");
    const int slot = int(read_++ % kRing);
    check(cudaEventSynchronize(ready_[size_t(slot)]), "cudaEventSynchronize");
    raise_fault(ctx());
    return checked(std::vector<int32_t>(pinned_ + size_t(slot) * rows_, pinned_ + size_t(slot + 1) * rows_));
  }

  // A step's ids, refused where a sequence's step chose none (fused_common.cuh, embed_row).
  std::vector<int32_t> checked(std::vector<int32_t> ids) const {
    fast::check_chosen(ids, vocab_, "fused decode");
    return ids;
  }

  void set_inputs(std::span<const int32_t> tokens, std::span<const int64_t> slots,
                  std::span<const int64_t> pads) override {
    LMX_CHECK(int64_t(tokens.size()) == rows_ && int64_t(slots.size()) == rows_ &&
                  (pads.empty() || int64_t(pads.size()) == rows_),
              "fused decode", "expected ", rows_, " tokens, slots and pads (or no pads), got ", tokens.size(), ", ",
              slots.size(), " and ", pads.size());
    std::vector<int32_t> state, pad;
    for (int64_t r = 0; r < rows_; ++r) {
      const int64_t slot = slots[size_t(r)], p = pads.empty() ? 0 : pads[size_t(r)];
      LMX_CHECK(slot >= 0 && slot < INT32_MAX && p >= 0 && p <= slot, "fused decode", "sequence ", r, ": slot ",
                slot, " with ", p, " slots of padding is out of range");
      state.insert(state.end(), {tokens[size_t(r)], int32_t(slot), 0});
      pad.push_back(int32_t(p));
    }
    steps_ = 0;
    edits_ = {};  // their counts lack the new inputs: set_edits again
    // Through pageable memory: the copies are staged before these calls return.
    check(cudaMemcpyAsync(state_.raw(), state.data(), state.size() * 4, cudaMemcpyHostToDevice, ctx().stream),
          "cudaMemcpyAsync");
    check(cudaMemcpyAsync(pads_.raw(), pad.data(), pad.size() * 4, cudaMemcpyHostToDevice, ctx().stream),
          "cudaMemcpyAsync");
  }

  void step(std::span<const fast::FusedCacheView> caches) override {
    LMX_CHECK(caches.size() == w_.layers.size(), "fused decode", "got ", caches.size(), " layer caches for ",
              w_.layers.size(), " layers");
    // The caches by address and length: a recycled decoder (reset) may be handed caches
    // that the allocator placed where the last ones were, with other lengths.
    std::vector<BoundCache> bound;
    for (const fast::FusedCacheView& v : caches) bound.push_back({v.k.raw(), v.v.raw(), v.k.shape(2)});
    const Context& c = ctx();
    ++steps_;
    if (copies_) guard_history(c.stream);
    if (bound != bound_ || needed_ != planned_needed_) {  // new caches or head (or the first step)
      prepare(caches);
      plan_ = plan();
      if (persistent_) persistent_->prepare(c.stream, plan_, names_, needed_);
      if (exec_) cudaGraphExecDestroy(exec_), exec_ = nullptr;
      bound_ = bound;
      planned_needed_ = needed_;
    }
    if (persistent_runs()) {
      fused::PersistentStep p;
      p.embed = bf(w_.embed), p.vocab = int(w_.embed.shape(0)), p.state = state_i(), p.embed_scale = w_.embed_scale;
      p.hidden = int(hidden_), p.x = f32(xa_);
      return persistent_->launch(c.stream, p, pdl_);
    }
    if (graphs_ && exec_) {
      check(cudaGraphLaunch(exec_, c.stream), "cudaGraphLaunch");
      return;
    }
    // Run this step directly, which also checks every launch, then record the same
    // launches for the steps that follow.
    record(c.stream);
    if (!graphs_) return;
    cudaGraph_t graph = nullptr;
    check(cudaStreamBeginCapture(c.stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    try {
      record(c.stream);
    } catch (...) {
      cudaStreamEndCapture(c.stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    check(cudaStreamEndCapture(c.stream, &graph), "cudaStreamEndCapture");
    const cudaError_t e = cudaGraphInstantiate(&exec_, graph, 0);
    cudaGraphDestroy(graph);
    check(e, "cudaGraphInstantiate");
  }

  const Array& logits() const override {
    LMX_CHECK(!filtered_step(), "fused decode", "the last step kept only its ", kept(),
              " (set_logits_needed): no logits to read");
    return logits_;
  }

  void set_logits_needed(int top) override {
    LMX_CHECK(top >= 0, "fused decode", "set_logits_needed(", top, "): the count of logits needed is 0 or more");
    needed_ = top;  // the next step plans anew where its plan was made for another count
  }

  void draw(const std::optional<fast::SampleFilter>& filter,
            std::span<const uint64_t> words) override {
    LMX_CHECK(steps_ > 0 && (!filter || int64_t(words.size()) == rows_), "fused decode",
              "a draw needs a step before it and ", rows_, " random words, got ", words.size());
    // A step that kept its `top` largest logits exact (the others below them) serves a draw
    // that keeps no more of them, with no edits before it: the same tokens survive its
    // top-k, with the same logits.
    const int top = filtered_step() ? filtered() : 0;
    LMX_CHECK(top == 0 || (top > 1 && filter && filter->top_k >= 1 && filter->top_k <= top &&
                           !edits_.starts.valid()),
              "fused decode", "the last step kept only its ", kept(), " (set_logits_needed): a draw from it needs ",
              top > 1 ? "a top-k no larger and no logit edits" : "more logits");
    const Context& c = ctx();
    Array x = reshape(logits_, {rows_, vocab_});
    // state [rows, 3] holds each sequence's next input in column 0; history [rows, kHistory]
    // the last step's tokens in column (steps - 1) % kHistory. The draw writes both.
    auto* history = static_cast<int32_t*>(history_.raw());
    if (edits_.starts.valid()) {
      // The previous draw (the column before) counts from the second draw on.
      const int32_t* prev = count_prev_ ? history + (steps_ - 2) % kHistory : nullptr;
      cuda::edit_counted(c, x, edited_, counts_, prev, kHistory, edits_.starts, edits_.entries,
                         penalties_);
      count_prev_ = true;
      x = edited_;
    }
    const DrawTargets to{state_i(), 3, history + (steps_ - 1) % kHistory, kHistory};
    if (filter) {
      // A filtered head lists the rows it left exact: the draw takes them alone.
      const fused::HeadExchange head = top > 1 ? persistent_->head_exchange() : fused::HeadExchange{};
      const ListedRows listed{head.listed, head.counts ? head.counts + 1 : nullptr, fused::kHeadListed};
      cuda::sample_tokens(c, x, words, *filter, to, listed);
    } else {
      Array ids({rows_}, Dtype::i32, Device::cuda(device_));
      cuda::argmax(c, x, ids);
      cuda::put_tokens(c, ids, to);
    }
  }

  void set_edits(std::span<const int64_t> starts, std::span<const fast::LogitEdit> edits,
                 const fast::Penalties& penalties) override {
    if (starts.empty()) {
      edits_ = {};
      return;
    }
    edits_ = fast::pack_edits(rows_, vocab_, starts, edits, penalties, Device::cuda(device_));
    penalties_ = penalties;
    if (!counts_.valid()) {
      counts_ = Array({rows_, vocab_}, Dtype::i32, Device::cuda(device_));
      edited_ = Array({rows_, vocab_}, Dtype::f32, Device::cuda(device_));
    }
    cuda::set_counts(ctx(), counts_, edits_.starts, edits_.entries);
    count_prev_ = false;
  }

  const char* path() const override {
    if (plan_.empty()) return "";
    if (persistent_runs()) return "persistent";
    if (wide_rows_) return graphs_ ? "gemm-graph" : "gemm-kernels";
    return graphs_ ? "graph" : "kernels";
  }

  std::vector<int32_t> tokens(int n) override {
    LMX_CHECK(n >= 0 && n <= steps_ && n <= kHistory, "fused decode", "asked for the last ", n,
              " tokens of ", steps_, " steps");
    // Each sequence's history is a ring of kHistory tokens: the last n steps are at most two
    // runs of it. by_row [rows, n]; returned step-major.
    std::vector<int32_t> by_row(size_t(n) * rows_), out(by_row.size());
    const Context& c = ctx();
    const int first = int((steps_ - n) % kHistory), run = std::min(n, kHistory - first);
    const auto* h = static_cast<const int32_t*>(history_.raw());
    auto copy = [&](int32_t* dst, const int32_t* src, int len) {
      if (len > 0)
        check(cudaMemcpy2DAsync(dst, size_t(n) * 4, src, kHistory * 4, size_t(len) * 4, size_t(rows_),
                                cudaMemcpyDeviceToHost, c.stream),
              "cudaMemcpy2DAsync");
    };
    copy(by_row.data(), h + first, run);
    copy(by_row.data() + run, h, n - run);
    synchronize(c);
    for (int64_t r = 0; r < rows_; ++r)
      for (int i = 0; i < n; ++i) out[size_t(i) * rows_ + r] = by_row[size_t(r) * n + i];
    return checked(std::move(out));
  }

 private:
  static constexpr int kHistory = 1 << 14;
  static constexpr int kRing = 8;  // tokens queued for the host at most

  const Context& ctx() const { return context(device_); }

  fused::GemvOutput head_output() const {
    fused::GemvOutput out;
    out.w[0] = bf(w_.lm_head);
    out.rows[0] = int(vocab_);
    out.epilogue = fused::Epilogue::logits;
    out.softcap = w_.softcap;
    return out;
  }

  // Per-layer attention launches for these caches: shapes checked, scratch sized.
  void prepare(std::span<const fast::FusedCacheView> caches) {
    attention_.clear();
    int64_t partial = 1;
    for (size_t i = 0; i < caches.size(); ++i) {
      const fast::FusedLayerWeights& l = w_.layers[i];
      const Array& k = caches[i].k;
      const Shape want{rows_, l.n_kv_heads, k.valid() ? k.shape(2) : 0, l.head_dim};
      for (const Array* a : {&caches[i].k, &caches[i].v})
        LMX_CHECK(a->valid() && a->shape() == want && a->dtype() == Dtype::bf16 && a->is_contiguous() &&
                      a->device() == Device::cuda(device_),
                  "fused decode", "layer ", i, "'s cache must be a contiguous bf16 [", rows_, ", ", l.n_kv_heads,
                  ", slots, ", l.head_dim, "] array on cuda:", device_);
      fused::AttentionStep a;
      a.q_norm = bf(l.q_norm), a.k_norm = bf(l.k_norm);
      a.gemma = w_.norm_style == fast::RmsNormStyle::gemma;
      a.eps = w_.eps;
      a.inv_freq = static_cast<const float*>(l.inv_freq.raw());
      a.k_cache = static_cast<bf16*>(caches[i].k.raw());
      a.v_cache = static_cast<bf16*>(caches[i].v.raw());
      a.slots = int(k.shape(2));
      a.window = int(l.window);
      a.n_heads = int(l.n_heads), a.n_kv_heads = int(l.n_kv_heads), a.head_dim = int(l.head_dim);
      a.scale = l.scale;
      fused::attention_split(a.slots, a.n_kv_heads, a.chunk, a.splits);
      // A batch multiplies the blocks: with the short chunks a batch of 8 gave 768 blocks of
      // about 32 keys for Qwen3's 384 slots. About two blocks an SM in all measured best
      // (batch 8: 1.06x for Llama, 1.13x for Qwen3; bench/NOTES.md).
      // Past 8 rows, the longest chunks the kernel takes (96 KiB of scratch) measured best at
      // batch 64: 1.05x for Qwen3 and 1.02x for Llama over 64 KiB, 0.80x and 0.94x at 32 KiB.
      if (stream_attention_)
        a.splits = 1;  // a block per sequence and kv head, no merge (stream_attention.cu)
      else if (rows_ > 1 && switch_on("LMX_FUSED_BATCH_SPLIT"))  // =0: the short chunks
        fused::fit_attention_split(a, int(2 * ctx().sm_count / rows_), size_t(wide_rows_ ? 96 : 64) << 10);
      a.rows = int(rows_);
      a.pad = static_cast<const int*>(pads_.raw());
      if (a.splits > 1)  // one chunk writes its output directly
        partial = std::max(partial, rows_ * l.n_heads * a.splits * fused::partial_stride(int(l.head_dim)));
      attention_.push_back(a);
    }
    if (!attn_partial_.valid() || attn_partial_.size() < partial)
      attn_partial_ = Array({partial}, Dtype::f32, Device::cuda(device_));
  }

  // The step as a list of phases: per layer norm+QKV, attention, O, norm+gate/up, down;
  // then the LM head. The embedding comes first, outside the list.
  std::vector<fused::StepPhase> plan() {
    const bool gemma = w_.norm_style == fast::RmsNormStyle::gemma;
    std::vector<fused::StepPhase> phases;
    names_.clear();
    auto gemv = [&](const fused::GemvInput& in, const fused::GemvOutput& out, const char* name) {
      if (skipped(name)) return;
      fused::StepPhase p;
      p.in = in, p.out = out;
      phases.push_back(p);
      names_.push_back(name);
    };
    auto input = [&](const float* x, int64_t k) {
      fused::GemvInput in;
      in.x = x, in.k = int(k), in.eps = w_.eps, in.gemma = gemma, in.rows = int(rows_);
      return in;
    };
    // `res` holds the residual stream; `pending` is a block output not yet added to it.
    float* res = f32(xa_);
    const float* pending = nullptr;
    const bf16* pending_norm = nullptr;
    auto absorb = [&](fused::GemvInput& in) {  // this GEMV adds `pending` into the other buffer
      if (!pending) return;
      in.add = pending, in.add_norm = pending_norm;
      res = in.x_out = res == f32(xa_) ? f32(xb_) : f32(xa_);
      pending = nullptr;
    };
    for (size_t i = 0; i < w_.layers.size(); ++i) {
      const fast::FusedLayerWeights& l = w_.layers[i];
      fused::GemvInput in = input(res, hidden_);
      absorb(in);
      in.norm = bf(l.input_norm);
      fused::GemvOutput qkv;
      qkv.w[0] = bf(l.q), qkv.w[1] = bf(l.k), qkv.w[2] = bf(l.v);
      qkv.rows[0] = int(l.q.shape(0)), qkv.rows[1] = int(l.k.shape(0)), qkv.rows[2] = int(l.v.shape(0));
      qkv.y = f32(qkv_);
      gemv(in, qkv, "qkv");

      fused::StepPhase attn;
      attn.kind = fused::StepPhase::Kind::attention;
      attn.attn = attention_[i];
      attn.attn.qkv = f32(qkv_), attn.attn.state = state_i(), attn.attn.partial = f32(attn_partial_);
      attn.attn.counter = static_cast<unsigned*>(counters_.raw()), attn.attn.out = f32(attn_);
      // On GEMMs, the streamed attention writes the O product's vectors itself (bf16).
      if (wide_rows_ && stream_attention_) attn.attn.out_bf16 = wide_.vectors;
      if (!skipped("attention")) phases.push_back(attn), names_.push_back("attention");

      fused::GemvOutput o;
      o.w[0] = bf(l.o), o.rows[0] = int(l.o.shape(0)), o.y = f32(o_);
      gemv(input(f32(attn_), l.o.shape(1)), o, "o");
      pending = f32(o_), pending_norm = w_.sandwich ? bf(l.post_attention_norm) : nullptr;

      in = input(res, hidden_);
      absorb(in);
      in.norm = w_.sandwich ? bf(l.pre_feedforward_norm) : bf(l.post_attention_norm);
      fused::GemvOutput glu;
      glu.w[0] = bf(l.gate), glu.w[1] = bf(l.up), glu.rows[0] = int(l.gate.shape(0)), glu.y = f32(glu_);
      glu.epilogue = w_.gelu ? fused::Epilogue::glu_gelu : fused::Epilogue::glu_silu;
      gemv(in, glu, "glu");

      fused::GemvOutput down;
      down.w[0] = bf(l.down), down.rows[0] = int(l.down.shape(0)), down.y = f32(mlp_);
      gemv(input(f32(glu_), l.down.shape(1)), down, "down");
      pending = f32(mlp_), pending_norm = w_.sandwich ? bf(l.post_feedforward_norm) : nullptr;
    }
    fused::GemvInput in = input(res, hidden_);
    absorb(in);
    in.x_out = nullptr;  // nothing reads the residual after the head
    in.norm = bf(w_.final_norm);
    fused::GemvOutput head = head_output();
    head.y = f32(logits_);
    head.partial = static_cast<float2*>(head_partial_.raw());
    // The head's counter follows every sequence's attention counters.
    head.counter = static_cast<unsigned*>(counters_.raw()) + max_kv_heads_ * rows_;
    head.state = state_i();
    head.history = static_cast<int*>(history_.raw());
    head.history_len = kHistory;
    gemv(in, head, "head");
    return phases;
  }

  // Enqueues every kernel of one step, one launch per phase.
  void record(cudaStream_t s) {
    const int sms = ctx().sm_count;
    // The embedding is launched without PDL, so a step starts only once the previous step
    // has completed. Within a step the early signals (GemvTuning::early) let kernels start
    // before their predecessors finish, but each still waits for them before reading their
    // results, and what a kernel reads before that wait (weights; attention's cached
    // positions) was written by kernels of earlier steps.
    fused::launch_embed(s, false, bf(w_.embed), int(w_.embed.shape(0)), state_i(), w_.embed_scale, int(hidden_),
                        f32(xa_), int(rows_));
    const fused::StepPhase* before = nullptr;
    for (const fused::StepPhase& p : plan_) {
      if (p.kind == fused::StepPhase::Kind::attention) {
        fused::AttentionStep a = p.attn;
        a.early = tuning_.early;
        stream_attention_ ? fused::launch_stream_attention(s, pdl_, a, 2 * sms)
                          : fused::launch_attention(s, pdl_, a);
      } else if (wide_rows_) {
        fused::launch_gemm_rows(ctx(), pdl_, p.in, p.out, wide_, fused::wide_input_formed(before, p));
      } else if (rows_ > 1) {
        fused::launch_gemv_rows(s, pdl_, p.in, p.out, sms);
      } else {
        fused::launch_gemv(s, pdl_, p.in, p.out, fused::gemv_shape(p.out, sms, tuning_));
      }
      before = &p;
    }
  }

  int* state_i() const { return static_cast<int*>(state_.raw()); }

  // How many of the largest logits the planned step keeps exact, where it runs the
  // filtered head (and so keeps no others); 0 where it keeps them all.
  int filtered() const { return persistent_runs() ? persistent_->filtered() : 0; }
  std::string kept() const {
    return filtered() == 1 ? "argmax" : std::to_string(filtered()) + " largest logits";
  }
  bool persistent_runs() const { return persistent_ && persistent_->runs(); }
  // Whether the last step ran it: a plan changes only in step(), and reset and set_inputs
  // count the steps from 0 (a recycled decoder's logits are read before its first step).
  bool filtered_step() const { return steps_ > 0 && filtered() > 0; }

  int device_;
  int64_t rows_;  // sequences stepped together
  fast::FusedDecoderWeights w_;
  bool graphs_, pdl_;
  std::string skip_;
  fused::GemvTuning tuning_;
  bool skipped(std::string_view kernel) const {
    for (size_t at = 0; at <= skip_.size();) {  // skip_ is a comma-separated list
      const size_t end = std::min(skip_.find(',', at), skip_.size());
      if (std::string_view(skip_).substr(at, end - at) == kernel) return true;
      at = end + 1;
    }
    return false;
  }
  int64_t hidden_ = 0, vocab_ = 0, max_kv_heads_ = 0;
  int64_t steps_ = 0;  // since set_input
  int64_t queued_ = 0, read_ = 0;
  int32_t* pinned_ = nullptr;  // [kRing] host
  std::vector<cudaEvent_t> ready_, stepped_;  // [kRing]: a queued token copied; its step done
  int64_t copied_[kRing] = {};                 // the history column each slot copies
  cudaStream_t copies_ = nullptr;              // the token copies' stream
  bool token_stream_ = switch_on("LMX_FUSED_TOKEN_STREAM");
  // Per-token buffers, each [rows, ...]; state [rows, 3] (token, slot, count); pads [rows];
  // history [rows, kHistory].
  // set_edits: the entries, each sequence's token counts and the edited logits [rows, V];
  // whether the next draw adds the previous one to the counts.
  fast::PackedEdits edits_;
  fast::Penalties penalties_;
  Array counts_, edited_;
  bool count_prev_ = false;
  Array xa_, xb_, o_, mlp_, qkv_, attn_, glu_, logits_, head_partial_, counters_, state_, pads_, history_,
      attn_partial_;
  int needed_ = 0, planned_needed_ = 0;  // set_logits_needed's; the plan's
  std::vector<fused::AttentionStep> attention_;
  std::vector<fused::StepPhase> plan_;
  std::vector<const char*> names_;  // of plan_'s phases
  bool wide_rows_;  // each product a GEMM (wide_step)
  bool stream_attention_;  // stream_from, where every layer's heads allow it
  fused::WideScratch wide_;
  Array wide_vectors_, wide_gated_;
  // One sequence: the persistent step, where it runs the plan (else the kernel per phase).
  std::unique_ptr<fused::PersistentRunner> persistent_;
  struct BoundCache {  // a layer's cache as the plan binds it
    const void* k;
    const void* v;
    int64_t slots;
    bool operator==(const BoundCache&) const = default;
  };
  std::vector<BoundCache> bound_;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace

std::unique_ptr<fast::FusedDecoder> make_fused_decoder(int device, const fast::FusedDecoderWeights& w, int rows) {
  // The fused kernels read bf16 weights; other dtypes keep to the plain ops.
  if (w.embed.dtype() != Dtype::bf16 || w.layers.empty() || rows < 1) return nullptr;
  if (rows > 1) {  // every product must fit the batched GEMV, or the GEMMs' input kernel
    auto fits = [&](int64_t k, bool normed) {  // normed inputs are staged in f32 as well
      fused::GemvInput in;
      in.rows = rows, in.k = int(k), in.norm = normed ? bf(w.final_norm) : nullptr;
      return (wide_step(w, rows) ? fused::gemm_rows_unsupported(in) : fused::gemv_rows_unsupported(in, {})).empty();
    };
    if (!fits(w.embed.shape(1), true)) return nullptr;
    for (const fast::FusedLayerWeights& l : w.layers)
      if (!fits(l.o.shape(1), false) || !fits(l.down.shape(1), false)) return nullptr;
  }
  context(device);
  return std::make_unique<CudaFusedDecoder>(device, w, rows);
}

}  // namespace lmx::cuda
