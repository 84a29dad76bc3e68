// Flags and printing shared by the commands that load a model through the public API.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <string_view>

#include "lmx/lmx.h"

namespace lmx::cli {

struct ModelArgs {
  std::string dir, device, dtype, backend, adapter;
  int context = 0;
  bool deterministic = false;
  void add(CLI::App* cmd);
  std::unique_ptr<TextModel> load() const;
};

struct GenerateArgs {
  int max_tokens = 256;
  float temperature = 0, top_p = 1, min_p = 0, repeat_penalty = 1, presence_penalty = 0, frequency_penalty = 0;
  int top_k = 0;
  int64_t seed = -1;
  bool ignore_eos = false, show_special = false, json_object = false;
  std::vector<int32_t> stop_tokens;
  std::vector<std::string> stop_strings, template_vars;
  std::string json_schema;  // a file, or the schema's JSON text
  void add(CLI::App* cmd, bool chat);
  GenerateOptions options() const;
};

// A warning on stderr where `text` (the user's `what`) is not valid UTF-8. The tokenizer
// reads each invalid sequence as U+FFFD, as HF does with bytes decoded with
// errors="replace", so the model sees other text than was given; the user should know.
void warn_if_not_utf8(std::string_view text, const char* what);

// One line of timings and memory, e.g. for stderr after a reply.
void print_metrics(const GenerateMetrics& m, std::FILE* out);

}  // namespace lmx::cli
