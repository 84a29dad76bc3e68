// The CUDA backend's kernels, one file per op family; kernels.cpp exposes them through
// the Kernels interface of ops/kernels.h, whose shape contracts they follow. Every
// function enqueues on ctx.stream and returns; none synchronises unless it says so.
#pragma once

#include "backend/cuda/device.h"
#include "ops/kernels.h"

namespace lmx::cuda {

void register_cuda_allocator();  // allocator.cpp

// copy.cu
void fill(const Context& ctx, const Array& out, double value);
void arange(const Context& ctx, const Array& out, double start, double step);
void random(const Context& ctx, const Array& out, uint64_t seed, detail::RandomKind kind, float a,
            float b);
bool dropout(const Context& ctx, const Array& x, float p, uint64_t seed, const Array& out);
void copy(const Context& ctx, const Array& src, const Array& dst);
// elementwise.cu
void unary(const Context& ctx, UnaryOp op, const Array& in, const Array& out);
void binary(const Context& ctx, BinaryOp op, const Array& a, const Array& b, const Array& out);
void where(const Context& ctx, const Array& cond, const Array& a, const Array& b, const Array& out);
void glu(const Context& ctx, fast::GluActivation act, const Array& gate, const Array& up, const Array& out);
// Its gradient (Kernels::glu_grad): d_gate and d_up from the output's gradient d, all
// contiguous in gate's dtype.
void glu_grad(const Context& ctx, fast::GluActivation act, const Array& gate, const Array& up, const Array& d,
              const Array& d_gate, const Array& d_up);
// elementwise.cu: one AdamW update (Kernels::adamw), a launch for what took some 25.
void adamw(const Context& ctx, const Array& g, const Array& master, const Array& m, const Array& v,
           const Array& param, const detail::Kernels::AdamWFactors& f);
// glu_gemm.cu: glu(x·w_gateᵀ, x·w_upᵀ) for x [R, K] and weights [N, K], all contiguous ->
// [R, N]. As one GEMM on sm_90 for bf16 where R ≥ 256, N % 128 == 0 and K % 64 == 0 up to
// 1,536; otherwise, up to kPairedRowsUpTo rows, both GEMMs in one launch (matmul_pair) and
// then the activation; an empty Array (nothing done) otherwise.
Array gated_projection(const Context& ctx, fast::GluActivation act, const Array& x, const Array& w_gate,
                       const Array& w_up);
// matmul.cpp
void matmul(const Context& ctx, const Array& a, const Array& b, const Array& out);
// {x·w0ᵀ, x·w1ᵀ} [M, N] each for x [M, K] and two separately stored weights [N, K], as one
// batched GEMM whose batch stride is the distance between the weights; two empty Arrays
// (nothing done) past kPairedRowsUpTo rows, or where the distance is no whole number of
// elements or past 2^31 of them. All contiguous, one dtype.
std::pair<Array, Array> matmul_pair(const Context& ctx, const Array& x, const Array& w0, const Array& w1);
// Products of at most this many rows (decode steps, short prompts) take matmul_pair where
// two GEMMs share an input (k and v; gate and up below glu_gemm.cu's rows): each is paced by
// its launch more than by its weights, and on the host each GEMM call costs about 11 µs.
// Measured at 16 and 64 rows, then at 128 and 512 (bench/NOTES.md, "The first token").
constexpr int64_t kPairedRowsUpTo = 512;
// reduce.cu
void reduce(const Context& ctx, detail::ReduceOp op, const Array& in, const Array& out);
void argmax(const Context& ctx, const Array& in, const Array& out);
void softmax(const Context& ctx, const Array& in, const Array& out);
// indexing.cu (both synchronise: indices are checked on the host before any write)
void take(const Context& ctx, const Array& src, const Array& idx, const Array& out);
void take_along(const Context& ctx, const Array& src, const Array& idx, const Array& out);
// sort.cu
void sort(const Context& ctx, const Array& in, bool descending, int k, const Array& values,
          const Array& indices);
void categorical(const Context& ctx, const Array& logits, uint64_t seed, const Array& out);
// sample.cu
void edit_logits(const Context& ctx, const Array& x, const Array& starts, const Array& edits,
                 const fast::Penalties& p);
// One draw a row of logits [R, V] (contiguous, float), with words[r] its random word, into
// out[r · stride] int32 on the device, and also into also[r · also_stride] where `also`
// is set.
struct DrawTargets {
  int32_t* out = nullptr;
  int64_t stride = 1;
  int32_t* also = nullptr;
  int64_t also_stride = 0;
};
// The rows of a single row of logits that a filtered LM head left exact (the fused
// decoder's, HeadExchange): ids[0, *count) where *count <= cap, in no order; every other
// logit lies below the row's top-k largest. With them, a draw whose top-k keeps at most
// 128 tokens takes one block and no grid sync.
struct ListedRows {
  const int32_t* ids = nullptr;
  const unsigned* count = nullptr;
  int cap = 0;
};
void sample_tokens(const Context& ctx, const Array& logits, std::span<const uint64_t> words,
                   const fast::SampleFilter& filter, const DrawTargets& to, const ListedRows& listed = {});
// ids [R] int32 on the device into `to`.
void put_tokens(const Context& ctx, const Array& ids, const DrawTargets& to);
// fast::edit_logits's edits with each row's token counts kept on the device, for draws
// queued one after another. set_counts: counts [R, V] int32 zeroed, then each entry's count
// (starts [R + 1] and entries [E, 4] as edit_logits takes them; entries may be invalid where
// E = 0). edit_counted: x [R, V] f32 -> out [R, V] with the entries' biases and the
// penalties of the counts, after adding each row's previous draw, prev[r · prev_stride],
// to its counts where prev is set.
void set_counts(const Context& ctx, const Array& counts, const Array& starts, const Array& entries);
void edit_counted(const Context& ctx, const Array& x, const Array& out, const Array& counts,
                  const int32_t* prev, int64_t prev_stride, const Array& starts,
                  const Array& entries, const fast::Penalties& p);
// cross_entropy.cu (Kernels::cross_entropy_rows and its gradient): logits [R, V] and d_logits
// contiguous, targets [R] i32 in [0, V), loss and g [R] f32.
void cross_entropy_rows(const Context& ctx, const Array& logits, const Array& targets, const Array& loss);
void cross_entropy_rows_grad(const Context& ctx, const Array& logits, const Array& targets, const Array& g,
                             const Array& d_logits);
// norm.cu
void rms_norm(const Context& ctx, const Array& x, const Array& w, float eps,
              fast::RmsNormStyle style, const Array& out);
// Its gradient for x (Kernels::rms_norm_grad): x, g, dx [R, D] contiguous in one dtype, w [D].
void rms_norm_grad(const Context& ctx, const Array& x, const Array& w, const Array& g, float eps,
                   fast::RmsNormStyle style, const Array& dx);
void layer_norm(const Context& ctx, const Array& x, const Array& w, const Array* bias, float eps,
                const Array& out);
// norm.cu: the residual add fused with the next RMSNorm; false where the vectorised
// kernel does not apply (the op then composes add and rms_norm).
bool add_rms_norm(const Context& ctx, const Array& x, const Array& y, const Array* y_w, const Array& w, float eps,
                  fast::RmsNormStyle style, const Array& sum, const Array& normed);
// rope.cu
void rope(const Context& ctx, const Array& x, const Array& inv_freq, const Array& offsets,
          const Array& out);
// x [B, L, H, D] -> out [B, H, L, D], optionally normed per head; false for head_dim > 256
// or heads that are not whole 16-byte vectors per half.
bool rope_heads(const Context& ctx, const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w,
                float eps, fast::RmsNormStyle style, const Array& out);
// fast::rope_to_cache in one kernel, under rope_heads's limits and with slots whose strides
// are whole 16-byte vectors; false (nothing done) otherwise.
bool rope_to_cache(const Context& ctx, const Array& q, const Array& k, const Array& v, const Array& inv_freq,
                   const Array& offsets, const Array* q_norm, const Array* k_norm, float eps,
                   fast::RmsNormStyle style, const Array& q_out, const Array& k_out, const Array& v_out);
// self_attention.cu: fast::self_attention in one kernel for bf16/f16, head_dim 32-256 (a
// multiple of 16) and up to 128 tokens when the shared memory fits; false (nothing done)
// otherwise.
bool self_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, const Array& inv_freq,
                    const Array& offsets, const Array* q_norm, const Array* k_norm, float eps,
                    fast::RmsNormStyle style, float scale, int64_t window, const Array& out);
// attention.cu
void attention(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale,
               bool causal, int64_t window, const Array& q_offsets, const Array* key_valid,
               const Array& out);

// flash_attention.cu: the same attention for long prompts (64+ query rows, 512+ keys,
// bf16/f16, head_dim 64 or 128) without storing S; false (nothing done) otherwise.
bool flash_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale, bool causal,
                     int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out);
// attention_gemm.cu: the same attention through cuBLAS for many query rows; false (and
// nothing done) where that path does not apply.
bool attention_by_gemm(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale, bool causal,
                       int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out);
// The same for any number of query rows (Kernels::eager_attention), and its gradient
// (Kernels::eager_attention_grad): dq, dk, dv from the output's gradient g, all contiguous.
bool eager_attention(const Context& ctx, const Array& q, const Array& k, const Array& v, float scale, bool causal,
                     int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out);
bool eager_attention_grad(const Context& ctx, const Array& q, const Array& k, const Array& v, const Array& g,
                          float scale, bool causal, int64_t window, const Array& q_offsets, const Array* key_valid,
                          const Array& dq, const Array& dk, const Array& dv);

// fused_decoder.cpp: nullptr for weights the fused kernels do not read (not bf16), or for
// a batch of `rows` sequences they cannot step (more than 8, or shapes the batched GEMV
// does not take).
std::unique_ptr<fast::FusedDecoder> make_fused_decoder(int device, const fast::FusedDecoderWeights& w, int rows);

}  // namespace lmx::cuda
