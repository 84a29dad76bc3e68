// The persistent step's host side (fused_persistent_runner.h). The plan's parts and the
// measurements behind them are in fused_kernels.h and bench/NOTES.md (p11 onwards).
#include "backend/cuda/fused_persistent_runner.h"

#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace lmx::cuda::fused {
namespace {

// The copies made for the plan (the filtered head and the fused downs' tiles) take at most
// this much together, so that decoding stays within its weights, its cache and 512 MiB:
// Gemma-3-4B's head would take 675 MB (and gained 4.2%), Llama-3.1-8B's 527 MB.
constexpr int64_t kMaxCopyBytes = int64_t(384) << 20;

}  // namespace

PersistentRunner::PersistentRunner(PersistentModel m) : m_(std::move(m)), profile_(switch_set("LMX_FUSED_PROFILE")) {}

PersistentRunner::~PersistentRunner() { report_profile(); }

bool PersistentRunner::prepare(cudaStream_t stream, const std::vector<StepPhase>& plan,
                               const std::vector<const char*>& names, int top) {
  report_profile();  // the plan before this one, with its grid
  blocks_ = 0;
  std::string why;
  plan_ = plan, names_ = names;
  if (top > 0 && !names_.empty() && names_.back() == std::string_view("head")) filter_head(stream, plan_.back(), top);
  const int sms = context(m_.device).sm_count;
  const int grid = persistent_grid(plan_, sms, !m_.deterministic);
  const Device d = Device::cuda(m_.device);
  if (!down_maps_.valid()) down_maps_ = Array({int64_t(m_.layers * sizeof(CUtensorMap))}, Dtype::u8, d);
  down_maps_host_ = persistent_fuse_down(plan_, names_, grid, down_maps_.raw(), !m_.deterministic);
  tile_down(stream, grid);
  int per_block = 0;
  stages_host_ = persistent_stage_lists(plan_, grid, &per_block);
  // The attention's chunks last: how much scratch a task may take depends on the lists.
  const size_t largest = persistent_scratch_limit(plan_, per_block);
  for (StepPhase& p : plan_)
    if (p.kind == StepPhase::Kind::attention) persistent_attention_split(p.attn, grid, largest);
  if (const size_t sums = persistent_sums_floats(plan_, !m_.deterministic); sums > 0) {
    if (!sums_.valid() || sums_.size() < int64_t(sums)) sums_ = Array({int64_t(sums)}, Dtype::f32, d);
    persistent_sum_chunks(plan_, static_cast<float*>(sums_.raw()));
  }
  smem_ = persistent_smem_bytes(plan_, grid, per_block, &vector_bytes_, &slots_, &why);
  if (smem_ > 0) {
    lookahead_ = persistent_lookahead(slots_);
    kernel_ = persistent_kernel(plan_);
    blocks_ = persistent_blocks(grid, smem_, kernel_);
    if (blocks_ == 0) why = "a block does not fit on an SM";
  }
  if (blocks_ == 0) {  // asked for by name: say (once) why it does not run
    filter_ = Array(), tiles_ = Array();  // the kernel per phase runs the decoder's plan, whole head and all
    static bool said = false;
    if (switch_set("LMX_FUSED_PERSISTENT") && !std::exchange(said, true))
      std::fprintf(stderr, "lmx: LMX_FUSED_PERSISTENT: not for this model (%s); running a kernel per phase\n",
                   why.c_str());
    return false;
  }
  // Each host vector below is kept until the next plan, so it outlives its copy.
  auto upload = [&](Array& to, const void* from, size_t bytes) {
    if (!to.valid() || to.size() < int64_t(bytes)) to = Array({int64_t(bytes)}, Dtype::u8, d);
    check(cudaMemcpyAsync(to.raw(), from, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
  };
  upload(phases_, plan_.data(), plan_.size() * sizeof(StepPhase));
  upload(stages_, stages_host_.data(), stages_host_.size() * sizeof(PlannedStage));
  stages_per_block_ = per_block;
  if (!down_maps_host_.empty())
    check(cudaMemcpyAsync(down_maps_.raw(), down_maps_host_.data(), down_maps_host_.size() * sizeof(CUtensorMap),
                          cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
  const Context& c = context(m_.device);
  if (!barrier_.valid()) barrier_ = Array({2}, Dtype::u32, d);  // one u64
  fill(c, barrier_, 0);  // a new plan may have another count of barriers per step
  handoff_ = persistent_attention_handoff(plan_);
  if (handoff_ && !attention_done_.valid()) attention_done_ = Array({1}, Dtype::u32, d);
  if (handoff_) fill(c, attention_done_, 0);
  // HeadExchange's arrays: counts, listed, then every block's offers.
  if (filtered() > 1 && (!head_exchange_.valid() || head_exchange_.size() < 2 + kHeadListed + blocks_ * kHeadOffer))
    head_exchange_ = Array({2 + kHeadListed + blocks_ * kHeadOffer}, Dtype::u32, d);
  if (profile_) {
    timing_ = Array({int64_t(kTimes * plan_.size() * 2)}, Dtype::u32, d);
    fill(c, timing_, 0);
    profiled_steps_ = 0;
  }
  return true;
}

HeadExchange PersistentRunner::head_exchange() const {
  if (filtered() <= 1) return {};
  auto* base = static_cast<unsigned*>(head_exchange_.raw());
  return {base, reinterpret_cast<float*>(base + 2 + kHeadListed), reinterpret_cast<int*>(base + 2)};
}

void PersistentRunner::launch(cudaStream_t stream, PersistentStep p, bool pdl) {
  p.phases = static_cast<const StepPhase*>(phases_.raw());
  p.n_phases = int(plan_.size());
  p.barrier = static_cast<unsigned long long*>(barrier_.raw());
  p.barriers = persistent_barriers(plan_, handoff_);
  if (handoff_) p.attention_done = static_cast<unsigned*>(attention_done_.raw());
  p.head = head_exchange();
  p.vector_bytes = vector_bytes_;
  p.slots = slots_;
  p.lookahead = lookahead_;
  p.stages = static_cast<const PlannedStage*>(stages_.raw());
  p.stages_per_block = stages_per_block_;
  if (profile_) p.timing = static_cast<unsigned long long*>(timing_.raw()), ++profiled_steps_;
  launch_persistent(stream, p, blocks_, smem_, pdl, kernel_);
}

// The LM head as the filtered argmax (Epilogue::argmax), where it applies: no softcap (the
// filter bounds the products, not what a softcap makes of them), a width of whole 16-byte
// code runs, at most 4,096 (the margins' f32 slack covers the sums' rounding up to there),
// and memory for the copy, made on first use (one byte a weight and 16 a row; without
// room the exact head runs), within kMaxCopyBytes. For a draw's `top` largest, at most
// kMaxTop of them: a block recomputes at least as many rows as its share of `top`, and
// every one of its rows where `top` exceeds them (top_threshold). LMX_FUSED_HEAD_FILTER=0
// keeps the exact head.
void PersistentRunner::filter_head(cudaStream_t stream, StepPhase& head, int top) {
  constexpr int kMaxTop = 256;
  const int64_t bytes = m_.vocab * head_filter_row_bytes(m_.hidden);
  if (!switch_on("LMX_FUSED_HEAD_FILTER") || m_.softcap > 0 || m_.hidden % 16 != 0 || m_.hidden > 4096 ||
      bytes > kMaxCopyBytes || top > kMaxTop)
    return;
  if (!filter_.valid()) {
    try {
      filter_ = Array({bytes}, Dtype::u8, Device::cuda(m_.device));
    } catch (const OutOfMemory&) {
      return;
    }
    prepare_head_filter(stream, static_cast<const bf16*>(m_.lm_head.raw()), m_.vocab, int(m_.hidden),
                        static_cast<uint8_t*>(filter_.raw()));
  }
  head.out.epilogue = Epilogue::argmax;
  head.out.filter = static_cast<const uint8_t*>(filter_.raw());
  head.out.top = top;
}

// The fused downs whose stages take two boxes read a tiled copy of their columns
// (persistent_tile_down), made on first use, where it fits beside the head's filter within
// kMaxCopyBytes (Qwen3-0.6B's: 182 MB on 132 SMs) and memory allows.
// LMX_FUSED_DOWN_TILES=0 keeps the tensor-map boxes.
void PersistentRunner::tile_down(cudaStream_t stream, int grid) {
  const int64_t bytes = int64_t(persistent_down_tile_bytes(plan_, grid));
  const int64_t filter = filter_.valid() ? filter_.size() : 0;
  if (bytes == 0 || !switch_on("LMX_FUSED_DOWN_TILES") || bytes + filter > kMaxCopyBytes) {
    tiles_ = Array();
    return;
  }
  const bool fresh = !tiles_.valid() || tiles_grid_ != grid || tiles_.size() != bytes;
  if (fresh) {
    try {
      tiles_ = Array({bytes}, Dtype::u8, Device::cuda(m_.device));
    } catch (const OutOfMemory&) {
      tiles_ = Array();
      return;
    }
    tiles_grid_ = grid;
  }
  persistent_tile_down(stream, plan_, grid, static_cast<bf16*>(tiles_.raw()), fresh);
}

// LMX_FUSED_PROFILE=1: where the last plan's steps went (report_persistent_profile).
void PersistentRunner::report_profile() noexcept {
  if (!timing_.valid() || profiled_steps_ == 0 || blocks_ == 0) return;
  try {
    synchronize(context(m_.device));
    std::vector<unsigned long long> t(plan_.size() * kTimes);  // u64 each
    check(cudaMemcpy(t.data(), timing_.raw(), t.size() * 8, cudaMemcpyDeviceToHost), "cudaMemcpy");
    report_persistent_profile(t, profiled_steps_, names_, kernel_, blocks_, slots_, lookahead_);
    if (filtered() > 1) {  // how tight top_threshold was: the draw takes these rows alone
      unsigned listed = 0;
      check(cudaMemcpy(&listed, head_exchange().counts + 1, 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
      std::fprintf(stderr, "  the head's last step left %u rows exact for a top-%d draw\n", listed, filtered());
    }
  } catch (...) {
  }
}

}  // namespace lmx::cuda::fused
