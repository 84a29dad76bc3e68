// The persistent decode step's plan (backend/cuda/fused_persistent_plan.cu) and the
// attention splits: host code, checked without a GPU where lmx is built with CUDA.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_available.h"
#include "scoped_env.h"

#if LMX_HAVE_CUDA
#include "backend/cuda/fused_kernels.h"

namespace lmx {
namespace {

using test::have_cuda;

// The persistent step's plan check (host code: runs without a GPU). It accepts a Llama-
// 3.2-1B-shaped layer within the shared memory an SM has, and refuses what its ring of
// 32 KiB slots and 16-byte copies cannot carry, saying why.
namespace persistent {

using cuda::fused::bf16;
using cuda::fused::Epilogue;
using cuda::fused::StepPhase;

const bf16* fake_weights(uintptr_t at) { return reinterpret_cast<const bf16*>(at); }

StepPhase gemv(int k, int rows, Epilogue e = Epilogue::plain, uintptr_t at = 0x10000) {
  StepPhase p;
  p.in.k = k;
  p.out.w[0] = fake_weights(at);
  p.out.rows[0] = rows;
  p.out.epilogue = e;
  if (e == Epilogue::glu_silu) p.out.w[1] = fake_weights(at + 0x100000);
  return p;
}

StepPhase attention_phase(int heads = 32, int kv_heads = 8, int head_dim = 64) {
  StepPhase p;
  p.kind = StepPhase::Kind::attention;
  p.attn.n_heads = heads, p.attn.n_kv_heads = kv_heads, p.attn.head_dim = head_dim, p.attn.chunk = 32;
  return p;
}

std::string refusal(const std::vector<StepPhase>& plan) {
  unsigned vector = 0;
  int slots = 0;
  std::string why;
  EXPECT_EQ(cuda::fused::persistent_smem_bytes(plan, 132, 0, &vector, &slots, &why), 0u);
  return why;
}

TEST(PersistentPlan, FitsALlamaLayerAndRefusesWhatItCannotCarry) {
  const StepPhase attention = attention_phase();
  std::vector<StepPhase> llama{gemv(2048, 3072), attention, gemv(2048, 2048), gemv(2048, 8192, Epilogue::glu_silu),
                               gemv(8192, 2048), gemv(2048, 128256, Epilogue::logits)};
  llama[0].in.norm = fake_weights(0x20000);  // a norm, so the QKV input is formed (in registers: 2,048 values)
  unsigned vector = 0;
  int slots = 0;
  std::string why;
  const size_t smem = cuda::fused::persistent_smem_bytes(llama, 128, 600, &vector, &slots, &why);
  EXPECT_GT(smem, 0u) << why;
  EXPECT_LE(smem, size_t(227) << 10);
  EXPECT_GE(vector, 8192u * 2) << "the down projection's input, straight to bf16";
  EXPECT_LT(vector, 2048u * (2 * 4 + 2)) << "the QKV input is not staged in shared memory";
  EXPECT_EQ(slots, 6) << "a block streams 950 KiB of the layer: six 32 KiB slots, and they fit beside the vector";
  EXPECT_EQ(smem, size_t(slots) * (32 << 10) + vector + llama.size() * 80 + 2 * sizeof(StepPhase) +
                      600 * 4)
      << "the ring, the vector, each phase's 80-byte geometry, two phases' parameters and 600 "
         "4-byte stages";
  // Twice the blocks stream half as much each (475 KiB): five slots (ring_slots); four
  // times the blocks (238 KiB each): four.
  const size_t fewer = cuda::fused::persistent_smem_bytes(llama, 256, 600, &vector, &slots, &why);
  EXPECT_EQ(slots, 5);
  EXPECT_EQ(fewer, smem - (32 << 10));
  EXPECT_EQ(cuda::fused::persistent_smem_bytes(llama, 512, 600, &vector, &slots, &why), smem - 2 * (32 << 10));
  EXPECT_EQ(slots, 4);
  // Past 2,048 values a formed input is staged: x and its norm weights in f32, then bf16.
  std::vector<StepPhase> wider{gemv(4096, 64)};
  wider[0].in.norm = fake_weights(0x20000);
  EXPECT_GT(cuda::fused::persistent_smem_bytes(wider, 132, 0, &vector, &slots, &why), 0u) << why;
  EXPECT_GE(vector, 4096u * (2 * 4 + 2));

  EXPECT_NE(refusal({gemv(2048, 3072), attention}).find("output projection"), std::string::npos);
  EXPECT_NE(refusal({attention, gemv(1024, 2048)}).find("output projection"), std::string::npos);
  EXPECT_NE(refusal({gemv(2052, 64)}).find("multiple of 8"), std::string::npos);
  EXPECT_NE(refusal({gemv(16392, 64)}).find("longer than a slot"), std::string::npos);       // 32.8 KB rows
  EXPECT_NE(refusal({gemv(8200, 64, Epilogue::glu_silu)}).find("longer"), std::string::npos);  // paired: 2 rows
  EXPECT_NE(refusal({gemv(2048, 64, Epilogue::plain, 0x10008)}).find("unaligned"), std::string::npos);
  EXPECT_NE(refusal({gemv(2048, 1 << 22)}).find("too many rows"), std::string::npos);
  // Long input vectors leave too little shared memory beside the ring: here four staged
  // f32 arrays and the bf16 copy of 16,384 values, 288 KiB.
  StepPhase wide = gemv(16384, 64);
  wide.in.norm = fake_weights(0x20000), wide.in.add_norm = fake_weights(0x30000);
  wide.in.add = reinterpret_cast<const float*>(uintptr_t(0x40000));
  EXPECT_NE(refusal({wide}).find("shared memory"), std::string::npos);
}

// A larger model's list of stages must not cost the ring its slots: Llama-3.1-8B's shapes
// (32 layers, 4,096 wide, MLP 14,336, whose down is too wide to fuse) list 3,668 stages a
// block on 132 blocks, which at 8 bytes a stage left 3 slots.
TEST(PersistentPlan, ListsALlama8BsStagesAndKeepsFourSlots) {
  const StepPhase attention = attention_phase(32, 8, 128);
  std::vector<StepPhase> plan;
  for (int layer = 0; layer < 32; ++layer) {
    StepPhase qkv = gemv(4096, 4096), glu = gemv(4096, 14336, Epilogue::glu_silu);
    qkv.in.norm = glu.in.norm =
        fake_weights(0x20000);  // with the residual add: staged inputs, 56 KiB
    qkv.in.add = glu.in.add = reinterpret_cast<const float*>(uintptr_t(0x40000));
    qkv.out.w[1] = fake_weights(0x200000), qkv.out.rows[1] = 1024;
    qkv.out.w[2] = fake_weights(0x300000), qkv.out.rows[2] = 1024;
    for (const StepPhase& p : {qkv, attention, gemv(4096, 4096), glu, gemv(14336, 4096)})
      plan.push_back(p);
  }
  plan.push_back(gemv(4096, 128256, Epilogue::logits));
  int per_block = 0;
  const std::vector<cuda::fused::PlannedStage> all =
      cuda::fused::persistent_stage_lists(plan, 132, &per_block);
  EXPECT_GE(per_block, 3668 + int(plan.size()) + 1)
      << "every stage, every phase's end and the entry past it";
  EXPECT_LE(per_block, 3668 + int(plan.size()) + 4);
  unsigned vector = 0;
  int slots = 0;
  std::string why;
  EXPECT_GT(cuda::fused::persistent_smem_bytes(plan, 132, per_block, &vector, &slots, &why), 0u) << why;
  EXPECT_EQ(slots, 4);
}

// Every block's list of stages: in the plan's order, each a run of whole rows that fits a
// slot, and over all blocks every row of every matrix exactly once (a fused down's boxes:
// every box of rows, in each block that has gate/up rows).
TEST(PersistentPlan, ListsEachBlocksStagesSoThatTheGridCoversEveryRowOnce) {
  const StepPhase attention = attention_phase();
  StepPhase qkv = gemv(2048, 2048);
  qkv.out.w[1] = fake_weights(0x200000), qkv.out.rows[1] = 512;
  qkv.out.w[2] = fake_weights(0x300000), qkv.out.rows[2] = 512;
  StepPhase glu = gemv(2048, 8192, Epilogue::glu_silu);
  glu.down_map = reinterpret_cast<const void*>(uintptr_t(0x70000));
  glu.down_rows = 2048, glu.down_units = 8, glu.down_box_rows = 256;
  const std::vector<StepPhase> plan{qkv, attention, gemv(2048, 2048), glu, gemv(2048, 128256, Epilogue::logits)};
  constexpr int kBlocks = 132;
  int per_block = 0;
  const std::vector<cuda::fused::PlannedStage> all = cuda::fused::persistent_stage_lists(plan, kBlocks, &per_block);
  ASSERT_EQ(all.size(), size_t(kBlocks) * size_t(per_block));
  EXPECT_EQ(per_block % 4, 0) << "copied 16 bytes at a time";
  // covered[phase][segment]: how often each row was taken
  std::vector<std::vector<std::vector<int>>> covered(plan.size(), std::vector<std::vector<int>>(3));
  for (size_t i = 0; i < plan.size(); ++i)
    for (int seg = 0; seg < 3; ++seg) covered[i][size_t(seg)].assign(size_t(plan[i].out.rows[seg]), 0);
  covered[3][1].assign(2048, 0);  // the fused down's rows
  int blocks_with_glu_rows = 0;
  for (int b = 0; b < kBlocks; ++b) {
    int phase = 0, n_stages = 0,
        i = 0;  // the list is read as the workers read it: a phase's stages, its end
    bool glu_rows = false, ended = false;
    for (; i < per_block && !ended; ++i) {
      const cuda::fused::PlannedStage st = all[size_t(b) * size_t(per_block) + size_t(i)];
      const int seg = st.seg(), n = st.n();
      if (n == 0) {
        EXPECT_EQ(st.packed, 0u) << "block " << b << ": an end is all zero";
        ended = ++phase == int(plan.size());
        continue;
      }
      ++n_stages;
      EXPECT_NE(phase, 1) << "the attention has no weights";
      const bool pair = phase == 3 && seg == 0, down = phase == 3 && seg == 1;
      const int64_t row_bytes = down ? 8 * 8 * 2 : int64_t(plan[size_t(phase)].in.k) * 2 * (pair ? 2 : 1);
      EXPECT_LE(n * row_bytes, 32 << 10) << "block " << b << ": a stage fits a slot";
      if (pair) glu_rows = true;
      std::vector<int>& rows = covered[size_t(phase)][size_t(seg)];
      ASSERT_LE(size_t(st.row()) + size_t(n), rows.size()) << "block " << b << ", phase " << phase;
      for (int r = st.row(); r < st.row() + n; ++r) ++rows[size_t(r)];
      if (down) {
        EXPECT_EQ(st.row() % 256, 0) << "a down stage is a whole box of rows";
      }
    }
    EXPECT_LT(i, per_block) << "block " << b
                            << ": the entry past the last end, which the workers read, is in";
    EXPECT_TRUE(ended) << "block " << b << "'s list ends";
    EXPECT_GT(n_stages, 0);
    blocks_with_glu_rows += glu_rows;
  }
  for (size_t i = 0; i < plan.size(); ++i)
    for (int seg = 0; seg < 3; ++seg) {
      const int want = i == 3 && seg == 1 ? blocks_with_glu_rows : 1;
      const std::vector<int>& rows = covered[i][size_t(seg)];
      for (size_t r = 0; r < rows.size(); ++r)
        ASSERT_EQ(rows[r], want) << "phase " << i << ", segment " << seg << ", row " << r;
    }
  EXPECT_EQ(blocks_with_glu_rows, kBlocks) << "1,024 units of 8 rows over 132 blocks: 7 or 8 each";
}

// The filtered greedy head (Epilogue::argmax) streams its one-byte copy: rows of 16 bytes
// of constants and k codes, so a stage of Llama-3.2-1B's head holds 15 of them where the
// bf16 head's held 8, and the grid still takes every row once. Its input keeps room for
// the vector's two int8 levels; without its copy, with a softcap or at a width off 16 the
// plan refuses it.
TEST(PersistentPlan, FilteredArgmaxHeadStreamsItsOneByteCopy) {
  StepPhase head = gemv(2048, 128256, Epilogue::argmax);
  head.out.filter = reinterpret_cast<const uint8_t*>(uintptr_t(0x400000));
  const std::vector<StepPhase> plan{gemv(2048, 2048), head};
  unsigned vector = 0;
  int slots = 0;
  std::string why;
  EXPECT_GT(cuda::fused::persistent_smem_bytes(plan, 132, 0, &vector, &slots, &why), 0u) << why;
  EXPECT_GE(vector, 2048u * 2 + 2 * 2048) << "the bf16 vector and its two int8 levels";
  constexpr int kBlocks = 132;
  int per_block = 0;
  const std::vector<cuda::fused::PlannedStage> all = cuda::fused::persistent_stage_lists(plan, kBlocks, &per_block);
  const int64_t row_bytes = cuda::fused::head_filter_row_bytes(2048);
  ASSERT_EQ(row_bytes, 2064);
  std::vector<int> covered(128256, 0);
  int largest = 0;
  for (int b = 0; b < kBlocks; ++b) {
    int phase = 0;
    for (int i = 0; i < per_block && phase < 2; ++i) {
      const cuda::fused::PlannedStage st = all[size_t(b) * size_t(per_block) + size_t(i)];
      if (st.n() == 0) {
        ++phase;
        continue;
      }
      if (phase != 1) continue;
      EXPECT_LE(st.n() * row_bytes, 32 << 10) << "block " << b << ": a stage of the copy fits a slot";
      largest = std::max(largest, st.n());
      for (int r = st.row(); r < st.row() + st.n(); ++r) ++covered[size_t(r)];
    }
  }
  EXPECT_EQ(largest, (32 << 10) / 2064) << "whole slots of the copy's rows";
  for (size_t r = 0; r < covered.size(); ++r) ASSERT_EQ(covered[r], 1) << "row " << r;

  StepPhase no_copy = head;
  no_copy.out.filter = nullptr;
  EXPECT_NE(refusal({no_copy}).find("filtered argmax head"), std::string::npos);
  StepPhase capped = head;
  capped.out.softcap = 30;
  EXPECT_NE(refusal({capped}).find("softcap"), std::string::npos);
  StepPhase odd = head;
  odd.in.k = 2056;  // a multiple of 8, not of 16
  EXPECT_NE(refusal({odd}).find("width off 16"), std::string::npos);
}

// Each down projection joins the gate/up phase before it where a block's share of its
// columns fits a box of at most 8 units of 8 (odd, or 8, for conflict-free reads); the
// phase before zeroes its output, and what the fuse cannot carry keeps its own phase.
TEST(PersistentPlan, FusesTheDownProjectionIntoTheGateUpPhase) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible: tensor maps are encoded by the driver";
  float* const act = reinterpret_cast<float*>(uintptr_t(0x50000));
  float* const out = reinterpret_cast<float*>(uintptr_t(0x60000));
  const void* const maps = reinterpret_cast<const void*>(uintptr_t(0x70000));
  auto layer = [&](int hidden, int inter) {
    std::vector<StepPhase> p{gemv(hidden, hidden), gemv(hidden, inter, Epilogue::glu_silu), gemv(inter, hidden),
                             gemv(hidden, 1000, Epilogue::logits)};
    p[1].out.y = act, p[2].in.x = act, p[2].out.y = out, p[3].in.add = out;
    return p;
  };
  auto fuse = [&](std::vector<StepPhase>& p, int blocks = 132, bool allowed = true) {
    std::vector<const char*> names{"o", "glu", "down", "head"};
    const size_t maps_made = cuda::fused::persistent_fuse_down(p, names, blocks, maps, allowed).size();
    EXPECT_EQ(names.size(), p.size());
    if (maps_made == 1) {
      EXPECT_STREQ(names[1], "glu+down");
    }
    return maps_made;
  };
  struct Case {
    int hidden, inter, units, box_rows, boxes;
  };
  // Llama-3.2-1B, Qwen3-0.6B (12 KiB boxes: two a stage), Gemma3-1B, small; Qwen3-4B (9.2
  // units a block, made 11: box rows a multiple of 4) and Gemma-3-4B (9.7, made 11).
  for (const Case c : {Case{2048, 8192, 8, 256, 1}, Case{1024, 3072, 3, 256, 2}, Case{1152, 6912, 7, 256, 1},
                       Case{64, 520, 1, 64, 1}, Case{2560, 9728, 11, 184, 1}, Case{2560, 10240, 11, 184, 1}}) {
    std::vector<StepPhase> p = layer(c.hidden, c.inter);
    ASSERT_EQ(fuse(p), 1u) << c.inter;
    ASSERT_EQ(p.size(), 3u) << "the down phase is gone";
    EXPECT_EQ(p[1].down_map, maps);
    EXPECT_EQ(p[1].down_y, out);
    EXPECT_EQ(p[1].down_rows, c.hidden);
    EXPECT_EQ(p[1].down_units, c.units) << c.inter;
    EXPECT_EQ(p[1].down_box_rows, c.box_rows) << c.inter;
    EXPECT_EQ(p[1].down_boxes, c.boxes) << c.inter;
    EXPECT_EQ(p[0].zero, out) << "the phase before zeroes the sums";
    EXPECT_EQ(p[0].zero_n, c.hidden);
    unsigned vector = 0;
    int slots = 0;
    std::string why;
    EXPECT_GT(cuda::fused::persistent_smem_bytes(p, 132, 0, &vector, &slots, &why), 0u) << why;
  }
  // Where a stage takes two boxes, the step reads them from a tiled copy of down: each of
  // the 132 blocks' 24 columns of its 1,024 rows (Qwen3-0.6B), or of 264 rows made two
  // whole boxes of 256. The other shapes read the boxes.
  for (const auto& [hidden, inter, bytes] : {std::tuple{1024, 3072, 132 * 1024 * 24 * 2},
                                             std::tuple{264, 2304, 132 * 512 * 24 * 2},
                                             std::tuple{2048, 8192, 0}, std::tuple{1152, 6912, 0}}) {
    std::vector<StepPhase> p = layer(hidden, inter);
    ASSERT_EQ(fuse(p), 1u);
    EXPECT_EQ(p[1].down_w, fake_weights(0x10000)) << "the down weights the tiles copy";
    EXPECT_EQ(cuda::fused::persistent_down_tile_bytes(p, 132), size_t(bytes)) << hidden << " x " << inter;
    p.insert(p.end(), p.begin(), p.end());  // two layers: the second's tiles follow the first's
    bf16* const tiles = reinterpret_cast<bf16*>(uintptr_t(0x80000));
    cuda::fused::persistent_tile_down(nullptr, p, 132, tiles, false);
    EXPECT_EQ(p[1].down_tiles, bytes ? tiles : nullptr);
    EXPECT_EQ(p[4].down_tiles, bytes ? tiles + bytes / 2 : nullptr);
  }
  std::vector<StepPhase> p = layer(4096, 14336);  // Llama-3.1-8B: 13.6 units a block, made 15
  EXPECT_EQ(fuse(p), 0u);
  p = layer(2048, 8192);
  EXPECT_EQ(fuse(p, 88), 0u) << "11.6 units a block on 88";
  p = layer(2048, 8192);
  EXPECT_EQ(fuse(p, 94), 1u) << "10.9 units a block on 94, made 11";
  p = layer(2048, 8192);
  p[2].in.add = out;  // a down input that is not the gate/up's output alone
  EXPECT_EQ(fuse(p), 0u);
  p = layer(2048, 8192);
  p[0].in.add = out;  // the phase that would zero the sums reads them
  EXPECT_EQ(fuse(p), 0u);
  p = layer(2048, 8196);  // not whole units of 8
  EXPECT_EQ(fuse(p), 0u);
  p = layer(2048, 8192);
  EXPECT_EQ(fuse(p, 132, false), 0u) << "a deterministic step has no fused down";
  EXPECT_EQ(p.size(), 4u);
  {
    const test::ScopedEnv off("LMX_FUSED_DOWN", "0");
    p = layer(2048, 8192);
    EXPECT_EQ(fuse(p), 0u) << "LMX_FUSED_DOWN=0 turns it off";
  }
  {
    const test::ScopedEnv one_box("LMX_FUSED_DOWN_BOXES", "1");
    p = layer(1024, 3072);
    EXPECT_EQ(fuse(p), 1u);
    EXPECT_EQ(p[1].down_boxes, 1) << "LMX_FUSED_DOWN_BOXES=1: a box a stage";
  }
  p = layer(1024, 3072);
  ASSERT_EQ(fuse(p), 1u);
  // Qwen3-0.6B's down stages: two boxes of 256 rows each, whole stages of 512 rows.
  int per_block = 0;
  const std::vector<cuda::fused::PlannedStage> all = cuda::fused::persistent_stage_lists(p, 132, &per_block);
  std::vector<int> starts;
  for (int i = 0, phase = 0; i < per_block && phase < 2; ++i) {  // block 0's list, to the gate/up phase's end
    const cuda::fused::PlannedStage st = all[size_t(i)];
    if (st.n() == 0) {
      ++phase;
    } else if (phase == 1 && st.seg() == 1) {
      starts.push_back(st.row());
      EXPECT_EQ(st.n(), 512);
    }
  }
  EXPECT_EQ(starts, (std::vector<int>{0, 512}));
}

// The grid shrinks only where every block can then take the same whole-slot share of the
// fused down projection, and LMX_FUSED_GRID overrides it.
TEST(PersistentPlan, GridEvensOutTheFusedDownsWholeSlotShares) {
  auto layer = [](int hidden, int inter) {
    return std::vector<StepPhase>{gemv(hidden, hidden), gemv(hidden, inter, Epilogue::glu_silu), gemv(inter, hidden),
                                  gemv(hidden, 1000, Epilogue::logits)};
  };
  using cuda::fused::persistent_grid;
  EXPECT_EQ(persistent_grid(layer(2048, 8192), 132), 128) << "Llama-3.2-1B: 1,024 units, 8 a block";
  EXPECT_EQ(persistent_grid(layer(1024, 3072), 132), 132) << "Qwen3-0.6B: 3 units a block, not whole slots";
  EXPECT_EQ(persistent_grid(layer(1152, 6912), 132), 132) << "Gemma3-1B: 864 units, 7 a block, no even split";
  EXPECT_EQ(persistent_grid(layer(2048, 8192), 128), 128);
  EXPECT_EQ(persistent_grid(layer(2048, 8200), 132), 132) << "1,025 units: no even split with 8 a block";
  EXPECT_EQ(persistent_grid(layer(2048, 8196), 132), 132) << "not whole units: no fused down";
  EXPECT_EQ(persistent_grid({gemv(2048, 2048)}, 132), 132) << "no gate/up phase";
  EXPECT_EQ(persistent_grid(layer(2048, 0), 132), 132) << "an empty gate/up phase";
  EXPECT_EQ(persistent_grid(layer(2048, 8192), 132, /*fuse_down=*/false), 132) << "a deterministic step";
  {
    const test::ScopedEnv off("LMX_FUSED_DOWN", "0");
    EXPECT_EQ(persistent_grid(layer(2048, 8192), 132), 132) << "no fused down";
  }
  {
    const test::ScopedEnv grid("LMX_FUSED_GRID", "120");
    EXPECT_EQ(persistent_grid(layer(1024, 3072), 132), 120);
  }
  const test::ScopedEnv grid("LMX_FUSED_GRID", "999");
  EXPECT_EQ(persistent_grid(layer(1024, 3072), 132), 132) << "never past the SMs";
}

// A long cache's attention gets longer chunks, so that the persistent kernel's blocks
// have at most a task each, within a task's shared-memory scratch.
TEST(PersistentPlan, AttentionChunksGrowToFitTheGrid) {
  cuda::fused::AttentionStep a;
  a.n_heads = 32, a.n_kv_heads = 8, a.head_dim = 64;  // Llama-3.2-1B
  size_t largest = 80 << 10;  // the first rules' cap, then a plan's two-slot limit
  auto split = [&](int slots) {
    a.slots = slots;
    cuda::fused::attention_split(a.slots, a.n_kv_heads, a.chunk, a.splits);
    cuda::fused::persistent_attention_split(a, 132, largest);
    return std::pair(a.chunk, a.splits);
  };
  EXPECT_EQ(split(384), std::pair(32, 12)) << "short caches keep the default chunk";
  EXPECT_EQ(split(2304), std::pair(144, 16)) << "8 kv heads x 16 chunks: one task per block of 132";
  // Longer, the chunk stops where a task's scratch would pass 80 KiB: (544 + 68 c) floats.
  EXPECT_EQ(split(32768), std::pair(288, 114));
  // Qwen3 (2 query heads of 128 a kv head): (832 + 130 c) floats. Up to 48 KiB, 80-key
  // chunks would take two rounds of tasks at 2,304 slots (29 a kv head); the scratch grows
  // past it to take one.
  a.n_heads = 16, a.head_dim = 128;
  EXPECT_EQ(split(384), std::pair(32, 12));
  EXPECT_EQ(split(2304), std::pair(144, 16));
  EXPECT_EQ(split(4096), std::pair(144, 29)) << "at most 80 KiB";
  // Past 80 KiB, up to what leaves the ring two slots (150 KiB here, 38,400 floats):
  // Qwen3 at 4,096 + 256 tokens in one round of 272-key chunks; Llama at 32,768 slots in
  // the longest chunks that fit, 544 keys.
  largest = 150 << 10;
  EXPECT_EQ(split(4352), std::pair(272, 16));
  EXPECT_EQ(split(2304), std::pair(144, 16)) << "one round in 80 KiB: no more";
  a.n_heads = 32, a.head_dim = 64;
  EXPECT_EQ(split(32768), std::pair(544, 61));
  EXPECT_EQ(split(8448), std::pair(528, 16)) << "8,192 + 256 tokens";
}

// The two-slot limit holds whatever the cache: the attention's scratch, rounded up to
// whole KiB in the kernel's shared memory, never leaves the ring fewer than two slots (a
// plan with one is refused, and the step falls back to a kernel per phase). Llama-3.2-1B's,
// Qwen3-0.6B's and Llama-3.1-8B's shapes (the largest stage lists) on four grids, every 16
// slots from 2,304 to 16,640, so that the chunks pass through every size up to the limit.
TEST(PersistentPlan, AttentionScratchLeavesTheRingTwoSlots) {
  struct Shape {
    int layers, hidden, heads, kv_heads, head_dim, inter, vocab;
  };
  for (const Shape m : {Shape{16, 2048, 32, 8, 64, 8192, 128256}, Shape{28, 1024, 16, 8, 128, 3072, 151936},
                        Shape{32, 4096, 32, 8, 128, 14336, 128256}}) {
    std::vector<StepPhase> plan;
    const int q = m.heads * m.head_dim, kv = m.kv_heads * m.head_dim;
    for (int layer = 0; layer < m.layers; ++layer) {
      StepPhase qkv = gemv(m.hidden, q), glu = gemv(m.hidden, m.inter, Epilogue::glu_silu);
      qkv.in.norm = glu.in.norm = fake_weights(0x20000);
      qkv.in.add = glu.in.add = reinterpret_cast<const float*>(uintptr_t(0x40000));
      qkv.out.w[1] = fake_weights(0x200000), qkv.out.rows[1] = kv;
      qkv.out.w[2] = fake_weights(0x300000), qkv.out.rows[2] = kv;
      for (const StepPhase& p : {qkv, attention_phase(m.heads, m.kv_heads, m.head_dim), gemv(q, m.hidden), glu,
                                 gemv(m.inter, m.hidden)})
        plan.push_back(p);
    }
    plan.push_back(gemv(m.hidden, m.vocab, Epilogue::logits));
    // Other grids give other stage lists, and so other limits.
    for (const int blocks : {132, 128, 120, 114}) {
      int per_block = 0;
      (void)cuda::fused::persistent_stage_lists(plan, blocks, &per_block);
      const size_t largest = cuda::fused::persistent_scratch_limit(plan, per_block);
      unsigned grown = 0;
      for (int cache = 2304; cache <= 16640; cache += 16) {
        std::vector<StepPhase> long_cache = plan;
        for (StepPhase& p : long_cache) {
          if (p.kind != StepPhase::Kind::attention) continue;
          p.attn.slots = cache;
          cuda::fused::attention_split(cache, m.kv_heads, p.attn.chunk, p.attn.splits);
          cuda::fused::persistent_attention_split(p.attn, blocks, largest);
        }
        unsigned vector = 0;
        int slots = 0;
        std::string why;
        const size_t bytes = cuda::fused::persistent_smem_bytes(long_cache, blocks, per_block, &vector, &slots, &why);
        const std::string at = "hidden " + std::to_string(m.hidden) + ", " + std::to_string(blocks) + " blocks, " +
                               std::to_string(cache) + " slots";
        ASSERT_GT(bytes, 0u) << at << ": " << why;
        ASSERT_GE(slots, 2) << at;
        ASSERT_LE(vector, largest) << at;
        grown = std::max(grown, vector);
      }
      EXPECT_GT(grown, 100u << 10) << "hidden " << m.hidden << ": the chunks grew past 80 KiB";
    }
  }
}

// A batch's attention (the kernel per phase) aims at about two blocks an SM in all: 8
// sequences of Qwen3's 8 kv heads and 384 slots take 96-key chunks (4 a kv head, 256 blocks
// on 132 SMs), 4 sequences 48; Gemma 3's one kv head keeps its 16-key chunks, and a long
// cache stops where a block's scratch would pass 64 KiB.
TEST(PersistentPlan, BatchedAttentionChunksAimAtTwoBlocksAnSm) {
  cuda::fused::AttentionStep a;
  auto split = [&](int heads, int kv_heads, int head_dim, int slots, int rows) {
    a.n_heads = heads, a.n_kv_heads = kv_heads, a.head_dim = head_dim, a.slots = slots;
    cuda::fused::attention_split(a.slots, a.n_kv_heads, a.chunk, a.splits);
    cuda::fused::fit_attention_split(a, 2 * 132 / rows, 64 << 10);
    return std::pair(a.chunk, a.splits);
  };
  EXPECT_EQ(split(16, 8, 128, 384, 8), std::pair(96, 4));
  EXPECT_EQ(split(16, 8, 128, 384, 4), std::pair(48, 8));
  EXPECT_EQ(split(16, 8, 128, 384, 2), std::pair(32, 12)) << "never shorter than the default";
  EXPECT_EQ(split(4, 1, 256, 384, 8), std::pair(16, 24));
  // Qwen3 at 4,096 slots: (832 + 130 c) floats of scratch stop at 112 keys.
  EXPECT_EQ(split(16, 8, 128, 4096, 8), std::pair(112, 37));
}

// A count of the attention's finished outputs in place of the grid barrier after it
// (persistent_attention_handoff): taken for Llama-3.2-1B's shapes, a barrier fewer a layer;
// declined with no attention, where an attention comes right before the last phase (whose
// grid barrier the reset of the count needs), and under LMX_FUSED_HANDOFF=0.
TEST(PersistentPlan, HandsTheAttentionsOutputsOnThroughACount) {
  std::vector<StepPhase> llama;
  for (int layer = 0; layer < 2; ++layer)
    for (const StepPhase& p : {gemv(2048, 3072), attention_phase(), gemv(2048, 2048),
                               gemv(2048, 8192, Epilogue::glu_silu), gemv(8192, 2048)})
      llama.push_back(p);
  llama.push_back(gemv(2048, 128256, Epilogue::logits));
  std::optional<test::ScopedEnv> handoff(std::in_place, "LMX_FUSED_HANDOFF", nullptr);
  EXPECT_TRUE(cuda::fused::persistent_attention_handoff(llama));
  EXPECT_EQ(cuda::fused::persistent_barriers(llama, true), int(llama.size()) - 2);
  EXPECT_EQ(cuda::fused::persistent_barriers(llama, false), int(llama.size()));
  EXPECT_FALSE(cuda::fused::persistent_attention_handoff({gemv(2048, 2048), gemv(2048, 1000, Epilogue::logits)}));
  EXPECT_FALSE(cuda::fused::persistent_attention_handoff(
      {gemv(2048, 3072), attention_phase(), gemv(2048, 1000, Epilogue::logits)}));
  handoff.emplace("LMX_FUSED_HANDOFF", "0");
  EXPECT_FALSE(cuda::fused::persistent_attention_handoff(llama));
}

// Each attention whose chunks the next GEMV's input would merge (one kv head, more than
// one chunk) gets sums of its own (summed_chunks), which the GEMV before it zeroes: [Hq·D]
// values, [Hq] weights and the flag, to 16 bytes. Not where one chunk needs no merge, nor
// for several kv heads (their last block merges), nor in a deterministic step, nor with
// LMX_FUSED_SUMS=0.
TEST(PersistentPlan, SumsTheChunksThatEveryBlockWouldMerge) {
  namespace fused = cuda::fused;
  auto layer = [](int splits, int kv_heads = 1) {
    StepPhase a = attention_phase(4, kv_heads, 256);  // Gemma3-1B's heads
    a.attn.splits = splits;
    return std::vector<StepPhase>{gemv(1152, 1536), a, gemv(1024, 1152)};
  };
  std::vector<StepPhase> plan = layer(24);
  for (const StepPhase& p : layer(1)) plan.push_back(p);
  for (const StepPhase& p : layer(24)) plan.push_back(p);
  const size_t per_layer = (4 * 256 + 4 + 1 + 3) / 4 * 4;
  std::optional<test::ScopedEnv> sums_env(std::in_place, "LMX_FUSED_SUMS", nullptr);
  EXPECT_EQ(fused::persistent_sums_floats(plan, false), 0u) << "deterministic";
  ASSERT_EQ(fused::persistent_sums_floats(plan), 2 * per_layer) << "the two layers of 24 chunks";
  std::vector<float> sums(2 * per_layer);
  fused::persistent_sum_chunks(plan, sums.data());
  EXPECT_EQ(plan[1].attn.sums, sums.data());
  EXPECT_EQ(plan[0].zero, sums.data());
  EXPECT_EQ(plan[0].zero_n, int(per_layer));
  EXPECT_EQ(plan[4].attn.sums, nullptr) << "one chunk";
  EXPECT_EQ(plan[3].zero, nullptr);
  EXPECT_EQ(plan[7].attn.sums, sums.data() + per_layer);
  EXPECT_EQ(plan[6].zero, plan[7].attn.sums);
  EXPECT_EQ(fused::persistent_sums_floats(layer(12, 2)), 0u) << "two kv heads";
  sums_env.emplace("LMX_FUSED_SUMS", "0");
  EXPECT_EQ(fused::persistent_sums_floats(layer(24)), 0u);
}

// The copies may run half the ring past the workers' phase (at least a stage), or what
// LMX_FUSED_LOOKAHEAD says, up to the whole ring.
TEST(PersistentPlan, CopiesRunHalfTheRingPastTheWorkersPhase) {
  using cuda::fused::persistent_lookahead;
  std::optional<test::ScopedEnv> lookahead(std::in_place, "LMX_FUSED_LOOKAHEAD", nullptr);
  EXPECT_EQ(persistent_lookahead(2), 1);
  EXPECT_EQ(persistent_lookahead(3), 1) << "Qwen3-0.6B's ring";
  EXPECT_EQ(persistent_lookahead(5), 2) << "Gemma-3-1B's";
  EXPECT_EQ(persistent_lookahead(6), 3) << "Llama-3.2-1B's";
  lookahead.emplace("LMX_FUSED_LOOKAHEAD", "0");
  EXPECT_EQ(persistent_lookahead(6), 0);
  lookahead.emplace("LMX_FUSED_LOOKAHEAD", "9");
  EXPECT_EQ(persistent_lookahead(6), 6) << "the whole ring at most";
}

// The persistent kernel's form: the one compiled for a plan's attention shape where it
// lacks nothing the plan needs (the merge of one kv head's chunks in the O input, staged
// inputs), else the general one; always the general one under LMX_FUSED_SPECIALISED=0.
TEST(PersistentPlan, PicksTheKernelFormCompiledForTheModelsShape) {
  auto layer = [](int hidden, int heads, int kv_heads, int head_dim, int splits) {
    StepPhase qkv = gemv(hidden, (heads + 2 * kv_heads) * head_dim);
    qkv.in.norm = fake_weights(0x20000);  // a norm: held in registers up to 2,048 values, else staged
    StepPhase a = attention_phase(heads, kv_heads, head_dim);
    a.attn.splits = splits;
    return std::vector<StepPhase>{qkv, a, gemv(heads * head_dim, hidden)};
  };
  auto form = [](const std::vector<StepPhase>& plan) {
    const cuda::fused::PersistentKernel k = cuda::fused::persistent_kernel(plan);
    return std::tuple(k.head_dim, k.group, k.merge_input, k.staged, k.two_boxes);
  };
  const auto general = std::tuple(0, 0, true, true, true);
  std::optional<test::ScopedEnv> specialised(std::in_place, "LMX_FUSED_SPECIALISED", nullptr);
  EXPECT_GT(cuda::fused::persistent_kernel(layer(2048, 32, 8, 64, 12)).form, 0) << "a specialised form's place";
  EXPECT_EQ(cuda::fused::persistent_kernel(layer(2048, 32, 8, 32, 12)).form, 0) << "the general form's place";
  EXPECT_EQ(form(layer(2048, 32, 8, 64, 12)), std::tuple(64, 4, false, false, false)) << "Llama-3.2-1B";
  EXPECT_EQ(form(layer(1024, 16, 8, 128, 12)), std::tuple(128, 2, false, false, true)) << "Qwen3-0.6B";
  EXPECT_EQ(form(layer(1152, 4, 1, 256, 24)), std::tuple(256, 4, true, false, false))
      << "Gemma-3-1B: every block merges";
  EXPECT_EQ(form(layer(1152, 4, 1, 256, 1)), std::tuple(256, 4, true, false, false))
      << "one chunk: no merge, same form";
  EXPECT_EQ(form(layer(4096, 32, 8, 128, 12)), std::tuple(128, 4, false, true, false)) << "Llama-3.1-8B: staged inputs";
  EXPECT_EQ(form(layer(2048, 32, 8, 128, 12)), std::tuple(128, 4, false, true, false))
      << "a form with more than needed";
  EXPECT_EQ(form(layer(4096, 16, 8, 128, 12)), general) << "Qwen3's heads with staged inputs: no such form";
  EXPECT_EQ(form(layer(2048, 4, 1, 64, 24)), general) << "Llama's heads, one kv head: the merge is not compiled in";
  EXPECT_EQ(form(layer(3072, 24, 8, 128, 12)), std::tuple(128, 3, false, true, false)) << "Llama-3.2-3B";
  EXPECT_EQ(form(layer(2560, 8, 4, 256, 12)), std::tuple(256, 2, false, true, false)) << "Gemma-3-4B";
  EXPECT_EQ(form(layer(3072, 24, 8, 64, 12)), general) << "3 query heads of 64 a kv head: no such form";
  std::vector<StepPhase> mixed = layer(2048, 32, 8, 64, 12);
  for (const StepPhase& p : layer(2048, 16, 8, 128, 12)) mixed.push_back(p);
  EXPECT_EQ(form(mixed), general) << "attentions of two shapes";
  EXPECT_EQ(form({gemv(2048, 2048), gemv(2048, 1000, Epilogue::logits)}), general) << "no attention";
  // A fused down of two boxes a stage (Qwen3-0.6B's 12 KiB boxes): only Qwen3's form and
  // the general one compile it.
  auto two_boxes = [&](std::vector<StepPhase> plan) {
    plan.back().down_boxes = 2;
    return plan;
  };
  EXPECT_EQ(form(two_boxes(layer(1024, 16, 8, 128, 12))), std::tuple(128, 2, false, false, true)) << "Qwen3-0.6B";
  EXPECT_EQ(form(two_boxes(layer(2048, 32, 8, 64, 12))), general) << "Llama's heads: two boxes not compiled in";
  specialised.emplace("LMX_FUSED_SPECIALISED", "0");
  EXPECT_EQ(form(layer(2048, 32, 8, 64, 12)), general);
}

}  // namespace persistent

}  // namespace
}  // namespace lmx
#endif
