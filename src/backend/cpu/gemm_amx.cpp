// bf16 products by a weight on AMX tiles (Intel Xeon from Sapphire Rapids on), at every row
// count. One TDPBF16PS multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums:
// 8,192 products, where VDPBF16PS makes 512. Prompts are bound by their products, and on
// VDPBF16PS a CPU with tiles ran them at a quarter of torch's speed (which uses the tiles).
//
// The form: W's rows are the A side, read as stored (16 rows by 32 columns, each row's 64
// bytes K·2 apart), and x's rows the B side, packed so that row r of a B tile holds columns
// 2r and 2r+1 of every x row of a group (the pairs the instruction takes). A tile of sums is
// 16 W rows by a group's x rows: 16, or all of them where a product has fewer, which then
// take narrower tiles (a decode step's one row is its own B tile, unpacked). Every sum runs
// over K in steps of 32 columns, one after another in the same f32 element, whatever chunks
// the steps are cut into (a chunk's sums leave the tiles and come back bit for bit): an
// output depends only on its row of x, its row of W and K, so a row has the same bits alone,
// in a batch's decode step or in a prompt.
//
// The kernel needs the tiles granted by Linux (arch_prctl, from 5.16), K a multiple of 32
// and N of 16; gemm_bf16 takes the rest, by K and N alone, so a row's form never depends on
// its neighbours. Like VDPBF16PS, the instruction treats subnormal inputs as zeros.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_fast.h"
#include "core/thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define LMX_AMX 1
#endif

namespace lmx::cpu {

#ifdef LMX_AMX
namespace {

#define LMX_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))

constexpr int64_t kStep = 32;  // columns of K a step (an A tile's row of 64 bytes)

// The tiles' shapes (palette 1). Tiles 0-3 hold sums, C(w, g) = tile 2w + g for the W tile w
// and x group g of a pair; 4 and 5 are W tiles, 6 and 7 x tiles. With `cols` x rows a group,
// B's and C's rows are 4·cols bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

TileConfig tile_config(int64_t cols) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = uint16_t(t == 4 || t == 5 ? 64 : 4 * cols);
  }
  return c;
}

// The CPU has AMX-TILE and AMX-BF16 (CPUID 7.0: EDX bits 24 and 22), and Linux lets this
// process use the tiles' 8 KiB of state (asked once; the grant holds for every thread).
bool granted() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(edx & (1u << 22)) || !(edx & (1u << 24))) return false;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

// x's B tiles: xp [group][step][pair r][row j of the group][2] = x[group·cols + j][32·step
// + 2r + {0, 1}], 32·cols elements a tile, zeros for rows past m.
void pack_groups(const uint16_t* a, int64_t a_row, int64_t m, int64_t steps, int64_t cols, int64_t g_begin,
                 int64_t g_end, uint16_t* xp) {
  const int64_t tile = kStep * cols;
  for (int64_t g = g_begin; g < g_end; ++g)
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t row = g * cols + j;
      uint16_t* dst = xp + g * steps * tile + 2 * j;
      if (row >= m) {
        for (int64_t s = 0; s < steps; ++s)
          for (int64_t r = 0; r < 16; ++r) dst[s * tile + r * 2 * cols] = dst[s * tile + r * 2 * cols + 1] = 0;
        continue;
      }
      const uint16_t* src = a + row * a_row;
      for (int64_t s = 0; s < steps; ++s)
        for (int64_t r = 0; r < 16; ++r) {
          dst[s * tile + r * 2 * cols] = src[s * kStep + 2 * r];
          dst[s * tile + r * 2 * cols + 1] = src[s * kStep + 2 * r + 1];
        }
    }
}

// The operands of one run of steps: TW W tiles (w, and w + 16 rows) by TG x groups (x, and
// x + x_group), their sums in c[2w + g].
struct Run {
  const uint16_t* w;
  int64_t w_row_bytes;  // K·2: from one W row to the next
  const uint16_t* x;
  int64_t x_group, x_step;  // elements from one group's tiles to the next's, one step's to the next
  int64_t row_bytes;        // 4·cols: from one row of a B tile (pairs) or of sums to the next
  int64_t steps;
  float* c[4];
  bool fresh;  // the sums start from zeros, not from c
};

// Adds the products of `steps` steps to the sums. (In a decode step the W tiles come from
// memory; fetching their rows' lines 3 to 24 steps ahead in software made it 0.65x as fast.)
// The tile intrinsics' asm names no memory, so the compiler is told at both ends that any may
// have been read or written: the sums stored here are read back in plain C++.
template <int TW, int TG>
LMX_AMX_TARGET void run_steps(const Run& r) {
  asm volatile("" ::: "memory");
  if (r.fresh) {
    _tile_zero(0);
    if constexpr (TG == 2) _tile_zero(1);
    if constexpr (TW == 2) _tile_zero(2);
    if constexpr (TW == 2 && TG == 2) _tile_zero(3);
  } else {
    _tile_loadd(0, r.c[0], r.row_bytes);
    if constexpr (TG == 2) _tile_loadd(1, r.c[1], r.row_bytes);
    if constexpr (TW == 2) _tile_loadd(2, r.c[2], r.row_bytes);
    if constexpr (TW == 2 && TG == 2) _tile_loadd(3, r.c[3], r.row_bytes);
  }
  const int64_t w_tile = 16 * (r.w_row_bytes / 2);  // elements from one W tile to the next
  for (int64_t s = 0; s < r.steps; ++s) {
    const uint16_t* w = r.w + s * kStep;
    const uint16_t* x = r.x + s * r.x_step;
    _tile_loadd(4, w, r.w_row_bytes);
    _tile_loadd(6, x, r.row_bytes);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (TG == 2) {
      _tile_loadd(7, x + r.x_group, r.row_bytes);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (TW == 2) {
      _tile_loadd(5, w + w_tile, r.w_row_bytes);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (TG == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, r.c[0], r.row_bytes);
  if constexpr (TG == 2) _tile_stored(1, r.c[1], r.row_bytes);
  if constexpr (TW == 2) _tile_stored(2, r.c[2], r.row_bytes);
  if constexpr (TW == 2 && TG == 2) _tile_stored(3, r.c[3], r.row_bytes);
  asm volatile("" ::: "memory");
}

// GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes, which let it drop the stores
// of the shapes (every tile then unconfigured, and the first tile instruction undefined):
// this asm reads the whole 64.
LMX_AMX_TARGET void load_config(const TileConfig& c) { asm volatile("ldtilecfg %0" ::"m"(c)); }
LMX_AMX_TARGET void release_tiles() { _tile_release(); }

// How a product is cut: W blocks of w_block tiles by x blocks of x_block groups, one task
// each; each task walks K in chunks of `chunk` steps, x's groups in pairs, and within them
// the block's W tiles in pairs.
struct Plan {
  int64_t m, k, n, steps, cols, groups, w_tiles;
  int64_t w_block, x_block, chunk;
};

Plan plan(int64_t m, int64_t k, int64_t n) {
  Plan p{};
  p.m = m, p.k = k, p.n = n, p.steps = k / kStep, p.cols = std::min<int64_t>(16, m);
  p.groups = (m + p.cols - 1) / p.cols, p.w_tiles = n / 16;
  const int64_t threads = num_threads();
  if (p.groups <= 2) {
    // A decode step: W streams from memory once, in blocks small enough that every thread
    // has four, whole K at a time (no sums leave the tiles).
    p.w_block = std::clamp<int64_t>(p.w_tiles / (4 * threads) / 2 * 2, 2, 16);
    p.x_block = p.groups;
    p.chunk = p.steps;
  } else {
    // A prompt: a block of W rows stays in L2 while every x group of the task passes beside
    // it a chunk of 16 steps (512 columns) at a time; x is cut only where W alone leaves
    // threads idle. On 16 threads of a Xeon, chunks of 8 steps ran 0.72-0.94x as fast, of 32
    // or 64 0.83-1.23x (no clear gain); blocks of 64 W rows beat 128 by 1.16-1.45x where K
    // was 3,072 or 8,192, and lost by 0.93-0.94x where it was 1,024 or 2,048.
    p.w_block = k >= 3072 ? 4 : 8;
    const int64_t w_tasks = (p.w_tiles + p.w_block - 1) / p.w_block;
    const int64_t x_cuts = std::clamp<int64_t>((2 * threads + w_tasks - 1) / w_tasks, 1, (p.groups + 1) / 2);
    p.x_block = ((p.groups + x_cuts - 1) / x_cuts + 1) / 2 * 2;
    p.chunk = std::min<int64_t>(p.steps, 16);
  }
  return p;
}

// The sums of W tiles [t0, t1) by x groups [g0, g1), written to `out` as bf16.
void run_task(const Plan& p, const uint16_t* w, const uint16_t* xp, uint16_t* out, int64_t t0, int64_t t1,
              int64_t g0, int64_t g1, std::vector<float>& acc) {
  const int64_t tiles = t1 - t0, tile_sums = 16 * p.cols, x_tile = kStep * p.cols;
  acc.resize(size_t(tiles * (g1 - g0) * tile_sums));
  auto sums = [&](int64_t t, int64_t g) { return acc.data() + ((g - g0) * tiles + (t - t0)) * tile_sums; };
  for (int64_t s0 = 0; s0 < p.steps; s0 += p.chunk) {
    const int64_t len = std::min(p.chunk, p.steps - s0);
    for (int64_t g = g0; g < g1; g += 2) {
      const int64_t tg = std::min<int64_t>(2, g1 - g);
      for (int64_t t = t0; t < t1; t += 2) {
        const int64_t tw = std::min<int64_t>(2, t1 - t);
        Run r{w + t * 16 * p.k + s0 * kStep, 2 * p.k, xp + (g * p.steps + s0) * x_tile, p.steps * x_tile,
              x_tile, 4 * p.cols, len, {}, s0 == 0};
        r.c[0] = sums(t, g);
        r.c[1] = tg == 2 ? sums(t, g + 1) : nullptr;
        r.c[2] = tw == 2 ? sums(t + 1, g) : nullptr;
        r.c[3] = tw == 2 && tg == 2 ? sums(t + 1, g + 1) : nullptr;
        if (tw == 2 && tg == 2) run_steps<2, 2>(r);
        else if (tw == 2) run_steps<2, 1>(r);
        else if (tg == 2) run_steps<1, 2>(r);
        else run_steps<1, 1>(r);
      }
    }
  }
  // A tile of sums is [W row i][x row j]; out is [x row][W row].
  for (int64_t g = g0; g < g1; ++g)
    for (int64_t j = 0; j < p.cols && g * p.cols + j < p.m; ++j) {
      uint16_t* o = out + (g * p.cols + j) * p.n;
      for (int64_t t = t0; t < t1; ++t) {
        const float* c = sums(t, g);
        for (int64_t i = 0; i < 16; ++i) o[t * 16 + i] = f32_to_bf16(c[i * p.cols + j]).bits;
      }
    }
}

}  // namespace

bool amx_available() {
  static const bool has = granted();
  return has;
}

bool amx_on() {
  if (const char* s = std::getenv("LMX_CPU_AMX"); s && std::strcmp(s, "0") == 0) return false;
  return amx_available();
}

bool gemm_amx(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* w, int64_t k, uint16_t* out,
              int64_t n) {
  if (m < 1 || k % kStep != 0 || n % 16 != 0 || k == 0 || n == 0 || !amx_on()) return false;
  const Plan p = plan(m, k, n);
  // One row is its own B tile (a tile of one column: pair r at elements 2r and 2r + 1);
  // more are packed, by the calling thread's buffer, in parallel.
  // (The workers reach the buffer through `xp`: the name `packed` is each thread's own.)
  const uint16_t* xp = a;
  thread_local std::vector<uint16_t> packed;
  if (m > 1) {
    packed.resize(size_t(p.groups * p.steps * kStep * p.cols));
    uint16_t* dst = packed.data();
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / (p.steps * kStep * p.cols));
    parallel_for(p.groups, grain,
                 [&](int64_t g0, int64_t g1) { pack_groups(a, a_row, m, p.steps, p.cols, g0, g1, dst); });
    xp = dst;
  }
  const int64_t w_tasks = (p.w_tiles + p.w_block - 1) / p.w_block;
  const int64_t x_tasks = (p.groups + p.x_block - 1) / p.x_block;
  parallel_for(w_tasks * x_tasks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> acc;
    load_config(tile_config(p.cols));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tw = task % w_tasks, tx = task / w_tasks;
      run_task(p, w, xp, out, tw * p.w_block, std::min(p.w_tiles, (tw + 1) * p.w_block), tx * p.x_block,
               std::min(p.groups, (tx + 1) * p.x_block), acc);
    }
    release_tiles();
  });
  if (packed.capacity() > (size_t(1) << 23)) std::vector<uint16_t>().swap(packed);  // at most 16 MiB kept
  return true;
}

#else  // no AMX on this architecture, compiler or system

bool amx_available() { return false; }
bool amx_on() { return false; }
bool gemm_amx(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, uint16_t*, int64_t) { return false; }

#endif

}  // namespace lmx::cpu
