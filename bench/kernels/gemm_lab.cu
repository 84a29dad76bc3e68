// Kernel lab: the classification workload's GEMMs, x·Wᵀ for bf16 x [M, K] and W [N, K]
// with f32 accumulation, on the projection shapes of one layer of each benchmark model.
// M is the number of tokens in one forward pass: 8,192 (256 prompts × 32) or 32,768
// (1,024 × 32). Each variant is checked against a float64 reference on sampled outputs
// and timed with CUDA events (median of 20 after 3 warm-ups).
//
//   nvcc -O3 -std=c++20 -arch=sm_90a -o /tmp/gemm_lab bench/kernels/gemm_lab.cu -lcublasLt -lcublas && /tmp/gemm_lab
//
// Variants:
//   01  one cublasGemmEx per projection (q, k, v, o, gate, up, down), as lmx's matmul
//   02  q|k|v and gate|up as one GEMM each (their weights stored as one matrix)
//   03  02 through cuBLASLt, the fastest of the heuristic's first 16 algorithms per shape
//   04  (with --sustained MODEL: only this, at M = 32,768) 01's GEMMs, and every candidate
//       of the heuristic's first 16 for each, each timed after running back to back for
//       300 ms: in classification the board sits at its power cap, with the SM clock
//       lowered, and an algorithm that spends less energy per product may then be faster
//       though it is not at full clocks. Prints each GEMM's 01 time and its candidates'.
//       LAB_SUSTAIN_MS sets the 300 ms (0: each timed from a cool board, at full clocks).
// Prints microseconds per layer, TFLOP/s and the ratio to 790 TFLOP/s; exits 1 if a
// check fails.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "lab.cuh"

using bf16 = __nv_bfloat16;

struct Model {
  const char* name;
  int hidden, q, kv, inter;  // q and kv: heads × head_dim
};
constexpr Model kModels[] = {{"llama-3.2-1b", 2048, 2048, 512, 8192},
                             {"qwen3-0.6b", 1024, 2048, 1024, 3072},
                             {"gemma3-1b", 1152, 1024, 256, 6912}};

struct Gemm {
  int n, k;
};

cublasHandle_t blas;
cublasLtHandle_t lt;
void* workspace;
constexpr size_t kWorkspace = 64 << 20;

// The same product through cuBLASLt with a chosen algorithm.
struct LtPlan {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
};
LtPlan lt_plan(int m, int n, int k) {
  LtPlan p;
  CHECK_STATUS(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
  CHECK_STATUS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  CHECK_STATUS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
  CHECK_STATUS(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k, n, k));  // w as stored: [K, N] column-major
  CHECK_STATUS(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k, m, k));  // x
  CHECK_STATUS(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, n, m, n));
  return p;
}
void gemm_lt(const LtPlan& p, const cublasLtMatmulAlgo_t* algo, const bf16* x, const bf16* w, bf16* out) {
  const float alpha = 1, beta = 0;
  CHECK_STATUS(cublasLtMatmul(lt, p.desc, &alpha, w, p.a, x, p.b, &beta, out, p.c, out, p.c, algo, workspace,
                            kWorkspace, 0));
}

// The heuristic's first 16 candidates for this shape (fewer where it has fewer): their count.
int lt_candidates(const LtPlan& p, cublasLtMatmulHeuristicResult_t (&res)[16]) {
  cublasLtMatmulPreference_t pref;
  CHECK_STATUS(cublasLtMatmulPreferenceCreate(&pref));
  CHECK_STATUS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspace,
                                                  sizeof kWorkspace));
  int found = 0;
  CHECK_STATUS(cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.a, p.b, p.c, p.c, pref, 16, res, &found));
  CHECK_STATUS(cublasLtMatmulPreferenceDestroy(pref));
  return found;
}

// The fastest of the heuristic's candidates for this shape (one that runs and checks).
cublasLtMatmulAlgo_t best_lt_algo(const LtPlan& p, const bf16* x, const bf16* w, bf16* out) {
  cublasLtMatmulHeuristicResult_t res[16];
  const int found = lt_candidates(p, res);
  float best = 1e30f;
  cublasLtMatmulAlgo_t algo = res[0].algo;
  for (int i = 0; i < found; ++i) {
    const float us = median_us([&] { gemm_lt(p, &res[i].algo, x, w, out); });
    if (us < best) best = us, algo = res[i].algo;
  }
  return algo;
}

// median_us after `f` has run back to back for `ms` milliseconds (04).
template <class F>
float sustained_us(F&& f, float ms = std::getenv("LAB_SUSTAIN_MS") ? std::atof(std::getenv("LAB_SUSTAIN_MS")) : 300) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  CHECK(cudaEventRecord(a));
  for (float spent = 0; spent < ms;) {
    for (int i = 0; i < 16; ++i) f();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    CHECK(cudaEventElapsedTime(&spent, a, b));
  }
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return median_us(f);
}

// 04: for each of the layer's GEMMs, cublasGemmEx and every heuristic candidate, sustained.
void sustained(const Model& md, const bf16* x, const bf16* w, bf16* out, int m, const std::vector<Gemm>& gemms) {
  float gemmex_total = 0, best_total = 0;
  for (const Gemm& g : gemms) {
    const float ex = sustained_us([&] { gemm_blas(blas, x, w, out, m, g.n, g.k); });
    const LtPlan p = lt_plan(m, g.n, g.k);
    cublasLtMatmulHeuristicResult_t res[16];
    const int found = lt_candidates(p, res);
    std::printf("%s n=%d k=%d: cublasGemmEx %.1f us sustained, %.1f alone; candidates (sustained / alone, then\n"
                "  cuBLASLt's ids of algorithm, tile, stages, cluster shape, split-K, swizzle, custom option):\n",
                md.name, g.n, g.k, ex, median_us([&] { gemm_blas(blas, x, w, out, m, g.n, g.k); }));
    float best = 1e30f;
    for (int i = 0; i < found; ++i) {
      const float us = sustained_us([&] { gemm_lt(p, &res[i].algo, x, w, out); });
      const float alone = median_us([&] { gemm_lt(p, &res[i].algo, x, w, out); });
      auto id = [&](cublasLtMatmulAlgoConfigAttributes_t a) {
        uint32_t v = 0;
        size_t got = 0;
        return cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, a, &v, sizeof v, &got) ==
                       CUBLAS_STATUS_SUCCESS ? int(v) : -1;
      };
      std::printf("  %2d: %7.1f / %7.1f   algo %d tile %d stages %d cluster %d split %d swizzle %d custom %d\n", i,
                  us, alone, id(CUBLASLT_ALGO_CONFIG_ID), id(CUBLASLT_ALGO_CONFIG_TILE_ID),
                  id(CUBLASLT_ALGO_CONFIG_STAGES_ID), id(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
                  id(CUBLASLT_ALGO_CONFIG_SPLITK_NUM), id(CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                  id(CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION));
      best = std::min(best, us);
    }
    std::printf("  best %.3fx of cublasGemmEx, sustained\n", best / ex);
    gemmex_total += ex, best_total += best;
  }
  std::printf("%s M=%d sustained: cublasGemmEx %.1f us/layer, the best candidates %.1f (%.3fx)\n", md.name, m,
              gemmex_total, best_total, best_total / gemmex_total);
}

// Largest relative error of sampled outputs against float64 sums.
double check(const std::vector<bf16>& hx, const std::vector<bf16>& hw, const bf16* out, int m, int n, int k) {
  return sampled_gemm_error(hx, hw, m, n, k, [&](int i, int j) {
    bf16 got;
    CHECK(cudaMemcpy(&got, out + size_t(i) * n + j, sizeof got, cudaMemcpyDeviceToHost));
    return __bfloat162float(got);
  });
}

int main(int argc, char** argv) {
  const char* only = argc == 3 && std::string(argv[1]) == "--sustained" ? argv[2] : nullptr;
  CHECK_STATUS(cublasCreate(&blas));
  CHECK_STATUS(cublasLtCreate(&lt));
  CHECK(cudaMalloc(&workspace, kWorkspace));
  bool ok = true;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (const Model& md : kModels) {
    if (only && std::string(only) != md.name) continue;
    for (int m : {8192, 32768}) {
      if (only && m != 32768) continue;
      const std::vector<Gemm> separate = {{md.q, md.hidden},     {md.kv, md.hidden},    {md.kv, md.hidden},
                                          {md.hidden, md.q},     {md.inter, md.hidden}, {md.inter, md.hidden},
                                          {md.hidden, md.inter}};
      const std::vector<Gemm> packed = {
          {md.q + 2 * md.kv, md.hidden}, {md.hidden, md.q}, {2 * md.inter, md.hidden}, {md.hidden, md.inter}};
      double flops = 0;
      for (const Gemm& g : separate) flops += 2.0 * m * g.n * g.k;
      const int max_k = std::max(md.hidden, std::max(md.q, md.inter)), max_n = 2 * md.inter;
      std::vector<bf16> hx(size_t(m) * max_k), hw(size_t(max_n) * max_k);
      for (auto& v : hx) v = __float2bfloat16(dist(rng));
      for (auto& v : hw) v = __float2bfloat16(dist(rng) * 0.05f);
      bf16 *x, *w, *out;
      CHECK(cudaMalloc(&x, hx.size() * sizeof(bf16)));
      CHECK(cudaMalloc(&w, hw.size() * sizeof(bf16)));
      CHECK(cudaMalloc(&out, size_t(m) * max_n * sizeof(bf16)));
      CHECK(cudaMemcpy(x, hx.data(), hx.size() * sizeof(bf16), cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(w, hw.data(), hw.size() * sizeof(bf16), cudaMemcpyHostToDevice));
      if (only) {
        sustained(md, x, w, out, m, separate);
        CHECK(cudaFree(x));
        CHECK(cudaFree(w));
        CHECK(cudaFree(out));
        continue;
      }
      auto report = [&](const char* variant, const std::vector<Gemm>& gemms, auto&& run) {
        float total = 0;
        std::string parts;
        for (const Gemm& g : gemms) {
          // x and w are read as [M, K] and [N, K] with this GEMM's own K as the row length.
          const float us = run(g);
          const double err = check(hx, hw, out, m, g.n, g.k);
          if (err > 1e-2) {
            std::printf("  CHECK FAILED: %s n=%d k=%d relative error %.3g\n", variant, g.n, g.k, err);
            ok = false;
          }
          total += us;
          parts += " " + std::to_string(int(us + 0.5));
        }
        const double tflops = flops / (total * 1e-6) / 1e12;
        std::printf("%-13s M=%-6d %s %8.1f us/layer  %6.1f TFLOP/s  %.2fx of 790   (per GEMM:%s)\n", md.name, m,
                    variant, total, tflops, tflops / 790, parts.c_str());
      };
      report("01", separate, [&](const Gemm& g) {
        return median_us([&] { gemm_blas(blas, x, w, out, m, g.n, g.k); });
      });
      report("02", packed, [&](const Gemm& g) {
        return median_us([&] { gemm_blas(blas, x, w, out, m, g.n, g.k); });
      });
      report("03", packed, [&](const Gemm& g) {
        const LtPlan p = lt_plan(m, g.n, g.k);
        const cublasLtMatmulAlgo_t algo = best_lt_algo(p, x, w, out);
        return median_us([&] { gemm_lt(p, &algo, x, w, out); });
      });
      CHECK(cudaFree(x));
      CHECK(cudaFree(w));
      CHECK(cudaFree(out));
    }
  }
  std::printf(ok ? "all checks passed\n" : "some checks FAILED\n");
  return ok ? 0 : 1;
}
