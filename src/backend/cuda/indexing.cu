// Gather kernels: take (rows of an axis by index) and take_along. A bad index is never an
// out-of-bounds read: the kernel checks every index, writes zeros for a bad one and
// records it in the context's DeviceFault, which the next wait for the device raises as
// lmx::Error. The host so never waits for indices that the device computes (a decode
// loop feeding its argmax back, a selection of positions), where copying them back to
// check them stalled the queue once per gather. Where the device cannot map host memory,
// the indices are copied to the host and checked before the launch, as the CPU does.
#include <vector>

#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

struct Strides3 {
  int64_t s0, s1, s2;
};
Strides3 strides3(const Array& a) { return {a.strides()[0], a.strides()[1], a.strides()[2]}; }

// out [P, M, S] contiguous = src [P, N, S] at rows idx [M] (take) or idx [P, M, S] (take_along).
// An index outside [0, N) gives a zero and, once per warp that meets one, a fault record.
template <class W, class I, bool kAlong>
__global__ void gather_kernel(const W* src, Strides3 st, int64_t rows, const I* idx, W* out, int64_t m, int64_t s,
                              int64_t n, DeviceFault* fault, int fault_op) {
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const int64_t si = e % s, mi = (e / s) % m, pi = e / (s * m);
    const I raw = idx[kAlong ? e : mi];
    const int64_t row = int64_t(raw);
    const bool bad = row < 0 || row >= rows;
    out[e] = bad ? W{} : src[pi * st.s0 + row * st.s1 + si * st.s2];
    const unsigned bad_lanes = __ballot_sync(__activemask(), bad);
    if (bad && fault && (threadIdx.x % 32) == unsigned(__ffs(bad_lanes) - 1)) {
      // Plain stores to host memory: any bad index will do, so racing writers need no atomics.
      fault->raw_index = uint32_t(raw);
      fault->bound = rows;
      __threadfence_system();
      fault->op = fault_op;
    }
  }
}

// The indices of a contiguous int32/uint32 array on the host, each checked against n
// (only where the device has no DeviceFault).
void check_indices(const Context& ctx, const Array& idx, int64_t n, const char* op) {
  std::vector<uint32_t> host(size_t(idx.size()));  // raw 32-bit words of either dtype
  if (host.empty()) return;
  check(cudaMemcpyAsync(host.data(), idx.raw(), idx.nbytes(), cudaMemcpyDeviceToHost, ctx.stream),
        "cudaMemcpyAsync");
  synchronize(ctx);
  for (uint32_t w : host) {
    const int64_t v = idx.dtype() == Dtype::i32 ? int64_t(int32_t(w)) : int64_t(w);
    LMX_CHECK(v >= 0 && v < n, op, "index ", v, " is out of range for an axis of size ", n);
  }
}

template <bool kAlong>
void gather(const Context& ctx, const Array& src, const Array& idx, const Array& out) {
  const int64_t total = out.size(), m = out.shape(1), s = out.shape(2);
  if (total == 0) return;
  const bool u32 = idx.dtype() == Dtype::u32;
  if (!ctx.fault) check_indices(ctx, idx, src.shape(1), kAlong ? "take_along_axis" : "take");
  const int fault_op = kAlong ? (u32 ? kFaultTakeAlongU32 : kFaultTakeAlongI32) : (u32 ? kFaultTakeU32 : kFaultTakeI32);
  // Elements move as raw words of their size: a gather never converts.
  // Whole rows of 16-byte words (take of contiguous rows: an embedding's lookup) move as
  // such words: each element costs the kernel three 64-bit divisions, so 2-byte elements
  // ran at 0.6 TB/s (Llama's 32,768 embedding rows, 448 µs).
  const Strides3 st = strides3(src);
  const int64_t per = 16 / int64_t(itemsize(src.dtype()));
  const bool words16 = !kAlong && st.s2 == 1 && s % per == 0 && st.s1 % per == 0 &&
                       st.s0 % per == 0 && aligned16(src) && aligned16(out);
  auto launch = [&](auto word, auto index) {
    using W = decltype(word);
    using I = decltype(index);
    const int64_t k = int64_t(sizeof(W)) / int64_t(itemsize(src.dtype()));  // elements a word
    gather_kernel<W, I, kAlong><<<grid_for(total / k), kBlock, 0, ctx.stream>>>(
        static_cast<const W*>(src.raw()), k == 1 ? st : Strides3{st.s0 / k, st.s1 / k, 1},
        src.shape(1), static_cast<const I*>(idx.raw()), static_cast<W*>(out.raw()), m, s / k,
        total / k, ctx.fault, fault_op);
    check_launch("gather_kernel");
  };
  auto with_index = [&](auto word) {
    if (idx.dtype() == Dtype::i32)
      launch(word, int32_t{});
    else
      launch(word, uint32_t{});
  };
  if (words16) return with_index(uint4{});
  switch (itemsize(src.dtype())) {
    case 4: return with_index(uint32_t{});
    case 2: return with_index(uint16_t{});
    default: return with_index(uint8_t{});
  }
}

}  // namespace

void take(const Context& ctx, const Array& src, const Array& idx, const Array& out) {
  // src [P, N, S], idx [M] contiguous -> out [P, M, S]
  gather<false>(ctx, src, idx, out);
}

void take_along(const Context& ctx, const Array& src, const Array& idx, const Array& out) {
  // src [P, N, S], idx [P, M, S] (any strides, e.g. broadcast) -> out [P, M, S]
  Array dense(idx.shape(), idx.dtype(), idx.device());  // [P, M, S]
  copy(ctx, idx, dense);
  gather<true>(ctx, src, dense, out);
}

}  // namespace lmx::cuda
