// Every GEMM of the backend's ops (matmul, the paired projections, the attention's scores and
// values): through cuBLASLt with a plan kept per shape, or through cublasGemmStridedBatchedEx.
//
// Why plans: a short prompt's prefill waits on the host, not the GPU. A 128-token prompt of
// Qwen3-0.6B makes 252 products that take 2-7 µs each on the GPU, and cuBLAS's call cost
// about 12.5 µs of host time each on the H200 machine: about 3 ms of its first token
// (bench/NOTES.md p46). cublasLtMatmul with the descriptors and the algorithm kept per shape
// measured 11.3 µs there (the same kernels: the heuristic's first is cuBLAS's pick), a
// smaller gain than expected; fewer products did more (matmul_pair up to kPairedRowsUpTo
// rows). Products of up to kPlannedFlops take a plan; larger ones keep cuBLAS's own call,
// whose host time their GPU time hides, and with which the classification and long-prompt
// figures were measured.
//
// Why a tile table: a classification pass holds the H200 at its 700 W power cap, the SM
// clock near 1,500-1,600 MHz, and there the time of a GEMM follows what it spends, not what
// it would take at full clocks. cuBLAS picks its kernel for full clocks. With Llama-3.2-1B's
// gate and up products (8,192 × 2,048) at the heuristic's 176 × 128 tile, its
// classification of 1,024 × 32 ran 1.2% and 3.5% faster than with cuBLAS's pick on two
// machines, 256 × 32 3.1% and a 16,384-token prefill 1.6% (alternating runs; the heuristic's
// first tile, 192 × 192, through this same path: 0.2%): bench/NOTES.md, "cuBLASLt's
// candidates under the power cap". Why that tile spends less is not established, so the
// table holds only shapes measured in the pipeline. A tile changes how the output is cut
// into blocks, not the order of any sum: the candidates taken for it have no split-K.
//
// Either way the sums are f32 and rounded once: a split-K plan reduces its parts in f32
// (no reduction in the output's dtype), as the handle's math mode asks of cuBLAS's own
// call (device.cpp). LMX_GEMM_PLANS=0 and LMX_GEMM_TILES=0 turn the two routes off.
#include <cublasLt.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm.h"
#include "core/error.h"

namespace lmx::cuda {
namespace {

// Products of at most this many flops (2·M·N·K over the batch) take a kept plan: about
// 10 µs of GPU time or less, where the host's time per call is what paces a prompt.
constexpr double kPlannedFlops = 4.3e9;

struct Preferred {
  int64_t n, k;  // outputs and inputs of the product
  int tile;      // cublasLtMatmulTile_t
};
// Hopper (sm_90), bf16, at least kMinRows rows (a classification pass or a long prompt).
constexpr Preferred kPreferred[] = {
    {8192, 2048, CUBLASLT_MATMUL_TILE_176x128},  // Llama-3.2-1B's gate and up
};
constexpr int64_t kMinRows = 8192;

// The table's tile for x·wᵀ (weights transposed, rows dense: op T then op N), or 0.
int preferred_tile(const Context& ctx, const Gemm& g) {
  if (ctx.compute_capability != 90 || g.type != CUDA_R_16BF || g.batch != 1 || g.op_a != CUBLAS_OP_T ||
      g.op_b != CUBLAS_OP_N || g.n < kMinRows)
    return 0;
  if (!switch_on("LMX_GEMM_TILES")) return 0;
  for (const Preferred& p : kPreferred)
    if (p.n == g.m && p.k == g.k) return p.tile;
  return 0;
}

// One shape's descriptors and its algorithm; `found` is false where the heuristic offered
// none (or not the tile asked for): then cuBLAS's own call runs.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool found = false;
  ~Plan() {
    for (cublasLtMatrixLayout_t l : {a, b, c})
      if (l) cublasLtMatrixLayoutDestroy(l);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

uint32_t config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t what) {
  uint32_t v = 0;
  size_t got = 0;
  return cublasLtMatmulAlgoConfigGetAttribute(&algo, what, &v, sizeof v, &got) == CUBLAS_STATUS_SUCCESS ? v : 0;
}

// The alignment, up to 256 bytes, that the heuristic may count on for every matrix of a
// batch: it takes 256 unless told less, and an algorithm chosen for more than a pointer
// has may fail on it.
uint32_t alignment(const void* p, int64_t batch_stride_bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p) | uintptr_t(batch_stride_bytes);
  return uint32_t(std::min<uintptr_t>(256, a & (~a + 1)));
}

size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// The plans, one per (device, shape, leading dimensions, strides, alignments, tile), shared
// by the threads of a process. Prompts of many lengths each add a few, so the cache keeps
// the kGemmPlansKept used last; a plan is held by shared_ptr, so one evicted while another
// thread multiplies with it lives until that call returns.
using PlanKey = std::tuple<int, int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t, int>;
struct Cached {
  std::shared_ptr<const Plan> plan;
  uint64_t used = 0;  // the lookup that last returned it
};
std::mutex plans_mutex;  // guards the three below
std::map<int, cublasLtHandle_t> handles;  // per device, for the process's life
std::map<PlanKey, Cached> plans;
uint64_t lookups = 0;
std::atomic<int64_t> planned{0}, tuned{0};

cublasLtMatrixLayout_t layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                              int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  check_blas(cublasLtMatrixLayoutCreate(&l, t, uint64_t(rows), uint64_t(cols), ld), "cublasLtMatrixLayoutCreate");
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
    cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
  }
  return l;
}

std::unique_ptr<Plan> make_plan(cublasLtHandle_t lt, const Gemm& g, const uint32_t (&aligned)[3], int tile) {
  auto p = std::make_unique<Plan>();
  check_blas(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  check_blas(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &g.op_a, sizeof g.op_a),
             "cublasLtMatmulDescSetAttribute");
  check_blas(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &g.op_b, sizeof g.op_b),
             "cublasLtMatmulDescSetAttribute");
  // Column-major: op(A) is [m, k], so A as stored is [m, k] (N) or [k, m] (T); B likewise.
  const bool ta = g.op_a == CUBLAS_OP_T, tb = g.op_b == CUBLAS_OP_T;
  p->a = layout(g.type, ta ? g.k : g.m, ta ? g.m : g.k, g.lda, g.batch, g.stride_a);
  p->b = layout(g.type, tb ? g.n : g.k, tb ? g.k : g.n, g.ldb, g.batch, g.stride_b);
  p->c = layout(g.type, g.m, g.n, g.ldc, g.batch, g.stride_c);
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const size_t most = size_t(32) << 20;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &most, sizeof most);
  const uint32_t f32_parts = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;  // split-K sums in f32 only
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &f32_parts,
                                       sizeof f32_parts);
  const cublasLtMatmulPreferenceAttributes_t of[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  const uint32_t bytes[4] = {aligned[0], aligned[1], aligned[2], aligned[2]};  // a, b, then c twice
  for (int i = 0; i < 4; ++i) cublasLtMatmulPreferenceSetAttribute(pref, of[i], &bytes[i], sizeof bytes[i]);
  cublasLtMatmulHeuristicResult_t res[16];
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, p->desc, p->a, p->b, p->c, p->c, pref,
                                                          tile ? 16 : 1, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS) return p;
  for (int i = 0; i < found && !p->found; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS &&
        (!tile || (int(config(res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID)) == tile &&
                   config(res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) <= 1)))
      p->algo = res[i].algo, p->workspace = res[i].workspaceSize, p->found = true;
  return p;
}

std::shared_ptr<const Plan> plan_for(const Context& ctx, cublasLtHandle_t& lt, const Gemm& g, int tile) {
  const size_t item = type_bytes(g.type);
  const uint32_t aligned[3] = {alignment(g.a, g.stride_a * int64_t(item)), alignment(g.b, g.stride_b * int64_t(item)),
                               alignment(g.c, g.stride_c * int64_t(item))};
  const PlanKey key{ctx.device, int(g.type), int(g.op_a), int(g.op_b), g.m, g.n, g.k, g.lda, g.ldb, g.ldc,
                    g.batch, g.stride_a, g.stride_b, g.stride_c, aligned[0], aligned[1], aligned[2], tile};
  std::lock_guard<std::mutex> lock(plans_mutex);
  cublasLtHandle_t& h = handles[ctx.device];
  if (!h) check_blas(cublasLtCreate(&h), "cublasLtCreate");
  lt = h;
  if (auto it = plans.find(key); it != plans.end()) {
    it->second.used = ++lookups;
    return it->second.plan;
  }
  if (plans.size() >= kGemmPlansKept)
    plans.erase(std::min_element(plans.begin(), plans.end(),
                                 [](const auto& a, const auto& b) { return a.second.used < b.second.used; }));
  std::shared_ptr<const Plan> plan = make_plan(lt, g, aligned, tile);
  plans[key] = {plan, ++lookups};
  return plan;
}

// Through a kept plan; false (nothing done) where the heuristic offered none.
bool planned_gemm(const Context& ctx, const Gemm& g, int tile, const char* what) {
  cublasLtHandle_t lt = nullptr;
  const std::shared_ptr<const Plan> plan = plan_for(ctx, lt, g, tile);
  if (!plan->found) return false;
  // From the caching allocator, in stream order, like any other array of the op; none
  // where the algorithm needs none.
  std::optional<Array> workspace;
  if (plan->workspace > 0) workspace.emplace(Shape{int64_t(plan->workspace)}, Dtype::u8, Device::cuda(ctx.device));
  const float alpha = 1.0f, beta = 0.0f;
  check_blas(cublasLtMatmul(lt, plan->desc, &alpha, g.a, plan->a, g.b, plan->b, &beta, g.c, plan->c, g.c, plan->c,
                            &plan->algo, workspace ? workspace->raw() : nullptr, plan->workspace, ctx.stream),
             what);
  (tile ? tuned : planned).fetch_add(1);
  return true;
}

}  // namespace

int64_t tuned_gemms() { return tuned.load(); }
int64_t planned_gemms() { return planned.load(); }

size_t gemm_plans() {
  std::lock_guard<std::mutex> lock(plans_mutex);
  return plans.size();
}

void gemm(const Context& ctx, const Gemm& g, const char* what) {
  for (int64_t v : {g.m, g.n, g.k, g.batch, g.lda, g.ldb, g.ldc})
    LMX_CHECK(v <= int64_t(INT32_MAX), what, "a dimension of ", v, " is too large for cuBLAS; split the product");
  const int tile = preferred_tile(ctx, g);
  const bool small = 2.0 * double(g.m) * double(g.n) * double(g.k) * double(g.batch) <= kPlannedFlops;
  if (tile && planned_gemm(ctx, g, tile, what)) return;
  if (!tile && small && switch_on("LMX_GEMM_PLANS") && planned_gemm(ctx, g, 0, what)) return;
  const float alpha = 1.0f, beta = 0.0f;
  check_blas(cublasGemmStridedBatchedEx(ctx.blas, g.op_a, g.op_b, int(g.m), int(g.n), int(g.k), &alpha, g.a, g.type,
                                        int(g.lda), g.stride_a, g.b, g.type, int(g.ldb), g.stride_b, &beta, g.c,
                                        g.type, int(g.ldc), g.stride_c, int(g.batch), CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT),
             what);
}

}  // namespace lmx::cuda
