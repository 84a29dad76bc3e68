// The CPU backend's kernels, one file per op family; cpu_kernels.cpp exposes them
// through the Kernels interface of ops/kernels.h, whose contracts they follow.
#pragma once

#include "backend/cpu/cpu_fast.h"
#include "core/random.h"
#include "ops/kernels.h"

namespace lmx::cpu {

// copy.cpp
void fill(const Array& out, double value);
void arange(const Array& out, double start, double step);
void random(const Array& out, uint64_t seed, detail::RandomKind kind, float a, float b);
bool dropout(const Array& x, float p, uint64_t seed, const Array& out);
void copy(const Array& src, const Array& dst);
// elementwise.cpp
void unary(UnaryOp op, const Array& in, const Array& out);
void binary(BinaryOp op, const Array& a, const Array& b, const Array& out);
void where(const Array& cond, const Array& a, const Array& b, const Array& out);
// matmul.cpp
void matmul(const Array& a, const Array& b, const Array& out);
// reduce.cpp
void reduce(detail::ReduceOp op, const Array& in, const Array& out);
void argmax(const Array& in, const Array& out);
void softmax(const Array& in, const Array& out);
// Each row's cross-entropy against its target, and its gradient (Kernels::cross_entropy_rows
// and cross_entropy_rows_grad); false for dtypes not summed in f32.
bool cross_entropy_rows(const Array& logits, const Array& targets, const Array& loss);
bool cross_entropy_rows_grad(const Array& logits, const Array& targets, const Array& g, const Array& d);
// indexing.cpp
void take(const Array& src, const Array& idx, const Array& out);
void take_along(const Array& src, const Array& idx, const Array& out);
// sort.cpp
void sort(const Array& in, bool descending, int k, const Array& values, const Array& indices);
void categorical(const Array& logits, uint64_t seed, const Array& out);
// sample.cpp
void edit_logits(const Array& x, const Array& starts, const Array& edits, const fast::Penalties& p);
void sample_tokens(const Array& logits, std::span<const uint64_t> words,
                   const fast::SampleFilter& filter, const Array& out);

// Uniform in [0, 1) from word i of the seed (core/random.h), shared by random(), dropout()
// and categorical().
inline float random_unit(uint64_t seed, uint64_t i) {
  return float(counter_bits(seed, i) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace lmx::cpu
