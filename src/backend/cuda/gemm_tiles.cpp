// Large bf16 GEMMs at a tile measured faster than cuBLAS's own pick (cuBLASLt).
//
// Why: a classification pass holds the H200 at its 700 W power cap, the SM clock near
// 1,500-1,600 MHz, and there the time of a GEMM follows what it spends, not what it would
// take at full clocks. cuBLAS picks its kernel for full clocks. With Llama-3.2-1B's gate
// and up products (8,192 × 2,048) at the heuristic's 176 × 128 tile, its classification
// of 1,024 × 32 ran 1.2% and 3.5% faster than with cuBLAS's pick on two machines, 256 × 32
// 3.1% and a 16,384-token prefill 1.6% (alternating runs; the heuristic's first tile,
// 192 × 192, through this same path: 0.2%): bench/NOTES.md, "cuBLASLt's candidates under
// the power cap". Why that tile spends less is not established, so the table below holds
// only shapes measured in the pipeline.
//
// The tile changes how the output is cut into blocks, not the order of any sum: every
// candidate taken here has no split-K, so each output is summed over K in the same order
// and rounded once. LMX_GEMM_TILES=0 turns the table off.
#include <cublasLt.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

#include "backend/cuda/cuda_ops.h"

namespace lmx::cuda {
namespace {

struct Preferred {
  int64_t n, k;  // outputs and inputs of the product
  int tile;      // cublasLtMatmulTile_t
};
// Hopper (sm_90), bf16, at least kMinRows rows (a classification pass or a long prompt).
constexpr Preferred kPreferred[] = {
    {8192, 2048, CUBLASLT_MATMUL_TILE_176x128},  // Llama-3.2-1B's gate and up
};
constexpr int64_t kMinRows = 8192;

int preferred_tile(const Context& ctx, int64_t m, int64_t n, int64_t k) {
  if (ctx.compute_capability != 90 || m < kMinRows) return 0;
  if (!switch_on("LMX_GEMM_TILES")) return 0;  // read each time: a GEMM this large takes milliseconds
  for (const Preferred& p : kPreferred)
    if (p.n == n && p.k == k) return p.tile;
  return 0;
}

// One shape's descriptors and the chosen algorithm; `found` is false where the heuristic
// did not offer the tile (then cuBLAS's own pick runs).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w = nullptr, x = nullptr, out = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool found = false;
  ~Plan() {
    for (cublasLtMatrixLayout_t l : {w, x, out})
      if (l) cublasLtMatrixLayoutDestroy(l);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

uint32_t config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t what) {
  uint32_t v = 0;
  size_t got = 0;
  return cublasLtMatmulAlgoConfigGetAttribute(&algo, what, &v, sizeof v, &got) == CUBLAS_STATUS_SUCCESS ? v : 0;
}

// The alignment, up to 256 bytes, that the heuristic may count on for a pointer: it takes
// 256 unless told less, and an algorithm chosen for more than a pointer has may fail on it.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return uint32_t(std::min<uintptr_t>(256, a & (~a + 1)));
}

// out [M, N] = x [M, K] · w [N, K]ᵀ, row-major with leading dimensions ldx and ldw; in
// cuBLASLt's column-major terms outᵀ = wᵀ-as-stored (op T) · xᵀ (op N), as matmul's call.
std::unique_ptr<Plan> make_plan(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k, int64_t ldw, int64_t ldx,
                                const uint32_t (&aligned)[3], int tile) {
  auto p = std::make_unique<Plan>();
  const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
  check_blas(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  check_blas(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t),
             "cublasLtMatmulDescSetAttribute");
  check_blas(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn),
             "cublasLtMatmulDescSetAttribute");
  check_blas(cublasLtMatrixLayoutCreate(&p->w, CUDA_R_16BF, uint64_t(k), uint64_t(n), ldw),
             "cublasLtMatrixLayoutCreate");
  check_blas(cublasLtMatrixLayoutCreate(&p->x, CUDA_R_16BF, uint64_t(k), uint64_t(m), ldx),
             "cublasLtMatrixLayoutCreate");
  check_blas(cublasLtMatrixLayoutCreate(&p->out, CUDA_R_16BF, uint64_t(n), uint64_t(m), n),
             "cublasLtMatrixLayoutCreate");
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const size_t most = size_t(64) << 20;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &most, sizeof most);
  const cublasLtMatmulPreferenceAttributes_t of[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  const uint32_t bytes[4] = {aligned[0], aligned[1], aligned[2], aligned[2]};  // w, x, then out twice
  for (int i = 0; i < 4; ++i) cublasLtMatmulPreferenceSetAttribute(pref, of[i], &bytes[i], sizeof bytes[i]);
  cublasLtMatmulHeuristicResult_t res[16];
  int found = 0;
  const cublasStatus_t s =
      cublasLtMatmulAlgoGetHeuristic(lt, p->desc, p->w, p->x, p->out, p->out, pref, 16, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS) return p;
  for (int i = 0; i < found && !p->found; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS && int(config(res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID)) == tile &&
        config(res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) <= 1)
      p->algo = res[i].algo, p->workspace = res[i].workspaceSize, p->found = true;
  return p;
}

// The plans, one per (device, shape, leading dimensions, alignments), shared by the
// threads of a process. Prompts of many lengths past kMinRows would each add one, so the
// cache keeps the kMaxPlans used last; a plan is held by shared_ptr, so one evicted while
// another thread multiplies with it lives until that call returns.
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t>;
struct Cached {
  std::shared_ptr<const Plan> plan;
  uint64_t used = 0;  // the lookup that last returned it
};
constexpr size_t kMaxPlans = 32;
std::mutex plans_mutex;  // guards the three below
std::map<int, cublasLtHandle_t> handles;  // per device, for the process's life
std::map<PlanKey, Cached> plans;
uint64_t lookups = 0;
std::atomic<int64_t> tuned{0};

std::shared_ptr<const Plan> plan_for(const Context& ctx, cublasLtHandle_t& lt, const PlanKey& key, int tile) {
  std::lock_guard<std::mutex> lock(plans_mutex);
  cublasLtHandle_t& h = handles[ctx.device];
  if (!h) check_blas(cublasLtCreate(&h), "cublasLtCreate");
  lt = h;
  if (auto it = plans.find(key); it != plans.end()) {
    it->second.used = ++lookups;
    return it->second.plan;
  }
  if (plans.size() >= kMaxPlans)
    plans.erase(std::min_element(plans.begin(), plans.end(),
                                 [](const auto& a, const auto& b) { return a.second.used < b.second.used; }));
  const auto [device, m, n, k, ldw, ldx, a0, a1, a2] = key;
  const uint32_t aligned[3] = {a0, a1, a2};
  std::shared_ptr<const Plan> plan = make_plan(lt, m, n, k, ldw, ldx, aligned, tile);
  plans[key] = {plan, ++lookups};
  return plan;
}

}  // namespace

int64_t tuned_gemms() { return tuned.load(); }

size_t gemm_tile_plans() {
  std::lock_guard<std::mutex> lock(plans_mutex);
  return plans.size();
}

bool gemm_at_preferred_tile(const Context& ctx, const void* w, int64_t ldw, const void* x, int64_t ldx, void* out,
                            int64_t m, int64_t n, int64_t k) {
  const int tile = preferred_tile(ctx, m, n, k);
  if (tile == 0) return false;
  cublasLtHandle_t lt = nullptr;
  const std::shared_ptr<const Plan> plan =
      plan_for(ctx, lt, {ctx.device, m, n, k, ldw, ldx, alignment(w), alignment(x), alignment(out)}, tile);
  if (!plan->found) return false;
  // From the caching allocator, in stream order, like any other array of the op; none
  // where the algorithm needs none.
  std::optional<Array> workspace;
  if (plan->workspace > 0) workspace.emplace(Shape{int64_t(plan->workspace)}, Dtype::u8, Device::cuda(ctx.device));
  const float alpha = 1.0f, beta = 0.0f;
  check_blas(cublasLtMatmul(lt, plan->desc, &alpha, w, plan->w, x, plan->x, &beta, out, plan->out, out, plan->out,
                            &plan->algo, workspace ? workspace->raw() : nullptr, plan->workspace, ctx.stream),
             "cublasLtMatmul");
  tuned.fetch_add(1);
  return true;
}

}  // namespace lmx::cuda
