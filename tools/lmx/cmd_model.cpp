// `lmx logits` and `lmx generate`: run a model folder on token ids. Their JSON output
// is a contract that tests and tools rely on.
#include <cstdio>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "models/loader.h"
#include "cli_util.h"

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

struct LowLevelModelFlags {
  std::string dir, device = "cpu", dtype;
  void add(CLI::App* cmd) {
    cmd->add_option("MODEL_DIR", dir, "Folder with config.json and *.safetensors")->required();
    cmd->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
    cmd->add_option("--dtype", dtype, "Compute dtype: f32, bf16 or f16 (default: the weights' dtype)");
  }
  std::unique_ptr<models::CausalLM> load() const {
    models::ModelLoadOptions o;
    o.device = Device::parse(device);
    o.dtype = models::compute_dtype(dtype, "cli");
    return models::load_causal_lm(dir, o);
  }
};

void run_logits(const LowLevelModelFlags& m, const std::string& ids_flag) {
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
    auto m = std::make_shared<LowLevelModelFlags>();
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
    auto* cmd = app.add_subcommand("generate", "Generate text (or token ids) from a prompt, streaming");
    auto m = std::make_shared<ModelArgs>();
    auto g = std::make_shared<GenerateArgs>();
    auto prompt = std::make_shared<std::string>();
    auto prompt_ids = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    m->add(cmd);
    g->add(cmd, /*chat=*/false);
    auto* p = cmd->add_option("--prompt", *prompt, "Prompt text (tokenized with the model's tokenizer, BOS added)");
    cmd->add_option("--prompt-ids", *prompt_ids, "Prompt as comma-separated token ids instead of text")->excludes(p);
    auto logprobs = std::make_shared<int>(-1);
    cmd->add_flag("--json", *json, "Print one JSON object at the end: ids, text, finish_reason, metrics");
    cmd->add_option("--logprobs", *logprobs,
                    "With --json: each token's log-probability and this many most likely alternatives "
                    "(0-20), the model's own before penalties and temperature")
        ->check(CLI::Range(0, kMaxTopLogprobs));
    cmd->footer(
        "Text streams to stdout; timings and memory go to stderr.\n"
        "On CUDA, one sequence decodes through one kernel per token that adds the MLP's down\n"
        "projection with float atomics: their order, and so the sums' last bits, vary between\n"
        "runs, and where two logits nearly tie greedy tokens may too. --deterministic makes the\n"
        "step deterministic and costs 3-7% of its batch-1 speed on the H200 (bench/NOTES.md).\n\n"
        "Examples:\n  lmx generate ~/models/Llama-3.2-1B-Instruct --prompt \"The capital of France is\"\n"
        "  lmx generate MODEL --prompt \"Once upon\" --temperature 0.8 --top-p 0.95 --seed 7\n"
        "  lmx generate tests/fixtures/models/qwen3-f32 --prompt-ids 1,2,3 --max-tokens 20 --temperature 0 --json\n"
        "  lmx generate MODEL --prompt \"2 + 2 =\" --max-tokens 3 --json --logprobs 5   # how sure it was");
    cmd->callback([m, g, prompt, prompt_ids, json, logprobs] {
      LMX_CHECK(!prompt->empty() || !prompt_ids->empty(), "cli", "give --prompt TEXT or --prompt-ids 1,2,3");
      LMX_CHECK(*logprobs < 0 || *json, "cli", "--logprobs prints with --json; add --json");
      GenerateOptions opts = g->options();  // its errors before the model loads
      auto model = m->load();
      opts.logprobs = *logprobs;
      warn_if_not_utf8(*prompt, "the prompt");
      Stream s = prompt_ids->empty() ? model->generate(*prompt, opts)
                                     : model->generate_ids(parse_ids(*prompt_ids, "--prompt-ids"), opts);
      std::vector<int32_t> ids;
      std::string text;
      nlohmann::json scores = nlohmann::json::array();  // --logprobs: {id, logprob, top: [[id, logprob], ...]}
      for (const Token& t : s) {
        if (t.id >= 0) ids.push_back(t.id);
        text += t.text;
        if (*logprobs >= 0) scores.push_back({{"id", t.id}, {"logprob", t.logprob}, {"top", t.top_logprobs}});
        if (!*json) std::fputs(t.text.c_str(), stdout), std::fflush(stdout);
      }
      const GenerateMetrics mt = model->metrics();
      if (*json) {
        nlohmann::json j{{"ids", ids},
                         {"text", text},
                         {"finish_reason", mt.finish_reason},
                         {"prompt_tokens", mt.prompt_tokens},
                         {"generated_tokens", mt.generated_tokens},
                         {"prefill_tok_per_s", mt.prefill_tok_per_s},
                         {"decode_tok_per_s", mt.decode_tok_per_s},
                         {"time_to_first_token_s", mt.time_to_first_token_s},
                         {"peak_memory_bytes", mt.peak_memory},
                         {"gpu_utilization", mt.gpu_utilization},
                         {"decode_path", mt.decode_path}};
        if (*logprobs >= 0) j["logprobs"] = scores;
        if (model->err()) j["error"] = model->err_message();  // why the finish_reason is "error"
        std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      } else {
        std::printf("\n");
      }
      print_metrics(mt, stderr);
      if (model->err()) throw Error(model->err_message());  // it names its op, e.g. "[generate] ..."
    });
  }
}

}  // namespace lmx::cli
