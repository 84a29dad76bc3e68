// lmx::Tokenizer: HF tokenizer.json (BPE models) with the transformers-level behaviour of
// tokenizer_config.json, and StreamDecoder for incremental detokenization.
//
// Thread safety: a Tokenizer is immutable after loading except for an internal word cache
// that guards itself, so any number of threads may call its const methods at once.
// A StreamDecoder belongs to one thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace lmx {

// What tokenizer_config.json (and chat_template.jinja) add to tokenizer.json.
struct TokenizerConfig {
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token, mask_token, sep_token, cls_token;
  // additional_special_tokens and the values of extra_special_tokens.
  std::vector<std::string> extra_special_tokens;
  // Resolved against the vocabulary; empty when the token is absent or unknown.
  std::optional<int32_t> bos_token_id, eos_token_id, pad_token_id, unk_token_id;
  // Present only when the file sets them; they then decide BOS/EOS on encode.
  std::optional<bool> add_bos_token, add_eos_token;
  // Read for completeness only: transformers 5 decodes without this cleanup (checked
  // against its output for Llama 3, whose config sets it), so decode() ignores it too.
  bool clean_up_tokenization_spaces = false;
  std::string tokenizer_class;
  // The template apply_chat_template uses: chat_template.jinja when present, else the
  // config's string, else the entry named "default" of its list form.
  std::string chat_template;
  std::map<std::string, std::string> named_chat_templates;  // the list form, by name

  // {"bos_token", "<bos>"}, ... for the named tokens that are set: what a chat template sees.
  std::vector<std::pair<std::string, std::string>> special_token_strings() const;

  // Parses a tokenizer_config.json object; `where` names the file in errors.
  static TokenizerConfig parse(const nlohmann::json& json, std::string_view where);
};

class Tokenizer {
 public:
  // Reads dir/tokenizer.json, plus dir/tokenizer_config.json and dir/chat_template.jinja
  // when present. Throws lmx::Error("[tokenizer] <file>: ...").
  static Tokenizer from_dir(const std::filesystem::path& dir);
  // tokenizer.json alone: no config, so no chat template and no cleanup of spaces.
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  // tokenizer.json given as text (tests, fuzzing); `config` may be null.
  static Tokenizer from_json(std::string_view tokenizer_json, const nlohmann::json* config = nullptr);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Invalid UTF-8 in `text` is first replaced by U+FFFD (one per maximal invalid
  // subsequence), which is what HF sees after Python decodes bytes with errors="replace".
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Unknown ids are skipped, as HF does.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" for an unknown id
  size_t vocab_size() const;                   // one past the largest id, added tokens included
  bool is_special(int32_t id) const;
  // True for the <0xHH> tokens of a byte_fallback model, whose text depends on neighbours.
  bool is_byte_fallback_token(int32_t id) const;
  const TokenizerConfig& config() const;

  struct Impl;  // opaque; defined in tokenizer.cpp
  explicit Tokenizer(std::unique_ptr<Impl> impl);

 private:
  // Stores the config, resolves its token ids and applies its BOS/EOS flags.
  void set_config(TokenizerConfig config);
  std::unique_ptr<Impl> impl_;
};

// Turns generated ids into text as they arrive. Each push returns only text that later ids
// cannot change: partial UTF-8 characters and runs of byte-fallback tokens wait for more.
// The concatenation of all pushes and the final flush equals tokenizer.decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(int32_t id);
  std::string flush();  // everything still held; the decoder is then empty again

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> window_;  // ids whose decoded text is still needed as context
  size_t emitted_ = 0;           // bytes of decode(window_) already returned
};

}  // namespace lmx
