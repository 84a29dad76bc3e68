// CUDA-specific checks: the CPU backend is the reference. Bit-exact where the backends
// share an algorithm (uniform random, categorical), within the CPU libm's rounding for
// normal random, within dtype tolerance for large products and attention, plus
// out-of-memory recovery, index errors, memory statistics and the device timer.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <thread>
#include <tuple>

#include "cuda_available.h"
#include "harness.h"
#include "scoped_env.h"

#if LMX_HAVE_CUDA
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm.h"
#endif

namespace lmx::test {
namespace {

const Device kGpu = Device::cuda(0);

std::vector<uint32_t> f32_bits(const std::vector<float>& v) {
  std::vector<uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * 4);
  return out;
}

// The timer lmx bench uses: events on the device's stream for CUDA, the host clock on the
// CPU. Device time between the marks is positive and within the host's wall time around
// them; the CPU's counts work done on the calling thread.
TEST(Cuda, DeviceTimerCountsTheQueuedWork) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  detail::Kernels& k = detail::kernels_for(kGpu);
  const Array a = random_uniform({2048, 2048}, 1, -1, 1, Dtype::bf16, kGpu);
  k.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  k.start_timer();
  Array c = a;
  for (int i = 0; i < 8; ++i) c = matmul(c, a);  // queued without waiting
  const double device_s = k.stop_timer();
  const double host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GT(device_s, 0.0);
  EXPECT_LE(device_s, host_s);
}

TEST(Cuda, CpuTimerCountsHostWork) {
  detail::Kernels& k = detail::kernels_for(Device::cpu());
  k.start_timer();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const double s = k.stop_timer();
  EXPECT_GE(s, 0.019);
  EXPECT_LT(s, 5.0);
}

// The readings lmx bench reports beside its timings: none on the CPU; on a GPU with NVML
// an SM clock and a power draw in a range any current GPU falls in (a driver without the
// entry points reports none, and the test says so).
TEST(Cuda, ClockAndPowerReadings) {
  double mhz = -1, watts = -1;
  EXPECT_FALSE(detail::kernels_for(Device::cpu()).clock_and_power(mhz, watts));
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  if (!detail::kernels_for(kGpu).clock_and_power(mhz, watts)) GTEST_SKIP() << "NVML gives no clock or power here";
  EXPECT_GE(mhz, 100.0);
  EXPECT_LE(mhz, 4000.0);
  EXPECT_GT(watts, 1.0);
  EXPECT_LT(watts, 2000.0);
}

TEST(Cuda, RandomUniformIsBitExact) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  for (Dtype t : kFloatDtypes)
    for (int64_t n : kAwkwardSizes) {
      const Array cpu = random_uniform({n, 3}, 1234 + uint64_t(n), -3, 5, t);
      const Array gpu = random_uniform({n, 3}, 1234 + uint64_t(n), -3, 5, t, kGpu);
      EXPECT_EQ(f32_bits(to_floats(cpu)), f32_bits(to_floats(gpu))) << dtype_name(t) << " n=" << n;
    }
}

TEST(Cuda, RandomNormalMatchesUpToLibmRounding) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  // Both backends compute v = a + b * sqrt(-2 log u1) * cos(2 pi u2) with the same f32
  // operations; only log and cos differ. The GPU's are correctly rounded (double math
  // rounded once); glibc's logf and cosf are not (their errors stay below one ulp, and the
  // x86-64 variant chosen at run time, with or without FMA, decides which results are off),
  // so about 1% of their results are one ulp away. Bit equality cannot be asked of libm.
  //
  // One ulp off in log and in cos, carried through sqrt and the two products (each side
  // rounding once more at every step), moves p = b*sqrt(..)*cos(..) by at most 9 units of
  // 2^-24 relative to p; the final a + p then differs by at most one ulp of v, 2^-23 |v|.
  // p is v - a up to that last rounding. Twice this bound is allowed (it also covers the
  // GPU's double log and cos missing the correct rounding, which is rare). It
  // is on the magnitude of p, not of v: for v near zero, p near -a carries its own error.
  const float a = 0.5f, b = 2.0f;
  const std::vector<float> cpu = to_floats(random_normal({100000}, 7, a, b));
  const std::vector<float> gpu = to_floats(random_normal({100000}, 7, a, b, Dtype::f32, kGpu));
  size_t differ = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (cpu[i] == gpu[i]) continue;
    ++differ;
    const double v = cpu[i], p = std::abs(v - a);
    EXPECT_LE(std::abs(v - double(gpu[i])), (18 * p + 4 * std::abs(v)) * 0x1p-24) << "element " << i;
  }
  // 1.1% with glibc 2.36 on x86-64; far more would mean a GPU function that is not
  // correctly rounded, even if each difference is within the bound.
  EXPECT_LE(differ, cpu.size() / 20);
}

TEST(Cuda, CategoricalDrawsMatchTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  for (Dtype t : kFloatDtypes)
    for (int64_t v : {int64_t(1), int64_t(33), int64_t(4097), int64_t(151936)}) {
      const Array logits = astype(random_normal({6, v}, 11 + uint64_t(v), 0, 3), t);
      for (uint64_t seed : {1ull, 2ull, 99ull}) {
        const std::vector<int32_t> cpu = to_vector<int32_t>(categorical(logits, seed));
        const std::vector<int32_t> gpu =
            to_vector<int32_t>(categorical(to_device(logits, kGpu), seed));
        EXPECT_EQ(cpu, gpu) << dtype_name(t) << " V=" << v << " seed=" << seed;
      }
    }
}

// sort, argsort and topk on the device give the CPU's results exactly, ties (many, in bf16)
// kept in index order: one row (the device-wide radix sort, as a sampled decode step's
// top-k over a vocabulary takes it) and several (the segmented sort).
TEST(Cuda, SortArgsortTopkMatchTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  for (int64_t rows : {int64_t(1), int64_t(3)})
    for (int64_t v : {int64_t(7), int64_t(4097), int64_t(151936)}) {
      const Array x = astype(random_normal({rows, v}, 5 + uint64_t(v), 0, 3), Dtype::bf16);
      const Array xg = to_device(x, kGpu);
      for (bool descending : {false, true}) {
        EXPECT_EQ(to_vector<int32_t>(argsort(x, descending)),
                  to_vector<int32_t>(argsort(xg, descending)))
            << rows << " x " << v << (descending ? " descending" : "");
        EXPECT_EQ(to_floats(sort(x, descending)), to_floats(sort(xg, descending)))
            << rows << " x " << v;
      }
      const int k = int(std::min<int64_t>(v, 51));
      const auto [cv, ci] = topk(x, k);
      const auto [gv, gi] = topk(xg, k);
      EXPECT_EQ(to_vector<int32_t>(ci), to_vector<int32_t>(gi)) << rows << " x " << v;
      EXPECT_EQ(to_floats(cv), to_floats(gv)) << rows << " x " << v;
    }
}

// fast::sample_tokens: the device's radix selects and block scans draw what the CPU
// kernel's sorts and sums in id order draw, for the same random words. bf16 logits tie
// often, which tests the top-p walk's order among equal values.
TEST(Cuda, SampleTokensMatchTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  auto random_word = [](uint64_t i) {  // splitmix64
    uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  struct Case {
    float temperature, top_p, min_p;
    int top_k;
  };
  const Case cases[] = {{0.7f, 1, 0, 0},         {1.0f, 0.9f, 0, 0}, {0.6f, 0.95f, 0, 20},
                        {0.8f, 0.3f, 0.05f, 40}, {1.5f, 1, 0.1f, 0}, {1.0f, 0.999f, 0, 0},
                        {2.0f, 1, 0, 3000},      {0.01f, 0.5f, 0, 0}};
  for (Dtype t : {Dtype::f32, Dtype::bf16})
    // 300 rows: more than one launch holds (one block a row, a block an SM).
    for (const auto& [rows, v, draws] : {std::tuple<int64_t, int64_t, int>{1, 7, 20},
                                         {1, 4097, 20},
                                         {1, 151936, 20},
                                         {4, 7, 20},
                                         {4, 4097, 20},
                                         {4, 151936, 20},
                                         {300, 1000, 2}}) {
      const Array x = astype(random_normal({rows, v}, 9 + uint64_t(v), 0, 3), t);
      const Array xg = to_device(x, kGpu);
      for (const Case c : cases) {
        const fast::SampleFilter f{c.temperature, c.top_k, c.top_p, c.min_p};
        for (int i = 0; i < draws; ++i) {
          std::vector<uint64_t> words;
          for (int64_t r = 0; r < rows; ++r) words.push_back(random_word(uint64_t(1000 * i + r)));
          ASSERT_EQ(to_vector<int32_t>(fast::sample_tokens(x, words, f)),
                    to_vector<int32_t>(fast::sample_tokens(xg, words, f)))
              << dtype_name(t) << " " << rows << " x " << v << ", draw " << i << ", temperature "
              << c.temperature << ", top_p " << c.top_p << ", min_p " << c.min_p << ", top_k "
              << c.top_k;
        }
      }
    }
  // Ties, which go by id. Kind 0: rows of one value (top-p's cut and top-k's survivors
  // fall among ties). Kind 1: fifty levels, the top one 20 ids. Kind 2: 4,097 values, every
  // 20th id (205 of them) on top. For top-k the device lists the survivors to draw among
  // them where they are few: kind 1 fits the list, kinds 0 and 2 overflow it. A launch that
  // mixes rows that fit with rows that do not takes the full walk for all.
  struct TieCase {
    std::vector<int> kinds;  // a row each
    int top_k;
    float top_p;
  };
  const TieCase ties[] = {{{0}, 0, 0.3f}, {{0, 0, 0}, 0, 0.999f}, {{1}, 5, 0.5f}, {{1}, 5, 1.0f},
                          {{0}, 5, 0.5f}, {{1, 0}, 5, 0.5f},      {{2}, 5, 0.9f}, {{2, 1}, 5, 0.9f}};
  for (const TieCase& c : ties) {
    const int64_t rows = int64_t(c.kinds.size()), v = c.kinds[0] == 2 ? 4097 : 1000;
    std::vector<float> values;
    for (const int kind : c.kinds)
      for (int64_t i = 0; i < v; ++i)
        values.push_back(kind == 0 ? 0.25f : kind == 1 ? float(i % 50) / 8 : i % 20 == 0 ? 1.0f : float(i % 7) / 8);
    const Array x = from_vector(values, {rows, v});
    const fast::SampleFilter f{1.0f, c.top_k, c.top_p, 0};
    for (int i = 0; i < 20; ++i) {
      std::vector<uint64_t> words;
      for (int64_t r = 0; r < rows; ++r) words.push_back(random_word(uint64_t(77 * i + r)));
      ASSERT_EQ(to_vector<int32_t>(fast::sample_tokens(x, words, f)),
                to_vector<int32_t>(fast::sample_tokens(to_device(x, kGpu), words, f)))
          << rows << " rows, kind " << c.kinds[0] << ", top_k " << c.top_k << ", top_p " << c.top_p
          << ", draw " << i;
    }
  }
}

#if LMX_HAVE_CUDA  // the backend's own call, which a build without CUDA lacks
// cuda::sample_tokens with a filtered head's listed rows (ListedRows): one row, with the
// rows' logits exact and every other below the top-k's k-th largest, is drawn among them
// alone, and where they do not serve (more than the list holds, ties past 128 survivors,
// fewer than k numbers), over the whole row.
TEST(Cuda, SampleTokensDrawAmongAFilteredHeadsListedRows) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const int64_t v = 151936;
  const std::vector<float> normal = to_floats(random_normal({1, v}, 5, 0, 3));
  auto draw = [&](const std::vector<float>& logits, const std::vector<int32_t>* listed, unsigned count,
                  const fast::SampleFilter& f, uint64_t word) {
    const Array x = from_vector(logits, {1, v}, kGpu);
    const Array ids = from_vector(listed ? *listed : std::vector<int32_t>{0}, {listed ? int64_t(listed->size()) : 1},
                                  kGpu);
    const Array n = from_vector(std::vector<uint32_t>{count}, {1}, kGpu);
    const Array out({1}, Dtype::i32, kGpu);
    const cuda::ListedRows rows{listed ? ids.data<int32_t>() : nullptr, n.data<uint32_t>(), 2048};
    cuda::sample_tokens(cuda::context(0), x, {&word, 1}, f, {out.data<int32_t>(), 1, nullptr, 0}, rows);
    return to_vector<int32_t>(out)[0];
  };
  // The 40 largest logits and 1,000 others listed, the rest lowered below every listed one.
  std::vector<int32_t> order(static_cast<size_t>(v));
  for (int64_t i = 0; i < v; ++i) order[size_t(i)] = int32_t(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return normal[size_t(a)] > normal[size_t(b)]; });
  std::vector<int32_t> listed(order.begin(), order.begin() + 40);
  for (int64_t i = 0; i < 1000; ++i) listed.push_back(order[size_t(40 + 97 * i)]);
  std::vector<float> filtered(normal.size(), -20.0f);
  for (const int32_t id : listed) filtered[size_t(id)] = normal[size_t(id)];
  const fast::SampleFilter filters[] = {
      {0.6f, 20, 0.95f, 0}, {2.0f, 2, 1, 0}, {1.0f, 40, 1, 0.05f}, {1.5f, 128, 1, 0}};
  for (const fast::SampleFilter& f : filters)
    for (uint64_t w = 0; w < 20; ++w) {
      const uint64_t word = 0x9e3779b97f4a7c15ull * (w + 1);
      ASSERT_EQ(draw(filtered, &listed, unsigned(listed.size()), f, word), draw(filtered, nullptr, 0, f, word))
          << "top_k " << f.top_k << ", word " << w;
    }
  // The list is what is read: with the 40 largest left off it (and so not below the listed
  // ones, as a filtered head would leave them), every draw is a listed row; over the whole
  // row, none is.
  const std::vector<int32_t> others(listed.begin() + 40, listed.end());
  const fast::SampleFilter k5{1.0f, 5, 1, 0};
  for (uint64_t w = 0; w < 10; ++w) {
    const int32_t got = draw(normal, &others, unsigned(others.size()), k5, w * 977 + 1);
    EXPECT_NE(std::find(others.begin(), others.end(), got), others.end()) << "draw " << w;
    const int32_t whole = draw(normal, nullptr, 0, k5, w * 977 + 1);
    EXPECT_EQ(std::find(others.begin(), others.end(), whole), others.end()) << "draw " << w;
  }
  // Where the list cannot serve, the whole row is drawn from: a count past the list's
  // 2,048; 200 listed ties at the top (top-k keeps them all, past the 128 drawn among); 3
  // listed numbers for a top-k of 5.
  std::vector<float> tied = filtered;
  for (int i = 0; i < 200; ++i) tied[size_t(listed[size_t(40 + i)])] = 30.0f;
  const std::vector<int32_t> three(others.begin(), others.begin() + 3);
  for (uint64_t w = 0; w < 10; ++w) {
    EXPECT_EQ(draw(normal, &others, 2049, k5, w), draw(normal, nullptr, 0, k5, w)) << "draw " << w;
    EXPECT_EQ(draw(tied, &listed, unsigned(listed.size()), k5, w), draw(tied, nullptr, 0, k5, w)) << "draw " << w;
    EXPECT_EQ(draw(normal, &three, 3, k5, w), draw(normal, nullptr, 0, k5, w)) << "draw " << w;
  }
}
#endif

// NaN logits: the device never draws one, and a row with no token to draw (every logit
// NaN, or NaN and -inf) gives -1, as the CPU kernel does. Rows of one launch mix the three
// kinds, through the draw among top-k's few survivors and through the full walk.
TEST(Cuda, SampleTokensNeverDrawNaNAndGiveMinusOneWhereNoTokenIs) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (const int64_t v : {int64_t(7), int64_t(4097), int64_t(151936)}) {
    std::vector<float> values = to_floats(random_normal({3, v}, 31 + uint64_t(v), 0, 2));
    for (int64_t i = 0; i < v; ++i) {
      if (i % 3 != 1) values[size_t(i)] = nan;           // row 0: two of three NaN
      values[size_t(v + i)] = nan;                        // row 1: all NaN
      values[size_t(2 * v + i)] = i % 2 ? nan : -inf;     // row 2: NaN and -inf
    }
    // Three rows, then the first two alone: row 2's -inf overflow top-k's list of survivors,
    // so only the launch without it draws among them.
    for (const int64_t rows : {int64_t(3), int64_t(2)}) {
      const Array x = from_vector(std::vector<float>(values.begin(), values.begin() + rows * v), {rows, v});
      const Array xg = to_device(x, kGpu);
      for (const fast::SampleFilter f : {fast::SampleFilter{1.0f, 0, 1, 0}, fast::SampleFilter{0.8f, 20, 1, 0},
                                         fast::SampleFilter{1.0f, 0, 0.9f, 0.05f}}) {
        for (uint64_t i = 0; i < 10; ++i) {
          const std::vector<uint64_t> all = {0x9e3779b97f4a7c15ull * (i + 1), 7 * i + 1, 11 * i + 2};
          const std::span<const uint64_t> words(all.data(), size_t(rows));
          const std::vector<int32_t> got = to_vector<int32_t>(fast::sample_tokens(xg, words, f));
          ASSERT_EQ(got, to_vector<int32_t>(fast::sample_tokens(x, words, f)))
              << rows << " rows of " << v << " logits, draw " << i;
          ASSERT_EQ(got[0] % 3, 1) << "a NaN was drawn";
          for (int64_t r = 1; r < rows; ++r) ASSERT_EQ(got[size_t(r)], -1) << "row " << r;
        }
      }
    }
  }
}

// fast::edit_logits: the device's edits equal the CPU kernel's, bit for bit: biases in
// their order (one id twice), then the penalties, on f32 and bf16 logits of 3 rows.
TEST(Cuda, EditLogitsMatchTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const int64_t rows = 3, v = 151936;
  std::vector<int64_t> starts = {0};
  std::vector<fast::LogitEdit> edits;
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t id = 1; id < 2000; id += 3 + int32_t(r))
      edits.push_back({id, 1 + id % 4, 0.0f, false});
    edits.push_back({2000, 0, 1.5f, true});  // a bias listed twice
    edits.push_back({2000, 0, -0.25f, true});
    edits.push_back({int32_t(v) - 1, 2, 0.5f, true});  // a bias on a counted token
    std::stable_sort(
        edits.begin() + starts.back(), edits.end(),
        [](const fast::LogitEdit& a, const fast::LogitEdit& b) { return a.id < b.id; });
    starts.push_back(int64_t(edits.size()));
  }
  for (Dtype t : {Dtype::f32, Dtype::bf16}) {
    const Array x = astype(random_normal({rows, v}, 31, 0, 3), t);
    const fast::Penalties p{1.3f, 0.4f, 0.1f};
    EXPECT_EQ(f32_bits(to_floats(fast::edit_logits(x, starts, edits, p))),
              f32_bits(to_floats(fast::edit_logits(to_device(x, kGpu), starts, edits, p))))
        << dtype_name(t);
  }
}

// |got - want| <= tol * (|want| + scale), element-wise, on the host.
void expect_near_cpu(const Array& gpu, const Array& cpu, double tol, double scale,
                     const std::string& what) {
  const std::vector<float> g = to_floats(gpu), c = to_floats(cpu);
  ASSERT_EQ(g.size(), c.size()) << what;
  std::vector<double> want(c.begin(), c.end());
  expect_close(to_device(gpu, Device::cpu()), want, tol, tol * scale, what);
}

TEST(Cuda, LargeMatmulMatchesTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  for (Dtype t : kFloatDtypes) {
    const int64_t m = 300, k = 257, n = 301;
    const Array a = random_input({3, m, k}, t, 1, -1, 1).array;
    const Array b = random_input({n, k}, t, 2, -1, 1).array;  // used transposed, as a weight
    const Array c = random_input({3, k, n}, t, 3, -1, 1).array;
    const double u = t == Dtype::f32 ? 1e-6 : unit_roundoff(t);
    const double scale = std::sqrt(double(k));
    expect_near_cpu(matmul(to_device(a, kGpu), transpose(to_device(b, kGpu))),
                    matmul(a, transpose(b)), 4 * u, scale,
                    std::string("a.bT ") + std::string(dtype_name(t)));
    expect_near_cpu(matmul(to_device(a, kGpu), to_device(c, kGpu)), matmul(a, c), 4 * u, scale,
                    std::string("batched ") + std::string(dtype_name(t)));
    // Strides that fit no BLAS layout: a column slice of a transposed view.
    const Array at = swapaxes(random_input({3, k + 5, m}, t, 4, -1, 1).array, 1, 2);
    const Array odd = slice(at, {0, 0, 0}, {3, m, k});
    expect_near_cpu(matmul(to_device(odd, kGpu), to_device(c, kGpu)), matmul(odd, c), 4 * u, scale,
                    std::string("strided ") + std::string(dtype_name(t)));
  }
}

#if LMX_HAVE_CUDA
// Llama-3.2-1B's gate/up product at a classification pass's rows runs through cuBLASLt at
// the tile measured fastest for it on Hopper (gemm.cpp). Its rows match the CPU's,
// and so do those of the same product through cuBLAS's own pick (LMX_GEMM_TILES=0); the
// two GPU results agree to the last bit or within one rounding.
TEST(Cuda, GemmAtThePreferredTileMatchesTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const int64_t m = 8192, n = 8192, k = 2048;
  const Array x = random_uniform({m, k}, 21, -1, 1, Dtype::bf16, kGpu);
  const Array w = random_uniform({n, k}, 22, -1, 1, Dtype::bf16, kGpu);
  const int64_t before = cuda::tuned_gemms();
  const Array tiled = matmul(x, transpose(w));  // [M, N]
  const bool hopper = cuda::context(0).compute_capability == 90;
  EXPECT_EQ(cuda::tuned_gemms(), before + (hopper ? 1 : 0)) << "the table's shape takes the tile on Hopper only";
  const Array plain = [&] {
    const ScopedEnv off("LMX_GEMM_TILES", "0");
    return matmul(x, transpose(w));
  }();
  EXPECT_EQ(cuda::tuned_gemms(), before + (hopper ? 1 : 0)) << "LMX_GEMM_TILES=0 turns the table off";
  const Array w_cpu = to_device(w, Device::cpu());
  const double u = unit_roundoff(Dtype::bf16), scale = std::sqrt(double(k));
  for (int64_t r0 : {int64_t(0), m - 64}) {  // 64 rows at each end
    const Array want = matmul(to_device(slice_axis(x, 0, r0, r0 + 64), Device::cpu()), transpose(w_cpu));
    expect_near_cpu(slice_axis(tiled, 0, r0, r0 + 64), want, 4 * u, scale, "the preferred tile");
    expect_near_cpu(slice_axis(plain, 0, r0, r0 + 64), want, 4 * u, scale, "cuBLAS's pick");
  }
  // x as a view 16 bytes into the rows of a wider array (a leading dimension of K + 8 and
  // pointers aligned to 16 bytes only): the heuristic is told, and the rows still match.
  const Array wide = random_uniform({m, k + 8}, 23, -1, 1, Dtype::bf16, kGpu);
  const Array view = slice(wide, {0, 8}, {m, k + 8});
  const Array from_view = matmul(view, transpose(w));
  const Array want = matmul(to_device(slice(wide, {0, 8}, {64, k + 8}), Device::cpu()), transpose(w_cpu));
  expect_near_cpu(slice_axis(from_view, 0, 0, 64), want, 4 * u, scale, "a view aligned to 16 bytes");
  const std::vector<float> a = to_floats(tiled), b = to_floats(plain);
  int64_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) {
      ++differ;
      EXPECT_LE(std::fabs(a[i] - b[i]), 2 * u * (std::fabs(b[i]) + 1)) << "element " << i;
      if (differ > 8) break;
    }
  RecordProperty("differing_elements", std::to_string(differ));
}

// Small products (a short prompt's, a decode step's) run through a cuBLASLt plan kept per
// shape: the same products through cuBLAS's own call (LMX_GEMM_PLANS=0) agree within a
// rounding, for a plain product, a batch folded into one product over a shared weight, a
// strided batch, and the paired k/v product with its batch stride from one weight to the
// other and its input shared (stride 0).
TEST(Cuda, SmallGemmsThroughKeptPlansMatchCublas) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const Array x = random_uniform({128, 1024}, 31, -1, 1, Dtype::bf16, kGpu);
  const Array kv = random_uniform({2, 512, 1024}, 32, -1, 1, Dtype::bf16, kGpu);
  const Array k = slice_axis(kv, 0, 0, 1), v = slice_axis(kv, 0, 1, 2);
  const Array batch = random_uniform({4, 128, 1024}, 33, -1, 1, Dtype::bf16, kGpu);
  auto products = [&] {
    std::vector<Array> out;
    const Array w = reshape(k, {512, 1024});
    out.push_back(matmul(x, transpose(w)));      // [128, 512]
    out.push_back(matmul(batch, transpose(w)));  // a batch of 4 as one product of 512 rows
    out.push_back(matmul(batch, swapaxes(batch, 1, 2)));  // [4, 128, 128]: a strided batch
    const auto [kp, vp] = fast::linear_pair(slice_axis(x, 0, 0, 16), reshape(k, {512, 1024}), reshape(v, {512, 1024}));
    out.push_back(kp), out.push_back(vp);
    return out;
  };
  const int64_t before = cuda::planned_gemms();
  const std::vector<Array> planned = products();
  EXPECT_EQ(cuda::planned_gemms(), before + 4) << "each of the four GEMMs took a kept plan";
  std::vector<Array> plain;  // the same products through cuBLAS's own call
  {
    const ScopedEnv off("LMX_GEMM_PLANS", "0");
    const int64_t off_before = cuda::planned_gemms();
    plain = products();
    EXPECT_EQ(cuda::planned_gemms(), off_before) << "LMX_GEMM_PLANS=0 takes cuBLAS's own call";
  }
  const double u = unit_roundoff(Dtype::bf16);
  for (size_t i = 0; i < planned.size(); ++i) {
    ASSERT_EQ(planned[i].shape(), plain[i].shape()) << "product " << i;
    const std::vector<float> a = to_floats(planned[i]), b = to_floats(plain[i]);
    for (size_t j = 0; j < a.size(); ++j)
      ASSERT_LE(std::fabs(a[j] - b[j]), 2 * u * (std::fabs(b[j]) + 1)) << "product " << i << ", element " << j;
  }
  // And against the CPU: the plain product's first 16 rows.
  const Array want = matmul(to_device(slice_axis(x, 0, 0, 16), Device::cpu()),
                            transpose(to_device(reshape(k, {512, 1024}), Device::cpu())));
  expect_near_cpu(slice_axis(planned[0], 0, 0, 16), want, 4 * u, std::sqrt(1024.0), "a planned product");
}

// Prompts of many lengths each need plans: the cache keeps the ones used last, and a shape
// whose plan was evicted is planned again, to the same result.
TEST(Cuda, GemmPlansStayBounded) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const int64_t shapes = int64_t(cuda::kGemmPlansKept) + 8, k = 64;
  const Array x = random_uniform({shapes, k}, 24, -1, 1, Dtype::bf16, kGpu);
  const Array w = random_uniform({64, k}, 25, -1, 1, Dtype::bf16, kGpu);
  const int64_t before = cuda::planned_gemms();
  const std::vector<float> first = to_floats(matmul(slice_axis(x, 0, 0, 1), transpose(w)));
  ASSERT_EQ(cuda::planned_gemms(), before + 1) << "one row takes a plan";
  for (int64_t rows = 2; rows <= shapes; ++rows) {
    (void)matmul(slice_axis(x, 0, 0, rows), transpose(w));
    ASSERT_LE(cuda::gemm_plans(), cuda::kGemmPlansKept) << "after " << rows << " row counts";
  }
  EXPECT_EQ(cuda::gemm_plans(), cuda::kGemmPlansKept) << "the last ones kept";
  // One row again: its plan was evicted many row counts ago.
  const int64_t again_before = cuda::planned_gemms();
  const std::vector<float> again = to_floats(matmul(slice_axis(x, 0, 0, 1), transpose(w)));
  EXPECT_EQ(cuda::planned_gemms(), again_before + 1) << "planned again, and run through its plan";
  EXPECT_EQ(first, again) << "the same shape planned again multiplies to the same bits";
}
#endif

struct AttnCase {
  int64_t b, hq, hkv, lq, lk, d, window;
  bool causal, padded;
  // Keys and values as the first lk positions of a cache of this many (0: lk), as prefill
  // reads them: the heads then lie capacity positions apart.
  int64_t capacity = 0;
};

void expect_attention_matches_cpu(std::span<const AttnCase> cases) {
  for (const AttnCase& c : cases)
    for (Dtype t : kFloatDtypes) {
      const Array q = random_input({c.b, c.hq, c.lq, c.d}, t, 5, -1, 1).array;
      const int64_t cap = std::max(c.capacity, c.lk);
      const Array k_cache = random_input({c.b, c.hkv, cap, c.d}, t, 6, -1, 1).array;
      const Array v_cache = random_input({c.b, c.hkv, cap, c.d}, t, 7, -1, 1).array;
      const Array k = slice_axis(k_cache, 2, 0, c.lk), v = slice_axis(v_cache, 2, 0, c.lk);
      fast::AttentionMask mask;
      mask.causal = c.causal;
      mask.window = c.window;
      if (c.padded) {  // batch row 0 has its first 7 keys padded away
        std::vector<uint8_t> valid(size_t(c.b * c.lk), 1);
        for (int64_t j = 0; j < 7; ++j) valid[size_t(j)] = 0;
        mask.key_valid = astype(from_vector(valid, {c.b, c.lk}), Dtype::boolean);
      }
      const float scale = 1.0f / std::sqrt(float(c.d));
      const Array want = fast::reference::scaled_dot_product_attention(q, k, v, scale, mask);
      fast::AttentionMask gmask = mask;
      if (mask.key_valid) gmask.key_valid = to_device(*mask.key_valid, kGpu);
      const Array got = fast::scaled_dot_product_attention(
          to_device(q, kGpu), slice_axis(to_device(k_cache, kGpu), 2, 0, c.lk),
          slice_axis(to_device(v_cache, kGpu), 2, 0, c.lk), scale, gmask);
      const double u = t == Dtype::f32 ? 2e-6 : unit_roundoff(t);
      expect_near_cpu(got, want, 8 * u, 1.0,
                      std::string(dtype_name(t)) + " Lq=" + std::to_string(c.lq) +
                          " Lk=" + std::to_string(c.lk) + " D=" + std::to_string(c.d));
    }
}

TEST(Cuda, LargeAttentionMatchesTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const AttnCase cases[] = {
      {1, 4, 2, 300, 300, 64, 0, true, false},   {2, 4, 2, 300, 300, 128, 0, true, true},
      {1, 2, 1, 300, 300, 256, 64, true, false}, {1, 4, 4, 300, 300, 128, 0, false, false},
      {2, 8, 2, 1, 1000, 128, 0, true, true},    {1, 8, 1, 1, 4097, 64, 1000, true, false},
      {1, 3, 1, 33, 97, 33, 0, true, false},     {1, 2, 2, 40, 700, 64, 0, true, false},
      // Key counts that are whole 16-byte vectors, up to 4,200 keys.
      {1, 4, 2, 296, 296, 64, 0, true, false},   {2, 4, 2, 520, 520, 128, 0, true, true},
      {1, 2, 1, 264, 264, 256, 64, true, false}, {1, 4, 4, 200, 200, 128, 0, false, false},
      {1, 2, 1, 40, 4200, 64, 0, true, false},   {2, 2, 1, 24, 4096, 64, 300, true, true},
      // 64+ query rows over 512+ keys in 16 bits: the flash kernel (S never stored). Rows
      // and keys past whole tiles, queries after a cache (offset 600), GQA, a window with
      // padding, no causal mask.
      {1, 8, 2, 100, 700, 64, 0, true, false},   {2, 4, 1, 600, 600, 128, 200, true, true},
      {1, 4, 4, 64, 1024, 128, 0, false, false}, {1, 2, 1, 520, 520, 64, 0, true, false},
      // The same kernel with 256-wide heads (one group of rows a warp, 32-key tiles).
      {2, 4, 1, 600, 600, 256, 200, true, true}, {1, 2, 1, 100, 700, 256, 0, true, false},
      {1, 2, 2, 64, 1024, 256, 0, false, false},
      // Keys and values read from a cache of 1,024 positions (strided heads), with padding.
      {2, 4, 2, 200, 700, 64, 0, true, true, 1024},   {2, 4, 2, 200, 700, 128, 0, true, true, 1024},
      {2, 2, 1, 100, 600, 256, 0, true, true, 1024},
  };
  expect_attention_matches_cpu(cases);
}

// Decoding many sequences at once: the decode kernels put 8, 4 or 2 query rows in a block
// when that still gives the grid two blocks per SM (384 blocks here, for GPUs of up to 192
// SMs), and fewer rows otherwise, as in the small cases above. Single kernel and split
// keys (700), GQA of 8 and 4, two query rows a sequence, padding and a window.
TEST(Cuda, DecodeAttentionOverManySequencesMatchesTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const AttnCase cases[] = {
      {48, 64, 8, 1, 200, 64, 0, true, false},  {48, 32, 8, 1, 131, 128, 0, true, true},
      {48, 8, 8, 2, 300, 64, 0, true, false},   {48, 8, 8, 2, 700, 64, 0, true, true},
      {48, 64, 8, 1, 700, 64, 256, true, true}, {96, 16, 4, 1, 129, 256, 0, true, false},
  };
  expect_attention_matches_cpu(cases);
}

// Long prompts whose score matrix passes the GEMM path's buffer bound run it in bands of
// query rows, one query head of each group at a time: with the bound lowered to 64 KiB,
// each query head takes 3 to 24 bands, the last one short.
TEST(Cuda, AttentionInBandsOfQueryRowsMatchesTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const AttnCase cases[] = {
      {1, 4, 2, 300, 300, 64, 0, true, false},
      {2, 4, 2, 300, 300, 128, 0, true, true},
      {1, 4, 1, 300, 300, 256, 64, true, false},
      {1, 4, 4, 300, 300, 128, 0, false, false},
      {2, 4, 2, 296, 296, 64, 0, true, true},
  };
  const ScopedEnv budget("LMX_ATTENTION_S_BUDGET", "65536");
  expect_attention_matches_cpu(cases);
}

TEST(Cuda, OutOfMemoryIsRecoverable) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const int64_t huge = int64_t(1) << 42;  // 4 TiB: more than any card
  EXPECT_THROW(Array({huge}, Dtype::u8, kGpu), OutOfMemory);
  const Array a = full({1000}, 3, Dtype::f32, kGpu);
  EXPECT_EQ(to_floats(a), std::vector<float>(1000, 3.0f));
}

TEST(Cuda, TakeReportsAnOutOfRangeIndexAtTheNextWait) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const Array a = random_uniform({5, 4}, 1, 0, 1, Dtype::f32, kGpu);
  const std::vector<float> host = to_floats(a);
  auto expect_fault = [](const Array& out, const std::string& prefix) {
    try {
      (void)to_floats(out);
      ADD_FAILURE() << "expected an error starting with " << prefix;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
    }
  };
  // The device checks the indices; the read that waits for it raises the error.
  const Array bad = take(a, from_vector<int32_t>({0, 4, 9}, {3}, kGpu), 0);
  expect_fault(bad, "[take] index 9 is out of range for an axis of size 5");
  // The fault is raised once; the bad index's row is zeros, the others are exact.
  std::vector<float> want(host.begin(), host.begin() + 4);
  want.insert(want.end(), host.begin() + 16, host.end());
  want.insert(want.end(), 4, 0.0f);
  EXPECT_EQ(to_floats(bad), want);
  expect_fault(take(a, from_vector<int32_t>({-1}, {1}, kGpu), 0), "[take] index -1 is out of range");
  expect_fault(take(a, from_vector<uint32_t>({4294967295u}, {1}, kGpu), 1),
               "[take] index 4294967295 is out of range for an axis of size 4");
  expect_fault(take_along_axis(a, from_vector<int32_t>({0, 1, 2, 7}, {1, 4}, kGpu), 0),
               "[take_along_axis] index 7 is out of range for an axis of size 5");
  // Any wait raises it, not only a read: here the device's synchronise.
  (void)take(a, from_vector<int32_t>({5}, {1}, kGpu), 0);
  EXPECT_THROW(detail::kernels_for(kGpu).synchronize(), Error);
  // The device is still usable afterwards, and good indices gather exactly.
  EXPECT_EQ(to_floats(take(a, from_vector<int32_t>({4}, {1}, kGpu), 0)),
            std::vector<float>(host.begin() + 16, host.end()));
}

// take moves rows of whole 16-byte words as such words (an embedding's lookup); rows of
// other widths, misaligned views and strided ones go element by element. Either way the
// result is the CPU's, exactly.
TEST(Cuda, TakeOfRowsMatchesTheCpuInEveryLayout) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  const Array ids = from_vector<int32_t>({6, 0, 3, 3, 5}, {5});
  // view(src on a device) is the array taken from, made on each device from the same values.
  auto same = [&](const Array& cpu_src, int axis, const char* what, auto view) {
    const Array want = take(view(cpu_src), ids, axis);
    const Array gpu_src = to_device(cpu_src, kGpu);
    const Array got = take(view(gpu_src), to_device(ids, kGpu), axis);
    EXPECT_EQ(to_floats(got), to_floats(want)) << what;
  };
  auto whole = [](const Array& a) { return a; };
  const Array wide = random_uniform({7, 32}, 3, -1, 1, Dtype::bf16);
  same(wide, 0, "bf16 rows of 64 bytes", whole);
  same(random_uniform({7, 20}, 4, -1, 1, Dtype::bf16), 0, "bf16 rows of 40 bytes", whole);
  same(wide, 0, "a view 16 bytes into each row", [](const Array& a) {
    return slice(a, {0, 8}, {7, 24});
  });
  same(wide, 0, "a view 8 bytes into each row", [](const Array& a) {
    return slice(a, {0, 4}, {7, 20});
  });
  same(wide, 0, "every other column", [](const Array& a) {
    return slice(a, {0, 0}, {7, 32}, {1, 2});
  });
  same(random_uniform({2, 7, 8}, 5, -1, 1, Dtype::bf16), 1, "the middle axis of [2, 7, 8]", whole);
  same(random_uniform({7, 4}, 6, -1, 1, Dtype::f32), 0, "f32 rows of 16 bytes", whole);
}

TEST(Cuda, MemoryStatsFollowAllocations) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device visible";
  Allocator& alloc = allocator_for(kGpu);
  detail::kernels_for(kGpu).synchronize();
  alloc.clear_cache();
  const MemoryStats s0 = memory_stats(kGpu);
  EXPECT_EQ(s0.cached, 0u);
  const size_t bytes = size_t(64) << 20;
  {
    const Array a({int64_t(bytes / 4)}, Dtype::f32, kGpu);
    const MemoryStats s1 = memory_stats(kGpu);
    EXPECT_GE(s1.active, s0.active + bytes);
    EXPECT_GE(s1.peak, s1.active);
  }
  const MemoryStats s2 = memory_stats(kGpu);
  EXPECT_EQ(s2.active, s0.active);
  EXPECT_GE(s2.cached, bytes);
  {
    const Array b({int64_t(bytes / 4)}, Dtype::f32, kGpu);  // reuses the cached block
    EXPECT_EQ(memory_stats(kGpu).cached, s2.cached - Allocator::round_size(bytes));
  }
  alloc.clear_cache();
  EXPECT_EQ(memory_stats(kGpu).cached, 0u);
}

// Two GPUs in one process. Each has its own allocator: a block freed on one is never
// handed out on the other, and its counts are its own. The kernels' shared-memory opt-ins
// are made on each device: causal attention gives on the second GPU the bits it gives on
// the first, over 600 positions of 128-wide heads (flash attention, 87 KiB of shared
// memory a block) and over 300 of 256-wide heads (through GEMMs).
TEST(Cuda, TwoDevicesKeepTheirOwnMemoryAndKernelSettings) {
  if (!have_cuda(1)) GTEST_SKIP() << "fewer than two CUDA devices visible";
  const Device gpu0 = Device::cuda(0), gpu1 = Device::cuda(1);
  detail::kernels_for(gpu0).synchronize();
  detail::kernels_for(gpu1).synchronize();
  allocator_for(gpu0).clear_cache();
  allocator_for(gpu1).clear_cache();
  const size_t bytes = size_t(32) << 20;
  const MemoryStats before0 = memory_stats(gpu0);
  { const Array a({int64_t(bytes / 4)}, Dtype::f32, gpu1); }  // freed on gpu1: cached there
  EXPECT_GE(memory_stats(gpu1).cached, bytes);
  EXPECT_EQ(memory_stats(gpu0).cached, before0.cached) << "a block freed on cuda:1 sits in cuda:0's cache";
  // The same size on gpu0 is new memory there, and its contents stay its own.
  const Array x = random_uniform({int64_t(bytes / 4)}, 3, -1, 1, Dtype::f32);
  const Array on0 = to_device(x, gpu0), on1 = to_device(x, gpu1);
  EXPECT_EQ(f32_bits(to_vector<float>(on0)), f32_bits(to_vector<float>(x)));
  EXPECT_EQ(f32_bits(to_vector<float>(on1)), f32_bits(to_vector<float>(x)));

  fast::AttentionMask causal;
  causal.causal = true;
  for (const Shape& shape : {Shape{1, 2, 600, 128}, Shape{1, 2, 300, 256}}) {  // [B, H, L, D]
    const Array q = random_uniform(shape, 4, -1, 1, Dtype::bf16);
    const Array k = random_uniform(shape, 5, -1, 1, Dtype::bf16);
    const Array v = random_uniform(shape, 6, -1, 1, Dtype::bf16);
    auto attend = [&](Device d) {
      return to_vector<float>(astype(
          fast::scaled_dot_product_attention(to_device(q, d), to_device(k, d), to_device(v, d), 0.0625f, causal),
          Dtype::f32));
    };
    const std::vector<float> first = attend(gpu0), second = attend(gpu1);
    EXPECT_EQ(f32_bits(second), f32_bits(first)) << shape_str(shape) << ": the same kernels on the same kind of GPU";
  }
}

}  // namespace
}  // namespace lmx::test
