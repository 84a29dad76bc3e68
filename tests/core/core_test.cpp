// dtype conversions, shapes, devices, the allocator, Array views and the thread pool.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/array.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace lmx {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The compiler's _Float16 conversion (IEEE round to nearest even) is the reference.
TEST(DtypeTest, F16ConversionMatchesIeeeOnAllHalvesAndSampledFloats) {
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 ref;
    const uint16_t hb = uint16_t(h);
    std::memcpy(&ref, &hb, 2);
    const float got = f16_to_f32({hb});
    if (std::isnan(float(ref))) {
      ASSERT_TRUE(std::isnan(got));
    } else {
      ASSERT_EQ(bits(got), bits(float(ref))) << std::hex << h;
    }
  }
  for (uint64_t u = 0; u < (1ull << 32); u += 65537) {
    const float f = from_bits(uint32_t(u));
    const _Float16 ref = _Float16(f);
    uint16_t rb;
    std::memcpy(&rb, &ref, 2);
    const uint16_t got = f32_to_f16(f).bits;
    if (std::isnan(f)) {
      ASSERT_EQ(got & 0x7c00u, 0x7c00u);
      ASSERT_NE(got & 0x3ffu, 0u);
    } else {
      ASSERT_EQ(got, rb) << std::hex << u;
    }
  }
}

TEST(DtypeTest, Bf16RoundsToNearestEvenAndKeepsSpecials) {
  EXPECT_EQ(f32_to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000)).bits, 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000)).bits, 0x3f82);  // tie -> even (up)
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001)).bits, 0x3f81);  // above the tie
  EXPECT_EQ(f32_to_bf16(INFINITY).bits, 0x7f80);
  EXPECT_EQ(f32_to_bf16(-INFINITY).bits, 0xff80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7f7fffff)).bits, 0x7f80);  // max float rounds to Inf
  const bf16_t n = f32_to_bf16(from_bits(0x7f800001));  // NaN with a payload only in the low bits
  EXPECT_TRUE(std::isnan(bf16_to_f32(n)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(-NAN))));
  for (uint32_t h = 0; h < 65536; ++h) {  // every bf16 round-trips exactly
    const float f = bf16_to_f32({uint16_t(h)});
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f).bits, h);
    }
  }
}

TEST(DtypeTest, NamesAndSizes) {
  EXPECT_EQ(parse_dtype("bfloat16"), Dtype::bf16);
  EXPECT_EQ(parse_dtype("f16"), Dtype::f16);
  EXPECT_EQ(parse_dtype("float64"), std::nullopt);
  EXPECT_EQ(itemsize(Dtype::bf16), 2u);
  EXPECT_EQ(itemsize(Dtype::boolean), 1u);
  EXPECT_EQ(dtype_name(Dtype::u32), "uint32");
}

TEST(ShapeTest, BroadcastAndAxes) {
  EXPECT_EQ(broadcast_shapes({2, 1, 3}, {4, 1}, "t"), (Shape{2, 4, 3}));
  EXPECT_EQ(broadcast_shapes({}, {5}, "t"), (Shape{5}));
  EXPECT_THROW(broadcast_shapes({2}, {3}, "t"), Error);
  EXPECT_EQ(normalize_axis(-1, 3, "t"), 2);
  EXPECT_THROW(normalize_axis(3, 3, "t"), Error);
  EXPECT_EQ(row_major_strides({2, 3, 4}), (Strides{12, 4, 1}));
  EXPECT_EQ(numel({}), 1);
}

TEST(DeviceTest, Parse) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda:1"), Device::cuda(1));
  EXPECT_EQ(Device::parse("cuda").str(), "cuda:0");
  try {
    Device::parse("tpu");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[device]", 0), 0u);
  }
}

TEST(AllocatorTest, CountsActivePeakAndCachedBytes) {
  Allocator& a = allocator_for(Device::cpu());
  a.clear_cache();
  a.reset_peak();
  const MemoryStats s0 = a.stats();
  {
    Array x({1 << 20}, Dtype::f32);
    EXPECT_EQ(a.stats().active, s0.active + Allocator::round_size(4 << 20));
  }
  const MemoryStats s1 = a.stats();
  EXPECT_EQ(s1.active, s0.active);
  EXPECT_GE(s1.peak, s0.active + (4u << 20));
  EXPECT_GE(s1.cached, 4u << 20);  // freed into the cache
  {
    Array y({1 << 20}, Dtype::f32);  // reuses the cached block
    EXPECT_EQ(a.stats().cached, s1.cached - Allocator::round_size(4 << 20));
  }
  a.clear_cache();
  EXPECT_EQ(a.stats().cached, 0u);
}

TEST(AllocatorTest, MemoryLimitThrowsAndLeavesStateUnchanged) {
  Allocator& a = allocator_for(Device::cpu());
  const size_t before = a.stats().active;
  a.set_memory_limit(before + (8u << 20));
  try {
    Array big({16 << 20}, Dtype::f32);
    FAIL() << "allocation past the limit succeeded";
  } catch (const OutOfMemory& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[memory]", 0), 0u);
  }
  EXPECT_EQ(a.stats().active, before);
  Array ok({1 << 20}, Dtype::f32);  // still usable
  a.set_memory_limit(0);
}

// Memory kept only to spare work (on_memory_pressure) goes before an allocation fails,
// and with clear_cache, each asked of the allocator's own device; once its handle is gone,
// nothing is asked of it.
TEST(AllocatorTest, MemoryKeptToSpareWorkGoesBeforeAnAllocationFails) {
  Allocator& a = allocator_for(Device::cpu());
  std::optional<Array> kept = Array({2 << 20}, Dtype::f32);  // 8 MiB
  int asked = 0;
  std::vector<Device> devices;
  auto handle = on_memory_pressure([&](Device d) {
    ++asked;
    devices.push_back(d);
    if (d == Device::cpu()) kept.reset();
  });
  EXPECT_TRUE(release_kept_memory(Device::cuda(1)));
  EXPECT_TRUE(kept.has_value()) << "asked for another device's memory";
  asked = 0;
  a.set_memory_limit(a.stats().active + (4u << 20));
  EXPECT_NO_THROW(Array({2 << 20}, Dtype::f32)) << "the kept 8 MiB make room for these";
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(devices, (std::vector<Device>{Device::cuda(1), Device::cpu()}));
  EXPECT_FALSE(kept.has_value());
  EXPECT_THROW(Array({4 << 20}, Dtype::f32), OutOfMemory) << "nothing left to give back";
  a.set_memory_limit(0);
  kept = Array({1 << 10}, Dtype::f32);
  a.clear_cache();
  EXPECT_FALSE(kept.has_value()) << "clear_cache lets kept memory go too";
  handle.reset();
  kept = Array({1 << 10}, Dtype::f32);
  a.clear_cache();
  EXPECT_TRUE(kept.has_value()) << "a registration ends with its handle";
}

TEST(AllocatorTest, CacheLimitBoundsTheCache) {
  Allocator& a = allocator_for(Device::cpu());
  a.set_cache_limit(1 << 20);
  { Array x({4 << 20}, Dtype::u8); }
  EXPECT_LE(a.stats().cached, 1u << 20);
  a.set_cache_limit(size_t(1) << 30);
}

TEST(AllocatorTest, RoundSizeWastesAtMostAnEighthAndTwoMiB) {
  for (size_t b : {1ul, 255ul, 257ul, 1000ul, 4097ul, 1234567ul, 33619968ul, 99999999ul, 311164928ul}) {
    const size_t r = Allocator::round_size(b);
    EXPECT_GE(r, b);
    EXPECT_EQ(r % 256, 0u) << b;  // every block keeps 256-byte alignment
    EXPECT_LE(r, std::max<size_t>(256, b + b / 8 + 256)) << b;
    EXPECT_LT(r - b, size_t(2) << 20) << b;
  }
  // Sizes that differ by less than the granularity share a size, so one's freed block serves the other.
  EXPECT_EQ(Allocator::round_size(33619968), Allocator::round_size(33619968 + 4096));
}

TEST(ArrayTest, ViewsShareStorage) {
  Array a({2, 3}, Dtype::f32);
  EXPECT_TRUE(a.is_contiguous());
  const Array t = a.view({3, 2}, {1, 3}, 0);
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.storage(), a.storage());
  a.data<float>()[1] = 5;
  EXPECT_EQ(static_cast<float*>(t.raw())[t.strides()[0]], 5);
  EXPECT_THROW(a.data<int32_t>(), Error);
  EXPECT_THROW(Array({-1}, Dtype::f32), Error);
  EXPECT_THROW(Array().raw(), Error);
}

TEST(ArrayTest, BorrowKeepsTheOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3});
  std::weak_ptr<std::vector<float>> watch = owner;
  {
    Array a = Array::borrow(owner->data(), {3}, Dtype::f32, owner);
    owner.reset();
    EXPECT_FALSE(watch.expired());
    EXPECT_EQ(a.data<float>()[2], 3);
  }
  EXPECT_TRUE(watch.expired());
}

TEST(ThreadPoolTest, CoversTheRangeOnceAndRethrows) {
  std::vector<std::atomic<int>> hits(10007);
  parallel_for(10007, 3, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  EXPECT_THROW(parallel_for(100, 1, [](int64_t b, int64_t) {
                 if (b == 0) fail("test", "boom");
               }),
               Error);
  int nested = 0;
  parallel_for(4, 1, [&](int64_t, int64_t) { parallel_for(2, 1, [&](int64_t, int64_t) {}); });
  (void)nested;
}

// Jobs back to back (the workers still polling), and jobs after pauses past the pool's 200 us
// of polling (the workers asleep on the condition variable): every job covers its range once,
// whichever way the workers wait, and an error after a pause still reaches the caller.
TEST(ThreadPoolTest, JobsAfterPollingAndAfterSleepingEachRunOnce) {
  const int threads = num_threads();
  set_num_threads(3);
  for (int job = 0; job < 60; ++job) {
    if (job % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(job % 2 ? 300 : 1000));
    std::vector<std::atomic<int>> hits(size_t(97 + job));
    parallel_for(int64_t(hits.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
    });
    for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i].load(), 1) << "job " << job << " item " << i;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_THROW(parallel_for(64, 1, [](int64_t, int64_t e) {
                 if (e == 64) fail("test", "late");
               }),
               Error);
  set_num_threads(threads);
}

// An embedding program may set the thread count while other threads run jobs: the resize
// waits for the job in flight, two resizes do not meet, and every job still covers its range
// once. From inside a job it is an error, not a wait on itself.
TEST(ThreadPoolTest, ResizesWhileOtherThreadsRunJobs) {
  const int threads = num_threads();
  std::atomic<bool> done{false}, bad{false};
  auto jobs = [&] {
    for (int job = 0; !done.load() || job < 20; ++job) {
      std::vector<std::atomic<int>> hits(size_t(61 + job % 40));
      parallel_for(int64_t(hits.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
      });
      for (auto& h : hits) bad = bad || h.load() != 1;
    }
  };
  auto resizes = [&](int first) {
    for (int i = 0; i < 40; ++i) set_num_threads(first + i % 3);
  };
  std::thread a(jobs), b(jobs), c(resizes, 1), d(resizes, 2);
  c.join(), d.join();
  done = true;
  a.join(), b.join();
  EXPECT_FALSE(bad.load()) << "a job missed or repeated an item";
  EXPECT_GE(num_threads(), 1);
  set_num_threads(2);
  EXPECT_THROW(parallel_for(2, 1, [](int64_t, int64_t) { set_num_threads(3); }), Error);
  EXPECT_EQ(num_threads(), 2);
  set_num_threads(threads);
}

TEST(ErrorTest, CheckFormatsThePrefix) {
  try {
    LMX_CHECK(1 == 2, "matmul", "inner dimensions differ: ", 64, " vs ", 65);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "[matmul] inner dimensions differ: 64 vs 65");
  }
}

}  // namespace
}  // namespace lmx
