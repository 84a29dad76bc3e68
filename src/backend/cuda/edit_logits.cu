// fast::edit_logits on the device (a logit bias and the penalties, as Sampler::process
// makes them), the token counts that the fused decoder keeps for them, and the copy of
// drawn ids to where the next step reads them: the work around sample.cu's draw.
#include "backend/cuda/common.cuh"

namespace lmx::cuda {
namespace {

// Logit l of token `id` edited as Sampler::process edits it: the biases of its entries,
// entries[j, end) while they are the id's, in order; then the penalties where its count
// is above 0.
__device__ __forceinline__ float edit_one(float l, const int4* entries, int j, int end, int id,
                                          int count, const fast::Penalties& p) {
  for (; j < end && entries[j].x == id; ++j)
    if (entries[j].w) l += __int_as_float(entries[j].z);
  if (count > 0) {
    if (p.repetition != 1) l = l < 0 ? l * p.repetition : l / p.repetition;
    l -= p.presence + p.frequency * float(count);
  }
  return l;
}

// fast::edit_logits: a block a row, a thread an id (the first of its entries).
__global__ void edit_logits_kernel(float* x, int64_t cols, const int32_t* starts, const int4* edits,
                                   fast::Penalties p) {
  const int lo = starts[blockIdx.x], hi = starts[blockIdx.x + 1];
  for (int i = lo + int(threadIdx.x); i < hi; i += int(blockDim.x)) {
    const int id = edits[i].x, count = edits[i].y;
    if (i > lo && edits[i - 1].x == id) continue;  // the id's first entry applies them all
    float* at = x + int64_t(blockIdx.x) * cols + id;
    *at = edit_one(*at, edits, i, hi, id, count, p);
  }
}

// fast::edit_logits's edits from counts kept on the device (edit_counted): a thread an id,
// its entries found by a binary search of the row's (sorted by id); the row's previous
// draw counts first.
__global__ void edit_counted_kernel(const float* x, float* out, int64_t cols, int32_t* counts,
                                    const int32_t* prev, int64_t prev_stride, const int32_t* starts,
                                    const int4* entries, fast::Penalties p) {
  const int64_t id = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, r = blockIdx.y;
  if (id >= cols) return;
  int lo = starts[r], hi = starts[r + 1];
  while (lo < hi) {  // the first entry of this id or past it
    const int mid = (lo + hi) / 2;
    if (entries[mid].x < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  int32_t* count = counts + r * cols + id;
  int c = *count;
  if (prev && prev[r * prev_stride] == id) *count = ++c;
  out[r * cols + id] = edit_one(x[r * cols + id], entries, lo, starts[r + 1], int(id), c, p);
}

__global__ void set_counts_kernel(int32_t* counts, int64_t cols, const int32_t* starts,
                                  const int4* entries) {
  for (int j = starts[blockIdx.x] + int(threadIdx.x); j < starts[blockIdx.x + 1];
       j += int(blockDim.x))
    counts[int64_t(blockIdx.x) * cols + entries[j].x] =
        entries[j].y;  // an id's entries share its count
}

__global__ void put_tokens_kernel(const int32_t* ids, int rows, DrawTargets to) {
  const int r = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (r >= rows) return;
  to.out[r * to.stride] = ids[r];
  if (to.also) to.also[r * to.also_stride] = ids[r];
}

}  // namespace

void edit_logits(const Context& ctx, const Array& x, const Array& starts, const Array& edits,
                 const fast::Penalties& p) {
  // x [R, V] f32 contiguous, starts [R + 1], edits [E, 4] int32
  const int64_t rows = x.shape(0);
  if (rows == 0) return;
  LMX_CHECK(rows <= int64_t(INT32_MAX), "edit_logits", rows,
            " rows are too many for one launch on cuda");
  edit_logits_kernel<<<unsigned(rows), kBlock, 0, ctx.stream>>>(
      x.data<float>(), x.shape(1), starts.data<int32_t>(), static_cast<const int4*>(edits.raw()),
      p);
  check_launch("edit_logits_kernel");
}

void put_tokens(const Context& ctx, const Array& ids, const DrawTargets& to) {
  const int rows = int(ids.size());
  put_tokens_kernel<<<grid_for(rows), kBlock, 0, ctx.stream>>>(ids.data<int32_t>(), rows, to);
  check_launch("put_tokens_kernel");
}

void set_counts(const Context& ctx, const Array& counts, const Array& starts,
                const Array& entries) {
  // counts [R, V] int32 contiguous
  check(cudaMemsetAsync(counts.raw(), 0, size_t(counts.size()) * 4, ctx.stream), "cudaMemsetAsync");
  if (!entries.valid()) return;
  set_counts_kernel<<<unsigned(counts.shape(0)), kBlock, 0, ctx.stream>>>(
      counts.data<int32_t>(), counts.shape(1), starts.data<int32_t>(),
      static_cast<const int4*>(entries.raw()));
  check_launch("set_counts_kernel");
}

void edit_counted(const Context& ctx, const Array& x, const Array& out, const Array& counts,
                  const int32_t* prev, int64_t prev_stride, const Array& starts,
                  const Array& entries, const fast::Penalties& p) {
  // x, out [R, V] f32 and counts [R, V] int32, contiguous
  const int64_t rows = x.shape(0), cols = x.shape(1);
  const dim3 grid(grid_for(cols), unsigned(rows));
  edit_counted_kernel<<<grid, kBlock, 0, ctx.stream>>>(
      x.data<float>(), out.data<float>(), cols, counts.data<int32_t>(), prev, prev_stride,
      starts.data<int32_t>(), entries.valid() ? static_cast<const int4*>(entries.raw()) : nullptr,
      p);
  check_launch("edit_counted_kernel");
}

}  // namespace lmx::cuda
