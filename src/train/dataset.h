// Training data: JSON Lines files in the three forms mlx-lm and most fine-tuning tools read.
//   {"text": "..."}                                   every token is a target
//   {"messages": [{"role": "user", "content": ...}, ...]}   rendered by the model's chat template;
//                                                     with "tools" (OpenAI's list) and messages'
//                                                     "tool_calls" / "tool_call_id" as the template reads them
//   {"prompt": "...", "completion": "..."}            a user and an assistant message where
//                                                     the model has a template, else the two texts
// With mask_prompt, only the last message (the completion) is learned: the tokens before it
// are context, not targets.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace lmx::train {

struct Example {
  std::vector<int32_t> tokens;
  int32_t first_target = 1;  // tokens before this one are context only (at least the first)
};

struct DatasetOptions {
  bool mask_prompt = false;
  int max_seq_len = 2048;  // longer examples are cut to this many tokens
};

struct Dataset {
  std::vector<Example> examples;
  int64_t tokens = 0;  // in all examples
  int truncated = 0;   // examples cut to max_seq_len
};

// Errors name the file and line ("train.jsonl:12: ...") and what the line should hold.
// `model_dir` names the model in errors about its chat template.
Dataset read_jsonl(const std::filesystem::path& path, const Tokenizer& tok,
                   const DatasetOptions& options, const std::string& model_dir);

// Inputs and targets for a batch of examples, right-padded to the longest: ids [B, L] (pad 0)
// and targets [B, L] int32, where targets[b, i] is tokens[i + 1], or kIgnoreIndex for context
// and padding. Right padding leaves every real position's attention as it is (causal).
struct Batch {
  std::vector<int32_t> ids, targets;
  int64_t rows = 0, length = 0, counted = 0;  // counted: targets that are not ignored
};
Batch make_batch(const std::vector<const Example*>& examples);

}  // namespace lmx::train
