// `lmx bench MODEL`: end-to-end throughput of decode, prefill, classification and LoRA
// training steps on random token ids, timed after a warm-up, median of the repeats, as a
// table or JSON.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "lmx/lmx.h"
#include "autograd/autograd.h"
#include "core/error.h"
#include "models/loader.h"
#include "models/lora.h"
#include "ops/kernels.h"
#include "runtime/generator.h"
#include "runtime/kv_cache.h"
#include "runtime/prefill.h"
#include "runtime/text_model.h"
#include "train/loss.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace lmx::cli {
namespace {

struct BenchArgs {
  std::string dir, device, dtype;  // device "": cuda where a GPU is visible, else cpu
  bool decode = false, classify = false, prefill = false, score = false, json = false, plain = false;
  bool deterministic = false;
  bool lora = false, grad_checkpoint = false;
  int lora_rank = 8;
  double lora_dropout = 0;
  std::vector<int> batch{1};
  int prompt_len = 128, gen_len = 256, warmup = 1, repeat = 3, prompts = 1024, chunk = 1024;
  SamplingOptions sampling;  // decode's: greedy by default, seed 1 (add_bench_command)
  // Sampled decode is its own workload, so that result files keep it apart from greedy.
  bool sampled() const { return !Sampler(sampling).greedy(); }
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The device's SM clock and power draw, read every 5 ms on a thread of its own while the
// timed runs go. A GPU held at its power cap runs below its top clock (an H200 in
// classification: about 1,500 of 1,980 MHz at 700 W), and the same build then measures
// differently from one machine to the next; the readings say when that is so. Nothing is
// read where the device reports neither (the CPU, a GPU without NVML).
class DeviceReadings {
 public:
  explicit DeviceReadings(detail::Kernels& k) : k_(k) {
    double mhz, watts;
    if (!k_.clock_and_power(mhz, watts)) return;
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        double mhz, watts;
        if (k_.clock_and_power(mhz, watts)) mhz_ += mhz, watts_ += watts, min_mhz_ = std::min(min_mhz_, mhz), ++n_;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  ~DeviceReadings() { stop(); }
  DeviceReadings(const DeviceReadings&) = delete;
  DeviceReadings& operator=(const DeviceReadings&) = delete;

  // Stops the readings and adds their means (and the lowest clock) to `row`.
  void add_to(nlohmann::json& row) {
    stop();
    if (n_ == 0) return;
    row["sm_clock_mhz"] = std::round(mhz_ / n_);
    row["sm_clock_min_mhz"] = min_mhz_;
    row["power_w"] = std::round(watts_ / n_ * 10) / 10;
  }

 private:
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  detail::Kernels& k_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  double mhz_ = 0, watts_ = 0, min_mhz_ = INFINITY;  // the thread's alone until it is joined
  int n_ = 0;
};

// Runs fn `warmup` times, then `repeat` times, and returns the median duration; the device's
// clock and power over the timed runs go into `row`. The device is synchronised around each
// run so that asynchronous work is counted.
template <class Fn>
double median_seconds(Device d, int warmup, int repeat, nlohmann::json& row, Fn&& fn) {
  auto& k = detail::kernels_for(d);
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  DeviceReadings readings(k);
  for (int i = 0; i < std::max(1, repeat); ++i) {
    k.start_timer();  // CUDA events on the device's stream; the host clock on the CPU
    fn();
    t.push_back(k.stop_timer());
  }
  readings.add_to(row);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Array random_ids(int64_t rows, int64_t len, int64_t vocab, uint64_t seed, Device d) {
  const Array u = random_uniform({rows, len}, seed, 0, float(vocab) - 1, Dtype::f32);
  return to_device(astype(u, Dtype::i32), d);
}

void run_bench(const BenchArgs& a) {
  models::ModelLoadOptions o;
  o.device = Device::parse(a.device.empty() ? default_device() : a.device);  // as load_model chooses
  o.dtype = models::compute_dtype(a.dtype, "bench");
  o.deterministic = a.deterministic;
  const double t_load = now_s();
  const auto model = models::load_causal_lm(a.dir, o);
  const double load_s = now_s() - t_load;
  const int64_t vocab = model->spec().vocab_size;
  const Device dev = o.device;
  nlohmann::json results = nlohmann::json::array();
  const bool all = !a.decode && !a.classify && !a.prefill && !a.score && !a.lora;
  Allocator& alloc = allocator_for(dev);

  if (a.decode || all) {
    for (int b : a.batch) {
      const Array prompt = random_ids(b, a.prompt_len, vocab, 1, dev);
      // Each run's time to its first token; the row gives the median of the timed runs' (a
      // single run's moves by a millisecond from one to the next, a third of a short prompt's).
      std::vector<double> prefills;
      alloc.reset_peak();
      // One sequence decodes as `lmx generate` does: through the generator, which takes
      // the device's fused decode step where there is one. A batch takes the device's
      // batched fused step where it has one for that many sequences (as batch_generate's
      // greedy decoding does), else the plain ops.
      const bool single = b == 1 && !a.plain;
      bool batched = false;
      if (b > 1 && !a.plain) {  // a decoder made to ask is kept for the runs
        auto probe = model->fused_decoder(b);
        batched = probe != nullptr;
        model->recycle_fused_decoder(std::move(probe));
      }
      const std::vector<int32_t> prompt_ids = to_vector<int32_t>(prompt);
      std::string path = "plain";
      nlohmann::json row = nlohmann::json::object();
      const double total = median_seconds(dev, a.warmup, a.repeat, row, [&] {
        if (single) {
          KVCache cache(*model, true, a.prompt_len + a.gen_len);
          GenerationLimits limits;
          limits.max_tokens = a.gen_len;
          limits.ignore_eos = true;
          TokenGenerator gen(*model, prompt_ids, a.sampling, limits, cache);
          while (gen.next()) {
          }
          prefills.push_back(gen.timings().prefill_s);
          path = gen.decode_path();
          return;
        }
        // A sampler a row, each with its own seed, and the rows' tokens so far.
        std::vector<Sampler> samplers;
        std::vector<std::vector<int32_t>> history;
        for (int r = 0; r < b; ++r) {
          SamplingOptions s = a.sampling;
          s.seed = s.seed.value_or(1) + uint64_t(r);
          samplers.emplace_back(s);
          history.emplace_back(prompt_ids.begin() + int64_t(r) * a.prompt_len,
                               prompt_ids.begin() + int64_t(r + 1) * a.prompt_len);
        }
        const std::vector<bool> all_rows(size_t(b), false);  // no row skips its draw
        auto draw = [&](const Array& logits) {               // [B, V] -> the rows' next tokens
          const std::vector<int32_t> t = sample_rows(samplers, logits, history, all_rows);
          for (int r = 0; r < b; ++r) history[size_t(r)].push_back(t[size_t(r)]);
          return t;
        };
        KVCache cache(model->num_layers(), a.prompt_len + a.gen_len);
        const double t0 = now_s();
        // The prompts in passes of at most prefill_tokens() tokens, as batch_generate's.
        const Array h = runtime::prefill_rows(*model, prompt_ids, b, a.prompt_len, cache.layers(), {}, dev);  // [B, H]
        std::vector<int32_t> next = draw(model->logits(h));
        prefills.push_back(now_s() - t0);
        if (batched) {
          // Steps chained on the device, the draws too; the tokens are read once at the end.
          auto fused = model->fused_decoder(b);
          fused->set_inputs(next, std::vector<int64_t>(size_t(b), a.prompt_len), {});
          set_fused_edits(*fused, samplers, history);
          for (int i = 1; i < a.gen_len; ++i) {
            fused->step(cache.fused_views());
            cache.commit_one();
            fused_draw(*fused, samplers);
          }
          (void)fused->tokens(a.gen_len - 1);
          path = std::string("fused-") + fused->path();
          model->recycle_fused_decoder(std::move(fused));  // as batch_generate does
          return;
        }
        if (!a.sampled()) {  // greedy: the argmax stays on the device, read once at the end
          Array ids = to_device(from_vector(next, {int64_t(b), 1}), dev);
          for (int i = 1; i < a.gen_len; ++i) ids = argmax(model->forward(ids, cache.layers()), -1);
          (void)to_vector<int32_t>(ids);
          return;
        }
        for (int i = 1; i < a.gen_len; ++i) {  // each draw made where the logits are, read back
          const Array x = to_device(from_vector(next, {int64_t(b), 1}), dev);
          next = draw(reshape(model->forward(x, cache.layers()), {b, -1}));
        }
      });
      std::vector<double> timed(prefills.end() - std::min<ptrdiff_t>(std::max(1, a.repeat), ssize(prefills)),
                                prefills.end());
      std::sort(timed.begin(), timed.end());
      const double prefill_s = timed[timed.size() / 2];
      const double decode_s = total - prefill_s;
      row.update({{"workload", a.sampled() ? "decode_sampled" : "decode"},
                  {"path", path},
                  {"batch", b},
                  {"prompt_len", a.prompt_len},
                  {"gen_len", a.gen_len},
                  {"lmx_tok_per_s", double(b) * (a.gen_len - 1) / decode_s},
                  {"time_to_first_token_s", prefill_s},
                  {"peak_mem_bytes", alloc.stats().peak}});
      if (a.sampled()) {
        const SamplingOptions& s = a.sampling;
        auto tidy = [](float v) {
          return std::round(double(v) * 1e6) / 1e6;
        };  // 0.7, not 0.699999988
        row["sampling"] = {{"temperature", tidy(s.temperature)},
                           {"top_k", s.top_k},
                           {"top_p", tidy(s.top_p)},
                           {"min_p", tidy(s.min_p)},
                           {"repetition_penalty", tidy(s.repetition_penalty)}};
      }
      results.push_back(row);
    }
  }
  if (a.prefill || all) {
    const Array prompt = random_ids(1, a.prompt_len, vocab, 2, dev);
    alloc.reset_peak();
    nlohmann::json row = nlohmann::json::object();
    const double s = median_seconds(dev, a.warmup, a.repeat, row, [&] {
      const Array h = model->last_hidden_states(prompt);  // [1, H]
      (void)to_floats(model->logits(h));
    });
    row.update({{"workload", "prefill"}, {"batch", 1}, {"prompt_len", a.prompt_len},
                {"lmx_tok_per_s", a.prompt_len / s}, {"peak_mem_bytes", alloc.stats().peak}});
    results.push_back(row);
  }
  if (a.classify || all) {
    LMX_CHECK(a.chunk > 0, "bench", "--chunk must be positive, got ", a.chunk);
    const int64_t chunk = std::min<int64_t>(a.prompts, a.chunk);
    const Array ids = random_ids(chunk, a.prompt_len, vocab, 3, dev);
    alloc.reset_peak();
    nlohmann::json row = nlohmann::json::object();
    const double s = median_seconds(dev, a.warmup, a.repeat, row, [&] {
      // Every chunk is queued before any answer is read back (the peer script does the
      // same); the index checks of `take` run on the device, so nothing waits in between.
      std::vector<Array> picks;  // [n] int32 each
      for (int64_t done = 0; done < a.prompts; done += chunk) {
        const int64_t n = std::min(chunk, a.prompts - done);
        const Array h = model->last_hidden_states(n == chunk ? ids : slice_axis(ids, 0, 0, n));  // [n, H]
        picks.push_back(argmax(model->logits(h), -1));
      }
      for (const Array& p : picks) (void)to_vector<int32_t>(p);
    });
    row.update({{"workload", "classify"}, {"batch", a.prompts}, {"prompt_len", a.prompt_len}, {"chunk", chunk},
                {"lmx_prompts_per_s", a.prompts / s}, {"peak_mem_bytes", alloc.stats().peak}});
    results.push_back(row);
  }
  if (a.score) {
    // As evaluation harnesses score texts (TextModel::score_batch): every token's
    // log-probability given those before it, the texts in shared forward passes.
    const std::vector<int32_t> flat = to_vector<int32_t>(random_ids(a.prompts, a.prompt_len, vocab, 5, Device::cpu()));
    std::vector<std::vector<int32_t>> texts;
    for (int64_t i = 0; i < a.prompts; ++i)
      texts.emplace_back(flat.begin() + i * a.prompt_len, flat.begin() + (i + 1) * a.prompt_len);
    alloc.reset_peak();
    nlohmann::json row = nlohmann::json::object();
    const double s = median_seconds(dev, a.warmup, a.repeat, row, [&] {
      (void)runtime::score_texts(*model, texts, 0, dev, runtime::prefill_tokens());  // scores on the host
    });
    row.update({{"workload", "score"}, {"batch", a.prompts}, {"prompt_len", a.prompt_len},
                {"lmx_tok_per_s", double(a.prompts) * a.prompt_len / s}, {"lmx_prompts_per_s", a.prompts / s},
                {"peak_mem_bytes", alloc.stats().peak}});
    results.push_back(row);
  }
  if (a.lora) {
    // Adapters of rank r (alpha 2r) on every projection, B random so that every product of
    // the backward pass is a real one; the last workload, since it changes the model.
    models::LoraConfig lora{a.lora_rank, 2.0f * float(a.lora_rank)};
    lora.dropout = float(a.lora_dropout);
    models::attach_lora(*model, lora, 1);
    for (const auto& [name, p] : models::lora_parameters(*model))
      if (name.ends_with("lora_B.weight")) *p = random_uniform(p->shape(), 2, -0.01f, 0.01f, p->dtype(), dev);
    const std::vector<Array> params = train::trainable_adapters(*model);
    train::AdamW opt(params, {1e-5f, 0.9f, 0.999f, 1e-8f, 0});
    model->set_gradient_checkpointing(a.grad_checkpoint);
    for (int b : a.batch) {
      const Array ids = random_ids(b, a.prompt_len + 1, vocab, 4, dev);  // [B, L + 1]
      const Array x = slice(ids, {0, 0}, {b, a.prompt_len}), t = slice(ids, {0, 1}, {b, a.prompt_len + 1});
      alloc.reset_peak();
      nlohmann::json row = nlohmann::json::object();
      double loss = 0;
      uint64_t step = 0;
      const double s = median_seconds(dev, a.warmup, a.repeat, row, [&] {  // one optimizer step
        const nn::DropoutScope masks(++step);  // new masks each step, as a trainer draws them
        const auto r = autograd::value_and_grad([&] { return train::cross_entropy(model->forward(x), t); }, params);
        opt.step(r.grads);
        loss = item(r.value);
      });
      row.update({{"workload", "lora_train"}, {"batch", b}, {"prompt_len", a.prompt_len}, {"rank", a.lora_rank},
                  {"dropout", a.lora_dropout}, {"grad_checkpoint", a.grad_checkpoint}, {"loss", loss},
                  {"lmx_tok_per_s", double(b) * a.prompt_len / s}, {"peak_mem_bytes", alloc.stats().peak}});
      results.push_back(row);
    }
    model->set_gradient_checkpointing(false);
  }
  const nlohmann::json out{{"model", a.dir}, {"model_type", model->spec().model_type}, {"device", dev.str()},
                           {"dtype", dtype_name(model->dtype())}, {"deterministic", a.deterministic},
                           {"load_s", load_s}, {"results", results}};
  if (a.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf("%s (%s, %s on %s), loaded in %.3f s\n", a.dir.c_str(), model->spec().model_type.c_str(),
              std::string(dtype_name(model->dtype())).c_str(), dev.str().c_str(), load_s);
  std::printf("%-9s %6s %7s %6s %14s %12s\n", "workload", "batch", "prompt", "gen", "throughput", "peak MiB");
  for (const auto& r : results) {
    const bool prompts = r.contains("lmx_prompts_per_s");
    const std::string gen = r.contains("gen_len") ? std::to_string(r["gen_len"].get<int>()) : "-";
    std::printf("%-9s %6d %7d %6s %10.1f %s %12.1f", r["workload"].get<std::string>().c_str(), r["batch"].get<int>(),
                r["prompt_len"].get<int>(), gen.c_str(),
                prompts ? r["lmx_prompts_per_s"].get<double>() : r["lmx_tok_per_s"].get<double>(),
                prompts ? "p/s" : "t/s", double(r["peak_mem_bytes"].get<size_t>()) / 1048576.0);
    if (r.contains("sm_clock_mhz"))  // the timed runs' means
      std::printf("   SM %.0f MHz (lowest %.0f), %.0f W", r["sm_clock_mhz"].get<double>(),
                  r["sm_clock_min_mhz"].get<double>(), r["power_w"].get<double>());
    std::printf("\n");
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure decode, prefill, classification and LoRA training throughput");
  auto a = std::make_shared<BenchArgs>();
  a->sampling.seed = 1;
  cmd->add_option("MODEL", a->dir, "Model folder")->required();
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default: cuda where a GPU is visible, else cpu)");
  cmd->add_option("--dtype", a->dtype, "Compute dtype (default: the weights')");
  cmd->add_flag("--deterministic", a->deterministic,
                "Load as `--deterministic` does for generate: the decode step without its f32 atomics");
  cmd->add_flag(
      "--decode", a->decode,
      "Decode after a prompt (tok/s per batch size), greedy unless the sampling options below say "
      "otherwise; batch 1 runs as `lmx generate` does, through the device's fused decode step "
      "where it has one, and larger batches through its batched fused step (as batch_generate "
      "does)");
  cmd->add_option("--temperature", a->sampling.temperature,
                  "Decode: sampling temperature (0 = greedy)")
      ->capture_default_str();
  cmd->add_option("--top-k", a->sampling.top_k, "Decode: top-k (0 = off)")->capture_default_str();
  cmd->add_option("--top-p", a->sampling.top_p, "Decode: top-p (1 = off)")->capture_default_str();
  cmd->add_option("--min-p", a->sampling.min_p, "Decode: min-p (0 = off)")->capture_default_str();
  cmd->add_option("--repeat-penalty", a->sampling.repetition_penalty,
                  "Decode: HF repetition penalty (1 = off)")
      ->capture_default_str();
  cmd->add_flag("--prefill", a->prefill, "One prompt of --prompt-len tokens");
  cmd->add_flag("--classify", a->classify, "--prompts prompts of --prompt-len tokens, last-position logits");
  cmd->add_flag("--score", a->score,
                "--prompts texts of --prompt-len tokens, every token's log-probability (score_batch, as "
                "evaluation harnesses ask)");
  cmd->add_flag("--lora", a->lora,
                "LoRA training steps (forward, backward, AdamW) on --batch rows of --prompt-len tokens, "
                "adapters on every projection; tok/s counts the rows' tokens");
  cmd->add_option("--lora-rank", a->lora_rank, "--lora: the adapters' rank")->capture_default_str();
  cmd->add_option("--lora-dropout", a->lora_dropout, "--lora: the adapters' dropout (lora_dropout)")
      ->check(CLI::Range(0.0, 0.999))
      ->capture_default_str();
  cmd->add_flag("--grad-checkpoint", a->grad_checkpoint, "--lora: each layer checkpointed");
  cmd->add_option("--batch", a->batch, "Decode (and --lora) batch sizes (repeatable)")->capture_default_str();
  cmd->add_option("--prompt-len", a->prompt_len, "Prompt length")->capture_default_str();
  cmd->add_option("--gen-len", a->gen_len, "Tokens to generate")->capture_default_str();
  cmd->add_option("--prompts", a->prompts, "Prompts for --classify, texts for --score")->capture_default_str();
  cmd->add_option("--chunk", a->chunk, "Prompts per forward pass in --classify (the last pass may be shorter)")
      ->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "Untimed runs first")->capture_default_str();
  cmd->add_option("--repeat", a->repeat, "Timed runs; the median is reported")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print JSON");
  cmd->add_flag("--plain", a->plain, "Decode through the plain ops even where a fused decode step exists");
  cmd->footer(
      "With none of --decode/--prefill/--classify/--score/--lora, the first three run. Each\n"
      "workload is timed after --warmup runs (CUDA: with events on the device's stream; CPU:\n"
      "with the host clock around each run); the median is reported. On a GPU with NVML each\n"
      "row also gives the SM clock and power over its timed runs (sm_clock_mhz,\n"
      "sm_clock_min_mhz, power_w): a GPU at its power cap runs below its top clock, which is\n"
      "why one build measures differently from one machine to the next.\n"
      "LMX_FUSED=0 turns the fused decode step off everywhere (as --plain does here).\n"
      "Decode prefills its prompts in passes of at most 4,096 tokens (LMX_PREFILL_TOKENS sets\n"
      "the count: fewer hold less memory and take longer to the first token).\n"
      "On CUDA the JSON's \"path\" says how decode ran: fused-persistent (one kernel per token,\n"
      "the default at batch 1; LMX_FUSED_PERSISTENT=0 turns it off, LMX_FUSED_PROFILE=1 prints\n"
      "where its time goes), fused-graph (a kernel per phase, replayed as a CUDA graph: batches\n"
      "of 2 to 8), fused-gemm-graph (the same with each product a cuBLAS GEMM: batches of more\n"
      "than 8) or plain (the ops one by one). The persistent kernel adds the down projection's\n"
      "sums with float atomics, so their last bits vary between runs; --deterministic keeps the\n"
      "down projection in a phase of its own, which makes the step deterministic.\n\nExample:\n"
      "  lmx random-model llama-3.2-1b /tmp/llama-1b\n"
      "  lmx bench /tmp/llama-1b --decode --prompt-len 128 --gen-len 64 --batch 1 --batch 8\n"
      "  lmx bench /tmp/llama-1b --decode --temperature 0.6 --top-k 20 --top-p 0.95\n"
      "Sampled decode reports its own workload, decode_sampled, with the options; row r of a\n"
      "batch draws with seed 1 + r.");
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace lmx::cli
