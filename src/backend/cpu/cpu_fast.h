// CPU kernels for the fused ops and the matrix-vector product (see ops/kernels.h for
// the contracts). CpuKernels forwards to these.
#pragma once

#include <optional>

#include "ops/kernels.h"

namespace lmx::cpu {

void rms_norm(const Array& x, const Array& w, float eps, fast::RmsNormStyle style, const Array& out);
void layer_norm(const Array& x, const Array& w, const Array* bias, float eps, const Array& out);
void rope(const Array& x, const Array& inv_freq, const Array& offsets, const Array& out);
// The optional fusions of ops/kernels.h; false where they do not apply.
bool rope_heads(const Array& x, const Array& inv_freq, const Array& offsets, const Array* norm_w, float eps,
                fast::RmsNormStyle style, const Array& out);
bool add_rms_norm(const Array& x, const Array& y, const Array* y_w, const Array& w, float eps,
                  fast::RmsNormStyle style, const Array& sum, const Array& normed);
void glu(fast::GluActivation act, const Array& gate, const Array& up, const Array& out);  // elementwise.cpp
// glu on SIMD vectors for contiguous bf16 or f32 (glu.cpp); false, doing nothing, otherwise.
bool glu_contiguous(fast::GluActivation act, const Array& gate, const Array& up, const Array& out);
void attention(const Array& q, const Array& k, const Array& v, float scale, bool causal,
               int64_t window, const Array& q_offsets, const Array* key_valid, const Array& out);

// fast::dequantize and fast::quantized_matmul (ops/kernels.h), in quantized.cpp.
void dequantize(const fast::QuantizedMatrix& w, const Array& out);
bool quantized_matmul(const Array& x, const fast::QuantizedMatrix& w, const Array& out);
namespace quant {
struct Rows;
}
// out [M, N] (f32) = x [M, K] (bf16 bits, contiguous) times W's 4- or 8-bit codes, on
// VDPBF16PS (quantized_bf16.cpp); each row's outputs have the bits they have alone. False,
// doing nothing, for other widths, CPUs without AVX512_BF16, or LMX_CPU_BF16_GEMM=0.
bool quantized_bf16(const quant::Rows& w, const uint16_t* x, int64_t m, int64_t n, float* out);

// out [B, M, N] = a [B, M, K] · b [B, K, N] when b is a transposed row-major weight
// (b.strides() for the last two axes == {1, K}), with f32 accumulation: one row of f32,
// or up to kGemvMaxRows of bf16 or f16 (decode steps of a batch, short prompts), which
// read W once for all rows; a batch whose elements share W (b's batch stride 0) counts
// its rows together. Each output row has the bits it has when computed alone.
// Returns false, doing nothing, when the shapes or strides do not fit.
constexpr int64_t kGemvMaxRows = 64;
bool gemv(const Array& a, const Array& b, const Array& out);

// out [B, M, N] = a [B, M, K] · b [B, K, N] for bf16 at any row count where the CPU has
// AVX512_BF16 (gemm_bf16.cpp), W laid out as gemv takes it: W read as stored, two products an
// instruction, f32 sums rounded once. Each output depends only on its row of `a` and of W and
// K, so a row has the same bits alone, in a batch's decode step or in a prompt. matmul tries
// it before gemv; LMX_CPU_BF16_GEMM=0 leaves bf16 to gemv and sgemm.
// Returns false, doing nothing, where the CPU, the dtypes or the layout do not fit.
bool gemm_bf16(const Array& a, const Array& b, const Array& out);
// bf16 a [B, M, K] times a row-major b [B, K, N] (rows dense, any row stride of at least N;
// batch stride 0 allowed), out contiguous bf16: f32 sums over K in order, rounded once. false
// where it does not apply (dtypes, layout, no AVX512_BF16 or LMX_CPU_BF16_GEMM=0).
bool gemm_bf16_kn(const Array& a, const Array& b, const Array& out);
bool gemm_bf16_available();  // the CPU has the instructions (whatever LMX_CPU_BF16_GEMM says)
// The VDPBF16PS kernels (gemm_bf16, quantized_bf16) run: the CPU has the instructions and
// LMX_CPU_BF16_GEMM is not 0 (read on every call, so that tests can switch it).
bool bf16_kernels_on();

// out [M, N] (bf16, rows N apart) = a's M rows (a_row elements apart) times W's N rows (w_row
// apart), K columns each, on the calling thread and VDPBF16PS: the sums gemm_bf16 makes for
// the same rows, each depending only on its two rows and K (the attention's q·kᵀ takes it).
// False, doing nothing, where bf16_kernels_on() is false.
bool bf16_rows_product(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* w, int64_t w_row, int64_t k,
                       uint16_t* out, int64_t n);

// out [M, D] (f32) = p · v for the attention, on VDPBF16PS: row r of p (p_row apart, bf16
// values held as f32) weighs v's rows [0, keys[r]) (v_row apart, n rows in all; a row with
// `valid` false counts as zeros). Each output adds the keys in pairs, in order, so a row's
// bits depend only on its own probabilities, the values and keys[r]. False, doing nothing,
// where bf16_kernels_on() is false or D is not a multiple of 32 up to 256.
bool bf16_weighted_rows(const float* p, int64_t p_row, int64_t m, const int64_t* keys, const uint16_t* v,
                        int64_t v_row, const bool* valid, int64_t n, int64_t d, float* out);

// out [M, N] (bf16) = a's M rows (a_row elements apart) times a row-major W [N, K]ᵀ on AMX
// tiles (gemm_amx.cpp), for K a multiple of 32 and N of 16; each output depends only on its
// rows of `a` and W and on K. False, doing nothing, where the shape does not fit, the CPU or
// Linux gives no tiles, or LMX_CPU_AMX=0 (read on every call).
bool gemm_amx(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* w, int64_t k, uint16_t* out, int64_t n);
bool amx_available();  // the CPU has AMX-BF16 and this process may use the tiles
bool amx_on();         // amx_available() and LMX_CPU_AMX is not 0

// The product both take: b a row-major W [N, K] seen transposed (its last two strides
// {1, K}), a's rows dense along K, out contiguous. Where b's batches share one W (batch
// stride 0) and a's follow one another at one stride, the B·M rows fold into one batch if
// they number at most fold_rows. nullopt where the shapes or strides do not fit.
struct WeightProduct {
  int64_t batches, rows, k, n;
  int64_t a_row;  // elements from one row of `a` to the next
};
std::optional<WeightProduct> weight_product(const Array& a, const Array& b, const Array& out, int64_t fold_rows);

}  // namespace lmx::cpu
