// The persistent step's host side for the fused decoder (fused_decoder.cpp): the kernel's
// plan made from the decoder's (the filtered LM head, the down projections fused into the
// gate/up phases and their tiled copies, the attention's chunks, every block's stage list,
// the weight ring), the arrays it keeps on the device, the launch and the profile.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cuda/fused_kernels.h"
#include "core/array.h"

namespace lmx::cuda::fused {

// What the runner needs of the model: its LM head, for the filtered head's copy.
struct PersistentModel {
  int device = 0;
  Array lm_head;  // [vocab, hidden] bf16
  int64_t hidden = 0, vocab = 0;
  float softcap = 0;
  int64_t layers = 0;
  bool deterministic = false;  // keeps the down projections apart (persistent_fuse_down)
};

class PersistentRunner {
 public:
  explicit PersistentRunner(PersistentModel m);
  ~PersistentRunner();  // prints the profile of the last plan (LMX_FUSED_PROFILE=1)
  PersistentRunner(const PersistentRunner&) = delete;
  PersistentRunner& operator=(const PersistentRunner&) = delete;

  // Plans the kernel for the decoder's `plan` (`names`: its phases'), with the LM head
  // filtered where `top` (FusedDecoder::set_logits_needed's: 0 every logit, else how many
  // of the largest must be exact) allows, and copies the plan to the device on `stream`.
  // Returns whether the kernel runs it; where it cannot, the decoder's kernel per phase
  // does (and where LMX_FUSED_PERSISTENT asked for it, stderr says why, once).
  bool prepare(cudaStream_t stream, const std::vector<StepPhase>& plan, const std::vector<const char*>& names,
               int top);
  bool runs() const { return blocks_ > 0; }
  // How many of the largest logits the plan's head keeps exact (Epilogue::argmax), the
  // others a bound above; 0 where it keeps every logit.
  int filtered() const {
    return runs() && !plan_.empty() && plan_.back().out.epilogue == Epilogue::argmax ? plan_.back().out.top : 0;
  }
  // Where a head with filtered() > 1 lists the rows it left exact (HeadExchange), valid
  // until the next step; nulls for other heads.
  HeadExchange head_exchange() const;
  // One step. `step` holds the decoder's part (embedding, state, x); the rest is filled here.
  void launch(cudaStream_t stream, PersistentStep step, bool pdl);

 private:
  void filter_head(cudaStream_t stream, StepPhase& head, int top);
  void tile_down(cudaStream_t stream, int grid);
  void report_profile() noexcept;

  PersistentModel m_;
  std::vector<StepPhase> plan_;  // the decoder's plan as the kernel runs it
  std::vector<const char*> names_;
  int blocks_ = 0;  // 0: not planned, or the kernel cannot run the plan
  PersistentKernel kernel_;  // the form that runs the plan
  size_t smem_ = 0;
  unsigned vector_bytes_ = 0;
  int slots_ = 0;
  int lookahead_ = 0;  // persistent_lookahead of the slots
  int stages_per_block_ = 0;
  Array phases_, barrier_;  // the plan on the device; the grid barrier's counter
  bool handoff_ = false;    // persistent_attention_handoff
  Array attention_done_;    // its count
  Array sums_;              // the attentions' summed chunks (persistent_sum_chunks)
  Array head_exchange_;     // head_exchange()'s arrays
  // The fused downs' tensor maps (on the device and here) and their tiled copies for a grid
  // of tiles_grid_; every block's planned stages. The host vectors outlive their copies.
  Array down_maps_, tiles_, stages_;
  std::vector<CUtensorMap> down_maps_host_;
  std::vector<PlannedStage> stages_host_;
  int tiles_grid_ = 0;
  Array filter_;  // the filtered head's copy of the LM head (prepare_head_filter)
  bool profile_;
  Array timing_;
  int64_t profiled_steps_ = 0;
};

}  // namespace lmx::cuda::fused
