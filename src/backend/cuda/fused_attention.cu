// The kernels of the fused step that are not GEMVs: attention (fused_attention.cuh) and
// the token embedding.
#include <algorithm>

#include "backend/cuda/fused_attention.cuh"

namespace lmx::cuda::fused {
namespace {

using namespace attention_detail;

__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionStep a) {
  extern __shared__ float sm[];
  const AttentionStep r = blockIdx.z == 0 ? a : row_of(a, int(blockIdx.z));
  attention_task<false>(r, blockIdx.x, blockIdx.y, sm, r.state[1], r.pad ? *r.pad : 0);
}

// Sequence blockIdx.y's token; state [rows, 3], x [rows, hidden].
__global__ void embed_kernel(const bf16* embed, int vocab, const int* state, float scale, int hidden, float* x) {
  wait_for_previous_kernel();
  x += size_t(blockIdx.y) * hidden;
  const bf16* row = embed_row(embed, state[3 * blockIdx.y], vocab, hidden);
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x) {
    const float v = __bfloat162float(row[i]);
    x[i] = scale > 0 ? v * scale : v;
  }
  allow_next_kernel();
}

}  // namespace

void attention_split(int slots, int kv_heads, int& chunk, int& splits) {
  // Short chunks: many blocks even for one kv head, and the chunk's keys and values fit in
  // shared memory for head_dim 256. Blocks past the live positions return at once.
  chunk = kv_heads >= 4 ? 32 : 16;
  splits = (slots + chunk - 1) / chunk;
}

void fit_attention_split(AttentionStep& a, int tasks, size_t max_scratch) {
  const int group = a.n_heads / a.n_kv_heads, per_head = std::max(1, tasks / a.n_kv_heads);
  int chunk = std::max(a.chunk, ((a.slots + per_head - 1) / per_head + 15) / 16 * 16);
  while (chunk > a.chunk && sizeof(float) * attention_smem_floats(group, a.head_dim, chunk) > max_scratch) chunk -= 16;
  a.chunk = chunk;
  a.splits = (a.slots + chunk - 1) / chunk;
}

void launch_attention(cudaStream_t stream, bool pdl, const AttentionStep& a) {
  const int group = a.n_heads / a.n_kv_heads;
  const size_t smem = sizeof(float) * attention_smem_floats(group, a.head_dim, a.chunk);
  LMX_CHECK(smem <= 96 * 1024 && group <= 32 && a.head_dim % 8 == 0, "fused decode",
            "attention with ", group, " query heads per kv head and head_dim ", a.head_dim, " is not supported");
  LMX_CHECK(!a.out_bf16, "fused decode", "the chunked attention writes an f32 output only");
  allow_shared_memory(attention_kernel, 96 * 1024);
  launch("fused attention", attention_kernel, stream, pdl, dim3(a.n_kv_heads, a.splits, a.rows), dim3(kThreads),
         smem, a);
}

void launch_embed(cudaStream_t stream, bool pdl, const bf16* embed, int vocab, const int* state, float scale,
                  int hidden, float* x, int rows) {
  launch("fused embedding", embed_kernel, stream, pdl, dim3((hidden + 255) / 256, rows), dim3(256), 0, embed, vocab,
         state, scale, hidden, x);
}

}  // namespace lmx::cuda::fused
