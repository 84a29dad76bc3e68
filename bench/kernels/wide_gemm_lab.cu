// Kernel lab: the wide decode step's products (fused_gemv_rows.cu, launch_gemm_rows), y [M, N]
// f32 = x [M, K] · W [N, K]ᵀ in bf16 with f32 sums, for M = 16, 64 and 128 sequences on the
// projection shapes of one layer of each benchmark model. In a step every layer's weights
// come from DRAM once; so each timing runs a CUDA graph of launches that each read the next
// of several copies of W, which together hold more than L2 (50 MB), and takes the median of
// five replays per launch.
//
//   nvcc -O3 -std=c++20 -arch=sm_90a -o /tmp/wide_gemm_lab bench/kernels/wide_gemm_lab.cu -lcublasLt -lcublas
//
// Variants:
//   01  cublasGemmEx with CUBLAS_GEMM_DEFAULT, the step's call
//   02  cuBLASLt, every one of the heuristic's first 16 candidates; the fastest is printed
//       with its ids (tile, split-K)
//   03  02 among the candidates that need no reduction kernel after them: no split-K, or
//       split-K parts summed in place in the output (CUBLASLT_REDUCTION_SCHEME_INPLACE)
// Prints µs per product, the weights' TB/s and its ratio to 4.3 TB/s, and the ratios of 02
// and 03 to 01; exits 1 if a variant's sampled outputs stray from float64 sums.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "lab.cuh"

using bf16 = __nv_bfloat16;

namespace {

struct Shape {
  const char* model;
  const char* what;
  int n, k;
};
constexpr Shape kShapes[] = {
    {"llama-3.2-1b", "q", 2048, 2048},    {"llama-3.2-1b", "k or v", 512, 2048}, {"llama-3.2-1b", "o", 2048, 2048},
    {"llama-3.2-1b", "gate or up", 8192, 2048}, {"llama-3.2-1b", "down", 2048, 8192},
    {"qwen3-0.6b", "q", 2048, 1024},      {"qwen3-0.6b", "k or v", 1024, 1024},  {"qwen3-0.6b", "o", 1024, 2048},
    {"qwen3-0.6b", "gate or up", 3072, 1024}, {"qwen3-0.6b", "down", 1024, 3072},
    {"gemma3-1b", "q", 1024, 1152},       {"gemma3-1b", "k or v", 256, 1152},    {"gemma3-1b", "o", 1152, 1024},
    {"gemma3-1b", "gate or up", 6912, 1152}, {"gemma3-1b", "down", 1152, 6912},
};
constexpr size_t kPool = size_t(256) << 20;  // bytes of weight copies: five times L2
constexpr size_t kWorkspace = size_t(32) << 20;
constexpr int kLaunches = 32;  // a graph's launches

cublasHandle_t blas;
cublasLtHandle_t lt;
void* workspace;
cudaStream_t stream;

// µs per launch: a graph of kLaunches calls of run(copy), the median of five replays.
template <class Run>
float graph_us(Run&& run, int copies) {
  cudaGraph_t graph;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kLaunches; ++i) run(i % copies);
  CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  CHECK(cudaGraphLaunch(exec, stream));
  std::vector<float> t;
  for (int r = 0; r < 5; ++r) {
    CHECK(cudaEventRecord(a, stream));
    CHECK(cudaGraphLaunch(exec, stream));
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000 / kLaunches);
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  std::sort(t.begin(), t.end());
  return t[2];
}

// Largest error of sampled outputs against float64 sums, relative to the sums of |terms|.
double check(const std::vector<bf16>& hx, const std::vector<bf16>& hw, const float* y, int m, int n, int k) {
  std::vector<float> got(size_t(m) * n);
  CHECK(cudaMemcpy(got.data(), y, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return sampled_gemm_error(hx, hw, m, n, k, [&](int i, int j) { return got[size_t(i) * n + j]; });
}

}  // namespace

int main() {
  CHECK_STATUS(cublasCreate(&blas));
  CHECK_STATUS(cublasLtCreate(&lt));
  CHECK(cudaStreamCreate(&stream));
  CHECK(cudaMalloc(&workspace, kWorkspace));
  CHECK_STATUS(cublasSetStream(blas, stream));
  CHECK_STATUS(cublasSetWorkspace(blas, workspace, kWorkspace));  // a captured call takes no workspace of its own
  bf16 *pool, *x;
  float* y;
  CHECK(cudaMalloc(&pool, kPool));
  CHECK(cudaMalloc(&x, size_t(128) * 8192 * sizeof(bf16)));
  CHECK(cudaMalloc(&y, size_t(128) * 8192 * sizeof(float)));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  bool ok = true;
  std::printf("%-13s %-10s %5s %5s %4s | %8s %6s | %8s %6s %6s | %8s %6s  the fastest candidates\n", "model",
              "product", "N", "K", "M", "01 us", "TB/s", "02 us", "TB/s", "02/01", "03 us", "03/01");
  for (const Shape& s : kShapes) {
    const size_t wbytes = size_t(s.n) * s.k * sizeof(bf16);
    const int copies = int(kPool / wbytes);
    std::vector<bf16> hw(size_t(s.n) * s.k);
    for (auto& v : hw) v = __float2bfloat16(dist(rng) * 0.05f);
    for (int c = 0; c < copies; ++c)
      CHECK(cudaMemcpy(pool + size_t(c) * s.n * s.k, hw.data(), wbytes, cudaMemcpyHostToDevice));
    for (const int m : {16, 64, 128}) {
      std::vector<bf16> hx(size_t(m) * s.k);
      for (auto& v : hx) v = __float2bfloat16(dist(rng));
      CHECK(cudaMemcpy(x, hx.data(), hx.size() * sizeof(bf16), cudaMemcpyHostToDevice));
      const float one = 1, zero = 0;
      auto w_of = [&](int c) { return pool + size_t(c) * s.n * s.k; };
      // 01: column-major yᵀ [N, M] = W · xᵀ, as the step calls it.
      auto gemmex = [&](int c) {
        CHECK_STATUS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &one, w_of(c), CUDA_R_16BF, s.k, x,
                                  CUDA_R_16BF, s.k, &zero, y, CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
      };
      const float ex = graph_us(gemmex, copies);
      CHECK(cudaStreamSynchronize(stream));
      if (const double e = check(hx, hw, y, m, s.n, s.k); e > 1e-4) {
        std::printf("  CHECK FAILED: 01 %s %s M=%d relative error %.3g\n", s.model, s.what, m, e);
        ok = false;
      }
      // 02: the same product through cuBLASLt, each candidate; 03: only the candidates that
      // sum split-K parts inside the GEMM (or do not split), so that no reduction kernel follows.
      cublasLtMatmulDesc_t desc;
      cublasLtMatrixLayout_t la, lb, lc;
      CHECK_STATUS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
      CHECK_STATUS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
      CHECK_STATUS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
      CHECK_STATUS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.k, s.n, s.k));
      CHECK_STATUS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.k, m, s.k));
      CHECK_STATUS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.n, m, s.n));
      struct Best {
        float us = 1e30f;
        int i = -1, found = 0;
        cublasLtMatmulAlgo_t algo{};
      };
      auto fastest = [&](uint32_t reduction_mask, const char* variant) {
        cublasLtMatmulPreference_t pref;
        CHECK_STATUS(cublasLtMatmulPreferenceCreate(&pref));
        CHECK_STATUS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspace,
                                                        sizeof kWorkspace));
        CHECK_STATUS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                        &reduction_mask, sizeof reduction_mask));
        cublasLtMatmulHeuristicResult_t res[16];
        Best best;
        CHECK_STATUS(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 16, res, &best.found));
        for (int i = 0; i < best.found; ++i) {
          auto run = [&](int c) {
            CHECK_STATUS(cublasLtMatmul(lt, desc, &one, w_of(c), la, x, lb, &zero, y, lc, y, lc, &res[i].algo,
                                        workspace, kWorkspace, stream));
          };
          const float us = graph_us(run, copies);
          CHECK(cudaStreamSynchronize(stream));
          if (const double e = check(hx, hw, y, m, s.n, s.k); e > 1e-4) {
            std::printf("  CHECK FAILED: %s candidate %d %s %s M=%d relative error %.3g\n", variant, i, s.model,
                        s.what, m, e);
            ok = false;
          }
          if (us < best.us) best.us = us, best.i = i, best.algo = res[i].algo;
        }
        CHECK_STATUS(cublasLtMatmulPreferenceDestroy(pref));
        return best;
      };
      const Best any = fastest(CUBLASLT_REDUCTION_SCHEME_MASK, "02");
      const Best inplace = fastest(CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE, "03");
      auto id = [](const Best& b, cublasLtMatmulAlgoConfigAttributes_t a) {
        uint32_t v = 0;
        size_t got = 0;
        return b.i >= 0 && cublasLtMatmulAlgoConfigGetAttribute(&b.algo, a, &v, sizeof v, &got) ==
                               CUBLAS_STATUS_SUCCESS ? int(v) : -1;
      };
      const double tb = double(wbytes) / 1e12;
      std::printf("%-13s %-10s %5d %5d %4d | %8.2f %6.2f | %8.2f %6.2f %6.3f | %8.2f %6.3f  02: #%d of %d, tile %d "
                  "split %d; 03: #%d of %d, tile %d split %d scheme %d\n",
                  s.model, s.what, s.n, s.k, m, ex, tb / (ex * 1e-6), any.us, tb / (any.us * 1e-6), any.us / ex,
                  inplace.us, inplace.us / ex, any.i, any.found, id(any, CUBLASLT_ALGO_CONFIG_TILE_ID),
                  id(any, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), inplace.i, inplace.found,
                  id(inplace, CUBLASLT_ALGO_CONFIG_TILE_ID), id(inplace, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                  id(inplace, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME));
      for (cublasLtMatrixLayout_t l : {la, lb, lc}) CHECK_STATUS(cublasLtMatrixLayoutDestroy(l));
      CHECK_STATUS(cublasLtMatmulDescDestroy(desc));
    }
  }
  std::printf("TB/s of the weights read; the copy limit is about 4.3 TB/s\n");
  std::printf(ok ? "all checks passed\n" : "some checks FAILED\n");
  return ok ? 0 : 1;
}
