// Tokenizer: loads tokenizer.json with simdjson (the big vocab and merges arrays are read
// straight from the DOM; the small pipeline objects go through nlohmann) and runs HF's
// encode pipeline: added tokens, normalizer, pre-tokenizer, BPE, post-processor.
#include "text/tokenizer.h"

#include <simdjson.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "text/added_vocab.h"
#include "text/bpe.h"
#include "text/components.h"
#include "text/unicode.h"

namespace lmx {

struct Tokenizer::Impl {
  std::string where;  // file name for error messages
  std::unique_ptr<detail::Normalizer> normalizer;
  std::unique_ptr<detail::PreTokenizer> pre_tokenizer;
  std::unique_ptr<detail::PostProcessor> post_processor;
  std::unique_ptr<detail::Decoder> decoder;
  detail::Bpe model;
  detail::AddedVocab added;
  TokenizerConfig config;
  size_t vocab_size = 0;
};

namespace {

using simdjson::dom::element;

nlohmann::json to_nlohmann(element e) { return nlohmann::json::parse(simdjson::minify(e)); }

// Looks up `key` in a DOM object; a missing key reads as null.
element field(element obj, std::string_view key) {
  element out;
  if (obj[key].get(out) != simdjson::SUCCESS) {
    static const simdjson::padded_string null_json("null", 4);
    thread_local simdjson::dom::parser p;
    return p.parse(null_json).value_unsafe();
  }
  return out;
}

std::optional<std::string> optional_string(element e) {
  std::string_view s;
  if (e.get_string().get(s) != simdjson::SUCCESS) return std::nullopt;
  return std::string(s);
}

bool optional_bool(element e, bool fallback) {
  bool b;
  return e.get_bool().get(b) == simdjson::SUCCESS ? b : fallback;
}

detail::Bpe load_bpe(element model, const std::string& where) {
  std::string_view type = "BPE";
  if (field(model, "type").get_string().get(type) != simdjson::SUCCESS) type = "BPE";
  LMX_CHECK(type == "BPE", "tokenizer", where, ": model type '", type,
            "' is not supported; lmx reads BPE tokenizers (Llama 3, Qwen3, Gemma 3 and similar)");
  detail::BpeOptions o;
  o.unk_token = optional_string(field(model, "unk_token"));
  o.continuing_subword_prefix = optional_string(field(model, "continuing_subword_prefix")).value_or("");
  o.end_of_word_suffix = optional_string(field(model, "end_of_word_suffix")).value_or("");
  o.fuse_unk = optional_bool(field(model, "fuse_unk"), false);
  o.byte_fallback = optional_bool(field(model, "byte_fallback"), false);
  o.ignore_merges = optional_bool(field(model, "ignore_merges"), false);

  simdjson::dom::object vocab_obj;
  LMX_CHECK(field(model, "vocab").get_object().get(vocab_obj) == simdjson::SUCCESS, "tokenizer", where,
            ": model.vocab must be an object {token: id}");
  detail::StringIdMap vocab;
  vocab.reserve(vocab_obj.size(), vocab_obj.size() * 12);
  std::vector<std::string> vocab_r;
  vocab_r.reserve(vocab_obj.size());
  for (auto [key, value] : vocab_obj) {
    int64_t id;
    LMX_CHECK(value.get_int64().get(id) == simdjson::SUCCESS && id >= 0 && id < (int64_t(1) << 31), "tokenizer",
              where, ": vocab id of '", key, "' must be a non-negative integer");
    if (size_t(id) >= vocab_r.size()) vocab_r.resize(size_t(id) + 1);
    vocab_r[size_t(id)] = std::string(key);
    vocab.insert(key, int32_t(id));
  }
  detail::Bpe bpe(std::move(o), std::move(vocab), std::move(vocab_r));

  simdjson::dom::array merges;
  if (field(model, "merges").get_array().get(merges) != simdjson::SUCCESS) return bpe;
  bpe.reserve_merges(merges.size());
  int32_t rank = 0;
  for (element m : merges) {
    std::string_view line, left, right;
    if (m.get_string().get(line) == simdjson::SUCCESS) {
      if (line.rfind("#version", 0) == 0) continue;
      const size_t sp = line.find(' ');
      LMX_CHECK(sp != std::string_view::npos, "tokenizer", where, ": merge '", line, "' is not two tokens 'a b'");
      left = line.substr(0, sp);
      right = line.substr(sp + 1);
    } else {
      simdjson::dom::array pair;
      LMX_CHECK(m.get_array().get(pair) == simdjson::SUCCESS && pair.size() == 2 &&
                    pair.at(0).get_string().get(left) == simdjson::SUCCESS &&
                    pair.at(1).get_string().get(right) == simdjson::SUCCESS,
                "tokenizer", where, ": merge #", rank, " must be \"a b\" or [\"a\", \"b\"]");
    }
    bpe.add_merge(left, right, rank++);
  }
  return bpe;
}

std::vector<detail::AddedToken> load_added_tokens(element root, const std::string& where) {
  std::vector<detail::AddedToken> out;
  simdjson::dom::array arr;
  if (field(root, "added_tokens").get_array().get(arr) != simdjson::SUCCESS) return out;
  out.reserve(arr.size());
  for (element e : arr) {
    detail::AddedToken t;
    std::string_view content;
    int64_t id;
    LMX_CHECK(field(e, "content").get_string().get(content) == simdjson::SUCCESS &&
                  field(e, "id").get_int64().get(id) == simdjson::SUCCESS,
              "tokenizer", where, ": every added_tokens entry needs \"id\" and \"content\"");
    t.content = std::string(content);
    t.id = int32_t(id);
    t.special = optional_bool(field(e, "special"), false);
    t.normalized = optional_bool(field(e, "normalized"), !t.special);
    t.lstrip = optional_bool(field(e, "lstrip"), false);
    t.rstrip = optional_bool(field(e, "rstrip"), false);
    t.single_word = optional_bool(field(e, "single_word"), false);
    out.push_back(std::move(t));
  }
  return out;
}

std::optional<int32_t> resolve(const Tokenizer& tok, const std::optional<std::string>& token) {
  return token ? tok.token_to_id(*token) : std::nullopt;
}

std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  LMX_CHECK(in.good(), "tokenizer", p.string(), ": cannot open the file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

std::unique_ptr<Tokenizer::Impl> parse_tokenizer(const simdjson::padded_string& text, const std::string& where) {
  simdjson::dom::parser parser;
  element root;
  if (const auto err = parser.parse(text).get(root); err != simdjson::SUCCESS)
    fail("tokenizer", where, ": not valid JSON (", simdjson::error_message(err), ")");
  LMX_CHECK(root.is_object(), "tokenizer", where, ": expected a JSON object at the top level");
  auto impl = std::make_unique<Tokenizer::Impl>();
  impl->where = where;
  element model = field(root, "model");
  LMX_CHECK(model.is_object(), "tokenizer", where, ": the \"model\" object is missing");
  impl->model = load_bpe(model, where);
  impl->normalizer = detail::make_normalizer(to_nlohmann(field(root, "normalizer")), where);
  impl->pre_tokenizer = detail::make_pre_tokenizer(to_nlohmann(field(root, "pre_tokenizer")), where);
  impl->post_processor = detail::make_post_processor(to_nlohmann(field(root, "post_processor")), where);
  impl->decoder = detail::make_decoder(to_nlohmann(field(root, "decoder")), where);
  impl->added.build(load_added_tokens(root, where), impl->normalizer.get());
  impl->vocab_size = impl->model.size();
  for (const auto& t : impl->added.tokens()) impl->vocab_size = std::max(impl->vocab_size, size_t(t.id) + 1);
  return impl;
}

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, const nlohmann::json* config) {
  Tokenizer tok(parse_tokenizer(simdjson::padded_string(tokenizer_json), "tokenizer.json"));
  tok.set_config(config ? TokenizerConfig::parse(*config, "tokenizer_config.json") : TokenizerConfig{});
  return tok;
}

void Tokenizer::set_config(TokenizerConfig c) {
  // transformers registers every named special token as a special added token.
  std::vector<std::string> named = c.extra_special_tokens;
  for (const auto& [name, value] : c.special_token_strings()) named.push_back(value);
  for (const std::string& token : named)
    if (const auto id = token_to_id(token)) impl_->added.make_special(token, *id, impl_->normalizer.get());
  c.bos_token_id = resolve(*this, c.bos_token);
  c.eos_token_id = resolve(*this, c.eos_token);
  c.pad_token_id = resolve(*this, c.pad_token);
  c.unk_token_id = resolve(*this, c.unk_token);
  // transformers' Llama and Gemma tokenizer classes rebuild the post-processor from these
  // flags; an explicit flag therefore decides over the file's own post-processor.
  if (c.add_bos_token || c.add_eos_token) {
    const int32_t bos = c.add_bos_token.value_or(false) && c.bos_token_id ? *c.bos_token_id : -1;
    const int32_t eos = c.add_eos_token.value_or(false) && c.eos_token_id ? *c.eos_token_id : -1;
    impl_->post_processor = detail::make_bos_eos_processor(bos, eos);
  }
  impl_->config = std::move(c);
}

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  simdjson::padded_string text;
  if (simdjson::padded_string::load(path.string()).get(text) != simdjson::SUCCESS)
    fail("tokenizer", path.string(), ": cannot read the file");
  Tokenizer tok(parse_tokenizer(text, path.string()));
  return tok;
}

Tokenizer Tokenizer::from_dir(const std::filesystem::path& dir) {
  const auto json_path = dir / "tokenizer.json";
  LMX_CHECK(std::filesystem::exists(json_path), "tokenizer", json_path.string(),
            ": not found; pass a model folder that holds tokenizer.json");
  simdjson::padded_string text;
  if (simdjson::padded_string::load(json_path.string()).get(text) != simdjson::SUCCESS)
    fail("tokenizer", json_path.string(), ": cannot read the file");
  Tokenizer tok(parse_tokenizer(text, json_path.string()));
  TokenizerConfig config;
  const auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text_file(config_path));
    } catch (const nlohmann::json::exception& e) {
      fail("tokenizer", config_path.string(), ": not valid JSON (", e.what(), ")");
    }
    config = TokenizerConfig::parse(j, config_path.string());
  }
  const auto jinja_path = dir / "chat_template.jinja";
  if (std::filesystem::exists(jinja_path)) config.chat_template = read_text_file(jinja_path);
  tok.set_config(std::move(config));
  return tok;
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special_tokens) const {
  const Impl& m = *impl_;
  std::string cleaned;
  if (!detail::is_valid_utf8(input)) {
    cleaned = detail::to_valid_utf8(input);
    input = cleaned;
  }
  std::vector<int32_t> ids;
  ids.reserve(input.size() / 3 + 4);
  std::vector<detail::TextSplit> raw, norm;
  std::vector<detail::Piece> pieces;
  m.added.split(input, false, raw);
  for (const auto& r : raw) {
    if (r.id >= 0) {
      ids.push_back(r.id);
      continue;
    }
    std::string text(input.substr(r.begin, r.end - r.begin));
    if (m.normalizer) m.normalizer->normalize(text);
    if (m.added.has_normalized()) m.added.split(text, true, norm);
    else norm.assign(1, {0, text.size(), -1});
    for (const auto& n : norm) {
      if (n.id >= 0) {
        ids.push_back(n.id);
        continue;
      }
      if (n.end == n.begin) continue;
      pieces.clear();
      pieces.push_back({text.substr(n.begin, n.end - n.begin), r.begin == 0 && n.begin == 0});
      if (m.pre_tokenizer) m.pre_tokenizer->split(pieces);
      for (const auto& p : pieces) m.model.tokenize(p.text, ids);
    }
  }
  if (add_special_tokens && m.post_processor) m.post_processor->process(ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const detail::AddedToken* t = m.added.by_id(id)) {
      if (!(skip_special_tokens && t->special)) tokens.push_back(t->decoder_text);
    } else if (const std::string* s = m.model.id_to_token(id)) {
      tokens.push_back(*s);
    }
  }
  std::string text;
  if (m.decoder) {
    m.decoder->decode_chain(tokens);
    for (const auto& t : tokens) text += t;
  } else {
    for (size_t k = 0; k < tokens.size(); ++k) text += (k ? " " : "") + tokens[k];
  }
  return text;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto id = impl_->added.by_content(token)) return id;
  return impl_->model.token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (const detail::AddedToken* t = impl_->added.by_id(id)) return t->content;
  const std::string* s = impl_->model.id_to_token(id);
  return s ? *s : std::string();
}

size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool Tokenizer::is_special(int32_t id) const {
  const detail::AddedToken* t = impl_->added.by_id(id);
  return t && t->special;
}

bool Tokenizer::is_byte_fallback_token(int32_t id) const {
  if (!impl_->model.options().byte_fallback || impl_->added.by_id(id)) return false;
  const std::string* s = impl_->model.id_to_token(id);
  return s && s->size() == 6 && s->compare(0, 3, "<0x") == 0 && (*s)[5] == '>';
}

const TokenizerConfig& Tokenizer::config() const { return impl_->config; }

}  // namespace lmx
