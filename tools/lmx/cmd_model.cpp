// `lmx logits` and `lmx generate`: run a model folder on token ids. Their JSON output
// is a contract that tests and tools rely on.
#include <cstdio>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "models/loader.h"
#include "runtime/generator.h"

namespace lmx::cli {
namespace {

std::vector<int32_t> parse_ids(const std::string& s, const char* flag) {
  std::vector<int32_t> ids;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    try {
      size_t used = 0;
      const long v = std::stol(part, &used);
      if (used != part.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(part);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      fail("cli", flag, ": '", part, "' is not a token id; pass comma-separated integers like 1,2,3");
    }
  }
  LMX_CHECK(!ids.empty(), "cli", flag, " needs at least one token id");
  return ids;
}

struct ModelFlags {
  std::string dir, device = "cpu", dtype;
  void add(CLI::App* cmd) {
    cmd->add_option("MODEL_DIR", dir, "Folder with config.json and *.safetensors")->required();
    cmd->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
    cmd->add_option("--dtype", dtype, "Compute dtype: f32, bf16 or f16 (default: the weights' dtype)");
  }
  std::unique_ptr<models::CausalLM> load() const {
    models::ModelLoadOptions o;
    o.device = Device::parse(device);
    if (!dtype.empty()) {
      o.dtype = parse_dtype(dtype);
      LMX_CHECK(o.dtype && is_float(*o.dtype), "cli", "--dtype must be f32, bf16 or f16, got '", dtype, "'");
    }
    return models::load_causal_lm(dir, o);
  }
};

void run_logits(const ModelFlags& m, const std::string& ids_flag) {
  const auto model = m.load();
  const std::vector<int32_t> ids = parse_ids(ids_flag, "--ids");
  const Array logits = model->forward(to_device(from_vector(ids, {1, int64_t(ids.size())}), model->device()));
  const std::vector<float> v = to_floats(logits);
  const size_t vocab = size_t(model->spec().vocab_size);
  // Written by hand: a vocab of 262K floats per row is too large to build as a json tree.
  std::string out = "{\"logits\": [";
  char buf[32];
  for (size_t r = 0; r < ids.size(); ++r) {
    out += r ? ", [" : "[";
    for (size_t i = 0; i < vocab; ++i) {
      std::snprintf(buf, sizeof buf, i ? ", %.9g" : "%.9g", double(v[r * vocab + i]));
      out += buf;
    }
    out += "]";
  }
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace

void add_model_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("logits", "Print the logits a model computes for token ids");
    auto m = std::make_shared<ModelFlags>();
    auto ids = std::make_shared<std::string>();
    m->add(cmd);
    cmd->add_option("--ids", *ids, "Comma-separated token ids")->required();
    cmd->footer(
        "Prints {\"logits\": [[...], ...]}: one row of vocab-size floats per input position.\n\n"
        "Example:\n  lmx logits tests/fixtures/models/llama-f32 --ids 1,2,3\n"
        "  lmx logits ~/models/Qwen3-0.6B --ids 9707,11 --dtype f32");
    cmd->callback([m, ids] { run_logits(*m, *ids); });
  }
  {
    auto* cmd = app.add_subcommand("generate", "Generate tokens from a prompt");
    auto m = std::make_shared<ModelFlags>();
    m->add(cmd);
    struct Flags {
      std::string prompt_ids;
      int max_tokens = 64;
      float temperature = 0, top_p = 1, min_p = 0, repetition_penalty = 1;
      int top_k = 0;
      int64_t seed = -1;
      bool ignore_eos = false, json = false;
      std::vector<int32_t> stop_tokens;
    };
    auto f = std::make_shared<Flags>();
    cmd->add_option("--prompt-ids", f->prompt_ids, "Comma-separated prompt token ids")->required();
    cmd->add_option("--max-tokens", f->max_tokens, "Most tokens to generate")->capture_default_str();
    cmd->add_option("--temperature", f->temperature, "0 = greedy")->capture_default_str();
    cmd->add_option("--top-k", f->top_k, "Keep the k most likely tokens (0 = off)");
    cmd->add_option("--top-p", f->top_p, "Nucleus sampling mass (1 = off)");
    cmd->add_option("--min-p", f->min_p, "Drop tokens below min_p x the top probability (0 = off)");
    cmd->add_option("--repetition-penalty", f->repetition_penalty, "HF repetition penalty (1 = off)");
    cmd->add_option("--seed", f->seed, "Seed for reproducible sampling");
    cmd->add_option("--stop-token", f->stop_tokens, "Stop after this token id (repeatable)");
    cmd->add_flag("--ignore-eos", f->ignore_eos, "Keep going past end-of-sequence tokens");
    cmd->add_flag("--json", f->json, "Print {\"ids\": [...], \"finish_reason\": ..., ...}");
    cmd->footer(
        "Example:\n  lmx generate tests/fixtures/models/qwen3-f32 --prompt-ids 1,2,3 --max-tokens 20 --json\n"
        "  lmx generate MODEL --prompt-ids 9707 --temperature 0.7 --top-p 0.9 --seed 1");
    cmd->callback([m, f] {
      const auto model = m->load();
      SamplingOptions s;
      s.temperature = f->temperature;
      s.top_k = f->top_k;
      s.top_p = f->top_p;
      s.min_p = f->min_p;
      s.repetition_penalty = f->repetition_penalty;
      if (f->seed >= 0) s.seed = uint64_t(f->seed);
      GenerationLimits limits;
      limits.max_tokens = f->max_tokens;
      limits.stop_tokens = f->stop_tokens;
      limits.ignore_eos = f->ignore_eos;
      limits.eos_tokens = model->spec().eos_token_ids;
      KVCache cache(model->num_layers());
      TokenGenerator gen(*model, parse_ids(f->prompt_ids, "--prompt-ids"), s, limits, cache);
      std::vector<int32_t> out;
      while (auto t = gen.next()) {
        out.push_back(*t);
        if (!f->json) std::printf("%d\n", *t), std::fflush(stdout);
      }
      const GenerationTimings& tm = gen.timings();
      if (f->json) {
        nlohmann::json j{{"ids", out},
                         {"finish_reason", finish_reason_name(gen.finish_reason())},
                         {"prompt_tokens", tm.prompt_tokens},
                         {"generated_tokens", tm.generated_tokens},
                         {"prefill_s", tm.prefill_s},
                         {"decode_s", tm.decode_s}};
        std::printf("%s\n", j.dump().c_str());
      }
      std::fprintf(stderr, "prompt %d tokens in %.3f s, generated %d tokens at %.1f tok/s (%s)\n", tm.prompt_tokens,
                   tm.prefill_s, tm.generated_tokens,
                   tm.generated_tokens > 1 ? (tm.generated_tokens - 1) / std::max(tm.decode_s, 1e-9) : 0.0,
                   finish_reason_name(gen.finish_reason()));
    });
  }
}

}  // namespace lmx::cli
