// The host side of the persistent decode step (fused_persistent.cu): the attention's
// chunks sized to the grid, the down projections folded into their gate/up phases, every
// block's list of stages, and the shared memory all of it takes.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "backend/cuda/fused_gemv.cuh"
#include "backend/cuda/fused_persistent_plan.cuh"
#include "backend/cuda/tensor_map.h"

namespace lmx::cuda::fused {

using namespace step_plan;

namespace {

// Shared memory beyond the slots: the largest input vector with its staged inputs, or the
// largest attention scratch.
size_t vector_bytes(const std::vector<StepPhase>& phases, int blocks) {
  size_t need = 0;
  for (size_t i = 0; i < phases.size(); ++i) {
    const StepPhase& p = phases[i];
    if (p.kind == StepPhase::Kind::gemv) {
      size_t bytes = size_t(p.in.k) * sizeof(bf16);
      const StepPhase* prev = i > 0 ? &phases[i - 1] : nullptr;
      if (staged_input(prev, p)) bytes += size_t(p.in.k) * sizeof(float) * staged_arrays(p.in);
      if (p.down_map) bytes += 8 * sizeof(bf16) * size_t(p.down_units);
      if (p.out.epilogue == Epilogue::argmax) bytes += 2 * size_t(p.in.k);  // the vector's int8 levels
      // With top > 1, a block's rows' bounds below and top_threshold's three histograms.
      if (p.out.epilogue == Epilogue::argmax && p.out.top > 1)
        bytes += sizeof(float) * size_t((p.out.rows[0] + blocks - 1) / blocks) + 3 * 256 * sizeof(unsigned);
      need = std::max(need, bytes);
    } else if (p.kind == StepPhase::Kind::attention)
      need = std::max(need, sizeof(float) * attention_detail::attention_smem_floats(
                                                p.attn.n_heads / p.attn.n_kv_heads, p.attn.head_dim, p.attn.chunk));
  }
  return (need + 1023) / 1024 * 1024;
}

// The kernel's dynamic shared memory: the ring, the input vector (or attention scratch),
// then what beside_vector counts.
constexpr size_t kRoom = 227 * 1024 - kStaticSmem;
// The phases' geometry, two phases' parameters and a block's stage list.
size_t beside_vector(const std::vector<StepPhase>& phases, int stages_per_block) {
  return phases.size() * sizeof(Geometry) + 2 * sizeof(StepPhase) + size_t(stages_per_block) * sizeof(PlannedStage);
}

// The slots the ring takes where they fit. The deeper the ring, the further the copies run
// on through what stalls the workers (the attention, the barriers, a phase's input), but
// copies in flight also slow those parts, which are bound by L2's latency (bench/NOTES.md,
// p19). So the depth follows how much of a layer's weights a block streams. Measured
// against five slots (bench/NOTES.md, p29): Llama-3.2-1B (950 KiB a block a layer on 128
// blocks) 1.015x, 1.009x and 1.012x with six; Gemma3-1B (407 KiB) 0.996x and 0.995x with
// six, 0.992x with four; Qwen3-0.6B (238 KiB) 1.000x with six and with four, 1.009x and
// 1.010x with three. Since the copies past the workers' phase are held to half the ring
// (persistent_lookahead, p33), Qwen3-0.6B runs 1.011x with four against three (p34). Six
// from 640 KiB up, four under 320 KiB, five between.
int ring_slots(const std::vector<StepPhase>& phases, int blocks) {
  double bytes = 0;  // the layers' weights: every GEMV but the LM head
  int layers = 0;
  for (const StepPhase& p : phases) {
    layers += p.kind == StepPhase::Kind::attention ? 1 : 0;
    if (p.kind != StepPhase::Kind::gemv || p.out.epilogue == Epilogue::logits || p.out.epilogue == Epilogue::argmax)
      continue;
    bytes += 2.0 * p.in.k * (p.out.rows[0] + p.out.rows[1] + p.out.rows[2]) * (paired(p) ? 2 : 1);
    if (p.down_map) bytes += 2.0 * p.down_rows * p.out.rows[0];
  }
  const double per_block = bytes / std::max(layers, 1) / std::max(blocks, 1);
  return per_block >= 640 * 1024 ? 6 : per_block < 320 * 1024 ? 4 : 5;
}

// Whether a persistent step folds its down projections into the gate/up phases: not in a
// deterministic one (`fuse` false), nor with LMX_FUSED_DOWN=0.
bool down_fusion_on(bool fuse) { return fuse && switch_on("LMX_FUSED_DOWN"); }

}  // namespace

void persistent_attention_split(AttentionStep& a, int blocks, size_t largest) {
  // Up to one task per block: the default 16- or 32-key chunks give a long cache more tasks
  // than blocks, and a block runs its tasks one after another (Llama at 2,048 tokens: four
  // in each block, 0.64x the graph path's speed). Longer chunks take more shared memory:
  // up to 48 KiB a task's scratch, which left a ring of five slots whole when measured
  // (ring_slots sets the depth now); where that still gives more tasks than blocks, up to
  // 80 KiB, which took a slot (Qwen3 at 2,048 tokens: 29
  // chunks of 80 keys a kv head in two rounds, or 16 of 144 in one, 1.25x as fast:
  // bench/NOTES.md, p24). Where even that gives more, up to `largest`, which leaves the
  // ring two slots: a task's keys not fetched during the barrier, and its q, k and v formed
  // again, cost more than the slots (Qwen3 at 4,096 + 256 tokens 1.24x as fast, at 8,192
  // 1.44x; Llama at 8,192 1.05x; bench/NOTES.md, p26). Not a size between: three slots
  // and still two rounds lost (Llama at 8,192: 0.93x).
  fit_attention_split(a, blocks, 48 << 10);
  if (a.n_kv_heads * a.splits > blocks) fit_attention_split(a, blocks, 80 << 10);
  if (a.n_kv_heads * a.splits > blocks && largest > (80 << 10)) fit_attention_split(a, blocks, largest);
}

namespace {

// Whether phase i's chunks may be summed (persistent_sum_chunks): an attention whose
// chunks the next GEMV's input would merge, after a GEMV that zeroes nothing yet.
bool summable(const std::vector<StepPhase>& phases, size_t i) {
  const StepPhase& p = phases[i];
  return i > 0 && p.kind == StepPhase::Kind::attention && attention_detail::merged_by_next_gemv(p.attn) &&
         phases[i - 1].kind == StepPhase::Kind::gemv && !phases[i - 1].zero;
}

}  // namespace

size_t persistent_sums_floats(const std::vector<StepPhase>& phases, bool on) {
  size_t floats = 0;
  if (on && switch_on("LMX_FUSED_SUMS"))
    for (size_t i = 0; i < phases.size(); ++i)
      if (summable(phases, i)) floats += size_t(attention_detail::sums_floats(phases[i].attn));
  return floats;
}

void persistent_sum_chunks(std::vector<StepPhase>& phases, float* sums) {
  // For tests: a headroom below any score's (-1e30) makes every chunk raise the flag.
  const char* headroom = std::getenv("LMX_FUSED_SUMS_HEADROOM");
  for (size_t i = 0; i < phases.size(); ++i) {
    if (!summable(phases, i)) continue;
    AttentionStep& a = phases[i].attn;
    a.sums = sums;
    if (headroom) a.sums_headroom = std::strtof(headroom, nullptr);
    phases[i - 1].zero = sums, phases[i - 1].zero_n = attention_detail::sums_floats(a);
    sums += attention_detail::sums_floats(a);
  }
}

size_t persistent_scratch_limit(const std::vector<StepPhase>& phases, int stages_per_block) {
  const size_t taken = beside_vector(phases, stages_per_block) + 2 * size_t(kSlotBytes);
  // Whole KiB, as vector_bytes rounds the scratch up to: a byte over and the ring keeps
  // one slot, which persistent_smem_bytes refuses (Qwen3 at 8,192 + 256 tokens fell back
  // to the kernel per phase).
  return taken >= kRoom ? 0 : (kRoom - taken) / 1024 * 1024;
}

bool persistent_attention_handoff(const std::vector<StepPhase>& phases) {
  if (!switch_on("LMX_FUSED_HANDOFF") || phases.size() < 2 ||
      phases[phases.size() - 2].kind == StepPhase::Kind::attention)
    return false;
  return std::any_of(phases.begin(), phases.end(),
                     [](const StepPhase& p) { return p.kind == StepPhase::Kind::attention; });
}

int persistent_barriers(const std::vector<StepPhase>& phases, bool handoff) {
  int n = int(phases.size());
  if (handoff)
    for (const StepPhase& p : phases) n -= p.kind == StepPhase::Kind::attention ? 1 : 0;
  return n;
}

std::vector<PlannedStage> persistent_stage_lists(const std::vector<StepPhase>& phases, int blocks, int* per_block) {
  std::vector<Geometry> table;
  for (const StepPhase& p : phases) table.push_back(geometry_of(p));
  const int n_phases = int(phases.size());
  std::vector<std::vector<PlannedStage>> lists(size_t(std::max(blocks, 0)));
  size_t most = 0;
  const PlannedStage end{0};  // n == 0: the end of a phase's stages
  for (int b = 0; b < blocks; ++b) {
    std::vector<PlannedStage>& list = lists[size_t(b)];
    Cursor cursor(blocks, b);
    Stage st = cursor.next(table.data(), n_phases);
    for (int p = 0; p < n_phases; ++p) {
      for (; st.n > 0 && st.phase == p; st = cursor.next(table.data(), n_phases))
        list.push_back(planned(st));
      list.push_back(end);
    }
    most = std::max(most, list.size() + 1);  // the workers read one entry past the last phase's end
  }
  *per_block = int((most + 3) / 4 * 4);  // copied 16 bytes at a time
  std::vector<PlannedStage> all(size_t(std::max(blocks, 0)) * size_t(*per_block), end);
  for (size_t b = 0; b < lists.size(); ++b)
    std::copy(lists[b].begin(), lists[b].end(), all.begin() + ptrdiff_t(b * size_t(*per_block)));
  return all;
}

int persistent_grid(const std::vector<StepPhase>& phases, int sm_count, bool fuse_down) {
  if (const char* v = std::getenv("LMX_FUSED_GRID")) return std::clamp(std::atoi(v), 1, sm_count);
  if (!down_fusion_on(fuse_down)) return sm_count;
  // A gate/up phase that will take its down projection in (persistent_fuse_down): its
  // `inter` / 8 units are dealt out whole, up to `most` a block. Where the fewest blocks
  // that keep `most` can take exactly `most` each, only they run: in the sm_count grid the
  // blocks with a unit fewer stop streaming before the others, and the phase's tail runs
  // short of the copy limit. Llama-3.2-1B (1,024 units: 8 a block on 128 of 132 SMs)
  // decodes 2.7% faster so. Only where a block's down stages are whole slots (8 units):
  // Qwen3's 3 a block on 128 blocks measured 0.9% slower (bench/NOTES.md, p23).
  int grid = sm_count;
  for (size_t i = 0; i + 1 < phases.size(); ++i) {
    const StepPhase& glu = phases[i];
    if (glu.kind != StepPhase::Kind::gemv || !paired(glu) || phases[i + 1].kind != StepPhase::Kind::gemv ||
        glu.out.rows[0] % 8 != 0 || glu.out.rows[0] < 8 || sm_count < 1)
      continue;
    const int units = glu.out.rows[0] / 8, most = (units + sm_count - 1) / sm_count;
    const int fewest = (units + most - 1) / most;
    if (most != 8 || units % fewest != 0) return sm_count;
    grid = std::min(grid, fewest);
  }
  return grid;
}

std::vector<CUtensorMap> persistent_fuse_down(std::vector<StepPhase>& phases, std::vector<const char*>& names,
                                              int blocks, const void* device_maps, bool fuse) {
  std::vector<CUtensorMap> maps;
  if (!down_fusion_on(fuse) || blocks < 1) return maps;
  auto reads = [](const StepPhase& p, const float* y) {
    return p.kind == StepPhase::Kind::gemv && (p.in.x == y || p.in.add == y);
  };
  for (size_t i = 1; i + 1 < phases.size(); ++i) {
    StepPhase &before = phases[i - 1], &glu = phases[i], &down = phases[i + 1];
    if (glu.kind != StepPhase::Kind::gemv || !paired(glu) || down.kind != StepPhase::Kind::gemv) continue;
    const GemvInput& in = down.in;
    const int inter = glu.out.rows[0], rows = down.out.rows[0];
    // down must be a plain product of exactly the gate/up's output, and its output must be
    // read by nothing between the phase that zeroes it and the gate/up.
    if (down.out.epilogue != Epilogue::plain || down.out.w[1] || in.x != glu.out.y || in.add || in.norm ||
        in.x_out || in.k != inter || inter % 8 != 0 || rows < 1 || before.kind != StepPhase::Kind::gemv ||
        reads(before, down.out.y) || reads(glu, down.out.y) || reinterpret_cast<uintptr_t>(down.out.w[0]) % 16 != 0)
      continue;
    // Each block reads whole boxes of `units` 8-column units, at least its share. An odd
    // count keeps a stage's reads free of bank conflicts (fused_down_rows); so does 8.
    int units = (inter / 8 + blocks - 1) / blocks;
    if (units % 2 == 0 && units % 8 != 0) ++units;
    if (units > kMaxDownUnits) continue;
    int box_rows = std::min({rows, kWorkers, kSlotBytes / (16 * units)});
    // Every stage but the last starts at a multiple of 4 rows, so that its sums go to L2 as
    // 16-byte vectors (fused_down_rows): 11 units' 186 rows a slot become 184.
    if (box_rows < rows) box_rows -= box_rows % 4;
    // Where a box fills at most half a slot (Qwen3-0.6B's 3 units: 12 KiB), a stage takes
    // two: half the trips through the ring (bench/NOTES.md, p30). LMX_FUSED_DOWN_BOXES=1
    // keeps one.
    int boxes = std::min({2, kSlotBytes / (16 * units * box_rows), (rows + box_rows - 1) / box_rows});
    if (const char* v = std::getenv("LMX_FUSED_DOWN_BOXES")) boxes = std::clamp(std::atoi(v), 1, boxes);
    CUtensorMap map;
    // A box row is 16-176 bytes of a row of down; L2 fetching 128 bytes for it measured 1-2%
    // faster for Llama (128-byte rows) than 256 (bench/NOTES.md, p17).
    if (!bf16_tensor_map(map, down.out.w[0], rows, inter, box_rows, 8 * units, CU_TENSOR_MAP_SWIZZLE_NONE,
                         CU_TENSOR_MAP_L2_PROMOTION_L2_128B))
      continue;
    glu.down_map = static_cast<const CUtensorMap*>(device_maps) + maps.size();
    glu.down_y = down.out.y, glu.down_rows = rows, glu.down_units = units, glu.down_box_rows = box_rows;
    glu.down_boxes = boxes, glu.down_w = down.out.w[0];
    before.zero = down.out.y, before.zero_n = rows;
    maps.push_back(map);
    names[i] = "glu+down";
    phases.erase(phases.begin() + std::ptrdiff_t(i) + 1);
    names.erase(names.begin() + std::ptrdiff_t(i) + 1);
  }
  return maps;
}

namespace {

int tile_rows(const StepPhase& p) { return down_tile_rows(p.down_rows, p.down_box_rows); }
size_t tile_values(const StepPhase& p) { return size_t(tile_rows(p)) * 8 * size_t(p.down_units); }  // a block's
bool tiled(const StepPhase& p) { return p.down_map && p.down_boxes > 1; }

// tiles[b][r][c] = w[r][first(b) + c] for the 8·units columns c of block b's boxes
// (first(b): the first column of block b's gate/up rows, as Cursor deals them), zero past
// w's rows and columns; a thread 8 values (16 bytes).
__global__ void tile_down_kernel(const bf16* w, int rows, int cols, int units, int blocks, int rows_out,
                                 bf16* tiles) {
  const size_t n = size_t(blocks) * size_t(rows_out) * size_t(units);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const int u = int(i % size_t(units)), r = int(i / size_t(units) % size_t(rows_out));
    const int b = int(i / (size_t(units) * size_t(rows_out)));
    const int col = (share_start(b, cols / 8, blocks) + u) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < rows && col < cols) v = *reinterpret_cast<const uint4*>(w + size_t(r) * size_t(cols) + size_t(col));
    reinterpret_cast<uint4*>(tiles)[i] = v;
  }
}

}  // namespace

size_t persistent_down_tile_bytes(const std::vector<StepPhase>& phases, int blocks) {
  size_t values = 0;
  for (const StepPhase& p : phases)
    if (tiled(p)) values += size_t(std::max(blocks, 0)) * tile_values(p);
  return values * sizeof(bf16);
}

void persistent_tile_down(cudaStream_t stream, std::vector<StepPhase>& phases, int blocks, bf16* tiles, bool fill) {
  for (StepPhase& p : phases) {
    if (!tiled(p)) continue;
    p.down_tiles = tiles;
    if (fill) {
      const size_t pieces = size_t(blocks) * tile_values(p) / 8;
      const unsigned grid = unsigned(std::min<size_t>((pieces + 255) / 256, 4096));
      tile_down_kernel<<<grid, 256, 0, stream>>>(p.down_w, p.down_rows, p.out.rows[0], p.down_units, blocks,
                                                 tile_rows(p), tiles);
      check(cudaGetLastError(), "fused down's tiled copy");
    }
    tiles += size_t(blocks) * tile_values(p);
  }
}

size_t persistent_smem_bytes(const std::vector<StepPhase>& phases, int blocks, int stages_per_block, unsigned* vector,
                             int* slots, std::string* why) {
  auto refuse = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return size_t(0);
  };
  for (size_t i = 0; i < phases.size(); ++i) {
    const StepPhase& p = phases[i];
    if (p.kind == StepPhase::Kind::attention) {
      if (p.attn.n_heads / p.attn.n_kv_heads > 32 || p.attn.head_dim % 8 != 0)
        return refuse("attention shape");
      // merge_input reads the attention's output as its next GEMV's input
      if (i + 1 == phases.size() || phases[i + 1].kind != StepPhase::Kind::gemv ||
          phases[i + 1].in.k != p.attn.n_heads * p.attn.head_dim)
        return refuse("an attention not followed by its output projection");
      continue;
    }
    if (p.kind != StepPhase::Kind::gemv) return refuse("a phase the kernel does not run");
    if (p.down_map &&
        (!paired(p) || p.down_units < 1 || p.down_units > kMaxDownUnits || p.down_box_rows < 1 ||
         p.down_box_rows > kWorkers || p.down_boxes < 1 || p.down_box_rows * p.down_boxes > kMaxDownStageRows ||
         16 * p.down_units * p.down_box_rows * p.down_boxes > kSlotBytes ||
         (p.down_boxes > 1 && 16 * p.down_units * p.down_box_rows % 128 != 0) ||  // a box's copy: 128-byte aligned
         (p.down_box_rows % 4 != 0 && p.down_box_rows < p.down_rows) ||
         p.down_rows >= kMaxPlannedRows))
      return refuse("a fused down projection of another shape");
    if (p.in.k % 8 != 0) return refuse("a GEMV width that is not a multiple of 8");
    if (p.out.epilogue == Epilogue::argmax && (!p.out.filter || p.out.softcap > 0 || p.in.k % 16 != 0))
      return refuse("a filtered argmax head without its filter, with a softcap, or of a width off 16");
    for (int j = 0; j < 3; ++j)
      if (p.out.rows[j] >= kMaxPlannedRows) return refuse("a matrix with too many rows");
    if (size_t(p.in.k) * sizeof(bf16) * (paired(p) ? 2 : 1) > size_t(kSlotBytes))
      return refuse("a weight row longer than a slot");
    for (int j = 0; j < 3; ++j)
      if (p.out.w[j] && reinterpret_cast<uintptr_t>(p.out.w[j]) % 16 != 0) return refuse("unaligned weights");
  }
  *vector = unsigned(vector_bytes(phases, blocks));
  // As many slots as fit beside the vector, up to ring_slots' count (LMX_FUSED_SLOTS sets
  // it, for measurement).
  const size_t rest = *vector + beside_vector(phases, stages_per_block);
  int most = ring_slots(phases, blocks);
  if (const char* v = std::getenv("LMX_FUSED_SLOTS")) most = std::clamp(std::atoi(v), 2, kMaxSlots);
  *slots = rest >= kRoom ? 0 : int(std::min<size_t>(size_t(most), (kRoom - rest) / kSlotBytes));
  if (*slots < 2) return refuse("not enough shared memory");
  return size_t(*slots) * kSlotBytes + rest;
}

int persistent_lookahead(int slots) {
  if (const char* v = std::getenv("LMX_FUSED_LOOKAHEAD")) return std::clamp(std::atoi(v), 0, slots);
  return std::max(1, slots / 2);
}

// LMX_FUSED_PROFILE=1: per kind of phase, the mean µs per step that block 0 of the
// persistent kernel spent in it and in the barrier after it, printed to stderr. `times`
// holds kTimes ns sums per phase over `steps` steps; `names` names the phases.
void report_persistent_profile(const std::vector<unsigned long long>& times, int64_t steps,
                               const std::vector<const char*>& names, const PersistentKernel& k, int blocks,
                               int slots, int lookahead) {
  std::vector<std::pair<std::string, std::array<double, kTimes>>> sums;
  for (size_t i = 0; i < names.size(); ++i) {
    const char* name = names[i];
    auto it = std::find_if(sums.begin(), sums.end(), [&](const auto& e) { return e.first == name; });
    if (it == sums.end()) it = sums.insert(sums.end(), {name, {}});
    for (int j = 0; j < kTimes; ++j)
      it->second[size_t(j)] += double(times[kTimes * i + size_t(j)]) / 1e3 / double(steps);
  }
  std::fprintf(stderr, "[fused profile] %lld steps, block 0's first warp, us per step: phase (of which input, "
               "waiting for weights, rows; for attention: the new token's q, k and v, waiting for the cached "
               "keys, scores, softmax and values to partial) + barrier (of which waiting for later "
               "blocks to arrive)\n",
               (long long)steps);
  std::fprintf(stderr, "  %d blocks, a ring of %d slots (%d past the workers' phase); kernel form: ", blocks, slots,
               lookahead);
  if (k.head_dim > 0)
    std::fprintf(stderr, "head_dim %d, %d query heads a kv head%s%s%s\n", k.head_dim, k.group,
                 k.merge_input ? ", merge in the next input" : "", k.staged ? ", staged inputs" : "",
                 k.two_boxes ? ", two-box down stages" : "");
  else
    std::fprintf(stderr, "general\n");
  for (const auto& [name, v] : sums) {
    std::fprintf(stderr, "  %-10s %7.1f (%5.1f, %5.1f, %5.1f", name.c_str(), v[0], v[2], v[3], v[4]);
    if (v[7] > 0) std::fprintf(stderr, ", %5.1f", v[7]);
    std::fprintf(stderr, ") + %5.1f (%5.1f)\n", v[1], v[5]);
  }
}

}  // namespace lmx::cuda::fused
