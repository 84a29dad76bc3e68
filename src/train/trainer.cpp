#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "autograd/autograd.h"
#include "core/allocator.h"
#include "core/error.h"
#include "nn/layers.h"
#include "train/loss.h"

namespace lmx::train {
namespace {

// ids [B, L] and targets [B, L] on the model's device.
std::pair<Array, Array> upload(const Batch& b, Device d) {
  return {to_device(from_vector(b.ids, {b.rows, b.length}), d),
          to_device(from_vector(b.targets, {b.rows, b.length}), d)};
}

}  // namespace

double learning_rate_at(const TrainOptions& o, int step) {
  const double peak = o.learning_rate;
  if (step <= o.warmup) return peak * step / std::max(1, o.warmup);
  if (!o.cosine) return peak;
  const double t = double(step - o.warmup) / std::max(1, o.iters - o.warmup);  // 0 -> 1
  return peak * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * std::min(1.0, t))));
}

double evaluate(const models::CausalLM& model, const Dataset& data, int batch_size, int64_t* counted_out,
                int max_batches) {
  double sum = 0;
  int64_t counted = 0;
  const size_t end = max_batches > 0 ? std::min(data.examples.size(), size_t(max_batches) * size_t(batch_size))
                                     : data.examples.size();
  for (size_t i = 0; i < end; i += size_t(batch_size)) {
    std::vector<const Example*> rows;
    for (size_t j = i; j < std::min(end, i + size_t(batch_size)); ++j) rows.push_back(&data.examples[j]);
    const Batch b = make_batch(rows);
    const auto [ids, targets] = upload(b, model.device());
    sum += double(item(cross_entropy(model.forward(ids), targets))) * double(b.counted);
    counted += b.counted;
  }
  if (counted_out) *counted_out = counted;
  return sum / double(std::max<int64_t>(1, counted));
}

std::vector<Array> trainable_adapters(models::CausalLM& model) {
  std::vector<Array> params;
  for (const auto& [name, a] : models::lora_parameters(model)) params.push_back(*a = copy(*a));
  LMX_CHECK(!params.empty(), "train", "the model has no adapters to train (attach or load them first)");
  return params;
}

void train_lora(models::CausalLM& model, const models::LoraConfig& lora, const Dataset& train,
                const Dataset* valid, const TrainOptions& o,
                const std::function<void(const TrainReport&)>& report) {
  LMX_CHECK(o.iters > 0 && o.batch_size > 0 && o.grad_accumulation > 0 && o.learning_rate >= 0 && o.warmup >= 0 &&
                o.report_every > 0 && o.eval_every >= 0 && o.save_every >= 0,
            "train", "needs iters > 0, batch_size > 0, grad_accumulation > 0, learning_rate >= 0 and report_every > 0");
  LMX_CHECK(!train.examples.empty(), "train", "no training examples");
  const std::vector<Array> params = trainable_adapters(model);
  AdamW opt(params, {o.learning_rate, 0.9f, 0.999f, o.adam_epsilon, o.weight_decay});
  // On for this call only, errors included.
  struct Checkpointing {
    models::CausalLM& model;
    ~Checkpointing() { model.set_gradient_checkpointing(false); }
  } checkpointing{model};
  model.set_gradient_checkpointing(o.grad_checkpoint);

  // The examples in a new random order each pass over the data.
  std::mt19937_64 rng(o.seed);
  std::vector<size_t> order;
  size_t next = 0;
  auto take_batch = [&] {
    std::vector<const Example*> rows;
    while (int(rows.size()) < o.batch_size) {
      if (next == order.size()) {
        order.resize(train.examples.size());
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        next = 0;
      }
      rows.push_back(&train.examples[order[next++]]);
      if (rows.size() == train.examples.size()) break;  // fewer examples than a batch
    }
    return make_batch(rows);
  };

  Allocator& memory = allocator_for(model.device());
  memory.reset_peak();
  TrainReport r;
  double loss_sum = 0;
  int loss_steps = 0;
  int64_t window_tokens = 0;
  auto started = std::chrono::steady_clock::now();
  const auto first = std::chrono::steady_clock::now();
  for (int step = 1; step <= o.iters; ++step) {
    // The step's gradient: the mean of its micro-batches' (each the gradient of a mean loss), in f32.
    std::vector<Array> grads;
    double loss = 0;
    for (int micro = 0; micro < o.grad_accumulation; ++micro) {
      const Batch b = take_batch();
      const auto [ids, targets] = upload(b, model.device());
      // The adapters' dropout masks for this micro-batch; checkpointed layers replay them.
      const nn::DropoutScope masks(o.seed * 1000003 + uint64_t(step - 1) * uint64_t(o.grad_accumulation) +
                                   uint64_t(micro));
      const autograd::ValueAndGrad g =
          autograd::value_and_grad([&] { return cross_entropy(model.forward(ids), targets); }, params);
      for (size_t i = 0; i < g.grads.size(); ++i) {
        const Array part = astype(g.grads[i], Dtype::f32);
        if (micro == 0) {
          grads.push_back(part);
        } else {
          grads[i] = add(grads[i], part);
        }
      }
      loss += item(g.value) / o.grad_accumulation;
      window_tokens += b.counted, r.tokens += b.counted;
    }
    if (o.grad_accumulation > 1)
      for (Array& g : grads) g = multiply(g, 1.0 / o.grad_accumulation);
    // Before the update: a step from a NaN gradient would leave the adapters NaN.
    LMX_CHECK(std::isfinite(loss), "train", "the loss is ", loss, " at step ", step,
              ": lower the learning rate, or check the data for empty or overlong examples");
    r.learning_rate = learning_rate_at(o, step);
    opt.step(grads, float(r.learning_rate));
    loss_sum += loss, ++loss_steps;
    const bool last = step == o.iters;
    const bool eval = valid && ((o.eval_every > 0 && step % o.eval_every == 0) || last);
    if (step % o.report_every == 0 || eval || last) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      r.step = step;
      r.train_loss = loss_sum / loss_steps;
      r.tokens_per_s = double(window_tokens) / std::max(seconds, 1e-9);
      r.valid_loss = eval ? evaluate(model, *valid, o.batch_size, nullptr, o.val_batches) : -1;
      r.peak_memory = memory.stats().peak;
      r.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count();
      r.eta_s = r.elapsed_s / step * (o.iters - step);
      report(r);
      loss_sum = 0, loss_steps = 0, window_tokens = 0;
      started = std::chrono::steady_clock::now();
    }
    if ((o.save_every > 0 && step % o.save_every == 0) || last)
      models::save_lora(model, lora, o.adapter_path, o.base_model);
  }
}

}  // namespace lmx::train
