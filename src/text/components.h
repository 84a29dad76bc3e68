// The pipeline stages of a tokenizer.json (spec 4): normalizers, pre-tokenizers,
// post-processors and decoders. Each is built from its JSON object and is immutable
// afterwards, so one instance serves many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace lmx::detail {

// A stretch of text on its way to the model. `at_start` marks the piece that begins at
// offset 0 of the input, which Metaspace's prepend_scheme "first" needs.
struct Piece {
  std::string text;
  bool at_start = false;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits; empty pieces are dropped, as HF does.
  virtual void split(std::vector<Piece>& pieces) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // HF's decode_chain: token strings in, token strings out; the caller concatenates.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds special tokens around one sequence (called only when add_special_tokens is set).
  virtual void process(std::vector<int32_t>& ids) const = 0;
};

// Factories; `json` may be null, which yields nullptr. Unknown types throw
// lmx::Error("[tokenizer] <where>: unknown normalizer type 'X'").
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& json, std::string_view where);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& json, std::string_view where);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& json, std::string_view where);
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& json, std::string_view where);

// "<bos> $A <eos>" from tokenizer_config flags, the way transformers' Llama and Gemma
// tokenizer classes rebuild their post-processor. `bos`/`eos` are -1 when absent.
std::unique_ptr<PostProcessor> make_bos_eos_processor(int32_t bos, int32_t eos);

// Reads a pattern object {"String": s} or {"Regex": r}.
struct PatternSpec {
  std::string text;
  bool is_regex = false;
};
PatternSpec read_pattern(const nlohmann::json& json, std::string_view where);

}  // namespace lmx::detail
